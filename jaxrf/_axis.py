"""Receptive-field arithmetic along one spatial axis, exactly.

Everything here is per axis: a network on an image is handled one axis at a time, as in
Araujo, Norris and Sim, "Computing Receptive Fields of Convolutional Neural Networks", Distill
2019 (https://distill.pub/2019/computing-receptive-fields/), and Dang Ha The Hien, "A guide to
receptive field arithmetic for Convolutional Neural Networks" (2017, blog post on Medium).

A layer along one axis is a :class:`Window`: kernel size ``k``, stride ``s``, padding
``(p, q)`` (negative = cropping), kernel (rhs) dilation ``d`` and input (lhs) dilation ``D``
(a transposed convolution). Output feature ``i`` reads the positions ``s*i - p + d*t``
(``t = 0..k-1``) of the input spread with ``D - 1`` holes between features; only the
positions divisible by ``D`` and inside the spread input are real features.

Numbers are Python ints and :class:`fractions.Fraction` (effective strides of networks with
transposed convolutions are fractions): never floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

Number = int | Fraction


def as_number(x: Fraction | int) -> Number:
    """``Fraction(3, 1)`` -> ``3``; other fractions unchanged (tidy output, same value)."""
    if isinstance(x, Fraction) and x.denominator == 1:
        return int(x.numerator)
    return x


def format_axes(values: Sequence[object] | None, sep: str = "x", brackets: str = "") -> str:
    """Per-axis values as one short string: one value when every axis agrees.

    ``None`` gives ``"-"``; whole fractions print as ints. When the axes differ the values are
    joined by ``sep`` and wrapped in ``brackets`` (two characters, or empty).

    Example:
        >>> format_axes((3, 3)), format_axes((7, 5)), format_axes(None)
        ('3', '7x5', '-')
        >>> format_axes((Fraction(2, 1), Fraction(1, 2)), sep=", ", brackets="()")
        '(2, 1/2)'
    """
    if values is None:
        return "-"
    parts = [str(as_number(v)) if isinstance(v, Fraction) else str(v) for v in values]
    if len(set(parts)) == 1:
        return parts[0]
    text = sep.join(parts)
    return brackets[:1] + text + brackets[1:] if brackets else text


@dataclass(frozen=True)
class Window:
    """One layer along one axis, padding already resolved to integers.

    Attributes:
        kernel: kernel (window) size ``k >= 1``.
        stride: stride ``s >= 1``.
        padding: ``(p, q)``, padding before and after the input; negative values crop.
        dilation: kernel dilation ``d >= 1`` (atrous convolution).
        input_dilation: input dilation ``D >= 1``; ``D > 1`` is a transposed convolution
            whose output moves ``1/D`` input steps per step.
    """

    kernel: int
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    dilation: int = 1
    input_dilation: int = 1

    @property
    def span(self) -> int:
        """Dilated kernel span ``k' = d (k - 1) + 1``."""
        return self.dilation * (self.kernel - 1) + 1

    def output_size(self, n: int) -> int:
        """``n_l = floor((n' + p + q - k') / s) + 1`` with ``n' = D (n - 1) + 1``, at least 0.

        Example:
            >>> Window(kernel=3, stride=2, padding=(1, 1)).output_size(5)
            3
        """
        dilated = self.input_dilation * (n - 1) + 1 if n > 0 else 0
        room = dilated + self.padding[0] + self.padding[1] - self.span
        return room // self.stride + 1 if room >= 0 else 0

    def reads(self, i: int, n: int) -> list[int]:
        """Input features (of an input of size ``n``) that output ``i`` reads; padding dropped.

        Example:
            >>> Window(kernel=3, stride=1, padding=(1, 1)).reads(0, 4)
            [0, 1]
        """
        return [int(c) for _, cols in window_taps(self, np.array([i]), n) for c in cols]


