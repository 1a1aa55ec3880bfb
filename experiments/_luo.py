"""Luo et al. (NeurIPS 2016) conv stacks: measured ERF maps and the closed-form uniform case.

The stacks are ``jaxrf.models``' ``LuoStack`` (``depth`` 3x3 convs, padding 1, 1 input
channel, 4 features): uniform weights (every kernel entry ``1 / (k^2 c_in)``), or random
LeCun-normal weights, optionally followed by a nonlinearity. The ERF of the centre output is
``jaxrf.effective_receptive_field``: the mean over weight draws and random normal inputs of the
absolute input gradient of a one-hot cotangent at the centre (all output channels).
"""

from __future__ import annotations

import math

import _common
import jax
import jax.numpy as jnp
import numpy as np

import jaxrf
import jaxrf.models
import jaxrf.plot

KERNEL = 3


def input_size(depth: int) -> int:
    """Input side: the theoretical RF ``2 depth + 1`` plus a margin of 8 on each side."""
    return 2 * depth + 1 + 16


def measure(
    depth: int,
    weights: str,
    nonlinearity: str = "none",
    draws: int = 8,
    inputs_per_draw: int = 4,
    seed: int = 0,
    reduce: str = "abs",
    **options,
) -> np.ndarray:
    """Mean ERF map ``(H, W)`` of the centre output of a Luo stack."""
    entry = jaxrf.models.get("luo_uniform")
    model = entry.model(depth=depth, weights=weights, nonlinearity=nonlinearity, **options)
    n = input_size(depth)
    x0 = jnp.zeros((1, n, n, 1))
    init = jax.jit(lambda key: model.init(key, x0))
    uniform = weights == "uniform"
    inputs = jax.random.normal(jax.random.key(seed + 1), (inputs_per_draw, n, n, 1))
    erf = jaxrf.effective_receptive_field(
        lambda params, x: model.apply(params, x),
        inputs,
        "center",
        init_fn=init,
        key=jax.random.key(seed),
        num_draws=1 if uniform else draws,
        reduce=reduce,
        progress=False,
    )
    return erf.map


def uniform_profile(depth: int, kernel: int = KERNEL) -> np.ndarray:
    """Closed form, per axis: the ``depth``-fold convolution of a box of width ``kernel``.

    It is the distribution of a sum of ``depth`` uniform variables on ``{0..k-1}`` (times
    ``k^depth``), variance ``depth (k^2 - 1) / 12``.
    """
    profile = np.ones(1)
    for _ in range(depth):
        profile = np.convolve(profile, np.ones(kernel))
    return profile / profile.sum()


def uniform_map(depth: int, size: int, kernel: int = KERNEL) -> np.ndarray:
    """Closed-form 2-D ERF of the uniform stack, centred in a ``size x size`` map."""
    p = uniform_profile(depth, kernel)
    pad = (size - p.size) // 2
    p = np.pad(p, (pad, size - p.size - pad))
    return np.outer(p, p)


def uniform_std(depth: int, kernel: int = KERNEL) -> float:
    """``sqrt(n (k^2 - 1) / 12)``."""
    return math.sqrt(depth * (kernel**2 - 1) / 12)


def fit_slope(x, y) -> tuple[float, float]:
    """Least-squares slope and intercept of ``log y`` against ``log x``."""
    slope, intercept = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(slope), float(intercept)


