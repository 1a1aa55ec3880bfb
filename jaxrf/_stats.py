"""Statistics of an effective-receptive-field map, each protocol choice an explicit option.

All functions take a float map of the input's spatial shape (``EffectiveReceptiveField.map``,
or any array) and first apply ``values``: ``"abs"`` (``|m|``), ``"positive"`` (``max(m, 0)``)
or ``"signed"`` (``m`` as is; moments then use signed weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._gradient import center_index

VALUES = ("abs", "positive", "signed")
LUO_FRACTION = 1 - 0.9545  # Luo et al.: two standard deviations of a Gaussian


def _values(erf_map, values: str) -> np.ndarray:
    m = np.asarray(erf_map, dtype=np.float64)
    if m.ndim < 1 or m.size == 0:
        raise ValueError(f"the ERF map has shape {m.shape}; it must be a non-empty array.")
    if values not in VALUES:
        raise ValueError(f"`values` (={values!r}) must be one of {VALUES}.")
    if values == "abs":
        return np.abs(m)
    if values == "positive":
        return np.maximum(m, 0)
    return m


def _grids(shape):
    return np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")


@dataclass(frozen=True)
class LuoSize:
    """Luo et al.'s ERF size: ``sqrt`` of the number of pixels above ``fraction * reference``.

    ``size`` and ``count`` are None (with ``reached=False``) when the reference value is not
    positive: there is no threshold to cross.
    """

    size: float | None
    count: int | None
    threshold: float
    reference_value: float
    reached: bool


def luo_size(
    erf_map,
    *,
    center: Sequence[int] | None = None,
    reference: str = "center",
    fraction: float = LUO_FRACTION,
    values: str = "abs",
) -> LuoSize:
    """Luo et al.'s ERF size: pixels above ``(1 - 0.9545)`` of the centre value; sqrt(count).

    Args:
        erf_map: map of the input's spatial shape.
        center: the input pixel whose value is the reference (the analytic centre of the probed
            output's region); default ``n // 2`` per axis.
        reference: ``"center"`` (the value at ``center``, the paper's rule) or ``"max"``.
        fraction: threshold as a fraction of the reference value.
        values: ``"abs"``, ``"positive"`` or ``"signed"``.

    Example:
        >>> luo_size([[0, 1, 0], [1, 4, 1], [0, 1, 0]]).size  # 5 pixels > 0.0455 * 4
        2.23606797749979
    """
    m = _values(erf_map, values)
    if reference not in ("center", "max"):
        raise ValueError(f"`reference` (={reference!r}) must be 'center' or 'max'.")
    if reference == "max":
        ref = float(m.max())
    else:
        center = center_index(m.shape) if center is None else tuple(center)
        if len(center) != m.ndim or not all(
            0 <= c < n for c, n in zip(center, m.shape, strict=True)
        ):
            raise ValueError(f"`center` (={center}) must be a pixel of the map, shape {m.shape}.")
        ref = float(m[center])
    threshold = fraction * ref
    if not ref > 0:
        return LuoSize(None, None, threshold, ref, False)
    count = int((m > threshold).sum())
    return LuoSize(math.sqrt(count), count, threshold, ref, True)


def centroid(erf_map, *, values: str = "abs") -> tuple[float, ...]:
    """First moment ``sum(w x) / sum(w)`` per axis, in input pixel coordinates.

    Example:
        >>> centroid([0, 1, 2, 1, 0])
        (2.0,)
    """
    m = _values(erf_map, values)
    total = m.sum()
    if total == 0:
        raise ValueError("the ERF map sums to zero; its centroid is undefined.")
    return tuple(float((g * m).sum() / total) for g in _grids(m.shape))


def centroid_offset(erf_map, center: Sequence[float], *, values: str = "abs") -> tuple[float, ...]:
    """Centroid minus a given (analytic) centre, per axis; 0 for a centred ERF.

    Example:
        >>> centroid_offset([0, 1, 2, 1, 0], (2,))
        (0.0,)
    """
    c = centroid(erf_map, values=values)
    if len(center) != len(c):
        raise ValueError(f"`center` (={tuple(center)}) needs {len(c)} entries, one per axis.")
    return tuple(ci - float(a) for ci, a in zip(c, center, strict=True))


def erf_std(erf_map, *, values: str = "abs") -> tuple[float, ...]:
    """Standard deviation per axis: second central moment of the map normalised to sum 1.

    For ``n`` stacked uniform ``k``-tap linear convolutions the map is the ``n``-fold box
    convolution and the variance per axis is ``n (k**2 - 1) / 12``.

    Example:
        >>> erf_std([1, 1, 1])[0] ** 2  # one 3-tap box: (9 - 1) / 12
        0.6666666666666666
    """
    m = _values(erf_map, values)
    total = m.sum()
    if total == 0:
        raise ValueError("the ERF map sums to zero; its moments are undefined.")
    out = []
    for g in _grids(m.shape):
        mean = (g * m).sum() / total
        out.append(float(math.sqrt(max(((g - mean) ** 2 * m).sum() / total, 0.0))))
    return tuple(out)


@dataclass(frozen=True)
class AreaRatio:
    """RepLKNet's high-contribution area ratio: one entry per threshold.

    ``ratios[k]`` is ``prod(side / n)`` of the smallest centred square (cube) holding more than
    ``thresholds[k]`` of the total, or None when no tried square does (``reached[k]`` False).
    ``sides[k]`` the side, or None.
    """

    thresholds: tuple[float, ...]
    ratios: tuple[float | None, ...]
    sides: tuple[int | None, ...]
    reached: tuple[bool, ...]


def area_ratio(
    erf_map,
    thresholds: Sequence[float] = (0.2, 0.3, 0.5, 0.99),
    *,
    log: bool = True,
    values: str = "positive",
    center: Sequence[int] | None = None,
) -> AreaRatio:
    """RepLKNet's high-contribution area ratio (Ding et al., CVPR 2022), options explicit.

    As in RepLKNet's script: ``A = log10(map + 1)`` (``log=True``), normalised by its max;
    squares of side ``2 i + 1`` centred at ``center`` (default ``n // 2``) for ``i = 1 ..
    min(n) // 2 - 1`` (neither side 1 nor the whole image is tried); the first whose sum exceeds
    ``t`` of the total gives ``(side / H) * (side / W)``. A threshold no square exceeds is
    reported as ``None`` with ``reached=False``, not an error.

    Args:
        erf_map: map of the input's spatial shape (any number of axes).
        thresholds: fractions of the total, default RepLKNet's 20/30/50/99 %.
        log: apply ``log10(x + 1)`` first (RepLKNet does).
        values: ``"positive"`` (RepLKNet's ReLU), ``"abs"`` or ``"signed"``.
        center: centre pixel of the squares.

    Example:
        >>> m = [[1, 0, 0, 0], [0, 1, 1, 1], [0, 1, 8, 1], [0, 1, 1, 1]]
        >>> area_ratio(m, (0.5, 0.99), log=False).ratios  # 3x3 square of a 4x4 map: 9/16
        (0.5625, None)
    """
    m = _values(erf_map, values)
    if log:
        if (m <= -1).any():
            raise ValueError("log10(map + 1) needs map > -1; use values='positive' or 'abs'.")
        m = np.log10(m + 1)
    if m.max() > 0:
        m = m / m.max()
    total = m.sum()
    center = center_index(m.shape) if center is None else tuple(center)
    ratios, sides, reached = [], [], []
    for t in thresholds:
        if not 0 <= t <= 1:
            raise ValueError(f"threshold {t!r} must be a fraction in [0, 1], e.g. 0.2 for 20%.")
        found = None
        if total > 0:
            for i in range(1, min(m.shape) // 2):
                window = tuple(slice(max(c - i, 0), c + i + 1) for c in center)
                if m[window].sum() / total > t:
                    found = 2 * i + 1
                    break
        sides.append(found)
        reached.append(found is not None)
        ratios.append(None if found is None else float(np.prod([found / n for n in m.shape])))
    return AreaRatio(tuple(thresholds), tuple(ratios), tuple(sides), tuple(reached))


def share_inside(erf_map, box: Sequence[tuple[int, int]], *, values: str = "abs") -> float:
    """Fraction of the ERF's mass inside ``box`` (per-axis inclusive ``(lo, hi)``).

    With the theoretical region of the probed output as ``box`` (``rf.region(index,
    clip=True)``), 1.0 means the ERF lies inside the theoretical RF.

    Example:
        >>> share_inside([1, 2, 1, 0], [(1, 2)])
        0.75
    """
    m = _values(erf_map, values)
    if len(box) != m.ndim:
        raise ValueError(f"`box` (={box}) needs {m.ndim} (lo, hi) pairs, one per axis.")
    total = m.sum()
    if total == 0:
        raise ValueError("the ERF map sums to zero; its share inside a box is undefined.")
    window = tuple(slice(max(int(lo), 0), int(hi) + 1) for lo, hi in box)
    return float(m[window].sum() / total)
