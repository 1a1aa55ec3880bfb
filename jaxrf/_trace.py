"""The receptive field of any JAX function, by walking its jaxpr.

:func:`receptive_field` traces ``fn`` with :func:`jax.make_jaxpr` (the network never runs)
and walks the equations once, in order. Every jaxpr variable is either a constant (weights,
interpolation matrices built from ``iota``: evaluated only when a rule needs the values) or a
feature map that depends on the input, with its :class:`~jaxrf._field.FieldState` and a label
per array axis saying which spatial axis of the input it holds. Each primitive's rule is its
interval rule in the registry (:mod:`jaxrf._registry`); the traversal is :func:`jaxrf._walk.walk`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import jax
from jax.extend import core as jex

from . import _registry
from ._field import FieldState, GlobalReceptiveFieldWarning, LayerRecord, ReceptiveField
from ._nnx import nnx_names
from ._rules import (
    Constant,
    Context,
    Dependent,
    Mixing,
    Result,
    Rule,
    Value,
    conv_spatial,
    global_outputs,
)
from ._walk import ROOT, Site, locate, walk


class _Names:
    """The walk's layer names: the module path from the name stack (Flax linen, Haiku), else
    ``op<k>``, each given once."""

    def __init__(self):
        self.taken: set[str] = set()

    def __call__(self, eqn, site: Site, op: str) -> str:
        stack = str(eqn.source_info.name_stack)
        parts = [p for p in site.prefix if p]
        if stack and not (parts and stack.startswith(parts[-1])):
            parts.append(stack)
        base = "/".join(parts)
        for name in ([base, f"{base}/{op}"] if base else []) + [
            f"{base}/{op}{k}" if base else f"{op}{k}" for k in range(len(self.taken) + 1)
        ]:
            if name not in self.taken:
                self.taken.add(name)
                return name
        raise AssertionError("unreachable: a free name always exists")


def _constant(value) -> Constant:
    return Constant(lambda: value)


def _lazy(eqn, inputs: Sequence[Value]) -> list[Constant]:
    """Constant outputs, evaluated together on first use of any of them."""
    cache: list = []

    def run():
        if not cache:
            params = eqn.primitive.get_bind_params(eqn.params)
            out = eqn.primitive.bind(*(v.value for v in inputs), **params)
            cache.append(out if eqn.primitive.multiple_results else [out])
        return cache[0]

    return [Constant(lambda k=k: run()[k]) for k in range(len(eqn.outvars))]


def _dependent(eqn, vals, site=None) -> bool:
    return any(isinstance(v, Dependent) for v in vals)


class _Analytic:
    """The analytic walk's per-equation step: rule lookup, escape hatch, and the records."""

    def __init__(self, rules: Mapping[str, Rule], unknown: str, ndim: int):
        self.rules = rules
        self.unknown = unknown
        self.ndim = ndim
        self.names = _Names()
        self.records: list[LayerRecord] = []

    def run(self, program, args, site: Site = ROOT) -> Result:
        """Walk ``program`` on ``args``; its outputs and the layers recorded inside it."""
        start = len(self.records)
        outs = walk(program, args, self.visit, wrap=_constant, descend=_dependent, site=site)
        records = tuple(self.records[start:])
        del self.records[start:]
        return Result(tuple(outs), records)

    def visit(self, eqn, vals, site: Site) -> list[Value]:
        if not _dependent(eqn, vals):
            return _lazy(eqn, vals)
        ctx = Context(eqn, site, self.ndim, self.names, self.run)
        result = Result.of(self.apply(ctx, eqn, vals))
        self.records.extend(result.records)
        return list(result.outputs)

    def apply(self, ctx: Context, eqn, vals):
        name = eqn.primitive.name
        rule = self.rules.get(name)
        if rule is None:
            if self.unknown == "global":
                _warn_global(eqn, ctx.site, " (no rule for it)")
                return global_outputs(ctx, eqn, vals)
            raise TypeError(
                f"jaxrf has no receptive-field rule for primitive '{name}', traced from "
                f"{locate(eqn, ctx.site)}. Supported primitives: "
                f"{', '.join(_registry.analytic_primitives())}. Either register a rule with "
                f"jaxrf.register_rule('{name}', rule) (e.g. rule='elementwise'), or call "
                "receptive_field(..., unknown='global') to treat it as global (every output "
                "reads the whole input), with a warning."
            )
        try:
            return rule(ctx, eqn, vals)
        except Mixing as why:
            if self.unknown == "global":
                _warn_global(eqn, ctx.site, f" ({why})")
                return global_outputs(ctx, eqn, vals)
            raise TypeError(
                f"primitive '{name}', traced from {locate(eqn, ctx.site)}, mixes spatial axes "
                f"in a way jaxrf cannot follow: {why}. Call receptive_field(..., "
                "unknown='global') to treat it as global (every output reads the whole input), "
                f"or register your own rule for '{name}' with jaxrf.register_rule."
            ) from None


