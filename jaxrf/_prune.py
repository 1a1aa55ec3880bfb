"""Cone pruning: compute, at every layer, only the features one output unit depends on.

The input crop (:func:`jaxrf.crop_for_unit`) restricts the *input* to a unit's cone; this module
restricts every intermediate map. For each variable of the network's (flattened) jaxpr, a box
(one half-open range ``[lo, hi)`` per axis) of the values that the probed output selection
needs is propagated backwards, equation by equation:

* elementwise operations need the same box of each operand (an axis the operand broadcasts
  from size 1 needs ``[0, 1)``);
* a window operation (``conv_general_dilated`` without input dilation, ``reduce_window_max``,
  ``reduce_window_min``, ``reduce_window_sum`` without base dilation) producing ``[a, b)`` on a
  windowed axis with stride ``s``, low padding ``p``, window ``k`` and window dilation ``d``
  reads input positions ``[a s - p, (b - 1) s - p + (k - 1) d + 1)``; the part of that range
  outside ``[0, n)`` is the operation's own padding, which the pruned network adds
  explicitly (zeros for convolutions and sums, the reduction's identity for max and min) before
  running the operation without padding. A convolution computes every output feature (the
  feature axis is not pruned) and reads every input feature;
* ``broadcast_in_dim``, ``transpose``, reductions and ``concatenate`` map boxes axis by axis
  (reduced axes and the concatenated axis are needed whole);
* every other operation needs its operands whole and computes its whole output (correct, not
  pruned).

A variable read by several equations needs the bounding box of what they read. In the forward
pass every equation computes exactly its box: each feature inside it reads the same inputs (the
same window of the same values, real or padding) as in the full network, so the probed values
and their gradients equal the full computation's (up to the order XLA sums a window in, which
may differ for a smaller array: a few float rounding units at most). Calls and custom
differentiation rules are inlined first (a ``custom_jvp_call`` body has fixed shapes), so
``relu``'s derivative at an input of exactly 0 is ``max``'s, 1/2, instead of 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np
from jax import lax
from jax.extend import core as jcore

from ._fold import constants, flatten
from ._walk import bind, walk

Box = tuple[tuple[int, int], ...]


class Cone(NamedTuple):
    """What one equation computes and reads when a box of its output is needed.

    ``out``: the box of the output it computes; ``boxes``: the box read of each operand;
    ``pads``: per operand, ``(low, high)`` padding per axis added after reading (None: none);
    ``changes``: parameter changes for the pruned equation; ``fill``: the padding value (None:
    zero).
    """

    out: Box
    boxes: list
    pads: list
    changes: dict
    fill: object = None


def _full(shape) -> Box:
    return tuple((0, n) for n in shape)


def _union(a: Box | None, b: Box) -> Box:
    return (
        b
        if a is None
        else tuple((min(p, q), max(r, t)) for (p, r), (q, t) in zip(a, b, strict=True))
    )


def _window_axis(box, n, size, stride, pad, dilation):
    """(clipped input range, (low, high) padding to add) for output range ``box`` of one axis."""
    a, b = box
    lo = a * stride - pad[0]
    hi = (b - 1) * stride - pad[0] + (size - 1) * dilation + 1
    return (max(lo, 0), min(hi, n)), (max(-lo, 0), max(hi - n, 0))


def conv_cone(eqn, out: Box) -> Cone | None:
    """``conv_general_dilated`` without input dilation: every output feature, every input
    feature, the window of the spatial axes (the padding made explicit)."""
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        return None
    shape, kshape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    out = list(out)
    out[out_spec[1]] = (0, eqn.outvars[0].aval.shape[out_spec[1]])
    box, pads = list(_full(shape)), [(0, 0)] * len(shape)
    box[lhs_spec[0]] = out[out_spec[0]]
    for i, (s, pad, d) in enumerate(
        zip(p["window_strides"], p["padding"], p["rhs_dilation"], strict=True)
    ):
        ax = lhs_spec[2 + i]
        k = kshape[rhs_spec[2 + i]]
        box[ax], pads[ax] = _window_axis(out[out_spec[2 + i]], shape[ax], k, s, pad, d)
    zero = tuple((0, 0) for _ in p["padding"])
    return Cone(tuple(out), [tuple(box), _full(kshape)], [pads, None], dict(padding=zero))


def window_cone(fill) -> Callable:
    """The rule of a window reduction (without base dilation) whose padding value is
    ``fill`` (the reduction's identity: 0 for sums, -inf for max, +inf for min)."""

    def rule(eqn, out: Box) -> Cone | None:
        p = eqn.params
        if any(d != 1 for d in p["base_dilation"]):
            return None
        box, pads = [], []
        for i, n in enumerate(eqn.invars[0].aval.shape):
            args = p["window_dimensions"][i], p["window_strides"][i], p["padding"][i]
            b, pad = _window_axis(out[i], n, *args, p["window_dilation"][i])
            box.append(b)
            pads.append(pad)
        zero = tuple((0, 0) for _ in box)
        return Cone(out, [tuple(box)], [pads], dict(padding=zero), fill)

    return rule


def elementwise_cone(eqn, out: Box) -> Cone:
    """The same box of every operand (``[0, 1)`` on an axis it broadcasts from size 1)."""
    boxes = []
    for v in eqn.invars:
        shape = v.aval.shape
        boxes.append(tuple((0, 1) if n == 1 else out[a] for a, n in enumerate(shape)))
    return Cone(out, boxes, [None] * len(boxes), {})


def broadcast_cone(eqn, out: Box) -> Cone:
    """``broadcast_in_dim``: the operand's axes follow ``broadcast_dimensions``."""
    shape = eqn.invars[0].aval.shape
    dims = eqn.params["broadcast_dimensions"]
    box = tuple((0, 1) if n == 1 else out[d] for n, d in zip(shape, dims, strict=True))
    return Cone(out, [box], [None], dict(shape=tuple(b - a for a, b in out)))


def transpose_cone(eqn, out: Box) -> Cone:
    """``transpose``: the output box permuted back."""
    box = [None] * len(out)
    for j, i in enumerate(eqn.params["permutation"]):
        box[i] = out[j]
    return Cone(out, [tuple(box)], [None], {})


def reduction_cone(eqn, out: Box) -> Cone:
    """A reduction over ``axes``: the reduced axes whole, the kept ones as in the output."""
    shape = eqn.invars[0].aval.shape
    kept = [a for a in range(len(shape)) if a not in eqn.params["axes"]]
    box = list(_full(shape))
    for j, a in enumerate(kept):
        box[a] = out[j]
    return Cone(out, [tuple(box)], [None], {})


def concatenate_cone(eqn, out: Box) -> Cone:
    """``concatenate``: the concatenated axis whole, the others as in the output."""
    axis = eqn.params["dimension"]
    out = tuple((0, eqn.outvars[0].aval.shape[a]) if a == axis else r for a, r in enumerate(out))
    boxes = [
        tuple((0, v.aval.shape[a]) if a == axis else r for a, r in enumerate(out))
        for v in eqn.invars
    ]
    return Cone(out, boxes, [None] * len(boxes), {})


def plan_equation(eqn, out: Box) -> Cone | None:
    """The registry's cone rule of ``eqn`` for the needed box ``out`` of its one output; None
    where it has none (or several outputs) and must run whole."""
    from ._registry import REGISTRY  # the registry imports this module's rules

    entry = REGISTRY.get(eqn.primitive.name)
    rule = entry.cone if entry is not None else None
    if rule is None or eqn.primitive.multiple_results or len(eqn.outvars) != 1:
        return None
    return rule(eqn, out)


def _whole(eqn) -> Cone:
    return Cone(
        tuple(_full(v.aval.shape) for v in eqn.outvars),
        [_full(v.aval.shape) for v in eqn.invars],
        [None] * len(eqn.invars),
        {},
    )


def cone_plan(closed, known: dict, out_box: Box) -> tuple[dict, dict, list]:
    """Backward pass of the boxes over a flat ``closed`` jaxpr with one output.

    Returns ``(plans, need, whole)``: per needed equation (by id) its :class:`Cone` (``out``
    then a tuple of one box per output), per variable the box needed of it, and the names of
    the needed primitives that have no box rule (run whole).
    """
    jaxpr = closed.jaxpr
    need = {jaxpr.outvars[0]: out_box}
    plans, whole = {}, []
    for eqn in reversed(jaxpr.eqns):
        if not any(v in need for v in eqn.outvars) or all(v in known for v in eqn.outvars):
            continue
        plan = plan_equation(eqn, need[eqn.outvars[0]]) if len(eqn.outvars) == 1 else None
        if plan is None:
            whole.append(eqn.primitive.name)
            plan = _whole(eqn)
        else:
            plan = plan._replace(out=(plan.out,))
        plans[id(eqn)] = plan
        for v, box in zip(eqn.invars, plan.boxes, strict=True):
            if not isinstance(v, jcore.Literal) and v not in known:
                need[v] = _union(need.get(v), box)
    return plans, need, whole


def _take(val, have: Box, want: Box, pads=None, fill=None):
    """The ``want`` box of ``val`` (which holds box ``have``), padded by ``pads`` with
    ``fill`` (None: zero)."""
    if want == ():
        return val
    starts = [w[0] - h[0] for w, h in zip(want, have, strict=True)]
    if any(s for s in starts) or any(w[1] - w[0] != val.shape[a] for a, w in enumerate(want)):
        limits = [s + w[1] - w[0] for s, w in zip(starts, want, strict=True)]
        val = lax.slice(val, starts, limits)
    if pads is not None and any(lo or hi for lo, hi in pads):
        val = lax.pad(val, _fill(fill, val.dtype), [(lo, hi, 0) for lo, hi in pads])
    return val


def _fill(value, dtype):
    """The padding value in ``dtype`` (an infinite one as the integer type's extreme)."""
    if value is None:
        return np.zeros((), dtype)
    if np.isinf(value) and not np.issubdtype(dtype, np.floating):
        info = np.iinfo(dtype)
        return np.array(info.min if value < 0 else info.max, dtype)
    return np.array(value, dtype)


def _index_box(index, shape) -> Box:
    if len(index) != len(shape):
        raise ValueError(
            f"`index` (={tuple(index)!r}) must have one entry per output axis (the output has "
            f"shape {shape}); use None for an axis kept whole, e.g. (None, 3, 3, None)."
        )
    box = []
    for i, (k, n) in enumerate(zip(index, shape, strict=True)):
        if k is None:
            box.append((0, n))
        elif isinstance(k, int | np.integer) and -n <= k < n:
            box.append((int(k) % n, int(k) % n + 1))
        else:
            raise ValueError(
                f"`index[{i}]` (={k!r}) must be None or an int in [{-n}, {n}) for an output "
                f"axis of size {n}."
            )
    return tuple(box)


def prune_to_cone(fn: Callable, x, index: Sequence[int | None]) -> Callable:
    """A function of ``x`` computing ``fn(x)[index]`` from the output's cone alone.

    Args:
        fn: a function of one array returning one array (the network).
        x: an array or ``jax.ShapeDtypeStruct`` with the input's shape and dtype.
        index: one entry per output axis: an int selects that position (the axis is kept with
            size 1), None keeps the axis whole (batch and channel axes, typically).

    Returns:
        ``pruned(x)``, equal to ``fn(x)[sel]`` with ``sel`` the index as size-1 slices (and
        differentiable: its input gradient is zero outside the cone), where every equation
        computes only the box the selection needs (see the module docstring). ``pruned``
        carries ``input_box`` (the part of ``x`` read, one ``(lo, hi)`` per axis) and
        ``whole`` (names of the operations without a box rule, computed whole).
    """
    closed = jax.make_jaxpr(fn)(x)
    if len(closed.jaxpr.outvars) != 1:
        raise ValueError(
            f"`fn` returns {len(closed.jaxpr.outvars)} arrays; prune_to_cone needs exactly one "
            "(wrap fn to return the probed array)."
        )
    flat = flatten(closed)
    known = constants(flat)
    out_box = _index_box(tuple(index), flat.jaxpr.outvars[0].aval.shape)
    plans, need, whole = cone_plan(flat, known, out_box)
    (xvar,) = flat.jaxpr.invars
    in_box = need.get(xvar, _full(xvar.aval.shape))

    def visit(eqn, vals, site):
        if all(v in known for v in eqn.outvars):
            return [(known[v], _full(v.aval.shape)) for v in eqn.outvars]
        if id(eqn) not in plans:  # not needed by the probed output
            return [None] * len(eqn.outvars)
        plan = plans[id(eqn)]
        vals = [
            _take(val, have, box, pad, plan.fill)
            for (val, have), box, pad in zip(vals, plan.boxes, plan.pads, strict=True)
        ]
        outs = bind(eqn.replace(params={**eqn.params, **plan.changes}), vals)
        return list(zip(outs, plan.out, strict=True))

    def pruned(x):
        if tuple(x.shape) != xvar.aval.shape:
            raise ValueError(
                f"`x` has shape {tuple(x.shape)}, but the cone was planned for "
                f"{xvar.aval.shape}; call prune_to_cone again with this shape."
            )
        first = (_take(x, _full(x.shape), in_box), in_box)
        ((val, have),) = walk(flat, [first], visit, wrap=_whole_value)
        return _take(val, have, out_box)

    pruned.input_box = in_box
    pruned.whole = whole
    return pruned


def _whole_value(c):
    """A constant or literal as a (value, box) pair: the value whole."""
    return c, _full(np.shape(c))
