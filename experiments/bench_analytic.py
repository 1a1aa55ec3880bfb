"""Benchmark sections without a peer network: the all-positions support map against one
backward pass per position, and the analytic side's trace and walk cost."""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_common import once, row

import jaxrf
import jaxrf.models


def section_support(quick: bool):
    """``jaxrf.support_map`` (Jacobian colouring) vs one backward pass per output position,
    the naive time extrapolated from a timed subset of positions (and said so)."""
    print("support: all-positions support map", flush=True)
    n = 48 if quick else 256
    fn = jaxrf.models.get("luo_relu").build()
    x = jax.random.normal(jax.random.key(0), (1, n, n, 1), jnp.float32)
    out_shape = fn(x).shape[1:3]
    positions = math.prod(out_shape)
    t = time.perf_counter()
    sm = jaxrf.support_map(fn, x, mode="measured")
    cold = time.perf_counter() - t
    warm = once(lambda: jaxrf.support_map(fn, x, mode="measured").passes)

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
    agree = sum(box(np.asarray(naive_mask(jnp.asarray(p)))) == sm.box(p) for p in picks)
    per_pass = (time.perf_counter() - t) / subset
    naive = per_pass * positions
    item = f"luo_relu {n}x{n} (RF 11, {positions} output positions)"
    extrapolated = f"EXTRAPOLATED from {subset} timed positions ({per_pass * 1e3:.2f} ms/pass)"
    row("support", item, "backward passes, naive", positions, "passes")
    row("support", item, "backward passes, jaxrf.support_map", sm.passes, "passes")
    row("support", item, "pass ratio naive/jaxrf", positions / sm.passes, "x", "exact count")
    row("support", item, "wall, naive loop", naive, "s", extrapolated)
    row("support", item, "wall, jaxrf.support_map (warm)", warm, "s", f"cold {cold:.2f} s")
    row("support", item, "wall ratio naive/jaxrf", naive / warm, "x", "naive wall " + extrapolated)
    row("support", item, "naive boxes equal jaxrf boxes", f"{agree}/{subset}")


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


def trace_and_walk(fn, x, repeats: int) -> tuple[float, float, int, str]:
    """Best-of-``repeats`` seconds of tracing and of the walk, the equation count, and how the
    walk was timed: on the pre-traced jaxpr (``jaxrf.receptive_field(closed_jaxpr)``) where
    jaxrf accepts one, else as the whole call minus the trace."""
    traces, walks, how = [], [], "walk on the pre-traced jaxpr"
    closed = None
    for _ in range(repeats):
        t = time.perf_counter()
        closed = jax.make_jaxpr(lambda v: fn(v))(x)  # a fresh lambda: no tracing cache
        traces.append(time.perf_counter() - t)
        try:
            walks.append(once(functools.partial(jaxrf.receptive_field, closed)))
        except TypeError:
            how = "walk = whole receptive_field call minus the trace (nan: not resolvable)"
            walks.append(once(lambda: jaxrf.receptive_field(fn, x)) - traces[-1])
    if min(walks) <= 0:
        walks = [float("nan")]
    return min(traces), min(walks), count_eqns(closed.jaxpr), how


def section_analytic(quick: bool):
    print("analytic: trace + walk", flush=True)
    nets = ["resnet_v1_50", "inception_v3"] if quick else ["resnet_v1_152", "inception_v3"]
    for name in nets:
        entry = jaxrf.models.get(name)
        fn = entry.build(**({"width": 0.125} if quick else {}))
        x = jax.ShapeDtypeStruct(entry.input_shape, jnp.float32)
        t = time.perf_counter()
        rf = jaxrf.receptive_field(fn, x)  # cold: first trace of the model
        t_cold = time.perf_counter() - t
        t_trace, t_walk, eqns, how = trace_and_walk(fn, x, 1 if quick else 2)
        item = f"{name} {entry.input_shape[1]}x{entry.input_shape[2]}"
        row(
            "analytic",
            item,
            "jaxpr equations",
            eqns,
            "",
            f"size {rf.size}, stride {rf.stride}; first receptive_field call {t_cold:.2f} s",
        )
        row("analytic", item, "trace (make_jaxpr)", t_trace, "s")
        row("analytic", item, "walk", t_walk, "s", how)
        row("analytic", item, "walk per equation", t_walk / eqns * 1e6, "us")
    depths = [2, 4, 8, 16] if quick else [8, 16, 32, 64, 128, 256]
    eq, walk = [], []
    for depth in depths:
        fn = jaxrf.models.get("luo_relu").build(depth=depth)
        x = jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32)
        jaxrf.receptive_field(fn, x)  # warm-up
        t_trace, t_walk, n_eqns, how = trace_and_walk(fn, x, 3)
        eq.append(n_eqns)
        walk.append(t_walk)
        row(
            "analytic",
            f"luo_relu depth {depth}, 64x64",
            "equations / walk",
            n_eqns,
            "eqns",
            f"walk {t_walk * 1e3:.1f} ms, trace {t_trace * 1e3:.1f} ms",
        )
    eq_a, walk_a = np.asarray(eq, float), np.asarray(walk)
    if not np.all(np.isfinite(walk_a)):
        row("analytic", "Luo stacks", "walk time slope", "not measured", "", "walk times are nan")
        return
    slope, intercept = np.polyfit(eq_a, walk_a, 1)
    pred = slope * eq_a + intercept
    r2 = 1 - np.sum((walk_a - pred) ** 2) / np.sum((walk_a - walk_a.mean()) ** 2)
    row(
        "analytic",
        "Luo stacks",
        "walk time slope",
        slope * 1e6,
        "us/equation",
        f"intercept {intercept * 1e3:.2f} ms",
    )
    row("analytic", "Luo stacks", "linear fit R^2", r2, "", "1 = linear")
