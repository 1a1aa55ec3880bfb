"""Spatial axes split into factors: window partitions, pixel shuffles, attention inside groups.

A reshape may split spatial axis ``a`` of size ``n = s_0 s_1 ... s_{m-1}`` into factors held
by different array axes (row-major digits: position ``j`` has digits ``unravel(j, (s_0, ...))``).
The array axis holding digit ``k`` is labelled :class:`Part` ``(a, (s_0, ...), k)``; a
:class:`~jaxrf._rules.Flat` label may hold parts as well. The field state keeps indexing the
whole axis (``n`` positions), so the index of a result always addresses the input grid.

* ``reshape``/``transpose`` only move digits: the Swin window partition
  ``x.reshape(B, H/w, w, W/w, w, C).transpose(0, 1, 3, 2, 4, 5).reshape(-1, w*w, C)``
  gives the batch axis the window digits and the token axis the within-window digits, and the
  reverse partition merges them back into whole axes (adjacent digits of one axis merge).
* A digit merged with channel digits (pixel shuffle, depth-to-space) is a sub-pixel: output
  ``h r + i`` reads what ``h`` reads (an exact repeat pattern).
* Attention (``dot_general`` of two input-dependent operands) that contracts, or pairs as
  query/key, the digits ``K`` of a token axis while the other digits sit on batch axes reads
  the group of positions that agree on every digit outside ``K``: the pattern
  ``P[i, j] = (digits of i and j agree outside K)`` (a Swin window, a MaxViT block or grid),
  exact per index. With ``K`` every digit (ordinary attention), the group is the whole axis.
* A constant contracted over digits ``K`` (a dense patch embedding after a space-to-depth) or
  a reduction over them removes those digits: output ``r`` reads the positions whose other
  digits equal ``r``'s.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np

from ._field import GlobalReceptiveFieldWarning, pattern_through
from ._rules import Dependent, Flat, Mixing, Result, unify
from ._rules_tokens import Tokens, unwrap


@dataclass(frozen=True)
class Part:
    """Digit ``k`` of spatial axis ``axis`` written as mixed-radix digits of sizes ``sizes``."""

    axis: int
    sizes: tuple[int, ...]
    k: int


_ids = itertools.count()


def _atoms_of(label, n: int, state_shape):
    """``[(axis or None, digit k or None, sizes or None, size)]`` for one array axis."""
    if label is None:
        return [(None, None, None, n)]
    label = unwrap(label)
    parts, sizes = (label.parts, label.sizes) if isinstance(label, Flat) else ((label,), (n,))
    out = []
    for part, size in zip(parts, sizes, strict=True):
        if part is None:
            out.append((None, None, None, size))
        elif isinstance(part, Part):
            out.append((part.axis, part.k, part.sizes, size))
        else:
            out.append((part, 0, (state_shape[part],), size))
    return out


def _read_atoms(x: Dependent, in_shape):
    """Atoms ``[id or None, size]`` of the input, and per axis the list of its digit ids."""
    dec: dict[int, list[int]] = {}
    owner: dict[int, int] = {}
    atoms = []
    for n, lab in zip(in_shape, x.axes, strict=True):
        if isinstance(lab, Tokens):
            atoms.append([("tokens", lab), n])
            continue
        for axis, k, sizes, size in _atoms_of(lab, n, x.state.shape):
            if axis is None:
                if size != 1:
                    atoms.append([None, size])
                continue
            if axis not in dec:
                dec[axis] = [next(_ids) for _ in sizes]
                for i in dec[axis]:
                    owner[i] = axis
            if size != 1:
                atoms.append([dec[axis][k], size])
    return atoms, dec, owner


def _split_into(atoms, out_shape, dec, owner):
    """Group the atoms per output axis, splitting an atom where an axis boundary cuts it."""
    groups, i = [], 0
    for m in out_shape:
        group, prod = [], 1
        while prod < m:
            fid, s = atoms[i]
            if isinstance(fid, tuple) and prod * s != m:
                raise Mixing("a reshape that splits or merges a token axis with prefix tokens")
            if prod * s <= m:
                group.append(atoms[i])
                prod, i = prod * s, i + 1
                continue
            need = m // prod
            if m % prod or s % need:
                raise Mixing(f"a reshape to {tuple(out_shape)} cuts a factor of size {s} unevenly")
            hi, lo = (None, None) if fid is None else (next(_ids), next(_ids))
            if fid is not None:
                a = owner[fid]
                j = dec[a].index(fid)
                dec[a][j : j + 1] = [hi, lo]
                owner[hi] = owner[lo] = a
            group.append([hi, need])
            atoms[i] = [lo, s // need]
            prod = m
        groups.append(group)
    return groups


def _coarsen(groups, dec, owner):
    """Merge adjacent digits of one axis that sit next to each other on one array axis."""
    for group in groups:
        j = 0
        while j + 1 < len(group):
            (f1, s1), (f2, s2) = group[j], group[j + 1]
            if f1 is None and f2 is None:
                group[j : j + 2] = [[None, s1 * s2]]
                continue
            if isinstance(f1, tuple) or isinstance(f2, tuple):
                j += 1
                continue
            if f1 is not None and f2 is not None and owner[f1] == owner[f2]:
                d = dec[owner[f1]]
                if d.index(f2) == d.index(f1) + 1:
                    new = next(_ids)
                    owner[new] = owner[f1]
                    d[d.index(f1) : d.index(f1) + 2] = [new]
                    group[j : j + 2] = [[new, s1 * s2]]
                    continue
            j += 1


def _label(group, dec, owner, sizes_of):
    parts, sizes = [], []
    if len(group) == 1 and isinstance(group[0][0], tuple):
        return group[0][0][1]
    for fid, s in group:
        if fid is None:
            parts.append(None)
        else:
            a = owner[fid]
            live = [f for f in dec[a] if f in sizes_of]
            parts.append(
                a if len(live) == 1 else Part(a, tuple(sizes_of[f] for f in live), live.index(fid))
            )
        sizes.append(s)
    if all(p is None for p in parts):
        return None
    if len(parts) == 1:
        return parts[0]
    return Flat(tuple(parts), tuple(sizes))


def reshape(ctx, eqn, inputs):
    """``reshape``: digits of spatial axes moved between array axes (see module docstring)."""
    from ._rules_grids import relabel_new_ones

    x = inputs[0]
    if eqn.params.get("dimensions") is not None:
        raise Mixing("reshape with a dimension permutation")
    in_shape, out_shape = tuple(eqn.invars[0].aval.shape), tuple(eqn.outvars[0].aval.shape)
    moved = [n for n in in_shape if n != 1] != [n for n in out_shape if n != 1]
    if _size_one_label_ambiguous(in_shape, out_shape, x.axes, moved):
        # its size-1 digit could land on any of several output axes (a pixel shuffle of a 1x1
        # map, a window partition of a 1-pixel-wide map)
        raise Mixing(f"a reshape {in_shape} -> {out_shape} of a map with a size-1 spatial axis")
    atoms, dec, owner = _read_atoms(x, in_shape)
    groups = _split_into(atoms, out_shape, dec, owner)
    _coarsen(groups, dec, owner)
    sizes_of = {fid: s for g in groups for fid, s in g if fid is not None}
    axes = [_label(g, dec, owner, sizes_of) for g in groups]
    state = x.state
    for p, lab in enumerate(axes):
        if (
            isinstance(lab, Flat)
            and len(set(lab.spatial)) == 1
            and all(isinstance(q, int) or q is None for q in lab.parts)
        ):
            state, axes[p] = _subpixel(state, lab, ctx.name("shuffle"))
    ones = [] if moved else _new_ones(in_shape, out_shape)
    return [
        Dependent(state, relabel_new_ones(Dependent(state, tuple(axes)), axes, out_shape, ones))
    ]


def _size_one_runs(shape) -> list[list[int]]:
    """The positions of the size-1 axes of ``shape``, one run per gap between non-1 sizes (and
    at either end): ``(1, 6, 1, 1) -> [[0], [2, 3]]``."""
    out, run = [], []
    for p, n in enumerate(shape):
        if n == 1:
            run.append(p)
        else:
            out.append(run)
            run = []
    return [*out, run]


def _size_one_label_ambiguous(in_shape, out_shape, labels, moved: bool) -> bool:
    """Whether a size-1 spatial axis of the input has no one output axis to go to: the reshape
    moves digits between axes, or adds size-1 axes to the run of size-1 axes holding it
    (between two non-1 sizes), so which of them carries it is a guess. (A run that shrinks,
    ``(1, 1, 1, C) -> (1, C)`` after a global pool, drops the label.)"""
    labelled = [p for p, (n, lab) in enumerate(zip(in_shape, labels, strict=True))
                if n == 1 and lab is not None]  # fmt: skip
    if not labelled:
        return False
    if moved:
        return True

    pairs = zip(_size_one_runs(in_shape), _size_one_runs(out_shape), strict=True)
    return any(len(a) < len(b) and any(p in a for p in labelled) for a, b in pairs)


def _new_ones(in_shape, out_shape) -> list[int]:
    """Size-1 output axes a reshape adds (not those that carry a size-1 input axis along).

    The non-1 sizes are the same in both shapes; between two of them (and at either end) the
    first size-1 output axes carry the input's size-1 axes of that gap (a batch of 1), the rest
    are new: ``(1, C) -> (1, 1, 1, C)`` adds axes 1 and 2, not the batch axis 0.
    """
    runs = zip(_size_one_runs(in_shape), _size_one_runs(out_shape), strict=True)
    return [p for a, b in runs for p in b[len(a) :]]


def _subpixel(state, label: Flat, name: str):
    """A whole spatial axis ``a`` merged with channel digits (depth-to-space): position ``j``
    of the array axis reads what its ``a`` digit reads (a repeat pattern)."""
    (a,) = set(label.spatial)
    digits = np.indices(label.sizes).reshape(len(label.sizes), -1)
    k = label.parts.index(a)
    pattern = np.zeros((digits.shape[1], state.shape[a]), bool)
    pattern[np.arange(digits.shape[1]), digits[k]] = True
    return pattern_through(state, a, pattern, name), a


# ---------------------------------------------------------------------------------------
# Groups: attention inside windows, reductions and dense layers over digits.
# ---------------------------------------------------------------------------------------


def digits_of(label, state_shape) -> set[tuple[int, int]]:
    """``{(axis, digit)}`` held by one array axis."""
    return {(a, k) for a, k, _, _ in _atoms_of(label, 1, state_shape) if a is not None}


def _sizes(labels, a: int, state_shape) -> tuple[int, ...]:
    for lab in labels:
        for axis, _, sizes, _ in _atoms_of(lab, 1, state_shape):
            if axis == a:
                return sizes
    return (state_shape[a],)


def group_pattern(sizes, group: set[int], keep: bool) -> np.ndarray:
    """Positions of an axis with digits ``sizes`` that agree outside the digits ``group``.

    ``keep``: ``(n, n)``, ``P[i, j]`` = digits of ``i`` and ``j`` agree outside ``group``.
    Otherwise ``(n_rest, n)``: row ``r`` (the digits outside ``group``, row-major) reads every
    ``j`` whose digits outside ``group`` are ``r``'s.
    """
    digits = np.indices(sizes).reshape(len(sizes), -1)
    rest = [k for k in range(len(sizes)) if k not in group]
    if keep:
        same = np.ones((digits.shape[1],) * 2, bool)
        for k in rest:
            same &= digits[k][:, None] == digits[k][None, :]
        return same
    n_rest = int(np.prod([sizes[k] for k in rest])) if rest else 1
    row = np.ravel_multi_index(digits[rest], [sizes[k] for k in rest]) if rest else 0
    pattern = np.zeros((n_rest, digits.shape[1]), bool)
    pattern[row, np.arange(digits.shape[1])] = True
    return pattern


def spread(state, labels, held: set[tuple[int, int]], name: str):
    """Every position reads its whole group: the positions agreeing outside ``held``."""
    for a in sorted({a for a, _ in held}):
        sizes = _sizes(labels, a, state.shape)
        group = {k for b, k in held if b == a}
        whole = len(group) == len(sizes)
        state = pattern_through(state, a, group_pattern(sizes, group, True), name, whole)
    return state


def remove_digits(state, labels, gone: set[tuple[int, int]], name: str):
    """Contract the digits ``gone`` away (a reduction or dense layer over them).

    Returns the new state and labels: remaining digits renumbered, removed ones unlabelled.
    """
    labels = list(labels)
    for a in sorted({a for a, _ in gone}):
        sizes = _sizes(labels, a, state.shape)
        group = {k for b, k in gone if b == a}
        whole = len(group) == len(sizes)
        state = pattern_through(state, a, group_pattern(sizes, group, False), name, whole)
        rest = [k for k in range(len(sizes)) if k not in group]
        labels = [_renumber(lab, a, rest, tuple(sizes[k] for k in rest)) for lab in labels]
    return state, tuple(labels)


def _renumber(label, a: int, rest, sizes):
    def one(part):
        if part is None:
            return None
        axis, k = (part.axis, part.k) if isinstance(part, Part) else (part, 0)
        if axis != a:
            return part
        if k not in rest:
            return None
        return a if len(rest) == 1 else Part(a, sizes, rest.index(k))

    if isinstance(label, Flat):
        parts = tuple(one(p) for p in label.parts)
        return None if all(p is None for p in parts) else Flat(parts, label.sizes)
    return one(label)


def has_parts(label) -> bool:
    if isinstance(label, Flat):
        return any(isinstance(p, Part) for p in label.parts)
    return isinstance(label, Part)


def _digits(labels, positions, state_shape) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    for p in positions:
        out |= digits_of(labels[p], state_shape)
    return out


def _complete(held, others, labels, state_shape) -> bool:
    """Every digit of every axis in ``held`` is in ``held`` or ``others``, and they are apart."""
    if held & others:
        return False
    for a in {a for a, _ in held}:
        n = len(_sizes(labels, a, state_shape))
        if any((a, k) not in held | others for k in range(n)):
            return False
    return True


def grouped_attention(ctx, dot, both, labels):
    """Both operands input-dependent, token digits paired (``q k^T``) or contracted
    (``weights @ v``) while the other digits sit on identical batch axes: every output reads
    the group of its position (see the module docstring). None when that is not the shape.

    ``dot`` holds the contracted, batch and free positions per operand
    (:class:`jaxrf._rules._Dot`)."""
    contract, batch, free = dot.contract, dot.batch, dot.free
    shape = both[0].state.shape
    if [labels[0][p] for p in batch[0]] != [labels[1][q] for q in batch[1]]:
        return None
    in_batch = _digits(labels[0], batch[0], shape)
    c = [_digits(labels[k], contract[k], shape) for k in (0, 1)]
    f = [_digits(labels[k], free[k], shape) for k in (0, 1)]
    if not c[0] and not c[1] and f[1] and f[0] == f[1]:
        side, group = 1, f[1]
    elif c[1] and not c[0] and f[0] == c[1]:
        side, group = 1, c[1]
    elif c[0] and not c[1] and f[1] == c[0]:
        side, group = 0, c[0]
    else:
        return None
    both_labels = labels[0] + labels[1]
    if in_batch and any(isinstance(lab, Tokens) for lab in both_labels):
        return None
    if not _complete(group, in_batch, both_labels, shape):
        return None
    name = ctx.name("attention")
    spread_state = spread(both[side].state, labels[side], group, name)
    parts = [Dependent(both[1 - side].state, ()), Dependent(spread_state, ())]
    with warnings.catch_warnings():  # attending to a whole axis is global by design
        warnings.simplefilter("ignore", GlobalReceptiveFieldWarning)
        merged = unify(ctx, parts, "attention").outputs[0]
    new = [list(labels[0]), list(labels[1])]
    if not c[0] and not c[1]:
        for q in free[1]:
            new[1][q] = None
    rec = ctx.layer(merged.state, name, "attention")
    return Result((Dependent(merged.state, dot.out_axes(new)),), (rec,))


def contract_digits(ctx, dep: Dependent, positions, op: str) -> Result:
    """A reduction or dense layer over array axes holding digits: those digits are removed.

    One output: the new state, with the remaining digits renumbered on every array axis."""
    gone = _digits(dep.axes, positions, dep.state.shape)
    name = ctx.name(op)
    state, labels = remove_digits(dep.state, dep.axes, gone, name)
    return Result((Dependent(state, labels),), (ctx.layer(state, name, op),))
