"""The receptive field of any JAX function, by walking its jaxpr.

:func:`receptive_field` traces ``fn`` with :func:`jax.make_jaxpr` (the network never runs)
and walks the equations once, in order. Every jaxpr variable is either a constant (weights,
interpolation matrices built from ``iota``: evaluated only when a rule needs the values) or a
feature map that depends on the input, with its :class:`~jaxrf._field.FieldState` and a label
per array axis saying which spatial axis of the input it holds. Each primitive has one rule in
the table :data:`jaxrf._rules.RULES`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import jax
from jax._src import source_info_util
from jax.extend import core as jex

from ._field import FieldState, GlobalReceptiveFieldWarning, LayerRecord, ReceptiveField
from ._nnx import nnx_names
from ._rules import RULES, Constant, Dependent, Mixing, Rule, Value

_CALLS = ("jaxpr", "call_jaxpr")


class _Walker:
    """Walks one jaxpr (and its sub-jaxprs), holding the per-layer records."""

    def __init__(self, rules: Mapping[str, Rule], unknown: str, ndim: int):
        self.rules = rules
        self.unknown = unknown
        self.ndim = ndim
        self.records: list[LayerRecord] = []
        self._names: set[str] = set()
        self._prefix: list[str] = []

    # -- naming and records ----------------------------------------------------------

    def layer_name(self, eqn, op: str) -> str:
        """Module path from the equation's name stack (Flax linen, Haiku), else ``op<k>``."""
        stack = str(eqn.source_info.name_stack)
        parts = [p for p in self._prefix if p]
        if stack and not (parts and stack.startswith(parts[-1])):
            parts.append(stack)
        base = "/".join(parts)
        for name in ([base, f"{base}/{op}"] if base else []) + [
            f"{base}/{op}{k}" if base else f"{op}{k}" for k in range(len(self._names) + 1)
        ]:
            if name not in self._names:
                self._names.add(name)
                return name
        raise AssertionError("unreachable: a free name always exists")

    def record(self, state: FieldState, name: str, op: str, windows=None) -> None:
        self.records.append(state.record(name, op, windows))

    # -- walking ---------------------------------------------------------------------

    def walk(self, jaxpr, consts: Sequence[Value], args: Sequence[Value]) -> list[Value]:
        env: dict = {}

        def read(v):
            if isinstance(v, jex.Literal):
                return Constant(lambda val=v.val: val)
            return env[v]

        env.update(zip(jaxpr.constvars, consts, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))
        for eqn in jaxpr.eqns:
            inputs = [read(v) for v in eqn.invars]
            if any(isinstance(v, Dependent) for v in inputs):
                outputs = self.apply(eqn, inputs)
            else:
                outputs = _lazy(eqn, inputs)
            for var, out in zip(eqn.outvars, outputs, strict=True):
                env[var] = out
        return [read(v) for v in jaxpr.outvars]

    def walk_call(self, eqn, sub, inputs: Sequence[Value]) -> list[Value]:
        """Walk a container's sub-jaxpr (a ``ClosedJaxpr`` or an open ``Jaxpr``)."""
        jaxpr, consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())
        consts = [Constant(lambda c=c: c) for c in consts]
        self._prefix.append(str(eqn.source_info.name_stack))
        try:
            return self.walk(jaxpr, consts, inputs)
        finally:
            self._prefix.pop()

    def apply(self, eqn, inputs: Sequence[Value]) -> list[Value]:
        name = eqn.primitive.name
        rule = self.rules.get(name)
        if rule is None:
            if self.unknown == "global":
                return self.global_outputs(eqn, inputs, warn=True)
            raise TypeError(
                f"jaxrf has no receptive-field rule for primitive '{name}', traced from "
                f"{source_info_util.summarize(eqn.source_info)}. Supported primitives: "
                f"{', '.join(sorted(self.rules))}. Either register a rule with "
                f"jaxrf.register_rule('{name}', rule) (e.g. rule='elementwise'), or call "
                "receptive_field(..., unknown='global') to treat it as global (every output "
                "reads the whole input), with a warning."
            )
        try:
            return list(rule(self, eqn, inputs))
        except Mixing as why:
            if self.unknown == "global":
                return self.global_outputs(eqn, inputs, warn=True, why=str(why))
            raise TypeError(
                f"primitive '{name}', traced from {source_info_util.summarize(eqn.source_info)}, "
                f"mixes spatial axes in a way jaxrf cannot follow: {why}. Call "
                "receptive_field(..., unknown='global') to treat it as global (every output "
                f"reads the whole input), or register your own rule for '{name}' with "
                "jaxrf.register_rule."
            ) from None

    def global_outputs(self, eqn, inputs, warn: bool, why: str = "") -> list[Value]:
        """Every output reads the whole input; labels kept where the shape is kept."""
        deps = [v for v in inputs if isinstance(v, Dependent)]
        first = deps[0]
        op = eqn.primitive.name
        name = self.layer_name(eqn, op)
        if warn:
            reason = f" ({why})" if why else " (no rule for it)"
            warnings.warn(
                f"primitive '{op}'{reason}, traced from "
                f"{source_info_util.summarize(eqn.source_info)}, is treated as global: every "
                "output now depends on the whole input.",
                GlobalReceptiveFieldWarning,
                stacklevel=2,
            )
        in_shape = tuple(eqn.invars[inputs.index(first)].aval.shape)
        outs = []
        for var in eqn.outvars:
            if tuple(var.aval.shape) == in_shape:
                state, axes = first.state.make_global(first.state.shape, name), first.axes
            else:
                state = first.state.make_global((1,) * self.ndim, name)
                axes = (None,) * len(var.aval.shape)
            outs.append(Dependent(state, axes))
        self.record(outs[0].state, name, op)
        return outs


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


