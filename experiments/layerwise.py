"""Theory vs measurement at every stage of ResNet-50 and VGG-16 at 224, on real photographs.

For the zoo's ``resnet50_torchvision`` (torchvision's layout: 7x7/2 stem, 3x3/2 max-pool, then
bottleneck blocks 3-4-6-3 with the stride on the 3x3 convolution) and ``vgg_16``, at 224x224,
``jaxrf.layer_report`` probes the centre unit of each stage output: ResNet's stem convolution,
max-pool and every residual block's output (the sum, before its ReLU; the last block of each of
layer1..layer4 is that stage's output), VGG's thirteen convolutions (before their ReLU) and five
max-pools. Per layer it gives the theoretical RF (Distill's size ``r``, effective stride ``S``
and padding ``P``, Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks",
Distill 2019) and the unit's region clipped to the image; the structural support box; and the
effective receptive field (Luo et al., "Understanding the Effective Receptive Field in Deep
Convolutional Neural Networks", NeurIPS 2016: mean |input gradient|, channels summed) over the
photographs: its std per axis, Luo size (sqrt of the number of pixels above 4.55 % of the
centre pixel), RepLKNet's area ratios at 20/30/50/99 % (Ding et al., CVPR 2022), the share of
its mass inside the theoretical region and the ratio of the ERF's size to the RF's.

Luo et al.'s Fig. 3 plots ERF size against depth on log-log axes for uniform stacks: slope 0.5
(the ERF grows as sqrt(depth)) while the theoretical RF grows linearly (slope 1). Here depth is
the number of convolutions on the longest path up to the layer (ResNet: 1 for the stem and the
max-pool, 1 + 3k after block k; VGG: the convolutions so far), and least-squares slopes of
log size against log depth are fitted over every reported layer, for the theoretical RF size
``r``, the side of the clipped region (sqrt of its pixel count), the Luo size and the ERF's std
(mean of the two axes). Strides make
``r`` grow faster than depth (each 3x3 convolution adds ``2 S``), and at 224 the deep layers'
RFs exceed the image, so the clipped sizes saturate at 224: the CSV also gives the ERF slope
over the layers whose clipped region is smaller than the image.

Weights are random: the zoo's fixed-seed He-normal fill with batch norm at identity (no
download is possible, so these are NOT ImageNet-trained networks; one weight draw). Images: 8
photographs bundled with matplotlib (grace_hopper.jpg) and scikit-image (astronaut, chelsea,
coffee, rocket, hubble_deep_field, motorcycle_left, ihc), shorter side resized to 256, centre
crop 224, ImageNet mean / std, read with ``jaxrf.load_images``.

Writes results/layerwise.csv (one row per network x layer), results/layerwise.md and .tex (the
tables) and results/layerwise.png (RF and ERF size vs depth).
"""

from __future__ import annotations

import math
import os
import time

import _common
import _luo
import jax
import numpy as np

import jaxrf
import jaxrf.models

SIDE, RESIZE = 224, 256
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTOS = (
    ("matplotlib", "grace_hopper.jpg"),
    ("skimage", "astronaut.png"),
    ("skimage", "chelsea.png"),
    ("skimage", "coffee.png"),
    ("skimage", "rocket.jpg"),
    ("skimage", "hubble_deep_field.jpg"),
    ("skimage", "motorcycle_left.png"),
    ("skimage", "ihc.png"),
)
THEORY = {"rf": 1.0, "erf": 0.5}  # Luo et al.: RF ~ depth, ERF ~ sqrt(depth)
REPRODUCES = (
    "Luo et al. 2016 Fig. 3 (ERF size vs depth, log-log) on ResNet-50 and VGG-16, with "
    "Araujo et al. 2019 (Distill) RF parameters per stage"
)


def _resnet_layers() -> list[tuple[str, str, int]]:
    """(layer name, label, depth): stem, max-pool, each block's output (1 + 3k convs)."""
    out = [("TorchResNet/conv1/conv", "conv1", 1), ("TorchResNet", "maxpool", 1)]
    k = 0
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for b in range(blocks):
            k += 1
            label = f"layer{stage}" if b == blocks - 1 else f"layer{stage}.{b}"
            out.append((f"TorchResNet/layer{stage}_{b}", label, 1 + 3 * k))
    return out


def _vgg_layers() -> list[tuple[str, str, int]]:
    """(layer name, label, depth): every convolution and max-pool of VGG-16."""
    pools = ("VGG16", "VGG16/max_pool", "VGG16/max_pool0", "VGG16/max_pool1", "VGG16/max_pool2")
    out, depth = [], 0
    for block, convs in enumerate((2, 2, 3, 3, 3), start=1):
        for c in range(1, convs + 1):
            depth += 1
            out.append((f"VGG16/conv{block}_{c}/conv", f"conv{block}_{c}", depth))
        out.append((pools[block - 1], f"pool{block}", depth))
    return out


