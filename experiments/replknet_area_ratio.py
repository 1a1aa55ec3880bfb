"""RepLKNet Table 10 protocol: ERF high-contribution area ratios of zoo ResNets at 1024x1024.

Reproduces the protocol (not the numbers) of Table 10 of X. Ding, X. Zhang, J. Han, G. Ding,
"Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs" (RepLKNet, CVPR
2022): for each image, the gradient of the ReLU'd centre output of the last stage (summed over
channels) with respect to the input; its positive part summed over colour channels; averaged
over images; ``A = log10(map + 1)`` normalised by its max; for t = 20/30/50/99 % the smallest
centred square holding more than t of the total of A, reported as (side / 1024)^2.

Here: jaxrf's TF-Slim ResNet v1 101 and 152 (the paper's ResNet-101 / -152, up to block4) and
the torchvision-layout ResNet-50, with the zoo's **random** weights (fixed-seed He-normal
kernels, batch norm at identity; never trained) on **synthetic** standard-normal 1024x1024
images, not ImageNet validation images. The paper's numbers come from trained weights and real
images, so they are printed next to ours for reference only: they are **not comparable**.
With random weights the gradient's scale is arbitrary, and ``log10(map + 1)`` is not
scale-invariant, so the no-log variant is reported too.

Only the centre unit's receptive-field cone is computed: ``jaxrf.crop_for_unit`` gives the
smallest grid-aligned crop on which the unit's gradient is exact. For ResNet-101 / -152 the
theoretical RF (1027 / 1507 px) exceeds 1024, so the crop is the whole image and saves
nothing: we use 4 images (the paper: 50) to stay within minutes on 2 CPU cores. For the
torchvision ResNet-50 (RF 427) the crop is a fraction of the image.

Writes results/replknet_area_ratio.csv (one row per network x log option) and
results/replknet_area_ratio.png.
"""

from __future__ import annotations

import time

import _common
import jax
import jax.numpy as jnp
import numpy as np

import jaxrf
import jaxrf.models
import jaxrf.plot

NETWORKS = ("resnet_v1_101", "resnet_v1_152", "resnet50_torchvision")
QUICK_NETWORKS = ("resnet50_torchvision",)
SIZE, QUICK_SIZE = 1024, 160
IMAGES, QUICK_IMAGES = 4, 1
THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
#: RepLKNet Table 10 (trained weights, ImageNet images, 1024x1024), area ratio in %.
PAPER = {
    "resnet_v1_101": ("ResNet-101", (1.0, 1.7, 3.5, 23.4)),
    "resnet_v1_152": ("ResNet-152", (1.3, 2.1, 4.5, 34.9)),
}


