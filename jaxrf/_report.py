"""Per-layer report: theory next to measurement at every layer of a network.

For each named layer and one unit of its feature map: Distill's ``r``, ``S``, ``P`` and the
unit's region ``[S i - P, S i - P + r - 1]`` clipped to the input; the structural support box
(the input pixels the unit can depend on, whatever the weights); and the unit's effective
receptive field (Luo et al.): its standard deviation per axis, Luo's size, RepLKNet's area
ratios, the share of its mass inside the theoretical region, and the ratio of ERF size to RF
size. The statistics are those of :mod:`jaxrf` (:func:`jaxrf.erf_std`, :func:`jaxrf.luo_size`,
:func:`jaxrf.area_ratio`, :func:`jaxrf.share_inside`) with their default options.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import jax
import numpy as np

from . import _stats
from ._axis import Number, floor_ceil, format_axes
from ._erf import effective_receptive_field
from ._field import Box, LayerRecord, ReceptiveField, check_index
from ._gradient import center_index
from ._probe import actual_receptive_field
from ._table import render
from ._trace import receptive_field

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


@dataclass(frozen=True)
class LayerReportRow:
    """Theory and measurement for one unit of one layer.

    Attributes:
        name, op: the layer (as in ``rf.layers``).
        index: the probed unit, a position of the layer's output map.
        size, stride, padding: Distill's ``r``, ``S``, ``P`` of the layer (None where
            misaligned paths leave no single value, or for a global layer).
        is_global: some path reads the whole input.
        region: the unit's region ``[S i - P, S i - P + r - 1]`` clipped to the input, per
            axis; the whole input for a global layer; None where misaligned or all padding.
        support: the structural support box (:func:`jaxrf.actual_receptive_field`,
            ``mode="structural"``); None if empty.
        std: :func:`jaxrf.erf_std` of the ERF map, per axis.
        luo_size: :func:`jaxrf.luo_size` with the pixel at the region's centre as reference
            (the map's maximum where no centre is defined); None when not reached.
        area_ratios: :func:`jaxrf.area_ratio` at :attr:`LayerReport.thresholds`, squares
            centred at the same pixel; None where no square reaches a threshold.
        share_inside: :func:`jaxrf.share_inside` of ``region``: the ERF's mass inside the
            theoretical region (1.0: all of it).
        erf_to_rf: ``luo_size / sqrt(pixels of region)``: sides of squares of the ERF's and the
            RF's areas, so its square is the share of the region's pixels above Luo's threshold.
    """

    name: str
    op: str
    index: tuple[int, ...]
    size: tuple[Number, ...] | None
    stride: tuple[Number, ...] | None
    padding: tuple[Number, ...] | None
    is_global: bool
    region: Box | None
    support: Box | None
    std: tuple[float, ...] | None
    luo_size: float | None
    area_ratios: tuple[float | None, ...] | None
    share_inside: float | None
    erf_to_rf: float | None


def _box_cell(box) -> str:
    return "-" if box is None else "x".join(f"[{lo},{hi}]" for lo, hi in box)


def _float_cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return format_axes(tuple(_float_cell(x) for x in v))
    return f"{v:.3g}"


@dataclass(frozen=True)
class LayerReport:
    """Rows of :class:`LayerReportRow`, one per reported layer, and how they render.

    Attributes:
        input_shape: spatial shape of the network input.
        thresholds: the area-ratio thresholds (fractions of the total).
        rows: one :class:`LayerReportRow` per layer, in the order asked for.
        count: samples the ERF maps averaged (None when not given).
    """

    input_shape: tuple[int, ...]
    thresholds: tuple[float, ...]
    rows: tuple[LayerReportRow, ...]
    count: int | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        areas = tuple(f"area {100 * t:g}%" for t in self.thresholds)
        return (
            ("name", "unit", "RF size", "effective stride", "effective padding", "RF region")
            + ("support box", "ERF std", "Luo size")
            + areas
            + ("ERF in RF", "ERF/RF")
        )

    def table(self, fmt: str = "text") -> str:
        """The report as ``"text"``, ``"markdown"``, ``"latex"`` or ``"csv"`` (as
        :func:`jaxrf.layer_table`): sizes shown once where the axes agree (``7``), else
        ``7x5``; boxes as ``[lo,hi]`` per axis; floats to 3 significant digits; ``-`` where
        a value does not apply; ``global`` for a global layer's size, stride and padding.
        """
        rows = []
        for r in self.rows:
            theory = [format_axes(v) for v in (r.size, r.stride, r.padding)]
            if r.is_global:
                theory = ["global"] * 3
            areas = r.area_ratios or (None,) * len(self.thresholds)
            rows.append(
                [r.name, ",".join(map(str, r.index)), *theory, _box_cell(r.region)]
                + [_box_cell(r.support), _float_cell(r.std), _float_cell(r.luo_size)]
                + [_float_cell(a) for a in areas]
                + [_float_cell(r.share_inside), _float_cell(r.erf_to_rf)]
            )
        return render(self.columns, rows, fmt)


def unit_region(record: LayerRecord, index, input_shape) -> Box | None:
    """Region ``[S i - P, S i - P + r - 1]`` of unit ``index`` of a layer, clipped to the input.

    The whole input for a global layer; None where misaligned paths leave no single ``r``, or
    where the region lies in the padding only. Fractional ends (transposed convolutions) are
    rounded outwards.
    """
    if record.is_global:
        return tuple((0, n - 1) for n in input_shape)
    if record.size is None:
        return None
    out = []
    for i, r, S, P, n in _per_axis(record, index, input_shape):
        lo, hi = floor_ceil(Fraction(S) * i - P, Fraction(S) * i - P + r - 1)
        lo, hi = max(lo, 0), min(hi, n - 1)
        if lo > hi:
            return None
        out.append((lo, hi))
    return tuple(out)


def _centre_pixel(record: LayerRecord, index, input_shape) -> tuple[int, ...] | None:
    """Input pixel at the unclipped region's centre ``S i - P + (r - 1)/2`` (floor), clamped."""
    if record.is_global or record.size is None:
        return None
    return tuple(
        min(max(math.floor(Fraction(S) * i - P + Fraction(r - 1, 2)), 0), n - 1)
        for i, r, S, P, n in _per_axis(record, index, input_shape)
    )


def _per_axis(record: LayerRecord, index, input_shape):
    """``(i, r, S, P, n)`` per axis: unit index, size, effective stride and padding, input side."""
    fields = (record.size, record.effective_stride, record.effective_padding)
    return zip(index, *fields, input_shape, strict=True)


def _erf_stats(erf_map, region, centre, thresholds) -> dict:
    m = np.asarray(erf_map, dtype=np.float64)
    if not np.abs(m).sum() > 0:  # an all-zero map (a dead unit): no moments, no shares
        return dict(std=None, luo_size=None, area_ratios=None, share_inside=None, erf_to_rf=None)
    if centre is None:
        luo = _stats.luo_size(m, reference="max")
    else:
        luo = _stats.luo_size(m, center=centre)
    areas = _stats.area_ratio(m, thresholds, center=centre)
    ratio = None
    if luo.size is not None and region is not None:
        ratio = luo.size / math.sqrt(math.prod(hi - lo + 1 for lo, hi in region))
    return dict(
        std=_stats.erf_std(m),
        luo_size=luo.size,
        area_ratios=areas.ratios,
        share_inside=None if region is None else _stats.share_inside(m, region),
        erf_to_rf=ratio,
    )


def _records(rf: ReceptiveField, names: Sequence[str]) -> dict[str, LayerRecord]:
    """The records of ``names``, or a ValueError naming an unknown layer and the known ones."""
    known = {r.name: r for r in rf.layers}
    for name in names:
        if name not in known:
            shown = ", ".join(list(known)[:20]) + (", ..." if len(known) > 20 else "")
            raise ValueError(
                f"layer {name!r} is not a layer of this network; its layers (rf.layers, "
                f"jaxrf.layer_table) are: {shown}."
            )
    return {name: known[name] for name in names}


def unit_indices(rf: ReceptiveField, layers: Sequence[str], index=None) -> dict[str, tuple]:
    """The probed unit of every layer: ``index`` None (the centre ``n // 2`` of each layer's
    map), one position for every layer, or a mapping layer name -> position (centre where
    missing). Each is checked against that layer's output shape."""
    records = _records(rf, layers)
    out = {}
    for name, rec in records.items():
        i = index.get(name) if isinstance(index, Mapping) else index
        if i is None:
            i = center_index(rec.output_shape)
        out[name] = check_index(i, rec.output_shape, f"index for layer {name!r}")
    return out


def assemble_report(
    rf: ReceptiveField,
    indices: Mapping[str, Sequence[int]],
    supports: Mapping[str, Box | None],
    maps: Mapping[str, np.ndarray],
    thresholds: Sequence[float] = THRESHOLDS,
    count: int | None = None,
) -> LayerReport:
    """Rows of a :class:`LayerReport` from measurements already made, one per ``indices`` key.

    Args:
        rf: the network's :class:`~jaxrf.ReceptiveField` (per-layer records).
        indices: layer name -> probed unit of that layer's map.
        supports: layer name -> structural support box of that unit (or None).
        maps: layer name -> ERF map of that unit, of the input's spatial shape.
        thresholds: area-ratio thresholds.
        count: samples the maps averaged, for the record.

    Raises:
        ValueError: an unknown layer, an index outside a layer's map, or a map whose shape is
            not the input's.
    """
    records = _records(rf, list(indices))
    rows = []
    for name, rec in records.items():
        index = check_index(indices[name], rec.output_shape, f"index for layer {name!r}")
        m = np.asarray(maps[name], dtype=np.float64)
        if m.shape != tuple(rf.input_shape):
            raise ValueError(
                f"the ERF map of layer {name!r} has shape {m.shape}; it must have the input's "
                f"spatial shape {tuple(rf.input_shape)}."
            )
        region = unit_region(rec, index, rf.input_shape)
        centre = _centre_pixel(rec, index, rf.input_shape)
        rows.append(
            LayerReportRow(
                name=name,
                op=rec.op,
                index=index,
                size=rec.size,
                stride=rec.effective_stride,
                padding=rec.effective_padding,
                is_global=rec.is_global,
                region=region,
                support=supports.get(name),
                **_erf_stats(m, region, centre, thresholds),
            )
        )
    return LayerReport(tuple(rf.input_shape), tuple(thresholds), tuple(rows), count)


def _example(inputs):
    """A one-sample example of ``inputs`` (an array or an iterable of batches) and the inputs
    to stream (a one-shot iterator is re-chained after its first batch is read)."""
    if hasattr(inputs, "shape"):
        if len(inputs.shape) < 2 or inputs.shape[0] < 1:
            raise ValueError(
                f"`inputs` has shape {tuple(inputs.shape)}; give an array (N, *spatial, "
                "channels) with N >= 1, or an iterable of such batches."
            )
        return inputs[:1], inputs
    iterator = iter(inputs)
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError("`inputs` is an empty iterable; give at least one batch.") from None
    rest = inputs if iterator is not inputs else itertools.chain([first], iterator)
    return first[:1], rest


def _probe_layers(fn, net, example, inputs, indices: Mapping[str, tuple], centres, erf_options):
    """Structural boxes (of ``net``, ``x -> y``) and ERFs (of ``fn``, as
    :func:`jaxrf.effective_receptive_field` takes it) of one unit per layer (``layer=`` taps):
    ``({name: box}, {name: map}, count)``. Layers probed at their centre share one ERF pass
    over ``inputs`` (one forward and one backward per layer per sample); every other distinct
    index needs a pass of its own, so ``inputs`` must then be re-iterable. A ``token_grid``
    among ``erf_options`` is used for the structural boxes too."""
    token_grid = erf_options.get("token_grid")
    supports = {
        name: actual_receptive_field(
            net, example, index, mode="structural", layer=name, token_grid=token_grid
        ).box
        for name, index in indices.items()
    }
    groups: dict = {}
    for name, index in indices.items():
        groups.setdefault("center" if index == centres[name] else index, []).append(name)
    if len(groups) > 1 and iter(inputs) is inputs:
        raise ValueError(
            f"`index` asks for {len(groups)} different positions, which take one pass over "
            "`inputs` each, but `inputs` is a one-shot iterator; give a list of batches or an "
            "array, or probe every layer at its centre (index=None)."
        )
    maps, count = {}, None
    for index, names in groups.items():
        erfs = effective_receptive_field(fn, inputs, index, layer=list(names), **erf_options)
        for name in names:
            maps[name], count = erfs[name].map, erfs[name].count
    return supports, maps, count


def layer_report(
    fn: Callable,
    inputs,
    layers: str | Sequence[str] | None = None,
    index=None,
    *,
    thresholds: Sequence[float] = THRESHOLDS,
    **erf_options,
) -> LayerReport:
    """Theory next to measurement for one unit of every named layer of ``fn``.

    Per layer (a name of ``jaxrf.receptive_field(fn, x).layers``, as listed by
    :func:`jaxrf.layer_table`): Distill's ``r``, ``S``, ``P`` and the unit's region clipped to
    the input; the unit's structural support box (:func:`jaxrf.actual_receptive_field`,
    ``mode="structural"``); and its effective receptive field over ``inputs``
    (:func:`jaxrf.effective_receptive_field`) summarised as in :class:`LayerReportRow`. Each
    layer is probed through the ``layer=`` taps of those functions, equal to probing the
    network cut after it by hand. The ERF costs one forward pass per sample shared by one
    backward pass per layer (layers probed at their centre; each other distinct ``index``
    takes a pass of its own); the structural box costs one structural pull-back per layer.

    Args:
        fn: the network, ``x -> y`` with ``x`` shaped ``(batch, *spatial, channels)``.
        inputs: an array ``(N, *spatial, channels)`` or an iterable of such batches; the first
            sample fixes the traced shapes.
        layers: a layer name or names, in the order of the rows (default: every layer).
        index: the probed unit: None (the centre ``n // 2`` of each layer's map), one position
            for every layer, or a mapping layer name -> position.
        thresholds: area-ratio thresholds (RepLKNet's 20/30/50/99 % by default).
        **erf_options: passed to :func:`jaxrf.effective_receptive_field` (``batch_size``,
            ``reduce``, ``progress``, ``nonfinite``, ``lowering``, ...); ``token_grid`` also to
            the structural box. With ``init_fn`` (Luo's averaging over weight draws), ``fn``
            takes ``(params, x)``; theory and structural box use the draw of
            ``jax.random.key(0)`` (they do not depend on the weights).

    Returns:
        A :class:`LayerReport`; ``report.table(fmt)`` renders it as text, Markdown, LaTeX or
        CSV.

    Raises:
        ValueError: an unknown layer (the message lists the layers), an index outside a
            layer's map, or empty ``inputs``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxrf
        >>> conv = lambda x: jax.lax.conv_general_dilated(
        ...     x, jnp.ones((3, 1, 1)), (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))
        >>> report = jaxrf.layer_report(lambda x: conv(conv(x)), jnp.ones((1, 9, 1)))
        >>> report.columns[5:9]
        ('RF region', 'support box', 'ERF std', 'Luo size')
        >>> for row in report.table("csv").splitlines()[1:]:  # ERFs 1,1,1 and 1,2,3,2,1
        ...     print(row)
        conv0,3,3,1,0,"[3,5]","[3,5]",0.816,1.73,0.333,0.333,0.333,0.333,1,1
        conv1,2,5,1,0,"[2,6]","[2,6]",1.15,2.24,0.333,0.333,0.333,0.556,1,1
    """
    example, inputs = _example(inputs)
    init_fn = erf_options.get("init_fn")
    # Theory and structural box do not depend on the weights: with ``init_fn`` (fn taking
    # ``(params, x)``), one draw stands for all of them.
    net = fn if init_fn is None else functools.partial(fn, init_fn(jax.random.key(0)))
    rf = receptive_field(net, example)
    names = [layers] if isinstance(layers, str) else list(layers or [r.name for r in rf.layers])
    indices = unit_indices(rf, names, index)
    centres = unit_indices(rf, names)
    supports, maps, count = _probe_layers(fn, net, example, inputs, indices, centres, erf_options)
    return assemble_report(rf, indices, supports, maps, thresholds, count)
