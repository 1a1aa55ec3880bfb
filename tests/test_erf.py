"""Effective receptive field: exact n-fold box maps, streaming, weight draws, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrf


def conv(x, w, padding="VALID"):
    nd = x.ndim - 2
    spec = "N" + "DHW"[3 - nd :] + "C"
    return jax.lax.conv_general_dilated(
        x, w, (1,) * nd, padding, dimension_numbers=(spec, "DHW"[3 - nd :] + "IO", spec)
    )


# Coefficients of (1 + z + z^2)^n: the n-fold convolution of a 3-box, by hand.
BOX_POWERS = {
    1: [1, 1, 1],
    2: [1, 2, 3, 2, 1],
    4: [1, 4, 10, 16, 19, 16, 10, 4, 1],
}


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_linear_uniform_stack_is_box_convolution(n):
    with jax.enable_x64(True):
        w = jnp.ones((3, 3, 1, 1), jnp.float64)

        def fn(x):
            for _ in range(n):
                x = conv(x, w)
            return x

        size = 2 * n + 5  # output 5 x 5, centre (2, 2) reads rows 2 .. 2 + 2n
        x = jax.random.normal(jax.random.key(0), (3, size, size, 1), jnp.float64)
        erf = jaxrf.effective_receptive_field(fn, x, "center", reduce="signed")
        assert erf.index == (2, 2) and erf.count == 3 and erf.map.dtype == np.float64
        variance = n * (3**2 - 1) / 12
        for s in erf.std():
            assert abs(s**2 - variance) < 1e-9
        assert erf.centroid() == pytest.approx((2 + n, 2 + n), abs=1e-12)
        if n in BOX_POWERS:
            b = np.zeros(size)
            b[2 : 2 + 2 * n + 1] = BOX_POWERS[n]
            np.testing.assert_array_equal(erf.map, np.outer(b, b))


W1 = np.random.default_rng(1).normal(size=(3, 2, 4))
W2 = np.random.default_rng(2).normal(size=(3, 4, 3))


def relu_net(x):
    x = jax.nn.relu(conv(x, W1.astype(x.dtype)))
    return conv(x, W2.astype(x.dtype))


def test_streaming_equals_one_batch():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(5), (11, 9, 2), jnp.float64)
        one = jaxrf.effective_receptive_field(relu_net, x, (2,))
        chunked = jaxrf.effective_receptive_field(relu_net, x, (2,), batch_size=4)
        listed = jaxrf.effective_receptive_field(relu_net, [x[:4], x[4:8], x[8:]], (2,))
        gen = jaxrf.effective_receptive_field(relu_net, (x[i : i + 4] for i in (0, 4, 8)), (2,))
        # Independent check: mean of per-sample gradient maps (a different code path).
        manual = np.mean(
            [jaxrf.gradient_map(relu_net, x[i : i + 1], (2,))[0] for i in range(11)], axis=0
        )
        for erf in (one, chunked, listed, gen):
            assert erf.count == 11
            np.testing.assert_allclose(erf.map, manual, rtol=1e-12, atol=1e-14)


def test_side_by_side_width_on_cpu():
    """Per device, ``SIDE_BY_SIDE_ELEMENTS // m`` samples (at least one) run side by side on
    CPU, ``m`` the largest map of one sample: ResNet-50's stem output 112 * 112 * 64 at
    224x224 gives 2**24 // 802816 = 20, 512 * 512 * 64 at 1024x1024 gives 1; elsewhere the
    whole batch (None)."""
    from types import SimpleNamespace

    from jaxrf import _erf

    cpu, gpu = SimpleNamespace(platform="cpu"), SimpleNamespace(platform="gpu")
    assert _erf.SIDE_BY_SIDE_ELEMENTS == 2**24
    assert _erf._side_by_side([cpu], 112 * 112 * 64) == 20
    assert _erf._side_by_side([cpu, cpu], 256 * 256 * 64) == 4
    assert _erf._side_by_side([cpu], 512 * 512 * 64) == 1
    assert _erf._side_by_side([gpu], 512 * 512 * 64) is None


def test_largest_map_reads_nested_programs():
    """relu_net on one (9, 2) sample: conv to (1, 7, 4) = 28 elements, relu 28, conv to
    (1, 5, 3) = 15: the largest is 28, also when the first conv sits inside a jit."""
    from jaxrf import _erf

    x = jnp.zeros((1, 9, 2))
    assert _erf._largest_map(jax.make_jaxpr(relu_net)(x).jaxpr) == 28

    def nested(v):
        return conv(jax.jit(lambda u: jax.nn.relu(conv(u, W1.astype(u.dtype))))(v), W2)

    assert _erf._largest_map(jax.make_jaxpr(nested)(x).jaxpr) == 28


def test_large_samples_run_in_equal_steps(monkeypatch):
    """A batch wider than the side-by-side width runs as equal steps (one program), the last
    padded with samples that are not counted; the map is the one-step map (float64 sums).
    A NaN sample is still named by its place in the batch: see the next test."""
    from jaxrf import _erf

    shapes = []
    step = _erf._batch_sum

    def record(*args, **kwargs):
        shapes.append(args[2].shape)
        return step(*args, **kwargs)

    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(5), (11, 9, 2), jnp.float64)
        whole = jaxrf.effective_receptive_field(relu_net, x, (2,))
        monkeypatch.setattr(_erf, "SIDE_BY_SIDE_ELEMENTS", 2 * 28)  # 2 samples (see above)
        monkeypatch.setattr(_erf, "_batch_sum", record)
        stepped = jaxrf.effective_receptive_field(relu_net, x, (2,))
    # 11 samples, at most 2 a step: 6 steps of 2 (the last holds one sample and one pad).
    assert shapes == [(2, 9, 2)] * 6
    assert stepped.count == 11
    np.testing.assert_allclose(stepped.map, whole.map, rtol=1e-13, atol=1e-15)


def test_weight_draws_luo_protocol():
    def init_fn(key):
        return jax.random.normal(key, (3, 1, 1))

    def fn(w, x):
        return conv(jax.nn.relu(conv(x, w)), w)

    x = jax.random.normal(jax.random.key(0), (5, 9, 1))
    key = jax.random.key(42)
    erf = jaxrf.effective_receptive_field(fn, x, (2,), init_fn=init_fn, key=key, num_draws=3)
    assert erf.count == 15 and erf.num_draws == 3
    keys = jax.random.split(key, 3)

    def draw_mean(k):
        w = init_fn(k)
        return jaxrf.gradient_map(lambda v: fn(w, v), x, (2,)).mean(axis=0)

    manual = np.mean([draw_mean(k) for k in keys], axis=0)
    np.testing.assert_allclose(erf.map, manual, rtol=1e-5)


def test_weight_draws_with_an_initialiser_that_needs_concrete_keys():
    """An ``init_fn`` that reads the key's bits with numpy (as the zoo's fixed-seed fill and
    the MTCNN trunks do) cannot be traced; the ERF still takes it. Each draw's weights are
    ``seed + 1`` (a kernel of equal taps): output 2 of ``conv(conv(x))`` (VALID, 3 taps, a
    9-wide signal) reads the first conv's outputs 2..4, so pixels 2..6 by ``w**2`` times the
    number of paths ``(1, 2, 3, 2, 1)``."""

    def init_fn(key):
        seed = int(np.asarray(jax.random.key_data(key)).ravel()[-1] % 3)
        return np.full((3, 1, 1), seed + 1.0, np.float32)

    def fn(w, x):
        return conv(conv(x, w), w)

    x = jnp.zeros((2, 9, 1))
    key = jax.random.key(5)
    erf = jaxrf.effective_receptive_field(fn, x, (2,), init_fn=init_fn, key=key, num_draws=2)
    squares = [init_fn(k)[0, 0, 0] ** 2 for k in jax.random.split(key, 2)]
    expected = np.mean(squares) * np.array([0, 0, 1, 2, 3, 2, 1, 0, 0])
    np.testing.assert_allclose(erf.map, expected, rtol=1e-6)


@pytest.mark.parametrize("elements", [None, 5], ids=["one-step", "one-sample-steps"])
def test_nonfinite_samples_raise_or_are_skipped(elements, monkeypatch):
    """Also when every sample runs as a step of its own (sqrt's largest map: 5 elements)."""
    if elements is not None:
        from jaxrf import _erf

        monkeypatch.setattr(_erf, "SIDE_BY_SIDE_ELEMENTS", elements)
    x = jnp.ones((4, 5, 1)).at[2, 2, 0].set(0.0)
    with pytest.raises(
        jaxrf.NonFiniteGradientError, match=r"1 sample\(s\).*first: sample 2 of draw 0"
    ):
        jaxrf.effective_receptive_field(jnp.sqrt, x, (2,))
    erf = jaxrf.effective_receptive_field(jnp.sqrt, x, (2,), nonfinite="skip")
    assert erf.count == 3 and erf.nonfinite_samples == 1
    assert erf.map.tolist() == [0, 0, 0.5, 0, 0]  # d sqrt(x)/dx at 1


ERRORS = [
    (dict(index=(7,)), ValueError, r"outside the output"),
    (dict(index="middle"), ValueError, r"'center'"),
    (dict(index=(1,), reduce="max"), ValueError, r"`reduce` \(='max'\)"),
    (dict(index=(1,), num_draws=2), ValueError, r"needs `init_fn`"),
    (dict(index=(1,), batch_size=0), ValueError, r"`batch_size` \(=0\)"),
    (dict(index=(1,), nonfinite="ignore"), ValueError, r"'raise' or 'skip'"),
]


@pytest.mark.parametrize("kwargs, error, match", ERRORS, ids=[e[2][:20] for e in ERRORS])
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxrf.effective_receptive_field(lambda x: x, jnp.ones((2, 5, 1)), **kwargs)


def test_input_errors():
    with pytest.raises(ValueError, match="held no batches"):
        jaxrf.effective_receptive_field(lambda x: x, [], (0,))
    with pytest.raises(ValueError, match="same shape"):
        jaxrf.effective_receptive_field(
            lambda x: x, [jnp.ones((1, 5, 1)), jnp.ones((1, 6, 1))], (0,)
        )
    with pytest.raises(TypeError, match="one-shot iterator"):
        jaxrf.effective_receptive_field(
            lambda w, x: x, iter([jnp.ones((1, 5, 1))]), (0,), init_fn=lambda k: None, num_draws=2
        )


def test_cropped_erf_equals_full_image_erf():
    """crop= runs on the unit's cone only; the pasted map equals the full-image ERF exactly.

    Two 3x3 stride-2 SAME convs with ReLU on 23x23: unit (3, 3) of the 6x6 output depends on
    an 11x11 window, so the crop is much smaller than the image; with float64 and
    identical arithmetic on the cone the maps must agree to rounding.
    """
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(3, 3, 2, 4)), rng.normal(size=(3, 3, 4, 3))
    dn = ("NHWC", "HWIO", "NHWC")

    def net(x):
        conv = jax.lax.conv_general_dilated
        h = jax.nn.relu(conv(x, jnp.asarray(w1, x.dtype), (2, 2), "SAME", dimension_numbers=dn))
        return conv(h, jnp.asarray(w2, x.dtype), (2, 2), "SAME", dimension_numbers=dn)

    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(6, 23, 23, 2)))
        rf = jaxrf.from_layers([jaxrf.Layer(3, stride=2, padding="SAME")] * 2, (23, 23))
        crop = jaxrf.crop_for_unit(rf, (3, 3))
        assert crop.fraction < 0.5
        full = jaxrf.effective_receptive_field(net, x, (3, 3), batch_size=4)
        cut = jaxrf.effective_receptive_field(net, x, (3, 3), batch_size=4, crop=crop)
        batches = jaxrf.effective_receptive_field(net, [x[:4], x[4:]], (3, 3), crop=crop)
    np.testing.assert_allclose(cut.map, full.map, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(batches.map, full.map, rtol=1e-12, atol=1e-15)
    assert cut.output_shape == full.output_shape == (6, 6)
    assert cut.index == (3, 3) and cut.map.shape == (23, 23)
    with pytest.raises(ValueError, match=r"`index` \(=\(2, 2\)\) is not the unit the crop"):
        jaxrf.effective_receptive_field(net, x, (2, 2), crop=crop)


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5, 7), (2, 6, 6, 16)])
def test_masks_packed_to_bits_and_back(shape):
    # The ERF step keeps boolean residuals as 8 to a byte; every size, padding included.
    from jaxrf._erf import _pack_bits, _unpack_bits

    mask = jnp.asarray(np.random.default_rng(len(shape)).random(shape) < 0.5)
    packed = _pack_bits(mask)
    assert packed.dtype == jnp.uint8 and packed.shape == (-(-mask.size // 8),)
    np.testing.assert_array_equal(_unpack_bits(packed, shape), mask)
    # under vmap and jit, as in the step
    batch = jnp.stack([mask, ~mask])
    back = jax.jit(jax.vmap(lambda m: _unpack_bits(_pack_bits(m), shape)))(batch)
    np.testing.assert_array_equal(back, batch)
    # bit k of byte j is element 8 j + k (by hand, on a known pattern)
    if shape == (9,):
        pattern = jnp.asarray([True, False, False, True, False, False, False, False, True])
        assert _pack_bits(pattern).tolist() == [1 + 8, 1]


def test_compact_masks_touch_only_booleans():
    from jaxrf._erf import _compact_masks

    x = jnp.linspace(-1.0, 1.0, 24).reshape(2, 3, 4)

    def f(v):
        return jnp.sum(jax.nn.relu(v) * v)

    _, pull = jax.vjp(f, x)
    leaves = jax.tree_util.tree_leaves(pull)
    assert {str(v.dtype) for v in leaves} >= {"bool", "float32"}
    compact = jax.tree_util.tree_leaves(_compact_masks(pull))
    for before, after in zip(leaves, compact, strict=True):
        np.testing.assert_array_equal(after, before)
        if before.dtype != jnp.bool_:
            assert after is before
    np.testing.assert_array_equal(_compact_masks(pull)(1.0)[0], pull(1.0)[0])
