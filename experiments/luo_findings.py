"""Luo et al. 2016, Sec. 4 findings as a measured table: dropout, subsampling, dilation, skips.

Reproduces the qualitative findings of W. Luo, Y. Li, R. Urtasun, R. Zemel, "Understanding
the Effective Receptive Field in Deep Convolutional Neural Networks" (NeurIPS 2016), Sec. 2.3
and 4 (no figure of their own): dropout does not change the Gaussian ERF shape; subsampling
and dilated convolutions enlarge the ERF; skip connections make it smaller. Each is measured
against the same baseline: ``n`` 3x3 convs (padding 1, 4 channels), random He-normal weights,
ReLU after every layer (``jaxrf.models``' ``LuoStack``), at n = 10 and 20. Variants: dropout
0.5 after every layer in training mode (one mask per weight draw); stride 2 at layers 1 and 3
(0-based); kernel dilation 2 everywhere; a residual skip around every layer.

The ERF is the mean |input gradient| of the centre output over 16 weight draws x 4
standard-normal inputs (``jaxrf.effective_receptive_field``). The theoretical RF is traced
from the model (``jaxrf.receptive_field``); the input is the RF plus a margin of 8 pixels per
side, so no unit's region is clipped. The verdict column is computed from the numbers: the
ratio of the variant's ERF std to the baseline's at the same depth (dropout: "shape kept" if
within 10 %; the others: "grows" / "shrinks" by the sign of the change). Weights are random
(never trained), inputs synthetic; nothing is downloaded.

Writes results/luo_findings.csv, results/luo_findings.md (the table), results/luo_findings.npz
(maps) and results/luo_findings.png (the depth-20 maps).
"""

from __future__ import annotations

import _common
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import jaxrf
import jaxrf.models
import jaxrf.plot

BASE = {"weights": "random", "nonlinearity": "relu"}
#: label: (finding, LuoStack options on top of BASE, Luo's claim)
VARIANTS = {
    "baseline (ReLU)": ("reference", {}, "-"),
    "dropout 0.5": ("dropout", {"dropout": 0.5, "deterministic": False}, "shape kept"),
    "subsample (stride 2 at layers 1, 3)": ("subsampling", {"subsample": (1, 3)}, "grows"),
    "dilation 2": ("dilation", {"dilation": 2}, "grows"),
    "skip connections": ("skip", {"skip": True}, "shrinks"),
}
DEPTHS = (10, 20)
QUICK_DEPTHS = (4,)
DRAWS, INPUTS = 16, 4
MARGIN = 8
SHAPE_TOLERANCE = 0.10  # dropout: "shape kept" if the ERF std changes by at most 10 %


