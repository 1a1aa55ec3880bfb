"""The receptive-field cone crop: probe one output unit on the part of the input it can see.

An output unit's gradient with respect to the input is zero outside its clipped region
(``ReceptiveField.region(index, clip=True)``), and so is everything the forward pass computes
outside the unit's *cone* (the features, at every layer, that the unit depends on). So the
forward and backward passes for one unit can run on a crop of the input, and give the same
gradient as the full image, *provided every feature in the cone is computed identically*.

Per axis, with ``S`` the effective stride (Distill's ``S_0``; more precisely the least common
multiple of every feature map's effective stride numerator, which is ``S_0`` for ResNets and
Inception), an input of size ``n`` and the unit's clipped region ``[lo, hi]``, the crop is
``[o, e)`` with

* ``o = S floor(lo / S)``: the largest multiple of ``S`` at or before ``lo``;
* ``e = n - S floor((n - 1 - hi) / S)``: the smallest end at or after ``hi + 1`` with
  ``n - e`` a multiple of ``S``.

Why this is exact. Let ``S_l`` be the effective stride of layer ``l``'s output (it divides
``S``) and ``c = e - o`` the crop size.

1. *Same grid.* ``o`` is a multiple of ``S_l``, so feature ``j`` of the cropped map is feature
   ``j + o / S_l`` of the full map: cropped feature ``j`` reads ``s j - p + d t`` of the cropped
   input, i.e. ``s (j + o/S_l) - p + d t`` of the full one, the same window, as long as the
   padding ``p`` is the same.
2. *Same padding.* Every layer's output size satisfies ``size(m + K s) = size(m) + K`` (SAME:
   ``ceil(m / s)``; VALID and explicit padding: ``floor((m + p + q - k') / s) + 1``), and
   ``n - c = o + (n - e)`` is a multiple of ``S``, so at every layer the full map is
   ``(n - c) / S_l`` features longer than the cropped one, a multiple of the next stride.
   SAME padding depends on the size only modulo the stride (``jax.lax.padtype_to_pads``), so
   it is the same in both networks; explicit padding is the same anyway.
3. *Same cone.* Every feature in the unit's cone depends only on pixels of the unit's clipped
   region, inside ``[o, e)``, so it lies inside the cropped map and every real feature it reads
   is real in the crop too; what it reads as padding in the full network (before position 0 or
   after the end) is padding in the crop, because the crop's map ends ``(n - e) / S_l >= 0``
   features before the full one. The cone's values, hence its ReLU masks, max-pool choices
   and gradients, are identical.

Point 3 assumes, as holds for real networks, that no real feature reads padding only (a
feature whose window lies wholly in the padding of every layer below). Non-integer strides
(transposed convolutions, upsampling) are handled through the numerators of the fractional
strides; resizes to a fixed output size are not (the grid then depends on ``n`` itself).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from ._field import Index, ReceptiveField, check_index


@dataclass(frozen=True)
class Crop:
    """Where to crop the input to probe one output unit exactly (per spatial axis).

    Attributes:
        start: first input pixel of the crop, per axis (a multiple of ``grid``).
        size: crop size per axis (congruent to the input size modulo ``grid``).
        index: the probed unit's index in the output of the network run on the crop.
        output_index: the probed unit's index in the full network's output.
        input_shape: spatial shape of the full input.
        grid: the period ``S`` per axis that ``start`` and ``size`` respect.

    Example:
        >>> import jaxrf
        >>> rf = jaxrf.from_layers([jaxrf.Layer(3, stride=2, padding="SAME")] * 2, (31,))
        >>> crop = jaxrf.crop_for_unit(rf, (4,))
        >>> rf.region((4,), clip=True), crop.start, crop.size, crop.index
        (((15, 21),), (12,), (11,), (1,))
    """

    start: Index
    size: Index
    index: Index
    output_index: Index
    input_shape: Index
    grid: Index

    @property
    def slices(self) -> tuple[slice, ...]:
        """One ``slice`` per spatial axis, e.g. ``x[:, *crop.slices, :]`` for an NHWC batch."""
        return tuple(slice(o, o + c) for o, c in zip(self.start, self.size, strict=True))

    @property
    def fraction(self) -> float:
        """Pixels of the crop over pixels of the image (the work saved, roughly)."""
        return math.prod(self.size) / math.prod(self.input_shape)

    def take(self, x, spatial_axes: Sequence[int] | None = None):
        """The crop of an array whose spatial axes are ``spatial_axes``.

        Args:
            x: array; by default NHWC-like: batch first, channels last, spatial axes between
                (``1 .. ndim``). A NumPy or JAX array.
            spatial_axes: the positions of the spatial axes in ``x``, one per axis of
                ``input_shape``.

        Returns:
            ``x`` restricted to the crop (same rank).
        """
        axes = self._axes(x, spatial_axes)
        index = [slice(None)] * x.ndim
        for a, s in zip(axes, self.slices, strict=True):
            index[a] = s
        return x[tuple(index)]

    def paste(self, g, spatial_axes: Sequence[int] | None = None):
        """A full-size array, zero outside the crop, holding ``g`` (a cropped array) inside.

        The inverse of :meth:`take` for arrays (gradient maps) that are zero outside the crop.
        Works for NumPy and JAX arrays (``.at[].set`` for JAX, whose shape check this method
        makes first, since JAX drops out-of-range updates silently).
        """
        axes = self._axes(g, spatial_axes)
        for a, c in zip(axes, self.size, strict=True):
            if g.shape[a] != c:
                raise ValueError(
                    f"`g` has shape {tuple(g.shape)}; its spatial axes {tuple(axes)} must have "
                    f"the crop size {self.size}; paste the output of a network run on "
                    "crop.take(x)."
                )
        shape = list(g.shape)
        index = [slice(None)] * g.ndim
        for a, s, n in zip(axes, self.slices, self.input_shape, strict=True):
            shape[a] = n
            index[a] = s
        if hasattr(g, "at"):
            import jax.numpy as jnp

            return jnp.zeros(shape, g.dtype).at[tuple(index)].set(g)
        import numpy as np

        out = np.zeros(shape, g.dtype)
        out[tuple(index)] = g
        return out

    def _axes(self, x, spatial_axes) -> tuple[int, ...]:
        ndim = len(self.input_shape)
        if spatial_axes is None:
            if x.ndim != ndim + 2:
                raise ValueError(
                    f"`x` has rank {x.ndim}; without `spatial_axes` it must be batch + "
                    f"{ndim} spatial axes + channels (rank {ndim + 2}, NHWC); pass "
                    f"spatial_axes=(...) with {ndim} entries for other layouts."
                )
            return tuple(range(1, ndim + 1))
        axes = tuple(int(a) % x.ndim for a in spatial_axes)
        if len(axes) != ndim:
            raise ValueError(
                f"`spatial_axes` (={tuple(spatial_axes)}) must have {ndim} entries, one per "
                f"spatial axis of the input shape {self.input_shape}."
            )
        return axes


def _grid(rf: ReceptiveField) -> tuple[int, ...]:
    """Per axis, the lcm of the numerators of every feature map's effective stride."""
    strides = [p.stride for p in rf.paths if not p.is_global]
    strides += [r.effective_stride for r in rf.layers if r.effective_stride is not None]
    grid = []
    for a in range(rf.ndim):
        g = 1
        for s in strides:
            num = Fraction(s[a]).numerator
            if num > 0:
                g = math.lcm(g, num)
        grid.append(g)
    return tuple(grid)


