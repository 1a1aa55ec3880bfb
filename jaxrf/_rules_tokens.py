"""Token sequences with prefix tokens: ``(B, P + h*w, C)`` with CLS, register or distillation
tokens in front of the flattened grid.

A concatenation of ``P`` constant tokens (learned CLS/register embeddings) in front of an axis
holding the grid gives that axis the label :class:`Tokens` ``(P, grid)``. The field state keeps
indexing the grid, so the index of a result addresses the grid (inferred from the traced
flattening). The prefix tokens read nothing until an attention mixes them with the grid;
ordinary attention over all tokens makes every token, prefix included, read the whole input.

* Slicing the grid back out (``x[:, P:]``) restores the grid label.
* Slicing prefix tokens out (``x[:, 0]``, the CLS head): global (every input pixel) once an
  attention has made the field global; before that they do not depend on the input, and
  jaxrf raises rather than guess.
* A window along the token axis, a reshape that splits it, attention restricted to groups of a
  prefixed axis, or prefix tokens computed from the input raise (``unknown="global"`` is the
  escape hatch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._rules import Constant, Dependent, Mixing, Result, concatenate, slice_


@dataclass(frozen=True)
class Tokens:
    """``prefix`` tokens, then the grid tokens (label ``grid``: a Flat, Part or int label)."""

    prefix: int
    grid: object


def concat_tokens(ctx, eqn, inputs):
    """``concatenate``: constant prefix tokens in front of a grid axis give a Tokens label."""
    d = eqn.params["dimension"]
    *front, last = inputs
    if (
        not isinstance(last, Dependent)
        or last.axes[d] is None
        or isinstance(last.axes[d], Tokens | int)
        or not front
    ):
        return concatenate(ctx, eqn, inputs)
    if any(isinstance(v, Dependent) for v in front):
        raise Mixing("prefix tokens that depend on the input, concatenated with a token grid")
    prefix = sum(int(v.aval.shape[d]) for v in eqn.invars[:-1])
    axes = list(last.axes)
    axes[d] = Tokens(prefix, last.axes[d])
    return [Dependent(last.state, tuple(axes))]


def slice_tokens(ctx, eqn, inputs):
    """``slice``: the grid or the prefix tokens out of a Tokens axis (see the module)."""
    (x,) = inputs
    p = eqn.params
    out = eqn.outvars[0].aval
    if 0 in out.shape:  # an empty piece (jnp.roll of a size-1 axis): no element, no dependence
        return [Constant(lambda: np.zeros(out.shape, out.dtype))]
    shape = tuple(eqn.invars[0].aval.shape)
    strides = p["strides"] or (1,) * len(shape)
    bounds = zip(p["start_indices"], p["limit_indices"], shape, strict=True)
    cut = [q for q, (lo, hi, n) in enumerate(bounds) if (lo, hi) != (0, n) or strides[q] != 1]
    tok = [q for q in cut if isinstance(x.axes[q], Tokens)]
    if not tok:
        return slice_(ctx, eqn, inputs)
    if len(cut) != 1:
        raise Mixing("a slice of a token axis with prefix tokens and of another axis at once")
    (q,) = tok
    label, lo, hi = x.axes[q], p["start_indices"][q], p["limit_indices"][q]
    axes = list(x.axes)
    if (lo, hi, strides[q]) == (label.prefix, shape[q], 1):
        axes[q] = label.grid
        return [Dependent(x.state, tuple(axes))]
    if hi <= label.prefix and all(t.all() for term in x.state.terms for t in term):
        axes[q] = None
        if any(a is not None for a in axes):
            raise Mixing("prefix tokens sliced out of a map with other spatial axes")
        name = ctx.name("prefix_token")
        state = x.state.make_global((1,) * len(x.state.shape), name)
        return Result((Dependent(state, tuple(axes)),), (ctx.layer(state, name, "prefix_token"),))
    raise Mixing(
        f"a slice [{lo}:{hi}] of a token axis with {label.prefix} prefix tokens that is neither "
        "the grid nor prefix tokens mixed with the whole grid"
    )


def unwrap(label):
    """The grid label of a Tokens label; any other label unchanged."""
    return label.grid if isinstance(label, Tokens) else label
