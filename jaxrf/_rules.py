"""Interval rules: how each primitive moves a receptive field, as functions of values.

A rule is ``rule(ctx, eqn, inputs) -> outputs``; the interface is documented once, in
:mod:`jaxrf._registry`. Values are :class:`Dependent` (a feature map that depends on the
network input: its :class:`~jaxrf._field.FieldState` and which array axis holds which spatial
axis) or :class:`Constant` (evaluated lazily: weights, ``iota``-built interpolation matrices,
gather indices). Rules are only called when at least one input is :class:`Dependent`.

Array axes are labelled: ``None`` (batch, channels, any axis the receptive field does not
vary along), an ``int`` (that spatial axis of the network input), or :class:`Flat` (several
axes flattened into one, as in a (B, H*W, C) token sequence), whose factors may be digits of a
split axis (``Part``, :mod:`jaxrf._rules_factor`: window partitions, pixel shuffles), or
``Tokens`` (prefix tokens in front of a flattened grid, :mod:`jaxrf._rules_tokens`). The label
functions (``*_axes``) are shared with layout detection through the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ._axis import Window
from ._field import FieldState, LayerRecord, broadcast_state, merge_states, pattern_through
from ._walk import Site


@dataclass(frozen=True)
class Flat:
    """Several axes flattened into one array axis, row-major (``(B, H, W, C) -> (B, H*W, C)``).

    ``parts`` holds a spatial axis or None per factor, ``sizes`` the factor sizes.
    """

    parts: tuple[int | None, ...]
    sizes: tuple[int, ...]

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(p if isinstance(p, int) else p.axis for p in self.parts if p is not None)


Label = int | Flat | None


@dataclass(frozen=True)
class Dependent:
    """A value that depends on the network input: its field state and per-array-axis labels."""

    state: FieldState
    axes: tuple[Label, ...]


class Constant:
    """A value that does not depend on the network input, evaluated on first use."""

    __slots__ = ("_thunk", "_value")

    def __init__(self, thunk: Callable[[], object]):
        self._thunk = thunk
        self._value = None

    @property
    def value(self) -> np.ndarray:
        if self._thunk is not None:
            self._value = np.asarray(self._thunk())
            self._thunk = None
        return self._value


Value = Dependent | Constant


@dataclass(frozen=True)
class Result:
    """A rule's outputs (one value per equation output) and the layers it recorded."""

    outputs: tuple
    records: tuple[LayerRecord, ...] = ()

    @classmethod
    def of(cls, result) -> Result:
        """A rule's return value (a ``Result`` or a sequence of outputs) as a ``Result``."""
        return result if isinstance(result, Result) else cls(tuple(result))

    @classmethod
    def join(cls, outputs, *results: Result) -> Result:
        """``outputs`` with the records of ``results``, in order."""
        return cls(tuple(outputs), tuple(r for res in results for r in res.records))


@dataclass(frozen=True)
class Context:
    """What a rule may know besides its inputs (immutable; see :mod:`jaxrf._registry`)."""

    eqn: object
    site: Site
    ndim: int
    namer: Callable[[object, Site, str], str]
    walker: Callable[..., Result]

    def name(self, op: str) -> str:
        """A fresh layer name for this equation: its module path, else ``op<k>``."""
        return self.namer(self.eqn, self.site, op)

    def layer(self, state: FieldState, name: str, op: str, windows=None, out: int = 0):
        """The :class:`LayerRecord` of output ``out`` of this equation (built, not stored)."""
        record = state.record(name, op, windows)
        return _with_source(record, (self.site.path, out))

    def walk(self, sub, inputs: Sequence[Value], sub_index: int = 0) -> Result:
        """Walk sub-program ``sub`` (of this container equation) on ``inputs``, same rules."""
        return self.walker(sub, inputs, self.site.inside(self.eqn, sub_index))


def _with_source(record: LayerRecord, source) -> LayerRecord:
    return replace(record, source=source)


Rule = Callable[..., Sequence[Value] | Result]


class Mixing(Exception):  # noqa: N818 (internal control flow, never escapes the walker)
    """Raised by a rule whose operation mixes spatial axes in a way the algebra cannot follow."""


def _deps(inputs: Sequence[Value]) -> list[tuple[int, Dependent]]:
    return [(k, v) for k, v in enumerate(inputs) if isinstance(v, Dependent)]


def _shape(var) -> tuple[int, ...]:
    return tuple(var.aval.shape)