def same_padding(
    n: int, kernel: int, stride: int = 1, dilation: int = 1, lower: bool = False
) -> tuple[int, int]:
    """SAME padding for input size ``n`` exactly as ``jax.lax.padtype_to_pads`` resolves it.

    Total padding ``max((ceil(n / s) - 1) s + k' - n, 0)``, which equals ``max(k' - s, 0)``
    when ``s`` divides ``n`` and ``max(k' - (n mod s), 0)`` otherwise. ``'SAME'`` puts the
    odd pixel after (``floor(total / 2)`` before), ``'SAME_LOWER'`` before.

    Example:
        >>> same_padding(224, kernel=3, stride=2)   # 224 even: total 1, all after
        (0, 1)
        >>> same_padding(7, kernel=7, stride=2)
        (3, 3)
    """
    span = dilation * (kernel - 1) + 1
    out = -(-n // stride)
    total = max((out - 1) * stride + span - n, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


# ---------------------------------------------------------------------------------------
# Chains: the three equivalent forms of Distill and Dang Ha The Hien's post.
# ---------------------------------------------------------------------------------------


def _step(w: Window) -> Fraction:
    """How many input features one output step moves: ``s / D``."""
    return Fraction(w.stride, w.input_dilation)


def size_recurrence(chain: Sequence[Window]) -> Number:
    """Distill eq. (1), from the output back: ``r_L = 1``, ``r_{l-1} = s_l r_l + (k'_l - s_l)``.

    With input dilation ``D`` the stride and the kernel's extent are measured in input
    features: ``s/D`` and ``(k' - 1)/D + 1``.

    Example:
        >>> size_recurrence([Window(3), Window(3)])   # two 3x3 stride-1 convs
        5
    """
    r = Fraction(1)
    for w in reversed(chain):
        s, k = _step(w), Fraction(w.span - 1, w.input_dilation) + 1
        r = s * r + (k - s)
    return as_number(r)


def size_closed_form(chain: Sequence[Window]) -> Number:
    """Distill eq. (2): ``r_0 = sum_l (k'_l - 1) prod_{i<l} s_i + 1``.

    Example:
        >>> size_closed_form([Window(11, stride=4), Window(3, stride=2)])  # 11 + 2*4
        19
    """
    total, prod = Fraction(1), Fraction(1)
    for w in chain:
        total += Fraction(w.span - 1, w.input_dilation) * prod
        prod *= _step(w)
    return as_number(total)


def stride_closed_form(chain: Sequence[Window]) -> Number:
    """Effective stride ``S_0 = prod_l s_l`` (``s_l / D_l`` with input dilation).

    Example:
        >>> stride_closed_form([Window(3, stride=2), Window(3, stride=2, input_dilation=4)])
        1
    """
    prod = Fraction(1)
    for w in chain:
        prod *= _step(w)
    return as_number(prod)


def padding_closed_form(chain: Sequence[Window]) -> Number:
    """Effective padding ``P_0 = sum_l p_l prod_{i<l} s_i`` (``p_l / D_l`` with dilation).

    Example:
        >>> padding_closed_form([Window(3, padding=(1, 1)), Window(3, stride=2, padding=(1, 1))])
        2
    """
    total, prod = Fraction(0), Fraction(1)
    for w in chain:
        total += Fraction(w.padding[0], w.input_dilation) * prod
        prod *= _step(w)
    return as_number(total)


def padding_recurrence(chain: Sequence[Window]) -> Number:
    """Distill, from the output back: ``P_L = 0``, ``P_{l-1} = s_l P_l + p_l``."""
    p = Fraction(0)
    for w in reversed(chain):
        p = _step(w) * p + Fraction(w.padding[0], w.input_dilation)
    return as_number(p)


@dataclass(frozen=True)
class ForwardState:
    """Dang Ha The Hien's forward form, carried from the input: ``(n, jump, size, start)``.

    ``start`` is the centre of the first output feature's region in that post's convention
    (input feature ``x`` has centre ``x + 1/2``; the first input feature is at ``1/2``).
    """

    n: int
    jump: Number
    size: Number
    start: Number


def forward_form(chain: Sequence[Window], n: int) -> ForwardState:
    """The forward recurrence: ``j' = j s``, ``r' = r + (k' - 1) j``,
    ``start' = start + ((k'-1)/2 - p) j`` (Dang Ha The Hien's post).

    Starts from ``(n_0, 1, 1, 1/2)``. With input dilation ``D`` the layer's kernel span, stride
    and padding are measured in ``1/D`` input features.

    Example:
        >>> forward_form([Window(3, stride=2, padding=(1, 1))] * 2, 5)
        ForwardState(n=2, jump=4, size=7, start=Fraction(1, 2))
    """
    jump, size, start = Fraction(1), Fraction(1), Fraction(1, 2)
    for w in chain:
        unit = jump / w.input_dilation
        size = size + (w.span - 1) * unit
        start = start + (Fraction(w.span - 1, 2) - w.padding[0]) * unit
        jump = unit * w.stride
        n = w.output_size(n)
    return ForwardState(n, as_number(jump), as_number(size), as_number(start))


# ---------------------------------------------------------------------------------------
# Per-index dependence: which input features each feature of a map reads, exactly.
# ---------------------------------------------------------------------------------------


def window_taps(
    w: Window, outputs: np.ndarray, n_in: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The (output, input feature) pairs the window connects, one tap at a time.

    For tap ``t = 0..k-1``, output ``i`` reads the spread-input position ``m = s i - p + d t``;
    ``m`` is the input feature ``m / D`` when ``D`` divides it and ``0 <= m / D < n_in``
    (holes and padding are not features). Yields, per tap, two equal-length int arrays: the
    entries of ``outputs`` that read a real feature, and that feature. Within one tap every
    output appears at most once.

    Example:
        >>> taps = window_taps(Window(3, padding=(1, 1)), np.arange(2), 4)
        >>> [(rows.tolist(), cols.tolist()) for rows, cols in taps]
        [([1], [0]), ([0, 1], [0, 1]), ([0, 1], [1, 2])]
    """
    outputs = np.asarray(outputs)
    for t in range(w.kernel):
        m = w.stride * outputs - w.padding[0] + w.dilation * t
        ok = (m % w.input_dilation == 0) & (m >= 0) & (m // w.input_dilation < n_in)
        yield outputs[ok], m[ok] // w.input_dilation


def window_relation(w: Window, n_in: int) -> np.ndarray:
    """Boolean ``(n_out, n_in)`` matrix: entry ``[i, j]`` says output ``i`` reads input ``j``.

    This is the clipped, exact per-index rule of :func:`window_taps`: padding and the holes of
    an input dilation are not features, so they never appear.

    Example:
        >>> window_relation(Window(2, stride=2), 5).astype(int)   # pixel 4 is never read
        array([[1, 1, 0, 0, 0],
               [0, 0, 1, 1, 0]])
    """
    n_out = w.output_size(n_in)
    rel = np.zeros((n_out, n_in), dtype=bool)
    for rows, cols in window_taps(w, np.arange(n_out), n_in):
        rel[rows, cols] = True
    return rel


def compose_window(w: Window, dep: np.ndarray) -> np.ndarray:
    """Push a dependence matrix through one window.

    ``dep`` is ``(n_in, n_input)``: which pixels of the network input each input feature of
    this layer depends on. Returns ``(n_out, n_input)``: output ``i`` depends on the union of
    what the features it reads (:func:`window_taps`) depend on. Costs ``k`` row gathers, not a
    matrix product.
    """
    n_out = w.output_size(dep.shape[0])
    out = np.zeros((n_out, dep.shape[1]), dtype=bool)
    for rows, cols in window_taps(w, np.arange(n_out), dep.shape[0]):
        out[rows] |= dep[cols]
    return out


def row_box(row: np.ndarray) -> tuple[int, int] | None:
    """Bounding interval ``(lo, hi)`` (inclusive) of the True entries of a row; None if empty."""
    hits = np.flatnonzero(row)
    if hits.size == 0:
        return None
    return int(hits[0]), int(hits[-1])


def floor_ceil(lo: Fraction, hi: Fraction) -> tuple[int, int]:
    """The integer features inside the real interval ``[lo, hi]``: ``(ceil(lo), floor(hi))``."""
    return math.ceil(lo), math.floor(hi)
