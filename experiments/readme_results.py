"""Rewrite the README's results section from results/*.csv (nothing else in README.md changes).

Only the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` is replaced: one
row per result, each linking to the script that produced it and to its figure, with the
software versions and device read from the CSV's provenance lines.
"""

from __future__ import annotations

import sys

import _common

README = _common.ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _f(value, digits=2) -> str:
    return f"{float(value):.{digits}f}"


def _summaries() -> dict:
    """stem -> function(rows) -> one-line finding."""

    def luo_fig1(rows):
        deep = [r for r in rows if int(r["depth"]) == max(int(x["depth"]) for x in rows)]
        parts = [f"{r['setting']} {_f(r['luo_size'], 1)} px" for r in deep]
        uni = [r for r in rows if r["setting"] == "uniform" and r["closed_form_max_abs_diff"]]
        worst = max(float(r["closed_form_max_abs_diff"]) for r in uni) if uni else None
        text = (
            f"ERF size at {deep[0]['depth']} layers (RF {deep[0]['theoretical_rf']}): "
            + ", ".join(parts)
        )
        if worst is not None:
            text += f"; uniform case equals the closed form to {worst:.0e}"
        return text

    def luo_fig3(rows):
        parts = [
            f"{r['setting']}: {_f(r['slope'])} / "
            + _f(
                next(x for x in rows if x["setting"] == r["setting"] and x["quantity"] == "ratio")[
                    "slope"
                ]
            )
            for r in rows
            if r["quantity"] == "size"
        ]
        return "log-log slopes (size / ratio; theory 0.5 / -0.5, paper 0.56 / -0.43): " + "; ".join(
            parts
        )

    def distill_alignment(rows):
        nets = dict.fromkeys(r["network"] for r in rows)
        return "per-position regions: " + ", ".join(
            f"{n}: aligned={next(r['aligned'] for r in rows if r['network'] == n)}" for n in nets
        )

    def feature_map_visualisation(rows):
        agree = all(r["agree"] == "True" for r in rows)
        last = rows[-1]
        return (
            f"Dang Ha The Hien's (n, j, r, start) recurrence "
            f"{'agrees' if agree else 'DISAGREES'} with "
            f"jaxrf on every layer; e.g. {last['input_size']}x{last['input_size']} "
            f"{last['layer']}: "
            f"n {last['n']}, j {last['jump']}, r {last['size']}"
        )

    def luo_fig2(rows):
        deep = [r for r in rows if int(r["depth"]) == max(int(x["depth"]) for x in rows)]
        parts = [f"{r['setting']} {_f(r['luo_size'], 1)} px (std {_f(r['erf_std'])})" for r in deep]
        return (
            f"ERF size at {deep[0]['depth']} layers (RF {deep[0]['theoretical_rf']}): "
            + ", ".join(parts)
        )

    def luo_findings(rows):
        deep = [r for r in rows if int(r["depth"]) == max(int(x["depth"]) for x in rows)]
        parts = [
            f"{r['finding']} {r['verdict']} (std x{_f(r['erf_std_over_baseline'])})"
            for r in deep
            if r["finding"] != "reference"
        ]
        agree = sum(r["agrees_with_luo"] == "True" for r in rows)
        total = sum(r["finding"] != "reference" for r in rows)
        return (
            f"at {deep[0]['depth']} ReLU layers vs baseline: " + ", ".join(parts) + f"; "
            f"{agree}/{total} rows agree with Luo et al. ([table](results/luo_findings.md))"
        )

    def zoo_theory_vs_measured(rows):
        equal = sum(r["structural_equals_clipped"] == "yes" for r in rows)
        known = [r for r in rows if r["matches_expected"] != "-"]
        match = sum(r["matches_expected"] == "True" for r in known)
        whole = sum(r.get("whole_image") != "False" for r in rows)
        by_name = {r["network"]: r for r in rows}
        text = (
            f"{len(rows)} zoo nets: traced size/stride/padding equal the published or "
            f"hand-derived values for {match}/{len(known)}; structural support box equals the "
            f"clipped theoretical region for {equal}/{len(rows)}, each measured where that "
            f"region is smaller than the image (corner units for the ImageNet-scale nets and "
            f"DeepLab; whole-image rows: {whole})"
        )
        if "luo_dropout" in by_name and "luo_relu" in by_name:
            drop, relu = by_name["luo_dropout"], by_name["luo_relu"]
            text += (
                f"; luo_dropout with dropout active ({drop['dropout_masks']} masks): ERF std "
                f"{_f(drop['erf_std'])} px vs luo_relu {_f(relu['erf_std'])} px, Luo size "
                f"{_f(drop['luo_size'], 1)} vs {_f(relu['luo_size'], 1)}"
            )
        return (
            text + " ([md](results/zoo_theory_vs_measured.md), "
            "[tex](results/zoo_theory_vs_measured.tex))"
        )

    def replknet_area_ratio(rows):
        def ratios(r, who):
            return "/".join(str(r[f"{who}_{t}"]) for t in (20, 30, 50, 99))

        parts = []
        for r in rows:
            if r["log10"] != "True":
                continue
            text = f"{r['network']} {ratios(r, 'ours')} %"
            if r["paper_network"] != "-":
                text += f" (paper, trained: {ratios(r, 'paper')})"
            parts.append(text)
        return (
            f"area ratio at t = 20/30/50/99 %, {rows[0]['input_size']}x{rows[0]['input_size']}, "
            f"{rows[0]['images']} synthetic images, random weights (not comparable with the "
            "paper): " + "; ".join(parts)
        )

    def erf_training(rows):
        first, last = rows[0], rows[-1]
        return (
            f"ERF std {_f(first['erf_std'])} px at init -> {_f(last['erf_std'])} px after "
            f"{last['step']} steps (Luo size {_f(first['luo_size'], 1)} -> "
            f"{_f(last['luo_size'], 1)}, RF {first['theoretical_rf']}; test MSE "
            f"{float(first['test_mse']):.3g} -> {float(last['test_mse']):.3g}) on a synthetic "
            "blur-regression task"
        )

    def benchmark(rows):
        def get(item, metric, nd=3):
            hits = [r for r in rows if r["item"].startswith(item) and r["metric"] == metric]
            return _f(float(hits[0]["value"]), nd) if hits else "?"

        if not any(r["metric"].endswith("(per round)") for r in rows):
            return (
                "the committed results/benchmark.csv predates the interleaved-rounds method "
                "(single runs, older script); it is not quoted here. Rerun "
                "experiments/benchmark.py on a quiet machine for medians and spreads."
            )
        best = "ratio to the better PyTorch script (per round)"
        mm = "FLOP/s / matmul FLOP/s (per round)"
        jx, fp = "jaxrf ERF, lowering='auto'", "jaxrf ERF, folded + cone-pruned"
        r1024 = "ratio folded + cone-pruned / torch loop (per round)"
        return (
            "medians of interleaved rounds. All-positions support map: "
            f"{get('luo_relu', 'pass ratio naive/jaxrf')}x fewer backward passes, "
            f"{get('luo_relu', 'wall ratio naive/jaxrf')}x less wall time (the naive time "
            "extrapolated from 256 timed positions); ResNet-50 ERF at 224: jaxrf "
            f"{get(jx, best)}x the better PyTorch script (target 1.3x), {get(jx, mm)} of matmul "
            f"FLOP/s (target 0.7); folded + cone-pruned {get(fp, best)}x / {get(fp, mm)}; at 1024 "
            f"(centre unit) folded + cone-pruned {get('ResNet-50 1024', r1024)}x the PyTorch "
            f"loop (target 8x); walk {get('resnet_v1_152', 'walk per equation')} us per "
            "equation (ResNet-152)."
        )

    def profile_erf(rows):
        parts = []
        for low in dict.fromkeys(r["lowering"] for r in rows):
            rs = [r for r in rows if r["lowering"] == low]
            total = sum(float(r["ms_per_image"]) for r in rs)
            mat = [r for r in rs if r["fraction_of_matmul"]]
            gf = sum(float(r["gflop_per_image"]) for r in mat)
            busy = sum(float(r["gflop_per_image"]) / float(r["fraction_of_matmul"]) for r in mat)
            other = total - sum(float(r["ms_per_image"]) for r in mat)
            parts.append(
                f"lowering '{low}': {_f(total, 1)} ms/image in flight, dot+conv at "
                f"{_f(gf / busy)} of matmul FLOP/s, {_f(other, 1)} ms in other operations"
            )
        slow = sorted(
            (r for r in rows if r["lowering"] == rows[0]["lowering"] and r["fraction_of_matmul"]),
            key=lambda r: -float(r["ms_per_image"]),
        )[:2]
        worst = "; ".join(
            f"{r['group']} ({r['direction']}) {_f(r['ms_per_image'], 1)} ms at "
            f"{_f(r['fraction_of_matmul'])}"
            for r in slow
        )
        return "ResNet-50 ERF step at 224: " + "; ".join(parts) + f"; largest: {worst}."

    def trace_timing(rows):
        walks = sorted(float(r["walk_s"]) for r in rows)
        traces = sorted(float(r["trace_s"]) for r in rows)
        r = rows[0]
        return (
            f"{r['network']} at {r['input']}: {r['equations']} equations, median trace "
            f"{_f(traces[len(traces) // 2])} s, median walk {_f(walks[len(walks) // 2])} s; "
            f"RF {r['size']} / {r['stride']} / {r['padding']}"
        )

    def erf_trained_vs_random(rows):
        return _script_finding("erf_trained_vs_random", rows)

    def layerwise(rows):
        return _script_finding("layerwise", rows)

    return {k: v for k, v in locals().items() if callable(v)}


