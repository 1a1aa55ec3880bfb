"""ERF of trained MTCNN networks vs the same architectures with random weights, on real images.

Networks: P-Net, R-Net and O-Net of MTCNN (K. Zhang, Z. Zhang, Z. Li, Y. Qiao, "Joint Face
Detection and Alignment Using Multitask Cascaded Convolutional Networks", IEEE SPL 2016), as
re-implemented in ``jaxrf.models.mtcnn``, with the trained weights shipped in the ``mtcnn`` wheel
(MIT licence; read with joblib, TensorFlow not needed) or with He-normal random weights (zero
biases, PReLU slope 0, i.e. ReLU; averaged over 3 draws, Luo et al.'s protocol). Each network
runs at the input size it was trained for (12, 24, 48 px) on

* faces: the 100 face crops of ``skimage.data.lfw_subset()`` (Labeled Faces in the Wild, 25x25
  grey, resized bilinearly to the network's size, grey copied to R, G and B);
* non-faces: the 100 non-face crops of the same subset (same processing);
* photographs: 8 random 96x96 crops from each of five scikit-image colour photographs without a
  face (coffee, rocket, hubble_deep_field, immunohistochemistry, retina), resized likewise.

All inputs are normalised as MTCNN was trained, ``(p - 127.5) / 128``. The probed unit: P-Net's
face logit at its single 12x12 output (the detector's decision); the centre unit (1, 1) of the
R-Net and O-Net trunks (their last convolution, 3x3 outputs, all channels). The ERF is Luo et
al.'s ("Understanding the Effective Receptive Field in Deep CNNs", NeurIPS 2016) mean |input
gradient| (``jaxrf.effective_receptive_field``); its std per axis, Luo size (sqrt of the number of
pixels above 4.55 % of the centre), RepLKNet area ratio at 50 % and the offset of its centroid
from the theoretical centre (rows, columns; negative = up / left) are compared with the
theoretical RF (12 / 17 / 33 px, hand-derived in ``jaxrf.models.mtcnn``). The trained networks'
mean face probability on each image set is recorded as a check that the inputs are what the
networks expect.

Writes results/erf_trained_vs_random.csv (one row per network x weights x image set),
results/erf_trained_vs_random.npz (the maps) and results/erf_trained_vs_random.png.
"""

from __future__ import annotations

import time

import _common
import numpy as np

import jaxrf
from jaxrf.models import mtcnn

NETWORKS = {  # name -> (output probed, channel, unit)
    "pnet": ("logits", 1, (0, 0)),
    "rnet": ("features", None, (1, 1)),
    "onet": ("features", None, (1, 1)),
}
RF_SIZE = {"pnet": 12, "rnet": 17, "onet": 33}
PHOTOS = ("coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
CROPS, CROP = 8, 96
DRAWS = 3
REPRODUCES = (
    "Luo et al. 2016 (ERF of trained vs random networks) on MTCNN (Zhang et al. 2016) with the "
    "mtcnn wheel's trained weights"
)


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(a).resize((side, side), Image.BILINEAR)) for a in images]
    )


def image_sets(quick: bool) -> dict[str, np.ndarray]:
    """Image sets as uint8 arrays (N, H, W, 3) at their own size."""
    import skimage.data

    lfw = (skimage.data.lfw_subset() * 255).round().astype(np.uint8)
    lfw = np.repeat(lfw[..., None], 3, axis=-1)
    rng = np.random.default_rng(0)
    crops = []
    for name in PHOTOS[: 2 if quick else None]:
        photo = getattr(skimage.data, name)()[..., :3]
        for _ in range(2 if quick else CROPS):
            top = rng.integers(0, photo.shape[0] - CROP)
            left = rng.integers(0, photo.shape[1] - CROP)
            crops.append(photo[top : top + CROP, left : left + CROP])
    n = 8 if quick else 100
    return {"faces": lfw[:n], "non-faces": lfw[100 : 100 + n], "photographs": np.stack(crops)}


def measure(name: str, trained: bool, images: np.ndarray) -> tuple[dict, np.ndarray]:
    """ERF statistics of one network / weights / image set, and the map."""
    output, channel, unit = NETWORKS[name]
    module = mtcnn.MODULES[name](output=output)
    x = mtcnn.normalise(_resize(images, mtcnn.NATIVE_SIZE[name]))
    kwargs = {} if channel is None else {"channel": channel}
    if trained:
        variables = mtcnn.mtcnn_variables(name)
        erf = jaxrf.effective_receptive_field(
            lambda v: module.apply(variables, v), x, unit, **kwargs
        )
        prob = mtcnn.mtcnn_net(name, "face")(x)
        face = float(np.asarray(prob).reshape(len(x), 2)[:, 1].mean())
    else:
        erf = jaxrf.effective_receptive_field(
            module.apply,
            x,
            unit,
            init_fn=lambda key: mtcnn.mtcnn_variables(name, False, key),
            num_draws=DRAWS,
            **kwargs,
        )
        face = float("nan")
    rf = jaxrf.receptive_field(lambda v: module.apply(mtcnn.mtcnn_variables(name), v), x[:1])
    assert max(rf.size) == RF_SIZE[name], (name, rf.size)  # the hand derivation
    dy, dx = erf.centroid_offset(tuple(float(c) for c in rf.center(unit)))
    luo = erf.luo_size().size
    std = erf.std()
    row = {
        "network": name,
        "weights": "trained (mtcnn wheel)" if trained else f"He-normal random ({DRAWS} draws)",
        "input_px": mtcnn.NATIVE_SIZE[name],
        "unit": f"{unit[0]} {unit[1]}",
        "output": output if channel is None else f"{output}[{channel}] (face logit)",
        "rf_size": RF_SIZE[name],
        "erf_std_y": round(float(std[0]), 3),
        "erf_std_x": round(float(std[1]), 3),
        "luo_size": round(float(luo), 3),
        "luo_over_rf": round(float(luo) / RF_SIZE[name], 3),
        "area_ratio_50": round(float(erf.area_ratio().ratios[2]), 4),
        "centroid_dy": round(float(dy), 3),
        "centroid_dx": round(float(dx), 3),
        "mean_face_probability": "-" if np.isnan(face) else round(face, 3),
    }
    return row, np.asarray(erf.map)


