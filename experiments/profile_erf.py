"""Where the time of an ERF step goes on XLA:CPU: a per-operation profile.

The step ``jaxrf.effective_receptive_field`` compiles for a torchvision-layout ResNet-50 at 224
(random weights, random normal images; RepLKNet protocol: ReLU on the centre outputs, channels
summed, positive part of the input gradient), i.e. ``jit(vmap(vjp))`` of the network as
rewritten, is run under ``jax.profiler.trace`` for each variant: 'none' (the plain step),
'matmul' (the ERF's default CPU lowering) and 'patches', 'folded' (``jaxrf.fold_convs``, then
'matmul') and 'folded+pruned' (``jaxrf.prune_to_cone`` of the folded network, centre unit, then
'matmul'); every lowered variant is compiled with YNNPACK limited to dots, as jaxrf compiles
it. Every executed HLO instruction's time (``jax.profiler.ProfileData`` events named after the
instruction; dispatch to end marker for asynchronous ones) is matched with its FLOPs read from the
compiled HLO text (dots and convolutions; an lhs-dilated convolution is charged its useful
FLOPs, the inserted zeros excluded) and grouped: matrix products by shape, convolutions by
window, everything else by XLA's fusion kind. Each group's FLOP/s is given as a fraction of a
2048x2048 float32 matmul timed in the same run, so the table says which operations keep the
step from the machine's matmul throughput.

Memory: a subprocess runs ``jaxrf.effective_receptive_field`` (default CPU lowering, batch 8)
in phases, tracing and lowering its step, compiling it, then running it, and records the
process's peak resident memory in each phase (``/proc/self/status`` VmHWM, reset between
phases) with XLA's memory analysis of the compiled step: which phase bounds the peak.

Writes ``results/profile_erf.csv`` and ``results/profile_erf.md``. ``--quick``: a 1-1-1-1
block ResNet at 64x64 (the smoke test).
"""

from __future__ import annotations

import collections
import functools
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from bench_common import block, compiled_flops, machine, matmul_flops, once  # noqa: E402
from bench_erf import peak_rss, pruned_relu, relu_of, reset_peak  # noqa: E402
from bench_kernels import section_kernels  # noqa: E402
from bench_models import erf_one, resnet_parts, resnet_setup  # noqa: E402

import jaxrf  # noqa: E402
from jaxrf import _erf, _xla  # noqa: E402
from jaxrf._erf import _compact_masks  # noqa: E402
from jaxrf._lowering import lower_convs  # noqa: E402

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.-]+) = (\S+) ([\w-]+)\((.*?)\)(.*)$")
_SHAPE = re.compile(r"^\w+\[([\d,]*)\]")


def _dims(shape: str) -> list[int]:
    m = _SHAPE.match(shape)
    return [int(v) for v in m.group(1).split(",") if v] if m else []


def parse_hlo(text: str):
    """Computations of an HLO module: name -> (shapes by value name, instruction tuples)."""
    comps, name, entry = {}, None, None
    for line in text.splitlines():
        head = re.match(r"^(ENTRY )?%([\w.-]+) \((.*)\) -> .*\{$", line)
        if head:
            name = head.group(2)
            entry = name if head.group(1) else entry
            params = dict(re.findall(r"([\w.-]+): (\w+\[[\d,]*\])", head.group(3)))
            comps[name] = ({k: _dims(v) for k, v in params.items()}, [])
            continue
        if name is None:
            continue
        m = _INSTR.match(line)
        if m:
            comps[name][0][m.group(1)] = _dims(m.group(2))
            comps[name][1].append(m.groups())
    return comps, entry


