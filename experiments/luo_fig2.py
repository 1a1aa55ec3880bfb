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

import _luo
import numpy as np

COLUMNS = (  # the CSV columns, in order
    "setting nonlinearity depth input_size theoretical_rf luo_size luo_count erf_std "
    "uniform_closed_form_std luo_size_over_rf max_gradient samples"
).split()

SETTINGS = {  # label: (weights, nonlinearity)
    "random + tanh": ("random", "tanh"),
    "random + sigmoid": ("random", "sigmoid"),
    "random + ReLU": ("random", "relu"),
}


def scale(depth: int, m: np.ndarray, weights: str) -> dict:
    """The uniform stack's closed-form std for reference, and the gradient's largest value."""
    return {
        "uniform_closed_form_std": round(_luo.uniform_std(depth), 4),
        "max_gradient": f"{m.max():.3e}",
    }


def main(argv=None) -> None:
    rows = _luo.run_figure(
        __doc__,
        argv,
        "luo_fig2",
        __file__,
        {"settings": SETTINGS, "extra": scale, "columns": COLUMNS},
        {
            "reproduces": "Luo et al., NeurIPS 2016, Fig. 2",
            "notes": [
                "weights: random He-normal, seed 0, never trained; inputs synthetic standard "
                "normal",
                "ERF: mean |input gradient| of the centre output over all samples; Luo size: "
                "sqrt(#pixels > (1 - 0.9545) x centre value)",
            ],
            "caption": "mean |input gradient| of the centre output, normalised to its max; "
            "random He-normal weights (never trained), standard-normal inputs",
            "annotate": True,
        },
    )
    for r in rows:
        print(
            f"{r['setting']:>17} depth {int(r['depth']):2d}: std {float(r['erf_std']):6.2f} "
            f"Luo size {float(r['luo_size']):6.2f} (RF {r['theoretical_rf']})"
        )


if __name__ == "__main__":
    main()
