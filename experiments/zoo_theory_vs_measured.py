"""Theory vs measurement for every network of the jaxrf zoo: Markdown and LaTeX tables.

For each ``jaxrf.models`` entry: the analytic receptive field (size / effective stride /
effective padding, traced from the Flax model with ``jaxrf.receptive_field``) at the zoo's
reference input, next to the published (Araujo et al., Distill 2019, TF-Slim table) or
hand-derived numbers; then, at a measurement input, one output unit's clipped theoretical region
``rf.region(index, clip=True)`` against the measured structural support box
(``jaxrf.actual_receptive_field(mode="structural")``: every dependency the program can have,
whatever the weights), and the effective receptive field of that unit (Luo et al., NeurIPS 2016:
mean |input gradient| over standard-normal inputs): its std, Luo size (the paper's rule),
RepLKNet area ratios (Ding et al., CVPR 2022) and the share of its mass inside the theoretical
region. No paper figure: a paper-ready table.

The comparison can fail only where the clipped region is smaller than the image, so every row
is measured there (the CSV's ``whole_image`` column says so per row, a note counts them): the
toys at their reference input (16 to 64 px), centre unit; the ImageNet-scale nets and DeepLab,
whose RFs (195 to 1507 px) exceed any affordable image, at the corner unit ``(0, 0)`` of the
smallest input whose corner region ``[0, r - 1 - P]`` leaves part of the image out. Today's
families (Swin, MaxViT, the PixelShuffle decoder, the ``nn.scan`` stack) are local and measured
like the toys; the ViT with registers is global by design (its CLS token attends to every
patch), so its only unit reads the whole image and its row is a whole-image row on purpose.

``luo_dropout``'s ERF is measured with dropout active (rate 0.5) and ``DROPOUT_MASKS`` masks per
input, so it averages over masks as in training; ``luo_relu`` is the same stack with the same
weights and no dropout. Dropout scales surviving activations by ``1 / (1 - p)`` and zeroes the
others, so a mask can only remove dependencies: its structural box is measured with dropout off,
the union over all masks, which is what the theoretical region describes.
Weights are random (the zoo's fixed-seed He-normal fill, batch norm at identity; Luo's uniform
stack analytically set); images synthetic; nothing is trained or downloaded.

Writes results/zoo_theory_vs_measured.csv, .md and .tex (and no figure).
"""

from __future__ import annotations

import time

import _common
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import jaxrf
import jaxrf.models

SAMPLES = 4
DROPOUT_MASKS = 8  # luo_dropout: dropout active, this many masks per input (as in training)
QUICK_NAMES = ("distill_misaligned", "luo_dropout", "unet", "alexnet_v2")
THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
SIDE_STEP = 8  # input sides tried for the corner unit grow by this much


def _smaller_than_image(region, side: int) -> bool:
    """True when the clipped region leaves part of the image out on every axis."""
    return region is not None and all(hi - lo + 1 < side for lo, hi in region)


def _as_map(fn):
    """``fn`` with a (batch, features) output (a ViT's CLS features) seen as a 1x1 map."""

    def mapped(x):
        y = fn(x)
        return y.reshape(y.shape[0], 1, 1, y.shape[1]) if y.ndim == 2 else y

    return mapped


def _trace(fn, side: int, channels: int):
    shape = jax.ShapeDtypeStruct((1, side, side, channels), jnp.float32)
    return jaxrf.receptive_field(fn, shape)


