"""The table of jaxpr primitive -> receptive-field rule, and :func:`register_rule`.

A rule receives the walker (``ctx``), the equation, and one value per equation input: a
:class:`Dependent` (a feature map that depends on the network input: its
:class:`~jaxrf._field.FieldState` and which array axis holds which spatial axis) or a
:class:`Constant` (evaluated lazily: weights, ``iota``-built interpolation matrices, gather
indices). It returns one value per equation output. Rules are only called when at least one
input is :class:`Dependent`; everything else is constant folding.

Array axes are labelled: ``None`` (batch, channels, any axis the receptive field does not
vary along), an ``int`` (that spatial axis of the network input), or :class:`Flat` (several
axes flattened into one, as in a (B, H*W, C) token sequence).

The table is :data:`RULES`, one entry per primitive, grouped by kind below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ._axis import Window
from ._field import FieldState, merge_states, pattern_through
from ._layers import broadcast_state


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
Rule = Callable[..., Sequence[Value]]


class Mixing(Exception):  # noqa: N818 (internal control flow, never escapes the walker)
    """Raised by a rule whose operation mixes spatial axes in a way the algebra cannot follow."""


def _deps(inputs: Sequence[Value]) -> list[tuple[int, Dependent]]:
    return [(k, v) for k, v in enumerate(inputs) if isinstance(v, Dependent)]


def _shape(var) -> tuple[int, ...]:
    return tuple(var.aval.shape)


def _trivial(w: Window) -> bool:
    return w == Window(1)


def _spatial_windows(ctx, eqn, dep: Dependent, windows: Sequence[Window | None]):
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


def _through(ctx, eqn, dep: Dependent, windows, axes, op: str, layer: bool = False) -> Dependent:
    """Push ``dep`` through per-array-axis ``windows``; record a layer if it moved, or always
    when ``layer`` (convolutions and pools are layers even when 1x1)."""
    spatial, touched = _spatial_windows(ctx, eqn, dep, windows)
    if not touched:
        if layer and any(a is not None for a in dep.axes):
            name = ctx.layer_name(eqn, op)
            ctx.record(dep.state, name, op, spatial)
        return Dependent(dep.state, tuple(axes))
    name = ctx.layer_name(eqn, op)
    state = dep.state.through(spatial, name)
    if 0 in state.shape:
        raise ValueError(f"'{name}' ({op}) leaves no output features: spatial shape {state.shape}.")
    ctx.record(state, name, op, spatial)
    return Dependent(state, tuple(axes))


def unify(ctx, eqn, deps: Sequence[Dependent], op: str) -> Dependent:
    """Merge operands of an elementwise op / channel concatenation, broadcasting size-1 axes."""
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
    held = {a for lab in labels for a in _spatial_of(lab)}
    target = tuple(max(d.state.shape[a] for d in deps) for a in range(ctx.ndim))
    states = []
    for d in deps:
        mine = {a for lab in d.axes for a in _spatial_of(lab)} if len(d.axes) == ndim_out else set()
        for a in held - mine:
            if d.state.shape[a] != 1:
                raise Mixing(f"spatial axis {a} sits on different array axes of the operands")
        states.append(broadcast_state(d.state, target, op))
    distinct = list({id(s): s for s in states}.values())
    if len(distinct) == 1:
        return Dependent(distinct[0], tuple(labels))
    name = ctx.layer_name(eqn, op)
    state = merge_states(distinct, name)
    ctx.record(state, name, op)
    return Dependent(state, tuple(labels))


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
        out = deps[0]
    else:
        out = unify(ctx, eqn, deps, eqn.primitive.name)
    return [out] * len(eqn.outvars)


def identity(ctx, eqn, inputs):
    """Ops returning their operands unchanged (optimization_barrier, sharding constraints)."""
    return list(inputs)[: len(eqn.outvars)]


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
    if has_parts(lhs.axes[lhs_spec[1]]):  # space-to-depth: the features hold sub-pixel digits
        state, labels = contract_digits(ctx, eqn, lhs, [lhs_spec[1]], "space_to_depth")
        lhs = Dependent(state, labels)
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
    return [_through(ctx, eqn, lhs, windows, axes, "conv", layer=True)]


_POOL_OPS = {
    "reduce_window_max": "max_pool",
    "reduce_window_min": "min_pool",
    "reduce_window_sum": "sum_pool",
    "reduce_window": "pool",
}


def reduce_window(ctx, eqn, inputs):
    """``reduce_window_{max,min,sum}`` and generic ``reduce_window``: pooling windows."""
    p = eqn.params
    n_out = len(eqn.outvars)
    deps = [d for _, d in _deps(inputs[:n_out])]
    if (
        any(isinstance(v, Dependent) for v in inputs[n_out:])
        and eqn.primitive.name == "reduce_window"
    ):
        raise Mixing("the initial value depends on the input")
    dep = deps[0] if len(deps) == 1 else unify(ctx, eqn, deps, "merge")
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
    out = _through(ctx, eqn, dep, windows, dep.axes, _POOL_OPS[eqn.primitive.name], layer=True)
    return [out] * n_out


def pad(ctx, eqn, inputs):
    """``pad``: padding (negative = cropping) and interior padding (= input dilation)."""
    operand, value = inputs
    if isinstance(value, Dependent):
        raise Mixing("the padding value depends on the input")
    windows = [
        Window(1, 1, (int(lo), int(hi)), 1, int(interior) + 1)
        for lo, hi, interior in eqn.params["padding_config"]
    ]
    return [_through(ctx, eqn, operand, windows, operand.axes, "pad")]


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
    return [_through(ctx, eqn, operand, windows, operand.axes, "slice")]


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
    return [_through(ctx, eqn, operand, windows, operand.axes, "slice")]


def split(ctx, eqn, inputs):
    """``split`` (``jnp.split``): output ``k`` is the static slice ``[o_k, o_k + n_k)`` along
    ``axis`` (``o_k`` the sum of the earlier sizes), a kernel-1 window cropping both ends."""
    (operand,) = inputs
    axis = eqn.params["axis"]
    n = _shape(eqn.invars[0])[axis]
    outs, offset = [], 0
    for size in map(int, eqn.params["sizes"]):
        windows: list[Window | None] = [None] * len(operand.axes)
        windows[axis] = Window(1, 1, (-offset, offset + size - n))
        outs.append(_through(ctx, eqn, operand, windows, operand.axes, "slice"))
        offset += size
    return outs


def cumulative(ctx, eqn, inputs):
    """``cumsum``/``cummax``/...: output ``i`` reads ``0..i`` (or ``i..n-1`` reversed)."""
    (operand,) = inputs
    shape = _shape(eqn.invars[0])
    axis, n = eqn.params["axis"], shape[eqn.params["axis"]]
    windows: list[Window | None] = [None] * len(shape)
    windows[axis] = Window(n, 1, (0, n - 1) if eqn.params["reverse"] else (n - 1, 0))
    return [_through(ctx, eqn, operand, windows, operand.axes, eqn.primitive.name)]


# ---------------------------------------------------------------------------------------
# Merges along an axis.
# ---------------------------------------------------------------------------------------


def concatenate(ctx, eqn, inputs):
    """Channel concatenation: a merge. Spatial concatenation: the operands side by side."""
    d = eqn.params["dimension"]
    deps = _deps(inputs)
    labels = {dep.axes[d] for _, dep in deps}
    if labels == {None}:
        return [unify(ctx, eqn, [dep for _, dep in deps], "concat")]
    if len(labels) != 1 or isinstance(next(iter(labels)), Flat):
        raise Mixing(f"concatenation along an axis holding {sorted(map(str, labels))}")
    sizes = [_shape(v)[d] for v in eqn.invars]
    total, offsets = sum(sizes), np.cumsum([0] + sizes[:-1])
    placed = []
    for k, dep in deps:
        windows: list[Window | None] = [None] * len(dep.axes)
        windows[d] = Window(1, 1, (int(offsets[k]), int(total - offsets[k] - sizes[k])))
        spatial, touched = _spatial_windows(ctx, eqn, dep, windows)
        state = dep.state.through(spatial, ctx.layer_name(eqn, "concat")) if touched else dep.state
        placed.append(Dependent(state, dep.axes))
    return [unify(ctx, eqn, placed, "concat")]


# ---------------------------------------------------------------------------------------
# Reductions.
# ---------------------------------------------------------------------------------------


def reduction(ctx, eqn, inputs):
    """``reduce_*``/``argmax``/``argmin``: over channels, nothing changes; over a spatial axis,
    every output reads the whole extent of that axis (global pooling)."""
    axes = eqn.params.get("axes", eqn.params.get("dimensions"))
    n_out = len(eqn.outvars)
    deps = [
        d
        for _, d in _deps(inputs[: len(inputs) - (n_out if eqn.primitive.name == "reduce" else 0)])
    ]
    if eqn.primitive.name == "reduce" and any(isinstance(v, Dependent) for v in inputs[-n_out:]):
        raise Mixing("the initial value depends on the input")
    dep = deps[0] if len(deps) == 1 else unify(ctx, eqn, deps, "merge")
    if any(has_parts(dep.axes[p]) for p in axes):
        state, labels = contract_digits(ctx, eqn, dep, axes, "global_" + eqn.primitive.name)
        kept = tuple(lab for p, lab in enumerate(labels) if p not in axes)
        return [Dependent(state, kept)] * n_out
    reduced = [a for p in axes for a in _spatial_of(dep.axes[p])]
    kept = tuple(lab for p, lab in enumerate(dep.axes) if p not in axes)
    if not reduced:
        return [Dependent(dep.state, kept)] * n_out
    name = ctx.layer_name(eqn, "global_" + eqn.primitive.name)
    state = dep.state
    for a in reduced:
        state = pattern_through(state, a, np.ones((1, state.shape[a]), bool), name, is_global=True)
    ctx.record(state, name, "global_" + eqn.primitive.name)
    return [Dependent(state, kept)] * n_out


# ---------------------------------------------------------------------------------------
# Shape and layout: only the labels move.
# ---------------------------------------------------------------------------------------


def transpose(ctx, eqn, inputs):
    (x,) = inputs
    return [Dependent(x.state, tuple(x.axes[p] for p in eqn.params["permutation"]))]


def squeeze(ctx, eqn, inputs):
    (x,) = inputs
    drop = {d % len(x.axes) for d in eqn.params["dimensions"]}
    return [Dependent(x.state, tuple(lab for p, lab in enumerate(x.axes) if p not in drop))]


def expand_dims(ctx, eqn, inputs):
    (x,) = inputs
    rank = len(_shape(eqn.outvars[0]))
    new = {d % rank for d in eqn.params["dimensions"]}
    it = iter(x.axes)
    axes = tuple(None if p in new else next(it) for p in range(rank))
    out_shape = _shape(eqn.outvars[0])
    return [Dependent(x.state, relabel_new_ones(x, axes, out_shape, sorted(new)))]


def broadcast_in_dim(ctx, eqn, inputs):
    """New axes are unlabelled; a size-1 spatial axis stretched to ``n`` loses its label (the
    map keeps size 1 there and is broadcast where it meets another operand)."""
    x = inputs[0]
    shape = eqn.params["shape"]
    in_shape = _shape(eqn.invars[0])
    axes: list[Label] = [None] * len(shape)
    stretched: dict[int, int] = {}
    for i, p in enumerate(eqn.params["broadcast_dimensions"]):
        label = x.axes[i]
        if in_shape[i] == shape[p]:
            axes[p] = label
        elif isinstance(label, int) and x.state.shape[label] == 1:
            # A labelled size-1 spatial axis stretched to n keeps its label, so that a later
            # pad or crop along it is followed; every position reads what position 0 reads.
            axes[p] = label
            stretched[label] = int(shape[p])
    state = x.state
    if stretched:
        target = tuple(stretched.get(a, n) for a, n in enumerate(state.shape))
        state = broadcast_state(state, target, ctx.layer_name(eqn, "broadcast"))
    new = [p for p in range(len(shape)) if p not in eqn.params["broadcast_dimensions"]]
    return [Dependent(state, relabel_new_ones(Dependent(state, tuple(axes)), axes, shape, new))]


def reshape(ctx, eqn, inputs):
    """Reshapes that keep spatial axes whole: flattening (H, W) into tokens and back."""
    x = inputs[0]
    if eqn.params.get("dimensions") is not None:
        raise Mixing("reshape with a dimension permutation")
    in_shape, out_shape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    items = [(n, lab) for n, lab in zip(in_shape, x.axes, strict=True) if n != 1]
    outs = [p for p, n in enumerate(out_shape) if n != 1]
    axes: list[Label] = [None] * len(out_shape)
    i = 0
    j = 0
    while i < len(items) or j < len(outs):
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
        parts, sizes = [], []
        for n, lab in group:
            if isinstance(lab, Flat):
                parts += lab.parts
                sizes += lab.sizes
            else:
                parts.append(lab)
                sizes.append(n)
        if all(q is None for q in parts):
            continue
        if len(targets) == 1:
            axes[targets[0]] = parts[0] if len(parts) == 1 else Flat(tuple(parts), tuple(sizes))
        elif [out_shape[t] for t in targets] == sizes:
            for t, q in zip(targets, parts, strict=True):
                axes[t] = q
        else:
            raise Mixing(f"reshape {in_shape} -> {out_shape} splits spatial axes {parts}")
    ones = [p for p, n in enumerate(out_shape) if n == 1]
    kept = Dependent(x.state, tuple(axes))
    return [Dependent(x.state, relabel_new_ones(kept, axes, out_shape, ones))]


# ---------------------------------------------------------------------------------------
# Contractions with constants: dense layers, interpolation matrices, gathers.
# ---------------------------------------------------------------------------------------


def dot_general(ctx, eqn, inputs):
    """Contraction over channels: pointwise. A constant matrix over one spatial axis (resize):
    the nonzero pattern of the evaluated matrix, exactly. Both operands dependent and a spatial
    axis contracted (attention): every output reads the whole input."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = inputs
    ranks = (len(_shape(eqn.invars[0])), len(_shape(eqn.invars[1])))
    contract, batch = (tuple(lc), tuple(rc)), (tuple(lb), tuple(rb))
    free = [
        [p for p in range(ranks[k]) if p not in contract[k] and p not in batch[k]] for k in (0, 1)
    ]
    both = [lhs, rhs]

    def out_axes(labels):  # per output axis: batch dims, lhs free, rhs free
        return (
            tuple(labels[0][p] for p in batch[0])
            + tuple(labels[0][p] for p in free[0])
            + tuple(labels[1][p] for p in free[1])
        )

    labels = [
        v.axes if isinstance(v, Dependent) else (None,) * r
        for v, r in zip(both, ranks, strict=True)
    ]
    contracted = {
        k: [labels[k][p] for p in contract[k] if labels[k][p] is not None] for k in (0, 1)
    }
    deps = [k for k in (0, 1) if isinstance(both[k], Dependent)]
    if len(deps) == 2:
        merged = [
            labels[0][p] if labels[0][p] is not None else labels[1][q]
            for p, q in zip(batch[0], batch[1], strict=True)
        ]
        axes = (
            tuple(merged)
            + tuple(labels[0][p] for p in free[0])
            + tuple(labels[1][p] for p in free[1])
        )
        spatial = [a for lab in axes for a in _spatial_of(lab)]
        dims = (contract, batch, free)
        grouped = grouped_attention(ctx, eqn, both, labels, dims, out_axes)
        if grouped is not None:
            return grouped
        if contracted[0] or contracted[1] or len(spatial) != len(set(spatial)):
            # Attention (q k^T, then weights @ v): every output reads the whole input.
            name = ctx.layer_name(eqn, "attention")
            shape = tuple(max(both[k].state.shape[a] for k in (0, 1)) for a in range(ctx.ndim))
            state = lhs.state.make_global(shape, name)
            ctx.record(state, name, "attention")
            return [Dependent(state, _first_only(axes))]
        merged = unify(ctx, eqn, [Dependent(both[k].state, ()) for k in (0, 1)], "merge")
        return [Dependent(merged.state, axes)]
    k = deps[0]
    dep = both[k]
    if not contracted[k]:
        return [Dependent(dep.state, out_axes(labels))]
    pos = [p for p in contract[k] if labels[k][p] is not None]
    if any(has_parts(labels[k][p]) for p in pos):
        state, new = contract_digits(ctx, eqn, dep, pos, "dense")
        cleared = [_clear(new, pos) if q == k else labels[q] for q in (0, 1)]
        return [Dependent(state, out_axes(cleared))]
    if len(pos) != 1 or not isinstance(labels[k][pos[0]], int):
        dims = (contract, batch, free)
        split = separable_contraction(ctx, eqn, dep, k, both[1 - k].value, labels, dims, out_axes)
        if split is not None:
            return split
        name = ctx.layer_name(eqn, "dense")
        state = dep.state
        for a in sorted({a for p in pos for a in _spatial_of(labels[k][p])}):
            state = pattern_through(state, a, np.ones((1, state.shape[a]), bool), name, True)
        ctx.record(state, name, "dense")
        return [
            Dependent(
                state,
                out_axes(
                    [
                        _clear(labels[0], pos if k == 0 else ()),
                        _clear(labels[1], pos if k == 1 else ()),
                    ]
                ),
            )
        ]
    p = pos[0]
    axis = labels[k][p]
    other = both[1 - k]
    c_other = contract[1 - k][contract[k].index(p)]
    value = other.value != 0
    free_other = [q for q in free[1 - k] if _shape(eqn.invars[1 - k])[q] != 1]
    if not free_other and len(free[1 - k]) == 1 and not batch[1 - k]:
        free_other = list(free[1 - k])  # an (n_in, 1) matrix: a resize to size 1 keeps the axis
    if len(free_other) > 1 or batch[1 - k]:
        raise Mixing("a constant contraction over a spatial axis with several free axes")
    keep = [c_other] + free_other
    pattern = np.moveaxis(value, keep, range(len(keep)))
    pattern = pattern.reshape(pattern.shape[: len(keep)] + (-1,)).any(axis=-1)
    pattern = pattern.T if free_other else pattern[None, :]  # (n_out, n_in)
    name = ctx.layer_name(eqn, "resize")
    state = pattern_through(dep.state, axis, pattern, name, is_global=not free_other)
    ctx.record(state, name, "resize" if free_other else "global_dot")
    labels = [list(labels[0]), list(labels[1])]
    labels[k][p] = None
    if free_other:
        labels[1 - k][free_other[0]] = axis
    return [Dependent(state, out_axes(labels))]