def _trivial(w: Window) -> bool:
    return w == Window(1)


def _spatial_windows(ctx, dep: Dependent, windows: Sequence[Window | None]):
    """Per spatial axis windows from per array axis windows; None if all trivial."""
    out = [Window(1)] * ctx.ndim
    touched = False
    for label, w in zip(dep.axes, windows, strict=True):
        if w is None or label is None:
            continue  # a window along batch or channels leaves the spatial field unchanged
        if not isinstance(label, int):
            if _trivial(w):
                continue
            raise Mixing(f"a window {w} along a flattened or split axis {label}")
        out[label] = w
        touched = touched or not _trivial(w)
    return tuple(out), touched


def through(ctx, dep: Dependent, windows, axes, op: str, layer: bool = False, out: int = 0):
    """Push ``dep`` through per-array-axis ``windows``: a :class:`Result` with one output.

    A layer is recorded if the field moved, or always when ``layer`` (convolutions and pools
    are layers even when 1x1); ``out`` is the equation output the record describes."""
    spatial, touched = _spatial_windows(ctx, dep, windows)
    if not touched:
        if layer and any(a is not None for a in dep.axes):
            rec = ctx.layer(dep.state, ctx.name(op), op, spatial, out)
            return Result((Dependent(dep.state, tuple(axes)),), (rec,))
        return Result((Dependent(dep.state, tuple(axes)),))
    name = ctx.name(op)
    state = dep.state.through(spatial, name)
    if 0 in state.shape:
        raise ValueError(f"'{name}' ({op}) leaves no output features: spatial shape {state.shape}.")
    rec = ctx.layer(state, name, op, spatial, out)
    return Result((Dependent(state, tuple(axes)),), (rec,))


def _merged_labels(deps: Sequence[Dependent]) -> list[Label]:
    ndim_out = max(len(d.axes) for d in deps)
    labels: list[Label] = []
    for p in range(ndim_out):
        found = {d.axes[p] for d in deps if len(d.axes) == ndim_out and d.axes[p] is not None}
        if len(found) > 1:  # a label on a size-1 map axis is broadcast, not a conflict
            found = {
                d.axes[p]
                for d in deps
                if len(d.axes) == ndim_out
                and d.axes[p] is not None
                and any(d.state.shape[a] != 1 for a in _spatial_of(d.axes[p]))
            } or found
        if len(found) > 1:
            raise Mixing(f"array axis {p} holds different spatial axes {sorted(map(str, found))}")
        labels.append(found.pop() if found else None)
    return labels


def unify(ctx, deps: Sequence[Dependent], op: str) -> Result:
    """Merge operands of an elementwise op / channel concatenation, broadcasting size-1 axes."""
    labels = _merged_labels(deps)
    held = {a for lab in labels for a in _spatial_of(lab)}
    target = tuple(max(d.state.shape[a] for d in deps) for a in range(ctx.ndim))
    states = []
    for d in deps:
        same_rank = len(d.axes) == len(labels)
        mine = {a for lab in d.axes for a in _spatial_of(lab)} if same_rank else set()
        for a in held - mine:
            if d.state.shape[a] != 1:
                raise Mixing(f"spatial axis {a} sits on different array axes of the operands")
        states.append(broadcast_state(d.state, target, op))
    distinct = list({id(s): s for s in states}.values())
    if len(distinct) == 1:
        return Result((Dependent(distinct[0], tuple(labels)),))
    name = ctx.name(op)
    state = merge_states(distinct, name)
    return Result((Dependent(state, tuple(labels)),), (ctx.layer(state, name, op),))


def _spatial_of(label: Label) -> tuple[int, ...]:
    if label is None:
        return ()
    if isinstance(label, Flat):
        return label.spatial
    if hasattr(label, "grid"):  # prefix tokens + a grid (jaxrf._rules_tokens.Tokens)
        return _spatial_of(label.grid)
    return (label,) if isinstance(label, int) else (label.axis,)


# ---------------------------------------------------------------------------------------
# Elementwise operations: merge of the operands (broadcasting).
# ---------------------------------------------------------------------------------------


def elementwise(ctx, eqn, inputs):
    """Unary/binary/n-ary elementwise ops (add, mul, select_n, ...): a merge of the operands."""
    deps = [d for _, d in _deps(inputs)]
    rank = len(_shape(eqn.outvars[0]))
    deps = [d if len(d.axes) == rank else Dependent(d.state, (None,) * rank) for d in deps]
    if len(deps) == 1:
        return [deps[0]] * len(eqn.outvars)
    res = unify(ctx, deps, eqn.primitive.name)
    return Result.join(res.outputs * len(eqn.outvars), res)


