"""Figures of receptive fields: every function draws on a matplotlib ``Axes`` and returns it.

Nothing here touches pyplot's global state (no ``plt.figure``, ``plt.gca``, ``plt.show``):
build a :class:`matplotlib.figure.Figure`, pass its axes, and ``fig.savefig`` it::

    from matplotlib.figure import Figure
    fig = Figure(figsize=(4, 4))
    jaxrf.plot.erf_heatmap(fig.add_subplot(), erf_map, rf=rf)
    fig.savefig("erf.png")

Coordinates: images are drawn with ``imshow`` convention, axis 0 (rows, H) downwards and axis 1
(columns, W) to the right; input pixel ``(r, c)`` covers ``[c - 0.5, c + 0.5] x [r - 0.5,
r + 0.5]``, so an inclusive region ``(lo, hi)`` is the rectangle from ``lo - 0.5`` to
``hi + 0.5``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colors
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ._axis import format_axes
from ._field import LayerRecord, ReceptiveField
from ._gradient import center_index

__all__ = [
    "alignment_regions",
    "area_ratio_curves",
    "erf_heatmap",
    "fixed_size_feature_map",
    "rf_growth",
]

#: Colours of the overlays (unclipped Distill region, clipped real-pixel box, centre).
REGION_COLOUR = "tab:red"
CLIPPED_COLOUR = "white"
CENTRE_COLOUR = "tab:red"


def _check_axes(ax) -> Axes:
    if not isinstance(ax, Axes):
        raise TypeError(
            f"`ax` (={ax!r}) must be a matplotlib Axes; create one with "
            "matplotlib.figure.Figure().add_subplot()."
        )
    return ax


def _box_patch(box, **kwargs) -> Rectangle:
    """Rectangle covering the inclusive 2-D region ``((r0, r1), (c0, c1))`` in pixel units."""
    (r0, r1), (c0, c1) = box
    return Rectangle(
        (float(c0) - 0.5, float(r0) - 0.5), float(c1 - c0 + 1), float(r1 - r0 + 1), **kwargs
    )


def default_index(rf: ReceptiveField) -> tuple[int, ...]:
    """The centre output position, ``n // 2`` per axis (the output probed by Luo et al.)."""
    return center_index(rf.output_shape)


def erf_heatmap(
    ax: Axes,
    erf_map,
    rf: ReceptiveField | None = None,
    index: Sequence[int] | None = None,
    log: bool = False,
    cmap: str = "viridis",
    colorbar: bool = True,
    title: str | None = None,
) -> Axes:
    """Draw an effective-receptive-field map, with the analytic region and centre on top.

    Args:
        ax: the matplotlib Axes to draw on.
        erf_map: 2-D array ``(H, W)`` over the input pixels (e.g. the mean absolute input
            gradient of one output unit, channels already reduced).
        rf: the analytic :class:`~jaxrf.ReceptiveField` of the probed network. When given, the
            unclipped region ``rf.region(index)`` is drawn as a dashed red rectangle, the
            clipped one ``rf.region(index, clip=True)`` as a solid white rectangle, and
            ``rf.center(index)`` as a red cross. The axes extend into the padding as far as the
            unclipped region, by at most a quarter of the input size.
        index: the output position that was probed; defaults to ``n // 2`` per output axis.
        log: False: linear colour scale from 0 to the maximum. True: logarithmic scale from the
            smallest positive value to the maximum; zeros (pixels outside the support) are drawn
            in the colour map's lowest colour.
        cmap: a matplotlib colour-map name.
        colorbar: add a colour bar next to the axes.
        title: axes title.

    Returns:
        ``ax``, with the image as ``ax.images[0]`` and the overlays as ``ax.patches``
        (unclipped region first, then the clipped one).

    Raises:
        ValueError: ``erf_map`` is not 2-D, does not match ``rf.input_shape``, or (with
            ``log=True``) has no positive value.

    Example:
        >>> import numpy as np, jaxrf
        >>> from matplotlib.figure import Figure
        >>> rf = jaxrf.from_layers([jaxrf.Layer(3, padding=1)] * 2, (8, 8))
        >>> ax = erf_heatmap(Figure().add_subplot(), np.ones((8, 8)), rf=rf, index=(0, 0))
        >>> [tuple(map(float, p.get_bbox().bounds)) for p in ax.patches]  # [-2, 2], [0, 2]
        [(-2.5, -2.5, 5.0, 5.0), (-0.5, -0.5, 3.0, 3.0)]
    """
    ax = _check_axes(ax)
    data = _check_erf_map(erf_map, rf)
    norm, colour_map = _colour_scale(data, log, cmap)
    if log:
        data = np.ma.masked_less_equal(data, 0)
    image = ax.imshow(data, cmap=colour_map, norm=norm, interpolation="nearest")
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if rf is not None:
        _draw_region(ax, rf, default_index(rf) if index is None else tuple(index), data.shape)
    if title is not None:
        ax.set_title(title)
    return ax


