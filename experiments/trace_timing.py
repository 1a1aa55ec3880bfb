"""How long jaxrf.receptive_field takes on a ResNet-152 at 224: tracing vs walking the jaxpr.

No paper figure: the cost of jaxrf's analytic walk next to the cost of tracing. A bottleneck
ResNet-152 (torchvision layout, [3, 8, 36, 3] blocks, written in jax.lax, NHWC) is traced with
``jax.make_jaxpr`` ("trace"), and the resulting ``ClosedJaxpr`` is handed to the public
``jaxrf.receptive_field(closed_jaxpr)`` ("walk"), so the two are timed apart. Weights are built
inside the function from constants, so they are never materialised: jaxrf evaluates constants
only when a rule needs their values.

Writes results/trace_timing.csv: one row per repetition with trace and walk seconds.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

import jaxrf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_csv  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")


def conv(x, k, cout, stride=1):
    w = jnp.ones((k, k, x.shape[-1], cout), x.dtype)  # a constant: never evaluated
    pad = ((k // 2, k // 2),) * 2
    return lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=DN)


def bottleneck(x, width, stride):
    y = jax.nn.relu(conv(x, 1, width))
    y = jax.nn.relu(conv(y, 3, width, stride))
    y = conv(y, 1, 4 * width)
    if stride != 1 or x.shape[-1] != 4 * width:
        x = conv(x, 1, 4 * width, stride)
    return jax.nn.relu(x + y)


def resnet(x, blocks=(3, 8, 36, 3)):
    x = jax.nn.relu(conv(x, 7, 64, 2))
    x = lax.reduce_window(
        x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )
    for stage, n in enumerate(blocks):
        for b in range(n):
            x = bottleneck(x, 64 * 2**stage, 2 if b == 0 and stage > 0 else 1)
    return x


def measure(size: int, blocks) -> dict[str, object]:
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    t0 = time.perf_counter()
    closed = jax.make_jaxpr(lambda x: resnet(x, blocks))(x)
    t1 = time.perf_counter()
    rf = jaxrf.receptive_field(closed)  # the program carries the input shape
    t2 = time.perf_counter()
    return {
        "network": f"resnet_bottleneck_{'_'.join(map(str, blocks))}",
        "input": size,
        "equations": len(closed.jaxpr.eqns),
        "layers": len(rf.layers),
        "trace_s": round(t1 - t0, 4),
        "walk_s": round(t2 - t1, 4),
        "size": rf.size[0],
        "stride": rf.stride[0],
        "padding": rf.padding[0],
    }


def main(argv=None):
    args = parse_args(__doc__, argv)
    blocks = (1, 1, 1, 1) if args.quick else (3, 8, 36, 3)
    rows = [measure(224, blocks) for _ in range(1 if args.quick else 3)]
    path = write_csv(
        args.out_dir / "trace_timing.csv",
        rows,
        __file__,
        "no paper figure: trace (jax.make_jaxpr) vs walk (jaxrf.receptive_field on the "
        "ClosedJaxpr) of a ResNet-152 at 224",
    )
    walk = statistics.median(r["walk_s"] for r in rows)
    trace = statistics.median(r["trace_s"] for r in rows)
    print(f"{rows[0]['network']}: trace {trace:.3f} s, walk {walk:.3f} s (median); -> {path}")


if __name__ == "__main__":
    main()