def identity(ctx, eqn, inputs):
    """Ops returning their operands unchanged (optimization_barrier, sharding constraints)."""
    return list(inputs)[: len(eqn.outvars)]


def same_axes(eqn, axes):
    """Layout of an elementwise op: the output keeps the operand's labels (same rank)."""
    return axes if len(axes) == len(_shape(eqn.outvars[0])) else None


# ---------------------------------------------------------------------------------------
# Sliding windows: convolution, pooling, padding, slicing, cumulative ops.
# ---------------------------------------------------------------------------------------


def conv(ctx, eqn, inputs):
    """``conv_general_dilated``: any dimension numbers, strides, padding, dilations, groups.

    The kernel size is read from the kernel's abstract shape: weights are never evaluated."""
    lhs, rhs = inputs
    if isinstance(rhs, Dependent):
        raise Mixing("the kernel depends on the input (a dynamic filter)")
    if not isinstance(lhs, Dependent):
        raise Mixing("only the kernel depends on the input")
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    s2d = Result(())
    if has_parts(lhs.axes[lhs_spec[1]]):  # space-to-depth: the features hold sub-pixel digits
        s2d = contract_digits(ctx, lhs, [lhs_spec[1]], "space_to_depth")
        lhs = s2d.outputs[0]
    kernel_shape = _shape(eqn.invars[1])
    rank = len(lhs_spec)
    windows: list[Window | None] = [None] * rank
    axes: list[Label] = [None] * rank
    for j in range(rank - 2):
        lo, hi = p["padding"][j]
        windows[lhs_spec[2 + j]] = Window(
            kernel=int(kernel_shape[rhs_spec[2 + j]]),
            stride=int(p["window_strides"][j]),
            padding=(int(lo), int(hi)),
            dilation=int(p["rhs_dilation"][j]),
            input_dilation=int(p["lhs_dilation"][j]),
        )
        axes[out_spec[2 + j]] = lhs.axes[lhs_spec[2 + j]]
    for k in (0, 1):
        if lhs.axes[lhs_spec[k]] is not None:
            raise Mixing(f"the convolution's batch or feature axis holds {lhs.axes[lhs_spec[k]]}")
    res = through(ctx, lhs, windows, axes, "conv", layer=True)
    return Result.join(res.outputs, s2d, res)


def conv_spatial(eqn, axes):
    """Layout: the input axes a convolution's lhs holds on its spatial dimensions."""
    return tuple(axes[p] for p in eqn.params["dimension_numbers"].lhs_spec[2:])


_POOL_OPS = {
    "reduce_window_max": "max_pool",
    "reduce_window_min": "min_pool",
    "reduce_window_sum": "sum_pool",
    "reduce_window": "pool",
}


def _merge_operands(ctx, eqn, inputs, n_operands: int, has_init: bool):
    """The one dependent operand of a (variadic) reduction, merging several if needed."""
    if has_init and any(isinstance(v, Dependent) for v in inputs[n_operands:]):
        raise Mixing("the initial value depends on the input")
    deps = [d for _, d in _deps(inputs[:n_operands])]
    if len(deps) == 1:
        return Result((deps[0],))
    return unify(ctx, deps, "merge")


def reduce_window(ctx, eqn, inputs):
    """``reduce_window_{max,min,sum}`` and generic ``reduce_window``: pooling windows."""
    p = eqn.params
    n_out = len(eqn.outvars)
    merged = _merge_operands(ctx, eqn, inputs, n_out, eqn.primitive.name == "reduce_window")
    (dep,) = merged.outputs
    windows = [
        Window(int(k), int(s), (int(pad[0]), int(pad[1])), int(wd), int(bd))
        for k, s, pad, wd, bd in zip(
            p["window_dimensions"],
            p["window_strides"],
            p["padding"],
            p["window_dilation"],
            p["base_dilation"],
            strict=True,
        )
    ]
    op = _POOL_OPS[eqn.primitive.name]
    res = through(ctx, dep, windows, dep.axes, op, layer=True)
    return Result.join(res.outputs * n_out, merged, res)