def _check_erf_map(erf_map, rf: ReceptiveField | None) -> np.ndarray:
    """``erf_map`` as a 2-D float array of ``rf``'s input shape, or a ValueError saying why not."""
    data = np.asarray(erf_map, dtype=float)
    if data.ndim != 2:
        raise ValueError(
            f"`erf_map` has shape {data.shape}; it must be 2-D (H, W). Reduce the batch and "
            "channel axes first, e.g. np.abs(grad).sum(axis=(0, -1)) for an NHWC gradient."
        )
    if rf is not None and tuple(rf.input_shape) != data.shape:
        raise ValueError(
            f"`erf_map` has shape {data.shape} but `rf` was computed for input shape "
            f"{tuple(rf.input_shape)}; pass the receptive field of the network at this input size."
        )
    if rf is not None and len(rf.input_shape) != 2:
        raise ValueError(f"`rf` is {len(rf.input_shape)}-D; erf_heatmap draws 2-D inputs.")
    return data


def _colour_scale(data: np.ndarray, log: bool, cmap: str):
    """``(norm, colour map)``: linear from ``min(0, min)`` to the max, or log over the positives.

    On the log scale zeros (pixels outside the support) are masked and drawn in the colour
    map's lowest colour.
    """
    if not log:
        vmax = data.max() if data.max() > 0 else 1
        return colors.Normalize(vmin=min(0.0, data.min()), vmax=vmax), _colormap(cmap)
    positive = data[data > 0]
    if positive.size == 0:
        raise ValueError(
            "`erf_map` has no positive value, so a log colour scale (log=True) is undefined; "
            "use log=False or pass |gradient|."
        )
    base = _colormap(cmap)
    norm = colors.LogNorm(vmin=positive.min(), vmax=positive.max())
    return norm, base.with_extremes(bad=base(0.0))


def _draw_region(ax: Axes, rf: ReceptiveField, index: tuple[int, ...], shape) -> None:
    """The unclipped region (dashed), the clipped one (solid) and the centre (cross) of ``index``.

    The axes extend into the padding as far as the unclipped region reaches, by at most a
    quarter of the input (a region far larger than the input would shrink the image).
    """
    region = rf.region(index)
    ax.add_patch(
        _box_patch(
            region,
            fill=False,
            ec=REGION_COLOUR,
            ls="--",
            lw=1.5,
            label="analytic region (unclipped)",
        )
    )
    clipped = rf.region(index, clip=True)
    if clipped is not None:
        ax.add_patch(
            _box_patch(
                clipped,
                fill=False,
                ec=CLIPPED_COLOUR,
                ls="-",
                lw=1.0,
                label="analytic region (clipped)",
            )
        )
    cy, cx = (float(c) for c in rf.center(index))
    ax.plot(
        [cx],
        [cy],
        marker="x",
        color=CENTRE_COLOUR,
        ms=8,
        mew=2,
        ls="none",
        label="analytic centre",
    )
    (r0, r1), (c0, c1) = region
    mh, mw = (max(2.0, n / 4) for n in shape)
    ax.set_xlim(
        max(min(-0.5, c0 - 1.0), -0.5 - mw),
        min(max(shape[1] - 0.5, c1 + 1.0), shape[1] - 0.5 + mw),
    )
    ax.set_ylim(
        min(max(shape[0] - 0.5, r1 + 1.0), shape[0] - 0.5 + mh),
        max(min(-0.5, r0 - 1.0), -0.5 - mh),
    )


