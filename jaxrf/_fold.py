"""Constant folding: a convolution followed by affine constants becomes one convolution.

Inference batch norm, LayerScale and fixed scales follow a convolution ``y = conv(x, W)`` with a
chain of ``add``/``sub``/``mul``/``div`` by constants. When every constant ``c`` in the chain is
constant along all axes of ``y`` except its feature axis (a scalar or one value per output
channel), the chain is the per-channel affine map ``z = s * y + b``, and because the
convolution is linear in ``W`` and each output channel ``o`` has its own kernel slice,

    z[..., o, ...] = conv(x, W')[..., o, ...] + b[o],   W'[o] = s[o] * W[o]

(``W[o]`` the kernel slice at index ``o`` of its output-feature axis; this holds for every
``dimension_numbers`` layout, NHWC/HWIO and NCHW/OIHW alike, and for grouped convolutions).
The chain's steps update ``(s, b)``: ``+ c``: ``b + c``; ``- c``: ``b - c``; ``c - y``:
``(-s, c - b)``; ``* c``: ``(s c, b c)``; ``/ c``: ``(s / c, b / c)``. The fold is applied only
where the kernel is a constant, the intermediate values are used by the chain alone, and the
constants pass the per-channel test, so the folded network computes the same function (to
float rounding: ``W'`` is formed in float64 and cast to the kernel's dtype).

Before folding, calls (the registry's containers: ``jit``, ``closed_call``, ...) are inlined by
the one jaxpr walker (custom differentiation rules are kept) and every equation whose inputs
are all constants is evaluated once (the batch-norm statistics' ``rsqrt``, broadcasts of
parameters). :func:`flatten` and :func:`constants` do
that and are shared with the cone pruning.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import jax
import numpy as np
from jax.extend import core as jcore

from ._walk import bind, walk

_AFFINE = ("add", "sub", "mul", "div")


def _never(eqn, vals, site) -> bool:
    return False


def _visit_bind(eqn, vals, site) -> list:
    return bind(eqn, vals)


def _specs(jaxpr) -> list:
    return [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in jaxpr.invars]


def flatten(closed, custom: bool = True) -> jcore.ClosedJaxpr:
    """``closed`` (a ``ClosedJaxpr``) re-traced with every call inlined: one flat equation list.

    The calls are the registry's single-sub-program containers, entered by
    :func:`jaxrf._walk.walk`. With ``custom``, custom differentiation rules
    (``custom_jvp_call``, ``custom_vjp_call``) are inlined too, and the flat jaxpr is
    differentiated through its primal operations (``relu``'s derivative at exactly 0 then
    becomes ``max``'s, 1/2); without, they stay as they are.
    """

    def descend(eqn, vals, site) -> bool:
        return custom or not eqn.primitive.name.startswith("custom_")

    def run(*args):
        return walk(closed, args, _visit_bind, descend=descend)

    return jax.make_jaxpr(run)(*_specs(closed.jaxpr))


def constants(closed) -> dict:
    """Value of every variable of a flat ``closed`` jaxpr that depends on constants alone."""
    known = dict(zip(closed.jaxpr.constvars, closed.consts, strict=True))

    def visit(eqn, vals, site):
        if eqn.effects or any(v is None for v in vals):
            return [None] * len(eqn.outvars)
        outs = bind(eqn, vals)
        known.update(zip(eqn.outvars, outs, strict=True))
        return outs

    with jax.ensure_compile_time_eval():  # concrete values even under an outer jit / grad
        walk(closed, [None] * len(closed.jaxpr.invars), visit, descend=_never)
    return known


def per_channel(c, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """``c`` (broadcastable to ``shape``) as one float64 value per index of ``axis``, or None.

    None when ``c`` varies along any other axis (then it is no per-channel affine constant).
    """
    c = np.asarray(c, np.float64)
    if c.ndim > len(shape):
        return None
    c = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)
    for a in range(len(shape)):
        if a != axis and c.shape[a] > 1:
            first = np.take(c, [0], axis=a)
            if not np.array_equal(c, np.broadcast_to(first, c.shape)):
                return None
            c = first
    return np.broadcast_to(c.reshape(-1), (shape[axis],)).copy()


def _step(eqn, cur, known, shape, axis, s, b):
    """The chain's ``(s, b)`` after ``eqn`` (which reads ``cur``), or None if not affine."""
    name, (u, v) = eqn.primitive.name, eqn.invars
    other, first = (v, True) if u is cur else (u, False)
    if other is cur or not (isinstance(other, jcore.Literal) or other in known):
        return None
    value = other.val if isinstance(other, jcore.Literal) else known[other]
    if isinstance(value, jax.core.Tracer):
        return None
    c = per_channel(value, shape, axis)
    if c is None or eqn.outvars[0].aval.shape != shape:
        return None
    if name == "add":
        return s, b + c
    if name == "mul":
        return s * c, b * c
    if name == "sub":
        return (s, b - c) if first else (-s, c - b)
    if name == "div" and first:
        return s / c, b / c
    return None


def _chain(eqn, known, users, uses, outvars):
    """(s, b, last variable, absorbed equations) of the affine chain after a convolution."""
    y = eqn.outvars[0]
    shape, axis = y.aval.shape, eqn.params["dimension_numbers"].out_spec[1]
    s, b = np.ones(shape[axis]), np.zeros(shape[axis])
    cur, absorbed = y, []
    while uses[cur] == 1 and cur not in outvars:
        nxt = users[cur]
        if nxt.primitive.name not in _AFFINE:
            break
        step = _step(nxt, cur, known, shape, axis, s, b)
        if step is None:
            break
        s, b = step
        cur = nxt.outvars[0]
        absorbed.append(nxt)
    return s, b, cur, absorbed


def fold_plan(closed, known) -> tuple[dict, set]:
    """Convolutions to fold: ``{id(conv eqn): (W', b or None, last variable)}`` and the ids of
    the absorbed equations, for a flat ``closed`` jaxpr with constant values ``known``."""
    jaxpr = closed.jaxpr
    uses = Counter(v for e in jaxpr.eqns for v in e.invars if not isinstance(v, jcore.Literal))
    users = {v: e for e in jaxpr.eqns for v in e.invars if not isinstance(v, jcore.Literal)}
    outvars = {v for v in jaxpr.outvars if not isinstance(v, jcore.Literal)}
    plan, absorbed = {}, set()
    for eqn in jaxpr.eqns:
        p = eqn.params
        if eqn.primitive.name != "conv_general_dilated" or eqn.outvars[0] in known:
            continue
        if p["batch_group_count"] != 1 or eqn.invars[1] not in known:
            continue
        if isinstance(known[eqn.invars[1]], jax.core.Tracer):
            continue
        s, b, last, chain = _chain(eqn, known, users, uses, outvars)
        if not chain:
            continue
        w = np.asarray(known[eqn.invars[1]])
        o_axis = p["dimension_numbers"].rhs_spec[0]
        scale = s.reshape([-1 if a == o_axis else 1 for a in range(w.ndim)])
        w_new = (w.astype(np.float64) * scale).astype(w.dtype)
        y = eqn.outvars[0].aval
        axis = p["dimension_numbers"].out_spec[1]
        bias = b.reshape([-1 if a == axis else 1 for a in range(len(y.shape))]).astype(y.dtype)
        plan[id(eqn)] = (w_new, bias if np.any(b) else None, last)
        absorbed.update(id(e) for e in chain)
    return plan, absorbed


def fold_constants(closed) -> jcore.ClosedJaxpr:
    """``closed`` with every convolution + per-channel affine constant chain as one convolution.

    Args:
        closed: a ``ClosedJaxpr``, e.g. ``jax.make_jaxpr(fn)(x)``.

    Returns:
        A flat ``ClosedJaxpr`` with the same inputs and outputs (see the module docstring for
        the folding rule and when it applies); constant-only equations are evaluated once.
    """
    flat = flatten(closed, custom=False)
    known = constants(flat)
    plan, absorbed = fold_plan(flat, known)
    done: dict = {}  # last variable of a folded chain -> its value

    def visit(eqn, vals, site):
        if all(v in known for v in eqn.outvars):
            return [known[v] for v in eqn.outvars]
        if id(eqn) in absorbed:  # read by its chain alone: only the chain's end is used
            return [done.pop(v, None) for v in eqn.outvars]
        if id(eqn) not in plan:
            return bind(eqn, vals)
        w, bias, last = plan[id(eqn)]
        (y,) = bind(eqn, [vals[0], w])
        done[last] = y if bias is None else y + bias
        return [None]

    def run(*args):
        return walk(flat, args, visit, descend=_never)

    return jax.make_jaxpr(run)(*_specs(flat.jaxpr))


def fold_convs(fn: Callable) -> Callable:
    """``fn`` (arrays in, arrays out; pytrees allowed) evaluated through :func:`fold_constants`.

    Traced once per call with the call's arguments; values equal ``fn``'s to float rounding.
    """

    def folded(*args):
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        outs = jcore.jaxpr_as_fun(fold_constants(closed))(*jax.tree_util.tree_leaves(args))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), outs)

    return folded
