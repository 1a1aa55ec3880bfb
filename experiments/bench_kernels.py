"""The weak kernels of the ERF step: ResNet-50's 3x3 64-channel convolutions at 56x56 (batch 8)
in several formulations, timed in interleaved rounds against XLA:CPU's convolution as jaxrf
compiles it with ``lowering="none"`` (YNNPACK's), each checked against a float64 reference. One
formulation is the same convolution with YNNPACK off (XLA's own, Eigen), which is how the ERF
step is compiled under a CPU lowering (jaxrf._xla).

The input gradient of a stride-1 SAME 3x3 convolution is the SAME convolution of the output
cotangent with the spatially flipped kernel with input and output channels swapped, so every
forward formulation doubles as an input-gradient formulation; ``jax.vjp`` of the convolution is
timed as the gradient's baseline.
"""

from __future__ import annotations

import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from bench_common import matmul_fn, rounds, row, spread
from jax import lax

from jaxrf import _xla
from jaxrf._lowering import lower_convs

NHWC = ("NHWC", "HWIO", "NHWC")
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def conv_nhwc(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)


def conv_nchw(x, w):
    """The same convolution in NCHW/OIHW (layouts converted outside the timed call)."""
    return lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")
    )


def conv_patches(x, w):
    """One matrix product: the 9 shifted copies of the input concatenated along channels."""
    n, h, wd, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = [xp[:, i : i + h, j : j + wd, :] for i in range(3) for j in range(3)]
    patches = jnp.concatenate(cols, -1).reshape(n * h * wd, 9 * c)
    return (patches @ w.reshape(9 * c, -1)).reshape(n, h, wd, -1)


def winograd_kernel(w):
    """``G g G^T`` per (in, out) channel pair: (4, 4, I, O), formed in float64."""
    return np.einsum("ai,ijco,bj->abco", _G, np.asarray(w, np.float64), _G).astype(np.float32)


def conv_winograd(x, u):
    """Winograd F(2x2, 3x3): 16 products [tiles x I] x [I x O] on 4x4 input tiles, stride 2."""
    n, h, wd, c = x.shape
    th, tw = h // 2, wd // 2
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    d = [[xp[:, i : i + 2 * th : 2, j : j + 2 * tw : 2, :] for j in range(4)] for i in range(4)]
    bt = _BT.astype(np.float32)
    rows = [
        [sum(bt[a, i] * d[i][j] for i in range(4) if bt[a, i]) for j in range(4)] for a in range(4)
    ]
    v = jnp.stack(
        [
            jnp.stack([sum(bt[b, j] * rows[a][j] for j in range(4) if bt[b, j]) for b in range(4)])
            for a in range(4)
        ]
    )
    m = jnp.einsum("abntuc,abco->abntuo", v, u)
    at = _AT.astype(np.float32)
    half = [
        [sum(at[p, a] * m[a, b] for a in range(4) if at[p, a]) for b in range(4)] for p in range(2)
    ]
    y = jnp.stack(
        [
            jnp.stack(
                [sum(at[q, b] * half[p][b] for b in range(4) if at[q, b]) for q in range(2)], 3
            )
            for p in range(2)
        ],
        2,
    )
    return y.reshape(n, 2 * th, 2 * tw, -1)


def flipped(w):
    """Kernel of the input gradient: spatial flip, input and output channels swapped."""
    return jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)


def section_kernels(quick: bool, rounds_n: int | None = None) -> list[dict]:
    """Times and errors of each formulation; returns the rows (also recorded)."""
    print("kernels: 3x3 64-channel convolution at 56x56, batch 8", flush=True)
    n, hw, c = (2, 16, 16) if quick else (8, 56, 64)
    kx, kw = jax.random.split(jax.random.key(7))
    x = jax.random.normal(kx, (n, hw, hw, c), jnp.float32)
    w = jax.random.normal(kw, (3, 3, c, c), jnp.float32) / np.sqrt(9 * c)
    with jax.enable_x64(True):
        ref = {
            k: np.asarray(conv_nhwc(jnp.asarray(x, jnp.float64), jnp.asarray(k_, jnp.float64)))
            for k, k_ in (("fwd", w), ("bwd", flipped(w)))
        }
    flops = 2 * n * hw * hw * c * c * 9
    out = []
    for direction, kern in (("fwd", w), ("bwd", flipped(w))):
        cands = _candidates(x, w, kern, direction)
        out += _time_candidates(direction, cands, ref[direction], flops, quick, rounds_n)
    _depthwise(quick, rounds_n)
    return out


