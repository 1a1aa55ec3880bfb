"""Resolution diagnostics: the layers whose receptive field already covers the whole input.

After Richter et al. ("Should You Go Deeper?", ICMLA 2021) and their rfa-toolbox. Per layer
and per spatial axis, ``r_min`` and ``r_max`` are the smallest and largest Distill size ``r``
over all paths from the input to the layer's output (a residual block's shortcut is a path
of its own, even where an aligned merge keeps only the largest ``r`` for the region). On an
input of ``n`` pixels along an axis:

* a layer **covers** the input along that axis when ``r_min >= n``: along every path its
  receptive field is at least as wide as the input (rfa-toolbox's rule, ``input_resolution <=
  receptive_field_min``). This is a rule on sizes: a unit near the border of such a layer can
  still see only part of the input (its window hangs over the padding);
* the **border layer** is the first layer (in the order the network computes them) that covers
  the input along every axis;
* a layer is **unproductive** when the map it reads already covers the input along every axis
  (``r_min`` of its input ``>= n``; for a merge, ``r_min`` of every operand, i.e. of the merge
  itself): it cannot bring new image content into any unit. Unproductive layers come after the
  border layer; a layer after it whose input does not yet cover (a sibling branch, or the
  merge of a branch with a shortcut) is not unproductive;
* no layer is unproductive along axis ``a`` exactly when ``n_a > max_L r_min^in_a(L)``, the
  largest input ``r_min`` over all classified layers: the range ``[lo_a, inf)`` with ``lo_a =
  floor(max_L r_min^in_a(L)) + 1``. Input sizes at least ``lo_a`` on every axis leave no layer
  unproductive; larger inputs only shrink the set, so the range has no upper end.

rfa-toolbox's ``obtain_border_layers`` returns what is called unproductive here (layers whose
inputs all cover the input). Its lower end of the input-size range takes only layers with a
kernel larger than 1 and counts ``n = r_min`` of their input as fine, though its own rule calls
such a layer unproductive; here every classified layer counts (a 1x1 convolution that reads a
covering map adds no image content either) and the bound is strict.

Layers every path of which is global (global pooling, attention, dense heads) read the whole
input at every size and are not classified (rfa-toolbox filters them the same way). Sizes are
taken from the traced network and assumed independent of the input size, as they are for
convolutions and pools (a resize to a fixed size is not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._axis import Number
from ._field import LayerRecord, ReceptiveField
from ._layers import check_input_shape


@dataclass(frozen=True)
class Diagnostics:
    """Border layer, unproductive layers and input-size range of a network at one input size.

    Attributes:
        input_shape: spatial input shape the diagnostics are for.
        names: layer names, in the order of ``rf.layers``.
        min_size: ``r_min`` per layer and axis (smallest ``r`` over paths); None for a layer
            whose every path is global.
        max_size: ``r_max`` per layer and axis (largest ``r`` over paths); None likewise.
        input_min_size: ``r_min`` of the map each layer reads; None likewise.
        covers: per layer and axis, ``r_min >= n``; None for global layers.
        border_layer: first layer covering the input on every axis, or None.
        border_layer_per_axis: first layer covering the input along each axis, or None.
        unproductive: layers whose input already covers the input on every axis, in order.
        resolution_range: per axis ``(lo, None)``: no layer is unproductive along that axis for
            every input size ``n >= lo`` (None: no upper end).
    """

    input_shape: tuple[int, ...]
    names: tuple[str, ...]
    min_size: tuple[tuple[Number, ...] | None, ...]
    max_size: tuple[tuple[Number, ...] | None, ...]
    input_min_size: tuple[tuple[Number, ...] | None, ...]
    covers: tuple[tuple[bool, ...] | None, ...]
    border_layer: str | None
    border_layer_per_axis: tuple[str | None, ...]
    unproductive: tuple[str, ...]
    resolution_range: tuple[tuple[int, None], ...]

    def status(self, position: int) -> str:
        """``"border"``, ``"unproductive"``, ``"covers"``, ``"global"`` or ``"-"`` for layer
        number ``position`` (an index into :attr:`names`)."""
        if self.covers[position] is None:
            return "global"
        if position == self._border_position:
            return "border"
        if _all_cover(self.input_min_size[position], self.input_shape):
            return "unproductive"
        return "covers" if all(self.covers[position]) else "-"

    @property
    def _border_position(self) -> int | None:
        covering = [k for k, c in enumerate(self.covers) if c is not None and all(c)]
        return covering[0] if covering else None

    def describe(self) -> str:
        """A few lines a person can read: border layer, unproductive layers, range."""
        shape = "x".join(map(str, self.input_shape))
        lows = "x".join(str(lo) for lo, _ in self.resolution_range)
        lines = [
            f"input {shape}: border layer {self.border_layer or '- (no layer covers the input)'}",
            f"  unproductive layers ({len(self.unproductive)}): "
            + (", ".join(self.unproductive) or "none"),
            f"  no layer is unproductive for input sizes >= {lows} (per axis)",
        ]
        return "\n".join(lines)


def _all_cover(sizes, input_shape) -> bool:
    return sizes is not None and all(r >= n for r, n in zip(sizes, input_shape, strict=True))


def _first(records: tuple[LayerRecord, ...], covers, axes) -> str | None:
    for r, c in zip(records, covers, strict=True):
        if c is not None and all(c[a] for a in axes):
            return r.name
    return None


def resolution_diagnostics(rf: ReceptiveField, input_shape=None) -> Diagnostics:
    """Border layer, unproductive layers and unproductive-free input sizes of a network.

    Args:
        rf: a :class:`~jaxrf.ReceptiveField` with per-layer records (from
            :func:`jaxrf.receptive_field` or :func:`jaxrf.from_layers`).
        input_shape: spatial input size to diagnose (default ``rf.input_shape``); the per-layer
            sizes ``r`` are those of ``rf``, which convolutions and pools keep at any input size.

    Returns:
        :class:`Diagnostics`. See the module documentation for the definitions: ``r_min``/
        ``r_max`` over paths, "covers" (``r_min >= n``), the border layer, unproductive layers
        (their input covers already) and the range ``n >= lo`` with no unproductive layer.

    Raises:
        ValueError: ``input_shape`` not a tuple of positive ints with one entry per axis.

    Example:
        >>> import jaxrf
        >>> rf = jaxrf.from_layers([jaxrf.Layer(3, padding=1, name=f"c{k}") for k in range(4)],
        ...                        (5, 5))
        >>> d = jaxrf.resolution_diagnostics(rf)  # r_min = 3, 5, 7, 9
        >>> d.border_layer, d.unproductive, d.resolution_range
        ('c1', ('c2', 'c3'), ((8, None), (8, None)))
    """
    shape = rf.input_shape if input_shape is None else check_input_shape(input_shape)
    if len(shape) != rf.ndim:
        raise ValueError(
            f"`input_shape` (={tuple(shape)}) has {len(shape)} axes but the network has "
            f"{rf.ndim} spatial axes (input {rf.input_shape}); give one size per axis."
        )
    records = rf.layers
    covers = tuple(
        None
        if r.min_size is None
        else tuple(m >= n for m, n in zip(r.min_size, shape, strict=True))
        for r in records
    )
    unproductive = tuple(r.name for r in records if _all_cover(r.input_min_size, shape))
    inputs = [r.input_min_size for r in records if r.input_min_size is not None]
    lows = tuple(
        (math.floor(max((s[a] for s in inputs), default=0)) + 1, None) for a in range(rf.ndim)
    )
    return Diagnostics(
        input_shape=tuple(shape),
        names=tuple(r.name for r in records),
        min_size=tuple(r.min_size for r in records),
        max_size=tuple(r.max_size for r in records),
        input_min_size=tuple(r.input_min_size for r in records),
        covers=covers,
        border_layer=_first(records, covers, range(rf.ndim)),
        border_layer_per_axis=tuple(_first(records, covers, (a,)) for a in range(rf.ndim)),
        unproductive=unproductive,
        resolution_range=lows,
    )