def _colormap(name: str) -> colors.Colormap:
    from matplotlib import colormaps

    try:
        return colormaps[name]
    except KeyError:
        raise ValueError(
            f"`cmap` (={name!r}) is not a matplotlib colour map; e.g. 'viridis' or 'magma'."
        ) from None


def rf_growth(ax: Axes, rf: ReceptiveField, axis: int | None = None, log: bool = False) -> Axes:
    """Per-layer receptive-field size against layer number, from ``rf.layers``.

    Args:
        ax: the matplotlib Axes to draw on.
        rf: a :class:`~jaxrf.ReceptiveField` with its per-layer records.
        axis: the spatial axis to draw; None draws every axis (one line each, or one line when
            all axes agree).
        log: logarithmic y axis.

    Returns:
        ``ax`` with one line per drawn axis (``ax.lines``); x is the layer's position in
        ``rf.layers`` (tick labels are layer names when there are at most 30 layers). Layers
        whose size is undefined (misaligned merges) are left out; global layers are drawn at the
        input size with a square marker.

    Example:
        >>> import jaxrf
        >>> from matplotlib.figure import Figure
        >>> rf = jaxrf.from_layers([jaxrf.Layer(3), jaxrf.Layer(3)], (8, 8))
        >>> rf_growth(Figure().add_subplot(), rf).lines[0].get_ydata().tolist()
        [3.0, 5.0]
    """
    ax = _check_axes(ax)
    records: Sequence[LayerRecord] = rf.layers
    if not records:
        raise ValueError("`rf` has no per-layer records (rf.layers is empty); nothing to draw.")
    ndim = len(rf.input_shape)
    if axis is not None and not 0 <= axis < ndim:
        raise ValueError(f"`axis` (={axis}) must be in 0..{ndim - 1} for a {ndim}-D input.")

    def sizes(a):
        xs, ys, glob = [], [], []
        for x, rec in enumerate(records):
            if rec.is_global:
                xs.append(x)
                ys.append(float(rf.input_shape[a]))
                glob.append(x)
            elif rec.size is not None:
                xs.append(x)
                ys.append(float(rec.size[a]))
        return xs, ys, glob

    axes = [axis] if axis is not None else list(range(ndim))
    curves = [sizes(a) for a in axes]
    if axis is None and all(c[:2] == curves[0][:2] for c in curves):
        axes, curves = [None], curves[:1]
    for a, (xs, ys, glob) in zip(axes, curves, strict=True):
        label = "RF size" if a is None else f"RF size, axis {a}"
        (line,) = ax.plot(xs, ys, marker="o", ms=4, label=label)
        if glob:
            gy = [ys[xs.index(g)] for g in glob]
            ax.plot(glob, gy, marker="s", ls="none", color=line.get_color(), label="global")
    if len(records) <= 30:
        ax.set_xticks(range(len(records)))
        ax.set_xticklabels([r.name for r in records], rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("receptive-field size (input pixels)")
    if log:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if len(axes) > 1:
        ax.legend(fontsize=7)
    return ax


def area_ratio_curves(
    ax: Axes,
    curves: Mapping[str, Mapping[float, float]],
    reference: Mapping[str, Mapping[float, float]] | None = None,
    log: bool = False,
) -> Axes:
    """RepLKNet-style ERF area ratio against threshold, one line per network or setting.

    Args:
        ax: the matplotlib Axes to draw on.
        curves: label -> {threshold t (a fraction, e.g. 0.2): area ratio (a fraction of the
            input area)}. Drawn as solid lines with markers, in percent.
        reference: the same for published numbers (e.g. RepLKNet Table 10), drawn dashed with
            open markers and "(paper)" appended to the label.
        log: logarithmic y axis.

    Returns:
        ``ax``, with one line per curve then one per reference (``ax.lines``).

    Example:
        >>> from matplotlib.figure import Figure
        >>> ax = area_ratio_curves(Figure().add_subplot(), {"net": {0.2: 0.01, 0.99: 0.25}})
        >>> ax.lines[0].get_xdata().tolist(), ax.lines[0].get_ydata().tolist()
        ([20.0, 99.0], [1.0, 25.0])
    """
    ax = _check_axes(ax)
    if not curves:
        raise ValueError("`curves` is empty; give {label: {threshold: ratio}}.")
    for group, style in (
        (curves, {"ls": "-", "marker": "o"}),
        (reference or {}, {"ls": "--", "marker": "o", "mfc": "none"}),
    ):
        for label, points in group.items():
            ts = sorted(points)
            for t in ts:
                if not 0 < t <= 1 or not 0 <= points[t] <= 1:
                    raise ValueError(
                        f"curve {label!r}: threshold {t} and ratio {points[t]} must be fractions "
                        "in (0, 1] and [0, 1] (e.g. 0.2 for 20%)."
                    )
            name = label if group is curves else f"{label} (paper)"
            ax.plot([100 * t for t in ts], [100 * points[t] for t in ts], label=name, **style)
    ax.set_xlabel("threshold t (% of the total contribution)")
    ax.set_ylabel("area ratio (% of the input)")
    if log:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def alignment_regions(
    ax: Axes, rf: ReceptiveField, axis: int = 0, index: Sequence[int] | None = None
) -> Axes:
    """Per-position input regions of every output along one axis (Distill's alignment figure).

    One row per output position ``i`` along ``axis`` (other axes fixed at ``index``, default
    the centre): a light bar for the unclipped region ``rf.region(...)`` (padding included), a
    dark bar for the clipped one ``rf.region(..., clip=True)`` (the real pixels), a thin line
    per path (misaligned paths differ), and a dot at ``rf.center(...)``. The input is shaded
    grey from ``-0.5`` to ``n - 0.5``. For an aligned field the bars shift by the effective
    stride from row to row; a misaligned one's do not.

    Args:
        ax: the matplotlib Axes to draw on.
        rf: the :class:`~jaxrf.ReceptiveField`.
        axis: the spatial axis to draw.
        index: output position for the other axes; defaults to ``n // 2`` per axis.

    Returns:
        ``ax``; ``ax.patches`` holds, per output row, the unclipped then (if any) the clipped
        bar, each a Rectangle spanning ``lo - 0.5`` to ``hi + 0.5``, and last the input shading.

    Example:
        >>> import jaxrf
        >>> from matplotlib.figure import Figure
        >>> rf = jaxrf.from_layers([jaxrf.Layer(3, padding=1)] * 2, (8,))
        >>> ax = alignment_regions(Figure().add_subplot(), rf)
        >>> [p.get_x() + 0.5 for p in ax.patches[:2]]   # output 0: [-2, 2] and [0, 2]
        [-2.0, 0.0]
    """
    ax = _check_axes(ax)
    ndim = len(rf.input_shape)
    if not 0 <= axis < ndim:
        raise ValueError(f"`axis` (={axis}) must be in 0..{ndim - 1} for a {ndim}-D input.")
    base = list(default_index(rf) if index is None else index)
    n_in = rf.input_shape[axis]
    for i in range(rf.output_shape[axis]):
        base[axis] = i
        _draw_output_row(ax, rf, axis, tuple(base), i)
    ax.axvspan(-0.5, n_in - 0.5, color="0.9", zorder=0, label="input")
    ax.set_ylim(rf.output_shape[axis] - 0.5, -0.5)
    ax.autoscale(axis="x")
    ax.set_xlabel(f"input position along axis {axis}")
    ax.set_ylabel(f"output position along axis {axis}")
    ax.set_yticks(range(rf.output_shape[axis]))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return ax


def _draw_output_row(ax: Axes, rf: ReceptiveField, axis: int, idx: tuple, i: int) -> None:
    """Row ``i`` of :func:`alignment_regions`: the bars, path lines and centre of output ``idx``.

    Legend labels go on row 0 only, so each kind of mark appears once in a legend.
    """
    first = i == 0
    lo, hi = rf.region(idx)[axis]
    unclipped = "unclipped" if first else None
    ax.add_patch(
        Rectangle(
            (lo - 0.5, i - 0.4), hi - lo + 1, 0.8, color="tab:blue", alpha=0.3, label=unclipped
        )
    )
    clipped = rf.region(idx, clip=True)
    if clipped is not None:
        clo, chi = clipped[axis]
        label = "clipped (real pixels)" if first else None
        ax.add_patch(
            Rectangle((clo - 0.5, i - 0.2), chi - clo + 1, 0.4, color="tab:blue", label=label)
        )
    for k, path in enumerate(p for p in rf.paths if not p.is_global):
        u, v = path.region(idx, rf.input_shape)[axis]
        y = i + 0.3 - 0.15 * k
        label = f"path '{path.name}'" if first else None
        ax.plot([float(u) - 0.5, float(v) + 0.5], [y, y], color=f"C{k + 1}", lw=1, label=label)
    centre = float(rf.center(idx)[axis])
    ax.plot([centre], [i], marker="o", color="k", ms=3, label="centre" if first else None)


def fixed_size_feature_map(
    ax: Axes,
    record: LayerRecord,
    input_shape: Sequence[int],
    box_index: Sequence[int] | None = None,
    colour: str = "tab:green",
) -> Axes:
    """Dang Ha The Hien's fixed-size feature-map view of one layer.

    As in Fig. 1 (right) of "A guide to receptive field arithmetic for Convolutional Neural
    Networks" (Dang Ha The Hien, 2017).

    The map is drawn at the input's size: the input grid in light grey, each feature as a dot
    at its receptive-field centre ``S i - P + (r - 1)/2`` (per axis, 0-indexed pixel
    coordinates), and one feature's receptive field as a rectangle of side ``r`` around it.

    Args:
        ax: the matplotlib Axes to draw on.
        record: the layer's :class:`~jaxrf.LayerRecord` (from ``rf.layers``); it must have an
            aligned, local receptive field (size, stride and padding defined).
        input_shape: the network's spatial input shape ``(H, W)``.
        box_index: the feature whose receptive field is boxed; defaults to ``(0, 0)``.
        colour: colour of the feature dots and box.

    Returns:
        ``ax``; ``ax.collections[0]`` holds the feature centres (x = column, y = row), and
        ``ax.patches[-1]`` is the boxed receptive field.

    Example:
        >>> import jaxrf
        >>> from matplotlib.figure import Figure
        >>> rf = jaxrf.from_layers([jaxrf.Layer(3, stride=2, padding=1)], (5, 5))
        >>> ax = fixed_size_feature_map(Figure().add_subplot(), rf.layers[0], (5, 5))
        >>> sorted({float(x) for x, _ in ax.collections[0].get_offsets()})  # 2i - 1 + 1
        [0.0, 2.0, 4.0]
    """
    ax = _check_axes(ax)
    if record.size is None or record.is_global:
        raise ValueError(
            f"layer '{record.name}' has no single receptive field (misaligned or global), so "
            "its features have no fixed centre grid; draw alignment_regions instead."
        )
    if len(input_shape) != 2 or len(record.output_shape) != 2:
        raise ValueError(f"`input_shape` (={tuple(input_shape)}) must be 2-D (H, W).")
    H, W = input_shape
    for r in range(H + 1):
        ax.plot([-0.5, W - 0.5], [r - 0.5, r - 0.5], color="0.85", lw=0.8)
    for c in range(W + 1):
        ax.plot([c - 0.5, c - 0.5], [-0.5, H - 0.5], color="0.85", lw=0.8)
    size, S, P = record.size, record.effective_stride, record.effective_padding
    centres = [
        [float(S[a] * i - P[a] + (size[a] - 1) / 2) for i in range(record.output_shape[a])]
        for a in range(2)
    ]
    ys, xs = np.meshgrid(centres[0], centres[1], indexing="ij")
    ax.scatter(xs.ravel(), ys.ravel(), s=60, color=colour, edgecolor="k", zorder=3)
    bi = (0, 0) if box_index is None else tuple(box_index)
    cy, cx = centres[0][bi[0]], centres[1][bi[1]]
    ry, rx = float(size[0]), float(size[1])
    ax.add_patch(
        Rectangle((cx - rx / 2, cy - ry / 2), rx, ry, fill=False, ec=colour, lw=2, zorder=4)
    )
    lo = min(-0.5, cx - rx / 2, cy - ry / 2) - 0.5
    hi = max(W - 0.5, H - 0.5, cx + rx / 2, cy + ry / 2) + 0.5
    ax.set_xlim(lo, hi)
    ax.set_ylim(hi, lo)
    ax.set_aspect("equal")
    ax.set_title(
        f"{record.name}: {record.output_shape[0]}x{record.output_shape[1]} features, "
        f"r={format_axes(size)}, j={format_axes(S)}",
        fontsize=9,
    )
    return ax