def _clear(labels, positions):
    return tuple(None if p in positions else lab for p, lab in enumerate(labels))


def _first_only(axes):
    seen, out = set(), []
    for lab in axes:
        s = set(_spatial_of(lab))
        out.append(None if s & seen else lab)
        seen |= s
    return tuple(out)


def gather(ctx, eqn, inputs):
    """``gather`` with constant indices along one axis (nearest-neighbour resize)."""
    operand, indices = inputs
    if isinstance(indices, Dependent):
        raise Mixing("the gather indices depend on the input")
    dn = eqn.params["dimension_numbers"]
    slice_sizes = eqn.params["slice_sizes"]
    in_shape, out_shape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    idx = indices.value
    if (
        len(dn.start_index_map) != 1
        or dn.operand_batching_dims
        or idx.shape[-1] != 1
        or tuple(dn.collapsed_slice_dims) not in ((), tuple(dn.start_index_map))
    ):
        raise Mixing("a gather that is not a lookup along one axis")
    ax = dn.start_index_map[0]
    size = slice_sizes[ax]
    for q, n in enumerate(in_shape):
        if q != ax and slice_sizes[q] != n and operand.axes[q] is not None:
            raise Mixing("a gather that crops a spatial axis")
    batch_shape = idx.shape[:-1]
    batch_out = [q for q in range(len(out_shape)) if q not in dn.offset_dims]
    big = [q for q, n in zip(batch_out, batch_shape, strict=True) if n != 1]
    label = operand.axes[ax]
    offset_src = [q for q in range(len(in_shape)) if q not in dn.collapsed_slice_dims]
    axes: list[Label] = [None] * len(out_shape)
    for q_out, q_in in zip(dn.offset_dims, offset_src, strict=True):
        axes[q_out] = operand.axes[q_in] if q_in != ax else None
    if label is None:
        return [Dependent(operand.state, tuple(axes))]
    if (
        isinstance(label, Flat)
        or len(big) > 1
        or (size != 1 and ax not in dn.collapsed_slice_dims and big)
    ):
        raise Mixing("a gather along a flattened axis or with several index axes")
    n = in_shape[ax]
    starts = idx.reshape(-1).astype(np.int64)
    mode = str(eqn.params["mode"])
    inside = (starts >= 0) & (starts <= n - size)
    if "FILL" not in mode:
        starts, inside = np.clip(starts, 0, n - size), np.ones_like(inside)
    pattern = np.zeros((len(starts), n), dtype=bool)
    for t in range(size):
        rows = np.flatnonzero(inside)
        pattern[rows, starts[rows] + t] = True
    name = ctx.layer_name(eqn, "gather")
    state = pattern_through(operand.state, label, pattern, name)
    ctx.record(state, name, "gather")
    if big:
        axes[big[0]] = label
    elif len(batch_out) == 1:  # one index (a resize to size 1): its axis keeps the label
        axes[batch_out[0]] = label
    return [Dependent(state, tuple(axes))]