def _matmul_work(comps, comp: str, instr) -> tuple[str, int] | None:
    """(group label, FLOPs) of a dot / convolution instruction, else None."""
    shapes = comps[comp][0]
    name, shape, opcode, operands, attrs = instr
    args = re.findall(r"%([\w.-]+)", operands)
    out = _dims(shape)
    if opcode == "dot":
        lhs, rhs = shapes.get(args[0], []), shapes.get(args[1], [])
        contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs)
        k = math.prod(lhs[int(d)] for d in contract.group(1).split(",")) if contract else 1
        label = f"dot [{math.prod(out) // max(1, out[-1] if out else 1)} x {k}] x [{k} x {out[-1]}]"
        return label, 2 * math.prod(out) * k
    if opcode == "convolution":
        lhs, rhs = shapes.get(args[0], []), shapes.get(args[1], [])
        window = re.search(r"window=\{([^}]*)\}", attrs).group(1)
        labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", attrs)
        o_axis = labels.group(2).index("o")
        per_out = math.prod(rhs) // rhs[o_axis]
        flops = 2 * math.prod(out) * per_out
        dil = re.search(r"lhs_dilate=([\dx]+)", window)
        if dil:
            flops //= math.prod(int(v) for v in dil.group(1).split("x"))
        size = re.search(r"size=([\dx]+)", window).group(1)
        stride = re.search(r"stride=([\dx]+)", window)
        kind = "lhs-dilated " if dil else ""
        in_c = lhs[labels.group(1).index("f")] if lhs else "?"
        spatial = "x".join(str(out[i]) for i, c in enumerate(labels.group(3)) if c.isdigit())
        label = (
            f"{kind}conv {size}"
            + (f" stride {stride.group(1)}" if stride else "")
            + f", {in_c}->{out[labels.group(3).index('f')]} ch, out {spatial}"
        )
        return label, flops
    return None


def classify(comps, entry):
    """Entry instruction name -> (group, direction, FLOPs)."""
    out = {}
    for instr in comps[entry][1]:
        name, _, opcode, _, attrs = instr
        if opcode in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
            continue
        op_name = re.search(r'op_name="([^"]*)"', attrs)
        direction = "bwd" if op_name and "transpose(" in op_name.group(1) else "fwd"
        work = _matmul_work(comps, entry, instr)
        if work is None and opcode == "fusion":
            called = re.search(r"calls=%([\w.-]+)", attrs).group(1)
            works = [w for i in comps[called][1] if (w := _matmul_work(comps, called, i))]
            if works:
                work = ("; ".join(w[0] for w in works), sum(w[1] for w in works))
        if work is None:
            group = re.sub(r"\.\d+$", "", name)
            out[name] = (f"other: {group}", "", 0)
        else:
            out[name] = (work[0], direction, work[1])
    return out


def event_times(trace_dir: Path, names) -> dict[str, float]:
    """Total seconds per instruction name over every profiled event.

    An operation XLA:CPU runs asynchronously on its Eigen pool (its own convolutions, as the
    lowered ERF step compiles them) has an event that times only its dispatch, and an
    ``end: NAME`` marker when it completes: its time is from the dispatch to that marker.
    """
    files = sorted(trace_dir.rglob("*.xplane.pb"))
    data = jax.profiler.ProfileData.from_file(str(files[-1]))
    starts, ends = collections.defaultdict(list), collections.defaultdict(list)
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                if ev.name in names:
                    starts[ev.name].append((ev.start_ns, ev.duration_ns))
                elif ev.name.startswith("end: ") and ev.name[5:] in names:
                    ends[ev.name[5:]].append(ev.start_ns)
    total = collections.Counter()
    for name, events in starts.items():
        events.sort()
        done = sorted(ends.get(name, ()))
        if len(done) == len(events):  # asynchronous: dispatch to completion
            total[name] = sum(e - s for (s, _), e in zip(events, done, strict=True)) * 1e-9
        else:
            total[name] = sum(d for _, d in events) * 1e-9
    return dict(total)


def variant_step(net, lowering: str, n: int):
    """The jitted ERF step of one variant, as ``jaxrf.effective_receptive_field`` compiles it:
    'folded' and 'folded+pruned' run under the CPU lowering 'matmul' as the ERF's default does,
    and every variant packs its boolean residuals as the ERF's step does.
    """
    # as jaxrf compiles it: under a CPU lowering YNNPACK runs dots only, XLA its own convolutions
    ynn = _xla.PROGRAM_VALUE if lowering == "none" else _xla.LOWERED_VALUE
    if lowering == "folded+pruned":
        relu, _ = pruned_relu(jaxrf.fold_convs(net), n)
        relu = lower_convs(relu, "matmul")

        def one(xi):
            y, pull = jax.vjp(relu, xi[None])
            (g,) = _compact_masks(pull)(jnp.ones_like(y))
            return jnp.maximum(g[0], 0).sum(-1)

        return _xla.jit(lambda xb: jax.vmap(one)(xb).sum(0), ynn=ynn)
    if lowering == "folded":
        lowered = lower_convs(jaxrf.fold_convs(net), "matmul")
    else:
        lowered = lower_convs(net, lowering)  # "none" returns net itself
    step = functools.partial(erf_one, lowered, keep=_compact_masks)
    return _xla.jit(lambda xb: jax.vmap(step)(xb).sum(0), ynn=ynn)