def measure(name: str, size: int, images: int, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    started = time.perf_counter()
    entry = jaxrf.models.get(name)
    net = entry.build(jax.random.key(seed))

    def fn(x):  # RepLKNet: relu on the output values before the sum over channels
        return jax.nn.relu(net(x))

    shape = (1, size, size, 3)
    rf = jaxrf.receptive_field(fn, jax.ShapeDtypeStruct(shape, jnp.float32))
    index = tuple(m // 2 for m in rf.output_shape)
    crop = jaxrf.crop_for_unit(rf, index)
    xs = jax.random.normal(jax.random.key(seed + 1), (images, size, size, 3))
    erf = jaxrf.effective_receptive_field(
        fn, crop.take(xs), crop.index, reduce="positive", batch_size=1, progress=True
    )
    full = crop.paste(erf.map, spatial_axes=(0, 1))
    seconds = time.perf_counter() - started
    rows = []
    for log in (True, False):
        area = jaxrf.area_ratio(full, THRESHOLDS, log=log, values="positive")
        paper_name, paper = PAPER.get(name, ("-", (None,) * len(THRESHOLDS)))
        row = {
            "network": name,
            "paper_network": paper_name,
            "input_size": size,
            "images": erf.count,
            "log10": log,
            "theoretical_rf": rf.size[0],
            "centre_output": "x".join(map(str, index)),
            "clipped_region": " x ".join(f"[{a}, {b}]" for a, b in rf.region(index, clip=True)),
            "crop": " x ".join(
                f"[{o}, {o + c})" for o, c in zip(crop.start, crop.size, strict=True)
            ),
            "crop_fraction": round(crop.fraction, 4),
        }
        for t, r, p in zip(THRESHOLDS, area.ratios, paper, strict=True):
            key = round(100 * t)
            row[f"ours_{key}"] = "-" if r is None else round(100 * r, 2)
            row[f"paper_{key}"] = "-" if p is None else p
        row["seconds"] = round(seconds, 1)
        rows.append(row)
    return rows, full


def plot(rows: list[dict], meta: dict, out) -> None:
    fig = _common.figure(10, 4.2)
    axes = fig.subplots(1, 2)
    for ax, log in zip(axes, ("True", "False"), strict=True):
        curves, reference = {}, {}
        for r in rows:
            if r["log10"] != log:
                continue
            pts = {  # '-': no square smaller than the image holds that share
                t: float(r[f"ours_{round(100 * t)}"]) / 100
                for t in THRESHOLDS
                if r[f"ours_{round(100 * t)}"] != "-"
            }
            curves[f"{r['network']} (random weights)"] = pts
            if r["paper_network"] != "-" and log == "True":
                reference[f"{r['paper_network']} trained"] = {
                    t: float(r[f"paper_{round(100 * t)}"]) / 100 for t in THRESHOLDS
                }
        jaxrf.plot.area_ratio_curves(ax, curves, reference or None, log=True)
        ax.set_title(
            "log10(map + 1), as RepLKNet" if log == "True" else "no log (raw map)", fontsize=10
        )
    size = rows[0]["input_size"]
    _common.footer(
        fig,
        meta,
        f"{size}x{size} synthetic normal images ({rows[0]['images']} per net), random weights: "
        "NOT comparable with the paper's trained-weight numbers (dashed)",
    )
    fig.savefig(out, dpi=130)


def main(argv=None) -> None:
    args = _common.parse_args(
        __doc__, argv, images=dict(type=int, default=None, help=f"images per net ({IMAGES})")
    )
    csv_path = args.out_dir / "replknet_area_ratio.csv"
    if not args.plot_only:
        names = QUICK_NETWORKS if args.quick else NETWORKS
        size = QUICK_SIZE if args.quick else SIZE
        images = args.images or (QUICK_IMAGES if args.quick else IMAGES)
        rows = []
        for name in names:
            r, _ = measure(name, size, images)
            rows += r
            print(f"{name}: crop {r[0]['crop']} ({r[0]['crop_fraction']:.0%}), {r[0]['seconds']} s")
        _common.write_csv(
            csv_path,
            rows,
            __file__,
            "RepLKNet (Ding et al., CVPR 2022) Table 10 protocol (not its numbers)",
            [
                "weights: random (zoo fixed-seed He-normal fill, batch norm at identity), never "
                f"trained; images: {images} synthetic standard-normal {size}x{size} images (the "
                "paper: 50 ImageNet images)",
                "paper_* columns: RepLKNet Table 10, trained weights: NOT comparable with ours",
                "ResNet-101/152: RF > 1024, so crop_for_unit's crop is the whole image",
            ],
        )
    meta, rows = _common.read_csv(csv_path)
    plot(rows, meta, args.out_dir / "replknet_area_ratio.png")
    print("area ratio (%) at t = 20/30/50/99 %: ours (random weights, synthetic images) | paper")
    for r in rows:
        ours = " / ".join(str(r[f"ours_{round(100 * t)}"]) for t in THRESHOLDS)
        paper = " / ".join(str(r[f"paper_{round(100 * t)}"]) for t in THRESHOLDS)
        print(
            f"  {r['network']:>20} log10={r['log10']:<5}: {ours:>28} | {paper} "
            "(trained; not comparable)"
        )


if __name__ == "__main__":
    main()