def pad(ctx, eqn, inputs):
    """``pad``: padding (negative = cropping) and interior padding (= input dilation)."""
    operand, value = inputs
    if isinstance(value, Dependent):
        raise Mixing("the padding value depends on the input")
    windows = [
        Window(1, 1, (int(lo), int(hi)), 1, int(interior) + 1)
        for lo, hi, interior in eqn.params["padding_config"]
    ]
    return through(ctx, operand, windows, operand.axes, "pad")


def slice_(ctx, eqn, inputs):
    """Static ``slice``: a kernel-1 window with the slice's stride, cropping start and end."""
    (operand,) = inputs
    p = eqn.params
    shape = _shape(eqn.invars[0])
    strides = p["strides"] or (1,) * len(shape)
    windows = [
        Window(1, int(s), (-int(start), int(limit) - n))
        for start, limit, s, n in zip(
            p["start_indices"], p["limit_indices"], strides, shape, strict=True
        )
    ]
    return through(ctx, operand, windows, operand.axes, "slice")


def dynamic_slice(ctx, eqn, inputs):
    """``dynamic_slice`` with start indices that do not depend on the input (clamped, as jax)."""
    operand, *starts = inputs
    if any(isinstance(s, Dependent) for s in starts):
        raise Mixing("the slice position depends on the input")
    shape = _shape(eqn.invars[0])
    windows = []
    for s, size, n in zip(starts, eqn.params["slice_sizes"], shape, strict=True):
        start = int(np.clip(int(s.value), 0, n - size))
        windows.append(Window(1, 1, (-start, start + size - n)))
    return through(ctx, operand, windows, operand.axes, "slice")


def split(ctx, eqn, inputs):
    """``split`` (``jnp.split``): output ``k`` is the static slice ``[o_k, o_k + n_k)`` along
    ``axis`` (``o_k`` the sum of the earlier sizes), a kernel-1 window cropping both ends."""
    (operand,) = inputs
    axis = eqn.params["axis"]
    n = _shape(eqn.invars[0])[axis]
    parts, offset = [], 0
    for k, size in enumerate(map(int, eqn.params["sizes"])):
        windows: list[Window | None] = [None] * len(operand.axes)
        windows[axis] = Window(1, 1, (-offset, offset + size - n))
        parts.append(through(ctx, operand, windows, operand.axes, "slice", out=k))
        offset += size
    return Result.join([r.outputs[0] for r in parts], *parts)


def cumulative(ctx, eqn, inputs):
    """``cumsum``/``cummax``/...: output ``i`` reads ``0..i`` (or ``i..n-1`` reversed)."""
    (operand,) = inputs
    shape = _shape(eqn.invars[0])
    axis, n = eqn.params["axis"], shape[eqn.params["axis"]]
    windows: list[Window | None] = [None] * len(shape)
    windows[axis] = Window(n, 1, (0, n - 1) if eqn.params["reverse"] else (n - 1, 0))
    return through(ctx, operand, windows, operand.axes, eqn.primitive.name)


# ---------------------------------------------------------------------------------------
# Merges along an axis.
# ---------------------------------------------------------------------------------------


def concatenate(ctx, eqn, inputs):
    """Channel concatenation: a merge. Spatial concatenation: the operands side by side."""
    d = eqn.params["dimension"]
    deps = _deps(inputs)
    labels = {dep.axes[d] for _, dep in deps}
    if labels == {None}:
        return unify(ctx, [dep for _, dep in deps], "concat")
    if len(labels) != 1 or isinstance(next(iter(labels)), Flat):
        raise Mixing(f"concatenation along an axis holding {sorted(map(str, labels))}")
    sizes = [_shape(v)[d] for v in eqn.invars]
    total, offsets = sum(sizes), np.cumsum([0] + sizes[:-1])
    placed = []
    for k, dep in deps:
        windows: list[Window | None] = [None] * len(dep.axes)
        windows[d] = Window(1, 1, (int(offsets[k]), int(total - offsets[k] - sizes[k])))
        spatial, touched = _spatial_windows(ctx, dep, windows)
        state = dep.state.through(spatial, ctx.name("concat")) if touched else dep.state
        placed.append(Dependent(state, dep.axes))
    return unify(ctx, placed, "concat")


# ---------------------------------------------------------------------------------------
# Reductions.
# ---------------------------------------------------------------------------------------


def _global_along(state: FieldState, axes: Sequence[int], name: str) -> FieldState:
    """Every output reads the whole extent of each spatial axis in ``axes``."""
    for a in axes:
        state = pattern_through(state, a, np.ones((1, state.shape[a]), bool), name, True)
    return state


