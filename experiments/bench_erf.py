"""Benchmark sections on ResNet-50's ERF: throughput at 224 against PyTorch, the centre unit at
1024 (input crop and cone pruning), peak memory, and the GPU entry."""

from __future__ import annotations

import functools
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from bench_common import (
    around,
    block,
    bracketed,
    cost_flops,
    matmul_fn,
    once,
    ratio_row,
    rounds,
    row,
    spread,
)
from bench_models import (
    centre,
    erf_step,
    resnet_setup,
    torch_erf_batched,
    torch_erf_loop,
    torch_model,
)

import jaxrf


def jaxrf_erf(fn, xs, batch, **kw):
    return jaxrf.effective_receptive_field(
        fn, xs, batch_size=batch, reduce="positive", progress=False, **kw
    ).map


def relu_of(net):
    return lambda x: jax.nn.relu(net(x))


def pruned_relu(net, n, dtype=jnp.float32):
    """ReLU of the centre unit computed from its cone alone (output spatial size 1 x 1)."""
    spec = jax.ShapeDtypeStruct((1, n, n, 3), dtype)
    out = jax.eval_shape(net, spec).shape
    pruned = jaxrf.prune_to_cone(net, spec, (None, *centre(out[1:3]), None))
    return relu_of(pruned), pruned


def _variants(net, n, quick):
    """jaxrf's ways of computing the centre ERF: name -> fn(xs) of the summed map."""
    relu = relu_of(net)
    return {
        "jaxrf ERF, lowering='auto'": lambda xs: jaxrf_erf(relu, xs, 8),
        "jaxrf ERF, lowering='none'": lambda xs: jaxrf_erf(relu, xs, 8, lowering="none"),
        "jaxrf ERF, folded": lambda xs: jaxrf_erf(relu, xs, 8, fold=True),
        "jaxrf ERF, cone-pruned": lambda xs: jaxrf_erf(relu, xs, 8, crop="cone"),
        "jaxrf ERF, folded + cone-pruned": lambda xs: jaxrf_erf(
            relu, xs, 8, fold=True, crop="cone"
        ),
    }


def section_erf224(quick: bool):
    """ERF throughput at 224 (RepLKNet protocol), interleaved with both PyTorch scripts."""
    import torch

    print("erf224: ERF throughput, ResNet-50 at 224", flush=True)
    n, r = (64, 3) if quick else (224, 5)
    net, variables, layers = resnet_setup(quick)
    tmodel = torch_model(variables, layers, 0.125 if quick else 1.0)
    xs = jax.random.normal(jax.random.key(2), (16, n, n, 3), jnp.float32)
    xt = torch.from_numpy(np.asarray(jnp.transpose(xs, (0, 3, 1, 2))).copy())
    plain = erf_step(net)
    ref = np.asarray(plain(xs)) / len(xs)
    with torch.no_grad():
        yt = tmodel(xt[:1]).numpy().transpose(0, 2, 3, 1)
    yj = np.asarray(net(xs[:1]))
    row(
        "erf224",
        "torch vs jax (same weights)",
        "max rel. output difference",
        np.abs(yt - yj).max() / np.abs(yj).max(),
    )
    tmap = torch_erf_loop(tmodel, xt).numpy() / len(xs)
    row(
        "erf224",
        "torch loop vs jax ERF map",
        "max rel. difference",
        np.abs(tmap - ref).max() / np.abs(ref).max(),
    )
    variants = _variants(net, n, quick)
    for k, f in variants.items():
        m = np.asarray(f(xs))  # compiles
        row(
            "erf224",
            f"{k} vs plain jit(vmap(vjp))",
            "max rel. map difference",
            np.abs(m - ref).max() / np.abs(ref).max(),
            "",
            "float32",
        )
    mm, mm_flops = matmul_fn()
    n_torch = 4 if quick else 8
    peers = {
        "torch loop b1": lambda: torch_erf_loop(tmodel, xt[:n_torch]),
        "torch batched b8": lambda: torch_erf_batched(tmodel, xt[:n_torch]),
        "matmul 2048 x5": lambda: [mm() for _ in range(5)],
    }
    subjects = {
        **{k: functools.partial(f, xs) for k, f in variants.items()},
        "plain jit(vmap(vjp)) b8": lambda: [plain(xs[:8]), plain(xs[8:])],
    }
    peer_t, subject_t = bracketed(peers, subjects, r)
    step_flops = cost_flops(plain, xs[:8]) / 8
    _report_erf224(peer_t, subject_t, n_torch, len(xs), 5 * mm_flops, step_flops, n, quick)


