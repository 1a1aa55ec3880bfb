"""Structural surrogates of the loops ``scan`` and ``while`` (see :mod:`jaxrf._structural`).

Both are unrolled: the body's surrogate is evaluated once per iteration, in order, so every
iteration keeps its own constants (stacked weights, per-step interpolation patterns) exactly.
The program the pullback compiles grows with the trip count.

* ``scan``: iteration ``t`` reads slice ``t`` of every scanned operand and stacks its outputs
  at ``t``; a step whose output does not depend on the input contributes zeros (no
  dependence). Along a spatial axis this is the exact recurrence.
* ``while``: the condition is evaluated on the constant part of the carry during the plan and
  the trip count recorded; a condition that depends on the input makes the loop conservative
  (every output reads every element of every input-dependent operand).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ._structural import DTYPE, Dep, _as_dtype, _global, _shape


def _stack(rw, steps, shape):
    """Stack one output over the iterations (``steps`` in index order)."""
    if not any(isinstance(v, Dep) for v in steps):
        return jnp.stack([jnp.asarray(v) for v in steps])
    if rw.planning:
        return Dep(None)
    return Dep(
        jnp.stack(
            [_as_dtype(v.value) if isinstance(v, Dep) else jnp.zeros(shape, DTYPE) for v in steps]
        )
    )


def scan(rw, eqn, vals, site):
    """``scan``: the body once per iteration (unrolled), outputs stacked in index order."""
    p = eqn.params
    n_c, n_k, length = p["num_consts"], p["num_carry"], p["length"]
    consts, carry, xs = vals[:n_c], list(vals[n_c : n_c + n_k]), vals[n_c + n_k :]
    body = p["jaxpr"]
    ys: dict[int, list] = {}
    for t in range(length - 1, -1, -1) if p["reverse"] else range(length):
        xs_t = [
            Dep(None if v.value is None else v.value[t]) if isinstance(v, Dep) else v[t] for v in xs
        ]
        outs = rw.run(body, list(consts) + carry + xs_t, site.inside(eqn, 0))
        carry, ys[t] = list(outs[:n_k]), outs[n_k:]
    shapes = [_shape(v)[1:] for v in eqn.outvars[n_k:]]
    stacked = [_stack(rw, [ys[t][j] for t in range(length)], s) for j, s in enumerate(shapes)]
    return carry + stacked


def _trips(rw, eqn, cond_consts, body_consts, carry, site):
    """Plan: run the loop, counting iterations; -1 when the condition depends on the input."""
    p = eqn.params
    cond, body = p["cond_jaxpr"], p["body_jaxpr"]
    count = 0
    while True:
        tape, rw.tape = rw.tape, []
        try:
            (go,) = rw.run(cond, list(cond_consts) + carry, site.inside(eqn, 0))
        finally:
            rw.tape = tape
        if isinstance(go, Dep):
            return -1
        if not bool(np.asarray(go)):
            return count
        carry = list(rw.run(body, list(body_consts) + carry, site.inside(eqn, 1)))
        count += 1


def while_loop(rw, eqn, vals, site):
    """``while``: the recorded trip count of body iterations, or conservative (see module)."""
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts, carry = vals[:nc], vals[nc : nc + nb], list(vals[nc + nb :])
    shapes = [_shape(v) for v in eqn.outvars]
    if rw.planning:
        mark = len(rw.tape)
        rw.tape.append(None)
        count = _trips(rw, eqn, cond_consts, body_consts, carry, site)
        del rw.tape[mark + 1 :]
        rw.tape[mark] = count
        if count < 0:
            return [Dep(None) for _ in shapes]
    else:
        count = next(rw._replay)
        if count < 0:
            return [Dep(_global(vals, s)) for s in shapes]
    body = p["body_jaxpr"]
    for _ in range(count):
        carry = list(rw.run(body, list(body_consts) + carry, site.inside(eqn, 1)))
    return carry


LOOPS = {"scan": scan, "while": while_loop}