def _warn_global(eqn, site: Site, reason: str) -> None:
    warnings.warn(
        f"primitive '{eqn.primitive.name}'{reason}, traced from {locate(eqn, site)}, is "
        "treated as global: every output now depends on the whole input.",
        GlobalReceptiveFieldWarning,
        stacklevel=2,
    )


# ---------------------------------------------------------------------------------------
# Layout: which axes of the input are spatial, from the registry's layout entries.
# ---------------------------------------------------------------------------------------


class _Found(Exception):  # noqa: N818 (control flow: the first convolution ends the search)
    def __init__(self, spatial):
        self.spatial = spatial


def _layout_step(eqn, maps, site):
    """Per output, the input axis each array axis holds (None: untracked)."""
    n_out = len(eqn.outvars)
    tracked = [(k, m) for k, m in enumerate(maps) if m is not None]
    entry = _registry.REGISTRY.get(eqn.primitive.name)
    layout = entry.layout if entry is not None else None
    if not tracked or layout is None:
        return [None] * n_out
    k, m = tracked[0]
    if layout == "conv":
        if k != 0:
            return [None] * n_out
        spatial = conv_spatial(eqn, m)
        raise _Found(spatial if all(isinstance(a, int) for a in spatial) else None)
    if layout == "same":
        return [m if len(m) == len(eqn.outvars[0].aval.shape) else None] * n_out
    if k != 0:
        return [None] * n_out
    try:
        return [layout(eqn, m)] + [None] * (n_out - 1)
    except Mixing:
        return [None] * n_out


def _find_layout(closed, ndim: int):
    """Spatial axes of the input read from the first convolution that consumes it, or None."""
    untracked = [None] * len(closed.jaxpr.invars)
    try:
        walk(
            closed,
            [tuple(range(ndim))] + untracked[1:],
            _layout_step,
            wrap=lambda c: None,
            descend=lambda eqn, maps, site: any(m is not None for m in maps),
        )
    except _Found as found:
        return found.spatial
    return None


def _spatial_axes(spatial_axes, ndim: int, closed) -> tuple[int, ...]:
    if spatial_axes is None:
        found = _find_layout(closed, ndim)
        if found is not None:
            return found
        if ndim < 3:
            raise ValueError(
                f"`x` has {ndim} axes; receptive_field expects (batch, spatial..., channels) "
                "(at least 3 axes), or name the spatial axes with `spatial_axes=`."
            )
        return tuple(range(1, ndim - 1))
    axes = (spatial_axes,) if isinstance(spatial_axes, int) else tuple(spatial_axes)
    if not axes or not all(isinstance(a, int) and -ndim <= a < ndim for a in axes):
        raise ValueError(
            f"`spatial_axes` (={spatial_axes!r}) must be a non-empty tuple of axes of `x`, each "
            f"in [-{ndim}, {ndim - 1}]; e.g. spatial_axes=(1, 2) for NHWC or (2, 3) for NCHW."
        )
    axes = tuple(a % ndim for a in axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"`spatial_axes` (={spatial_axes!r}) names an axis twice; give each once.")
    return axes


