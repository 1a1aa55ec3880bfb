"""Benchmark section ``taps``: the cost of probing k layers at once.

``effective_receptive_field(fn, inputs, layer=[k names])`` runs one forward pass per batch
shared by the k backward passes. Timed against the same k layers probed in k separate calls
(k forward + k backward passes) and against the network's own output (1 forward + 1 backward),
in interleaved rounds; ratios are medians of the per-round ratios.
"""

from __future__ import annotations

import statistics

import jax
import numpy as np
from bench_common import ratio_row, rounds, row

import jaxrf
import jaxrf.models

STAGES = ("TorchResNet/layer1_2", "TorchResNet/layer2_3", "TorchResNet/layer3_5",
          "TorchResNet/layer4_2")  # fmt: skip


def section_taps(quick: bool):
    size, n, batch, n_rounds = (32, 2, 2, 3) if quick else (128, 16, 8, 5)
    fn = jaxrf.models.get("resnet50_torchvision").build(jax.random.key(0))
    xs = np.random.default_rng(0).normal(size=(n, size, size, 3)).astype(np.float32)
    names = [r.name for r in jaxrf.receptive_field(fn, xs[:1]).layers]
    missing = [s for s in STAGES if s not in names]
    if missing:
        raise ValueError(f"stage names {missing} not among the layers of resnet50_torchvision")

    def erf(**kw):
        return lambda: jaxrf.effective_receptive_field(
            fn, xs, batch_size=batch, progress=False, **kw
        )

    fns = {"output": erf(), "together": erf(layer=list(STAGES))}
    for s in STAGES:
        fns[s] = erf(layer=s)
    for f in fns.values():
        f()  # compile once, outside the timed rounds
    t = rounds(fns, n_rounds)
    separate = [sum(t[s][r] for s in STAGES) for r in range(n_rounds)]
    item = f"resnet50_torchvision {size}x{size}, {n} images, k={len(STAGES)} stage outputs"
    row("taps", item, "seconds, k layers together", statistics.median(t["together"]), "s")
    ratio_row("taps", item, "ratio k separate / together (per round)",
              [s / g for s, g in zip(separate, t["together"], strict=True)])  # fmt: skip
    ratio_row("taps", item, "ratio together / output only (per round)",
              [g / o for g, o in zip(t["together"], t["output"], strict=True)])  # fmt: skip
