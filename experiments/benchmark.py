"""Performance of jaxrf's probes, measured side by side in one run (issue 7).

Reproduces no paper figure: it measures what jaxrf costs against the ways people compute the
same maps, on this machine, in one process, so that ratios mean something on a shared, noisy
CPU (timings of the compared methods are interleaved round by round and medians are taken).

Sections (``--sections a,b,c,d,e``):

a. All-positions support map of a fully convolutional network at 256x256 (Luo's ReLU stack,
   RF 11): ``jaxrf.support_map`` (Jacobian colouring) vs one backward pass per output position
   (timed on a subset of positions, extrapolated, and said so).
b. ERF throughput, RepLKNet protocol (ReLU on the centre output values, summed over channels;
   positive part of the input gradient, summed over colour channels), torchvision-layout
   ResNet-50 at 224 with random weights: ``jaxrf.effective_receptive_field`` vs a plain
   ``jax.jit(jax.vmap(vjp))`` vs a PyTorch autograd loop (one image per step,
   ``torch.autograd.grad`` w.r.t. the input) on the identical network (same weights, checked),
   plus FLOP/s from XLA's cost analysis as a fraction of a 2048x2048 float32 matmul; and the
   variants tried to make it faster (batch size, NCHW, BN folding, ``lax.map``, float64, and
   jaxrf's ``lowering=`` options: ``"auto"`` = ``"matmul"`` on CPU, ``"none"``, ``"patches"``).
   Where the time goes inside the step: experiments/profile_erf.py.
c. ResNet-50 at 1024 (RepLKNet's setting): the RF-cone crop (``jaxrf.crop_for_unit``) vs the
   PyTorch full-image loop; the crop's gradient is checked against JAX's full-image gradient.
d. Analytic: tracing + walking ResNet-152 and Inception v3; walk time vs number of jaxpr
   equations over Luo stacks of increasing depth (least-squares line and R^2).
e. Memory: peak RSS of an ERF over 64, 256, 1024 streamed images (one subprocess each).

Writes ``results/benchmark.csv`` (tidy: section, item, metric, value, unit, note) and
``results/benchmark.md``. ``--quick`` runs tiny sizes in seconds (the smoke test).
"""

from __future__ import annotations

import functools
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jaxrf  # noqa: E402
import jaxrf.models  # noqa: E402
from jaxrf._lowering import lower_convs  # noqa: E402

ROWS: list[dict] = []


def row(section, item, metric, value, unit="", note=""):
    value = float(value) if isinstance(value, np.floating | np.integer) else value
    ROWS.append(dict(section=section, item=item, metric=metric, value=value, unit=unit, note=note))
    shown = f"{value:.4g}" if isinstance(value, float) else value
    print(f"  [{section}] {item}: {metric} = {shown} {unit} {note}".rstrip(), flush=True)
    return value


# ---------------------------------------------------------------------------------------
# Timing helpers.
# ---------------------------------------------------------------------------------------


def block(x):
    return jax.tree_util.tree_map(
        lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x
    )


def once(fn: Callable) -> float:
    t = time.perf_counter()
    block(fn())
    return time.perf_counter() - t


