"""Theory vs measurement for every network of the jaxrf zoo: Markdown and LaTeX tables.

For each ``jaxrf.models`` entry: the analytic receptive field (size / effective stride /
effective padding, traced from the Flax model with ``jaxrf.receptive_field``) at the zoo's
reference input, next to the published (Araujo et al., Distill 2019, TF-Slim table) or
hand-derived numbers; then, at a smaller measurement input, the centre output's clipped
theoretical region ``rf.region(centre, clip=True)`` against the measured structural support
box (``jaxrf.actual_receptive_field(mode="structural")``: every dependency the program can
have, whatever the weights), and the effective receptive field of that output (Luo et al.,
NeurIPS 2016: mean |input gradient| over standard-normal inputs): its std, Luo size (the
paper's rule), RepLKNet area ratios (Ding et al., CVPR 2022) and the share of its mass inside
the theoretical region. No paper figure: this is the paper-ready table of issue 6.

Input sizes (the run is compile-bound: about 2.5 min of CPU time, 7 min wall on a shared,
loaded 2-core machine): 64x64 for the ImageNet
networks (67x67 for AlexNet v2 and 75x75 for Inception v3, their smallest inputs; 65x65 for
the DeepLab nets), the zoo's own reference input for the toys (16 to 64 pixels). At these
sizes the theoretical RF of every ImageNet network covers the whole image, so its ERF share
inside is 100 % by construction.
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

IMAGENET_SIZE = 64
SIZE_OVERRIDES = {"deeplab_os8": 65, "deeplab_os16": 65}
SAMPLES = 4
QUICK_NAMES = ("distill_misaligned", "luo_relu", "unet")
THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def measure_size(entry) -> int:
    side = entry.input_shape[1]
    small = entry.small_input_shape[1]  # the smallest input the zoo runs the net on
    return SIZE_OVERRIDES.get(entry.name, max(IMAGENET_SIZE, small) if side >= 128 else side)


def _fmt(values) -> str:
    parts = [str(v) for v in values]
    return parts[0] if len(set(parts)) == 1 else "x".join(parts)


def _box(box) -> str:
    return "empty" if box is None else " x ".join(f"[{lo}, {hi}]" for lo, hi in box)


def analyse(name: str, samples: int, seed: int = 0) -> dict:
    started = time.perf_counter()
    entry = jaxrf.models.get(name)
    fn = entry.build(jax.random.key(seed))
    ref = jaxrf.receptive_field(fn, jax.ShapeDtypeStruct(entry.input_shape, jnp.float32))
    n = measure_size(entry)
    shape = (1, n, n, entry.input_shape[-1])
    rf = jaxrf.receptive_field(fn, jax.ShapeDtypeStruct(shape, jnp.float32))
    index = tuple(m // 2 for m in rf.output_shape)
    clipped = rf.region(index, clip=True)
    structural = jaxrf.actual_receptive_field(fn, jnp.zeros(shape), index, mode="structural")
    xs = jax.random.normal(jax.random.key(seed + 1), (samples, *shape[1:]))
    erf = jaxrf.effective_receptive_field(fn, xs, index, progress=False)
    center = tuple(min(max(int(round(float(c))), 0), n - 1) for c in rf.center(index))
    luo = erf.luo_size(center=center)
    area = erf.area_ratio(THRESHOLDS)
    exp = entry.expected
    expected = "-" if exp is None else f"{_fmt(exp.size)}/{_fmt(exp.stride)}/{_fmt(exp.padding)}"
    got = f"{_fmt(ref.size)}/{_fmt(ref.stride)}/{_fmt(ref.padding)}"
    row = {
        "network": name,
        "reference_input": f"{entry.input_shape[1]}x{entry.input_shape[2]}",
        "size": _fmt(ref.size),
        "stride": _fmt(ref.stride),
        "padding": _fmt(ref.padding),
        "aligned": ref.aligned,
        "expected_size_stride_padding": expected,
        "matches_expected": "-" if exp is None else got == expected,
        "expected_source": "-" if exp is None else exp.source,
        "measure_input": f"{n}x{n}",
        "centre_output": "x".join(map(str, index)),
        "clipped_region": _box(clipped),
        "structural_box": _box(structural.box),
        "structural_equals_clipped": "yes" if structural.box == clipped else "no",
        "erf_std": round(float(np.mean(erf.std())), 3),
        "luo_size": "-" if luo.size is None else round(luo.size, 3),
        "luo_size_over_rf": "-" if luo.size is None else round(luo.size / ref.size[0], 4),
        "erf_samples": erf.count,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for t, r in zip(THRESHOLDS, area.ratios, strict=True):
        row[f"area_ratio_{round(100 * t)}"] = "-" if r is None else round(100 * r, 2)
    row["erf_share_in_rf"] = "-" if clipped is None else round(erf.share_inside(clipped), 4)
    return row


COLUMNS = [  # (csv key, Markdown / LaTeX header)
    ("network", "network"),
    ("size", "RF"),
    ("stride", "S"),
    ("padding", "P"),
    ("matches_expected", "= published"),
    ("measure_input", "input"),
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
        "with Araujo et al.'s table or a hand derivation. At the measurement input: the centre "
        "output's clipped theoretical region vs the measured structural support box; ERF "
        f"(mean |input gradient| over {samples} standard-normal inputs, random weights, never "
        "trained): "
        "std (px, mean of the two axes), Luo size (sqrt of #pixels above 4.55% of the centre), "
        "RepLKNet area ratios (centred square holding 20/30/50/99% of log10(1 + ERF)), share of "
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
    spec = "l" + "r" * 3 + "c" + "r" + "ll" + "c" + "r" * 7
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
        _common.write_csv(
            csv_path,
            rows,
            __file__,
            "theory vs measured for the zoo (issue 6; Araujo et al. 2019, Luo et al. 2016, "
            "Ding et al. 2022 statistics)",
            [
                "weights: random (zoo fixed-seed He-normal fill, batch norm at identity; "
                "luo_uniform analytically set), never trained; inputs synthetic standard normal",
                f"measurement inputs: {IMAGENET_SIZE}x{IMAGENET_SIZE} for ImageNet nets, "
                f"overrides {SIZE_OVERRIDES}, the reference input for the toys",
            ],
        )
    meta, rows = _common.read_csv(csv_path)
    stem.with_suffix(".md").write_text(markdown(rows, meta))
    stem.with_suffix(".tex").write_text(latex(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