NETWORKS = {"resnet50_torchvision": _resnet_layers, "vgg_16": _vgg_layers}


def photo_paths(quick: bool) -> list[str]:
    import matplotlib.cbook
    import skimage

    paths = []
    for where, name in PHOTOS[: 2 if quick else None]:
        if where == "matplotlib":
            paths.append(str(matplotlib.cbook.get_sample_data(name, asfileobj=False)))
        else:
            paths.append(os.path.join(os.path.dirname(skimage.__file__), "data", name))
    return paths


def _side(box) -> float | str:
    """Side of a square of the box's pixel count."""
    if box is None:
        return "-"
    return round(math.sqrt(math.prod(hi - lo + 1 for lo, hi in box)), 3)


def _r(v, digits=4):
    return "-" if v is None else round(float(v), digits)


def report_rows(name: str, layers, stream, side: int) -> list[dict]:
    """One CSV row per layer of ``layers`` from ``jaxrf.layer_report``."""
    fn = jaxrf.models.get(name).build(jax.random.key(0))
    started = time.perf_counter()
    names = [n for n, _, _ in layers]
    report = jaxrf.layer_report(fn, stream, layers=names, index=None, progress=True)
    seconds = time.perf_counter() - started
    rows = []
    for (layer, label, depth), r in zip(layers, report.rows, strict=True):
        row = {
            "network": name,
            "layer": label,
            "layer_name": layer,
            "depth": depth,
            "input": f"{side}x{side}",
            "unit": "x".join(map(str, r.index)),
            "rf_size": _common.fmt(r.size),
            "rf_stride": _common.fmt(r.stride),
            "rf_padding": _common.fmt(r.padding),
            "clipped_region": _box(r.region),
            "clipped_side": _side(r.region),
            "whole_image": r.region is not None and all(hi - lo + 1 >= side for lo, hi in r.region),
            "structural_box": _box(r.support),
            "structural_equals_clipped": r.support == r.region,
            "erf_std_y": _r(r.std[0] if r.std else None),
            "erf_std_x": _r(r.std[1] if r.std else None),
            "luo_size": _r(r.luo_size, 3),
        }
        ratios = r.area_ratios or (None,) * len(report.thresholds)
        for t, a in zip(report.thresholds, ratios, strict=True):
            row[f"area_ratio_{round(100 * t)}"] = "-" if a is None else round(100 * a, 3)
        row["erf_share_in_rf"] = _r(r.share_inside)
        row["erf_to_rf"] = _r(r.erf_to_rf)
        row["images"] = report.count
        row["seconds_network"] = round(seconds, 1)
        rows.append(row)
    return rows


def _box(box) -> str:
    return "empty" if box is None else " x ".join(f"[{lo}, {hi}]" for lo, hi in box)


def _mean_std(row) -> float:
    """The ERF's std averaged over the two axes."""
    return (float(row["erf_std_y"]) + float(row["erf_std_x"])) / 2


def add_slopes(rows: list[dict]) -> None:
    """Per network: log-log slopes of RF size, clipped side and Luo size against depth."""
    for name in dict.fromkeys(r["network"] for r in rows):
        rs = [r for r in rows if r["network"] == name]
        depth = [int(r["depth"]) for r in rs]
        rf = _luo.fit_slope(depth, [float(r["rf_size"]) for r in rs])[0]
        clipped = _luo.fit_slope(depth, [float(r["clipped_side"]) for r in rs])[0]
        erf = _luo.fit_slope(depth, [float(r["luo_size"]) for r in rs])[0]
        std = _luo.fit_slope(depth, [_mean_std(r) for r in rs])[0]
        inside = [r for r in rs if not r["whole_image"]]
        erf_in = float("nan")
        if len({r["depth"] for r in inside}) > 1:
            erf_in = _luo.fit_slope(
                [int(r["depth"]) for r in inside], [float(r["luo_size"]) for r in inside]
            )[0]
        for r in rs:
            r["slope_rf"] = round(rf, 3)
            r["slope_clipped_rf"] = round(clipped, 3)
            r["slope_erf"] = round(erf, 3)
            r["slope_erf_std"] = round(std, 3)
            r["slope_erf_rf_inside_image"] = round(erf_in, 3)
            r["layers_rf_inside_image"] = len(inside)


