"""Shared helpers of experiments/benchmark.py: result rows, interleaved timing, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import _common
import jax
import jax.numpy as jnp
import numpy as np

ROWS: list[dict] = []


def row(section, item, metric, value, unit="", note=""):
    """Record one result row (and print it)."""
    value = float(value) if isinstance(value, np.floating | np.integer) else value
    ROWS.append(dict(section=section, item=item, metric=metric, value=value, unit=unit, note=note))
    shown = f"{value:.4g}" if isinstance(value, float) else value
    print(f"  [{section}] {item}: {metric} = {shown} {unit} {note}".rstrip(), flush=True)
    return value


def block(x):
    return jax.tree_util.tree_map(
        lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x
    )


def once(fn: Callable) -> float:
    t = time.perf_counter()
    block(fn())
    return time.perf_counter() - t


def rounds(fns: dict[str, Callable], n: int) -> dict[str, list[float]]:
    """Seconds per call of each function in ``n`` interleaved rounds (one call each per round,
    in the order given: peer, jaxrf, peer, jaxrf, ...)."""
    times = {k: [] for k in fns}
    for _ in range(n):
        for k, f in fns.items():
            times[k].append(once(f))
    return times


def bracketed(peers: dict[str, Callable], subjects: dict[str, Callable], n: int):
    """Seconds per call in ``n`` rounds of ``peers, s1, peers, s2, ..., peers``: every subject
    runs between two runs of every peer, so its ratio to a peer can be taken against the
    peer's runs just before and just after it (on a shared machine the load drifts within a
    round; a peer timed tens of seconds away is a different machine).

    Returns ``(peer_times, subject_times)``: ``peer_times[k][r]`` lists the ``len(subjects) +
    1`` runs of peer ``k`` in round ``r``; ``subject_times[k][r]`` is one run.
    """
    peer_times = {k: [] for k in peers}
    subject_times = {k: [] for k in subjects}
    for _ in range(n):
        slots = {k: [once(f)] for k, f in peers.items()}
        for k, f in subjects.items():
            subject_times[k].append(once(f))
            for p, g in peers.items():
                slots[p].append(once(g))
        for k in peers:
            peer_times[k].append(slots[k])
    return peer_times, subject_times


def around(per_round_slots, j: int):
    """Per round, the mean of the peer values just before (slot ``j``) and after (``j + 1``)
    subject ``j``."""
    return [(slots[j] + slots[j + 1]) / 2 for slots in per_round_slots]


def spread(values) -> str:
    """``median [min-max] over n rounds`` of a list of per-round values."""
    return f"median of {len(values)} rounds, spread {min(values):.3g}-{max(values):.3g}"


def ratio_row(section, item, metric, per_round, target=""):
    """Row holding the median of per-round ratios, the spread in the note."""
    note = spread(per_round) + (f"; target {target}" if target else "")
    return row(section, item, metric, statistics.median(per_round), "x", note)


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


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
        "load_before": load(),
    }


def matmul_fn(n: int = 2048, dtype=jnp.float32, device=None):
    """(call, FLOPs per call) of an ``n x n`` matmul, compiled and run once."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    if device is not None:
        a = jax.device_put(a, device)
    f = jax.jit(lambda a: a @ a)
    block(f(a))
    return (lambda: f(a)), 2 * n**3


def matmul_flops(n: int = 2048, rounds: int = 10) -> float:
    """FLOP/s of an ``n x n`` float32 matmul (median of ``rounds``)."""
    call, flops = matmul_fn(n)
    return flops / statistics.median(once(call) for _ in range(rounds))


def compiled_flops(compiled) -> float:
    """FLOPs of a compiled computation by XLA's cost analysis (nan where it has none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def cost_flops(jitted, *args) -> float:
    return compiled_flops(jitted.lower(*args).compile())


def write_markdown(path: Path, info: dict[str, str], quick: bool) -> None:
    lines = ["# Benchmark", ""]
    if quick:
        lines += ["**--quick smoke run: tiny sizes, numbers mean nothing.**", ""]
    lines += ["Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), ""]
    lines += findings()
    lines += ["| section | item | metric | value | unit | note |", "|---|---|---|---|---|---|"]
    for r in ROWS:
        v = r["value"]
        v = f"{v:.4g}" if isinstance(v, float) else v
        lines.append(
            f"| {r['section']} | {r['item']} | {r['metric']} | {v} | {r['unit']} | {r['note']} |"
        )
    path.write_text("\n".join(lines) + "\n")


def findings() -> list[str]:
    """The README-facing lines: every ratio as the median of its interleaved rounds, and every
    extrapolated figure marked as such."""
    out = []
    for r in ROWS:
        note = str(r["note"])
        if r["unit"] == "x" and "median of" in note:
            out.append(f"- {r['item']}: {r['metric']} **{r['value']:.3g}x** (median; {note})")
        elif "EXTRAPOLATED" in note:
            out.append(f"- {r['item']}: {r['metric']} {r['value']:.4g} {r['unit']} ({note})")
    return (["## Findings (medians of interleaved rounds)", "", *out, ""]) if out else []