def reduction(ctx, eqn, inputs):
    """``reduce_*``/``argmax``/``argmin``: over channels, nothing changes; over a spatial axis,
    every output reads the whole extent of that axis (global pooling)."""
    axes = eqn.params.get("axes", eqn.params.get("dimensions"))
    n_out = len(eqn.outvars)
    generic = eqn.primitive.name == "reduce"
    merged = _merge_operands(ctx, eqn, inputs, len(inputs) - (n_out if generic else 0), generic)
    (dep,) = merged.outputs
    if any(has_parts(dep.axes[p]) for p in axes):
        res = contract_digits(ctx, dep, axes, "global_" + eqn.primitive.name)
        kept = tuple(lab for p, lab in enumerate(res.outputs[0].axes) if p not in axes)
        return Result.join([Dependent(res.outputs[0].state, kept)] * n_out, merged, res)
    reduced = [a for p in axes for a in _spatial_of(dep.axes[p])]
    kept = tuple(lab for p, lab in enumerate(dep.axes) if p not in axes)
    if not reduced:
        return Result.join([Dependent(dep.state, kept)] * n_out, merged)
    op = "global_" + eqn.primitive.name
    name = ctx.name(op)
    state = _global_along(dep.state, reduced, name)
    return Result((Dependent(state, kept),) * n_out, merged.records + (ctx.layer(state, name, op),))


# ---------------------------------------------------------------------------------------
# Shape and layout: only the labels move. Each ``*_axes`` function is also the primitive's
# layout entry in the registry.
# ---------------------------------------------------------------------------------------


def transpose_axes(eqn, axes):
    return tuple(axes[p] for p in eqn.params["permutation"])


def squeeze_axes(eqn, axes):
    drop = {d % len(axes) for d in eqn.params["dimensions"]}
    return tuple(lab for p, lab in enumerate(axes) if p not in drop)


def expand_dims_axes(eqn, axes):
    rank = len(_shape(eqn.outvars[0]))
    new = {d % rank for d in eqn.params["dimensions"]}
    it = iter(axes)
    return tuple(None if p in new else next(it) for p in range(rank))


def _labels_only(axes_fn):
    def rule(ctx, eqn, inputs):
        x = inputs[0]
        return [Dependent(x.state, axes_fn(eqn, x.axes))]

    rule.__name__ = rule.__qualname__ = axes_fn.__name__.removesuffix("_axes")
    rule.__doc__ = f"``{rule.__name__}``: only the labels move."
    return rule


transpose = _labels_only(transpose_axes)
squeeze = _labels_only(squeeze_axes)


def expand_dims(ctx, eqn, inputs):
    """``expand_dims``: new unlabelled axes; a new size-1 axis takes back a spatial axis a
    reduction removed (see :func:`jaxrf._rules_grids.relabel_new_ones`)."""
    x = inputs[0]
    axes = expand_dims_axes(eqn, x.axes)
    new = sorted(d % len(axes) for d in eqn.params["dimensions"])
    return [Dependent(x.state, relabel_new_ones(x, axes, _shape(eqn.outvars[0]), new))]


def broadcast_axes(eqn, axes, stretchable=lambda label: False):
    """Labels after ``broadcast_in_dim`` and the spatial axes stretched from size 1 to ``n``.

    New axes are unlabelled; a labelled axis stretched from 1 keeps its label only where
    ``stretchable(label)`` (a size-1 spatial axis of the map), else it loses it."""
    shape = eqn.params["shape"]
    in_shape = _shape(eqn.invars[0])
    out: list[Label] = [None] * len(shape)
    stretched: dict[int, int] = {}
    for i, p in enumerate(eqn.params["broadcast_dimensions"]):
        if in_shape[i] == shape[p]:
            out[p] = axes[i]
        elif isinstance(axes[i], int) and stretchable(axes[i]):
            out[p] = axes[i]
            stretched[axes[i]] = int(shape[p])
    return tuple(out), stretched


def broadcast_layout(eqn, axes):
    return broadcast_axes(eqn, axes)[0]


def broadcast_in_dim(ctx, eqn, inputs):
    """New axes are unlabelled; a size-1 spatial axis stretched to ``n`` keeps its label (the
    map keeps size 1 there and is broadcast where it meets another operand), so that a later
    pad or crop along it is followed; every position reads what position 0 reads."""
    x = inputs[0]
    axes, stretched = broadcast_axes(eqn, x.axes, lambda a: x.state.shape[a] == 1)
    state = x.state
    if stretched:
        target = tuple(stretched.get(a, n) for a, n in enumerate(state.shape))
        state = broadcast_state(state, target, ctx.name("broadcast"))
    shape = eqn.params["shape"]
    new = [p for p in range(len(shape)) if p not in eqn.params["broadcast_dimensions"]]
    return [Dependent(state, relabel_new_ones(Dependent(state, axes), axes, shape, new))]


