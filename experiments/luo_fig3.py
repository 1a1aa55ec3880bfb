"""Luo et al. 2016, Fig. 3: ERF size and ERF / theoretical-RF ratio against depth, log-log.

Reproduces Fig. 3 of Luo, Li, Urtasun, Zemel, "Understanding the Effective Receptive Field in
Deep Convolutional Neural Networks" (NeurIPS 2016): the ERF size by the paper's rule
(``sqrt`` of the number of pixels above ``1 - 0.9545`` of the centre value) of 3x3 stacks of
5/10/20/40 layers, and its ratio to the theoretical RF ``2n + 1``, with least-squares slopes
in log-log (the paper reports 0.56 and -0.43; the theory says 0.5 and -0.5). The measured
points are those of experiments/luo_fig1.py (read from results/luo_fig1.csv; run it first, or
this script runs it). Overlaid: the closed-form uniform case, exact (the n-fold convolution of
a box of width 3 on the pixel grid, for every n from 2 to 80) and its Gaussian limit
``sqrt(2 pi ln(1/0.0455)) sigma = 4.41 sigma`` with ``sigma^2 = n (k^2 - 1) / 12``.
Weights are uniform (analytically set) or random; inputs synthetic; nothing trained.

Writes results/luo_fig3.csv (one row per setting x quantity: fitted slope and intercept) and
results/luo_fig3.png.
"""

from __future__ import annotations

import math

import _common
import _luo
import luo_fig1
import numpy as np
from matplotlib.ticker import NullFormatter, ScalarFormatter

import jaxrf

PAPER = {"size": 0.56, "ratio": -0.43}
THEORY = {"size": 0.5, "ratio": -0.5}
GAUSS = math.sqrt(2 * math.pi * math.log(1 / (1 - 0.9545)))  # 4.41


def closed_form(depths) -> list[tuple[int, float]]:
    """Exact Luo size of the uniform stack's ERF (outer product of the box convolutions)."""
    out = []
    for n in depths:
        m = _luo.uniform_map(n, 2 * n + 1)
        out.append((n, jaxrf.luo_size(m).size))
    return out


def compute(rows1: list[dict]) -> list[dict]:
    rows = []
    settings = list(dict.fromkeys(r["setting"] for r in rows1))
    for label in settings:
        pts = [r for r in rows1 if r["setting"] == label]
        depth = [int(r["depth"]) for r in pts]
        size = [float(r["luo_size"]) for r in pts]
        ratio = [float(r["luo_size_over_rf"]) for r in pts]
        for quantity, values in (("size", size), ("ratio", ratio)):
            slope, intercept = _luo.fit_slope(depth, values)
            rows.append(
                {
                    "setting": label,
                    "quantity": quantity,
                    "depths": " ".join(map(str, depth)),
                    "slope": round(slope, 4),
                    "intercept": round(intercept, 4),
                    "theory_slope": THEORY[quantity],
                    "paper_slope": PAPER[quantity],
                    "within_0.1_of_theory": abs(slope - THEORY[quantity]) <= 0.1,
                }
            )
    exact = closed_form(range(2, 81))
    for quantity in ("size", "ratio"):
        d = [n for n, _ in exact if n >= 5]
        v = [s if quantity == "size" else s / (2 * n + 1) for n, s in exact if n >= 5]
        slope, intercept = _luo.fit_slope(d, v)
        rows.append(
            {
                "setting": "closed form (uniform, exact)",
                "quantity": quantity,
                "depths": "5..80",
                "slope": round(slope, 4),
                "intercept": round(intercept, 4),
                "theory_slope": THEORY[quantity],
                "paper_slope": PAPER[quantity],
                "within_0.1_of_theory": abs(slope - THEORY[quantity]) <= 0.1,
            }
        )
    return rows


def plot(rows1: list[dict], fits: list[dict], meta: dict, out) -> None:
    fig = _common.figure(10, 4.2)
    axes = fig.subplots(1, 2)
    exact = closed_form(range(2, 81))
    n = np.array([d for d, _ in exact], float)
    sigma = np.sqrt(n * 8 / 12)
    for ax, quantity in zip(axes, ("size", "ratio"), strict=True):
        scale = 1 if quantity == "size" else 1 / (2 * n + 1)
        ax.plot(
            n,
            np.array([s for _, s in exact]) * scale,
            color="0.3",
            lw=1.5,
            label="closed form, uniform (exact)",
        )
        ax.plot(
            n,
            GAUSS * sigma * scale,
            color="0.3",
            ls=":",
            lw=1.5,
            label=r"Gaussian limit $4.41\sqrt{n(k^2-1)/12}$",
        )
        for k, label in enumerate(dict.fromkeys(r["setting"] for r in rows1)):
            pts = [r for r in rows1 if r["setting"] == label]
            d = np.array([int(r["depth"]) for r in pts], float)
            key = "luo_size" if quantity == "size" else "luo_size_over_rf"
            v = np.array([float(r[key]) for r in pts])
            fit = next(f for f in fits if f["setting"] == label and f["quantity"] == quantity)
            slope, intercept = float(fit["slope"]), float(fit["intercept"])
            ax.plot(d, v, "o", color=f"C{k}", label=f"{label}: slope {slope:.2f}")
            ax.plot(d, np.exp(intercept) * d**slope, "-", color=f"C{k}", lw=1, alpha=0.7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([2, 5, 10, 20, 40, 80], labels=["2", "5", "10", "20", "40", "80"])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("number of layers n")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_yticks([5, 7, 10, 15, 20, 30], labels=["5", "7", "10", "15", "20", "30"])
    axes[1].set_yticks([0.2, 0.3, 0.5, 0.7, 1.0], labels=["0.2", "0.3", "0.5", "0.7", "1.0"])
    axes[0].set_ylabel("ERF size (Luo's rule, px)")
    axes[0].set_title(f"ERF size (theory slope 0.5, paper {PAPER['size']})", fontsize=10)
    axes[1].set_ylabel("ERF size / theoretical RF (2n + 1)")
    axes[1].set_title(f"ERF / RF ratio (theory slope -0.5, paper {PAPER['ratio']})", fontsize=10)
    _common.footer(fig, meta, "3x3 stacks, uniform or random weights, standard-normal inputs")
    fig.savefig(out, dpi=130)


def main(argv=None) -> None:
    args = _common.parse_args(__doc__, argv)
    fig1_csv = args.out_dir / "luo_fig1.csv"
    if not fig1_csv.exists():
        luo_fig1.main(["--out-dir", str(args.out_dir)] + (["--quick"] if args.quick else []))
    _, rows1 = _common.read_csv(fig1_csv)
    csv_path = args.out_dir / "luo_fig3.csv"
    if not args.plot_only:
        fits = compute(rows1)
        _common.write_csv(
            csv_path,
            fits,
            __file__,
            "Luo et al., NeurIPS 2016, Fig. 3",
            [
                "measured points from results/luo_fig1.csv (uniform or random weights, "
                "standard-normal inputs, nothing trained)",
                "slope: least squares of log(value) on log(depth)",
            ],
        )
    meta, fits = _common.read_csv(csv_path)
    plot(rows1, fits, meta, args.out_dir / "luo_fig3.png")
    for f in fits:
        print(
            f"{f['setting']:>30} {f['quantity']:>5}: slope {float(f['slope']):+.3f} "
            f"(theory {f['theory_slope']}, paper {f['paper_slope']})"
        )


if __name__ == "__main__":
    main()
