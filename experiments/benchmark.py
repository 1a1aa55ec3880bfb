"""Performance of jaxrf's probes, measured side by side in one process.

Reproduces no paper figure: it measures what jaxrf costs against the ways people compute the
same maps. Every ratio against a peer or against the machine (matmul FLOP/s) is the median of
at least 3 interleaved rounds (peer, jaxrf, peer, jaxrf, ...) with the spread (min-max) in the
note; the load average before and after is recorded.

Sections (``--sections name,name``; default all):

support    all-positions support map of Luo's ReLU stack at 256x256: ``jaxrf.support_map`` vs one
           backward pass per position (naive wall time EXTRAPOLATED from 256 timed positions).
erf224     ResNet-50 ERF at 224 (RepLKNet protocol), jaxrf (lowering auto/none, fold=True,
           crop="cone", both) vs the better of two PyTorch scripts (per-image loop; batches of
           8 with one backward) on the identical network, and as a fraction of matmul FLOP/s.
crop1024   ResNet-50 centre unit at 1024: input crop, crop="cone" (with and without fold=True)
           vs the PyTorch loop.
flops      XLA cost analysis of the ERF step at 224 and 1024: plain, folded, crop, pruned.
kernels    the 3x3 64-channel convolutions at 56x56 in several formulations (bench_kernels).
memory     peak RSS of one ERF batch at 224 (b8) and 1024 (b4; full, crop, pruned) and of the
           PyTorch loop, one subprocess each.
taps       ERF of k=4 stage outputs at once (one forward, k backward passes per batch) vs k
           separate calls and vs the output alone (bench_taps).
analytic   tracing + walking ResNet-152 and Inception v3; walk time vs equations.
gpu        only where ``jax.devices('gpu')`` is non-empty: ERF images/s at 224 and 1024 (batch
           32), FLOP/s as a fraction of float32 and bfloat16 matmuls, support-map passes/s.

Writes ``results/benchmark.csv`` (tidy: section, item, metric, value, unit, note) and
``results/benchmark.md``; ``--quick`` runs tiny sizes in seconds (the smoke test; its files are
``benchmark_quick.*``). The sections live in experiments/bench_*.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from bench_analytic import section_analytic, section_support  # noqa: E402
from bench_common import ROWS, load, machine, write_markdown  # noqa: E402
from bench_erf import (  # noqa: E402
    memory_child,
    section_crop1024,
    section_erf224,
    section_gpu,
    section_memory,
)
from bench_kernels import section_kernels  # noqa: E402
from bench_taps import section_taps  # noqa: E402
from bench_transforms import section_flops  # noqa: E402

SECTIONS = {
    "support": section_support,
    "erf224": section_erf224,
    "crop1024": section_crop1024,
    "flops": section_flops,
    "kernels": section_kernels,
    "memory": section_memory,
    "analytic": section_analytic,
    "taps": section_taps,
    "gpu": section_gpu,
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--memory-child":
        memory_child(argv[1], int(argv[2]), "--quick" in argv)
        return
    args = _common.parse_args(
        __doc__,
        argv,
        sections={"default": ",".join(SECTIONS), "help": f"comma-separated: {','.join(SECTIONS)}"},
    )
    chosen = [s for s in args.sections.split(",") if s]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    info = machine()
    print("machine:", info, flush=True)
    for s in chosen:
        t = time.perf_counter()
        SECTIONS[s](args.quick)
        print(f"  section {s}: {time.perf_counter() - t:.1f} s", flush=True)
    info["load_after"] = load()
    stem = "benchmark_quick" if args.quick else "benchmark"
    notes = [f"{k}: {v}" for k, v in info.items()] + [f"sections: {','.join(chosen)}"]
    if args.quick:
        notes.append("--quick smoke run: tiny sizes, the numbers mean nothing")
    _common.write_csv(
        args.out_dir / f"{stem}.csv",
        ROWS,
        "experiments/benchmark.py",
        "none (performance of jaxrf)",
        notes,
    )
    write_markdown(args.out_dir / f"{stem}.md", info, args.quick)
    print(f"wrote {args.out_dir / stem}.csv and .md", flush=True)


if __name__ == "__main__":
    main()
