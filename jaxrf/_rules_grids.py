"""Receptive-field rules for control flow and layout: ``cond``, ``scan``, ``while``, ``rev``,
``sort``, separable constant contractions, and size-1 axes that come back after a reduction.

Every rule here has the interface of :mod:`jaxrf._registry` (``rule(ctx, eqn, inputs) ->
outputs or Result``); the containers walk their sub-programs with ``ctx.walk``.

Maths, per rule:

* ``cond``/``switch`` with a constant index: the branch it selects (exactly what runs). With an
  input-dependent index: the union of every branch's output dependence and the index's own.
* ``scan`` over a non-spatial axis (a stack of layers; ``xs`` unlabelled along the scanned
  axis): the body's rules applied once per iteration, in order, on the carried state, exactly
  as an unrolled loop. The walk stops early at a fixed point: when the carried
  :class:`~jaxrf._field.FieldState` is unchanged by an iteration that evaluated no per-step
  constant, every later iteration repeats it. A stacked output ``ys`` reads the union over the
  iterations (the scanned axis is not spatial).
* ``while`` with a trip count computed from constants only: the same per-iteration walk; with a
  condition that depends on the input, every output reads the whole input (global, warned).
* ``rev`` along a spatial axis: output ``i`` reads input ``n - 1 - i`` (exact per index).
* ``sort`` along a non-spatial axis: a merge of the operands; along a spatial axis, every output
  reads the whole axis.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from ._axis import Window
from ._field import FieldState, GlobalReceptiveFieldWarning, MisalignmentWarning, pattern_through
from ._rules import (
    Constant,
    Dependent,
    Flat,
    Mixing,
    Result,
    elementwise,
    global_outputs,
    unify,
)
from ._rules_factor import Part, group_pattern


def _quiet_walk(ctx, sub, inputs) -> tuple:
    """The outputs of a walk whose layer records and misalignment warnings are dropped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MisalignmentWarning)
        return ctx.walk(sub, inputs).outputs


# ---------------------------------------------------------------------------------------
# Size-1 axes brought back after a spatial reduction (keepdims, SE blocks).
# ---------------------------------------------------------------------------------------


def dangling(dep: Dependent) -> list[int]:
    """Spatial axes of ``dep``'s map that have size 1 and sit on no array axis (reduced away),
    among the axes of input size above 1."""
    held = set()
    for lab in dep.axes:
        if isinstance(lab, Flat):
            held |= set(lab.spatial)
        elif lab is not None:
            held.add(lab)
    n_input = [m.shape[1] for m in dep.state.terms[0]]
    return [
        a
        for a, n in enumerate(dep.state.shape)
        if n == 1 and a not in held and n_input[a] > 1  # an input of size 1 has nothing to move
    ]


def relabel_new_ones(dep: Dependent, axes, out_shape, new) -> tuple:
    """Give the new size-1 array axes ``new`` (positions, in order) the reduced spatial axes.

    ``mean(x, axis=1, keepdims=True)`` is a ``reduce_sum`` (the axis disappears) and a
    ``broadcast_in_dim`` that brings back a size-1 axis: that axis holds spatial axis 1 (now of
    size 1), so that a later pad or crop along it is followed. Reduced axes are assigned to the
    new size-1 axes in increasing order; a label on a size-1 axis never conflicts with a
    broadcast partner (see :func:`jaxrf._rules.unify`).
    """
    free = dangling(dep)
    axes = list(axes)
    for p in new:
        if not free:
            break
        if out_shape[p] == 1 and axes[p] is None:
            axes[p] = free.pop(0)
    return tuple(axes)


# ---------------------------------------------------------------------------------------
# A constant contracted with several spatial axes at once (a separable resize in one einsum).
# ---------------------------------------------------------------------------------------


