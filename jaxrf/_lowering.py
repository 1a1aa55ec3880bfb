"""Convolutions as matrix products, for probes on XLA:CPU.

A rewrite of the program, not of its arithmetic: every replacement computes the same values
and gradients (to floating-point rounding), in a form XLA:CPU may run faster (products over
channels instead of 1x1 convolutions, a max-pool gradient made of slices instead of
select-and-scatter). Whether it does is a measurement of ``experiments/profile_erf.py``.

:func:`lower_convs` re-evaluates a network's jaxpr with every ``conv_general_dilated`` that a
plain product can express replaced by one: a 1x1 kernel becomes a (strided) slice and one
``dot_general`` over channels (policy ``"matmul"``; ``"patches"`` also turns a larger kernel
into its patches, one strided slice per kernel offset concatenated on the channel axis, and
one ``dot_general``); the input gradient of a stride-1 replacement is again patches times a
matrix. A depthwise convolution (one input channel per group, no channel multiplier) becomes
one strided slice per kernel tap times that tap's per-channel weights, summed (any policy but
``"none"``; XLA:CPU runs it 20-30x faster than the grouped convolution). A strided
convolution reading an image (at most 4 channels: a stem) keeps XLA's
forward but gets a phase-decomposed input gradient (:func:`phase_kernel`) instead of XLA's
lhs-dilated convolution, which multiplies the inserted zeros. ``reduce_window_max`` gets a
gradient made of slices and pads instead of select-and-scatter (:func:`max_pool`), and keeps
for its backward pass one small integer per output (which window offset won) instead of its
float input and output. A ReLU written as ``max(x, 0)`` (also what a folded or pruned
network's ``jax.nn.relu`` becomes) keeps two boolean masks instead of a float factor
(:func:`relu_max`, bit for bit the same gradient). Which
primitives are rewritten, and which calls are inlined, is read from the registry's
``lowering`` entries (:mod:`jaxrf._registry`).

The replacement computes the same sums in another order: float32 results agree with the
convolution to rounding (relative 1e-6), not bit for bit. Other convolutions with feature
groups, and those with batch groups or input (lhs) dilation (transposed convolutions), are
left as they are.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._walk import bind, walk

#: ``lowering=`` values: ``"matmul"`` (1x1 convolutions as products, strided image stems
#: with a phase-decomposed gradient, max-pool gradients as slices), ``"patches"`` (every
#: convolution without groups or input dilation as patches times a matrix, max-pool as for
#: ``"matmul"``), ``"none"`` (the network's own operations), ``"auto"`` (``"matmul"`` on CPU
#: devices, ``"none"`` elsewhere).
LOWERINGS = ("auto", "matmul", "patches", "none")


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


#: Strided convolutions reading at most this many channels (image stems) get the
#: phase-decomposed input gradient under "matmul"; with many input channels XLA's own
#: transposed convolution is kept (the crossover is measured by experiments/profile_erf.py).
_PHASE_MAX_IN_CHANNELS = 4


#: Depthwise convolutions with at most this many kernel taps become one slice per tap; more
#: than :data:`_DEPTHWISE_UNROLL` taps loop over the first axis (see :func:`_depthwise_taps`).
_DEPTHWISE_MAX_TAPS = 64 * 64
_DEPTHWISE_UNROLL = 81


def _depthwise(params, kernel_shape) -> bool:
    """One input channel per group and one output channel per input channel (no multiplier)."""
    rspec = params["dimension_numbers"].rhs_spec
    groups = params["feature_group_count"]
    return (
        groups > 1
        and params["batch_group_count"] == 1
        and all(d == 1 for d in params["lhs_dilation"])
        and kernel_shape[rspec[1]] == 1
        and kernel_shape[rspec[0]] == groups
        and math.prod(kernel_shape[a] for a in rspec[2:]) <= _DEPTHWISE_MAX_TAPS
    )


def eligible(params, kernel_shape, policy: str) -> str | None:
    """How a ``conv_general_dilated`` with these params is rewritten under ``policy``.

    ``"dot"`` (patches x matrix), ``"native"`` (XLA's forward, phase-decomposed input
    gradient: strided convolutions under ``"matmul"``), ``"depthwise"`` (one strided slice
    times a per-channel weight per kernel tap, summed: XLA:CPU ran a 7x7 depthwise
    convolution of 96 channels at 56 x 56 in 14 ms this way against 340-560 ms as a
    convolution) or ``None`` (left as it is).
    """
    if policy == "none":
        return None
    if _depthwise(params, kernel_shape):
        return "depthwise"
    if not _plain(params):
        return None
    if policy == "patches":
        return "dot"
    rspec = params["dimension_numbers"].rhs_spec
    if all(kernel_shape[a] == 1 for a in rspec[2:]):
        return "dot"
    in_channels = kernel_shape[rspec[1]]
    if (
        in_channels <= _PHASE_MAX_IN_CHANNELS
        and any(s > 1 for s in params["window_strides"])
        and all(d == 1 for d in params["rhs_dilation"])
    ):
        return "native"
    return None


@dataclass(frozen=True)
class _Static:
    """An equation's params as a hashable value (for ``custom_vjp``'s static arguments)."""

    items: tuple

    @classmethod
    def of(cls, params) -> _Static:
        return cls(tuple(sorted(params.items())))

    def __getitem__(self, key):
        return dict(self.items)[key]


def _window_offsets(window, dilation, strides, out):
    """Per window offset (row-major), the ``(start, limit)`` of the strided slice it reads."""
    for offset in itertools.product(*(range(k) for k in window)):
        start = tuple(t * d for t, d in zip(offset, dilation, strict=True))
        limit = tuple(a + (o - 1) * st + 1 for a, o, st in zip(start, out, strides, strict=True))
        yield start, limit


def _valid_out(x, kernel, strides, dilation) -> list[int]:
    """Spatial output sizes of a VALID window over ``x`` (N, *S, C)."""
    return [
        (n - (k - 1) * d - 1) // s + 1
        for n, k, s, d in zip(x.shape[1:-1], kernel, strides, dilation, strict=True)
    ]


def _tap_slices(x, kernel, strides, dilation, out):
    """Per kernel tap (row-major), the strided slice of ``x`` (N, *S, C) it reads."""
    for start, limit in _window_offsets(kernel, dilation, strides, out):
        yield lax.slice(x, (0, *start, 0), (x.shape[0], *limit, x.shape[-1]), (1, *strides, 1))


def _patches_dot(x, w, strides, dilation, precision, preferred):
    """Canonical convolution, already padded: ``x`` (N, *S, C), ``w`` (*K, C, O), VALID."""
    nd = x.ndim - 2
    kernel = w.shape[:nd]
    cols = list(_tap_slices(x, kernel, strides, dilation, _valid_out(x, kernel, strides, dilation)))
    patches = cols[0] if len(cols) == 1 else lax.concatenate(cols, nd + 1)
    return lax.dot_general(
        patches,
        w.reshape(-1, w.shape[-1]),
        (((nd + 1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred,
    )


def _depthwise_taps(x, w, strides, dilation, preferred):
    """Depthwise convolution, already padded: ``x`` (N, *S, C), ``w`` (*K, 1, C), VALID.

    One strided slice per tap times that tap's per-channel weights, summed. Kernels of more
    than :data:`_DEPTHWISE_UNROLL` taps loop over the first spatial axis's taps (``lax.scan``)
    and unroll the rest, so the program grows with one row of taps, not all of them.
    """
    nd = x.ndim - 2
    kernel = w.shape[:nd]
    if preferred is not None:
        x, w = x.astype(preferred), w.astype(preferred)
    out = _valid_out(x, kernel, strides, dilation)
    if math.prod(kernel) <= _DEPTHWISE_UNROLL or nd == 1:
        return _tap_sum(x, w, kernel, strides, dilation, out)
    span = (out[0] - 1) * strides[0] + 1  # rows of x one tap of the first axis reads

    def row(acc, i):
        rows = lax.dynamic_slice_in_dim(x, i * dilation[0], span, axis=1)
        wi = lax.dynamic_index_in_dim(w, i, axis=0, keepdims=True)
        return acc + _tap_sum(rows, wi, (1, *kernel[1:]), strides, dilation, out), None

    zero = jnp.zeros((x.shape[0], *out, x.shape[-1]), x.dtype)
    return lax.scan(row, zero, jnp.arange(kernel[0]))[0]


def _tap_sum(x, w, kernel, strides, dilation, out):
    taps = itertools.product(*(range(k) for k in kernel))
    cuts = _tap_slices(x, kernel, strides, dilation, out)
    terms = (cut * w[(*tap, 0)] for tap, cut in zip(taps, cuts, strict=True))
    return functools.reduce(operator.add, terms)


def _pad(x, padding):
    pads = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)]
    if all(p == (0, 0, 0) for p in pads):
        return x
    return lax.pad(x, np.zeros((), x.dtype), pads)


def _native(x, w, strides, padding, dilation, precision, preferred):
    """``lax.conv_general_dilated`` in the canonical layout (N, *S, C) x (*K, I, O)."""
    nd = x.ndim - 2
    spatial = tuple(range(1, nd + 1))
    dn = lax.ConvDimensionNumbers(
        (0, nd + 1, *spatial), (nd + 1, nd, *range(nd)), (0, nd + 1, *spatial)
    )
    return lax.conv_general_dilated(
        x,
        w,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=dn,
        precision=precision,
        preferred_element_type=preferred,
    )


def _forward(x, w, p: _Static, how: str):
    """Canonical convolution: ``how`` = "dot" (patches x matrix), "depthwise" or "native"."""
    if how == "depthwise":
        return _depthwise_taps(
            _pad(x, p["padding"]),
            w,
            p["window_strides"],
            p["rhs_dilation"],
            p["preferred_element_type"],
        )
    if how == "native":
        return _native(
            x,
            w,
            p["window_strides"],
            p["padding"],
            p["rhs_dilation"],
            p["precision"],
            p["preferred_element_type"],
        )
    return _patches_dot(
        _pad(x, p["padding"]),
        w,
        p["window_strides"],
        p["rhs_dilation"],
        p["precision"],
        p["preferred_element_type"],
    )


def phase_kernel(w, strides, padding):
    """The transposed convolution of a strided one, as one stride-1 convolution.

    For a convolution with strides ``s``, kernel ``k`` (no dilation) and low padding ``lo``,
    the input gradient at ``i = q s + r`` (phase ``r``) reads the output cotangent ``g`` at
    ``q + u`` through the tap ``t = (e_r - u) s + c_r``, where ``c_r = (r + lo) mod s`` and
    ``e_r = (r + lo) // s``. Stacking the phases on the output channels gives one stride-1
    correlation of ``g`` (padded by ``-u_min`` below) with a kernel of ``u_max - u_min + 1``
    taps per axis: no multiplications by the zeros an lhs-dilated convolution inserts.

    Returns:
        ``(kernel, u_min, sizes)``: the kernel ``(*K', O, P * I)`` (P = prod(strides) phases,
        phase-major on the output channels), ``u_min`` per axis (the cotangent is read from
        ``q + u_min``) and ``K'`` per axis.
    """
    nd = len(strides)
    kernel = w.shape[:nd]
    per_axis = []
    for k, s, (lo, _) in zip(kernel, strides, padding, strict=True):
        phases = []
        for r in range(s):
            c, e = (r + lo) % s, (r + lo) // s
            phases.append((c, e, len(range(c, k, s))))
        used = [(e - n + 1, e) for c, e, n in phases if n]
        u_min, u_max = min(u for u, _ in used), max(u for _, u in used)
        taps = np.full((u_max - u_min + 1, s), -1, np.int64)  # (v, r) -> tap along this axis
        for r, (c, e, n) in enumerate(phases):
            for v in range(u_max - u_min + 1):
                j = e - (u_min + v)
                if 0 <= j < n:
                    taps[v, r] = j * s + c
        per_axis.append((taps, u_min))
    i_ch, o_ch = w.shape[nd], w.shape[nd + 1]
    sizes = [t.shape[0] for t, _ in per_axis]
    index = np.full((*sizes, *strides), math.prod(kernel), np.int64)  # sentinel: a zero tap
    for pos in itertools.product(*(range(n) for n in sizes)):
        for phase in itertools.product(*(range(s) for s in strides)):
            t = [per_axis[a][0][pos[a], phase[a]] for a in range(nd)]
            if all(v >= 0 for v in t):
                index[(*pos, *phase)] = np.ravel_multi_index(t, kernel)
    flat = jnp.concatenate([w.reshape(-1, i_ch, o_ch), jnp.zeros((1, i_ch, o_ch), w.dtype)])
    v = flat[index.reshape(*sizes, -1)]  # (*K', P, I, O)
    v = jnp.moveaxis(v, -1, nd)  # (*K', O, P, I)
    return v.reshape(*sizes, o_ch, -1), [u for _, u in per_axis], sizes


def _strided_input_grad(g, w, p: _Static, in_shape):
    """Input gradient of a strided convolution (no dilation) by :func:`phase_kernel`."""
    nd = g.ndim - 2
    strides, padding = p["window_strides"], p["padding"]
    v, u_min, sizes = phase_kernel(w, strides, padding)
    n = in_shape[1:-1]
    q = [-(-n_a // s) for n_a, s in zip(n, strides, strict=True)]
    m = g.shape[1:-1]
    pads = tuple(
        (-u, qa + ka - 1 - ma + u) for u, qa, ka, ma in zip(u_min, q, sizes, m, strict=True)
    )
    out = _native(g, v, (1,) * nd, pads, (1,) * nd, p["precision"], None)  # pads in the conv
    i_ch = w.shape[nd]
    out = out.reshape(g.shape[0], *q, *strides, i_ch)
    order = [0] + [x for a in range(nd) for x in (1 + a, 1 + nd + a)] + [1 + 2 * nd]
    out = out.transpose(order).reshape(
        g.shape[0], *(qa * s for qa, s in zip(q, strides, strict=True)), i_ch
    )
    return lax.slice(out, (0,) * (nd + 2), (g.shape[0], *n, i_ch))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _canonical_conv(x, w, p: _Static, how: str):
    return _forward(x, w, p, how)


def _canonical_conv_fwd(x, w, p, how):
    return _forward(x, w, p, how), (x, w)


def _canonical_conv_bwd(p, how, res, g):
    x, w = res
    nd = x.ndim - 2
    strides, dil = p["window_strides"], p["rhs_dilation"]
    if all(s == 1 for s in strides):
        # Stride 1: the input gradient is again a convolution (kernel flipped, I and O swapped
        # unless depthwise, padding (k - 1) d - pad), computed the way the forward is.
        kernel = w.shape[:nd]
        wt = lax.rev(w, tuple(range(nd)))
        wt = wt if how == "depthwise" else jnp.swapaxes(wt, nd, nd + 1)
        pads = tuple(
            ((k - 1) * d - lo, (k - 1) * d - hi)
            for k, d, (lo, hi) in zip(kernel, dil, p["padding"], strict=True)
        )
        flipped = _Static.of({**dict(p.items), "padding": pads, "preferred_element_type": None})
        dx = _forward(g, wt, flipped, how).astype(x.dtype)
    elif how != "depthwise" and all(d == 1 for d in dil) and any(k > 1 for k in w.shape[:nd]):
        dx = _strided_input_grad(g, w, p, x.shape).astype(x.dtype)
    else:  # strided 1x1 (a slice and a product), strided depthwise or dilated: autodiff
        dx = jax.vjp(lambda x_: _forward(x_, w, p, how), x)[1](g)[0]
    dw = jax.vjp(lambda w_: _forward(x, w_, p, how), w)[1](g)[0]  # dead code under jit
    return dx, dw


_canonical_conv.defvjp(_canonical_conv_fwd, _canonical_conv_bwd)


def conv_as_dot(lhs, rhs, *, how: str = "dot", **params):
    """``lax.conv_general_dilated`` (no groups, no lhs dilation) in the canonical layout.

    ``how="dot"``: patches times a matrix; ``how="native"``: XLA's convolution forward, with
    the phase-decomposed input gradient of :func:`phase_kernel` when strided.
    """
    lspec, rspec, ospec = params["dimension_numbers"]
    nd = len(lspec) - 2
    x = lax.transpose(lhs, (lspec[0], *lspec[2:], lspec[1]))  # N, spatial..., C
    w = lax.transpose(rhs, (*rspec[2:], rspec[1], rspec[0]))  # spatial..., I, O
    static = _Static.of({k: v for k, v in params.items() if k != "dimension_numbers"})
    y = _canonical_conv(x, w, static, how)  # N, out..., O
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
    """The pooled values and, per output, which window offset (row-major) holds its first
    maximum: one small integer an output is all the backward pass keeps (no offset holds a
    NaN maximum: the sentinel ``len(offsets)``, which routes nowhere)."""
    y = _max_pool_plain(x, p)
    window, strides = p["window_dimensions"], p["window_strides"]
    wdil, padding = p["window_dilation"], p["padding"]
    offsets = list(_window_offsets(window, wdil, strides, y.shape))
    dtype = jnp.uint8 if len(offsets) < 2**8 else jnp.int32
    xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(lo, hi, 0) for lo, hi in padding])
    first = jnp.full(y.shape, len(offsets), dtype)
    for k in reversed(range(len(offsets))):  # the lowest offset that hits wins
        start, limit = offsets[k]
        first = jnp.where(lax.slice(xp, start, limit, strides) == y, jnp.asarray(k, dtype), first)
    return y, (jnp.zeros((*x.shape, 0), x.dtype), first)  # x's shape, in no bytes


def _max_pool_bwd(p, res, g):
    shape_only, first = res
    window, strides = p["window_dimensions"], p["window_strides"]
    wdil, padding = p["window_dilation"], p["padding"]
    padded = [n + lo + hi for n, (lo, hi) in zip(shape_only.shape[:-1], padding, strict=True)]
    gx = jnp.zeros(padded, g.dtype)
    for k, (start, limit) in enumerate(_window_offsets(window, wdil, strides, g.shape)):
        ends = zip(start, padded, limit, strides, strict=True)
        placed = [(s, n - lim, st - 1) for s, n, lim, st in ends]
        gx = gx + lax.pad(jnp.where(first == k, g, 0), np.zeros((), g.dtype), placed)
    crop = [(-lo, -hi, 0) for lo, hi in padding]
    return (lax.pad(gx, np.zeros((), g.dtype), crop),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def relu_max(x, zero_first: bool):
    """``max(x, 0)`` (``max(0, x)`` with ``zero_first``) with ``max``'s own derivative, whose
    residuals are two boolean masks.

    ``max``'s derivative in ``x`` is the float factor ``f`` = 1 where ``x > 0``, 1/2 where
    ``x == 0`` and 0 elsewhere (NaN included). Autodiff keeps ``f`` (32 bits an element) or,
    after XLA's fusion, ``x`` itself, from the forward pass to the backward pass; here the
    masks ``x > 0`` and ``x == 0`` are kept and ``f`` is rebuilt from them, so the gradient
    ``g * f`` is the same bit for bit.
    """
    zero = jnp.zeros((), x.dtype)
    return lax.max(zero, x) if zero_first else lax.max(x, zero)


def _relu_max_fwd(x, zero_first):
    return relu_max(x, zero_first), (x > 0, x == 0)


def _relu_max_bwd(zero_first, masks, g):
    positive, zero = masks
    one, half, nothing = (np.asarray(v, g.dtype) for v in (1, 0.5, 0))
    return (g * jnp.where(positive, one, jnp.where(zero, half, nothing)),)


relu_max.defvjp(_relu_max_fwd, _relu_max_bwd)


def _all_zero(val) -> bool:
    """A constant (not traced) operand that is +0 everywhere."""
    if isinstance(val, jax.core.Tracer):
        return False
    arr = np.asarray(val)
    return arr.size > 0 and not np.any(arr) and not np.any(np.signbit(arr))


def lower_max(eqn, vals, policy: str):
    """Registry lowering of ``max``: ``max(x, 0)`` (a ReLU) as :func:`relu_max`, or None."""
    out = eqn.outvars[0].aval
    for k in (0, 1):
        x, other = vals[1 - k], vals[k]
        if (
            _all_zero(other)
            and jnp.issubdtype(out.dtype, jnp.floating)
            and tuple(jnp.shape(x)) == tuple(out.shape)
            and jnp.result_type(x) == out.dtype
        ):
            with eqn.ctx.manager:
                return [relu_max(x, k == 0)]
    return None


def _pool_eligible(params, dtype) -> bool:
    return all(d == 1 for d in params["base_dilation"]) and jnp.issubdtype(dtype, jnp.floating)


def lower_conv(eqn, vals, policy: str):
    """Registry lowering of ``conv_general_dilated``: patches x matrix, or None (kept)."""
    how = (
        0 not in eqn.outvars[0].aval.shape  # an empty output stays XLA's
        and eligible(eqn.params, vals[1].shape, policy)
    )
    if not how:
        return None
    with eqn.ctx.manager:
        return [conv_as_dot(*vals, how=how, **eqn.params)]


def lower_max_pool(eqn, vals, policy: str):
    """Registry lowering of ``reduce_window_max``: :func:`max_pool`, or None (kept)."""
    if not _pool_eligible(eqn.params, vals[0].dtype):
        return None
    with eqn.ctx.manager:
        return [max_pool(vals[0], _Static.of(eqn.params))]


def _run(program, args, policy):
    from ._registry import REGISTRY

    def visit(eqn, vals, site):
        entry = REGISTRY.get(eqn.primitive.name)
        if entry is not None and callable(entry.lowering):
            outs = entry.lowering(eqn, vals, policy)
            if outs is not None:
                return outs
        return bind(eqn, vals)

    def inline(eqn, vals, site) -> bool:
        entry = REGISTRY.get(eqn.primitive.name)
        return entry is not None and entry.lowering == "inline"

    return walk(program, args, visit, descend=inline)


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
        outs = _run(closed, flat, policy)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), outs)

    return lowered