def finding(rows: list[dict]) -> str:
    """The README's one-line finding, from the CSV rows (strings)."""

    def get(name, weights, images, key):
        for r in rows:
            if (r["network"], r["images"]) == (name, images) and r["weights"].startswith(weights):
                return float(r[key])
        return float("nan")

    dy = [get("pnet", w, "faces", "centroid_dy") for w in ("trained", "He")]
    area = [get("pnet", w, "faces", "area_ratio_50") for w in ("trained", "He")]
    parts = [
        f"P-Net face logit on LFW faces: ERF centroid {dy[0]:+.1f} px vertically trained vs "
        f"{dy[1]:+.1f} random, 50% area ratio {area[0]:.2f} vs {area[1]:.2f} (RF 12)"
    ]
    for name in ("rnet", "onet"):
        parts.append(
            f"{name} trunk ERF std {get(name, 'trained', 'faces', 'erf_std_y'):.2f} trained vs "
            f"{get(name, 'He', 'faces', 'erf_std_y'):.2f} px random (RF {RF_SIZE[name]})"
        )
    return "; ".join(parts) + " (trained weights: mtcnn wheel; images: LFW subset, scikit-image)"


def plot(maps: dict, rows: list[dict], meta: dict, out) -> None:
    """3 rows (networks) x 6 columns (trained / random x image sets) of normalised ERF maps."""
    sets = list(dict.fromkeys(r["images"] for r in rows))
    fig = _common.figure(13, 7.2)
    axes = fig.subplots(3, 2 * len(sets), squeeze=False)
    for i, name in enumerate(NETWORKS):
        for j, (trained, image_set) in enumerate((t, s) for t in (True, False) for s in sets):
            ax = axes[i, j]
            key = f"{name}|{'trained' if trained else 'random'}|{image_set}"
            m = maps[key]
            ax.imshow(m / m.max(), cmap="magma", vmin=0, vmax=1)
            row = next(
                r
                for r in rows
                if r["network"] == name
                and r["images"] == image_set
                and r["weights"].startswith("trained" if trained else "He")
            )
            ax.set_title(
                f"{name} {'trained' if trained else 'random'}, {image_set}\n"
                f"Luo {float(row['luo_size']):.1f} / RF {row['rf_size']}, "
                f"std {float(row['erf_std_x']):.1f}, dy {float(row['centroid_dy']):+.1f}",
                fontsize=7,
            )
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        "ERF (mean |input gradient|, normalised) of MTCNN trained (mtcnn wheel, MIT) vs "
        "He-random weights, on LFW faces / LFW non-faces / scikit-image photographs",
        fontsize=9,
    )
    _common.footer(fig, meta)
    fig.savefig(out, dpi=120)


def main(argv=None) -> None:
    args = _common.parse_args(__doc__, argv)
    stem = args.out_dir / "erf_trained_vs_random"
    if not args.plot_only:
        started = time.perf_counter()
        rows, maps = [], {}
        for set_name, images in image_sets(args.quick).items():
            for name in NETWORKS:
                for trained in (True, False):
                    row, erf_map = measure(name, trained, images)
                    rows.append({**row, "images": set_name, "n_images": len(images)})
                    maps[f"{name}|{'trained' if trained else 'random'}|{set_name}"] = erf_map
                    print(f"{name} {row['weights']} {set_name}: Luo {row['luo_size']}", flush=True)
        _common.write_csv(
            stem.with_suffix(".csv"),
            rows,
            __file__,
            REPRODUCES,
            notes=(
                "weights: trained = the mtcnn 1.0.0 wheel's pnet/rnet/onet.lz4 (MIT licence); "
                "random = He-normal kernels, zero biases, PReLU slope 0",
                "images: skimage.data.lfw_subset (100 faces, 100 non-faces, 25x25 grey) and "
                f"{CROPS} random {CROP}x{CROP} crops of skimage.data {', '.join(PHOTOS)}",
                f"wall time {time.perf_counter() - started:.0f} s",
            ),
        )
        np.savez_compressed(stem.with_suffix(".npz"), **maps)
    meta, rows = _common.read_csv(stem.with_suffix(".csv"))
    maps = dict(np.load(stem.with_suffix(".npz")))
    plot(maps, rows, meta, stem.with_suffix(".png"))
    print(f"wrote {stem}.csv, .npz, .png")


if __name__ == "__main__":
    main()