def separable_patterns(value: np.ndarray, contract, free):
    """Split the nonzero pattern of a constant into one ``(n_out, n_in)`` matrix per axis.

    ``contract`` are the constant's axes contracted with spatial axes (in order), ``free`` its
    free axes. Looks for a pairing ``contract[k] <-> free[f_k]`` under which the pattern is the
    outer product of its per-pair marginals, ``nz[c_0, f_0, c_1, f_1, ...] = P_0[f_0, c_0] and
    P_1[f_1, c_1] ...`` (exact: a separable interpolation). Returns ``[(free axis, P_k)]`` in
    the order of ``contract``, or None when no pairing factorises exactly.
    """
    nz = np.asarray(value) != 0
    extra = [q for q in free]
    for chosen in itertools.permutations(extra, len(contract)):
        rest = [q for q in extra if q not in chosen]
        if any(nz.shape[q] != 1 for q in rest):
            continue
        marg = []
        for c, f in zip(contract, chosen, strict=True):
            others = tuple(q for q in range(nz.ndim) if q not in (c, f))
            m = nz.any(axis=others) if others else nz
            marg.append(m if c < f else m.T)  # (n_in, n_out) in axis order c, f
        product = np.ones((), bool)
        order = []
        for (c, f), m in zip(zip(contract, chosen, strict=True), marg, strict=True):
            product = np.multiply.outer(product, m)
            order += [c, f]
        product = np.transpose(product, np.argsort(order))
        squeezed = nz.reshape([n for q, n in enumerate(nz.shape) if q not in rest])
        if np.array_equal(product, squeezed):
            return [(f, m.T) for f, m in zip(chosen, marg, strict=True)]
    return None


def separable_contraction(ctx, dot, dep: Dependent, k: int, value, labels):
    """``dot_general`` of ``dep`` (operand ``k``) with a constant over several spatial axes.

    ``dot`` holds the contracted, batch and free positions per operand
    (:class:`jaxrf._rules._Dot`). Exact when the constant's pattern
    factorises per axis (:func:`separable_patterns`): the constant's free axes then hold the
    spatial axes. Returns None when the rule does not apply (fewer than two spatial axes
    contracted, a flattened axis, or a constant without free axes: a global reduction, handled
    as a dense layer); raises Mixing for a pattern that does not factorise (a dense layer would
    change the output's spatial shape silently).
    """
    contract, batch, free = dot.contract, dot.batch, dot.free
    other = 1 - k
    pos = [p for p in contract[k] if labels[k][p] is not None]
    if len(pos) < 2 or any(not isinstance(labels[k][p], int) for p in pos):
        return None
    shape = np.shape(value)
    if batch[other] or all(shape[q] == 1 for q in free[other]):
        return None
    c_other = [contract[other][contract[k].index(p)] for p in pos]
    unlabelled = [q for q in contract[other] if q not in c_other]
    if any(shape[q] != 1 for q in unlabelled):
        raise Mixing("a constant contraction over spatial and non-spatial axes together")
    nz = np.asarray(value) != 0
    nz = nz.any(axis=tuple(unlabelled)) if unlabelled else nz
    kept = [q for q in range(len(shape)) if q not in unlabelled]
    renum = {q: i for i, q in enumerate(kept)}
    found = separable_patterns(nz, [renum[q] for q in c_other], [renum[q] for q in free[other]])
    if found is None:
        raise Mixing(
            f"a constant contracted with spatial axes {[labels[k][p] for p in pos]} at once "
            "whose pattern is not a product of per-axis patterns"
        )
    name = ctx.name("resize")
    state = dep.state
    new = [list(labels[0]), list(labels[1])]
    back = {i: q for q, i in renum.items()}
    for p, (f, pattern) in zip(pos, found, strict=True):
        state = pattern_through(state, labels[k][p], pattern, name)
        new[other][back[f]] = labels[k][p]
        new[k][p] = None
    rec = ctx.layer(state, name, "resize")
    return Result((Dependent(state, dot.out_axes(new)),), (rec,))


# ---------------------------------------------------------------------------------------
# Control flow.
# ---------------------------------------------------------------------------------------


def cond(ctx, eqn, inputs):
    """``cond``/``switch``: the selected branch (constant index) or the union of the branches
    and the index (an index that depends on the input)."""
    index, operands = inputs[0], list(inputs[1:])
    branches = eqn.params["branches"]
    if isinstance(index, Constant):
        k = int(np.clip(int(index.value), 0, len(branches) - 1))
        return ctx.walk(branches[k], operands, sub_index=k)
    results = [ctx.walk(br, operands, sub_index=k) for k, br in enumerate(branches)]
    merges = []
    for j, var in enumerate(eqn.outvars):
        rank = len(var.aval.shape)
        parts = [r.outputs[j] for r in results if isinstance(r.outputs[j], Dependent)]
        parts = [p if len(p.axes) == rank else Dependent(p.state, (None,) * rank) for p in parts]
        scalar = Dependent(index.state, (None,) * rank)
        merges.append(unify(ctx, parts + [scalar], "cond"))
    return Result.join([m.outputs[0] for m in merges], *results, *merges)


