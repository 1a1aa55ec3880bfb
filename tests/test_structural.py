"""Structural actual RF == clipped analytic region at every output position; the traps."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrf
from jaxrf import Layer, Parallel


def conv(x, w, stride=1, padding="VALID", dilation=1):
    nd = x.ndim - 2
    spec = "N" + "DHW"[3 - nd :] + "C"
    return jax.lax.conv_general_dilated(
        x,
        w,
        (stride,) * nd,
        padding,
        rhs_dilation=(dilation,) * nd,
        dimension_numbers=(spec, "DHW"[3 - nd :] + "IO", spec),
    )


def max_pool(x, k, s, padding="VALID"):
    nd = x.ndim - 2
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, *(k,) * nd, 1), (1, *(s,) * nd, 1), padding
    )


def kernel(key, k, nd, cin=1, cout=1):
    rng = np.random.default_rng(key)  # numpy: no PRNG program traced into every network
    return jnp.asarray(rng.normal(size=(*(k,) * nd, cin, cout)), jnp.float32)


def net_a(x):  # 2-D: conv3 SAME, relu, maxpool 2/2, conv3 stride 2 pad 1, relu
    x = jax.nn.relu(conv(x, kernel(0, 3, 2, 1, 2), padding="SAME"))
    x = max_pool(x, 2, 2)
    return jax.nn.relu(conv(x, kernel(1, 3, 2, 2, 2), stride=2, padding=((1, 1), (1, 1))))


LAYERS_A = [
    Layer(3, padding="SAME"),
    Layer(2, stride=2, op="max_pool"),
    Layer(3, stride=2, padding=1),
]


def net_b(x):  # 1-D: conv5 dilation 2, relu, maxpool 3/2 SAME, conv2 stride 3
    x = jax.nn.relu(conv(x, kernel(2, 5, 1), dilation=2))
    x = max_pool(x, 3, 2, "SAME")
    return conv(x, kernel(3, 2, 1), stride=3)


LAYERS_B = [
    Layer(5, dilation=2),
    Layer(3, stride=2, padding="SAME", op="max_pool"),
    Layer(2, stride=3),
]


def net_c(x):  # 2-D misaligned residual: conv3/2 + crop(conv1/2), relu, maxpool 2/1
    a = conv(x, kernel(4, 3, 2), stride=2)
    b = conv(x, kernel(5, 1, 2), stride=2)[:, :5, :5]
    return max_pool(jax.nn.relu(a + b), 2, 1)


LAYERS_C = [
    Parallel([[Layer(3, stride=2)], [Layer(1, stride=2), Layer(1, padding=((0, -1), (0, -1)))]]),
    Layer(2, op="max_pool"),
]

NETS = [
    ("2d_relu_maxpool", net_a, LAYERS_A, (13, 11)),
    ("1d_dilated_same_pool", net_b, LAYERS_B, (40,)),
    ("2d_misaligned_residual", net_c, LAYERS_C, (11, 11)),
]


def analytic(layers, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxrf.MisalignmentWarning)
        return jaxrf.from_layers(layers, shape)


@pytest.mark.parametrize("net, layers, shape", [n[1:] for n in NETS], ids=[n[0] for n in NETS])
def test_structural_equals_clipped_region_everywhere(net, layers, shape):
    rf = analytic(layers, shape)
    x = jax.random.normal(jax.random.key(9), (1, *shape, 1))
    sm = jaxrf.support_map(net, x)
    assert sm.output_shape == rf.output_shape
    for index in np.ndindex(*rf.output_shape):
        assert sm.box(index) == rf.region(index, clip=True), index
    # Per-position probes agree too (a sample of positions keeps this fast).
    for index in list(np.ndindex(*rf.output_shape))[::7]:
        got = jaxrf.actual_receptive_field(net, x, index, mode="structural")
        assert got.box == rf.region(index, clip=True), index
        np.testing.assert_array_equal(got.mask, sm.mask(index))


def test_all_positions_matches_per_position_with_few_passes():
    # Misaligned net on a larger input: 35 x 35 = 1225 output positions.
    shape = (71, 71)
    rf = analytic(LAYERS_C, shape)
    x = jnp.zeros((1, *shape, 1))

    def net(x):
        a = conv(x, kernel(4, 3, 2), stride=2)
        b = conv(x, kernel(5, 1, 2), stride=2)[:, :35, :35]
        return max_pool(jax.nn.relu(a + b), 2, 1)

    sm = jaxrf.support_map(net, x)
    assert sm.num_positions == 34 * 34
    assert sm.passes < sm.num_positions / 10, sm.passes
    for index in np.ndindex(*rf.output_shape):
        assert sm.box(index) == rf.region(index, clip=True), index
    for index in [(0, 0), (5, 17), (33, 33), (20, 0)]:
        one = jaxrf.actual_receptive_field(net, x, index, mode="structural")
        np.testing.assert_array_equal(one.mask, sm.mask(index))


def test_measured_support_map_matches_per_position():
    x = jax.random.normal(jax.random.key(3), (2, 40, 1))
    sm = jaxrf.support_map(net_b, x, mode="measured")
    for index in np.ndindex(*sm.output_shape):
        one = jaxrf.actual_receptive_field(net_b, x, index)
        np.testing.assert_array_equal(sm.mask(index), one.mask)


def residual_zero_gamma(x):
    """conv3, then [conv3, relu, conv3, batch norm with gamma = 0] + shortcut (ResNet init)."""
    h = conv(x, kernel(6, 3, 2), padding="SAME")
    r = jax.nn.relu(conv(h, kernel(7, 3, 2), padding="SAME"))
    r = conv(r, kernel(8, 3, 2), padding="SAME")
    gamma, beta, mean, var = 0.0, 0.1, 0.2, 1.5
    r = gamma * (r - mean) / jnp.sqrt(var + 1e-5) + beta
    return h + r


def test_zero_gamma_residual_trap():
    x = jax.random.normal(jax.random.key(1), (2, 15, 15, 1))
    measured = jaxrf.actual_receptive_field(residual_zero_gamma, x, (7, 7))
    structural = jaxrf.actual_receptive_field(residual_zero_gamma, x, (7, 7), mode="structural")
    assert measured.box == ((6, 8), (6, 8))  # the shortcut's single conv3
    assert structural.box == ((4, 10), (4, 10))  # three 3x3 convs
    rf = jaxrf.from_layers(
        [Layer(3, padding="SAME"), Parallel([[Layer(3, padding="SAME")] * 2, []])], (15, 15)
    )
    assert structural.box == rf.region((7, 7), clip=True)


def test_max_pool_routing_hides_pixels_in_measured_mode():
    fn = lambda x: max_pool(x, 3, 1)  # noqa: E731
    x = jnp.array([0.0, 5.0, 1.0, 2.0])[None, :, None]
    assert jaxrf.actual_receptive_field(fn, x, (0,)).mask.tolist() == [False, True, False, False]
    assert jaxrf.actual_receptive_field(fn, x, (0,), mode="structural").box == ((0, 2),)


def test_layer_norm_channel_sum_trap_and_random_weighting():
    def fn(x):  # conv to 4 channels, then LayerNorm over channels (scale 1, bias 0)
        y = conv(x, kernel(2, 3, 1, 1, 4).astype(x.dtype))
        mu = y.mean(-1, keepdims=True)
        return (y - mu) / jnp.sqrt(((y - mu) ** 2).mean(-1, keepdims=True) + 1e-6)

    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (1, 9, 1), jnp.float64)
        summed = jaxrf.gradient_map(fn, x, (3,))
        weighted = jaxrf.gradient_map(fn, x, (3,), channel_weights="random")
        assert np.abs(summed).max() < 1e-12 * np.abs(weighted).max()  # sum of LN outputs is 0
        assert (weighted[0] > 0).tolist() == [False] * 3 + [True] * 3 + [False] * 3
        per_channel = jaxrf.actual_receptive_field(fn, x, (3,), per_channel=True)
        assert per_channel.box == ((3, 5),)
        assert jaxrf.actual_receptive_field(fn, x, (3,), mode="structural").box == ((3, 5),)


def deep_net(depth):
    w = jnp.full((3, 1, 1), 1 / 3)

    def fn(x):
        for _ in range(depth):
            x = jax.nn.relu(conv(x, w))
        return x

    return fn


@pytest.mark.slow  # CI runs the slow set after the default run
def test_200_layer_structural_box_does_not_underflow():
    # 200 VALID 3-tap convs: output i reads [i, i + 400]; border weight 3^-200 underflows.
    got = jaxrf.actual_receptive_field(
        deep_net(200), jnp.ones((1, 450, 1)), (25,), mode="structural"
    )
    assert got.box == ((25, 425),)
    assert got.count == 401


@pytest.mark.slow
def test_200_layer_measured_float32_underflows():
    got = jaxrf.actual_receptive_field(deep_net(200), jnp.ones((1, 450, 1)), (25,))
    lo, hi = got.box[0]
    assert 25 < lo and hi < 425  # float32 loses the borders: why structural mode exists


@pytest.mark.slow
def test_200_layer_2d_structural():
    w = jnp.ones((3, 3, 1, 1))

    def fn(x):
        for _ in range(200):
            x = jnp.tanh(conv(x, w))
        return x

    got = jaxrf.actual_receptive_field(fn, jnp.zeros((1, 403, 403, 1)), (1, 2), mode="structural")
    assert got.box == ((1, 401), (2, 402))


def test_containers_interpolation_and_gather():
    @jax.custom_vjp
    def double(x):
        return 2 * x

    double.defvjp(lambda x: (2 * x, None), lambda _, g: (0 * g,))  # a gradient that lies

    def fn(x):
        y = jax.checkpoint(lambda v: jnp.sin(v))(double(x))
        y = jax.jit(lambda v: jax.lax.cond(True, lambda u: u, lambda u: -u, v))(y)
        return jax.image.resize(y, (1, 8, 1), "bilinear")

    x = jnp.ones((1, 4, 1))
    # Upsampling 4 -> 8 (half-pixel centres): output i samples (i + 0.5) / 2 - 0.5.
    assert jaxrf.actual_receptive_field(fn, x, (0,), mode="structural").box == ((0, 0),)
    assert jaxrf.actual_receptive_field(fn, x, (3,), mode="structural").box == ((1, 2),)
    assert jaxrf.actual_receptive_field(fn, x, (7,), mode="structural").box == ((3, 3),)
    assert jaxrf.actual_receptive_field(fn, x, (3,)).box is None  # the lying custom_vjp
    take = lambda x: x[:, jnp.array([4, 0, 2]), :]  # noqa: E731 -- gather, constant indices
    assert jaxrf.actual_receptive_field(take, jnp.ones((1, 5, 1)), (1,), mode="structural").box == (
        (0, 0),
    )


def test_unsupported_primitive_is_named():
    def fn(x):
        return jnp.fft.fft(x, axis=1).real

    with pytest.raises(TypeError, match=r"no rule for primitive 'fft'.*unknown='global'"):
        jaxrf.actual_receptive_field(fn, jnp.ones((1, 5, 1)), (1,), mode="structural")
    got = jaxrf.actual_receptive_field(
        fn, jnp.ones((1, 5, 1)), (1,), mode="structural", unknown="global"
    )
    assert got.box == ((0, 4),)


def test_structural_probe_is_built_once_per_network(monkeypatch):
    # Per-position probing reuses the compiled structural program: the surrogate is replayed
    # (traced) once and the batched mask program traced once, whatever the positions asked.
    from jaxrf import _probe, _structural

    replays, mask_traces = [], []
    replay, seed = _structural._Rewriter.replay, _probe.seed_from_spatial

    def counting_replay(self, closed, xs):
        replays.append(1)
        return replay(self, closed, xs)

    def counting_seed(*args):
        mask_traces.append(1)
        return seed(*args)

    monkeypatch.setattr(_structural._Rewriter, "replay", counting_replay)
    monkeypatch.setattr(_probe, "seed_from_spatial", counting_seed)
    fn = lambda x: jax.nn.relu(conv(x, kernel(0, 3, 1)))  # noqa: E731 -- a fresh network
    x = jnp.zeros((1, 12, 1))
    assert jaxrf.actual_receptive_field(fn, x, (0,), mode="structural").box == ((0, 2),)
    assert len(replays) == 1 and len(mask_traces) == 1
    for i in range(1, 10):  # VALID 3-tap conv: output i reads inputs i..i+2
        assert jaxrf.actual_receptive_field(fn, x, (i,), mode="structural").box == ((i, i + 2),)
    assert len(replays) == 1 and len(mask_traces) == 1
    # Another input shape is another program.
    jaxrf.actual_receptive_field(fn, jnp.zeros((1, 13, 1)), (0,), mode="structural")
    assert len(replays) == 2


SEEDS_PER_CALL = [1, 3, None]


@pytest.mark.parametrize("seeds_per_call", SEEDS_PER_CALL, ids=str)
def test_seeds_per_call_does_not_change_the_answer(seeds_per_call):
    # Batching several passes into one call (3: padded last call) gives the clipped region.
    rf = analytic(LAYERS_B, (200,))  # 32 output positions
    sm = jaxrf.support_map(net_b, jnp.zeros((1, 200, 1)), seeds_per_call=seeds_per_call)
    for index in np.ndindex(*rf.output_shape):
        assert sm.box(index) == rf.region(index, clip=True), index
    assert sm.num_positions == 32 and sm.passes < sm.num_positions


def test_seeds_per_call_error():
    with pytest.raises(ValueError, match=r"`seeds_per_call` \(=0\) must be a positive int"):
        jaxrf.support_map(net_b, jnp.zeros((1, 40, 1)), seeds_per_call=0)