def crop_for_unit(rf: ReceptiveField, index: Sequence[int]) -> Crop:
    """The smallest grid-aligned crop on which output ``index``'s gradient is exact.

    The crop holds the unit's clipped region (``rf.region(index, clip=True)``); its start is a
    multiple of the effective stride ``S`` and its size is congruent to the input size modulo
    ``S``, so every layer keeps the same grid and the same SAME padding (the module docstring
    gives the argument). Running the network on ``crop.take(x)`` and probing output
    ``crop.index`` gives, pasted back with ``crop.paste``, exactly the full-image gradient
    (also at the border: the crop is clipped to the image).

    Args:
        rf: the network's receptive field at the input shape used (``jaxrf.from_layers`` or
            ``jaxrf.receptive_field``).
        index: output position, one int per spatial axis.

    Returns:
        A :class:`Crop`. For a global receptive field (global pooling, attention) it is the
        whole image.

    Raises:
        ValueError: ``index`` outside the output, or the unit reads padding only (its gradient
            is zero everywhere).

    Example:
        Two 3x3 stride-2 SAME convs on 31 pixels: ``S = 4``, ``P = 1``, output 4 reads
        ``[15, 21]``; the crop ``[12, 23)`` starts at a multiple of 4 and ends 8 pixels before
        the image does, so its size 11 is congruent to 31 modulo 4; output 4 is output
        ``4 - 12/4 = 1`` of the cropped network.

        >>> import jaxrf
        >>> rf = jaxrf.from_layers([jaxrf.Layer(3, stride=2, padding="SAME")] * 2, (31,))
        >>> crop = jaxrf.crop_for_unit(rf, (4,))
        >>> crop.slices, crop.index
        ((slice(12, 23, None),), (1,))
    """
    index = check_index(index, rf.output_shape)
    shape = rf.input_shape
    if rf.is_global:
        return Crop((0,) * rf.ndim, shape, index, index, shape, (1,) * rf.ndim)
    box = rf.region(index, clip=True)
    if box is None:
        raise ValueError(
            f"output {index} reads padding only: its gradient is zero at every input pixel, so "
            "there is nothing to crop; probe another output index."
        )
    grid = _grid(rf)
    start, size, local = [], [], []
    for (lo, hi), n, S, i in zip(box, shape, grid, index, strict=True):
        o = S * (lo // S)
        e = n - S * ((n - 1 - hi) // S)
        start.append(o)
        size.append(e - o)
        # Output i has effective stride S_0; o is a multiple of it (S_0 divides S).
        S0 = _output_stride(rf, len(start) - 1)
        local.append(i - o // S0 if S0 else i)
    return Crop(tuple(start), tuple(size), tuple(local), index, shape, grid)


def _output_stride(rf: ReceptiveField, axis: int) -> int:
    """The output map's effective stride on ``axis`` (an int; 0 for a broadcast axis)."""
    strides = {Fraction(p.stride[axis]) for p in rf.paths if not p.is_global}
    if len(strides) != 1 or next(iter(strides)).denominator != 1:
        raise ValueError(
            f"the output's effective stride on axis {axis} is {sorted(strides)}; crop_for_unit "
            "needs one integer stride per axis (all paths to the output moving by the same "
            "whole number of input pixels per output step); probe the full image instead."
        )
    return int(next(iter(strides)))
