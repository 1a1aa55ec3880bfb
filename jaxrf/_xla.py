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

Set ``JAXRF_KEEP_XLA_FLAGS=1`` to leave XLA's defaults alone (both layers off).
"""

from __future__ import annotations

import functools
import os

import jax

FLAG = "xla_cpu_experimental_ynn_fusion_type"
ENV_VALUE = "-reduce"  # XLA's default list without the reduce fusions
PROGRAM_VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
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
    flags = os.environ.get("XLA_FLAGS", "")
    if _opted_out() or FLAG in flags or _jaxlib_version() < MIN_JAXLIB or _backends_started():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --{FLAG}={ENV_VALUE}".strip()
    return True


@functools.cache
def compiler_options() -> dict:
    """The per-program options :func:`jit` adds: ``{FLAG: PROGRAM_VALUE}``, or ``{}`` when not
    needed (opted out, or ``XLA_FLAGS`` already sets the flag) or not accepted by this XLA."""
    if _opted_out() or FLAG in os.environ.get("XLA_FLAGS", ""):
        return {}
    options = {FLAG: PROGRAM_VALUE}
    try:
        jax.jit(lambda v: v + 1, compiler_options=options).lower(1.0).compile()
    except Exception:  # this XLA has no such option (older jaxlib): nothing to guard
        return {}
    return options


class _Jit:
    """``jax.jit(fun, **options)`` built at the first use, with :func:`compiler_options` when
    called at top level (JAX accepts compiler options only there; a call inside another trace,
    such as one of jaxrf's own jitted programs, is compiled with that program's options)."""

    def __init__(self, fun, options):
        self._fun, self._options = fun, options
        self._top = self._nested = None
        functools.update_wrapper(self, fun)

    @property
    def jitted(self):
        """The top-level program, with the guard's compiler options."""
        if self._top is None:
            guard = compiler_options()
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
        if name.startswith("__") or name in ("_fun", "_options", "_top", "_nested"):
            raise AttributeError(name)
        return getattr(self.jitted, name)


def jit(fun=None, **options):
    """``jax.jit`` with the YNNPACK fusions off for this program (see the module docstring).

    Used as ``jit(f, static_argnames=...)``, ``@jit`` or ``@functools.partial(jit, ...)``.
    """
    if fun is None:
        return functools.partial(jit, **options)
    return _Jit(fun, options)


configure()