def measure(depth: int, options: dict, draws: int, inputs: int, seed: int = 0):
    """Mean |gradient| map of the centre output, the traced RF and the analytic centre."""
    model = jaxrf.models.get("luo_relu").model(depth=depth, **{**BASE, **options})
    probe = jaxrf.models.get("luo_relu").model(depth=depth, **{**BASE, **options, "dropout": 0})
    shape = (1, 64, 64, 1)  # any size: the RF of these stacks does not depend on it
    x0 = jnp.zeros(shape)
    variables = probe.init(jax.random.key(seed), x0)
    rf = jaxrf.receptive_field(lambda x: probe.apply(variables, x), x0)
    n = rf.size[0] + 2 * MARGIN
    rf = jaxrf.receptive_field(lambda x: probe.apply(variables, x), jnp.zeros((1, n, n, 1)))
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, n, n, 1))))

    def init_fn(key):  # weights and this draw's dropout key
        return init(key), jax.random.fold_in(key, 1)

    def fn(params, x):
        variables, dropout_key = params
        return model.apply(variables, x, rngs={"dropout": dropout_key})

    xs = jax.random.normal(jax.random.key(seed + 1), (inputs, n, n, 1))
    index = tuple(m // 2 for m in rf.output_shape)
    erf = jaxrf.effective_receptive_field(
        fn, xs, index, init_fn=init_fn, key=jax.random.key(seed), num_draws=draws, progress=False
    )
    center = tuple(int(round(float(c))) for c in rf.center(index))
    return erf.map, rf, index, center


def verdict(finding: str, std_ratio: float) -> str:
    if finding == "reference":
        return "-"
    if finding == "dropout":
        return "shape kept" if abs(std_ratio - 1) <= SHAPE_TOLERANCE else "shape changed"
    return "grows" if std_ratio > 1 else "shrinks"


def compute(depths, draws, inputs) -> tuple[list[dict], dict[str, np.ndarray]]:
    rows, maps = [], {}
    jobs = [(label, d) for d in depths for label in VARIANTS]
    base = {}
    for label, depth in tqdm(jobs, desc="Luo variants", unit="net"):
        finding, options, claim = VARIANTS[label]
        m, rf, index, center = measure(depth, options, draws, inputs)
        maps[f"{label}|{depth}"] = m
        std = float(np.mean(jaxrf.erf_std(m)))
        luo = jaxrf.luo_size(m, center=center)
        if finding == "reference":
            base[depth] = (std, luo.size)
        b_std, b_luo = base[depth]
        v = verdict(finding, std / b_std)
        rows.append(
            {
                "finding": finding,
                "setting": label,
                "depth": depth,
                "input_size": m.shape[0],
                "theoretical_rf": rf.size[0],
                "effective_stride": rf.stride[0],
                "erf_std": round(std, 4),
                "luo_size": round(luo.size, 4),
                "luo_size_over_rf": round(luo.size / rf.size[0], 4),
                "erf_std_over_rf": round(std / rf.size[0], 4),
                "erf_std_over_baseline": round(std / b_std, 4),
                "luo_size_over_baseline": round(luo.size / b_luo, 4),
                "luo_claim": claim,
                "verdict": v,
                "agrees_with_luo": "-" if finding == "reference" else v == claim,
                "samples": draws * inputs,
            }
        )
    return rows, maps


def markdown(rows: list[dict], meta: dict) -> str:
    cols = [
        ("depth", "depth"),
        ("setting", "setting"),
        ("theoretical_rf", "RF"),
        ("erf_std", "ERF std (px)"),
        ("luo_size", "Luo size (px)"),
        ("luo_size_over_rf", "Luo size / RF"),
        ("erf_std_over_baseline", "std / baseline"),
        ("luo_claim", "Luo et al."),
        ("verdict", "measured"),
        ("agrees_with_luo", "agrees"),
    ]
    lines = [
        "# Luo et al. (NeurIPS 2016) findings, measured",
        "",
        "| " + " | ".join(h for _, h in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r[k]) for k, _ in cols) + " |")
    lines += [
        "",
        "3x3 conv stacks, 4 channels, random He-normal weights (never trained), ReLU; ERF = mean "
        f"|input gradient| of the centre output over {rows[0]['samples']} samples (weight draws "
        "x standard-normal inputs). Verdicts computed from the ERF std ratio to the baseline "
        f"at the same depth (dropout: shape kept if within {SHAPE_TOLERANCE:.0%}). With "
        "dilation 2 in every layer the gradient lives on the even-offset lattice (a quarter of "
        "the pixels), so Luo's pixel-count size understates that ERF; the std is the fair "
        "comparison.",
        f"Generated by {meta['script']}; jax {meta['jax']}, flax {meta['flax']}, {meta['device']}.",
        "",
    ]
    return "\n".join(lines)


def plot(maps: dict, rows: list[dict], meta: dict, out) -> None:
    depth = max(int(r["depth"]) for r in rows)
    sel = [r for r in rows if int(r["depth"]) == depth]
    fig = _common.figure(2.7 * len(sel), 4.0)
    axes = fig.subplots(1, len(sel), squeeze=False)[0]
    for ax, r in zip(axes, sel, strict=True):
        m = maps[f"{r['setting']}|{depth}"]
        jaxrf.plot.erf_heatmap(ax, m / m.max(), colorbar=False, cmap="magma")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(
            f"{r['setting']}\nstd {float(r['erf_std']):.2f} px "
            f"(x{float(r['erf_std_over_baseline']):.2f}), RF {r['theoretical_rf']}",
            fontsize=8,
        )
        ax.set_xlabel(f"{m.shape[0]}x{m.shape[0]} input; {r['verdict']}", fontsize=7)
    _common.footer(
        fig,
        meta,
        f"{depth}-layer 3x3 ReLU stacks, random weights, standard-normal inputs; mean |input "
        "gradient| of the centre output, normalised to its max (each panel its own input size)",
    )
    fig.savefig(out, dpi=130)


def main(argv=None) -> None:
    args = _common.parse_args(__doc__, argv)
    stem = args.out_dir / "luo_findings"
    csv_path, npz_path = stem.with_suffix(".csv"), stem.with_suffix(".npz")
    if not args.plot_only:
        depths = QUICK_DEPTHS if args.quick else DEPTHS
        draws, inputs = (2, 1) if args.quick else (DRAWS, INPUTS)
        rows, maps = compute(depths, draws, inputs)
        _common.write_csv(
            csv_path,
            rows,
            __file__,
            "Luo et al., NeurIPS 2016, Sec. 2.3 and 4 (dropout, subsampling, dilation, skips)",
            [
                "weights: random He-normal, seed 0, never trained; inputs synthetic standard "
                "normal; dropout in training mode, one mask per weight draw",
                "verdict: from erf_std_over_baseline (dropout: shape kept if within 10 %; "
                "others: grows if > 1 else shrinks)",
            ],
        )
        np.savez_compressed(
            npz_path, **{k: (v / v.max()).astype(np.float32) for k, v in maps.items()}
        )
    meta, rows = _common.read_csv(csv_path)
    stem.with_suffix(".md").write_text(markdown(rows, meta))
    maps = {k: v.astype(np.float64) for k, v in np.load(npz_path).items()}
    plot(maps, rows, meta, stem.with_suffix(".png"))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