# ---------------------------------------------------------------------------------------
# Containers: walked recursively.
# ---------------------------------------------------------------------------------------


def call(ctx, eqn, inputs):
    """``jit``/``pjit``/``closed_call``/``custom_jvp_call``/``custom_vjp_call``/``remat``."""
    sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    return ctx.walk_call(eqn, sub, inputs)


def treat_as_global(ctx, eqn, inputs):
    """Every output reads the whole input (the ``unknown="global"`` escape hatch)."""
    return ctx.global_outputs(eqn, inputs, warn=False)


# ---------------------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------------------

_UNARY = """neg sign floor ceil round is_finite exp exp2 log log1p expm1 tanh logistic sin cos tan
asin acos atan sinh cosh asinh acosh atanh sqrt rsqrt cbrt abs not erf erfc erf_inv lgamma
digamma real imag conj square integer_pow convert_element_type reduce_precision copy copy_p
clz population_count bessel_i0e bessel_i1e stop_gradient""".split()
_NARY = """add add_any sub mul div rem pow max min atan2 and or xor eq ne lt le gt ge
shift_left shift_right_logical shift_right_arithmetic nextafter igamma igammac complex
select_n clamp""".split()
_CALLS = """jit pjit closed_call core_call custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr
remat remat2 checkpoint""".split()
_REDUCTIONS = """reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor
argmax argmin reduce""".split()
_CUMULATIVE = "cumsum cumprod cummax cummin cumlogsumexp".split()