def plot_grid(maps: dict, rows: list[dict], meta: dict, out, caption: str, annotate: bool) -> None:
    """ERF heatmaps, one row per setting and one column per depth (Luo et al., Figs. 1-2).

    ``annotate`` writes each map's ERF std and Luo size in its corner.
    """
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    depths = list(dict.fromkeys(int(r["depth"]) for r in rows))
    fig = _common.figure(2.6 * len(depths), 2.5 * len(settings) + 0.4)
    grid = fig.subplots(len(settings), len(depths), squeeze=False)
    for i, label in enumerate(settings):
        for j, depth in enumerate(depths):
            m = maps[f"{label}|{depth}"]
            ax = jaxrf.plot.erf_heatmap(grid[i, j], m / m.max(), colorbar=False, cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if annotate:
                row = next(r for r in rows if r["setting"] == label and int(r["depth"]) == depth)
                ax.text(
                    0.03,
                    0.03,
                    f"std {float(row['erf_std']):.2f}, Luo {float(row['luo_size']):.1f}",
                    transform=ax.transAxes,
                    color="white",
                    fontsize=7,
                )
            if i == 0:
                ax.set_title(f"{depth} layers ({m.shape[0]}x{m.shape[0]} input)", fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=10)
    _common.footer(fig, meta, caption)
    fig.savefig(out, dpi=130)


DEPTHS, QUICK_DEPTHS = (5, 10, 20, 40), (2, 4)
DRAWS, INPUTS = 16, 4  # random weights: 16 weight draws x 4 normal inputs = 64 maps per cell


def compute(settings, depths, draws, inputs, extra, columns):
    """ERF maps of every (setting, depth) and one CSV row each.

    ``settings`` maps a label to ``(weights, nonlinearity)``. Every row has the common columns
    (setting, nonlinearity, depth, sizes, Luo size, std, ratio, samples) plus
    ``extra(depth, m, weights)``'s, and keeps ``columns`` in that order.
    """
    from tqdm.auto import tqdm

    rows, maps = [], {}
    jobs = [(label, d) for label in settings for d in depths]
    for label, depth in tqdm(jobs, desc="Luo stacks", unit="net"):
        weights, nonlinearity = settings[label]
        m = measure(depth, weights, nonlinearity, draws=draws, inputs_per_draw=inputs)
        maps[f"{label}|{depth}"] = m
        rf_size = 2 * depth + 1  # Distill: 1 + n (k - 1)
        luo = jaxrf.luo_size(m)
        row = {
            "setting": label,
            "nonlinearity": nonlinearity,
            "depth": depth,
            "input_size": m.shape[0],
            "theoretical_rf": rf_size,
            "luo_size": round(luo.size, 4),
            "luo_count": luo.count,
            "erf_std": round(float(np.mean(jaxrf.erf_std(m))), 4),
            "luo_size_over_rf": round(luo.size / rf_size, 4),
            "samples": draws * inputs if weights == "random" else inputs,
            **extra(depth, m, weights),
        }
        rows.append({c: row[c] for c in columns})
    return rows, maps


def run_figure(doc: str, argv, stem: str, script: str, measured: dict, written: dict):
    """The shared body of luo_fig1 / luo_fig2: measure (unless ``--plot-only``), write, plot.

    ``measured`` holds ``settings``, ``extra`` and ``columns`` (see :func:`compute`);
    ``written`` holds ``reproduces`` and ``notes`` (CSV provenance), ``caption`` and
    ``annotate`` (for :func:`plot_grid`). Writes ``results/STEM.csv``, ``STEM.npz`` (maps
    normalised to their max: deep random stacks have gradients near 1e-20) and ``STEM.png``;
    returns the CSV's rows.
    """
    args = _common.parse_args(doc, argv)
    csv_path = args.out_dir / f"{stem}.csv"
    npz_path = args.out_dir / f"{stem}.npz"
    if not args.plot_only:
        depths = QUICK_DEPTHS if args.quick else DEPTHS
        draws, inputs = (2, 1) if args.quick else (DRAWS, INPUTS)
        rows, maps = compute(
            measured["settings"], depths, draws, inputs, measured["extra"], measured["columns"]
        )
        _common.write_csv(csv_path, rows, script, written["reproduces"], written["notes"])
        np.savez_compressed(
            npz_path, **{k: (v / v.max()).astype(np.float32) for k, v in maps.items()}
        )
    meta, rows = _common.read_csv(csv_path)
    maps = {k: v.astype(np.float64) for k, v in np.load(npz_path).items()}
    out = args.out_dir / f"{stem}.png"
    plot_grid(maps, rows, meta, out, written["caption"], annotate=written["annotate"])
    print(f"wrote {csv_path}, {npz_path.name} and {stem}.png")
    return rows
