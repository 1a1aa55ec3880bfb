"""A guard against an XLA:CPU miscompilation that silently zeroes jaxrf's maps.

XLA:CPU (seen with jaxlib 0.10.2; other projects report it in 0.11) hands some fusions to
YNNPACK. A convolution whose output is summed over its channels in the same program, which is
exactly a gradient map (the input cotangent of a ``C -> 3`` convolution, summed over the three
input channels), then comes back as all zeros in some processes and right in others: run the
same script ten times and it is wrong in about half of them, with nothing raised. A structural
box of VGG-16's ``pool1`` came back empty this way. The culprit is YNNPACK's *reduce* fusion
(the convolution, ``abs`` and the channel sum compiled as one YNNPACK subgraph): with it off
(``--xla_cpu_experimental_ynn_fusion_type=-reduce``) every run was right, and convolutions and
dots still run in YNNPACK, one by one. (Turning every YNNPACK fusion off, ``=`` with an empty
list, is right too, but then :func:`jaxrf.prune_to_cone`'s float64 forward pass differed from
the full network's in the 15th digit: XLA's own convolutions round differently at other sizes.)

Two layers:

* :func:`configure`, run when this module is imported (first thing in ``import jaxrf``),
  appends that flag to ``XLA_FLAGS`` when JAX has not yet started its backends and the user
  set no value of their own, so every computation of the process is compiled without those
  fusions, the user's own included;
* :func:`jit` is ``jax.jit`` with YNNPACK limited to single convolutions and dots as a
  per-program compiler option, so the programs jaxrf compiles are guarded even when JAX started
  before ``import jaxrf`` (a compiler option takes a list of fusion types, not ``-reduce``).

A third use of the same option is speed, not safety. On the 2-core AVX2 machine jaxrf is
developed on, XLA's own (Eigen) convolutions ran 1.6-2.5x faster than YNNPACK's for the dense
and grouped convolutions of a ResNet (3x3 64 -> 64 at 56 x 56: 97 against 59 GFLOP/s; 1x1
256 -> 64: 91 against 40), while YNNPACK's dots were faster than Eigen's (110 against 91
GFLOP/s for a 2048 matmul); only depthwise convolutions ran faster in YNNPACK, and the CPU
lowering replaces those by slices (:mod:`jaxrf._lowering`). So the ERF step under a CPU
lowering is compiled with YNNPACK limited to single dots (:data:`LOWERED_VALUE`, ``jit(...,
ynn=LOWERED_VALUE)``); ``experiments/benchmark.py`` measures the difference.

Set ``JAXRF_KEEP_XLA_FLAGS=1`` to leave XLA's defaults alone (all three off).
"""

from __future__ import annotations

import functools
import os

import jax

FLAG = "xla_cpu_experimental_ynn_fusion_type"
ENV_VALUE = "-reduce"  # XLA's default list without the reduce fusions
PROGRAM_VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
#: The ERF step under a CPU lowering: YNNPACK runs single dots, XLA its own convolutions.
LOWERED_VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
OPT_OUT = "JAXRF_KEEP_XLA_FLAGS"
# The first jaxlib this guard is known to be needed and accepted in: an unknown flag in
# XLA_FLAGS aborts the process, so older versions are left alone.
MIN_JAXLIB = (0, 10)


def _opted_out() -> bool:
    return os.environ.get(OPT_OUT, "") not in ("", "0")


def _jaxlib_version() -> tuple[int, ...]:
    from jaxlib import version

    parts = []
    for part in version.__version__.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # unknown JAX internals: assume started, do nothing
        return True


def configure() -> bool:
    """Append ``--xla_cpu_experimental_ynn_fusion_type=-reduce`` to ``XLA_FLAGS`` if safe.

    Only when not opted out, the jaxlib is at least :data:`MIN_JAXLIB`, JAX's backends have
    not started (XLA reads the variable once) and ``XLA_FLAGS`` does not already set the flag.
    Returns whether it changed ``XLA_FLAGS``.
    """
    global _CONFIGURED
    flags = os.environ.get("XLA_FLAGS", "")
    if _opted_out() or FLAG in flags or _jaxlib_version() < MIN_JAXLIB or _backends_started():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --{FLAG}={ENV_VALUE}".strip()
    _CONFIGURED = True
    return True


_CONFIGURED = False  # whether configure() set the flag (rather than the user)


@functools.cache
def compiler_options(value: str = PROGRAM_VALUE) -> dict:
    """The per-program options :func:`jit` adds: ``{FLAG: value}``, or ``{}`` when not needed
    or not wanted (opted out; the user set the flag in ``XLA_FLAGS``; ``value`` is
    :data:`PROGRAM_VALUE` and :func:`configure` already set the same guard for the process) or
    not accepted by this XLA."""
    set_in_env = FLAG in os.environ.get("XLA_FLAGS", "")
    if _opted_out() or (set_in_env and (not _CONFIGURED or value == PROGRAM_VALUE)):
        return {}
    options = {FLAG: value}
    try:
        jax.jit(lambda v: v + 1, compiler_options=options).lower(1.0).compile()
    except Exception:  # this XLA has no such option (older jaxlib): nothing to guard
        return {}
    return options


class _Jit:
    """``jax.jit(fun, **options)`` built at the first use, with :func:`compiler_options` when
    called at top level (JAX accepts compiler options only there; a call inside another trace,
    such as one of jaxrf's own jitted programs, is compiled with that program's options)."""

    def __init__(self, fun, options, ynn):
        self._fun, self._options, self._ynn = fun, options, ynn
        self._top = self._nested = None
        functools.update_wrapper(self, fun)

    @property
    def jitted(self):
        """The top-level program, with the guard's compiler options."""
        if self._top is None:
            guard = compiler_options(self._ynn)
            self._top = jax.jit(self._fun, **self._options, compiler_options=guard or None)
        return self._top

    def __call__(self, *args, **kwargs):
        leaves = jax.tree_util.tree_leaves((args, kwargs))
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            if self._nested is None:
                self._nested = jax.jit(self._fun, **self._options)
            return self._nested(*args, **kwargs)
        return self.jitted(*args, **kwargs)

    def __getattr__(self, name):  # lower, trace, _cache_size, ...
        if name.startswith("__") or name in ("_fun", "_options", "_ynn", "_top", "_nested"):
            raise AttributeError(name)
        return getattr(self.jitted, name)


def jit(fun=None, *, ynn: str = PROGRAM_VALUE, **options):
    """``jax.jit`` with the YNNPACK fusions off for this program (see the module docstring).

    Used as ``jit(f, static_argnames=...)``, ``@jit`` or ``@functools.partial(jit, ...)``.
    ``ynn``: the YNNPACK fusion types the program may use (:data:`PROGRAM_VALUE`, the guard;
    :data:`LOWERED_VALUE`, dots only).
    """
    if fun is None:
        return functools.partial(jit, ynn=ynn, **options)
    return _Jit(fun, options, ynn)


configure()