RULES: dict[str, Rule] = {
    **dict.fromkeys(_UNARY + _NARY, elementwise),
    **dict.fromkeys(["optimization_barrier", "sharding_constraint"], identity),
    "conv_general_dilated": conv,
    **dict.fromkeys(_POOL_OPS, reduce_window),
    "pad": pad,
    "slice": slice_,
    "dynamic_slice": dynamic_slice,
    "split": split,
    **dict.fromkeys(_CUMULATIVE, cumulative),
    "concatenate": concatenate,
    **dict.fromkeys(_REDUCTIONS, reduction),
    "transpose": transpose,
    "squeeze": squeeze,
    "expand_dims": expand_dims,
    "broadcast_in_dim": broadcast_in_dim,
    "reshape": reshape,
    "dot_general": dot_general,
    "gather": gather,
    **dict.fromkeys(_CALLS, call),
}

_BUILTIN_KINDS = {"elementwise": elementwise, "global": treat_as_global, "identity": identity}


def register_rule(name: str, rule: Rule | str) -> None:
    """Teach :func:`jaxrf.receptive_field` a primitive it does not know.

    Args:
        name: the primitive's name as it appears in the jaxpr (``eqn.primitive.name``).
        rule: ``"elementwise"`` (outputs depend on the same positions as the inputs),
            ``"global"`` (every output reads the whole input), ``"identity"`` (returns its
            operands), or a callable ``rule(ctx, eqn, inputs) -> outputs`` following the
            built-in rules of ``jaxrf._rules`` (e.g. ``jaxrf._rules.elementwise``).

    Raises:
        TypeError: ``rule`` is neither a callable nor one of the strings above.

    Example:
        >>> import jaxrf
        >>> jaxrf.register_rule("my_activation", "elementwise")
    """
    if isinstance(rule, str):
        if rule not in _BUILTIN_KINDS:
            raise TypeError(
                f"`rule` (={rule!r}) for primitive '{name}' must be a callable or one of "
                f"{sorted(_BUILTIN_KINDS)}."
            )
        rule = _BUILTIN_KINDS[rule]
    if not callable(rule):
        raise TypeError(
            f"`rule` (={rule!r}) for primitive '{name}' must be a callable "
            "rule(ctx, eqn, inputs) -> outputs or one of " + str(sorted(_BUILTIN_KINDS)) + "."
        )
    RULES[name] = rule


# Control flow, reversal, sorting, separable contractions: jaxrf._rules_grids.
from ._rules_factor import (  # noqa: E402
    contract_digits,
    grouped_attention,
    has_parts,
)
from ._rules_factor import reshape as reshape_digits  # noqa: E402
from ._rules_grids import (  # noqa: E402 (the grid rules build on the helpers above)
    GRID_RULES,
    relabel_new_ones,
    separable_contraction,
)
from ._rules_tokens import concat_tokens, slice_tokens  # noqa: E402

RULES.update(GRID_RULES)
RULES["reshape"] = reshape_digits
RULES["concatenate"] = concat_tokens
RULES["slice"] = slice_tokens