def _reshape_group(items, out_shape, outs, i, j):
    """The next run of input items and output axes with equal products, from ``i``/``j``."""
    group, targets = [items[i]], [outs[j]]
    i, j = i + 1, j + 1
    a, b = group[0][0], out_shape[targets[0]]
    while a != b:
        if a < b:
            group.append(items[i])
            a *= items[i][0]
            i += 1
        else:
            targets.append(outs[j])
            b *= out_shape[outs[j]]
            j += 1
    return group, targets, i, j


def _flatten(group):
    parts, sizes = [], []
    for n, lab in group:
        if isinstance(lab, Flat):
            parts += lab.parts
            sizes += lab.sizes
        else:
            parts.append(lab)
            sizes.append(n)
    return parts, sizes


def reshape_axes(eqn, axes):
    """Layout of a reshape that keeps spatial axes whole: flattening (H, W) into tokens and
    back. (The interval rule, :func:`jaxrf._rules_factor.reshape`, also follows splits.)"""
    if eqn.params.get("dimensions") is not None:
        raise Mixing("reshape with a dimension permutation")
    in_shape, out_shape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    items = [(n, lab) for n, lab in zip(in_shape, axes, strict=True) if n != 1]
    outs = [p for p, n in enumerate(out_shape) if n != 1]
    out: list[Label] = [None] * len(out_shape)
    i = j = 0
    while i < len(items) or j < len(outs):
        group, targets, i, j = _reshape_group(items, out_shape, outs, i, j)
        parts, sizes = _flatten(group)
        if all(q is None for q in parts):
            continue
        if len(targets) == 1:
            out[targets[0]] = parts[0] if len(parts) == 1 else Flat(tuple(parts), tuple(sizes))
        elif [out_shape[t] for t in targets] == sizes:
            for t, q in zip(targets, parts, strict=True):
                out[t] = q
        else:
            raise Mixing(f"reshape {in_shape} -> {out_shape} splits spatial axes {parts}")
    return tuple(out)


# ---------------------------------------------------------------------------------------
# Contractions with constants: dense layers, interpolation matrices, gathers.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dot:
    """The axes of a ``dot_general``: per operand, contracted, batch and free positions."""

    contract: tuple[tuple[int, ...], tuple[int, ...]]
    batch: tuple[tuple[int, ...], tuple[int, ...]]
    free: tuple[tuple[int, ...], tuple[int, ...]]

    @classmethod
    def of(cls, eqn) -> _Dot:
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        ranks = (len(_shape(eqn.invars[0])), len(_shape(eqn.invars[1])))
        contract, batch = (tuple(lc), tuple(rc)), (tuple(lb), tuple(rb))
        free = tuple(
            tuple(p for p in range(ranks[k]) if p not in contract[k] and p not in batch[k])
            for k in (0, 1)
        )
        return cls(contract, batch, free)

    def out_axes(self, labels, batch_labels=None):
        """Per output axis: batch dims, lhs free, rhs free."""
        if batch_labels is None:
            batch_labels = [labels[0][p] for p in self.batch[0]]
        return (
            tuple(batch_labels)
            + tuple(labels[0][p] for p in self.free[0])
            + tuple(labels[1][p] for p in self.free[1])
        )


def dot_general(ctx, eqn, inputs):
    """Contraction over channels: pointwise. A constant matrix over one spatial axis (resize):
    the nonzero pattern of the evaluated matrix, exactly. Both operands dependent and a spatial
    axis contracted (attention): every output reads the whole input."""
    dot = _Dot.of(eqn)
    labels = [
        v.axes if isinstance(v, Dependent) else (None,) * len(_shape(var))
        for v, var in zip(inputs, eqn.invars, strict=True)
    ]
    deps = [k for k in (0, 1) if isinstance(inputs[k], Dependent)]
    if len(deps) == 2:
        return _dot_both(ctx, dot, inputs, labels)
    k = deps[0]
    pos = [p for p in dot.contract[k] if labels[k][p] is not None]
    if not pos:
        return [Dependent(inputs[k].state, dot.out_axes(labels))]
    if any(has_parts(labels[k][p]) for p in pos):  # a dense layer over digits of axes
        res = contract_digits(ctx, inputs[k], pos, "dense")
        (dep,) = res.outputs
        cleared = [_clear(dep.axes, pos) if q == k else labels[q] for q in (0, 1)]
        return Result.join([Dependent(dep.state, dot.out_axes(cleared))], res)
    if len(pos) != 1 or not isinstance(labels[k][pos[0]], int):
        split = separable_contraction(ctx, dot, inputs[k], k, inputs[1 - k].value, labels)
        if split is not None:
            return split
        return _dot_dense(ctx, dot, inputs[k], k, labels, pos)
    return _dot_resize(ctx, eqn, dot, inputs, k, labels, pos[0])


