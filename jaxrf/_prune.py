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

import jax
import numpy as np
from jax import lax
from jax.extend import core as jcore

from ._fold import bind_eqn, constants, flatten

Box = tuple[tuple[int, int], ...]

ELEMENTWISE = frozenset(
    "abs add and atan2 cbrt ceil clamp convert_element_type copy copy_p cos cosh div eq erf "
    "erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow is_finite le log log1p logistic lt "
    "max min mul ne neg nextafter not or pow real reduce_precision rem round rsqrt select_n "
    "sign sin sinh sqrt square stop_gradient sub tan tanh xor".split()
)
_WINDOW_REDUCE = {"reduce_window_max": -np.inf, "reduce_window_min": np.inf, "reduce_window_sum": 0}
_REDUCE = frozenset("reduce_sum reduce_max reduce_min reduce_prod argmax argmin".split())


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


def _conv_plan(eqn, out: Box):
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
    return tuple(out), [tuple(box), _full(kshape)], [pads, None], dict(padding=zero)


def _pool_plan(eqn, out: Box):
    p = eqn.params
    if any(d != 1 for d in p["base_dilation"]):
        return None
    shape = eqn.invars[0].aval.shape
    box, pads = [], []
    for i, n in enumerate(shape):
        args = p["window_dimensions"][i], p["window_strides"][i], p["padding"][i]
        b, pad = _window_axis(out[i], n, *args, p["window_dilation"][i])
        box.append(b)
        pads.append(pad)
    zero = tuple((0, 0) for _ in shape)
    return out, [tuple(box)], [pads], dict(padding=zero)


def _elementwise_plan(eqn, out: Box):
    boxes = []
    for v in eqn.invars:
        shape = v.aval.shape
        if len(shape) == 0:
            boxes.append(())
            continue
        boxes.append(tuple((0, 1) if n == 1 else out[a] for a, n in enumerate(shape)))
    return out, boxes, [None] * len(boxes), {}


def _broadcast_plan(eqn, out: Box):
    shape = eqn.invars[0].aval.shape
    dims = eqn.params["broadcast_dimensions"]
    box = tuple((0, 1) if n == 1 else out[d] for n, d in zip(shape, dims, strict=True))
    changes = dict(shape=tuple(b - a for a, b in out))
    return out, [box], [None], changes


def _map_plan(eqn, out: Box):
    """transpose, reductions, concatenate: boxes mapped axis by axis."""
    name, p = eqn.primitive.name, eqn.params
    shape = eqn.invars[0].aval.shape
    if name == "transpose":
        box = [None] * len(shape)
        for j, i in enumerate(p["permutation"]):
            box[i] = out[j]
        return out, [tuple(box)], [None], {}
    if name in _REDUCE:
        kept = [a for a in range(len(shape)) if a not in p["axes"]]
        box = list(_full(shape))
        for j, a in enumerate(kept):
            box[a] = out[j]
        return out, [tuple(box)], [None], {}
    axis = p["dimension"]
    out = tuple((0, eqn.outvars[0].aval.shape[a]) if a == axis else r for a, r in enumerate(out))
    boxes = [
        tuple((0, v.aval.shape[a]) if a == axis else r for a, r in enumerate(out))
        for v in eqn.invars
    ]
    return out, boxes, [None] * len(boxes), {}


def plan_equation(eqn, out: Box):
    """``(computed output box, input boxes, input paddings, parameter changes)`` of ``eqn``
    when ``out`` is needed of its (first) output; None where it must run whole."""
    name = eqn.primitive.name
    if eqn.primitive.multiple_results or len(eqn.outvars) != 1:
        return None
    if name == "conv_general_dilated":
        return _conv_plan(eqn, out)
    if name in _WINDOW_REDUCE:
        return _pool_plan(eqn, out)
    if name in ELEMENTWISE:
        return _elementwise_plan(eqn, out)
    if name == "broadcast_in_dim":
        return _broadcast_plan(eqn, out)
    if name in ("transpose", "concatenate") or name in _REDUCE:
        return _map_plan(eqn, out)
    return None