def receptive_field(
    fn: Callable | jex.ClosedJaxpr,
    x=None,
    *,
    spatial_axes: int | Sequence[int] | None = None,
    unknown: str = "raise",
    rules: Mapping[str, Rule] | None = None,
) -> ReceptiveField:
    """Theoretical receptive field of ``fn``'s output with respect to its input ``x``.

    ``fn`` is traced with :func:`jax.make_jaxpr` (never run) and its jaxpr walked: every
    convolution, pooling, padding, slice, resize, reduction and merge is followed exactly, so
    ``region(index, clip=True)`` is exact for every output index, misaligned graphs included.

    Args:
        fn: a function of one array returning one array, e.g. ``lambda x: model.apply(v, x)``;
            or an already traced program, the ``ClosedJaxpr`` that ``jax.make_jaxpr(fn)(x)``
            returns (then ``x`` may be omitted: the program carries the shapes).
        x: an example input or a :class:`jax.ShapeDtypeStruct`, shaped (batch, spatial...,
            channels) by default.
        spatial_axes: the spatial axes of ``x``. Default: read from the first convolution that
            consumes the input (so NCHW models work unchanged); channels-last
            ``(1, ..., ndim - 2)`` when there is none.
        unknown: ``"raise"`` (default): a primitive without a rule raises TypeError.
            ``"global"``: treat it as global (every output reads the whole input), with a
            :class:`~jaxrf.GlobalReceptiveFieldWarning`.
        rules: extra or overriding rules for this call, primitive name -> rule (see
            :func:`jaxrf.register_rule`).

    Returns:
        The :class:`~jaxrf.ReceptiveField` of the output, with per-layer records in ``layers``.

    Raises:
        TypeError: a primitive jaxrf has no rule for (the message names it, the line of your
            code it came from, and the escape hatches).
        ValueError: bad ``x``, ``spatial_axes`` or ``unknown``, or an output that does not
            depend on the input.

    Example:
        >>> import jax, jax.numpy as jnp, jaxrf
        >>> w = jnp.ones((3, 3, 1, 1))
        >>> def net(x):   # two 3x3 VALID convs, NHWC
        ...     dn = ("NHWC", "HWIO", "NHWC")
        ...     x = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=dn)
        ...     return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=dn)
        >>> rf = jaxrf.receptive_field(net, jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
        >>> rf.size, rf.stride, rf.padding, rf.output_shape
        ((5, 5), (1, 1), (0, 0), (4, 4))
        >>> closed = jax.make_jaxpr(net)(jnp.zeros((1, 8, 8, 1)))
        >>> jaxrf.receptive_field(closed).size
        (5, 5)
    """
    if unknown not in ("raise", "global"):
        raise ValueError(f"`unknown` (={unknown!r}) must be 'raise' or 'global'.")
    closed = trace(fn, x)
    jaxpr = closed.jaxpr
    if len(jaxpr.invars) != 1 or len(jaxpr.outvars) != 1:
        raise ValueError(
            f"`fn` must map one array to one array; its traced form takes {len(jaxpr.invars)} "
            f"and returns {len(jaxpr.outvars)} arrays. Wrap it: lambda x: fn(x)[0]."
        )
    shape = tuple(jaxpr.invars[0].aval.shape)
    axes = _spatial_axes(spatial_axes, len(shape), closed)
    input_shape = tuple(shape[a] for a in axes)
    table = {**_registry.interval_rules(), **(rules or {})}
    analytic = _Analytic(table, unknown, len(axes))
    labels = tuple(axes.index(p) if p in axes else None for p in range(len(shape)))
    start = Dependent(FieldState.input(input_shape), labels)
    result = analytic.run(closed, [start])
    (out,) = result.outputs
    if not isinstance(out, Dependent):
        raise ValueError("the output of `fn` does not depend on its input `x`.")
    return ReceptiveField.from_state(out.state, input_shape, list(result.records))


def trace(fn, x) -> jex.ClosedJaxpr:
    """The traced program: ``fn`` itself if already traced, else ``jax.make_jaxpr(fn)(x)``."""
    if isinstance(fn, jex.ClosedJaxpr):
        if x is not None and tuple(getattr(x, "shape", ())) != tuple(fn.in_avals[0].shape):
            raise ValueError(
                f"`x` has shape {tuple(getattr(x, 'shape', ()))} but the traced program takes "
                f"{tuple(fn.in_avals[0].shape)}; omit `x` when passing a ClosedJaxpr."
            )
        return fn
    shape = tuple(getattr(x, "shape", ()))
    if not shape:
        raise ValueError(
            f"`x` (={x!r}) must be an array or jax.ShapeDtypeStruct with a shape, e.g. "
            "jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)."
        )
    with nnx_names(fn):
        return jax.make_jaxpr(fn)(x)
