"""Smoke test of experiments/benchmark.py: the --quick run of the crop section writes its CSV.

The numbers of a --quick run mean nothing (tiny sizes); what this guarantees is that the script
runs end to end and that, on the cropped ResNet, the cropped map equals the full-image map and
the full-image map has no mass outside the crop.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict[str, str]]:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("# ")]
    return list(csv.DictReader(lines))


def _run(tmp_path: Path, sections: str) -> list[dict[str, str]]:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "benchmark.py"),
            "--quick",
            "--sections",
            sections,
            "--out-dir",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert (tmp_path / "benchmark_quick.md").exists()
    return _rows(tmp_path / "benchmark_quick.csv")


def test_quick_crop_section(tmp_path):
    pytest.importorskip("torch")
    rows = {(r["section"], r["metric"]): r for r in _run(tmp_path, "c")}
    diff = rows[("c", "crop vs full-image map, max rel. difference")]
    outside = rows[("c", "full-image map mass outside the crop")]
    assert float(diff["value"]) < 1e-5  # float32 rounding at most (exact in float64: test_crop)
    assert float(outside["value"]) == 0.0
    assert float(rows[("c", "ratio crop / torch loop")]["value"]) > 0


def test_profile_erf_quick(tmp_path):
    """The profile's FLOPs, read from the HLO text, are the same work under 'none' and 'matmul'
    and agree with XLA's own cost analysis (which also counts the elementwise operations)."""
    subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "profile_erf.py"), "--quick"]
        + ["--out-dir", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    rows = _rows(tmp_path / "profile_erf_quick.csv")
    assert {r["lowering"] for r in rows} == {"none", "matmul", "patches"}
    text = (tmp_path / "profile_erf_quick.csv").read_text()
    summary = {}
    for line in text.splitlines():
        if line.startswith("# note") and "summary lowering=" in line:
            fields = dict(kv.split("=", 1) for kv in line.split("summary ", 1)[1].split(", "))
            summary[fields["lowering"]] = fields
    parsed = {k: float(v["matmul_gflop_per_image"]) for k, v in summary.items()}
    xla = {k: float(v["xla_cost_gflop_per_image"]) for k, v in summary.items()}
    assert parsed["none"] > 0
    # 'matmul' does the same work but for the stem's phase-decomposed input gradient (4 phases
    # x 4x4 taps for a 7x7 stride-2 kernel: 64 products where 49 are useful; +0.4% of the full
    # ResNet-50, +6% of the quick one); 'patches' decomposes every strided convolution so.
    assert parsed["none"] <= parsed["matmul"] <= 1.1 * parsed["none"]
    # lhs-dilated convolutions are charged out * window * in-channels / dilation, which counts
    # a few border taps XLA's exact count leaves out; XLA's total adds the elementwise FLOPs.
    for k in parsed:
        assert 0.8 * xla[k] <= parsed[k] <= 1.05 * xla[k], (k, parsed[k], xla[k])
    assert (tmp_path / "profile_erf_quick.md").read_text().count("## lowering=") == 3


@pytest.mark.slow
def test_quick_all_sections(tmp_path):
    pytest.importorskip("torch")
    rows = _run(tmp_path, "abcde")
    assert {r["section"] for r in rows} == set("abcde")


def test_torch_is_not_a_runtime_dependency():
    spec = importlib.util.find_spec("jaxrf")
    assert spec is not None
    text = (ROOT / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "torch" not in deps
