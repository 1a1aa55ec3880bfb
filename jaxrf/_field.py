"""The receptive field of a feature map, per spatial axis, with merges and alignment.

Two complementary descriptions travel together through a network (a layer list or a jaxpr):

* **Paths** (Distill's view): for every distinct way from the input to this feature map, the
  affine summary ``(size r, effective stride S, effective padding P)`` per axis, so that output
  ``i`` covers ``[S i - P, S i - P + r - 1]`` of the input, padding included. At a merge (add,
  channel concatenation) paths are *aligned* when they have the same ``S`` and the same centre
  offset ``(r - 1)/2 - P`` on every axis; aligned paths collapse to the largest one. Misaligned
  paths are kept apart: the region is then not shift-invariant.
* **Dependence** (what the pixels really are): per axis, a boolean matrix ``(n_map, n_input)``
  saying which input features each feature of the map depends on, clipped at the border and at
  every layer. A map's dependence is a union of products of these per-axis matrices
  (:class:`Term`); see :func:`merge_terms` for why that keeps bounding boxes exact.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np

from ._axis import (
    Number,
    Window,
    as_number,
    compose_window,
    floor_ceil,
    format_axes,
    row_box,
)

Index = tuple[int, ...]
Box = tuple[tuple[int, int], ...]


class MisalignmentWarning(UserWarning):
    """Two paths merged with different effective stride or centre offset (Distill, Sec. 4)."""


class GlobalReceptiveFieldWarning(UserWarning):
    """An operation made every output depend on the whole input (e.g. squeeze-excitation)."""


# ---------------------------------------------------------------------------------------
# Paths: Distill's affine summary.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Path:
    """Affine summary of one path from the input, per axis: ``u = S i - P``, ``v = u + r - 1``.

    ``is_global`` marks a path through an operation that reads the whole input (global
    pooling, attention): its region is the whole input whatever ``i``. ``min_size`` is the
    smallest size among the paths that aligned merges collapsed into this one (they share ``S``,
    so every later layer adds the same amount to each); it defaults to ``size``.
    """

    size: tuple[Fraction, ...]
    stride: tuple[Fraction, ...]
    padding: tuple[Fraction, ...]
    name: str = field(compare=False)  # for messages; two paths are equal by their numbers
    is_global: bool = False
    min_size: tuple[Fraction, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.min_size is None:
            object.__setattr__(self, "min_size", self.size)

    @classmethod
    def identity(cls, ndim: int, name: str = "input") -> Path:
        one, zero = (Fraction(1),) * ndim, (Fraction(0),) * ndim
        return cls(one, one, zero, name)

    def through(self, windows: Sequence[Window], name: str) -> Path:
        """After one more layer: ``S' = S s/D``, ``P' = P + S p/D``, ``r' = r + S (k'-1)/D``."""
        if self.is_global:
            return replace(self, name=name)
        size, stride, padding, low = [], [], [], []
        for r, S, P, w, m in zip(
            self.size, self.stride, self.padding, windows, self.min_size, strict=True
        ):
            unit = S / w.input_dilation
            size.append(r + unit * (w.span - 1))
            stride.append(unit * w.stride)
            padding.append(P + unit * w.padding[0])
            low.append(m + unit * (w.span - 1))
        return Path(tuple(size), tuple(stride), tuple(padding), name, min_size=tuple(low))

    @property
    def offset(self) -> tuple[Fraction, ...]:
        """Centre offset ``(r - 1)/2 - P`` per axis: centre of output ``i`` is ``S i + offset``."""
        return tuple((r - 1) / 2 - P for r, P in zip(self.size, self.padding, strict=True))

    def region(self, index: Index, n_input: Index) -> tuple[tuple[Fraction, Fraction], ...]:
        """Unclipped real interval ``[u, v]`` per axis (the whole input for a global path)."""
        if self.is_global:
            return tuple((Fraction(0), Fraction(n - 1)) for n in n_input)
        return tuple(
            (S * i - P, S * i - P + r - 1)
            for i, r, S, P in zip(index, self.size, self.stride, self.padding, strict=True)
        )

    def describe(self) -> str:
        if self.is_global:
            return f"'{self.name}' (global: reads the whole input)"

        def fmt(values: Sequence[Fraction]) -> str:
            return format_axes(values, sep=", ", brackets="()")

        return (
            f"'{self.name}' (stride {fmt(self.stride)}, padding {fmt(self.padding)}, "
            f"size {fmt(self.size)})"
        )


def merge_paths(paths: Sequence[Path], name: str) -> tuple[Path, ...]:
    """Merge the paths of the operands of an add or a channel concatenation.

    Aligned paths (same stride and centre offset on every axis) collapse into one of the
    largest size (per axis); its padding follows from the shared offset. Paths that stay apart
    are misaligned; a :class:`MisalignmentWarning` names them with stride, padding and size.
    """
    groups: dict[tuple, list[Path]] = {}
    for p in paths:
        key = ("global",) if p.is_global else (p.stride, p.offset)
        groups.setdefault(key, []).append(p)
    merged = []
    for key, members in groups.items():
        if key == ("global",):
            merged.append(Path(members[0].size, members[0].stride, members[0].padding, name, True))
            continue
        if len(members) == 1:
            merged.append(members[0])  # keeps its branch's name for messages
            continue
        stride, offset = key
        size = tuple(max(p.size[a] for p in members) for a in range(len(stride)))
        low = tuple(min(p.min_size[a] for p in members) for a in range(len(stride)))
        padding = tuple((r - 1) / 2 - o for r, o in zip(size, offset, strict=True))
        merged.append(Path(size, stride, padding, name, min_size=low))
    local = [p for p in merged if not p.is_global]
    if len(local) > 1:
        branches = "; ".join(p.describe() for p in _last_names(paths, local))
        warnings.warn(
            f"misaligned merge at '{name}': the branches {branches} have different effective "
            "stride or centre offset, so the receptive field is not shift-invariant; "
            "ReceptiveField.region(index, clip=True) is still exact per output index.",
            MisalignmentWarning,
            stacklevel=3,
        )
    return tuple(merged)


def _last_names(originals: Sequence[Path], merged: Sequence[Path]) -> list[Path]:
    """Name each merged group by the branches it came from (for the warning)."""
    out = []
    for m in merged:
        names = [p.name for p in originals if (p.stride, p.offset) == (m.stride, m.offset)]
        out.append(replace(m, name="' + '".join(dict.fromkeys(names))))
    return out


# ---------------------------------------------------------------------------------------
# Dependence: exact per-index input pixels, as a union of per-axis products.
# ---------------------------------------------------------------------------------------

Term = tuple[np.ndarray, ...]  # one boolean (n_map_axis, n_input_axis) matrix per axis


def merge_terms(terms: Sequence[Term]) -> tuple[Term, ...]:
    """Union of product terms, merged where that keeps bounding boxes exact.

    Feature ``(i_0, i_1, ...)`` depends on ``U_t  T_t[0][i_0] x T_t[1][i_1] x ...``. Two terms
    whose rows are empty at exactly the same places (per axis) can be replaced by the per-axis
    union without changing the bounding box of any feature, now or after any further layer:
    a layer empties the same rows of both. Terms with different empty rows (a branch that
    reads only padding at some positions) stay apart, so a branch that contributes nothing at a
    position never widens its box on another axis.
    """
    groups: dict[tuple[bytes, ...], list[Term]] = {}
    for term in terms:
        key = tuple(np.packbits(m.any(axis=1)).tobytes() + bytes([m.shape[0] % 8]) for m in term)
        groups.setdefault(key, []).append(term)
    out = []
    for members in groups.values():
        if len(members) == 1:
            out.append(members[0])
        else:
            out.append(
                tuple(np.logical_or.reduce([t[a] for t in members]) for a in range(len(members[0])))
            )
    return tuple(out)


def terms_through(terms: Sequence[Term], windows: Sequence[Window]) -> tuple[Term, ...]:
    """Push every term through one layer (per axis, :func:`compose_window`)."""
    return merge_terms(
        [tuple(compose_window(w, m) for w, m in zip(windows, term, strict=True)) for term in terms]
    )


@dataclass(frozen=True)
class LayerRecord:
    """One row of a per-layer table: a feature map and its receptive field so far.

    ``kernel``/``stride`` are the layer's own (per axis, None for merges); ``size``,
    ``effective_stride``, ``effective_padding`` are Distill's ``r``, ``S``, ``P`` of the map
    with respect to the network input (None where misaligned paths make them undefined).
    ``min_size``/``max_size`` are the smallest and largest ``r`` over all paths from the input
    (aligned ones included), per axis; ``input_min_size`` is the smallest ``r`` of the map the
    layer reads (``min_size`` less the layer's growth ``S s^-1 (k' - 1)`` on the shortest path;
    ``min_size`` for records without a window). All three are None where every path is global.
    """

    name: str
    op: str
    output_shape: Index
    kernel: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    size: tuple[Number, ...] | None
    effective_stride: tuple[Number, ...] | None
    effective_padding: tuple[Number, ...] | None
    aligned: bool
    is_global: bool = False
    min_size: tuple[Number, ...] | None = None
    max_size: tuple[Number, ...] | None = None
    input_min_size: tuple[Number, ...] | None = None
    #: Where the map is in the traced program: ``(path, k)``, output ``k`` of the equation at
    #: ``path`` (equation indices through nested sub-programs, see :class:`jaxrf._walk.Site`);
    #: None for layer lists.
    source: tuple[tuple[int, ...], int] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class FieldState:
    """Everything known about one feature map while walking a network (internal)."""

    shape: Index
    paths: tuple[Path, ...]
    terms: tuple[Term, ...]

    @classmethod
    def input(cls, shape: Index) -> FieldState:
        eye = tuple(np.eye(n, dtype=bool) for n in shape)
        return cls(tuple(shape), (Path.identity(len(shape)),), (eye,))

    def through(self, windows: Sequence[Window], name: str) -> FieldState:
        shape = tuple(w.output_size(n) for w, n in zip(windows, self.shape, strict=True))
        paths = tuple(p.through(windows, name) for p in self.paths)
        return FieldState(shape, paths, terms_through(self.terms, windows))

    def make_global(self, shape: Index, name: str) -> FieldState:
        """Every feature of the new map (of spatial ``shape``) depends on every input pixel."""
        n_input = tuple(m.shape[1] for m in self.terms[0])
        full = tuple(np.ones((n, k), dtype=bool) for n, k in zip(shape, n_input, strict=True))
        ndim = len(shape)
        path = Path((Fraction(0),) * ndim, (Fraction(0),) * ndim, (Fraction(0),) * ndim, name, True)
        return FieldState(tuple(shape), (path,), (full,))

    def record(self, name: str, op: str, window: Sequence[Window] | None = None) -> LayerRecord:
        local = [p for p in self.paths if not p.is_global]
        is_global = len(local) != len(self.paths)
        aligned = len(local) <= 1
        size = stride = padding = None
        if aligned and not is_global and local:
            p = local[0]
            size = tuple(as_number(v) for v in p.size)
            stride = tuple(as_number(v) for v in p.stride)
            padding = tuple(as_number(v) for v in p.padding)
        return LayerRecord(
            name=name,
            op=op,
            output_shape=self.shape,
            kernel=tuple(w.kernel for w in window) if window else None,
            stride=tuple(w.stride for w in window) if window else None,
            size=size,
            effective_stride=stride,
            effective_padding=padding,
            aligned=aligned,
            is_global=is_global,
            **_path_extremes(local, window),
        )


def _path_extremes(local: Sequence[Path], window: Sequence[Window] | None) -> dict:
    """``min_size``, ``max_size`` and ``input_min_size`` of a record (see LayerRecord)."""
    if not local:
        return {}
    axes = range(len(local[0].size))
    low = tuple(as_number(min(p.min_size[a] for p in local)) for a in axes)
    high = tuple(as_number(max(p.size[a] for p in local)) for a in axes)
    before = low
    if window:
        before = tuple(
            as_number(min(p.min_size[a] - p.stride[a] / w.stride * (w.span - 1) for p in local))
            for a, w in zip(axes, window, strict=True)
        )
    return {"min_size": low, "max_size": high, "input_min_size": before}


def merge_states(states: Sequence[FieldState], name: str) -> FieldState:
    """An add / channel concatenation of feature maps of the same spatial shape."""
    shapes = {s.shape for s in states}
    if len(shapes) != 1:
        raise ValueError(
            f"merge '{name}': branches have spatial shapes {sorted(shapes)}, which must be equal "
            "for an add or a channel concatenation; fix the branches' strides or padding."
        )
    paths = merge_paths([p for s in states for p in s.paths], name)
    if any(p.is_global for p in paths) and not all(s.paths[0].is_global for s in states):
        warnings.warn(
            f"'{name}' merges a global branch: every output now depends on the whole input.",
            GlobalReceptiveFieldWarning,
            stacklevel=2,
        )
    terms = merge_terms([t for s in states for t in s.terms])
    return FieldState(states[0].shape, paths, terms)


def broadcast_state(state: FieldState, shape: Sequence[int], name: str) -> FieldState:
    """Broadcast size-1 axes of a map to ``shape`` (every position reads position 0)."""
    if tuple(state.shape) == tuple(shape):
        return state
    for a, (n, m) in enumerate(zip(state.shape, shape, strict=True)):
        if n != m and n != 1:
            raise ValueError(
                f"merge '{name}': a branch has spatial shape {state.shape}, which does not "
                f"broadcast to {tuple(shape)} (axis {a}: {n} vs {m}); make the branches end at "
                "the same shape."
            )
    terms = tuple(
        tuple(
            m if m.shape[0] == n else np.repeat(m, n, axis=0) for m, n in zip(t, shape, strict=True)
        )
        for t in state.terms
    )
    paths = []
    for p in state.paths:
        if p.is_global:
            paths.append(p)
            continue
        # Region of every position is that of position 0: stride 0 on broadcast axes.
        stride = tuple(
            Fraction(0) if n == 1 and m != 1 else S
            for S, n, m in zip(p.stride, state.shape, shape, strict=True)
        )
        paths.append(replace(p, stride=stride))
    return FieldState(tuple(shape), tuple(paths), terms)


def check_index(index, spatial_shape: Sequence[int], argument: str = "index") -> tuple[int, ...]:
    """An output position as a tuple of in-range ints, or a ValueError naming the rule."""
    ndim = len(spatial_shape)
    if isinstance(index, numbers.Integral):
        index = (index,)
    try:
        index = tuple(index)
    except TypeError:
        raise TypeError(
            f"`{argument}` (={index!r}) must be a tuple of {ndim} ints, one per spatial axis."
        ) from None
    if not all(isinstance(i, numbers.Integral) for i in index):
        raise TypeError(f"`{argument}` (={index!r}) must hold ints, one per spatial axis.")
    if len(index) != ndim:
        raise ValueError(
            f"`{argument}` (={index}) has {len(index)} entries but the output has {ndim} spatial "
            f"axes (spatial shape {tuple(spatial_shape)}); give one index per axis."
        )
    for a, (i, n) in enumerate(zip(index, spatial_shape, strict=True)):
        if not 0 <= i < n:
            raise ValueError(
                f"`{argument}` (={index}) is outside the output: axis {a} has {n} positions, so "
                f"0 <= index[{a}] <= {n - 1} (negative indices are not wrapped)."
            )
    return tuple(int(i) for i in index)


# ---------------------------------------------------------------------------------------
# The public result.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a network's output with respect to its input, per spatial axis.

    Attributes:
        size: Distill's ``r_0`` per axis (int, or Fraction after transposed convolutions).
        stride: effective stride ``S_0`` per axis.
        padding: effective padding ``P_0`` per axis: output ``i`` covers ``[S i - P, S i - P +
            r - 1]`` of the input (padding included).
        input_shape: spatial shape of the input, e.g. ``(224, 224)``.
        output_shape: spatial shape of the output.
        aligned: True when all paths from input to output are aligned (Distill, Sec. 4). When
            False, ``size``/``stride``/``padding`` summarise the union of the paths: the
            largest region width over all output positions, the start ``-padding`` of output
            0's region, and the largest path stride; use :meth:`region` per index.
        is_global: True when some path reads the whole input (global pooling, attention).
        paths: the distinct (misaligned) paths, each with its own ``size/stride/padding``.
        layers: per-layer records (a table of the receptive field after every layer).

    Example:
        >>> import jaxrf
        >>> rf = jaxrf.from_layers([jaxrf.Layer(3), jaxrf.Layer(3)], input_shape=(8,))
        >>> rf.size, rf.stride, rf.padding, rf.output_shape
        ((5,), (1,), (0,), (4,))
        >>> rf.region((0,))
        ((0, 4),)
    """

    size: tuple[Number, ...]
    stride: tuple[Number, ...]
    padding: tuple[Number, ...]
    input_shape: Index
    output_shape: Index
    aligned: bool
    is_global: bool = False
    paths: tuple[Path, ...] = field(default=(), repr=False)
    layers: tuple[LayerRecord, ...] = field(default=(), repr=False, compare=False)
    _terms: tuple[Term, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_state(cls, state: FieldState, input_shape: Index, layers: Sequence[LayerRecord]):
        rf = cls(
            size=(),
            stride=(),
            padding=(),
            input_shape=tuple(input_shape),
            output_shape=state.shape,
            aligned=sum(not p.is_global for p in state.paths) <= 1,
            is_global=any(p.is_global for p in state.paths),
            paths=state.paths,
            layers=tuple(layers),
            _terms=state.terms,
        )
        size, stride, padding = rf._summary()
        return replace(rf, size=size, stride=stride, padding=padding)

    @property
    def ndim(self) -> int:
        return len(self.input_shape)

    def _summary(self) -> tuple[tuple[Number, ...], tuple[Number, ...], tuple[Number, ...]]:
        local = [p for p in self.paths if not p.is_global]
        if self.is_global:  # a global path: every output reads the whole input
            return self.input_shape, (0,) * self.ndim, (0,) * self.ndim
        if len(local) == 1:
            p = local[0]
            return (
                tuple(as_number(v) for v in p.size),
                tuple(as_number(v) for v in p.stride),
                tuple(as_number(v) for v in p.padding),
            )
        # Misaligned: the width of the hull is convex in the index, so its largest value is at
        # the first or last output position.
        size, stride, padding = [], [], []
        for a in range(self.ndim):
            widths, start0 = [], None
            for i in {0, max(self.output_shape[a] - 1, 0)}:
                lo = min(p.stride[a] * i - p.padding[a] for p in local)
                hi = max(p.stride[a] * i - p.padding[a] + p.size[a] - 1 for p in local)
                widths.append(hi - lo + 1)
                if i == 0:
                    start0 = lo
            size.append(as_number(max(widths)))
            stride.append(as_number(max(p.stride[a] for p in local)))
            padding.append(as_number(-start0))
        return tuple(size), tuple(stride), tuple(padding)

    # -- index handling --------------------------------------------------------------

    def _check_index(self, index: Sequence[int], argument: str = "index") -> Index:
        return check_index(index, self.output_shape, argument)

    # -- regions ---------------------------------------------------------------------

    def region(self, index: Sequence[int], clip: bool = False) -> Box | None:
        """Input interval ``(lo, hi)`` per axis (inclusive) seen by output feature ``index``.

        Args:
            index: output position, one int per spatial axis.
            clip: False (default): Distill's ``[u, v]``, which may reach into the padding
                (negative or past the border). True: the exact bounding box of the real input
                pixels the feature depends on, clipped at every layer (border, cropping, and
                pixels that no output reads); None if it reads padding only.

        Example:
            >>> import jaxrf
            >>> rf = jaxrf.from_layers([jaxrf.Layer(3, padding=1)] * 2, input_shape=(8,))
            >>> rf.region((0,)), rf.region((0,), clip=True)
            (((-2, 2),), ((0, 2),))
        """
        index = self._check_index(index)
        if clip:
            return self._clipped(index)
        if not self.paths:
            raise TypeError(
                "this receptive field is piecewise (a spatial concatenation), so the unclipped "
                "region is not defined; use region(index, clip=True)."
            )
        boxes = [p.region(index, self.input_shape) for p in self.paths]
        out = []
        for a in range(self.ndim):
            lo = min(b[a][0] for b in boxes)
            hi = max(b[a][1] for b in boxes)
            out.append(floor_ceil(lo, hi))
        return tuple(out)

    def _clipped(self, index: Index) -> Box | None:
        lo = [None] * self.ndim
        hi = [None] * self.ndim
        for term in self._terms:
            rows = [row_box(m[i]) for m, i in zip(term, index, strict=True)]
            if any(r is None for r in rows):
                continue  # this term reads padding only at this position
            for a, (first, last) in enumerate(rows):
                lo[a] = first if lo[a] is None else min(lo[a], first)
                hi[a] = last if hi[a] is None else max(hi[a], last)
        if lo[0] is None:
            return None
        return tuple(zip(lo, hi, strict=True))

    def axis_bounds(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Per axis, the clipped input interval each output index along it can read.

        For axis ``a``, ``(lo, hi)``: int arrays of length ``output_shape[a]``; output ``i``
        along ``a`` reads pixels in ``[lo[i], hi[i]]`` of input axis ``a`` whatever its other
        coordinates (the union over them of :meth:`region` with ``clip=True``, so a bound, not
        one position's box); ``lo > hi`` where no output with that coordinate reads a real pixel.
        A product of these intervals holds every output position's clipped region.

        Example:
            >>> import jaxrf
            >>> rf = jaxrf.from_layers([jaxrf.Layer(3, padding=1)], input_shape=(4,))
            >>> [(lo.tolist(), hi.tolist()) for lo, hi in rf.axis_bounds()]
            [([0, 0, 1, 2], [1, 2, 3, 3])]
        """
        out = []
        for a, n_in in enumerate(self.input_shape):
            reads = np.zeros((self.output_shape[a], n_in), dtype=bool)
            for term in self._terms:
                reads |= term[a]
            any_read = reads.any(axis=1)
            lo = np.where(any_read, reads.argmax(axis=1), n_in)
            hi = np.where(any_read, n_in - 1 - reads[:, ::-1].argmax(axis=1), -1)
            out.append((lo.astype(int), hi.astype(int)))
        return tuple(out)

    def center(self, index: Sequence[int]) -> tuple[Number, ...]:
        """Centre of the unclipped region of output ``index``: ``S i - P + (r - 1)/2``.

        Example:
            >>> import jaxrf
            >>> jaxrf.from_layers([jaxrf.Layer(2, stride=2)], input_shape=(8,)).center((1,))
            (Fraction(5, 2),)
        """
        index = self._check_index(index)
        local = [p for p in self.paths if not p.is_global]
        if len(local) == 1 and not self.is_global:
            p = local[0]
            return tuple(
                as_number(S * i + o) for S, i, o in zip(p.stride, index, p.offset, strict=True)
            )
        box = self.region(index)
        return tuple(as_number(Fraction(lo + hi, 2)) for lo, hi in box)

    def index_at(self, center: Sequence[Number]) -> tuple[Number, ...]:
        """Inverse of :meth:`center`: the output index whose region is centred at ``center``.

        ``i = (c - offset) / S`` per axis, exact; a Fraction when ``center`` falls between two
        outputs' centres. Defined for aligned fields (the centre is then affine in the index).

        Example:
            >>> import jaxrf
            >>> from fractions import Fraction
            >>> rf = jaxrf.from_layers([jaxrf.Layer(2, stride=2)], input_shape=(8,))
            >>> rf.index_at((Fraction(5, 2),))
            (1,)
        """
        local = [p for p in self.paths if not p.is_global]
        if len(local) != 1 or self.is_global:
            raise ValueError(
                "index_at needs an aligned, local receptive field (the centre is then an affine "
                f"function of the index); this one has {len(self.paths)} paths: "
                + "; ".join(p.describe() for p in self.paths)
                + ". Use center(index) over the output positions instead."
            )
        if len(center) != self.ndim:
            raise ValueError(
                f"`center` (={tuple(center)}) has {len(center)} entries; give {self.ndim}, one per "
                "spatial axis."
            )
        p = local[0]
        return tuple(
            as_number((Fraction(c) - o) / S)
            for c, o, S in zip(center, p.offset, p.stride, strict=True)
        )

    def describe(self) -> str:
        """A few lines a person can read: sizes, strides, padding, alignment."""
        lines = [
            f"receptive field of output {self.output_shape} w.r.t. input {self.input_shape}:",
            f"  size {self.size}, effective stride {self.stride}, effective padding {self.padding}",
        ]
        if self.is_global:
            lines.append("  global: some path reads the whole input (global pooling or attention)")
        if not self.aligned:
            lines.append("  MISALIGNED paths (region changes with the output position):")
            lines += [f"    {p.describe()}" for p in self.paths if not p.is_global]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Constant-matrix patterns along one axis (interpolation, nearest-neighbour gathers,
# reductions): added for the jaxpr walker.
# ---------------------------------------------------------------------------------------


def pattern_band(pattern: np.ndarray) -> tuple[Fraction, Fraction, Fraction] | None:
    """Smallest affine band ``(r, S, P)`` holding every row of a boolean ``(n_out, n_in)`` matrix.

    The stride is fixed at ``S = n_in / n_out`` (a resize by ``n_out / n_in``); ``P`` and ``r``
    are the smallest with ``S i - P <= lo_i`` and ``hi_i <= S i - P + r - 1`` for every row
    ``i`` that reads something (``lo_i``/``hi_i``: its first and last True column). None when no
    row reads anything. For a bilinear 2x upsampling ``r = 5/2``, ``P = 1``: the centre offset
    ``(r - 1)/2 - P = -1/4`` is the half-pixel centre ``(i + 1/2)/2 - 1/2`` of output ``i``.

    Example:
        >>> pattern_band(np.eye(4, dtype=bool)[[0, 0, 1, 1, 2, 2, 3, 3]])  # nearest, 2x
        (Fraction(3, 2), Fraction(1, 2), Fraction(1, 2))
    """
    n_out, n_in = pattern.shape
    hit = pattern.any(axis=1)
    if not hit.any():
        return None
    i = np.flatnonzero(hit)
    lo = pattern[i].argmax(axis=1)
    hi = n_in - 1 - pattern[i, ::-1].argmax(axis=1)
    # S i - lo = (n_in i - n_out lo) / n_out, all integers over n_out: exact.
    pad = Fraction(int((n_in * i - n_out * lo).max()), n_out)
    top = Fraction(int((n_out * hi - n_in * i).max()), n_out)
    return top + pad + 1, Fraction(n_in, n_out), pad


def pattern_through(
    state: FieldState, axis: int, pattern: np.ndarray, name: str, is_global: bool = False
) -> FieldState:
    """Apply a constant boolean pattern ``(n_out, n_map)`` along spatial ``axis`` of a map.

    Output feature ``i`` on that axis reads the map features ``j`` with ``pattern[i, j]``:
    the dependence matrix becomes the boolean product ``pattern @ dep`` (exact, per index).
    Paths follow the pattern's :func:`pattern_band` (``r' = r + S (r_m - 1)``, ``S' = S S_m``,
    ``P' = P + S P_m``), or become one global path with ``is_global`` (a reduction).
    """
    pattern = np.asarray(pattern, dtype=bool)
    if pattern.shape[1] != state.shape[axis]:
        raise ValueError(
            f"'{name}': pattern has {pattern.shape[1]} columns but spatial axis {axis} of the "
            f"map has {state.shape[axis]} features; they must be equal."
        )
    shape = state.shape[:axis] + (pattern.shape[0],) + state.shape[axis + 1 :]
    weights = pattern.astype(np.float32)
    terms = merge_terms(
        [
            t[:axis] + ((weights @ t[axis].astype(np.float32)) > 0,) + t[axis + 1 :]
            for t in state.terms
        ]
    )
    ndim = len(shape)
    band = None if is_global else pattern_band(pattern)
    if is_global:
        zero = (Fraction(0),) * ndim
        paths = (Path(zero, zero, zero, name, True),)
    elif band is None:
        paths = state.paths
    else:
        r_m, s_m, p_m = band
        paths = []
        for p in state.paths:
            if p.is_global:
                paths.append(replace(p, name=name))
                continue
            size, stride, padding = list(p.size), list(p.stride), list(p.padding)
            low = list(p.min_size)
            S = stride[axis]
            size[axis] = size[axis] + S * (r_m - 1)
            low[axis] = low[axis] + S * (r_m - 1)
            stride[axis] = S * s_m
            padding[axis] = padding[axis] + S * p_m
            paths.append(
                Path(tuple(size), tuple(stride), tuple(padding), name, min_size=tuple(low))
            )
        paths = tuple(paths)
    return FieldState(shape, paths, terms)