def _dot_both(ctx, dot: _Dot, inputs, labels):
    """Both operands depend on the input: a merge, or attention when a spatial axis is
    contracted or appears twice (every output reads the whole input)."""
    lhs, rhs = inputs
    merged = [
        labels[0][p] if labels[0][p] is not None else labels[1][q]
        for p, q in zip(dot.batch[0], dot.batch[1], strict=True)
    ]
    axes = dot.out_axes(labels, merged)
    spatial = [a for lab in axes for a in _spatial_of(lab)]
    grouped = grouped_attention(ctx, dot, inputs, labels)
    if grouped is not None:
        return grouped
    contracted = any(labels[k][p] is not None for k in (0, 1) for p in dot.contract[k])
    if contracted or len(spatial) != len(set(spatial)):
        name = ctx.name("attention")
        shape = tuple(max(v.state.shape[a] for v in inputs) for a in range(ctx.ndim))
        state = lhs.state.make_global(shape, name)
        return Result(
            (Dependent(state, _first_only(axes)),), (ctx.layer(state, name, "attention"),)
        )
    res = unify(ctx, [Dependent(v.state, ()) for v in inputs], "merge")
    return Result.join([Dependent(res.outputs[0].state, axes)], res)


def _dot_dense(ctx, dot: _Dot, dep: Dependent, k: int, labels, pos):
    """A contraction over several spatial axes (a dense layer on flattened features)."""
    name = ctx.name("dense")
    state = _global_along(
        dep.state, sorted({a for p in pos for a in _spatial_of(labels[k][p])}), name
    )
    cleared = [_clear(labels[j], pos if j == k else ()) for j in (0, 1)]
    return Result((Dependent(state, dot.out_axes(cleared)),), (ctx.layer(state, name, "dense"),))


def _dot_resize(ctx, eqn, dot: _Dot, inputs, k: int, labels, p: int):
    """A constant matrix over one spatial axis: its nonzero pattern ``(n_out, n_in)``."""
    axis = labels[k][p]
    c_other = dot.contract[1 - k][dot.contract[k].index(p)]
    free_other = [q for q in dot.free[1 - k] if _shape(eqn.invars[1 - k])[q] != 1]
    if not free_other and len(dot.free[1 - k]) == 1 and not dot.batch[1 - k]:
        free_other = list(dot.free[1 - k])  # an (n_in, 1) matrix: a resize to size 1 keeps it
    if len(free_other) > 1 or dot.batch[1 - k]:
        raise Mixing("a constant contraction over a spatial axis with several free axes")
    keep = [c_other] + free_other
    pattern = np.moveaxis(inputs[1 - k].value != 0, keep, range(len(keep)))
    pattern = pattern.reshape(pattern.shape[: len(keep)] + (-1,)).any(axis=-1)
    pattern = pattern.T if free_other else pattern[None, :]  # (n_out, n_in)
    name = ctx.name("resize")
    state = pattern_through(inputs[k].state, axis, pattern, name, is_global=not free_other)
    rec = ctx.layer(state, name, "resize" if free_other else "global_dot")
    labels = [list(labels[0]), list(labels[1])]
    labels[k][p] = None
    if free_other:
        labels[1 - k][free_other[0]] = axis
    return Result((Dependent(state, dot.out_axes(labels)),), (rec,))


def _clear(labels, positions):
    return tuple(None if p in positions else lab for p, lab in enumerate(labels))


def _first_only(axes):
    seen, out = set(), []
    for lab in axes:
        s = set(_spatial_of(lab))
        out.append(None if s & seen else lab)
        seen |= s
    return tuple(out)


