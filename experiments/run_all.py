"""Regenerate every result: run each experiment script in order, then the README's table.

Usage: ``.venv/bin/python experiments/run_all.py [--quick] [--only STEM ...]``. Each script
writes results/<stem>.csv and .png (or .md / .tex); ``--quick`` uses tiny settings (and writes
into a temporary folder unless ``--out-dir`` is given, so committed results stay untouched).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

#: In dependency order (luo_fig3 reads luo_fig1's CSV).
SCRIPTS = (
    "distill_alignment",
    "feature_map_visualisation",
    "luo_fig1",
    "luo_fig3",
    "luo_fig2",
    "luo_findings",
    "zoo_theory_vs_measured",
    "replknet_area_ratio",
    "erf_training",
    "erf_trained_vs_random",
    "layerwise",
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=None, help="stems to run")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    out_dir = args.out_dir
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="jaxrf_quick_")) if args.quick else _common.RESULTS
    here = Path(__file__).resolve().parent
    for stem in args.only or SCRIPTS:
        started = time.perf_counter()
        cmd = [sys.executable, str(here / f"{stem}.py"), "--out-dir", str(out_dir)]
        cmd += ["--quick"] if args.quick else []
        subprocess.run(cmd, check=True)
        print(f"[run_all] {stem}: {time.perf_counter() - started:.0f} s")
    if out_dir == _common.RESULTS:
        subprocess.run([sys.executable, str(here / "readme_results.py")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