class _StepConstant(Constant):
    """A per-iteration constant (a slice of ``xs``, a carried counter) that notes its use."""

    __slots__ = ("_seen",)

    def __init__(self, thunk, seen: list):
        super().__init__(thunk)
        self._seen = seen

    @property
    def value(self):
        self._seen.append(True)
        return Constant.value.fget(self)


def same_value(a, b) -> bool:
    """Two walker values describe the same dependence (for the loop's fixed point)."""
    if isinstance(a, Constant) or isinstance(b, Constant):
        return isinstance(a, Constant) and isinstance(b, Constant)
    if a.axes != b.axes or a.state.shape != b.state.shape or a.state.paths != b.state.paths:
        return False
    ta, tb = a.state.terms, b.state.terms
    return len(ta) == len(tb) and all(
        all(np.array_equal(x, y) for x, y in zip(s, t, strict=True))
        for s, t in zip(ta, tb, strict=True)
    )


def _step_input(v, seen, pick):
    """One iteration's view of a carried or scanned value."""
    if isinstance(v, Dependent):
        return v
    return _StepConstant(lambda: pick(v.value), seen)


def _loop(ctx, body, consts, carry, xs_at, steps, keep_going=None, sub_index=0):
    """Walk ``body`` once per iteration on the carried values.

    Returns (carry, per-step ys, the records of every iteration). ``xs_at(t, seen)`` gives the
    scanned inputs of iteration ``t``; ``keep_going(carry)``, if given, decides (on constant
    carries) whether to run the next iteration.
    """
    ys_steps, records = [], []
    for t in steps:
        if keep_going is not None and not keep_going(carry):
            break
        seen: list = []
        carry_in = [_step_input(c, seen, lambda v: v) for c in carry]
        res = ctx.walk(body, list(consts) + carry_in + xs_at(t, seen), sub_index=sub_index)
        records.append(res)
        outs = res.outputs
        new, ys = outs[: len(carry)], outs[len(carry) :]
        ys_steps.append(ys)
        fixed = not seen and all(
            same_value(a, b) for a, b in zip(carry, new, strict=True) if isinstance(b, Dependent)
        )
        fixed = fixed and all(
            isinstance(b, Constant) == isinstance(a, Constant)
            for a, b in zip(carry, new, strict=True)
        )
        carry = new
        if fixed and keep_going is None:
            break
    return carry, ys_steps, records


def _unevaluable(what: str) -> Constant:
    def fail():
        raise Mixing(f"{what} is a loop output jaxrf does not evaluate")

    return Constant(fail)


def scan(ctx, eqn, inputs):
    """``scan`` over a non-spatial axis: the body once per iteration, exactly (see module)."""
    p = eqn.params
    n_c, n_k, length = p["num_consts"], p["num_carry"], p["length"]
    consts, carry, xs = inputs[:n_c], list(inputs[n_c : n_c + n_k]), inputs[n_c + n_k :]
    along = {x.axes[0] for x in xs if isinstance(x, Dependent)}
    if along - {None}:
        return spatial_scan(ctx, eqn, inputs, along)
    steps = range(length - 1, -1, -1) if p["reverse"] else range(length)

    def xs_at(t, seen):
        return [
            Dependent(x.state, x.axes[1:])
            if isinstance(x, Dependent)
            else _StepConstant(lambda x=x: x.value[t], seen)
            for x in xs
        ]

    carry, ys_steps, walks = _loop(ctx, p["jaxpr"], consts, carry, xs_at, steps)
    outs = [c if isinstance(c, Dependent) else _unevaluable("a scan carry") for c in carry]
    merges = []
    for j in range(len(eqn.outvars) - n_k):
        deps = [ys[j] for ys in ys_steps if isinstance(ys[j], Dependent)]
        if not deps:
            outs.append(_unevaluable("a stacked scan output"))
            continue
        res = Result((deps[0],)) if len(deps) == 1 else unify(ctx, deps, "scan")
        merges.append(res)
        merged = res.outputs[0]
        outs.append(Dependent(merged.state, (None,) + merged.axes))
    return Result.join(outs, *walks, *merges)


def _place_init(init, a: int, n: int, first: int, name: str):
    """The initial carry as a map over the steps: step ``first`` reads it, the others nothing."""
    if not isinstance(init, Dependent):
        return init
    if init.state.shape[a] != 1:
        raise Mixing(f"a scan's initial carry varies along the scanned spatial axis {a}")
    rows = np.zeros((n, 1), bool)
    rows[first, 0] = True
    return Dependent(pattern_through(init.state, a, rows, name), init.axes)