def _report_erf224(peer_t, subject_t, n_torch, n_jax, mm_flops, step_flops, n, quick):
    """Rows of the bracketed timing: every jaxrf ratio is taken against the peers' runs just
    before and just after that jaxrf run (:func:`bench_common.bracketed`)."""
    item = f"ResNet-50 torchvision layout, {n}x{n}" + (" (quick: tiny)" if quick else "")
    torch_ips = {
        k: [[n_torch / s for s in slots] for slots in peer_t[k]]
        for k in ("torch loop b1", "torch batched b8")
    }
    best = [
        [max(a, b) for a, b in zip(loop, batched, strict=True)]
        for loop, batched in zip(*torch_ips.values(), strict=True)
    ]
    peak = [[mm_flops / s for s in slots] for slots in peer_t["matmul 2048 x5"]]

    def flat(per_round):
        return [v for slots in per_round for v in slots]

    around_note = "; timed before and after every jaxrf variant in every round"
    row(
        "erf224",
        item,
        "matmul 2048 float32",
        statistics.median(flat(peak)) / 1e9,
        "GFLOP/s",
        spread([p / 1e9 for p in flat(peak)]) + around_note,
    )
    row(
        "erf224",
        item,
        "XLA cost analysis, plain ERF step",
        step_flops / 1e9,
        "GFLOP/image",
        "every FLOP/s ratio counts these FLOPs, so pruning counts as speed",
    )
    for k, v in torch_ips.items():
        row("erf224", k, "throughput", statistics.median(flat(v)), "images/s", spread(flat(v)))
    for j, (k, seconds) in enumerate(subject_t.items()):
        ips = [n_jax / s for s in seconds]
        row("erf224", k, "throughput", statistics.median(ips), "images/s", spread(ips))
        ratio_row(
            "erf224",
            k,
            "ratio to the better PyTorch script (per round)",
            [a / b for a, b in zip(ips, around(best, j), strict=True)],
            ">= 1.3 (against the mean of the better script's runs just before and after)",
        )
        ratio_row(
            "erf224",
            k,
            "FLOP/s / matmul FLOP/s (per round)",
            [step_flops * a / p for a, p in zip(ips, around(peak, j), strict=True)],
            ">= 0.7 (against the matmul runs just before and after)",
        )


def section_crop1024(quick: bool):
    """Centre unit at 1024: input crop and cone pruning against the PyTorch full-image loop."""
    import torch

    print("crop1024: ResNet-50 at 1024, centre unit", flush=True)
    n, r, batch = (128, 3, 2) if quick else (1024, 3, 4)
    net, variables, layers = resnet_setup(quick)
    tmodel = torch_model(variables, layers, 0.125 if quick else 1.0)
    spec = jax.ShapeDtypeStruct((1, n, n, 3), jnp.float32)
    rf = jaxrf.receptive_field(net, spec)
    index = centre(rf.output_shape)
    crop = jaxrf.crop_for_unit(rf, index)
    item = f"ResNet-50 {n}x{n}, centre unit {index}" + (" (quick: tiny)" if quick else "")
    row(
        "crop1024",
        item,
        "crop",
        f"{crop.start} + {crop.size}",
        "px",
        f"{crop.fraction:.3f} of the pixels",
    )
    xs = jax.random.normal(jax.random.key(3), (batch, n, n, 3), jnp.float32)
    relu = relu_of(net)
    _, p = pruned_relu(net, n)  # for its input box only
    xc = crop.take(xs)

    def run_crop():
        m = jaxrf_erf(relu, xc, batch, index=crop.index)
        return crop.paste(m[None, :, :, None])[0, :, :, 0]

    def run_cone():
        return jaxrf_erf(relu, xs, batch, index=index, crop="cone")

    def run_pruned():
        return jaxrf_erf(relu, xs, batch, index=index, fold=True, crop="cone")

    a, b = np.asarray(run_crop()), np.asarray(run_pruned())
    row(
        "crop1024",
        item,
        "pruned vs crop map, max rel. difference",
        np.abs(a - b).max() / np.abs(a).max(),
        "",
        "float32",
    )
    c = np.asarray(run_cone())  # compiles, as the two above did
    row(
        "crop1024",
        item,
        "cone-pruned (no fold) vs crop map, max rel. difference",
        np.abs(a - c).max() / np.abs(a).max(),
        "",
        "float32",
    )
    row("crop1024", item, "pruned input box", str(p.input_box[1:3]), "px")
    xt = torch.from_numpy(np.asarray(jnp.transpose(xs, (0, 3, 1, 2))).copy())
    n_torch = 2
    t = rounds(
        {
            "torch loop": lambda: torch_erf_loop(tmodel, xt[:n_torch]),
            "crop": run_crop,
            "cone-pruned": run_cone,
            "folded + cone-pruned": run_pruned,
        },
        r,
    )
    torch_ips = [n_torch / s for s in t["torch loop"]]
    row(
        "crop1024",
        item,
        "throughput, torch full-image loop",
        statistics.median(torch_ips),
        "images/s",
        spread(torch_ips),
    )
    for k in ("crop", "cone-pruned", "folded + cone-pruned"):
        v = [batch / s for s in t[k]]
        row(
            "crop1024",
            item,
            f"throughput, jaxrf ERF {k} (b{batch})",
            statistics.median(v),
            "images/s",
            spread(v),
        )
        ratio_row(
            "crop1024",
            item,
            f"ratio {k} / torch loop (per round)",
            [a / b for a, b in zip(v, torch_ips, strict=True)],
            ">= 8",
        )


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the process's peak RSS to its current RSS (Linux ``clear_refs`` 5); returns the
    current RSS in KiB. Elsewhere the peak keeps counting from the process start."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss() -> int:
    """Peak RSS (KiB) since :func:`reset_peak` (Linux), else since the process start."""
    try:
        return _status_kib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(kind: str, size: int, quick: bool) -> None:
    """Run in a subprocess: one ERF of ``kind``; prints peak RSS and the RSS before (KiB).

    The PyTorch child builds the network with PyTorch's own initialisation (no JAX work); every
    child has imported both libraries, so the baselines differ only by what each builds.
    """
    layers = (1, 1, 1, 1) if quick else (3, 4, 6, 3)
    batch = 8 if size <= 224 else 4
    xs = np.random.default_rng(0).standard_normal((batch, size, size, 3), np.float32)
    if kind == "torch":
        import torch

        model = torch_model(None, layers, 0.125 if quick else 1.0)
        base = reset_peak()
        torch_erf_loop(model, torch.from_numpy(xs.transpose(0, 3, 1, 2).copy()))
    else:
        net, _, _ = resnet_setup(quick)
        base = reset_peak()
        if kind == "full":
            jaxrf_erf(relu_of(net), xs, batch)
        elif kind == "crop":
            spec = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
            rf = jaxrf.receptive_field(net, spec)
            crop = jaxrf.crop_for_unit(rf, centre(rf.output_shape))
            jaxrf_erf(relu_of(net), crop.take(xs), batch, index=crop.index)
        else:
            jaxrf_erf(relu_of(net), xs, batch, fold=True, crop="cone")
    peak = peak_rss()
    print("PEAK_RSS_KIB", peak, base, flush=True)


