"""gradient_map and measured actual receptive fields: hand-derived maps, recompilation, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrf
from jaxrf import _gradient


def conv(x, w, stride=1, padding="VALID", dilation=1):
    """N-D convolution, channels-last, kernel (*window, in, out)."""
    nd = x.ndim - 2
    spec = "N" + "DHW"[3 - nd :] + "C"
    kspec = "DHW"[3 - nd :] + "IO"
    return jax.lax.conv_general_dilated(
        x,
        w,
        (stride,) * nd,
        padding,
        rhs_dilation=(dilation,) * nd,
        dimension_numbers=(spec, kspec, spec),
    )


# One 2-tap conv, 2 input channels, 1 output: input i and i+1 carry the kernel's taps.
# taps: t=0 -> (1, 3), t=1 -> (-2, 0.5). Per-channel reductions, derived by hand:
KERNEL = np.array([[[1.0], [3.0]], [[-2.0], [0.5]]])  # (window=2, in=2, out=1)
REDUCE_TABLE = [
    ("abs", (4.0, 2.5)),
    ("signed", (4.0, -1.5)),
    ("positive", (4.0, 0.5)),
    ("squared", (10.0, 4.25)),
]


@pytest.mark.parametrize("reduce, expected", REDUCE_TABLE, ids=[r for r, _ in REDUCE_TABLE])
def test_reduce_choices(reduce, expected):
    fn = lambda x: conv(x, jnp.asarray(KERNEL, jnp.float32))  # noqa: E731
    g = jaxrf.gradient_map(fn, jnp.zeros((1, 6, 2)), (2,), reduce=reduce)
    want = np.zeros((1, 6))
    want[0, 2:4] = expected
    np.testing.assert_allclose(g, want, rtol=1e-6)


def test_batch_each_sample_gets_its_map_and_layout_override():
    fn = lambda x: conv(x, jnp.ones((3, 3, 1, 1)))  # noqa: E731
    x = jnp.zeros((2, 6, 5, 1))
    g = jaxrf.gradient_map(fn, x, (1, 2))
    assert g.shape == (2, 6, 5)
    want = np.zeros((6, 5))
    want[1:4, 2:5] = 1
    np.testing.assert_array_equal(g[0], want)
    np.testing.assert_array_equal(g[1], want)
    # NCHW through spatial_axes: the same map.
    fn_nchw = lambda x: jnp.moveaxis(fn(jnp.moveaxis(x, 1, -1)), -1, 1)  # noqa: E731
    g2 = jaxrf.gradient_map(fn_nchw, jnp.zeros((1, 1, 6, 5)), (1, 2), spatial_axes=(2, 3))
    np.testing.assert_array_equal(g2[0], want)


def test_changing_index_does_not_recompile():
    fn = lambda x: conv(x, jnp.ones((3, 1, 1)))  # noqa: E731
    x = jnp.zeros((1, 12, 1))
    jaxrf.gradient_map(fn, x, (0,))
    before = _gradient.map_at_index._cache_size()
    for i in range(1, 10):
        g = jaxrf.gradient_map(fn, x, (i,))
        assert g[0, i : i + 3].tolist() == [1, 1, 1]
    assert _gradient.map_at_index._cache_size() == before


def test_channel_and_channel_weights():
    # Output channel 0 reads tap 0 only, channel 1 reads tap 1 only (kernel of 2 taps).
    w = np.zeros((2, 1, 2), np.float32)
    w[0, 0, 0] = 1
    w[1, 0, 1] = 1
    fn = lambda x: conv(x, jnp.asarray(w))  # noqa: E731
    x = jnp.zeros((1, 5, 1))
    assert jaxrf.gradient_map(fn, x, (1,), channel=0)[0].tolist() == [0, 1, 0, 0, 0]
    assert jaxrf.gradient_map(fn, x, (1,), channel=1)[0].tolist() == [0, 0, 1, 0, 0]
    got = jaxrf.gradient_map(fn, x, (1,), channel_weights=jnp.array([2.0, -3.0]), reduce="signed")
    assert got[0].tolist() == [0, 2, -3, 0, 0]


ERRORS = [
    (dict(index=(5,)), ValueError, r"outside the output: axis 0 has 5 positions"),
    (dict(index=(-1,)), ValueError, r"negative indices are not wrapped"),
    (dict(index=(1, 1)), ValueError, r"has 2 entries but the output has 1 spatial"),
    (dict(index=(1,), reduce="l2"), ValueError, r"`reduce` \(='l2'\) must be one of"),
    (dict(index=(1,), channel=3), ValueError, r"`channel` \(=3\) must index the output"),
    (dict(index=(1,), channel_weights=jnp.ones(2)), ValueError, r"output channel shape \(1,\)"),
    (dict(index=(1,), channel=0, channel_weights=jnp.ones(1)), ValueError, r"not both"),
]


@pytest.mark.parametrize("kwargs, error, match", ERRORS, ids=[e[2][:24] for e in ERRORS])
def test_errors(kwargs, error, match):
    fn = lambda x: conv(x, jnp.ones((3, 1, 1)))  # noqa: E731
    with pytest.raises(error, match=match):
        jaxrf.gradient_map(fn, jnp.zeros((1, 7, 1)), **kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"at least 3 axes"):
        jaxrf.gradient_map(lambda x: x, jnp.zeros((7, 1)), (0,))
    with pytest.raises(ValueError, match=r"`spatial_axes` \(=\(0,\)\)"):
        jaxrf.gradient_map(lambda x: x, jnp.zeros((1, 7, 1)), (0,), spatial_axes=(0,))
    with pytest.raises(TypeError, match=r"floating input"):
        jaxrf.gradient_map(lambda x: x, jnp.zeros((1, 7, 1), jnp.int32), (0,))


def test_nonfinite_gradients_raise_with_count_and_position():
    fn = jnp.sqrt  # d sqrt(x) / dx = inf at 0
    x = jnp.ones((1, 5, 1)).at[0, 2, 0].set(0.0)
    with pytest.raises(
        jaxrf.NonFiniteGradientError,
        match=r"1 of 5 values are NaN or inf .*sample 0, input position \(2,\)",
    ):
        jaxrf.gradient_map(fn, x, (2,))
    g = jaxrf.gradient_map(fn, x, (2,), nonfinite="keep")
    assert np.isinf(g[0, 2])
    with pytest.warns(jaxrf.NonFiniteGradientWarning, match="NaN or inf"):
        jaxrf.gradient_map(fn, x, (2,), nonfinite="warn")


def test_measured_dead_relu_and_union_over_samples():
    # relu(conv3(x)) with a ones kernel: output 1 reads input 1..3 when the sum is positive.
    fn = lambda x: jax.nn.relu(conv(x, jnp.ones((3, 1, 1))))  # noqa: E731
    dead = -jnp.ones((1, 6, 1))
    live = jnp.ones((1, 6, 1))
    assert jaxrf.actual_receptive_field(fn, dead, (1,)).box is None
    both = jaxrf.actual_receptive_field(fn, jnp.concatenate([dead, live]), (1,))
    assert both.box == ((1, 3),)
    assert both.num_samples == 2 and both.size == (3,) and both.count == 3
    assert jaxrf.actual_receptive_field(fn, dead, (1,), mode="structural").box == ((1, 3),)


def test_mode_error():
    with pytest.raises(ValueError, match=r"`mode` \(='exact'\) must be 'measured'"):
        jaxrf.actual_receptive_field(lambda x: x, jnp.zeros((1, 3, 1)), (0,), mode="exact")


def test_actual_receptive_field_nonfinite_raises_with_count_and_position():
    fn = jnp.sqrt  # d sqrt(x) / dx = inf at 0
    x = jnp.ones((1, 5, 1)).at[0, 2, 0].set(0.0)
    with pytest.raises(
        jaxrf.NonFiniteGradientError,
        match=r"1 of 5 values are NaN or inf .*sample 0, input position \(2,\)",
    ):
        jaxrf.actual_receptive_field(fn, x, (2,))
    assert jaxrf.actual_receptive_field(fn, x, (2,), nonfinite="keep").box == ((2, 2),)
    with pytest.raises(jaxrf.NonFiniteGradientError, match=r"input position \(2,\)"):
        jaxrf.support_map(fn, x, mode="measured")
