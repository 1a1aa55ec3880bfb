"""Smoke tests of experiments/benchmark.py and profile_erf.py (--quick: tiny sizes).

The numbers of a --quick run mean nothing; what these guarantee is that each section runs end
to end, that the crop, the constant folding and the cone pruning leave the ERF map equal to the
plain computation (float32 rounding here; exactly, in float64, in tests/test_fold.py and
tests/test_prune.py), that ratios are medians of interleaved rounds with their spread, and that
the GPU entry skips cleanly on a machine without one.
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


def _by_metric(rows, section):
    return {(r["item"], r["metric"]): r for r in rows if r["section"] == section}


@pytest.mark.slow  # CI runs the slow set after the default run
def test_quick_crop_and_pruned_maps_agree(tmp_path):
    pytest.importorskip("torch")
    rows = _run(tmp_path, "crop1024")
    got = {r["metric"]: r for r in rows}
    # float32 rounding at most (exact in float64: tests/test_prune.py, tests/test_crop.py)
    assert float(got["pruned vs crop map, max rel. difference"]["value"]) < 1e-5
    for k in ("crop", "folded + cone-pruned"):
        ratio = got[f"ratio {k} / torch loop (per round)"]
        assert float(ratio["value"]) > 0
        assert "median of 3 rounds, spread" in ratio["note"]


@pytest.mark.slow  # CI runs the slow set after the default run
def test_quick_flops_section_prunes_work_and_keeps_the_map(tmp_path):
    rows = _run(tmp_path, "flops")
    items = {r["item"] for r in rows}
    assert len(items) == 1  # one size in --quick (224 and 1024 in the full run)
    for item in items:
        got = {r["metric"]: float(r["value"]) for r in rows if r["item"] == item}
        assert got["folded + cone-pruned vs plain map, max rel. difference"] < 1e-5
        assert got["folded + cone-pruned"] < got["plain ERF step"]
        assert got["constant-folded"] <= got["plain ERF step"]


@pytest.mark.slow  # CI runs the slow set after the default run
def test_quick_kernels_are_checked_against_float64(tmp_path):
    rows = _run(tmp_path, "kernels")
    names = {r["item"] for r in rows}
    assert "fwd: Winograd F(2x2,3x3), 16 products" in names
    assert "bwd: jax.vjp of the conv (what the ERF step runs)" in names
    for r in rows:
        assert "max rel. error vs float64" in r["note"]


@pytest.mark.slow
def test_gpu_entry_skips_cleanly_without_gpu(tmp_path):
    import jax

    try:
        has_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        has_gpu = False
    if has_gpu:
        pytest.skip("a GPU is present: the entry runs instead of skipping")
    rows = _run(tmp_path, "gpu")
    assert [r["metric"] for r in rows] == ["skipped"]


def test_unknown_section_is_named(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--quick"]
        + ["--sections", "erf999", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "unknown ['erf999']" in out.stderr


@pytest.mark.slow  # ~20 s: the profiler smoke test runs with the heavy set
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
    lowerings = {r["lowering"] for r in rows}
    assert {"none", "folded", "folded+pruned"} <= lowerings
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
    if "matmul" in parsed:  # where jaxrf exports its CPU lowering
        assert parsed["none"] <= parsed["matmul"] <= 1.1 * parsed["none"]
    # folding removes elementwise work only ('folded' runs under 'matmul' as the ERF does);
    # pruning removes products too
    assert parsed["folded"] == pytest.approx(parsed["matmul"], rel=1e-6)
    assert parsed["folded+pruned"] < parsed["none"]
    # lhs-dilated convolutions are charged out * window * in-channels / dilation, which counts
    # a few border taps XLA's exact count leaves out; XLA's total adds the elementwise FLOPs.
    for k in parsed:
        assert 0.8 * xla[k] <= parsed[k] <= 1.05 * xla[k], (k, parsed[k], xla[k])
    md = (tmp_path / "profile_erf_quick.md").read_text()
    assert md.count("## lowering=") == len(lowerings)
    assert "Winograd" in md
    # the memory phases: one line of the child's readings, each phase at least the resident
    # memory it started from (VmHWM is reset to the current RSS between phases)
    (line,) = [v for v in text.splitlines() if "# note" in v and " memory before=" in v]
    mem = {
        k: float(v) for k, v in (kv.split("=") for kv in line.split("memory ", 1)[1].split(", "))
    }
    assert mem["trace_lower_peak"] >= mem["before"] > 0
    assert mem["compile_peak"] >= mem["after_lower"] and mem["run_peak"] >= mem["after_compile"]
    assert mem["xla_temp"] > 0 and "by phase" in md
    # the same with the weights as arguments (init_fn): the step takes them as arguments
    (line,) = [v for v in text.splitlines() if "# note" in v and " memory_arguments " in v]
    args = {
        k: float(v)
        for k, v in (kv.split("=") for kv in line.split("memory_arguments ", 1)[1].split(", "))
    }
    assert args["compile_peak"] >= args["after_lower"] and args["run_peak"] >= args["after_compile"]
    assert args["xla_argument"] > mem["xla_argument"]  # the weights are among the arguments
    assert args["second_run_ms_per_image"] > 0 and "arguments: peak RSS" in md


@pytest.mark.slow
def test_quick_all_sections(tmp_path):
    pytest.importorskip("torch")
    rows = _run(tmp_path, "support,erf224,crop1024,flops,kernels,memory,analytic,gpu")
    assert {r["section"] for r in rows} == {
        "support",
        "erf224",
        "crop1024",
        "flops",
        "kernels",
        "memory",
        "analytic",
        "gpu",
    }


def test_torch_is_not_a_runtime_dependency():
    spec = importlib.util.find_spec("jaxrf")
    assert spec is not None
    text = (ROOT / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "torch" not in deps


def test_bracketed_rounds_put_the_peers_around_every_subject():
    # The order of calls, and which peer runs each subject's ratio is taken against.
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import bench_common
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    calls = []
    peers = {p: (lambda p=p: calls.append(p)) for p in ("P", "Q")}
    subjects = {s: (lambda s=s: calls.append(s)) for s in ("a", "b")}
    peer_t, subject_t = bench_common.bracketed(peers, subjects, 2)
    assert calls == ["P", "Q", "a", "P", "Q", "b", "P", "Q"] * 2
    assert [len(r) for r in peer_t["P"]] == [3, 3] and len(subject_t["a"]) == 2
    slots = [[1.0, 2.0, 4.0], [10.0, 20.0, 40.0]]  # per round: before a, between, after b
    assert bench_common.around(slots, 0) == [1.5, 15.0]
    assert bench_common.around(slots, 1) == [3.0, 30.0]