def finding(rows: list[dict]) -> str:
    """The README's one-line finding, from the CSV rows (strings)."""
    parts = []
    for name in dict.fromkeys(r["network"] for r in rows):
        r = next(x for x in rows if x["network"] == name)
        last = [x for x in rows if x["network"] == name][-1]
        parts.append(
            f"{name}: RF {r['slope_rf']}, ERF Luo size {r['slope_erf']}, ERF std "
            f"{r['slope_erf_std']} "
            f"({r['slope_erf_rf_inside_image']} over the {r['layers_rf_inside_image']} layers "
            f"whose RF fits in the image); last layer RF {last['rf_size']}, ERF "
            f"{float(last['luo_size']):.0f} px, {float(last['erf_share_in_rf']):.0%} inside"
        )
    return (
        f"log-log slopes of size vs depth at {rows[0]['input']} (Luo et al.: RF 1, ERF 0.5): "
        + "; ".join(parts)
        + f" (random weights, {rows[0]['images']} bundled photographs; "
        "[md](results/layerwise.md), [tex](results/layerwise.tex))"
    )


COLUMNS = [  # (csv key, table header)
    ("network", "network"),
    ("layer", "layer"),
    ("depth", "depth"),
    ("rf_size", "RF"),
    ("rf_stride", "S"),
    ("rf_padding", "P"),
    ("clipped_region", "clipped region"),
    ("structural_equals_clipped", "support = region"),
    ("erf_std_y", "ERF std y"),
    ("erf_std_x", "ERF std x"),
    ("luo_size", "Luo size"),
    ("area_ratio_20", "AR 20%"),
    ("area_ratio_30", "AR 30%"),
    ("area_ratio_50", "AR 50%"),
    ("area_ratio_99", "AR 99%"),
    ("erf_share_in_rf", "ERF in RF"),
    ("erf_to_rf", "ERF/RF"),
]


def _cell(row, key) -> str:
    value = row[key]
    if value == "-":
        return value
    if key == "erf_share_in_rf":
        return f"{100 * float(value):.1f}%"
    if key.startswith("area_ratio"):
        return f"{float(value):.2f}%"
    if key in ("erf_std_y", "erf_std_x", "luo_size", "erf_to_rf"):
        return f"{float(value):.3g}"
    return str(value)


def caption(meta: dict, rows: list[dict]) -> str:
    return (
        f"Centre unit of each layer at {rows[0]['input']}: theoretical RF size, effective stride "
        "and padding (Araujo et al., Distill 2019), the unit's region clipped to the image and "
        "whether the structural support box equals it; the ERF (Luo et al., NeurIPS 2016) over "
        f"{rows[0]['images']} bundled photographs: std per axis, Luo size, RepLKNet area ratios, "
        "share of its mass inside the region, Luo size / sqrt(region pixels). Depth: "
        "convolutions on the longest path. Random weights (not ImageNet-trained). "
        f"{meta['script']}; jax {meta['jax']}, flax {meta['flax']}; {meta['device']}."
    )