def profile(net, xs, lowering: str, runs: int, peak: float):
    batch = xs.shape[0]
    step = variant_step(net, lowering, xs.shape[1])
    if step is None:
        return [], None
    compiled = step.lower(xs).compile()
    comps, entry = parse_hlo(compiled.as_text())
    groups = classify(comps, entry)
    block(step(xs))
    wall = min(once(lambda: step(xs)) for _ in range(runs)) / batch
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(runs):
                block(step(xs))
        times = event_times(Path(tmp), set(groups))
    agg = collections.defaultdict(lambda: [0, 0.0, 0])
    for name, (group, direction, flops) in groups.items():
        entry_ = agg[(group, direction)]
        entry_[0] += 1
        entry_[1] += times.get(name, 0.0) / (runs * batch)
        entry_[2] += flops / batch
    rows = []
    for (group, direction), (count, sec, flops) in agg.items():
        rows.append(
            dict(
                lowering=lowering,
                group=group,
                direction=direction,
                instructions=count,
                ms_per_image=sec * 1e3,
                gflop_per_image=flops / 1e9,
                fraction_of_matmul=(flops / sec / peak) if flops and sec else "",
            )
        )
    rows.sort(key=lambda r: -r["ms_per_image"])
    profiled = sum(r["ms_per_image"] for r in rows)
    mat = [r for r in rows if r["gflop_per_image"]]
    mat_ms = sum(r["ms_per_image"] for r in mat)
    mat_gf = sum(r["gflop_per_image"] for r in mat)
    summary = dict(
        lowering=lowering,
        wall_ms_per_image=wall * 1e3,
        profiled_ms_per_image=profiled,
        matmul_ms_per_image=mat_ms,
        matmul_gflop_per_image=mat_gf,
        xla_cost_gflop_per_image=compiled_flops(compiled) / batch / 1e9,
        matmul_fraction_of_peak=mat_gf / (mat_ms / 1e3) / (peak / 1e9) if mat_ms else float("nan"),
        other_ms_per_image=profiled - mat_ms,
    )
    return rows, summary


WEIGHTS = ("constants", "arguments")


def memory_child(quick: bool, weights: str) -> None:
    """Run in a subprocess: the ERF of 8 images in phases; prints one JSON line (MiB).

    The ERF's own step is intercepted at its first call: lowered, compiled and run as
    separate phases, the peak resident memory reset between them; then run once more, timed.
    ``weights="constants"``: the network closes over its weights (what the benchmark runs;
    XLA compiles them in and folds their layout changes). ``"arguments"``: the same weights
    given through ``init_fn`` (``fn(params, x)``), so the step takes them as arguments.
    """
    apply, variables, _ = resnet_parts(quick)
    n = 64 if quick else 224
    xs = jax.random.normal(jax.random.key(2), (8, n, n, 3), jnp.float32)
    mib = 1 / 1024
    out = {"before": reset_peak() * mib}
    step = _erf._BATCH_SUM["lowered"]

    def phased(*args, **kwargs):
        lowered = step.lower(*args, **kwargs)
        out["trace_lower_peak"] = peak_rss() * mib
        out["after_lower"] = reset_peak() * mib
        compiled = lowered.compile()
        out["compile_peak"] = peak_rss() * mib
        out["after_compile"] = reset_peak() * mib
        result = jax.block_until_ready(compiled(*args[1:]))  # apply and kwargs are static
        out["run_peak"] = peak_rss() * mib
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args[1:]))
        out["second_run_ms_per_image"] = (time.perf_counter() - t) * 1e3 / len(xs)
        analysis = compiled.memory_analysis()
        for name in ("argument", "output", "temp", "generated_code"):
            out[f"xla_{name}"] = getattr(analysis, f"{name}_size_in_bytes") / 2**20
        return result

    _erf._BATCH_SUM["lowered"] = phased
    if weights == "constants":
        net = relu_of(lambda x: apply(variables, x))
        jaxrf.effective_receptive_field(net, xs, batch_size=8, reduce="positive")
    else:
        jaxrf.effective_receptive_field(
            lambda params, x: jax.nn.relu(apply(params, x)),
            xs,
            batch_size=8,
            reduce="positive",
            init_fn=lambda key: variables,
        )
    print("MEMORY " + json.dumps(out), flush=True)


