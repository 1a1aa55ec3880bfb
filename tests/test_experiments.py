"""Smoke runs of the experiment scripts with tiny settings (``--quick``) into a temporary folder.

The checks are on what the scripts must write (CSV with provenance, PNG) and on numbers that
are exact by hand: the values of Dang Ha The Hien's recurrence, and the closed-form uniform ERF
(a 2-layer 3x3 box stack: per-axis std sqrt(2 * 8 / 12) = 1.1547). Where a script measures a
random quantity, the test checks the outcome against a hand-derived or published expectation,
never by re-deriving the script's own verdict from its numbers.
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
    # Dang Ha The Hien's Fig. 3: 5x5 input, conv1 n 3, j 2, r 3; conv2 n 2, j 4, r 7; start 0.5.
    _, rows = _read(analytic_results / "feature_map_visualisation.csv")
    five = [
        (r["layer"], r["n"], r["jump"], r["size"], r["start_post_convention"])
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


@pytest.mark.slow  # CI runs the slow set after the default run
def test_zoo_theory_vs_measured_quick(tmp_path):
    # Hand derivations (jaxrf/models/__init__.py and toys.py), not the code under test:
    # Luo's 5-layer 3x3 stack at 32x32: r 11, S 1, P 5; centre output (16, 16) reads
    # [16 - 5, 16 + 5] = [11, 21] per axis, inside the image, so the clipped region is that.
    # Distill's misaligned toy: union of [2i - 1, 2i + 1] and [2i, 2i + 1]: 3 / 2 / 1.
    # AlexNet v2 (Araujo et al.'s table: 195 / 32 / 64): the corner output reads [-64, 130],
    # clipped [0, 130]; the smallest side leaving part of the image out is r - P + 1 = 132.
    _run("zoo_theory_vs_measured", tmp_path, "--quick")
    meta, rows = _read(tmp_path / "zoo_theory_vs_measured.csv")
    assert meta["script"] == "experiments/zoo_theory_vs_measured.py"
    by_name = {r["network"]: r for r in rows}
    luo = by_name["luo_dropout"]
    assert (luo["size"], luo["stride"], luo["padding"]) == ("11", "1", "5")
    assert luo["clipped_region"] == "[11, 21] x [11, 21]"
    # Dropout active: 8 masks for the one quick sample, each a full ERF pass.
    assert (luo["dropout_masks"], luo["erf_samples"]) == ("8", "8")
    mis = by_name["distill_misaligned"]
    assert (mis["size"], mis["stride"], mis["padding"], mis["aligned"]) == ("3", "2", "1", "False")
    alex = by_name["alexnet_v2"]
    assert (alex["measure_input"], alex["output_index"]) == ("132x132", "0x0")
    assert alex["clipped_region"] == "[0, 130] x [0, 130]"
    assert all(r["whole_image"] == "False" for r in rows)
    assert meta["note3"].endswith(": 0")
    assert all(r["structural_equals_clipped"] == "yes" for r in rows)
    assert all(r["matches_expected"] == "True" for r in rows)
    assert 0 < float(luo["erf_share_in_rf"]) <= 1
    md = (tmp_path / "zoo_theory_vs_measured.md").read_text()
    tex = (tmp_path / "zoo_theory_vs_measured.tex").read_text()
    assert "| luo\\_dropout |" not in md and "| luo_dropout |" in md
    assert "luo\\_dropout &" in tex and "\\begin{tabular}" in tex and "\\bottomrule" in tex


@pytest.mark.slow
def test_luo_fig2_quick(tmp_path):
    _run("luo_fig2", tmp_path, "--quick")
    _, rows = _read(tmp_path / "luo_fig2.csv")
    assert {r["nonlinearity"] for r in rows} == {"tanh", "sigmoid", "relu"}
    # Theoretical RF of n 3x3 layers: 2 n + 1 (Distill: 1 + n (k - 1)).
    assert {(r["depth"], r["theoretical_rf"]) for r in rows} == {("2", "5"), ("4", "9")}
    assert (tmp_path / "luo_fig2.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_luo_findings_quick(tmp_path):
    _run("luo_findings", tmp_path, "--quick")
    _, rows = _read(tmp_path / "luo_findings.csv")
    rf = {r["finding"]: int(r["theoretical_rf"]) for r in rows}
    # 4 layers, hand: plain 1 + 4 * 2 = 9; dilation 2 (span 5): 1 + 4 * 4 = 17; stride 2 at
    # layers 1 and 3: r = 3, 5 (S 2), 9, 13 (S 4) -> 13; skips leave the RF alone.
    assert rf == {"reference": 9, "dropout": 9, "subsampling": 13, "dilation": 17, "skip": 9}
    # Outcomes, measured at fixed seeds with random weights (so sample-dependent), against Luo et
    # al.'s findings (NeurIPS 2016, Sec. 4): dropout keeps the ERF's shape, subsampling and
    # dilation grow it, skip connections shrink it.
    by_finding = {r["finding"]: r for r in rows}
    verdicts = {f: by_finding[f]["verdict"] for f in rf if f != "reference"}
    assert verdicts == {
        "dropout": "shape kept",
        "subsampling": "grows",
        "dilation": "grows",
        "skip": "shrinks",
    }
    # Dilation 2 at stride 1: the centre output reads only its own parity sub-lattice of the
    # input, through the plain stack's weights, so its gradient map is the plain map spread by
    # 2 and its std twice the baseline's in expectation (2 samples here: loosely).
    assert 1.5 < float(by_finding["dilation"]["erf_std_over_baseline"]) < 2.7
    assert (tmp_path / "luo_findings.md").read_text().count("\n| 4 |") == 5


@pytest.mark.slow
def test_replknet_area_ratio_quick(tmp_path):
    out = _run("replknet_area_ratio", tmp_path, "--quick")
    assert "not comparable" in out
    _, rows = _read(tmp_path / "replknet_area_ratio.csv")
    assert {r["log10"] for r in rows} == {"True", "False"}
    # Torchvision ResNet-50 at 160: RF 427 > 160, so the crop is the whole image.
    assert rows[0]["theoretical_rf"] == "427" and float(rows[0]["crop_fraction"]) == 1.0
    ratios = [float(rows[0][f"ours_{t}"]) for t in (20, 30, 50, 99) if rows[0][f"ours_{t}"] != "-"]
    assert len(ratios) >= 3 and ratios == sorted(ratios)  # a larger share: a square as large


@pytest.mark.slow
def test_erf_training_quick(tmp_path):
    _run("erf_training", tmp_path, "--quick")
    _, rows = _read(tmp_path / "erf_training.csv")
    assert [r["step"] for r in rows] == ["0", "20"]
    assert rows[0]["theoretical_rf"] == "9"  # 4 3x3 layers and a 1x1 head: 1 + 4 * 2
    # The target's ERF is a Gaussian of std 5 truncated at 3 sigma: std just under 5.
    assert 4.7 < float(rows[0]["target_std"]) < 5.0
    # Training works: the test error falls far below its value at initialisation.
    assert float(rows[-1]["test_mse"]) < float(rows[0]["test_mse"]) / 10
    # The gradient of a 9-pixel RF lives in 9 pixels per axis: all of it inside the RF, and a
    # per-axis std of at most the half-width 4.
    assert all(float(r["erf_share_in_rf"]) == 1.0 for r in rows)
    assert all(0 < float(r["erf_std"]) <= 4 for r in rows)
    # Luo et al. (Sec. 5): the ERF grows with training, towards the wider target (std ~5).
    assert rows[-1]["grew"] == "True"


@pytest.mark.slow
def test_layerwise_quick(tmp_path):
    out = _run("layerwise", tmp_path, "--quick")
    assert "random weights" in out
    meta, rows = _read(tmp_path / "layerwise.csv")
    assert "NOT ImageNet-trained" in meta["note1"] and "grace_hopper.jpg" in meta["note2"]
    # Araujo et al. (Distill 2019) / torchvision layout at 64x64, centre unit n // 2 of each map:
    # conv1 7/2/3 (32x32 map, unit 16): [32 - 3, 32 + 3]; maxpool 11/4/5 (unit 8): [27, 37];
    # block 1 19/4/9: [23, 41]; block 2 27/4/13: [19, 45]. VGG-16: conv1_1 3/1/1 (unit 32):
    # [31, 33]; conv1_2 5/1/2: [30, 34]; pool1 6/2/2 (unit 16): [30, 35]; conv2_1 10/2/4:
    # [28, 37]. Depth: convolutions on the longest path (a bottleneck block adds 3).
    expected = {
        ("resnet50_torchvision", "conv1"): ("7", "2", "3", 29, 35, 1),
        ("resnet50_torchvision", "maxpool"): ("11", "4", "5", 27, 37, 1),
        ("resnet50_torchvision", "layer1.0"): ("19", "4", "9", 23, 41, 4),
        ("resnet50_torchvision", "layer1.1"): ("27", "4", "13", 19, 45, 7),
        ("vgg_16", "conv1_1"): ("3", "1", "1", 31, 33, 1),
        ("vgg_16", "conv1_2"): ("5", "1", "2", 30, 34, 2),
        ("vgg_16", "pool1"): ("6", "2", "2", 30, 35, 2),
        ("vgg_16", "conv2_1"): ("10", "2", "4", 28, 37, 3),
    }
    got = {(r["network"], r["layer"]): r for r in rows}
    assert list(got) == list(expected)
    for key, (size, stride, padding, lo, hi, depth) in expected.items():
        r = got[key]
        assert (r["rf_size"], r["rf_stride"], r["rf_padding"]) == (size, stride, padding), key
        assert r["clipped_region"] == f"[{lo}, {hi}] x [{lo}, {hi}]", key
        assert r["depth"] == str(depth) and r["structural_equals_clipped"] == "True", key
        # The gradient is zero outside the structural support (= the region), so at most the
        # region's pixels pass Luo's threshold, and all the ERF's mass lies inside.
        assert 0 < float(r["luo_size"]) <= hi - lo + 1, key
        assert float(r["erf_share_in_rf"]) == pytest.approx(1.0), key
    for stem in ("md", "tex", "png"):
        assert (tmp_path / f"layerwise.{stem}").stat().st_size > 0
