"""Convolutions as matrix products and max-pool gradients as slices (jaxrf._lowering).

Expected values: the plain ``lax`` operations (the lowering must compute the same sums, in
another order), and hand-derived gradients for the max-pool tie routing (each window's
cotangent goes to the window's first maximum in row-major window order).
"""

from __future__ import annotations

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxrf
import jaxrf.models as zoo
from jaxrf._lowering import lower_convs, resolve_lowering

# --------------------------------------------------------------------------------------------
# Helpers


def count_primitives(closed) -> dict[str, int]:
    """Primitive name -> number of equations, over the jaxpr and every sub-jaxpr it holds."""
    counts: dict[str, int] = {}

    def subjaxprs(value):
        if isinstance(value, jax.extend.core.ClosedJaxpr):
            yield value.jaxpr
        elif isinstance(value, jax.extend.core.Jaxpr):
            yield value
        elif isinstance(value, tuple | list):
            for v in value:
                yield from subjaxprs(v)

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            counts[eqn.primitive.name] = counts.get(eqn.primitive.name, 0) + 1
            for value in eqn.params.values():
                for sub in subjaxprs(value):
                    walk(sub)

    walk(closed.jaxpr)
    return counts


def assert_close(actual, expected, tol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale)


# --------------------------------------------------------------------------------------------
# 1. conv_as_dot against lax.conv_general_dilated

SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _conv_config(seed):
    """A random convolution: input and kernel shapes, lax keyword arguments, 1x1 or not."""
    rng = np.random.default_rng(seed)
    nd = 1 + seed % 3
    sp = SPATIAL[nd]
    style = ["last", "first", "mixed", "permuted"][(seed // 3) % 4]
    if style == "last":
        specs = ("N" + sp + "C", sp + "IO", "N" + sp + "C")
    elif style == "first":
        specs = ("NC" + sp, "OI" + sp, "NC" + sp)
    elif style == "mixed":  # output spec differs from the input spec
        specs = ("N" + sp + "C", "OI" + sp, "NC" + sp)
    else:  # any permutation of the letters, each spec on its own
        specs = tuple(
            "".join(rng.permutation(list(letters))) for letters in ("NC" + sp, "OI" + sp, "NC" + sp)
        )
    one_by_one = rng.random() < 0.4
    window = {}  # spatial letter -> (input size, kernel, stride, dilation, (lo, hi))
    for letter in sp:
        k = 1 if one_by_one else int(rng.integers(1, 4))
        stride = int(rng.choice([1, 1, 2, 2, 3]))
        dilation = int(rng.integers(1, 3))
        while True:  # at least one output position
            n = int(rng.integers(3, 8 if nd < 3 else 6))
            lo, hi = (int(v) for v in rng.integers(-1, 3, size=2))
            if n + lo + hi >= (k - 1) * dilation + 1:
                break
        window[letter] = (n, k, stride, dilation, (lo, hi))
    # lax orders the window arguments as the kernel spec orders its spatial letters
    order = [c for c in specs[1] if c in sp]
    dims = {"N": 2, "C": int(rng.integers(1, 4)), **{c: window[c][0] for c in sp}}
    kdims = {"O": int(rng.integers(1, 4)), "I": dims["C"], **{c: window[c][1] for c in sp}}
    kwargs = dict(
        window_strides=tuple(window[c][2] for c in order),
        padding=tuple(window[c][4] for c in order),
        rhs_dilation=tuple(window[c][3] for c in order),
        dimension_numbers=specs,
    )
    lhs_shape = tuple(dims[c] for c in specs[0])
    rhs_shape = tuple(kdims[c] for c in specs[1])
    return lhs_shape, rhs_shape, kwargs, all(window[c][1] == 1 for c in sp)


CONV_SEEDS = list(range(27))


def test_conv_configs_cover_the_brief():
    configs = [_conv_config(s) for s in CONV_SEEDS]
    assert {len(c[0]) - 2 for c in configs} == {1, 2, 3}
    assert sum(c[3] for c in configs) >= 8  # 1x1 kernels, rewritten under "matmul"
    assert any(c[2]["dimension_numbers"][0] != c[2]["dimension_numbers"][2] for c in configs)
    assert any(min(lo for lo, _ in c[2]["padding"]) < 0 for c in configs)
    assert any(min(hi for _, hi in c[2]["padding"]) < 0 for c in configs)
    assert any(any(lo != hi for lo, hi in c[2]["padding"]) for c in configs)
    assert any(max(c[2]["window_strides"]) > 1 and max(c[2]["rhs_dilation"]) > 1 for c in configs)
    assert any(max(c[2]["window_strides"]) > 1 and max(c[2]["rhs_dilation"]) == 1 for c in configs)
    assert any(max(c[1]) == 3 for c in configs)


def _conv_run(conv, loss, policy, vjp):
    """Forward value and gradients of ``lower_convs`` (gradients only when ``vjp``)."""
    lowered = lower_convs(conv, policy)
    grad = jax.grad(lower_convs(loss, policy), argnums=(0, 1))
    return lambda x, w: (lowered(x, w), *(grad(x, w) if vjp else ()))


@pytest.mark.parametrize("seed", CONV_SEEDS)
def test_conv_as_dot_matches_conv(seed):
    lhs_shape, rhs_shape, kwargs, one_by_one = _conv_config(seed)
    with jax.enable_x64(True):
        rng = np.random.default_rng(1000 + seed)
        x = jnp.asarray(rng.standard_normal(lhs_shape))
        w = jnp.asarray(rng.standard_normal(rhs_shape))

        def conv(x, w):
            return lax.conv_general_dilated(x, w, **kwargs)

        out_shape = jax.eval_shape(conv, x, w).shape
        assert min(out_shape) > 0
        r = jnp.asarray(rng.standard_normal(out_shape))

        def loss(x, w):
            return jnp.sum(jnp.tanh(conv(x, w)) * r)

        # Reference gradients in forward mode (forward convolutions only): XLA:CPU aborts the
        # process compiling the plain reverse-mode input gradient of some strided, dilated,
        # asymmetrically padded convolutions (test_lowered_gradient_where_xla_aborts).
        runs = {"ref": lambda x, w: (conv(x, w), *jax.jacfwd(loss, argnums=(0, 1))(x, w))}
        for policy in ("matmul", "patches"):
            counts = count_primitives(jax.make_jaxpr(lower_convs(conv, policy))(x, w))
            touched = any(name.startswith("custom_vjp") for name in counts)
            if policy == "patches" or one_by_one:
                assert touched and "conv_general_dilated" not in counts, policy
            else:  # kept, or XLA's forward with its own input gradient: one convolution
                assert counts.get("conv_general_dilated", 0) == 1
            # a convolution left as it is has the plain program's gradient: not compared
            runs[policy] = _conv_run(conv, loss, policy, vjp=touched)
        results = jax.jit(lambda x, w: {k: f(x, w) for k, f in runs.items()})(x, w)
        if seed % 7 == 0:  # eagerly too (slower: every primitive dispatched on its own)
            eager = {k: f(x, w) for k, f in runs.items() if k != "ref"}
            results.update({f"{k} eager": v for k, v in eager.items()})
        ref = results.pop("ref")
        assert ref[0].dtype == jnp.float64
        for name, got in results.items():
            assert len(got) in (1, 3), name
            for a, b in zip(got, ref, strict=False):
                assert_close(a, b, 1e-10)


@pytest.mark.parametrize(
    "kernel, stride, padding",
    [(7, 2, (3, 3)), (5, 3, (2, 1)), (4, 3, (-1, 2))],
)
def test_strided_input_gradient(kernel, stride, padding):
    """Strided kernels larger than 1x1 (a ResNet stem is 7x7 stride 2 padding 3): the input
    gradient of each policy's rewrite against forward-mode autodiff of the plain convolution,
    with a different stride and padding on the second axis."""
    kwargs = dict(
        window_strides=(stride, 1 + stride % 2),
        padding=(padding, (1, 0)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )

    def conv(x, w):
        return lax.conv_general_dilated(x, w, **kwargs)

    with jax.enable_x64(True):
        rng = np.random.default_rng(kernel)
        x = jnp.asarray(rng.standard_normal((2, 13, 11, 2)))
        w = jnp.asarray(rng.standard_normal((kernel, 3, 2, 3)))
        r = jnp.asarray(rng.standard_normal(jax.eval_shape(conv, x, w).shape))

        def loss(x, w):
            return jnp.sum(jnp.tanh(conv(x, w)) * r)

        def all_grads(x, w):
            out = {"ref": jax.jacfwd(loss, argnums=(0, 1))(x, w)}
            for policy in ("matmul", "patches"):
                out[policy] = jax.grad(lower_convs(loss, policy), argnums=(0, 1))(x, w)
            return out

        results = jax.jit(all_grads)(x, w)
        want = results.pop("ref")
        for got in results.values():
            for a, b in zip(got, want, strict=True):
                assert_close(a, b, 1e-10)


def test_lowered_gradient_where_xla_aborts():
    """The plain reverse-mode input gradient of this convolution aborts XLA:CPU at compile time
    (jax 0.10.2: "Window dimensions do not match RHS shape" in the algebraic simplifier), so
    it is compared with forward mode; "patches" computes it without a convolution."""
    kwargs = dict(
        window_strides=(2, 2),
        padding=((1, 0), (1, 2)),
        rhs_dilation=(2, 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )

    def loss(x, w):
        return jnp.sum(jnp.sin(lax.conv_general_dilated(x, w, **kwargs)))

    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        x = jnp.asarray(rng.standard_normal((2, 5, 4, 2)))
        w = jnp.asarray(rng.standard_normal((3, 2, 2, 3)))
        want = jax.jit(jax.jacfwd(loss, argnums=(0, 1)))(x, w)
        got = jax.jit(jax.grad(lower_convs(loss, "patches"), argnums=(0, 1)))(x, w)
        for a, b in zip(got, want, strict=True):
            assert_close(a, b, 1e-10)


def test_zero_size_strided_output():
    """Kernel 3 at stride 2 over 2 x 2 samples, no padding: no output position; lax gives an
    empty array, so the lowering must too (it leaves an empty convolution to XLA; it used to
    build a negative slice limit and raise TypeError)."""

    def conv(x, w):
        return lax.conv_general_dilated(
            x, w, (2, 2), ((0, 0), (0, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    x, w = jnp.ones((1, 2, 2, 1)), jnp.ones((3, 3, 1, 1))
    assert conv(x, w).shape == (1, 0, 0, 1)
    assert lower_convs(conv, "patches")(x, w).shape == (1, 0, 0, 1)


# --------------------------------------------------------------------------------------------
# 2. Max-pool gradient: ties go to the window's first maximum


def _pool(window, strides, padding, dilation=None):
    def pool(x):
        return lax.reduce_window(
            x, -jnp.inf, lax.max, window, strides, padding, window_dilation=dilation
        )

    return pool


def _lowered_vjp(fn, x, g):
    return jax.vjp(lower_convs(fn, "matmul"), x)[1](g)[0]


POOL_CASES = [
    # (input, window, strides, padding, dilation, cotangent, gradient), all derived by hand.
    # [1, 1, 0], window 2: both windows' first maximum is the window's first element.
    ([1, 1, 0], 2, 1, (0, 0), 1, [10, 20], [10, 20, 0]),
    # [0, 5, 5, 5, 0], window 3: windows 0..2 and 1..3 pick index 1, window 2..4 picks 2.
    ([0, 5, 5, 5, 0], 3, 1, (0, 0), 1, [1, 2, 4], [0, 3, 4, 0, 0]),
    # Padding (1, 1) with -inf, window 3 stride 2 over [2, 2, 2, 2]: padded windows
    # (-inf, 2, 2) -> input 0 and (2, 2, -inf) -> input 1.
    ([2, 2, 2, 2], 3, 2, (1, 1), 1, [1, 2], [1, 2, 0, 0]),
    # Window 2 dilated by 2 over [3, 3, 3, 3, 3]: windows {0, 2}, {1, 3}, {2, 4} -> 0, 1, 2.
    ([3, 3, 3, 3, 3], 2, 1, (0, 0), 2, [1, 2, 4], [1, 2, 4, 0, 0]),
    # A later, strictly larger element wins over an earlier tie: [1, 1, 2], window 3.
    ([1, 1, 2], 3, 1, (0, 0), 1, [7], [0, 0, 7]),
]


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_tie_routing_1d_by_hand(case):
    values, k, s, pad, d, cot, expected = case
    with jax.enable_x64(True):
        x = jnp.asarray(values, jnp.float64).reshape(1, -1, 1)
        g = jnp.asarray(cot, jnp.float64).reshape(1, -1, 1)
        pool = _pool((1, k, 1), (1, s, 1), ((0, 0), pad, (0, 0)), (1, d, 1))
        want = np.asarray(expected, np.float64).reshape(1, -1, 1)
        np.testing.assert_array_equal(_lowered_vjp(pool, x, g), want)
        np.testing.assert_array_equal(jax.jit(_lowered_vjp, static_argnums=0)(pool, x, g), want)


def test_max_pool_tie_routing_2d_by_hand():
    """All-equal 3 x 3 input, 2 x 2 windows at stride 1: each window's cotangent lands on its
    top-left element, so the four cotangents fill the top-left 2 x 2 block."""
    with jax.enable_x64(True):
        x = jnp.ones((1, 3, 3, 1), jnp.float64)
        g = jnp.asarray([[1.0, 2.0], [4.0, 8.0]]).reshape(1, 2, 2, 1)
        pool = _pool((1, 2, 2, 1), (1, 1, 1, 1), "VALID")
        want = np.array([[1.0, 2.0, 0.0], [4.0, 8.0, 0.0], [0.0, 0.0, 0.0]]).reshape(1, 3, 3, 1)
        np.testing.assert_array_equal(_lowered_vjp(pool, x, g), want)
        # A single 2 x 2 window [[0, 3], [3, 3]]: first maximum in row-major order is (0, 1).
        x = jnp.asarray([[0.0, 3.0], [3.0, 3.0]]).reshape(1, 2, 2, 1)
        g = jnp.full((1, 1, 1, 1), 5.0)
        want = np.array([[0.0, 5.0], [0.0, 0.0]]).reshape(1, 2, 2, 1)
        np.testing.assert_array_equal(_lowered_vjp(pool, x, g), want)


def test_max_pool_gradient_has_no_select_and_scatter():
    x = jnp.ones((1, 6, 6, 2), jnp.float32)
    pool = _pool((1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    plain = count_primitives(jax.make_jaxpr(jax.grad(lambda x: pool(x).sum()))(x))
    assert plain.get("select_and_scatter_add", 0) == 1  # what the lowering replaces
    lowered = lower_convs(lambda x: pool(x).sum(), "matmul")
    counts = count_primitives(jax.make_jaxpr(jax.grad(lowered))(x))
    assert "select_and_scatter_add" not in counts and "select_and_gather_add" not in counts
    assert counts.get("reduce_window_max", 0) == 1  # the forward pool


@pytest.mark.parametrize("seed", range(10))
def test_max_pool_gradient_matches_autodiff_on_ties(seed):
    rng = np.random.default_rng(seed)
    nd = 1 + seed % 2
    window = [int(rng.integers(1, 4)) for _ in range(nd)]
    strides = [int(rng.integers(1, 4)) for _ in range(nd)]
    padding = [tuple(int(v) for v in rng.integers(0, k, size=2)) for k in window]
    sizes = [int(rng.integers(k, 9)) for k in window]
    # no window dilation: jax has no max-pool VJP with it (see the hand-derived case above)
    pool = _pool((1, *window, 1), (1, *strides, 1), ((0, 0), *padding, (0, 0)))
    with jax.enable_x64(True):
        # relu of small integers: mostly zeros, many ties in every window
        x = jnp.asarray(np.maximum(rng.integers(-3, 3, size=(2, *sizes, 3)), 0), jnp.float64)
        y = pool(x)
        g = jnp.asarray(rng.standard_normal(y.shape))

        def vjps(x, g):
            out = {"ref": jax.vjp(pool, x)[1](g)[0]}
            for policy in ("matmul", "patches"):
                value, vjp = jax.vjp(lower_convs(pool, policy), x)
                out[policy] = (value, vjp(g)[0])
            return out

        results = jax.jit(vjps)(x, g)
        if seed % 5 == 0:
            results["matmul eager"] = (lower_convs(pool, "matmul")(x), _lowered_vjp(pool, x, g))
        want = results.pop("ref")
        for value, got in results.values():
            assert_close(value, y, 0)
            assert_close(got, want, 1e-12)


# --------------------------------------------------------------------------------------------
# 3. Structure of the rewritten programs


def _nhwc_conv(strides=(1, 1), padding="SAME", **kwargs):
    def conv(x, w):
        return lax.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), **kwargs
        )

    return conv


X8 = jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32)


def _counts(fn, kernel_shape, policy, x=X8):
    w = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
    return count_primitives(jax.make_jaxpr(lower_convs(fn, policy))(x, w))


def test_1x1_conv_becomes_one_dot():
    counts = _counts(_nhwc_conv(), (1, 1, 4, 6), "matmul")
    assert "conv_general_dilated" not in counts
    assert counts.get("dot_general", 0) == 1


def test_3x3_conv_kept_by_matmul_replaced_by_patches():
    counts = _counts(_nhwc_conv(), (3, 3, 4, 6), "matmul")
    assert counts.get("conv_general_dilated", 0) == 1 and "dot_general" not in counts
    counts = _counts(_nhwc_conv(), (3, 3, 4, 6), "patches")
    assert "conv_general_dilated" not in counts
    assert counts.get("dot_general", 0) == 1


def test_none_policy_returns_fn():
    fn = _nhwc_conv()
    assert lower_convs(fn, "none") is fn


def _grad_counts(conv, kernel_shape, policy):
    x = jnp.ones(X8.shape, jnp.float32)
    w = jnp.ones(kernel_shape, jnp.float32)

    def loss(x, w):
        return jnp.sum(jnp.sin(conv(x, w)))

    grad = jax.grad(lower_convs(loss, policy) if policy else loss, argnums=(0, 1))
    closed = jax.make_jaxpr(grad)(x, w)
    convs = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                convs.append(eqn.params)
            for value in eqn.params.values():
                for sub in value if isinstance(value, tuple | list) else [value]:
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        walk(sub)

    walk(closed.jaxpr)
    return convs


@pytest.mark.parametrize(
    "policy, kernel_shape, strides",
    [
        ("matmul", (1, 1, 4, 6), (1, 1)),
        ("matmul", (1, 1, 4, 6), (2, 2)),
        ("patches", (3, 3, 4, 6), (1, 1)),
    ],
)
def test_backward_pass_has_no_conv(policy, kernel_shape, strides):
    """Stride 1: the input gradient is patches x matrix; strided 1x1: slices and a product."""
    conv = _nhwc_conv(strides)
    assert len(_grad_counts(conv, kernel_shape, None)) == 3  # forward, input and kernel grads
    assert _grad_counts(conv, kernel_shape, policy) == []


def test_strided_backward_multiplies_no_inserted_zeros():
    """A strided 3x3 convolution's plain input gradient is an lhs-dilated convolution (zeros
    between the cotangent's samples); the rewritten one has none."""
    conv = _nhwc_conv((2, 2))
    plain = _grad_counts(conv, (3, 3, 4, 6), None)
    assert any(max(p["lhs_dilation"]) > 1 for p in plain)
    lowered = _grad_counts(conv, (3, 3, 4, 6), "patches")
    assert all(max(p["lhs_dilation"]) == 1 for p in lowered)


@pytest.mark.parametrize(
    "name, kernel_shape, kwargs",
    [
        ("grouped", (3, 3, 2, 6), dict(feature_group_count=2)),
        ("grouped 1x1", (1, 1, 2, 6), dict(feature_group_count=2)),
        ("transposed", (3, 3, 4, 6), dict(lhs_dilation=(2, 2), padding=((2, 2), (2, 2)))),
        ("transposed 1x1", (1, 1, 4, 6), dict(lhs_dilation=(2, 2), padding=((0, 0), (0, 0)))),
    ],
)
def test_grouped_and_transposed_convs_are_kept(name, kernel_shape, kwargs):
    conv = _nhwc_conv(**kwargs)
    for policy in ("matmul", "patches"):
        counts = _counts(conv, kernel_shape, policy)
        assert counts.get("conv_general_dilated", 0) == 1, (name, policy)
        assert "dot_general" not in counts, (name, policy)


def test_batch_grouped_conv_is_kept():
    conv = _nhwc_conv(batch_group_count=2)
    x = jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32)
    counts = _counts(conv, (3, 3, 4, 6), "patches", x=x)
    assert counts.get("conv_general_dilated", 0) == 1 and "dot_general" not in counts


def test_conv_inside_inner_jit_is_rewritten():
    inner = jax.jit(_nhwc_conv())

    def fn(x, w):
        return jnp.tanh(inner(x, w)) + 1.0

    w = jax.ShapeDtypeStruct((1, 1, 4, 6), jnp.float32)
    plain = count_primitives(jax.make_jaxpr(fn)(X8, w))
    assert plain.get("pjit", plain.get("jit", 0)) == 1 and plain["conv_general_dilated"] == 1
    counts = count_primitives(jax.make_jaxpr(lower_convs(fn, "matmul"))(X8, w))
    assert "conv_general_dilated" not in counts
    assert counts.get("dot_general", 0) == 1
    # and the values agree
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal(X8.shape))
        w = jnp.asarray(rng.standard_normal(w.shape))
        assert_close(jax.jit(lower_convs(fn, "matmul"))(x, w), jax.jit(fn)(x, w), 1e-12)


def test_pytree_arguments_and_outputs():
    conv = _nhwc_conv()

    def fn(params, x):
        y = conv(x, params["w"])
        return {"y": y, "sum": jnp.sum(y) + params["b"]}

    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        params = {"w": jnp.asarray(rng.standard_normal((1, 1, 4, 6))), "b": jnp.float64(2.0)}
        x = jnp.asarray(rng.standard_normal(X8.shape))
        got, want = lower_convs(fn, "matmul")(params, x), fn(params, x)
        assert set(got) == {"y", "sum"}
        assert_close(got["y"], want["y"], 1e-12)
        assert_close(got["sum"], want["sum"], 1e-12)


# --------------------------------------------------------------------------------------------
# 4. Through the ERF


class _Residual(nn.Module):
    """1x1 convs, a 3x3 conv, a strided 1x1 conv, a max-pool (ties after relu), a residual."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding="SAME", param_dtype=x.dtype)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        h = nn.relu(nn.Conv(8, (1, 1), param_dtype=x.dtype)(x))
        h = nn.Conv(4, (3, 3), padding="SAME", param_dtype=x.dtype)(h)
        x = nn.relu(x + nn.Conv(4, (1, 1), param_dtype=x.dtype)(h))
        return nn.Conv(3, (1, 1), strides=(2, 2), param_dtype=x.dtype)(x)


@pytest.mark.slow  # 5 s; CI runs the slow set after the default run
def test_erf_lowerings_agree_float64():
    with jax.enable_x64(True):
        model = _Residual()
        x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 16, 16, 2)))
        # random weights from numpy (Flax's own init compiles its random draws: seconds)
        shapes = jax.eval_shape(model.init, jax.random.key(0), x[:1])
        rng = np.random.default_rng(1)
        variables = jax.tree.map(
            lambda s: jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(s.size / s.shape[-1])),
            shapes,
        )
        assert jax.tree.leaves(variables)[0].dtype == jnp.float64

        def fn(x):
            return model.apply(variables, x)

        jaxpr = jax.make_jaxpr(fn)(x[:1])
        names = count_primitives(jaxpr)
        assert names["conv_general_dilated"] == 5 and names["reduce_window_max"] == 1
        maps = {
            lowering: jaxrf.effective_receptive_field(
                fn, x, (1, 2), reduce="signed", lowering=lowering
            ).map
            for lowering in ("none", "matmul", "patches")
        }
        assert maps["none"].shape == (16, 16) and np.abs(maps["none"]).max() > 0
        for lowering in ("matmul", "patches"):
            assert_close(maps[lowering], maps["none"], 1e-12)


@pytest.mark.parametrize(
    "lowering",
    [pytest.param(p, marks=pytest.mark.slow) for p in ("matmul", "patches")],  # 17 s, 9 s
)
def test_erf_resnet50_torchvision_float32(lowering):
    entry = zoo.get("resnet50_torchvision")
    fn = entry.build(width=0.125)
    x = np.random.default_rng(0).standard_normal((2, *entry.small_input_shape[1:]))
    x = jnp.asarray(x, jnp.float32)
    want = jaxrf.effective_receptive_field(fn, x, lowering="none").map
    got = jaxrf.effective_receptive_field(fn, x, lowering=lowering).map
    assert want.shape == (32, 32)
    scale = float(np.abs(want).max())
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)


# --------------------------------------------------------------------------------------------
# 5. Errors and "auto"


def test_erf_bad_lowering():
    allowed = r"`lowering` \(='fast'\) must be one of 'auto', 'matmul', 'patches', 'none'"
    with pytest.raises(ValueError, match=allowed):
        jaxrf.effective_receptive_field(lambda x: x, jnp.ones((1, 4, 1)), lowering="fast")


def test_resolve_lowering():
    assert resolve_lowering("auto", jax.devices("cpu")) == "matmul"
    gpu = [types.SimpleNamespace(platform="gpu")]
    assert resolve_lowering("auto", gpu) == "none"
    for value in ("matmul", "patches", "none"):
        assert resolve_lowering(value, gpu) == value
    with pytest.raises(ValueError, match=r"`lowering` \(='fast'\) must be one of 'auto'"):
        resolve_lowering("fast")


@pytest.mark.parametrize("policy", ["auto", "fast"])
def test_lower_convs_bad_policy(policy):
    with pytest.raises(ValueError, match=rf"`policy` \(='{policy}'\).*resolve_lowering"):
        lower_convs(_nhwc_conv(), policy)


# --------------------------------------------------------------------------------------------
# 6. Depthwise convolutions as one slice per tap


DEPTHWISE_CASES = [
    # (spatial dims, kernel, stride, dilation, padding): unrolled (<= 81 taps) and looped over
    # the first axis (more taps), SAME / VALID / uneven explicit padding, strided, dilated
    (2, 3, 1, 1, "SAME"),
    (2, 4, 2, 1, "VALID"),
    (2, 3, 3, 2, ((2, 0), (1, 3))),
    (2, 11, 1, 1, "SAME"),
    (2, 10, 3, 2, ((4, 1), (0, 7))),
    (2, 13, 2, 1, "VALID"),
    (1, 31, 1, 1, "SAME"),
    (1, 9, 2, 2, "SAME"),
    (3, 5, 2, 1, "SAME"),
]


def _depthwise_conv(nd, kernel, stride, dilation, padding, channels_first, c=3):
    """A depthwise convolution (one input channel per group, no multiplier) and its kernel."""
    sp = SPATIAL[nd]
    if channels_first:
        dn = ("NC" + sp, "OI" + sp, "NC" + sp)
        w_shape = (c, 1, *(kernel,) * nd)
    else:
        dn = ("N" + sp + "C", sp + "IO", "N" + sp + "C")
        w_shape = (*(kernel,) * nd, 1, c)
    pads = padding if isinstance(padding, str) else padding[:nd]

    def conv(x, w):
        return lax.conv_general_dilated(
            x,
            w,
            (stride,) * nd,
            pads,
            rhs_dilation=(dilation,) * nd,
            dimension_numbers=dn,
            feature_group_count=c,
        )

    return conv, w_shape


@pytest.mark.parametrize("case", DEPTHWISE_CASES)
@pytest.mark.parametrize("channels_first", [False, True])
def test_depthwise_conv_matches_conv(case, channels_first):
    """Values and input gradients of the rewritten depthwise convolution agree with XLA's
    grouped convolution to float64 rounding, and no convolution is left in either pass."""
    nd = case[0]
    conv, w_shape = _depthwise_conv(*case, channels_first)
    rng = np.random.default_rng(DEPTHWISE_CASES.index(case))
    with jax.enable_x64(True):
        x_shape = (2, 3, *(17,) * nd) if channels_first else (2, *(17,) * nd, 3)
        x = jnp.asarray(rng.standard_normal(x_shape))
        w = jnp.asarray(rng.standard_normal(w_shape))
        y, pull = jax.vjp(lambda x_: conv(x_, w), x)
        g = jnp.asarray(rng.standard_normal(y.shape))
        y2, pull2 = jax.vjp(jax.jit(lambda x_: lower_convs(conv, "matmul")(x_, w)), x)
        assert_close(y2, y, 1e-13)
        assert_close(pull2(g)[0], pull(g)[0], 1e-13)
        loss = lambda x_, w_: jnp.sum(lower_convs(conv, "matmul")(x_, w_) * g)  # noqa: E731
        closed = jax.make_jaxpr(jax.grad(loss))(x, w)
    assert "conv_general_dilated" not in count_primitives(closed)


def test_depthwise_by_hand():
    """3x3 depthwise kernel of ones, SAME: each output sums its 3x3 neighbourhood of the same
    channel; channel 1 is scaled by 2. Input: ones at 5x5, so corners 4, edges 6, inside 9."""
    conv, _ = _depthwise_conv(2, 3, 1, 1, "SAME", False, c=2)
    w = jnp.ones((3, 3, 1, 2)).at[..., 1].set(2.0)
    y = lower_convs(conv, "matmul")(jnp.ones((1, 5, 5, 2)), w)
    counts = np.array([2, 3, 3, 3, 2])
    np.testing.assert_array_equal(y[0, :, :, 0], np.outer(counts, counts))
    np.testing.assert_array_equal(y[0, :, :, 1], 2 * np.outer(counts, counts))


def test_depthwise_with_multiplier_is_kept():
    """Two output channels per input channel (a channel multiplier) stay XLA's convolution."""
    conv = _nhwc_conv(feature_group_count=4)
    counts = _counts(conv, (3, 3, 1, 8), "matmul")
    assert counts.get("conv_general_dilated", 0) == 1


def test_erf_depthwise_network_lowerings_agree_float64():
    """A ConvNeXt-like block (7x7 depthwise, 1x1 expand, GELU, 1x1 project, residual) and a
    31x31 depthwise layer: the lowered ERF equals lowering='none' to float64 rounding."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        w_dw = jnp.asarray(rng.standard_normal((7, 7, 1, 8)) / 7)
        w_big = jnp.asarray(rng.standard_normal((31, 31, 1, 8)) / 31)
        w_in = jnp.asarray(rng.standard_normal((1, 1, 2, 8)))
        w_up = jnp.asarray(rng.standard_normal((8, 16)) / 3)
        w_down = jnp.asarray(rng.standard_normal((16, 8)) / 4)
        dw = _nhwc_conv(feature_group_count=8)

        def fn(x):
            h = _nhwc_conv()(x, w_in)
            h = h + jax.nn.gelu(dw(h, w_dw) @ w_up) @ w_down
            return dw(h, w_big)

        x = jnp.asarray(rng.standard_normal((2, 40, 40, 2)))
        maps = {
            lowering: jaxrf.effective_receptive_field(fn, x, reduce="signed", lowering=lowering).map
            for lowering in ("none", "matmul")
        }
        assert np.abs(maps["none"]).max() > 0
        assert_close(maps["matmul"], maps["none"], 1e-12)


# --------------------------------------------------------------------------------------------
# 7. max(x, 0): max's own derivative, booleans as residuals

# Every kind of float max(x, 0) and its derivative treat differently: signs, the tie at 0
# (derivative 1/2), NaN, infinities, subnormals.
_SPECIAL = np.array([-1.0, -0.0, 0.0, 1.0, np.nan, np.inf, -np.inf, 2.5, 5e-324, -5e-324])


def _same_bits(a, b):
    """Equal values, NaN where NaN, and the same sign on every non-NaN (so -0.0 != 0.0)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    real = ~np.isnan(a)
    np.testing.assert_array_equal(a[real], b[real])
    np.testing.assert_array_equal(np.signbit(a[real]), np.signbit(b[real]))


@pytest.mark.parametrize("zero_first", [False, True])
def test_relu_lowering_is_max_bit_for_bit(zero_first):
    # Every (x, cotangent) pair of special values: the lowered ReLU's value and gradient are
    # the plain max's, bit for bit (its derivative is 1, 1/2 at a tie, 0 elsewhere and at NaN).
    with jax.enable_x64(True):
        x = jnp.asarray(np.repeat(_SPECIAL, len(_SPECIAL) + 1))
        g = jnp.asarray(np.tile(np.r_[_SPECIAL, 3.0], len(_SPECIAL)))

        def plain(v):
            return jnp.maximum(0.0, v) if zero_first else jnp.maximum(v, 0.0)

        y0, pull0 = jax.vjp(plain, x)
        y1, pull1 = jax.vjp(lower_convs(plain, "matmul"), x)
        _same_bits(y1, y0)
        _same_bits(pull1(g)[0], pull0(g)[0])
        # by hand at the tie and at NaN: 1/2 and 0
        tie = np.flatnonzero((np.asarray(x) == 0) & (np.asarray(g) == 3.0))
        assert np.all(np.asarray(pull1(g)[0])[tie] == 1.5)
        nan = np.flatnonzero(np.isnan(np.asarray(x)) & (np.asarray(g) == 3.0))
        assert np.asarray(pull1(g)[0])[nan].tolist() == [0.0]


def test_relu_lowering_keeps_booleans():
    # What the backward pass keeps: the plain max keeps a float factor; the lowered ReLU keeps
    # two boolean masks and nothing else.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 3)), jnp.float32)

    def relu(v):
        return jnp.maximum(v, 0.0)

    plain = jax.tree_util.tree_leaves(jax.vjp(relu, x)[1])
    lowered = jax.tree_util.tree_leaves(jax.vjp(lower_convs(relu, "matmul"), x)[1])
    assert [v.dtype for v in plain] == [jnp.float32]
    assert [v.dtype for v in lowered] == [jnp.bool_, jnp.bool_]
    assert count_primitives(jax.make_jaxpr(lower_convs(relu, "matmul"))(x))["max"] == 1


@pytest.mark.parametrize(
    "fn",
    [
        lambda v: jnp.maximum(v, 1.0),  # not a ReLU
        lambda v: jnp.maximum(v, -0.0),  # a negative zero: max(+0, -0) is kept as written
        lambda v: jnp.maximum(v, v[::-1]),  # two traced operands
        lambda v: jnp.maximum(v.astype(jnp.int32), 0).astype(v.dtype),  # integers
    ],
)
def test_max_that_is_not_a_relu_is_kept(fn):
    x = jnp.linspace(-2.0, 2.0, 8, dtype=jnp.float32)
    names = count_primitives(jax.make_jaxpr(lower_convs(fn, "matmul"))(x))
    assert "custom_vjp_call" not in names and names["max"] == 1
    np.testing.assert_array_equal(lower_convs(fn, "matmul")(x), fn(x))
