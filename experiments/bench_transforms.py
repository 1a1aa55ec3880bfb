"""Benchmark section on the ERF step's work: XLA cost analysis of the plain step, the
constant-folded one, the input crop and cone pruning (deterministic FLOP counts)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from bench_common import cost_flops, row
from bench_erf import pruned_relu
from bench_models import centre, erf_step, resnet_setup

import jaxrf


def _step_of(relu_fn, index=None):
    """jit of the summed positive-part input gradients of ``relu_fn``'s unit (per image)."""

    def one(xi):
        y, pull = jax.vjp(relu_fn, xi[None])
        c = index if index is not None else centre(y.shape[1:3])
        seed = jnp.zeros(y.shape[1:3], y.dtype).at[c].set(1)
        (g,) = pull(jnp.broadcast_to(seed[None, :, :, None], y.shape))
        return jnp.maximum(g[0], 0).sum(-1)

    return jax.jit(lambda xb: jax.vmap(one)(xb).sum(0))


def section_flops(quick: bool):
    print("flops: work of the ERF step (XLA cost analysis)", flush=True)
    net, _, _ = resnet_setup(quick)
    for n in (128,) if quick else (224, 1024):
        xs = jax.random.normal(jax.random.key(2), (2, n, n, 3), jnp.float32)
        plain = cost_flops(erf_step(net), xs) / 2
        item = f"ResNet-50 {n}x{n}, centre unit" + (" (quick: tiny)" if quick else "")
        row("flops", item, "plain ERF step", plain / 1e9, "GFLOP/image")
        folded = jaxrf.fold_convs(lambda x: jax.nn.relu(net(x)))
        f_fold = cost_flops(_step_of(folded), xs) / 2
        row(
            "flops",
            item,
            "constant-folded",
            f_fold / 1e9,
            "GFLOP/image",
            f"{f_fold / plain:.3f} of plain",
        )
        rf = jaxrf.receptive_field(net, jax.ShapeDtypeStruct((1, n, n, 3), jnp.float32))
        crop = jaxrf.crop_for_unit(rf, centre(rf.output_shape))
        f_crop = cost_flops(_step_of(lambda x: jax.nn.relu(net(x)), crop.index), crop.take(xs)) / 2
        row(
            "flops",
            item,
            "input crop",
            f_crop / 1e9,
            "GFLOP/image",
            f"{f_crop / plain:.3f} of plain",
        )
        pruned, p = pruned_relu(jaxrf.fold_convs(net), n)
        f_prune = cost_flops(_step_of(pruned, (0, 0)), xs) / 2
        row(
            "flops",
            item,
            "folded + cone-pruned",
            f_prune / 1e9,
            "GFLOP/image",
            f"{f_prune / plain:.3f} of plain; input box {p.input_box[1:3]}; run whole: "
            f"{sorted(set(p.whole)) or 'none'}",
        )
        a = np.asarray(erf_step(net)(xs))
        b = np.asarray(_step_of(pruned, (0, 0))(xs))
        row(
            "flops",
            item,
            "folded + cone-pruned vs plain map, max rel. difference",
            np.abs(a - b).max() / np.abs(a).max(),
            "",
            "float32: the folded kernels round differently, which can flip a near-zero ReLU "
            "mask; exact in float64 (tests/test_fold.py, tests/test_prune.py)",
        )