# ---------------------------------------------------------------------------------------
# Layout: which axes of the input are spatial.
# ---------------------------------------------------------------------------------------

_LAYOUT_SAFE = {"convert_element_type", "copy", "copy_p", "reduce_precision", "pad"}


def _find_layout(jaxpr, env: dict) -> tuple[int, ...] | list | None:
    """Spatial axes of the input, read from the first convolution that consumes it.

    ``env`` maps jaxpr variables to a tuple giving, per array axis, the input axis it holds
    (or None); it is carried through layout-only operations (transposes, elementwise ops,
    calls) until a convolution. Returns the spatial axes (a tuple) once found, else the maps of
    the jaxpr's outputs (a list), for the caller to continue with.
    """
    for eqn in jaxpr.eqns:
        tracked = [
            (k, env[v])
            for k, v in enumerate(eqn.invars)
            if not isinstance(v, jex.Literal) and v in env
        ]
        if not tracked:
            continue
        name = eqn.primitive.name
        k, m = tracked[0]
        outs = None
        if name == "conv_general_dilated" and k == 0:
            spatial = tuple(m[p] for p in eqn.params["dimension_numbers"].lhs_spec[2:])
            return spatial if None not in spatial else None
        if name == "transpose":
            outs = [tuple(m[p] for p in eqn.params["permutation"])]
        elif name == "broadcast_in_dim" and k == 0:
            out = [None] * len(eqn.params["shape"])
            for i, p in enumerate(eqn.params["broadcast_dimensions"]):
                out[p] = m[i]
            outs = [tuple(out)]
        elif name in ("reshape", "squeeze", "expand_dims") and k == 0:
            kept = [a for a, n in zip(m, eqn.invars[0].aval.shape, strict=True) if n != 1]
            shape = eqn.outvars[0].aval.shape
            if [n for n in eqn.invars[0].aval.shape if n != 1] == [n for n in shape if n != 1]:
                it = iter(kept)
                outs = [tuple(next(it) if n != 1 else None for n in shape)]
        elif name in _LAYOUT_SAFE or getattr(RULES.get(name), "__name__", "") == "elementwise":
            if len(m) == len(eqn.outvars[0].aval.shape):
                outs = [m] * len(eqn.outvars)
        elif any(key in eqn.params for key in _CALLS):
            sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            sub = getattr(sub, "jaxpr", sub)
            found = _find_layout(sub, {sub.invars[j]: mj for j, mj in tracked})
            if isinstance(found, tuple) or found is None:
                return found
            outs = found
        for v, o in zip(eqn.outvars, outs or [], strict=False):
            if o is not None:
                env[v] = o
    return [env.get(v) if not isinstance(v, jex.Literal) else None for v in jaxpr.outvars]


def _spatial_axes(spatial_axes, ndim: int, jaxpr) -> tuple[int, ...]:
    if spatial_axes is None:
        found = _find_layout(jaxpr, {jaxpr.invars[0]: tuple(range(ndim))})
        if isinstance(found, tuple):
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
    fn: Callable,
    x,
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
        fn: a function of one array returning one array, e.g. ``lambda x: model.apply(v, x)``.
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
        ValueError: bad ``spatial_axes`` or ``unknown``, or an output that does not depend on
            the input.

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
    """
    if unknown not in ("raise", "global"):
        raise ValueError(f"`unknown` (={unknown!r}) must be 'raise' or 'global'.")
    shape = tuple(getattr(x, "shape", ()))
    if not shape:
        raise ValueError(
            f"`x` (={x!r}) must be an array or jax.ShapeDtypeStruct with a shape, e.g. "
            "jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)."
        )
    with nnx_names(fn):
        closed = jax.make_jaxpr(fn)(x)
    jaxpr = closed.jaxpr
    if len(jaxpr.invars) != 1 or len(jaxpr.outvars) != 1:
        raise ValueError(
            f"`fn` must map one array to one array; its traced form takes {len(jaxpr.invars)} "
            f"and returns {len(jaxpr.outvars)} arrays. Wrap it: lambda x: fn(x)[0]."
        )
    axes = _spatial_axes(spatial_axes, len(shape), jaxpr)
    input_shape = tuple(shape[a] for a in axes)
    table = dict(RULES)
    table.update(rules or {})
    walker = _Walker(table, unknown, len(axes))
    labels = tuple(axes.index(p) if p in axes else None for p in range(len(shape)))
    start = Dependent(FieldState.input(input_shape), labels)
    consts = [Constant(lambda c=c: c) for c in closed.consts]
    (out,) = walker.walk(jaxpr, consts, [start])
    if not isinstance(out, Dependent):
        raise ValueError("the output of `fn` does not depend on its input `x`.")
    return ReceptiveField.from_state(out.state, input_shape, walker.records)