def memory_phases(quick: bool) -> dict:
    """:func:`memory_child`'s readings, one subprocess per way of giving the weights."""
    out = {}
    for weights in WEIGHTS:
        cmd = [sys.executable, __file__, "--memory-child", weights]
        cmd += ["--quick"] if quick else []
        text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        out[weights] = json.loads(next(v for v in text.splitlines() if v.startswith("MEMORY "))[7:])
    return out


def memory_lines(mem: dict, n: int) -> list[str]:
    """Markdown of :func:`memory_child`'s phases, weights as constants and as arguments."""
    growth = {
        w: {k: m[k] - m["before"] for k in ("trace_lower_peak", "compile_peak", "run_peak")}
        for w, m in mem.items()
    }
    c, a = mem["constants"], mem["arguments"]
    gc, ga = growth["constants"], growth["arguments"]
    bound = max(gc, key=gc.get)

    def cells(m, g, phase, after):
        return f"{m[phase]:.0f} | {g[phase]:.0f} | " + (f"{m[after]:.0f}" if after else "")

    def analysis(m):
        return (
            f"arguments {m['xla_argument']:.0f} MiB, outputs {m['xla_output']:.0f}, temporaries "
            f"{m['xla_temp']:.0f}, generated code {m['xla_generated_code']:.0f}"
        )

    return [
        "",
        f"## Peak memory of the ERF at {n}x{n}, batch 8, by phase",
        "",
        "One subprocess per column; peak resident memory (VmHWM) reset between phases; growth "
        "over the memory resident before the ERF (imports and network built: "
        f"{c['before']:.0f} and {a['before']:.0f} MiB). Weights as constants: the network "
        "closes over them (the benchmark's ERF). As arguments: the same weights through "
        "`init_fn`, so XLA neither compiles them in nor folds their layout changes.",
        "",
        "| phase | constants: peak RSS MiB | growth | resident after | arguments: peak RSS MiB "
        "| growth | resident after |",
        "|---|---|---|---|---|---|---|",
        f"| trace and lower the step | {cells(c, gc, 'trace_lower_peak', 'after_lower')} | "
        f"{cells(a, ga, 'trace_lower_peak', 'after_lower')} |",
        f"| compile (XLA:CPU) | {cells(c, gc, 'compile_peak', 'after_compile')} | "
        f"{cells(a, ga, 'compile_peak', 'after_compile')} |",
        f"| run one step | {cells(c, gc, 'run_peak', '')} | {cells(a, ga, 'run_peak', '')} |",
        f"| second step, ms/image (one timing) | {c['second_run_ms_per_image']:.0f} | | | "
        f"{a['second_run_ms_per_image']:.0f} | | |",
        "",
        f"With constants the peak is set by: **{bound.replace('_peak', '').replace('_', ' and ')}"
        f"**. XLA's memory analysis of the step, constants: {analysis(c)}; arguments: "
        f"{analysis(a)}.",
    ]


VARIANTS = ("none", "matmul", "patches", "folded", "folded+pruned")


