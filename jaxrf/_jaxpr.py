"""One jaxpr interpreter for the modules that re-evaluate a network's equations their own way.

:mod:`jaxrf._structural` (dependency surrogates) and :mod:`jaxrf._lowering` (convolutions as
matrix products) both walk a jaxpr equation by equation, binding most primitives as they are
and replacing a few; :func:`interpret` is that walk, :func:`bind` the default for an equation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from jax.extend import core as jcore


def bind(eqn, vals) -> list:
    """The equation's own primitive applied to ``vals`` (a list of outputs)."""
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        outs = eqn.primitive.bind(*vals, **params)
    return list(outs) if eqn.primitive.multiple_results else [outs]


def interpret(jaxpr, consts: Sequence, args: Sequence, rule: Callable) -> list:
    """Evaluate ``jaxpr`` with ``rule(eqn, input values) -> output values`` for every equation."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts, strict=True):
        env[var] = val
    for var, val in zip(jaxpr.invars, args, strict=True):
        env[var] = val
    for eqn in jaxpr.eqns:
        outs = rule(eqn, [read(v) for v in eqn.invars])
        for var, out in zip(eqn.outvars, outs, strict=True):
            if not isinstance(var, jcore.DropVar):
                env[var] = out
    return [read(v) for v in jaxpr.outvars]