def _gather_lookup(eqn, operand: Dependent, idx):
    """Checks that a gather is a lookup along one axis; its axis and output labels."""
    dn = eqn.params["dimension_numbers"]
    slice_sizes = eqn.params["slice_sizes"]
    in_shape, out_shape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    if (
        len(dn.start_index_map) != 1
        or dn.operand_batching_dims
        or idx.shape[-1] != 1
        or tuple(dn.collapsed_slice_dims) not in ((), tuple(dn.start_index_map))
    ):
        raise Mixing("a gather that is not a lookup along one axis")
    ax = dn.start_index_map[0]
    for q, n in enumerate(in_shape):
        if q != ax and slice_sizes[q] != n and operand.axes[q] is not None:
            raise Mixing("a gather that crops a spatial axis")
    offset_src = [q for q in range(len(in_shape)) if q not in dn.collapsed_slice_dims]
    axes: list[Label] = [None] * len(out_shape)
    for q_out, q_in in zip(dn.offset_dims, offset_src, strict=True):
        axes[q_out] = operand.axes[q_in] if q_in != ax else None
    batch_out = [q for q in range(len(out_shape)) if q not in dn.offset_dims]
    return ax, axes, batch_out


def gather(ctx, eqn, inputs):
    """``gather`` with constant indices along one axis (nearest-neighbour resize)."""
    operand, indices = inputs
    if isinstance(indices, Dependent):
        raise Mixing("the gather indices depend on the input")
    idx = indices.value
    ax, axes, batch_out = _gather_lookup(eqn, operand, idx)
    dn = eqn.params["dimension_numbers"]
    size = eqn.params["slice_sizes"][ax]
    big = [q for q, n in zip(batch_out, idx.shape[:-1], strict=True) if n != 1]
    label = operand.axes[ax]
    if label is None:
        return [Dependent(operand.state, tuple(axes))]
    if (
        isinstance(label, Flat)
        or len(big) > 1
        or (size != 1 and ax not in dn.collapsed_slice_dims and big)
    ):
        raise Mixing("a gather along a flattened axis or with several index axes")
    pattern = _gather_pattern(idx, _shape(eqn.invars[0])[ax], size, str(eqn.params["mode"]))
    name = ctx.name("gather")
    state = pattern_through(operand.state, label, pattern, name)
    if big:
        axes[big[0]] = label
    elif len(batch_out) == 1:  # one index (a resize to size 1): its axis keeps the label
        axes[batch_out[0]] = label
    return Result((Dependent(state, tuple(axes)),), (ctx.layer(state, name, "gather"),))


def _gather_pattern(idx, n: int, size: int, mode: str) -> np.ndarray:
    """``(n_indices, n)``: which positions each lookup of ``size`` elements reads."""
    starts = idx.reshape(-1).astype(np.int64)
    inside = (starts >= 0) & (starts <= n - size)
    if "FILL" not in mode:
        starts, inside = np.clip(starts, 0, n - size), np.ones_like(inside)
    pattern = np.zeros((len(starts), n), dtype=bool)
    for t in range(size):
        rows = np.flatnonzero(inside)
        pattern[rows, starts[rows] + t] = True
    return pattern


# ---------------------------------------------------------------------------------------
# Global: the ``unknown="global"`` escape hatch.
# ---------------------------------------------------------------------------------------


def global_outputs(ctx, eqn, inputs) -> Result:
    """Every output reads the whole input; labels kept where the shape is kept."""
    first = next(v for v in inputs if isinstance(v, Dependent))
    op = eqn.primitive.name
    name = ctx.name(op)
    in_shape = tuple(eqn.invars[inputs.index(first)].aval.shape)
    outs = []
    for var in eqn.outvars:
        if tuple(var.aval.shape) == in_shape:
            state, axes = first.state.make_global(first.state.shape, name), first.axes
        else:
            state = first.state.make_global((1,) * ctx.ndim, name)
            axes = (None,) * len(var.aval.shape)
        outs.append(Dependent(state, axes))
    return Result(tuple(outs), (ctx.layer(outs[0].state, name, op),))


def treat_as_global(ctx, eqn, inputs):
    """Every output reads the whole input (``register_rule(name, "global")``)."""
    return global_outputs(ctx, eqn, list(inputs))


# Digits of split axes, size-1 axes that come back, separable contractions (they build on the
# helpers above).
from ._rules_factor import contract_digits, grouped_attention, has_parts  # noqa: E402
from ._rules_grids import relabel_new_ones, separable_contraction  # noqa: E402