def interleaved(fns: dict[str, Callable], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin (one call each per round)."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            times[k].append(once(f))
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    env = _common.environment()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "jax": env["jax"],
        "flax": env["flax"],
        "torch": torch_version,
        "device": env["device"],
        "python": platform.python_version(),
        "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


def matmul_flops(n: int = 2048, rounds: int = 10) -> float:
    """FLOP/s of an ``n x n`` float32 matmul (median of ``rounds``)."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    block(f(a))
    return 2 * n**3 / statistics.median(once(lambda: f(a)) for _ in range(rounds))


def compiled_flops(compiled) -> float:
    """FLOPs of a compiled computation by XLA's cost analysis (nan where it has none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def cost_flops(jitted, *args) -> float:
    return compiled_flops(jitted.lower(*args).compile())


# ---------------------------------------------------------------------------------------
# a. All-positions support map: colouring vs one pass per position.
# ---------------------------------------------------------------------------------------


def section_a(quick: bool):
    print("a. all-positions support map", flush=True)
    n = 48 if quick else 256
    entry = jaxrf.models.get("luo_relu")
    fn = entry.build()
    x = jax.random.normal(jax.random.key(0), (1, n, n, 1), jnp.float32)
    out_shape = fn(x).shape[1:3]
    positions = math.prod(out_shape)

    t = time.perf_counter()
    sm = jaxrf.support_map(fn, x, mode="measured")
    cold = time.perf_counter() - t
    t = time.perf_counter()
    sm = jaxrf.support_map(fn, x, mode="measured")
    warm = time.perf_counter() - t

    @jax.jit
    def naive_mask(index):
        y, pull = jax.vjp(fn, x)
        hw = [jnp.arange(m) == index[a] for a, m in enumerate(out_shape)]
        seed = (hw[0][:, None] & hw[1][None, :]).astype(y.dtype)
        (g,) = pull(jnp.broadcast_to(seed[None, :, :, None], y.shape))
        return jnp.any(g[0] != 0, axis=-1)

    def box(mask):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size == 0:
            return None  # every path to this unit is dead (ReLU) at this input
        return ((int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1])))

    rng = np.random.default_rng(0)
    subset = 16 if quick else 256
    picks = [tuple(int(v) for v in rng.integers(0, out_shape)) for _ in range(subset)]
    np.asarray(naive_mask(jnp.asarray(picks[0])))  # compile
    t = time.perf_counter()
    agree = 0
    for p in picks:
        agree += box(np.asarray(naive_mask(jnp.asarray(p)))) == sm.box(p)
    per_pass = (time.perf_counter() - t) / subset
    naive = per_pass * positions

    item = f"luo_relu {n}x{n} (RF 11, {positions} output positions)"
    row("a", item, "backward passes, naive", positions, "passes")
    row("a", item, "backward passes, jaxrf.support_map", sm.passes, "passes")
    row("a", item, "pass ratio naive/jaxrf", positions / sm.passes, "x", "target >= 20")
    row(
        "a",
        item,
        "wall, naive loop",
        naive,
        "s",
        f"extrapolated from {subset} timed positions ({per_pass * 1e3:.2f} ms/pass)",
    )
    row("a", item, "wall, jaxrf.support_map (warm)", warm, "s", f"cold incl. compile {cold:.2f} s")
    row(
        "a",
        item,
        "wall per pass, jaxrf.support_map",
        warm / sm.passes * 1e3,
        "ms",
        f"naive pass {per_pass * 1e3:.2f} ms (backward only: x is closed over, so XLA folds the "
        "forward); jaxrf batches passes with vmap, one shared forward",
    )
    row("a", item, "wall ratio naive/jaxrf", naive / warm, "x")
    row("a", item, "naive boxes equal jaxrf boxes", f"{agree}/{subset}")


# ---------------------------------------------------------------------------------------
# b, c. ResNet-50 (torchvision layout): jaxrf vs jit(vmap(vjp)) vs PyTorch.
# ---------------------------------------------------------------------------------------


def resnet_setup(quick: bool):
    layers = (1, 1, 1, 1) if quick else (3, 4, 6, 3)
    width = 0.125 if quick else 1.0
    entry = jaxrf.models.get("resnet50_torchvision")
    variables = entry.init(jax.random.key(0), (1, 64, 64, 3), layers=layers, width=width)

    def net(x):
        return entry.apply(variables, x, layers=layers, width=width)

    return net, variables, layers