def _whole(eqn):
    outs = tuple(_full(v.aval.shape) for v in eqn.outvars)
    return outs, [_full(v.aval.shape) for v in eqn.invars], [None] * len(eqn.invars), {}


def cone_plan(closed, known: dict, out_box: Box) -> tuple[dict, dict, list]:
    """Backward pass of the boxes over a flat ``closed`` jaxpr with one output.

    Returns ``(plans, need, whole)``: per needed equation (by id) its plan (output boxes as a
    tuple, input boxes, paddings, parameter changes), per variable the box needed of it, and
    the names of the needed primitives that have no box rule (run whole).
    """
    jaxpr = closed.jaxpr
    need = {jaxpr.outvars[0]: out_box}
    plans, whole = {}, []
    for eqn in reversed(jaxpr.eqns):
        if not any(v in need for v in eqn.outvars) or all(v in known for v in eqn.outvars):
            continue
        plan = None
        if len(eqn.outvars) == 1:
            plan = plan_equation(eqn, need[eqn.outvars[0]])
            if plan is not None:
                plan = ((plan[0],), *plan[1:])
        if plan is None:
            whole.append(eqn.primitive.name)
            plan = _whole(eqn)
        plans[id(eqn)] = plan
        for v, box in zip(eqn.invars, plan[1], strict=True):
            if not isinstance(v, jcore.Literal) and v not in known:
                need[v] = _union(need.get(v), box)
    return plans, need, whole


def _take(val, have: Box, want: Box, pads, pad_value):
    """The ``want`` box of ``val`` (which holds box ``have``), padded by ``pads``."""
    if want == ():
        return val
    starts = [w[0] - h[0] for w, h in zip(want, have, strict=True)]
    if any(s for s in starts) or any(w[1] - w[0] != val.shape[a] for a, w in enumerate(want)):
        limits = [s + w[1] - w[0] for s, w in zip(starts, want, strict=True)]
        val = lax.slice(val, starts, limits)
    if pads is not None and any(lo or hi for lo, hi in pads):
        fill = np.array(pad_value, val.dtype) if pad_value is not None else np.zeros((), val.dtype)
        val = lax.pad(val, fill, [(lo, hi, 0) for lo, hi in pads])
    return val


def _pad_value(eqn):
    if eqn.primitive.name not in _WINDOW_REDUCE:
        return None
    v = _WINDOW_REDUCE[eqn.primitive.name]
    dtype = eqn.invars[0].aval.dtype
    if np.isinf(v) and not np.issubdtype(dtype, np.floating):
        info = np.iinfo(dtype)
        return info.min if v < 0 else info.max
    return v


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

    def rule(eqn, read, env):
        if id(eqn) not in plans:
            return None
        outs, boxes, pads, changes = plans[id(eqn)]
        vals = []
        for v, box, pad in zip(eqn.invars, boxes, pads, strict=True):
            have = _full(v.aval.shape) if isinstance(v, jcore.Literal) or v in known else env[v][1]
            val = read(v) if isinstance(v, jcore.Literal) or v in known else env[v][0]
            vals.append(_take(val, have, box, pad, _pad_value(eqn)))
        return list(zip(bind_eqn(eqn, vals, **changes), outs, strict=True))

    def pruned(x):
        if tuple(x.shape) != xvar.aval.shape:
            raise ValueError(
                f"`x` has shape {tuple(x.shape)}, but the cone was planned for "
                f"{xvar.aval.shape}; call prune_to_cone again with this shape."
            )
        env = {v: (c, _full(np.shape(c))) for v, c in known.items()}
        env[xvar] = (_take(x, _full(x.shape), in_box, None, None), in_box)
        return _run(flat.jaxpr, env, rule, out_box)

    pruned.input_box = in_box
    pruned.whole = whole
    return pruned


def _run(jaxpr, env, rule, out_box):
    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v][0]

    for eqn in jaxpr.eqns:
        outs = rule(eqn, read, env)
        if outs is not None:
            env.update(zip(eqn.outvars, outs, strict=True))
    val, have = env[jaxpr.outvars[0]]
    return _take(val, have, out_box, None, None)
