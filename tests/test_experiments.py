"""Smoke runs of the experiment scripts with tiny settings (``--quick``) into a temporary folder.

The checks are on what the scripts must write (CSV with provenance, PNG) and on numbers that
are exact by hand: seed 000's recurrence values, and the closed-form uniform ERF (a 2-layer
3x3 box stack: per-axis std sqrt(2 * 8 / 12) = 1.1547).
"""

import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _run(script: str, out_dir: Path, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXPERIMENTS / f"{script}.py"), "--out-dir", str(out_dir), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _read(path: Path):
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        import _common
    finally:
        sys.path.pop(0)
    return _common.read_csv(path)


ANALYTIC = ["distill_alignment", "feature_map_visualisation"]


@pytest.fixture(scope="module")
def analytic_results(tmp_path_factory):
    """Both analytic scripts run once (each run starts a Python with jax: seconds)."""
    out = tmp_path_factory.mktemp("results")
    for script in ANALYTIC:
        _run(script, out)
    return out


@pytest.mark.parametrize("script", ANALYTIC)
def test_analytic_scripts_write_csv_with_provenance_and_png(script, analytic_results):
    tmp_path = analytic_results
    meta, rows = _read(tmp_path / f"{script}.csv")
    assert meta["script"] == f"experiments/{script}.py"
    assert {"jax", "flax", "device", "reproduces"} <= set(meta)
    assert rows and (tmp_path / f"{script}.png").read_bytes()[:4] == b"\x89PNG"


def test_feature_map_visualisation_numbers(analytic_results):
    # Seed 000, Fig. 3: 5x5 input, conv1 n 3, j 2, r 3; conv2 n 2, j 4, r 7; start 0.5 both.
    _, rows = _read(analytic_results / "feature_map_visualisation.csv")
    five = [
        (r["layer"], r["n"], r["jump"], r["size"], r["start_seed000_convention"])
        for r in rows
        if r["input_size"] == "5"
    ]
    assert five == [("conv1", "3", "2", "3", "1/2"), ("conv2", "2", "4", "7", "1/2")]


def test_distill_alignment_misaligned_regions(analytic_results):
    # Network 3 at input 8 (hand): left [2i - 2, 2i + 2], right [i, i + 4] -> hulls
    # [-2, 4], [0, 5], [2, 6], [3, 8].
    _, rows = _read(analytic_results / "distill_alignment.csv")
    hulls = sorted(
        {
            (int(r["output_index"]), int(r["region_lo"]), int(r["region_hi"]))
            for r in rows
            if r["network"].startswith("network 3")
        }
    )
    assert hulls == [(0, -2, 4), (1, 0, 5), (2, 2, 6), (3, 3, 8)]


def test_plot_only_redraws_from_the_csv(analytic_results):
    png = analytic_results / "distill_alignment.png"
    png.unlink()
    _run("distill_alignment", analytic_results, "--plot-only")
    assert png.exists()


@pytest.mark.slow
def test_luo_quick_run_matches_the_closed_form(tmp_path):
    _run("luo_fig3", tmp_path, "--quick")  # runs luo_fig1 --quick first
    _, rows = _read(tmp_path / "luo_fig1.csv")
    uniform = {int(r["depth"]): r for r in rows if r["setting"] == "uniform"}
    assert float(uniform[2]["erf_std"]) == pytest.approx((2 * 8 / 12) ** 0.5, abs=1e-3)
    assert float(uniform[2]["closed_form_max_abs_diff"]) < 1e-6
    assert (tmp_path / "luo_fig3.png").exists()
