"""Luo et al. 2016, Fig. 2: ERFs of 5/10/20/40-layer 3x3 stacks with tanh, sigmoid and ReLU.

Reproduces Fig. 2 of W. Luo, Y. Li, R. Urtasun, R. Zemel, "Understanding the Effective
Receptive Field in Deep Convolutional Neural Networks" (NeurIPS 2016): the effective receptive
field of the centre output of ``n`` stacked 3x3 convolutions (padding 1, stride 1, 4 channels)
with random He-normal weights and a tanh, sigmoid or ReLU after every layer. The ERF is the
mean absolute input gradient over weight draws and random normal inputs
(``jaxrf.effective_receptive_field`` through experiments/_luo.py, as for Fig. 1). Weights are
random (seed 0, never trained); inputs synthetic (standard normal); nothing is downloaded.

Writes results/luo_fig2.csv (one row per nonlinearity x depth: Luo size, ERF std, theoretical
RF, ratio), results/luo_fig2.npz (the maps, normalised to their max) and results/luo_fig2.png.
"""

from __future__ import annotations

import _common
import _luo
import numpy as np
from tqdm.auto import tqdm

import jaxrf
import jaxrf.plot

SETTINGS = {  # label: (weights, nonlinearity)
    "random + tanh": ("random", "tanh"),
    "random + sigmoid": ("random", "sigmoid"),
    "random + ReLU": ("random", "relu"),
}
DEPTHS = (5, 10, 20, 40)
QUICK_DEPTHS = (2, 4)
DRAWS, INPUTS = 16, 4  # 16 weight draws x 4 normal inputs = 64 maps per cell, as Fig. 1


def compute(settings, depths, draws, inputs) -> tuple[list[dict], dict[str, np.ndarray]]:
    rows, maps = [], {}
    jobs = [(label, d) for label in settings for d in depths]
    for label, depth in tqdm(jobs, desc="Luo stacks", unit="net"):
        weights, nonlinearity = settings[label]
        m = _luo.measure(depth, weights, nonlinearity, draws=draws, inputs_per_draw=inputs)
        maps[f"{label}|{depth}"] = m
        rf_size = 2 * depth + 1  # Distill: 1 + n (k - 1)
        luo = jaxrf.luo_size(m)
        rows.append(
            {
                "setting": label,
                "nonlinearity": nonlinearity,
                "depth": depth,
                "input_size": m.shape[0],
                "theoretical_rf": rf_size,
                "luo_size": round(luo.size, 4),
                "luo_count": luo.count,
                "erf_std": round(float(np.mean(jaxrf.erf_std(m))), 4),
                "uniform_closed_form_std": round(_luo.uniform_std(depth), 4),
                "luo_size_over_rf": round(luo.size / rf_size, 4),
                "max_gradient": f"{m.max():.3e}",
                "samples": draws * inputs,
            }
        )
    return rows, maps


def plot(maps: dict, rows: list[dict], meta: dict, out) -> None:
    caption = (
        "mean |input gradient| of the centre output, normalised to its max; random He-normal "
        "weights (never trained), standard-normal inputs"
    )
    _luo.plot_grid(maps, rows, meta, out, caption, annotate=True)


def main(argv=None) -> None:
    args = _common.parse_args(__doc__, argv)
    csv_path = args.out_dir / "luo_fig2.csv"
    npz_path = args.out_dir / "luo_fig2.npz"
    if not args.plot_only:
        depths = QUICK_DEPTHS if args.quick else DEPTHS
        draws, inputs = (2, 1) if args.quick else (DRAWS, INPUTS)
        rows, maps = compute(SETTINGS, depths, draws, inputs)
        _common.write_csv(
            csv_path,
            rows,
            __file__,
            "Luo et al., NeurIPS 2016, Fig. 2",
            [
                "weights: random He-normal, seed 0, never trained; inputs synthetic standard "
                "normal",
                "ERF: mean |input gradient| of the centre output over all samples; Luo size: "
                "sqrt(#pixels > (1 - 0.9545) x centre value)",
            ],
        )
        # Normalised to the max first: deep sigmoid stacks have gradients near 1e-20.
        np.savez_compressed(
            npz_path, **{k: (v / v.max()).astype(np.float32) for k, v in maps.items()}
        )
    meta, rows = _common.read_csv(csv_path)
    maps = {k: v.astype(np.float64) for k, v in np.load(npz_path).items()}
    plot(maps, rows, meta, args.out_dir / "luo_fig2.png")
    for r in rows:
        print(
            f"{r['setting']:>17} depth {int(r['depth']):2d}: std {float(r['erf_std']):6.2f} "
            f"Luo size {float(r['luo_size']):6.2f} (RF {r['theoretical_rf']})"
        )
    print(f"wrote {csv_path}, {npz_path.name} and luo_fig2.png")


if __name__ == "__main__":
    main()
