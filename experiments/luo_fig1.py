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

COLUMNS = (  # the CSV columns, in order
    "setting depth input_size theoretical_rf luo_size luo_count erf_std closed_form_std "
    "luo_size_over_rf closed_form_max_abs_diff samples"
).split()


def closed_form(depth: int, m: np.ndarray, weights: str) -> dict:
    """The uniform case's closed form (n-fold box convolution) and the map's distance to it."""
    diff = ""
    if weights == "uniform":
        diff = f"{np.abs(m / m.sum() - _luo.uniform_map(depth, m.shape[0])).max():.2e}"
    return {"closed_form_std": round(_luo.uniform_std(depth), 4), "closed_form_max_abs_diff": diff}


def main(argv=None) -> None:
    _luo.run_figure(
        __doc__,
        argv,
        "luo_fig1",
        __file__,
        {"settings": SETTINGS, "extra": closed_form, "columns": COLUMNS},
        {
            "reproduces": "Luo et al., NeurIPS 2016, Fig. 1",
            "notes": [
                "weights: uniform (analytically set) or random LeCun-normal, seed 0; inputs "
                "synthetic standard normal; nothing trained",
                "ERF: mean |input gradient| of the centre output over all samples; Luo size: "
                "sqrt(#pixels > (1 - 0.9545) x centre value)",
            ],
            "caption": "mean |input gradient| of the centre output, normalised to its max; "
            "random or uniform weights, standard-normal inputs",
            "annotate": False,
        },
    )


if __name__ == "__main__":
    main()