def measurement_point(entry, fn, ref):
    """Input side, output unit and its clipped region, chosen so that theory can fail.

    The toys (reference input under 128 px) are measured at their reference input, at the
    centre unit; a global network (every output reads the whole input) at its reference input
    and its first unit. The ImageNet-scale nets and DeepLab have RFs (195 to 1507 px) larger
    than any affordable image, so they are measured at the corner unit ``(0, 0)``: its clipped
    region is ``[0, r - 1 - P]`` per axis, and the side is the smallest (from ``r - P + 1``, in
    steps of ``SIDE_STEP``) at which that region is smaller than the image on both axes.
    """
    channels = entry.input_shape[-1]
    side = entry.input_shape[1]
    if ref.is_global:  # global by design (a ViT's CLS token): the whole image, on purpose
        index = (0,) * len(ref.output_shape)
        return side, ref, index, ref.region(index, clip=True), "global"
    corner = side >= 128
    if corner:
        side = max(r - p + 1 for r, p in zip(ref.size, ref.padding, strict=True))
    while True:
        rf = _trace(fn, side, channels)
        index = (0,) * len(rf.output_shape) if corner else tuple(n // 2 for n in rf.output_shape)
        region = rf.region(index, clip=True)
        if _smaller_than_image(region, side):
            return side, rf, index, region, "corner" if corner else "centre"
        if not corner:
            raise SystemExit(f"{entry.name}: the centre unit sees the whole {side}px image")
        side += SIDE_STEP


def measure_erf(entry, shape, index, samples: int, seed: int):
    """The ERF, with dropout active and ``DROPOUT_MASKS`` masks for a net that has dropout."""
    xs = jax.random.normal(jax.random.key(seed + 1), (samples, *shape[1:]))
    if not entry.options.get("dropout"):
        fn = _as_map(entry.build(jax.random.key(seed)))
        return jaxrf.effective_receptive_field(fn, xs, index, progress=False)
    module = entry.model(deterministic=False)
    variables = entry.init(jax.random.key(seed))

    def masked(key, x):
        return module.apply(variables, x, rngs={"dropout": key})

    return jaxrf.effective_receptive_field(
        masked,
        xs,
        index,
        init_fn=lambda key: key,  # a "parameter draw" is a dropout key
        key=jax.random.key(seed + 2),
        num_draws=DROPOUT_MASKS,
        progress=False,
    )


def _expected_text(exp) -> str:
    if exp is None:
        return "-"
    return f"{_common.fmt(exp.size)}/{_common.fmt(exp.stride)}/{_common.fmt(exp.padding)}"


def _box(box) -> str:
    return "empty" if box is None else " x ".join(f"[{lo}, {hi}]" for lo, hi in box)


def analyse(name: str, samples: int, seed: int = 0) -> dict:
    started = time.perf_counter()
    entry = jaxrf.models.get(name)
    fn = _as_map(entry.build(jax.random.key(seed)))
    ref = _trace(fn, entry.input_shape[1], entry.input_shape[-1])
    n, rf, index, clipped, unit = measurement_point(entry, fn, ref)
    shape = (1, n, n, entry.input_shape[-1])
    structural = jaxrf.actual_receptive_field(fn, jnp.zeros(shape), index, mode="structural")
    erf = measure_erf(entry, shape, index, samples, seed)
    center = tuple(min(max(int(round(float(c))), 0), n - 1) for c in rf.center(index))
    luo = erf.luo_size(center=center)
    area = erf.area_ratio(THRESHOLDS, center=center)
    expected = _expected_text(entry.expected)
    got = _expected_text(ref)
    row = {
        "network": name,
        "reference_input": f"{entry.input_shape[1]}x{entry.input_shape[2]}",
        "size": _common.fmt(ref.size),
        "stride": _common.fmt(ref.stride),
        "padding": _common.fmt(ref.padding),
        "aligned": ref.aligned,
        "expected_size_stride_padding": expected,
        "matches_expected": "-" if entry.expected is None else got == expected,
        "expected_source": "-" if entry.expected is None else entry.expected.source,
        "measure_input": f"{n}x{n}",
        "output_unit": unit,
        "output_index": "x".join(map(str, index)),
        "clipped_region": _box(clipped),
        "whole_image": not _smaller_than_image(clipped, n),
        "structural_box": _box(structural.box),
        "structural_equals_clipped": "yes" if structural.box == clipped else "no",
        "erf_std": round(float(np.mean(erf.std())), 3),
        "luo_size": "-" if luo.size is None else round(luo.size, 3),
        "luo_size_over_rf": "-" if luo.size is None else round(luo.size / ref.size[0], 4),
        "erf_samples": erf.count,
        "dropout_masks": DROPOUT_MASKS if entry.options.get("dropout") else 0,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for t, r in zip(THRESHOLDS, area.ratios, strict=True):
        row[f"area_ratio_{round(100 * t)}"] = "-" if r is None else round(100 * r, 2)
    row["erf_share_in_rf"] = round(erf.share_inside(clipped), 4)
    return row


COLUMNS = [  # (csv key, Markdown / LaTeX header)
    ("network", "network"),
    ("size", "RF"),
    ("stride", "S"),
    ("padding", "P"),
    ("matches_expected", "= published"),
    ("measure_input", "input"),
    ("output_index", "unit"),
    ("clipped_region", "clipped region (theory)"),
    ("structural_box", "structural support"),
    ("structural_equals_clipped", "equal"),
    ("erf_std", "ERF std"),
    ("luo_size", "Luo size"),
    ("area_ratio_20", "AR 20%"),
    ("area_ratio_30", "AR 30%"),
    ("area_ratio_50", "AR 50%"),
    ("area_ratio_99", "AR 99%"),
    ("erf_share_in_rf", "ERF in RF"),
]


def _cell(row, key) -> str:
    value = row[key]
    if key == "erf_share_in_rf" and value != "-":
        return f"{100 * float(value):.1f}%"
    if key.startswith("area_ratio") and value != "-":
        return f"{float(value):.1f}%"
    return str(value)


def caption(meta: dict, samples: str) -> str:
    return (
        "RF / S / P: theoretical size, effective stride and effective padding traced at the "
        "zoo's reference input (224x224 for the ImageNet nets); '= published' compares them "
        "with Araujo et al.'s table or a hand derivation. At the measurement input: the unit's "
        "clipped theoretical region (centre unit for the toys and today's local families, "
        "corner unit (0, 0) for the ImageNet-scale nets and DeepLab; smaller than the image in "
        "every row but the ViT's, global by design: its CLS token attends to every patch) vs "
        "the measured "
        "structural support box; ERF "
        f"(mean |input gradient| over {samples} standard-normal inputs, random weights, never "
        "trained): "
        "std (px, mean of the two axes), Luo size (sqrt of #pixels above 4.55% of the centre), "
        "RepLKNet area ratios (square centred on the unit's theoretical centre holding "
        "20/30/50/99% of log10(1 + ERF)), share of "
        "the ERF inside the clipped region; '-': no square smaller than the image holds that "
        "share (RepLKNet's search stops short of the whole image). "
        f"{meta['script']}; jax {meta['jax']}, flax "
        f"{meta['flax']}, {meta['device']}."
    )


def markdown(rows, meta) -> str:
    lines = [
        "# Theory vs measurement for the jaxrf zoo",
        "",
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(r, k) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines + ["", caption(meta, rows[0]["erf_samples"]), ""])


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&")):
        text = text.replace(a, b)
    return text


def latex(rows, meta) -> str:
    spec = "l" + "r" * 3 + "c" + "rl" + "ll" + "c" + "r" * 7
    lines = [
        "% Generated by experiments/zoo_theory_vs_measured.py; needs \\usepackage{booktabs}.",
        "\\begin{table*}",
        "\\centering\\scriptsize",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(_tex(h) for _, h in COLUMNS) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(_tex(_cell(r, k)) for k, _ in COLUMNS) + " \\\\" for r in rows]
    lines += [
        "\\bottomrule",
        "\\end{tabular}",
        f"\\caption{{{_tex(caption(meta, rows[0]['erf_samples']))}}}",
        "\\label{tab:jaxrf-zoo}",
        "\\end{table*}",
        "",
    ]
    return "\n".join(lines)


def write(csv_path, rows) -> None:
    """The CSV with its provenance notes (the count of whole-image rows among them)."""
    whole = [r["network"] for r in rows if r["whole_image"] in (True, "True")]
    _common.write_csv(
        csv_path,
        rows,
        __file__,
        "theory vs measured for the zoo (Araujo et al. 2019 table; Luo et al. 2016 ERF; "
        "Ding et al. 2022 area ratios)",
        [
            "weights: random (zoo fixed-seed He-normal fill, batch norm at identity; "
            "luo_uniform analytically set), never trained; inputs synthetic standard normal",
            "measured unit: the centre at the reference input (toys, today's local families); "
            "the corner (0, 0) at the smallest input where its clipped region is smaller than "
            "the image (ImageNet-scale nets, DeepLab); the only unit of a global network",
            "whole-image rows (clipped region = the whole image on some axis"
            + (f"; {', '.join(whole)}: global by design" if whole else "")
            + f"): {len(whole)}",
            f"luo_dropout: dropout 0.5 active, {DROPOUT_MASKS} masks per input; luo_relu is "
            "the same stack and weights without dropout",
        ],
    )


def main(argv=None) -> None:
    args = _common.parse_args(__doc__, argv)
    stem = args.out_dir / "zoo_theory_vs_measured"
    csv_path = stem.with_suffix(".csv")
    if not args.plot_only:
        names = QUICK_NAMES if args.quick else jaxrf.models.names()
        samples = 1 if args.quick else SAMPLES
        rows = []
        for name in tqdm(names, desc="zoo", unit="net"):
            rows.append(analyse(name, samples))
            tqdm.write(f"{name}: {rows[-1]['seconds']} s")
        write(csv_path, rows)
    meta, rows = _common.read_csv(csv_path)
    stem.with_suffix(".md").write_text(markdown(rows, meta))
    stem.with_suffix(".tex").write_text(latex(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