def section_memory(quick: bool):
    print("memory: peak RSS of one ERF batch (one subprocess each)", flush=True)
    sizes = (64, 256) if quick else (224, 1024)
    for size in sizes:
        kinds = ["torch", "full"] + (["crop", "pruned"] if size == sizes[1] else [])
        for kind in kinds:
            script = str(Path(__file__).with_name("benchmark.py"))
            cmd = [sys.executable, script, "--memory-child", kind, str(size)]
            cmd += ["--quick"] if quick else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            line = next(v for v in out.splitlines() if v.startswith("PEAK"))
            peak, base = (int(v) / 1024 for v in line.split()[1:])
            name = {
                "torch": "PyTorch loop (b1)",
                "full": "jaxrf ERF",
                "crop": "jaxrf ERF, crop",
                "pruned": "jaxrf ERF, folded + cone-pruned",
            }[kind]
            batch = 8 if size <= 224 else 4
            row(
                "memory",
                f"ResNet-50 {size}x{size}, {batch} images",
                f"peak RSS, {name}",
                peak,
                "MiB",
                f"peak during the ERF (compile included); {base:.0f} MiB resident before it, "
                "after imports and building the network",
            )
            row(
                "memory",
                f"ResNet-50 {size}x{size}, {batch} images",
                f"peak RSS growth during the ERF, {name}",
                peak - base,
                "MiB",
                "the comparable figure: the PyTorch child has imported JAX as well, so its "
                "resident baseline is larger",
            )


def section_gpu(quick: bool):
    """ERF images/s at 224 and 1024 (batch 32), FLOP/s fraction of a matmul, support-map
    passes/s; only where a GPU is present."""
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if not gpus:
        row("gpu", "GPU entry", "skipped", "no GPU (jax.devices('gpu') is empty)")
        return
    print("gpu: ERF on", gpus[0].device_kind, flush=True)
    net, _, _ = resnet_setup(quick)
    peaks = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        call, flops = matmul_fn(8192 if not quick else 1024, dtype, gpus[0])
        peaks[jnp.dtype(dtype).name] = flops / statistics.median(once(call) for _ in range(5))
        row(
            "gpu",
            f"matmul {jnp.dtype(dtype).name}",
            "FLOP/s",
            peaks[jnp.dtype(dtype).name] / 1e12,
            "TFLOP/s",
        )
    for n in (224, 1024) if not quick else (64, 128):
        xs = jax.device_put(jax.random.normal(jax.random.key(2), (32, n, n, 3)), gpus[0])
        step = erf_step(net)
        block(step(xs))
        t = statistics.median(once(functools.partial(step, xs)) for _ in range(3))
        flops = cost_flops(step, xs)
        row(
            "gpu",
            f"ResNet-50 {n}x{n}, batch 32",
            "ERF throughput",
            32 / t,
            "images/s",
            f"{flops / t / peaks['float32']:.2f} of float32 matmul FLOP/s, "
            f"{flops / t / peaks['bfloat16']:.2f} of bfloat16",
        )
    fn = jaxrf.models.get("luo_relu").build()
    x = jnp.zeros((1, 256, 256, 1))
    jaxrf.support_map(fn, x, mode="measured")
    t = time.perf_counter()
    sm = jaxrf.support_map(fn, x, mode="measured")
    row("gpu", "luo_relu 256x256 support map", "passes/s", sm.passes / (time.perf_counter() - t))
