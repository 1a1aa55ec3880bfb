"""Luo et al. 2016, Fig. 1: ERFs of 5/10/20/40-layer 3x3 stacks, uniform / random / random+ReLU.

Reproduces Fig. 1 of W. Luo, Y. Li, R. Urtasun, R. Zemel, "Understanding the Effective
Receptive Field in Deep Convolutional Neural Networks" (NeurIPS 2016): the effective receptive
field of the centre output of ``n`` stacked 3x3 convolutions (padding 1, stride 1), for
uniform weights (every kernel entry ``1/(9 c_in)``, no nonlinearity), random weights (LeCun
normal, no nonlinearity) and random weights with ReLU. The ERF is the mean absolute input
gradient over weight draws and random normal inputs (``jaxrf.effective_receptive_field``); the
uniform case is also compared with its closed form (the n-fold convolution of a box of width 3,
variance n (k^2 - 1)/12 per axis). Weights are random or analytically set; inputs are
synthetic (standard normal); nothing is trained or downloaded.

Writes results/luo_fig1.csv (one row per setting x depth: Luo size, ERF std, theoretical RF,
ratios), results/luo_fig1.npz (the maps) and results/luo_fig1.png.
"""

from __future__ import annotations

import _common
import _luo
import numpy as np
from tqdm.auto import tqdm

import jaxrf
import jaxrf.plot

SETTINGS = {  # label: (weights, nonlinearity)
    "uniform": ("uniform", "none"),
    "random": ("random", "none"),
    "random + ReLU": ("random", "relu"),
}
DEPTHS = (5, 10, 20, 40)
QUICK_DEPTHS = (2, 4)
DRAWS, INPUTS = 16, 4  # random weights: 16 weight draws x 4 normal inputs = 64 maps


def compute(settings, depths, draws, inputs) -> tuple[list[dict], dict[str, np.ndarray]]:
    rows, maps = [], {}
    jobs = [(label, d) for label in settings for d in depths]
    for label, depth in tqdm(jobs, desc="Luo stacks", unit="net"):
        weights, nonlinearity = settings[label]
        m = _luo.measure(depth, weights, nonlinearity, draws=draws, inputs_per_draw=inputs)
        maps[f"{label}|{depth}"] = m
        rf_size = 2 * depth + 1  # Distill: 1 + n (k - 1)
        luo = jaxrf.luo_size(m)
        row = {
            "setting": label,
            "depth": depth,
            "input_size": m.shape[0],
            "theoretical_rf": rf_size,
            "luo_size": round(luo.size, 4),
            "luo_count": luo.count,
            "erf_std": round(float(np.mean(jaxrf.erf_std(m))), 4),
            "closed_form_std": round(_luo.uniform_std(depth), 4),
            "luo_size_over_rf": round(luo.size / rf_size, 4),
            "closed_form_max_abs_diff": "",
            "samples": draws * inputs if weights == "random" else inputs,
        }
        if weights == "uniform":
            exact = _luo.uniform_map(depth, m.shape[0])
            row["closed_form_max_abs_diff"] = f"{np.abs(m / m.sum() - exact).max():.2e}"
        rows.append(row)
    return rows, maps


def plot(maps: dict, rows: list[dict], meta: dict, out) -> None:
    caption = (
        "mean |input gradient| of the centre output, normalised to its max; random or uniform "
        "weights, standard-normal inputs"
    )
    _luo.plot_grid(maps, rows, meta, out, caption, annotate=False)


def main(argv=None) -> None:
    args = _common.parse_args(__doc__, argv)
    csv_path = args.out_dir / "luo_fig1.csv"
    npz_path = args.out_dir / "luo_fig1.npz"
    if not args.plot_only:
        depths = QUICK_DEPTHS if args.quick else DEPTHS
        draws, inputs = (2, 1) if args.quick else (DRAWS, INPUTS)
        rows, maps = compute(SETTINGS, depths, draws, inputs)
        _common.write_csv(
            csv_path,
            rows,
            __file__,
            "Luo et al., NeurIPS 2016, Fig. 1",
            [
                "weights: uniform (analytically set) or random LeCun-normal, seed 0; inputs "
                "synthetic standard normal; nothing trained",
                "ERF: mean |input gradient| of the centre output over all samples; Luo size: "
                "sqrt(#pixels > (1 - 0.9545) x centre value)",
            ],
        )
        # Normalised to the max first: deep random ReLU stacks have gradients near 1e-12.
        np.savez_compressed(
            npz_path, **{k: (v / v.max()).astype(np.float32) for k, v in maps.items()}
        )
    meta, rows = _common.read_csv(csv_path)
    maps = {k: v.astype(np.float64) for k, v in np.load(npz_path).items()}
    plot(maps, rows, meta, args.out_dir / "luo_fig1.png")
    print(f"wrote {csv_path}, {npz_path.name} and luo_fig1.png")


if __name__ == "__main__":
    main()