def kernel_lines(kernels) -> list[str]:
    """Markdown table of the weak-kernel trials (experiments/bench_kernels.py)."""
    lines = [
        "",
        "## The 3x3 64-channel convolutions at 56x56 (batch 8): formulations tried",
        "",
        "Median of interleaved rounds against XLA's NHWC convolution (speed > 1 = faster); error",
        "= max relative difference from a float64 reference (kept only if within float32",
        "rounding, i.e. at most twice XLA's own convolution's error).",
        "",
        "| direction | formulation | ms | speed vs XLA conv | fraction of matmul | rel. error |"
        " exact |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in kernels:
        lines.append(
            f"| {k['direction']} | {k['formulation']} | {k['ms']:.2f} | {k['speed']:.2f} | "
            f"{k['fraction_of_matmul']:.2f} | {k['rel_error']:.2g} | {k['exact']} |"
        )
    return lines


def _rescale(rows, summaries, peak: float) -> None:
    """Fractions of matmul FLOP/s against ``peak``: the faster of the matmuls timed before and
    after (a slow one is the shared machine's noise, not its limit)."""
    for r in rows:
        if r["fraction_of_matmul"] != "":
            r["fraction_of_matmul"] = r["gflop_per_image"] * 1e9 / (r["ms_per_image"] / 1e3) / peak
    for s in summaries:
        if s["matmul_ms_per_image"]:
            busy = s["matmul_ms_per_image"] / 1e3
            s["matmul_fraction_of_peak"] = s["matmul_gflop_per_image"] * 1e9 / busy / peak


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--memory-child":
        memory_child("--quick" in argv, argv[1])
        return
    args = _common.parse_args(__doc__, argv)
    quick = args.quick
    host = machine()
    net, _, _ = resnet_setup(quick)
    n = 64 if quick else 224
    xs = jax.random.normal(jax.random.key(2), (8, n, n, 3), jnp.float32)
    runs = 1 if quick else 3
    peak = matmul_flops(rounds=5)
    t0 = time.perf_counter()
    all_rows, summaries = [], []
    for lowering in VARIANTS:
        rows, summary = profile(net, xs, lowering, runs, peak)
        all_rows += rows
        summaries += [summary] if summary else []
    kernels = section_kernels(quick)
    memory = memory_phases(quick)
    peak_after = matmul_flops(rounds=5)
    _rescale(all_rows, summaries, max(peak, peak_after))
    stem = "profile_erf" + ("_quick" if quick else "")
    provenance = {
        "what": "per-operation profile of the ERF step (jit(vmap(vjp))) on XLA:CPU",
        "network": f"torchvision-layout ResNet-50 at {n}x{n}"
        + (" (quick: 1-1-1-1 blocks, width 1/8)" if quick else "")
        + ", random weights, random normal images, batch 8",
        "matmul": f"2048x2048 float32: {peak / 1e9:.1f} GFLOP/s before, "
        f"{peak_after / 1e9:.1f} after (fractions use the faster)",
        "runs": f"{runs} profiled steps per lowering; wall time = best unprofiled step",
        "in flight": "XLA:CPU runs independent operations at the same time on its thread pool, "
        "and its own convolutions asynchronously (timed from dispatch to their end marker), so "
        "operation times are times in flight and may add up to more than the wall time",
        "seconds": f"{time.perf_counter() - t0:.0f}",
        "cpu": host["cpu"],
        "cores": host["cores"],
        "load_before": host["load_before"],
    }
    _common.write_csv(
        args.out_dir / f"{stem}.csv",
        all_rows,
        __file__,
        "no paper figure: what bounds the ERF step on this CPU",
        [f"{k}: {v}" for k, v in provenance.items()]
        + [
            "summary "
            + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()
            )
            for s in summaries
        ]
        + [
            ("memory " if w == "constants" else f"memory_{w} ")
            + ", ".join(f"{k}={v:.1f}" for k, v in m.items())
            for w, m in memory.items()
        ],
    )
    lines = [
        "# ERF step profile on XLA:CPU",
        "",
        *(f"- {k}: {v}" for k, v in provenance.items()),
        "",
        "| lowering | wall ms/image | profiled ms/image | dot+conv ms | dot+conv GFLOP "
        "(XLA cost analysis, all ops) | dot+conv fraction of matmul | other ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['lowering']} | {s['wall_ms_per_image']:.1f} | "
            f"{s['profiled_ms_per_image']:.1f} | {s['matmul_ms_per_image']:.1f} | "
            f"{s['matmul_gflop_per_image']:.2f} ({s['xla_cost_gflop_per_image']:.2f}) | "
            f"{s['matmul_fraction_of_peak']:.2f} | "
            f"{s['other_ms_per_image']:.1f} |"
        )
    lines += memory_lines(memory, n)
    lines += kernel_lines(kernels)
    for lowering in [s_["lowering"] for s_ in summaries]:
        lines += [
            "",
            f"## lowering='{lowering}': operations by time (top 25)",
            "",
            "| group | dir | n | ms/image | GFLOP/image | fraction of matmul |",
            "|---|---|---|---|---|---|",
        ]
        for r in [r for r in all_rows if r["lowering"] == lowering][:25]:
            frac = r["fraction_of_matmul"]
            lines.append(
                f"| {r['group']} | {r['direction']} | {r['instructions']} | "
                f"{r['ms_per_image']:.2f} | {r['gflop_per_image']:.2f} | "
                f"{f'{frac:.2f}' if frac != '' else ''} |"
            )
    (args.out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: lines.index("") + 5 + len(summaries) + len(provenance)]))
    print(f"wrote {args.out_dir / stem}.csv and .md")


if __name__ == "__main__":
    main()