def _depthwise(quick: bool, rounds_n: int | None):
    """ConvNeXt's 7x7 depthwise convolution (96 channels at 56x56, batch 8), value and input
    gradient: XLA's grouped convolution (either backend) against jaxrf's lowering (one slice per
    tap), in interleaved rounds; the lowered result checked against float64."""
    n, hw, c = (2, 16, 8) if quick else (8, 56, 96)
    kx, kw = jax.random.split(jax.random.key(8))
    x = jax.random.normal(kx, (n, hw, hw, c), jnp.float32)
    w = jax.random.normal(kw, (7, 7, 1, c), jnp.float32) / 7

    def dw(v, k):
        return lax.conv_general_dilated(
            v, k, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=c
        )

    def step(f, k=w):
        return lambda v: jax.vjp(lambda u: f(u, k), v)[1](v)[0]

    fns = {
        "grouped conv, YNNPACK": jax.jit(step(dw)),
        "grouped conv, XLA's own": _xla.jit(step(dw), ynn=_xla.LOWERED_VALUE),
        "jaxrf lowering (slices)": _xla.jit(
            step(lower_convs(dw, "matmul")), ynn=_xla.LOWERED_VALUE
        ),
    }
    with jax.enable_x64(True):
        ref = np.asarray(step(dw, jnp.asarray(w, jnp.float64))(jnp.asarray(x, jnp.float64)))
    err = {k: np.abs(np.asarray(f(x)) - ref).max() / np.abs(ref).max() for k, f in fns.items()}
    t = rounds(
        {k: functools.partial(f, x) for k, f in fns.items()}, rounds_n or (3 if quick else 5)
    )
    base = t["grouped conv, YNNPACK"]
    for k, v in t.items():
        note = f"ms {1e3 * statistics.median(v):.1f}; max rel. error vs float64 {err[k]:.2g}"
        speed = [b / s for b, s in zip(base, v, strict=True)]
        row(
            "kernels",
            f"depthwise 7x7, {c} ch at {hw}x{hw}, forward + input gradient: {k}",
            "speed vs grouped conv, YNNPACK (per round)",
            statistics.median(speed),
            "x",
            spread(speed) + "; " + note,
        )


def _candidates(x, w, kern, direction):
    """name -> (call, layout of its result) for one direction."""
    xn, kn = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(kern, (3, 2, 0, 1))
    u = jnp.asarray(winograd_kernel(kern))
    base, nchw = jax.jit(conv_nhwc), jax.jit(conv_nchw)
    own = _xla.jit(conv_nhwc, ynn=_xla.LOWERED_VALUE)
    patches, wino = jax.jit(conv_patches), jax.jit(conv_winograd)
    cands = {
        "XLA conv NHWC (lowering 'none')": (lambda: base(x, kern), None),
        "XLA's own conv, YNNPACK off (jaxrf's lowered ERF step)": (lambda: own(x, kern), None),
        "XLA conv NCHW/OIHW": (lambda: nchw(xn, kn), "nchw"),
        "patches: one [N*H*W, 9C] x [9C, C] product": (lambda: patches(x, kern), None),
        "Winograd F(2x2,3x3), 16 products": (lambda: wino(x, u), None),
    }
    if direction == "bwd":
        vjp = jax.jit(lambda g: jax.vjp(lambda v: conv_nhwc(v, w), g)[1](g)[0])
        cands["jax.vjp of the conv (what the ERF step runs)"] = (lambda: vjp(x), None)
    return cands


def _time_candidates(direction, cands, ref, flops, quick, rounds_n):
    res = []
    errs = {}
    for k, (f, layout) in cands.items():
        y = np.asarray(f())
        y = y.transpose(0, 2, 3, 1) if layout == "nchw" else y
        errs[k] = float(np.abs(y - ref).max() / np.abs(ref).max())
    mm, mm_flops = matmul_fn()
    fns = {k: f for k, (f, _) in cands.items()} | {"matmul": mm}
    t = rounds(fns, rounds_n or (3 if quick else 7))
    base = next(iter(cands))
    peak = [mm_flops / s for s in t["matmul"]]
    for k in cands:
        speed = [b / s for b, s in zip(t[base], t[k], strict=True)]
        frac = [flops / s / p for s, p in zip(t[k], peak, strict=True)]
        exact = errs[k] <= 2 * errs[base] + 1e-7
        note = (
            f"max rel. error vs float64 {errs[k]:.2g} (XLA conv {errs[base]:.2g}: "
            f"{'within float32 rounding' if exact else 'NOT exact to float32 rounding'}); "
            f"ms {1e3 * statistics.median(t[k]):.2f}; fraction of matmul FLOP/s "
            f"{statistics.median(frac):.2f} ({spread(frac)})"
        )
        r = row(
            "kernels",
            f"{direction}: {k}",
            "speed vs XLA conv NHWC (per round)",
            statistics.median(speed),
            "x",
            spread(speed) + "; " + note,
        )
        res.append(
            dict(
                direction=direction,
                formulation=k,
                speed=r,
                ms=1e3 * statistics.median(t[k]),
                fraction_of_matmul=statistics.median(frac),
                rel_error=errs[k],
                exact=exact,
            )
        )
    return res
