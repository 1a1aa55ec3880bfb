"""Convolutions as matrix products, for probes on XLA:CPU.

XLA:CPU runs ``dot_general`` close to the machine's matmul throughput, but its convolution
kernel reaches only a third of that on the 1x1 convolutions that dominate bottleneck networks
(64 -> 256 channels at 56x56: 0.35 of matmul as a convolution, 0.95 as a product), and about a
tenth on the input gradient of a 7x7 stride-2 stem (experiments/benchmark.py, section b).
:func:`lower_convs` re-evaluates a network's jaxpr with every ``conv_general_dilated`` that a
plain product can express replaced by one: a 1x1 kernel becomes a (strided) slice and one
``dot_general`` over channels; a larger kernel becomes its patches (one strided slice per
kernel offset, concatenated on the channel axis) and one ``dot_general``. Autodiff of the
replacement is again slices, pads and products, so the backward pass gains as well.

The replacement computes the same sums in another order: float32 results agree with the
convolution to rounding (relative 1e-6), not bit for bit. Convolutions with feature or batch
groups, or with input (lhs) dilation (transposed convolutions), are left as they are.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

#: ``lowering=`` values: ``"matmul"`` (1x1 convolutions as products, max-pool gradients as
#: slices), ``"patches"`` (every convolution without groups or input dilation as patches
#: times a matrix, max-pool as for ``"matmul"``), ``"none"`` (the network's own operations),
#: ``"auto"`` (``"matmul"`` on CPU devices, ``"none"`` elsewhere).
LOWERINGS = ("auto", "matmul", "patches", "none")

_INLINE = ("pjit", "jit", "closed_call", "core_call")


def _plain(params) -> bool:
    return (
        params["feature_group_count"] == 1
        and params["batch_group_count"] == 1
        and all(d == 1 for d in params["lhs_dilation"])
    )


def resolve_lowering(lowering: str, devices=None) -> str:
    """``lowering`` with ``"auto"`` resolved for ``devices`` (default: the default backend)."""
    if lowering not in LOWERINGS:
        raise ValueError(
            f"`lowering` (={lowering!r}) must be one of {', '.join(map(repr, LOWERINGS))}: "
            "'auto' picks 'matmul' on CPU devices and 'none' elsewhere."
        )
    if lowering != "auto":
        return lowering
    platforms = {d.platform for d in devices} if devices else {jax.default_backend()}
    return "matmul" if platforms == {"cpu"} else "none"


def eligible(params, kernel_shape, policy: str) -> bool:
    """Whether a ``conv_general_dilated`` with these params is rewritten under ``policy``."""
    if policy == "none" or not _plain(params):
        return False
    if policy == "patches":
        return True
    rspec = params["dimension_numbers"].rhs_spec
    return all(kernel_shape[a] == 1 for a in rspec[2:])


@dataclass(frozen=True)
class _Static:
    """An equation's params as a hashable value (for ``custom_vjp``'s static arguments)."""

    items: tuple

    @classmethod
    def of(cls, params) -> _Static:
        return cls(tuple(sorted(params.items())))

    def __getitem__(self, key):
        return dict(self.items)[key]


def _patches_dot(x, w, strides, dilation, precision, preferred):
    """Canonical convolution, already padded: ``x`` (N, *S, C), ``w`` (*K, C, O), VALID."""
    nd = x.ndim - 2
    kernel = w.shape[:nd]
    out = [
        (x.shape[1 + a] - (kernel[a] - 1) * dilation[a] - 1) // strides[a] + 1 for a in range(nd)
    ]
    cols = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        start = (0, *(t * d for t, d in zip(offset, dilation, strict=True)), 0)
        limit = (
            x.shape[0],
            *(s + (o - 1) * st + 1 for s, o, st in zip(start[1:-1], out, strides, strict=True)),
            x.shape[-1],
        )
        cols.append(lax.slice(x, start, limit, (1, *strides, 1)))
    patches = cols[0] if len(cols) == 1 else lax.concatenate(cols, nd + 1)
    return lax.dot_general(
        patches,
        w.reshape(-1, w.shape[-1]),
        (((nd + 1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred,
    )


def _pad(x, padding):
    pads = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)]
    if all(p == (0, 0, 0) for p in pads):
        return x
    return lax.pad(x, np.zeros((), x.dtype), pads)


def _canonical_conv_plain(x, w, p: _Static):
    x = _pad(x, p["padding"])
    return _patches_dot(
        x, w, p["window_strides"], p["rhs_dilation"], p["precision"], p["preferred_element_type"]
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _canonical_conv(x, w, p: _Static):
    return _canonical_conv_plain(x, w, p)


def _canonical_conv_fwd(x, w, p):
    return _canonical_conv_plain(x, w, p), (x, w)


def _canonical_conv_bwd(p, res, g):
    x, w = res
    nd = x.ndim - 2
    if all(s == 1 for s in p["window_strides"]):
        # Stride 1: the input gradient is again a convolution (kernel flipped, I and O swapped,
        # padding (k - 1) d - pad), so it runs as patches times a matrix too.
        kernel, dil = w.shape[:nd], p["rhs_dilation"]
        flipped = lax.rev(w, tuple(range(nd)))
        wt = jnp.swapaxes(flipped, nd, nd + 1)
        pads = tuple(
            ((k - 1) * d - lo, (k - 1) * d - hi)
            for k, d, (lo, hi) in zip(kernel, dil, p["padding"], strict=True)
        )
        dx = _patches_dot(_pad(g, pads), wt, (1,) * nd, dil, p["precision"], None)
        dx = dx.astype(x.dtype)
    else:
        dx = jax.vjp(lambda x_: _canonical_conv_plain(x_, w, p), x)[1](g)[0]
    dw = jax.vjp(lambda w_: _canonical_conv_plain(x, w_, p), w)[1](g)[0]  # dead code under jit
    return dx, dw


_canonical_conv.defvjp(_canonical_conv_fwd, _canonical_conv_bwd)


def conv_as_dot(lhs, rhs, **params):
    """``lax.conv_general_dilated`` (no groups, no lhs dilation) as patches times a matrix."""
    lspec, rspec, ospec = params["dimension_numbers"]
    nd = len(lspec) - 2
    x = lax.transpose(lhs, (lspec[0], *lspec[2:], lspec[1]))  # N, spatial..., C
    w = lax.transpose(rhs, (*rspec[2:], rspec[1], rspec[0]))  # spatial..., I, O
    static = _Static.of({k: v for k, v in params.items() if k != "dimension_numbers"})
    y = _canonical_conv(x, w, static)  # N, out..., O
    perm = [0] * (nd + 2)
    perm[ospec[0]] = 0
    perm[ospec[1]] = nd + 1
    for a in range(nd):
        perm[ospec[2 + a]] = 1 + a
    return lax.transpose(y, tuple(perm))


def _max_pool_plain(x, p: _Static):
    return lax.reduce_window_max_p.bind(x, **dict(p.items))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x, p: _Static):
    """``reduce_window_max`` whose gradient is slices and pads instead of select-and-scatter.

    The gradient of each window goes to its first maximum in row-major window order, the
    element XLA's select-and-scatter (``ge`` select) routes it to.
    """
    return _max_pool_plain(x, p)


def _max_pool_fwd(x, p):
    y = _max_pool_plain(x, p)
    return y, (x, y)


def _max_pool_bwd(p, res, g):
    x, y = res
    window, strides = p["window_dimensions"], p["window_strides"]
    wdil, padding = p["window_dilation"], p["padding"]
    low = jnp.array(-jnp.inf, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else None
    xp = lax.pad(x, low, [(lo, hi, 0) for lo, hi in padding])
    claimed = jnp.zeros(y.shape, bool)
    gx = jnp.zeros(xp.shape, g.dtype)
    for offset in itertools.product(*(range(k) for k in window)):
        start = tuple(t * d for t, d in zip(offset, wdil, strict=True))
        limit = tuple(
            s + (o - 1) * st + 1 for s, o, st in zip(start, y.shape, strides, strict=True)
        )
        hit = (lax.slice(xp, start, limit, strides) == y) & ~claimed
        claimed = claimed | hit
        placed = [
            (s, n - lim, st - 1)
            for s, n, lim, st in zip(start, xp.shape, limit, strides, strict=True)
        ]
        gx = gx + lax.pad(jnp.where(hit, g, 0), np.zeros((), g.dtype), placed)
    crop = [(-lo, -hi, 0) for lo, hi in padding]
    return (lax.pad(gx, np.zeros((), g.dtype), crop),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _pool_eligible(params, dtype) -> bool:
    return all(d == 1 for d in params["base_dilation"]) and jnp.issubdtype(dtype, jnp.floating)


def _run(jaxpr, consts, args, policy):
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts, strict=True):
        env[var] = val
    for var, val in zip(jaxpr.invars, args, strict=True):
        env[var] = val
    for eqn in jaxpr.eqns:
        vals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "conv_general_dilated" and eligible(eqn.params, vals[1].shape, policy):
            with eqn.ctx.manager:
                outs = [conv_as_dot(*vals, **eqn.params)]
        elif name == "reduce_window_max" and _pool_eligible(eqn.params, vals[0].dtype):
            with eqn.ctx.manager:
                outs = [max_pool(vals[0], _Static.of(eqn.params))]
        elif name in _INLINE:
            sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            if isinstance(sub, jcore.ClosedJaxpr):
                outs = _run(sub.jaxpr, sub.consts, vals, policy)
            else:
                outs = _run(sub, [], vals, policy)
        else:
            params = eqn.primitive.get_bind_params(eqn.params)
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*vals, **params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        for var, val in zip(eqn.outvars, outs, strict=True):
            if not isinstance(var, jcore.DropVar):
                env[var] = val
    return [read(v) for v in jaxpr.outvars]


def lower_convs(fn: Callable, policy: str = "matmul") -> Callable:
    """``fn`` with its convolutions computed as matrix products (see the module docstring).

    Args:
        fn: a function of arrays (pytrees allowed) returning arrays.
        policy: ``"matmul"``, ``"patches"`` or ``"none"`` (see :data:`LOWERINGS`; ``"auto"``
            must be resolved first with :func:`resolve_lowering`).

    Returns:
        A function with the same signature and outputs (to float rounding).
    """
    if policy not in LOWERINGS or policy == "auto":
        raise ValueError(
            f"`policy` (={policy!r}) must be 'matmul', 'patches' or 'none' (resolve 'auto' "
            "with resolve_lowering first)."
        )
    if policy == "none":
        return fn

    def lowered(*args):
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        flat = jax.tree_util.tree_leaves(args)
        outs = _run(closed.jaxpr, closed.consts, flat, policy)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), outs)

    return lowered