def _carry_in(ctx, placed, out, a: int, shift: np.ndarray, name: str):
    """Carry entering step ``t``: the carry leaving step ``t - 1`` (or ``t + 1``), and the
    initial carry at the first step (its merge record is not kept: an intermediate walk)."""
    if not isinstance(out, Dependent):
        return placed
    moved = Dependent(pattern_through(out.state, a, shift, name), out.axes)
    if not isinstance(placed, Dependent):
        return moved
    return unify(ctx, [placed, moved], "scan").outputs[0]


def _scan_state(last, first, a: int, cumulative: Window, name: str) -> FieldState:
    """The converged dependence, with Distill paths: the first step's paths through the
    cumulative window along ``a`` (as for ``cumsum``)."""
    source = first if isinstance(first, Dependent) else last
    windows = [Window(1)] * len(last.state.shape)
    windows[a] = cumulative
    paths = tuple(q.through(windows, name) for q in source.state.paths)
    return FieldState(last.state.shape, paths, last.state.terms)


def spatial_scan(ctx, eqn, inputs, along):
    """``scan`` whose scanned operands are sliced along spatial axis ``a`` (a recurrence over
    time or rows).

    The whole recurrence is walked at once: the slices keep ``a`` in their field state (row
    ``t`` = step ``t``) without an array axis holding it, and the carry entering step ``t`` is
    the carry leaving step ``t - 1`` (a shift along ``a``), the initial carry at step 0. The
    body is walked until the dependence stops changing (at most ``n + 1`` walks): output ``t``
    then reads the prefix ``[0, t]`` of the steps (the suffix for ``reverse``), each through
    the per-step rule, exactly.
    """
    if len(along) != 1 or not isinstance(a := next(iter(along)), int):
        raise Mixing(f"a scan along array axes holding {sorted(map(str, along))}")
    p = eqn.params
    n_c, n_k, n = p["num_consts"], p["num_carry"], p["length"]
    consts, init, xs = inputs[:n_c], inputs[n_c : n_c + n_k], inputs[n_c + n_k :]
    if any(isinstance(x, Dependent) and x.axes[0] != a for x in xs):
        raise Mixing("a scan over a spatial axis and a non-spatial axis at once")
    name = ctx.name("scan")
    rev = p["reverse"]
    shift = np.eye(n, k=1 if rev else -1, dtype=bool)
    placed = [_place_init(c, a, n, n - 1 if rev else 0, name) for c in init]
    xs_t = [
        Dependent(x.state, x.axes[1:]) if isinstance(x, Dependent) else _per_step_constant()
        for x in xs
    ]
    carry_in, first, prev = list(placed), None, None
    for _ in range(n + 2):
        if first is None:
            walked = ctx.walk(p["jaxpr"], list(consts) + carry_in + xs_t)
            outs = first = walked.outputs
        else:  # later walks only widen the dependence: their records and path merges are noise
            outs = _quiet_walk(ctx, p["jaxpr"], list(consts) + carry_in + xs_t)
        if prev is not None and all(same_value(u, v) for u, v in zip(prev, outs, strict=True)):
            break
        prev = outs
        carry_in = [
            _carry_in(ctx, c, o, a, shift, name) for c, o in zip(placed, outs[:n_k], strict=True)
        ]
    cumulative = Window(n, 1, (0, n - 1) if rev else (n - 1, 0))
    last_row = np.zeros((1, n), bool)
    last_row[0, 0 if rev else n - 1] = True
    result = []
    for j, (o, f) in enumerate(zip(outs, first, strict=True)):
        if not isinstance(o, Dependent):
            result.append(_unevaluable("a scan output"))
            continue
        state = _scan_state(o, f, a, cumulative, name)
        if j < n_k:
            result.append(Dependent(pattern_through(state, a, last_row, name), o.axes))
        else:
            result.append(Dependent(state, (a,) + o.axes))
    return Result.join(
        result, walked, Result((), (ctx.layer(result[-1].state, name, "scan", out=j),))
    )


def _per_step_constant() -> Constant:
    def fail():
        raise Mixing("a scan along a spatial axis whose body reads a per-step constant")

    return Constant(fail)


