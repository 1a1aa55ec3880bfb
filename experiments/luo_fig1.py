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

import _luo
import numpy as np

SETTINGS = {  # label: (weights, nonlinearity)
    "uniform": ("uniform", "none"),
    "random": ("random", "none"),
    "random + ReLU": ("random", "relu"),
}


def row(base: dict, m: np.ndarray, weights: str) -> dict:
    """Fig. 1's CSV row: the common columns plus the uniform case's closed form."""
    out = {k: v for k, v in base.items() if k != "nonlinearity"}
    samples = out.pop("samples")
    out["closed_form_std"] = round(_luo.uniform_std(base["depth"]), 4)
    out["luo_size_over_rf"] = out.pop("luo_size_over_rf")
    out["closed_form_max_abs_diff"] = ""
    if weights == "uniform":
        exact = _luo.uniform_map(base["depth"], m.shape[0])
        out["closed_form_max_abs_diff"] = f"{np.abs(m / m.sum() - exact).max():.2e}"
    out["samples"] = samples
    return out


FIGURE = {
    "stem": "luo_fig1",
    "script": __file__,
    "settings": SETTINGS,
    "depths": (5, 10, 20, 40),
    "quick_depths": (2, 4),
    "draws": 16,  # random weights: 16 weight draws x 4 normal inputs = 64 maps
    "inputs": 4,
    "row": row,
    "reproduces": "Luo et al., NeurIPS 2016, Fig. 1",
    "notes": [
        "weights: uniform (analytically set) or random LeCun-normal, seed 0; inputs "
        "synthetic standard normal; nothing trained",
        "ERF: mean |input gradient| of the centre output over all samples; Luo size: "
        "sqrt(#pixels > (1 - 0.9545) x centre value)",
    ],
    "caption": "mean |input gradient| of the centre output, normalised to its max; random or "
    "uniform weights, standard-normal inputs",
    "annotate": False,
}


def main(argv=None) -> None:
    _luo.run_figure(__doc__, argv, FIGURE)


if __name__ == "__main__":
    main()