def write_tables(meta: dict, rows: list[dict], stem) -> None:
    md = [
        "# Layerwise theory vs measurement (ResNet-50, VGG-16 at 224)",
        "",
        caption(meta, rows),
        "",
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    md += ["| " + " | ".join(_cell(r, k) for k, _ in COLUMNS) + " |" for r in rows]
    md += ["", "Log-log slopes of size against depth (Luo et al.: RF 1, ERF 0.5):", ""]
    for name in dict.fromkeys(r["network"] for r in rows):
        r = next(x for x in rows if x["network"] == name)
        md.append(
            f"- {name}: RF size {r['slope_rf']}, clipped RF side {r['slope_clipped_rf']}, "
            f"ERF Luo size {r['slope_erf']}, ERF std {r['slope_erf_std']} (Luo size over the "
            f"{r['layers_rf_inside_image']} layers "
            f"whose RF fits in the image: {r['slope_erf_rf_inside_image']})"
        )
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")

    def tex(text: str) -> str:
        return text.replace("_", r"\_").replace("%", r"\%")

    lines = [
        r"\begin{table*}",
        r"\centering\scriptsize",
        r"\caption{" + tex(caption(meta, rows)) + "}",
        r"\label{tab:layerwise}",
        r"\begin{tabular}{" + "l" * 3 + "r" * (len(COLUMNS) - 3) + "}",
        r"\toprule",
        " & ".join(tex(h) for _, h in COLUMNS) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(tex(_cell(r, k)) for k, _ in COLUMNS) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table*}"]
    stem.with_suffix(".tex").write_text("\n".join(lines) + "\n")


def _plain_ticks(ax, depths, sizes) -> None:
    """Powers of two as plain-number ticks on both log axes, no minor labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    for axis, values in ((ax.xaxis, depths), (ax.yaxis, sizes)):
        low, top = (int(f(np.log2(g(values)))) for f, g in ((np.floor, min), (np.ceil, max)))
        axis.set_major_locator(FixedLocator([2.0**k for k in range(low, top + 1)]))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_locator(NullLocator())
        axis.set_minor_formatter(NullFormatter())


def plot(rows: list[dict], meta: dict, out) -> None:
    """Per network, log-log: RF size, clipped RF side and Luo size vs depth, fitted slopes."""
    nets = list(dict.fromkeys(r["network"] for r in rows))
    fig = _common.figure(5.2 * len(nets), 4.6)
    axes = fig.subplots(1, len(nets), squeeze=False)[0]
    for ax, name in zip(axes, nets, strict=True):
        rs = [r for r in rows if r["network"] == name]
        d = np.array([int(r["depth"]) for r in rs], float)
        series = (  # value, label, colour, marker, marker style
            (
                lambda r: float(r["rf_size"]),
                "theoretical RF size r",
                "C0",
                "o",
                dict(mfc="none", ms=8),
            ),
            (lambda r: float(r["clipped_side"]), "clipped RF side", "C2", "x", dict(ms=7)),
            (lambda r: float(r["luo_size"]), "ERF Luo size", "C3", "s", dict(ms=4)),
            (_mean_std, "ERF std (mean of axes)", "C1", "d", dict(ms=4)),
        )
        grid = np.geomspace(d.min(), d.max(), 50)
        for value, label, colour, marker, style in series:
            y = np.array([value(r) for r in rs])
            slope, intercept = _luo.fit_slope(d, y)
            ax.plot(d, y, marker, color=colour, label=f"{label}: fitted slope {slope:.2f}", **style)
            ax.plot(grid, np.exp(intercept) * grid**slope, "-", color=colour, lw=0.8, alpha=0.7)
        for slope, key, style in ((1.0, "rf_size", "--"), (0.5, "luo_size", ":")):
            y0 = float(rs[0][key])
            what = "RF ~ depth" if slope == 1 else "ERF ~ sqrt(depth)"
            ax.plot(
                grid,
                y0 * (grid / d.min()) ** slope,
                style,
                color="0.4",
                lw=1,
                label=f"Luo et al.: slope {slope:g} ({what})",
            )
        side = int(rs[0]["input"].split("x")[0])
        ax.axhline(side, color="0.3", lw=0.6)
        ax.text(
            d.min(),
            side * 1.04,
            f"image side {side} px",
            fontsize=7,
            color="0.3",
            ha="left",
            va="bottom",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes = [float(r[k]) for r in rs for k in ("rf_size", "luo_size")] + [side]
        _plain_ticks(ax, d, sizes + [_mean_std(r) for r in rs])
        ax.set_xlabel("depth (convolutions on the longest path)")
        ax.set_ylabel("size (px)")
        ax.set_title(f"{name}, centre unit of each layer", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(True, which="major", lw=0.3, alpha=0.5)
    fig.suptitle(
        f"RF and ERF size vs depth at {rows[0]['input']}: random weights (not trained), "
        f"{rows[0]['images']} bundled photographs (matplotlib, scikit-image)",
        fontsize=9,
    )
    _common.footer(fig, meta)
    fig.savefig(out, dpi=130)


def main(argv=None) -> None:
    args = _common.parse_args(__doc__, argv)
    stem = args.out_dir / "layerwise"
    if not args.plot_only:
        started = time.perf_counter()
        side, paths = (64, photo_paths(True)) if args.quick else (SIDE, photo_paths(False))
        resize = side * RESIZE // SIDE
        stream = jaxrf.load_images(paths, size=resize, crop=side, mean=MEAN, std=STD, batch_size=4)
        print(stream.describe(limit=8), flush=True)
        rows = []
        for name, layers in NETWORKS.items():
            layers = layers()
            if args.quick:
                layers = layers[:4]
            rows += report_rows(name, layers, stream, side)
            print(f"{name}: {rows[-1]['seconds_network']} s", flush=True)
        add_slopes(rows)
        _common.write_csv(
            stem.with_suffix(".csv"),
            rows,
            __file__,
            REPRODUCES,
            notes=(
                "weights: random (the zoo's fixed-seed He-normal fill, batch norm at identity; "
                "one draw); NOT ImageNet-trained, nothing downloaded",
                "images: " + stream.describe(limit=8),
                "depth: convolutions on the longest path; slopes: least squares of log size "
                "vs log depth over every layer of the network",
                f"wall time {time.perf_counter() - started:.0f} s",
            ),
        )
    meta, rows = _common.read_csv(stem.with_suffix(".csv"))
    write_tables(meta, rows, stem)
    plot(rows, meta, stem.with_suffix(".png"))
    print(finding(rows))
    print(f"wrote {stem}.csv, .md, .tex, .png")


if __name__ == "__main__":
    main()