def centre(y_shape):
    return tuple(m // 2 for m in y_shape)


def erf_one(net, xi):
    """RepLKNet map of one image ``xi`` (H, W, C): d relu(y[centre]).sum() / dx, positive part."""
    y, pull = jax.vjp(lambda x: jax.nn.relu(net(x)), xi[None])
    c = centre(y.shape[1:3])
    seed = jnp.zeros(y.shape[1:3], y.dtype).at[c].set(1)
    (g,) = pull(jnp.broadcast_to(seed[None, :, :, None], y.shape))
    return jnp.maximum(g[0], 0).sum(-1)


def torch_model(variables, layers):
    """The same network in PyTorch (NCHW), loaded with the same weights."""
    import torch
    from torch import nn

    params, stats = variables["params"], variables["batch_stats"]

    def conv_bn(p, s, stride, pad):
        k = np.asarray(p["conv"]["kernel"])  # HWIO -> OIHW
        conv = nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], stride, pad, bias=False)
        conv.weight.data = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
        bn = nn.BatchNorm2d(k.shape[3], eps=1e-5)
        bn.weight.data = torch.from_numpy(np.asarray(p["bn"]["scale"]).copy())
        bn.bias.data = torch.from_numpy(np.asarray(p["bn"]["bias"]).copy())
        bn.running_mean.data = torch.from_numpy(np.asarray(s["bn"]["mean"]).copy())
        bn.running_var.data = torch.from_numpy(np.asarray(s["bn"]["var"]).copy())
        return nn.Sequential(conv, bn)

    class Bottleneck(nn.Module):
        def __init__(self, name, stride):
            super().__init__()
            p, s = params[name], stats[name]
            self.c1 = conv_bn(p["conv1"], s["conv1"], 1, 0)
            self.c2 = conv_bn(p["conv2"], s["conv2"], stride, 1)
            self.c3 = conv_bn(p["conv3"], s["conv3"], 1, 0)
            self.down = (
                conv_bn(p["downsample"], s["downsample"], stride, 0) if "downsample" in p else None
            )

        def forward(self, x):
            y = torch.relu(self.c1(x))
            y = torch.relu(self.c2(y))
            y = self.c3(y)
            return torch.relu(y + (self.down(x) if self.down is not None else x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(params["conv1"], stats["conv1"], 2, 3)
            self.pool = nn.MaxPool2d(3, 2, 1)
            blocks = []
            for stage, units in enumerate(layers):
                for u in range(units):
                    stride = 2 if (u == 0 and stage > 0) else 1
                    blocks.append(Bottleneck(f"layer{stage + 1}_{u}", stride))
            self.blocks = nn.Sequential(*blocks)

        def forward(self, x):
            return self.blocks(self.pool(torch.relu(self.stem(x))))

    return Net().eval()


def torch_erf_loop(model, images_nchw):
    """The PyTorch script people copy: one image per step, autograd.grad w.r.t. the input."""
    import torch

    acc = None
    for x in images_nchw:
        x = x[None].clone().requires_grad_(True)
        y = model(x)
        h, w = y.shape[2] // 2, y.shape[3] // 2
        (g,) = torch.autograd.grad(torch.relu(y[:, :, h, w]).sum(), x)
        m = torch.relu(g).sum((0, 1))
        acc = m if acc is None else acc + m
    return acc


def folded_lax_resnet(variables, layers, layout="NHWC", dtype=jnp.float32):
    """The same network in plain jax.lax with batch norm folded into the convs (either layout)."""
    params, stats = variables["params"], variables["batch_stats"]
    dn = ("NHWC", "HWIO", "NHWC") if layout == "NHWC" else ("NCHW", "OIHW", "NCHW")
    caxis = -1 if layout == "NHWC" else 1

    def fold(p, s):
        k = np.asarray(p["conv"]["kernel"], np.float64)
        scale = np.asarray(p["bn"]["scale"]) / np.sqrt(np.asarray(s["bn"]["var"]) + 1e-5)
        bias = np.asarray(p["bn"]["bias"]) - np.asarray(s["bn"]["mean"]) * scale
        k = k * scale
        if layout == "NCHW":
            k = k.transpose(3, 2, 0, 1)
        return jnp.asarray(k, dtype), jnp.asarray(bias, dtype)

    def conv(x, kb, stride, pad):
        k, b = kb
        y = jax.lax.conv_general_dilated(
            x, k, (stride, stride), [(pad, pad)] * 2, dimension_numbers=dn
        )
        shape = [1] * 4
        shape[caxis] = b.shape[0]
        return y + b.reshape(shape)

    w = {"stem": fold(params["conv1"], stats["conv1"]), "blocks": []}
    for stage, units in enumerate(layers):
        for u in range(units):
            name = f"layer{stage + 1}_{u}"
            p, s = params[name], stats[name]
            blk = {c: fold(p[c], s[c]) for c in ("conv1", "conv2", "conv3")}
            if "downsample" in p:
                blk["down"] = fold(p["downsample"], s["downsample"])
            w["blocks"].append((2 if (u == 0 and stage > 0) else 1, blk))

    def net(x):
        x = jax.nn.relu(conv(x, w["stem"], 2, 3))
        win = (1, 3, 3, 1) if layout == "NHWC" else (1, 1, 3, 3)
        st = (1, 2, 2, 1) if layout == "NHWC" else (1, 1, 2, 2)
        pad = (
            ((0, 0), (1, 1), (1, 1), (0, 0))
            if layout == "NHWC"
            else ((0, 0), (0, 0), (1, 1), (1, 1))
        )
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, win, st, pad)
        for stride, b in w["blocks"]:
            y = jax.nn.relu(conv(x, b["conv1"], 1, 0))
            y = jax.nn.relu(conv(y, b["conv2"], stride, 1))
            y = conv(y, b["conv3"], 1, 0)
            x = jax.nn.relu(y + (conv(x, b["down"], stride, 0) if "down" in b else x))
        return x

    return net


def erf_one_nchw(net, xi):
    y, pull = jax.vjp(lambda x: jax.nn.relu(net(x)), xi[None])
    c = centre(y.shape[2:4])
    seed = jnp.zeros(y.shape[2:4], y.dtype).at[c].set(1)
    (g,) = pull(jnp.broadcast_to(seed[None, None], y.shape))
    return jnp.maximum(g[0], 0).sum(0)


def section_b(quick: bool):
    import torch

    print("b. ERF throughput, ResNet-50 at 224", flush=True)
    n = 64 if quick else 224
    rounds = 1 if quick else 3
    net, variables, layers = resnet_setup(quick)
    tmodel = torch_model(variables, layers)
    batch = 8
    xs = jax.random.normal(jax.random.key(2), (batch, n, n, 3), jnp.float32)
    xs_nchw = jnp.transpose(xs, (0, 3, 1, 2))
    xt = torch.from_numpy(np.asarray(xs_nchw).copy())

    # Same network, same weights: outputs and ERF maps agree.
    with torch.no_grad():
        yt = tmodel(xt[:1]).numpy().transpose(0, 2, 3, 1)
    yj = np.asarray(net(xs[:1]))
    out_err = np.abs(yt - yj).max() / np.abs(yj).max()
    row("b", "torch vs jax (same weights)", "max rel. output difference", out_err)

    base = {}
    base["vmap b8"] = jax.jit(lambda xb: jax.vmap(functools.partial(erf_one, net))(xb).sum(0))
    for b in (1, 4, 16):
        base[f"vmap b{b}"] = base["vmap b8"]  # same function, other batch shape
    base["lax.map b8"] = jax.jit(lambda xb: jax.lax.map(functools.partial(erf_one, net), xb).sum(0))
    fold_nhwc = folded_lax_resnet(variables, layers, "NHWC")
    fold_nchw = folded_lax_resnet(variables, layers, "NCHW")
    base["folded NHWC b8"] = jax.jit(
        lambda xb: jax.vmap(functools.partial(erf_one, fold_nhwc))(xb).sum(0)
    )
    base["folded NCHW b8"] = jax.jit(
        lambda xb: jax.vmap(functools.partial(erf_one_nchw, fold_nchw))(xb).sum(0)
    )
    inputs = {
        "vmap b8": xs,
        "vmap b1": xs[:1],
        "vmap b4": xs[:4],
        "vmap b16": jnp.concatenate([xs, xs]),
        "lax.map b8": xs,
        "folded NHWC b8": xs,
        "folded NCHW b8": xs_nchw,
    }
    ref = np.asarray(base["vmap b8"](xs))
    for k in ("folded NHWC b8", "folded NCHW b8"):
        err = np.abs(np.asarray(base[k](inputs[k])) - ref).max() / np.abs(ref).max()
        row("b", k, "max rel. map difference vs plain", err)
    for k, f in base.items():
        block(f(inputs[k]))

    fn_relu = lambda x: jax.nn.relu(net(x))  # noqa: E731
    n_jaxrf = 16 if not quick else 8
    xj = jnp.concatenate([xs, xs])[:n_jaxrf]
    lowerings = {
        "jaxrf.effective_receptive_field b8": "auto",  # the default: 'matmul' on CPU
        "jaxrf ERF b8, lowering='none'": "none",
        "jaxrf ERF b8, lowering='patches'": "patches",
    }

    def run_jaxrf(lowering):
        return jaxrf.effective_receptive_field(
            fn_relu, xj, batch_size=8, reduce="positive", progress=False, lowering=lowering
        ).map

    jmaps = {k: run_jaxrf(low) for k, low in lowerings.items()}  # compile
    tmap = torch_erf_loop(tmodel, xt).numpy()
    err = np.abs(tmap - ref).max() / np.abs(ref).max()
    row("b", "torch vs jax ERF map (8 images)", "max rel. difference", err)
    plain16 = np.asarray(base["vmap b8"](xj))
    for k, jmap in jmaps.items():
        err = np.abs(jmap * n_jaxrf - plain16).max() / np.abs(plain16).max()
        row("b", f"{k} vs plain ERF map", "max rel. difference", err)

    timed = {k: functools.partial(f, inputs[k]) for k, f in base.items()}
    for k, low in lowerings.items():
        timed[k] = functools.partial(run_jaxrf, low)
    n_torch = 2 if quick else 8
    timed["torch loop b1"] = lambda: torch_erf_loop(tmodel, xt[:n_torch])
    timed["matmul 2048"] = None
    mm = []

    def matmul():
        mm.append(matmul_flops(rounds=5))

    timed["matmul 2048"] = matmul
    sec = interleaved(timed, rounds)
    per_image = {k: v / inputs[k].shape[0] for k, v in sec.items() if k in inputs}
    for k in lowerings:
        per_image[k] = sec[k] / n_jaxrf
    per_image["torch loop b1"] = sec["torch loop b1"] / n_torch
    peak = statistics.median(mm)

    flops = cost_flops(base["vmap b8"], xs) / batch
    fwd = jax.jit(jax.vmap(lambda xi: net(xi[None])))
    fwd_flops = cost_flops(fwd, xs) / batch
    block(fwd(xs))
    t_fwd = statistics.median(once(lambda: fwd(xs)) for _ in range(rounds)) / batch
    torch_ips = 1 / per_image["torch loop b1"]
    item = f"ResNet-50 torchvision layout, {n}x{n}" + (" (quick: tiny)" if quick else "")
    row("b", item, "matmul 2048 float32", peak / 1e9, "GFLOP/s")
    lowered = lower_convs(net, "matmul")
    flops_lowered = (
        cost_flops(jax.jit(lambda xb: jax.vmap(functools.partial(erf_one, lowered))(xb).sum(0)), xs)
        / batch
    )
    row(
        "b",
        item,
        "XLA cost analysis, ERF step",
        flops / 1e9,
        "GFLOP/image",
        f"forward alone {fwd_flops / 1e9:.2f}; with lowering='matmul' {flops_lowered / 1e9:.2f} "
        "(the same products, plus the zero taps of the stem's phase-decomposed gradient); every "
        "FLOP/s ratio below counts the plain step's FLOPs",
    )
    for k, t in per_image.items():
        ips = 1 / t
        note = "" if k == "torch loop b1" else f"{ips / torch_ips:.2f}x torch"
        row("b", k, "throughput", ips, "images/s", note)
        if k != "torch loop b1":
            row("b", k, "ratio to torch loop", ips / torch_ips, "x", "target >= 1.2")
        row("b", k, "FLOP/s / matmul FLOP/s", flops * ips / peak, "", "target >= 0.7")
    row(
        "b",
        "forward only, vmap b8",
        "throughput",
        1 / t_fwd,
        "images/s",
        f"FLOP/s / matmul = {fwd_flops / t_fwd / peak:.2f}; backward share of ERF step "
        f"{1 - t_fwd / per_image['vmap b8']:.2f}",
    )
    # float64 (exact maps): one batch, timed once after compiling.
    with jax.enable_x64(True):
        net64 = folded_lax_resnet(variables, layers, "NHWC", jnp.float64)
        f64 = jax.jit(lambda xb: jax.vmap(functools.partial(erf_one, net64))(xb).sum(0))
        x64 = jnp.asarray(xs[:4], jnp.float64)
        block(f64(x64))
        t64 = once(lambda: f64(x64)) / 4
    row(
        "b",
        "folded NHWC b4 float64",
        "throughput",
        1 / t64,
        "images/s",
        f"{per_image['folded NHWC b8'] / t64:.2f}x float32 speed",
    )
    return variables, layers


def section_c(quick: bool):
    import torch

    print("c. ResNet-50 at 1024 with the RF-cone crop", flush=True)
    n = 256 if quick else 1024
    net, variables, layers = resnet_setup(quick)
    tmodel = torch_model(variables, layers)
    spec = jax.ShapeDtypeStruct((1, n, n, 3), jnp.float32)
    t = time.perf_counter()
    rf = jaxrf.receptive_field(net, spec)
    t_rf = time.perf_counter() - t
    index = centre(rf.output_shape)
    crop = jaxrf.crop_for_unit(rf, index)
    item = f"ResNet-50 {n}x{n}, centre unit {index}" + (" (quick: 1-1-1-1 blocks)" if quick else "")
    row("c", item, "receptive field size", str(rf.size), "px", f"traced in {t_rf:.2f} s")
    row(
        "c",
        item,
        "crop",
        f"{crop.start} + {crop.size}",
        "px",
        f"{crop.fraction:.3f} of the pixels; unit {crop.index} in the cropped output",
    )

    batch = 8
    xs = jax.random.normal(jax.random.key(3), (batch, n, n, 3), jnp.float32)
    fn_relu = lambda x: jax.nn.relu(net(x))  # noqa: E731
    xc = crop.take(xs)

    def run_crop():
        erf = jaxrf.effective_receptive_field(
            fn_relu, xc, index=crop.index, batch_size=batch, reduce="positive", progress=False
        )
        return crop.paste(erf.map[None, :, :, None])[0, :, :, 0]

    cmap = run_crop()
    # Exactness at this size (float32: up to rounding): JAX's full-image map of one image.
    full1 = jax.jit(lambda xb: erf_one(net, xb[0]))
    t = time.perf_counter()
    fmap = np.asarray(full1(xs[:1]))
    t_full_cold = time.perf_counter() - t
    t_full = once(lambda: full1(xs[:1]))
    c1 = np.asarray(jax.jit(lambda xb: erf_one(net, xb[0]))(crop.take(xs[:1])))
    pasted = crop.paste(c1[None, :, :, None])[0, :, :, 0]
    row(
        "c",
        item,
        "crop vs full-image map, max rel. difference",
        np.abs(pasted - fmap).max() / np.abs(fmap).max(),
        "",
        "float32; exact in float64 (tests)",
    )
    row(
        "c",
        item,
        "full-image map mass outside the crop",
        float(np.abs(fmap).sum() - np.abs(fmap[crop.slices]).sum()),
        "",
        "0 = the cone is inside",
    )
    del cmap

    xt = torch.from_numpy(np.asarray(jnp.transpose(xs, (0, 3, 1, 2))).copy())
    n_torch = 2 if quick else 3
    sec = interleaved(
        {
            "crop": run_crop,
            "torch": lambda: torch_erf_loop(tmodel, xt[:n_torch]),
        },
        1 if quick else 2,
    )
    crop_ips, torch_ips = batch / sec["crop"], n_torch / sec["torch"]
    row("c", item, "throughput, jaxrf ERF on the crop (b8)", crop_ips, "images/s")
    row(
        "c",
        item,
        "throughput, torch full-image loop",
        torch_ips,
        "images/s",
        f"{n_torch} steps timed",
    )
    row(
        "c",
        item,
        "throughput, JAX full image (b1)",
        1 / t_full,
        "images/s",
        f"compile+run {t_full_cold:.1f} s",
    )
    row("c", item, "ratio crop / torch loop", crop_ips / torch_ips, "x", "target >= 3")
    row("c", item, "ratio crop / JAX full image", crop_ips * t_full, "x")


# ---------------------------------------------------------------------------------------
# d. Analytic: trace + walk cost.
# ---------------------------------------------------------------------------------------


def count_eqns(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, list | tuple) else (v,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    total += count_eqns(getattr(inner, "jaxpr", inner))
    return total


class _Pretraced:
    """``jax`` as seen by ``jaxrf._trace``, with ``make_jaxpr`` returning a jaxpr traced before."""

    def __init__(self, closed):
        self._closed = closed

    def __getattr__(self, name):
        return getattr(jax, name)

    def make_jaxpr(self, fn, *args, **kwargs):
        return lambda *a, **k: self._closed


def trace_and_walk(fn, x, repeats: int) -> tuple[float, float, int]:
    """Best-of-``repeats`` seconds of tracing (``make_jaxpr``) and of the walk alone.

    The walk is timed by running ``jaxrf.receptive_field`` with ``make_jaxpr`` answering the
    jaxpr traced beforehand, so the two costs are measured apart, not subtracted. Returns
    ``(trace seconds, walk seconds, number of equations)``.
    """
    from jaxrf import _trace

    traces, walks = [], []
    closed = None
    for _ in range(repeats):
        t = time.perf_counter()
        closed = jax.make_jaxpr(lambda v: fn(v))(x)  # a fresh lambda: no tracing cache
        traces.append(time.perf_counter() - t)
        saved, _trace.jax = _trace.jax, _Pretraced(closed)
        try:
            walks.append(once(lambda: jaxrf.receptive_field(fn, x)))
        finally:
            _trace.jax = saved
    return min(traces), min(walks), count_eqns(closed.jaxpr)


def section_d(quick: bool):
    print("d. analytic: trace + walk", flush=True)
    nets = ["resnet_v1_50", "inception_v3"] if quick else ["resnet_v1_152", "inception_v3"]
    for name in nets:
        entry = jaxrf.models.get(name)
        over = {"width": 0.125} if quick else {}
        fn = entry.build(**over)
        x = jax.ShapeDtypeStruct(entry.input_shape, jnp.float32)
        t = time.perf_counter()
        rf = jaxrf.receptive_field(fn, x)  # cold: first trace of the model
        t_cold = time.perf_counter() - t
        t_trace, t_walk, eqns = trace_and_walk(fn, x, 1 if quick else 2)
        item = f"{name} {entry.input_shape[1]}x{entry.input_shape[2]}"
        row(
            "d",
            item,
            "jaxpr equations",
            eqns,
            "",
            f"size {rf.size}, stride {rf.stride}, "
            f"padding {rf.padding}; first receptive_field call {t_cold:.2f} s",
        )
        row("d", item, "trace (make_jaxpr)", t_trace, "s")
        row("d", item, "walk", t_walk, "s")
        row("d", item, "walk per equation", t_walk / eqns * 1e6, "us")

    depths = [2, 4, 8, 16] if quick else [8, 16, 32, 64, 128, 256]
    eq, walk = [], []
    for depth in depths:
        entry = jaxrf.models.get("luo_relu")
        fn = entry.build(depth=depth)
        x = jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32)
        jaxrf.receptive_field(fn, x)  # warm-up
        t_trace, t_walk, n_eqns = trace_and_walk(fn, x, 3)
        eq.append(n_eqns)
        walk.append(t_walk)
        row(
            "d",
            f"luo_relu depth {depth}, 64x64",
            "equations / walk",
            n_eqns,
            "eqns",
            f"walk {t_walk * 1e3:.1f} ms, trace {t_trace * 1e3:.1f} ms",
        )
    eq_a, walk_a = np.asarray(eq, float), np.asarray(walk)
    slope, intercept = np.polyfit(eq_a, walk_a, 1)
    pred = slope * eq_a + intercept
    r2 = 1 - np.sum((walk_a - pred) ** 2) / np.sum((walk_a - walk_a.mean()) ** 2)
    loglog = np.polyfit(np.log(eq_a), np.log(walk_a), 1)[0]
    row(
        "d",
        "Luo stacks",
        "walk time slope",
        slope * 1e6,
        "us/equation",
        f"intercept {intercept * 1e3:.2f} ms",
    )
    row("d", "Luo stacks", "linear fit R^2", r2, "", "1 = linear")
    row("d", "Luo stacks", "log-log slope (walk vs equations)", loglog, "", "1 = linear")


# ---------------------------------------------------------------------------------------
# e. Memory: streaming ERF.
# ---------------------------------------------------------------------------------------


def memory_child(n_images: int, size: int) -> None:
    """Run in a subprocess: ERF over ``n_images`` streamed images; print peak RSS (KiB)."""
    entry = jaxrf.models.get("luo_relu")
    fn = entry.build()
    batch = 32

    def batches():
        for b in range(n_images // batch):
            yield np.random.default_rng(b).standard_normal((batch, size, size, 1), np.float32)

    first = np.zeros((batch, size, size, 1), np.float32)
    jaxrf.effective_receptive_field(fn, [first], progress=False)  # compile, warm the allocator
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    erf = jaxrf.effective_receptive_field(fn, batches(), progress=False)
    if erf.count != n_images:
        raise RuntimeError(f"ERF counted {erf.count} images, expected {n_images}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("PEAK_RSS_KIB", peak, before, flush=True)


def section_e(quick: bool):
    print("e. memory of a streaming ERF", flush=True)
    size = 64 if quick else 256
    counts = [64, 128] if quick else [64, 256, 1024]
    peaks, growth = [], []
    for n_images in counts:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(n_images), str(size)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        line = next(v for v in out.splitlines() if v.startswith("PEAK"))
        peak, before = (int(v) / 1024 for v in line.split()[1:])
        peaks.append(peak)
        growth.append(peak - before)
        row(
            "e",
            f"luo_relu ERF, {size}x{size}, batches of 32",
            f"peak RSS, {n_images} images",
            peak,
            "MiB",
            f"growth during the ERF {peak - before:.1f} MiB; the inputs alone would "
            f"be {n_images * size * size * 4 / 2**20:.0f} MiB",
        )
    row("e", "streaming", "peak RSS max/min", max(peaks) / min(peaks), "", "1 = flat")
    row(
        "e",
        "streaming",
        "growth during the ERF, largest",
        max(growth),
        "MiB",
        f"one batch is {32 * size * size * 4 / 2**20:.0f} MiB",
    )


# ---------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------


def write_markdown(path: Path, info: dict[str, str], quick: bool) -> None:
    lines = ["# Benchmark (issue 7)", ""]
    if quick:
        lines += ["**--quick smoke run: tiny sizes, numbers mean nothing.**", ""]
    lines += ["Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), ""]
    lines += ["| section | item | metric | value | unit | note |", "|---|---|---|---|---|---|"]
    for r in ROWS:
        v = r["value"]
        v = f"{v:.4g}" if isinstance(v, float) else v
        lines.append(
            f"| {r['section']} | {r['item']} | {r['metric']} | {v} | {r['unit']} | {r['note']} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        memory_child(int(sys.argv[2]), int(sys.argv[3]))
        return
    args = _common.parse_args(
        __doc__, argv, sections={"default": "abcde", "help": "which sections to run (abcde)"}
    )
    info = machine()
    print("machine:", info, flush=True)
    run = {"a": section_a, "b": section_b, "c": section_c, "d": section_d, "e": section_e}
    for s in args.sections:
        t = time.perf_counter()
        run[s](args.quick)
        print(f"  section {s}: {time.perf_counter() - t:.1f} s", flush=True)
    info["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    stem = "benchmark_quick" if args.quick else "benchmark"
    notes = [f"{k}: {v}" for k, v in info.items()]
    if args.quick:
        notes.append("--quick smoke run: tiny sizes, the numbers mean nothing")
    _common.write_csv(
        args.out_dir / f"{stem}.csv",
        ROWS,
        "experiments/benchmark.py",
        "none (performance of jaxrf, issue 7)",
        notes,
    )
    write_markdown(args.out_dir / f"{stem}.md", info, args.quick)
    print(f"wrote {args.out_dir / stem}.csv and .md", flush=True)


if __name__ == "__main__":
    main()