def _script_finding(stem: str, rows) -> str:
    """The finding written by the script itself (its ``finding(rows)``)."""
    import importlib

    return importlib.import_module(stem).finding(rows)


def _notes(meta: dict[str, str]) -> list[str]:
    return [v for k, v in meta.items() if k.startswith("note") and ": " in v]


def table() -> str:
    summaries = _summaries()
    lines = ["| result | reproduces | finding | figure |", "|---|---|---|---|"]
    envs = set()
    for path in sorted(_common.RESULTS.glob("*.csv")):
        meta, rows = _common.read_csv(path)
        stem = path.stem
        script = meta.get("script", f"experiments/{stem}.py")
        finding = summaries[stem](rows) if stem in summaries else f"{len(rows)} rows"
        if stem in ("benchmark", "profile_erf"):
            notes = {k: v for k, v in (n.split(": ", 1) for n in _notes(meta))}
            machine = ", ".join(
                f"{k} {notes[k]}" for k in ("cpu", "cores", "torch", "load_before") if k in notes
            ) or meta.get("device", "?")
            finding += f" Measured on: {machine}."
        figure = "-"
        if path.with_suffix(".png").exists():
            figure = f"[png](results/{stem}.png)"
        elif path.with_suffix(".md").exists():
            figure = f"[table](results/{stem}.md)"
        lines.append(
            f"| [{stem}]({script}) ([csv](results/{path.name})) | {meta.get('reproduces', '')} "
            f"| {finding} | {figure} |"
        )
        envs.add(f"jax {meta.get('jax')}, flax {meta.get('flax')}, {meta.get('device')}")
    lines.append("")
    lines.append(
        "Computed with " + "; ".join(sorted(envs)) + ". Weights are random or "
        "analytically set and images synthetic, unless a row says otherwise."
    )
    return "\n".join(lines)


def main() -> None:
    text = README.read_text()
    if text.count(START) != 1 or text.count(END) != 1:
        sys.exit(f"{README} must contain {START} and {END} once each")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    README.write_text(f"{head}{START}\n{table()}\n{END}{tail}")
    print(f"rewrote the results section of {README}")


if __name__ == "__main__":
    main()
