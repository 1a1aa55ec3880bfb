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
            f"seed 000's (n, j, r, start) recurrence {'agrees' if agree else 'DISAGREES'} with "
            f"jaxrf on every layer; e.g. {last['input_size']}x{last['input_size']} "
            f"{last['layer']}: "
            f"n {last['n']}, j {last['jump']}, r {last['size']}"
        )

    return {k: v for k, v in locals().items() if callable(v)}


def table() -> str:
    summaries = _summaries()
    lines = ["| result | reproduces | finding | figure |", "|---|---|---|---|"]
    envs = set()
    for path in sorted(_common.RESULTS.glob("*.csv")):
        meta, rows = _common.read_csv(path)
        stem = path.stem
        script = meta.get("script", f"experiments/{stem}.py")
        finding = summaries[stem](rows) if stem in summaries else f"{len(rows)} rows"
        figure = f"[png](results/{stem}.png)" if (path.with_suffix(".png")).exists() else "-"
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