def while_loop(ctx, eqn, inputs):
    """``while`` (``fori_loop`` with traced bounds): exact when the trip count is constant."""
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts, carry = inputs[:nc], inputs[nc : nc + nb], list(inputs[nc + nb :])
    cond_jaxpr = p["cond_jaxpr"]
    trips = [0]

    def keep_going(carry):
        (go,) = ctx.walk(cond_jaxpr, list(cond_consts) + list(carry), sub_index=0).outputs
        if isinstance(go, Dependent):
            raise _InputDependentTrips
        trips[0] += 1
        if trips[0] > 100_000:
            raise Mixing("a while loop running over 100000 iterations")
        return bool(go.value)

    try:
        carry, _, walks = _loop(
            ctx,
            p["body_jaxpr"],
            body_consts,
            carry,
            lambda t, s: [],
            itertools.count(),
            keep_going,
            sub_index=1,
        )
    except _InputDependentTrips:
        res = global_outputs(ctx, eqn, list(inputs))
        warnings.warn(
            f"'{res.records[0].name}': a while loop whose trip count depends on the input is "
            "treated as global: every output now depends on the whole input.",
            GlobalReceptiveFieldWarning,
            stacklevel=2,
        )
        return res
    outs = [c if isinstance(c, Dependent) else _unevaluable("a while carry") for c in carry]
    return Result.join(outs, *walks)


class _InputDependentTrips(Exception):  # noqa: N818 (internal control flow)
    pass


# ---------------------------------------------------------------------------------------
# Reversal and sorting.
# ---------------------------------------------------------------------------------------


def rev(ctx, eqn, inputs):
    """``rev`` (``x[:, ::-1]``): along a spatial axis, output ``i`` reads input ``n - 1 - i``."""
    (x,) = inputs
    name = None
    state = x.state
    for d in eqn.params["dimensions"]:
        label = x.axes[d]
        if label is None:
            continue
        if isinstance(label, Flat):
            raise Mixing(f"a reversal of a flattened axis {label}")
        name = name or ctx.name("rev")
        if isinstance(label, Part):  # one digit of a split axis: reverse that digit
            axis, sizes, k = label.axis, label.sizes, label.k
        elif isinstance(label, int):  # a whole axis: its one digit
            axis, sizes, k = label, (state.shape[label],), 0
        else:
            raise Mixing(f"a reversal of axis {label}")
        state = pattern_through(state, axis, _digit_reversal(sizes, k), name)
    if name is None:
        return [Dependent(state, x.axes)]
    return Result((Dependent(state, x.axes),), (ctx.layer(state, name, "rev"),))


def _digit_reversal(sizes, k: int) -> np.ndarray:
    """``(n, n)`` pattern of reversing digit ``k`` of an axis written as row-major digits of
    ``sizes``: position ``i`` reads the position whose digit ``k`` is ``sizes[k] - 1 - d_k``."""
    digits = np.indices(sizes).reshape(len(sizes), -1)
    digits[k] = sizes[k] - 1 - digits[k]
    n = digits.shape[1]
    pattern = np.zeros((n, n), bool)
    pattern[np.arange(n), np.ravel_multi_index(tuple(digits), sizes)] = True
    return pattern


def sort(ctx, eqn, inputs):
    """``sort`` (and ``argsort``, ``top_k`` on its axis): a merge of the operands along
    non-spatial axes; along a spatial axis every output reads the whole axis."""
    d = eqn.params["dimension"]
    merged = Result.of(elementwise(ctx, eqn, inputs))
    x = merged.outputs[0]
    label = x.axes[d]
    if label is None:
        return merged
    if isinstance(label, Flat):
        raise Mixing(f"a sort along a flattened axis {label}")
    name = ctx.name("sort")
    if isinstance(label, Part):  # along one digit of a split axis: the positions that agree
        group = group_pattern(label.sizes, {label.k}, True)  # with it on every other digit
        state = pattern_through(x.state, label.axis, group, name)
    elif isinstance(label, int):
        n = x.state.shape[label]
        state = pattern_through(x.state, label, np.ones((n, n), bool), name, is_global=True)
        warnings.warn(
            f"'{name}' sorts along spatial axis {label}: every output reads the whole axis.",
            GlobalReceptiveFieldWarning,
            stacklevel=2,
        )
    else:
        raise Mixing(f"a sort along axis {label}")
    rec = ctx.layer(state, name, "sort")
    return Result.join([Dependent(state, x.axes)] * len(eqn.outvars), merged, Result((), (rec,)))
