"""``token_grid=(h, w)``: the probes and the ERF view a token sequence ``(B, P + h*w, C)`` on a
grid given by the caller, without tracing the flattening.

Every network here embeds a 16x16 image with a 4x4 stride-4 patch convolution (kernel of ones,
1 -> 2 channels; a 4x4 grid of tokens, flattened row-major), puts ``P`` prefix tokens in front
and applies token-wise operations only (no attention), so token ``P + 4 i + j`` reads exactly
its patch, pixels ``[4 i, 4 i + 3] x [4 j, 4 j + 3]`` (hand box below).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxrf
import jaxrf._trace

DN = ("NHWC", "HWIO", "NHWC")
X = jnp.full((1, 16, 16, 1), 0.1)
POSITIONS = [(0, 0), (0, 3), (1, 2), (3, 0), (3, 3)]  # corners, a border and an interior token


def hand_box(i, j):
    return ((4 * i, 4 * i + 3), (4 * j, 4 * j + 3))


def hand_mask(i, j):
    mask = np.zeros((16, 16), bool)
    mask[4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = True
    return mask


def patches(x):
    """(B, 16, 16, 1) -> (B, 16, 2): both channels of token 4 i + j are the sum of the 16
    pixels of patch (i, j) (kernel of ones)."""
    y = lax.conv_general_dilated(x, jnp.ones((4, 4, 1, 2)), (4, 4), "VALID", dimension_numbers=DN)
    return y.reshape(y.shape[0], -1, 2)


def mlp(t):
    """A per-token MLP with a residual: mixes channels, never tokens."""
    return t + jnp.tanh(t @ jnp.ones((2, 4))) @ jnp.ones((4, 2))


def constant_prefix(prefix):
    """``prefix`` learned tokens (constants: CLS, registers) in front of the grid, then the MLP;
    the grid jaxrf can trace."""

    def net(x):
        t = patches(x)
        front = jnp.broadcast_to(jnp.ones((1, prefix, 2)), (t.shape[0], prefix, 2))
        return mlp(jnp.concatenate([front, t], axis=1))

    return net


def mean_cls(x):
    """A CLS token computed from the input (the mean of the patch tokens) in front of the grid,
    then the MLP. jaxrf's interval analysis raises on prefix tokens that depend on the input, so
    the grid cannot be inferred; the grid tokens still read only their own patch (the MLP never
    mixes tokens, and nothing reads the CLS token)."""
    t = patches(x)
    return mlp(jnp.concatenate([jnp.mean(t, axis=1, keepdims=True), t], axis=1))


def linear_mean_cls(x):
    """As :func:`mean_cls` with a linear channel mix ``t @ ones((2, 2))``: output channel ``c``
    of grid token (i, j) is ``t_0 + t_1 = 2 * (patch sum)``; the cotangent of ones on both
    channels gives d/dpixel = 2 * 2 = 4 on each pixel of the patch, 0 elsewhere."""
    t = patches(x)
    return jnp.concatenate([jnp.mean(t, axis=1, keepdims=True), t], axis=1) @ jnp.ones((2, 2))


# ---------------------------------------------------------------------------------------
# The grid given equals the grid inferred, where jaxrf can infer it.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [1, 5], ids=["cls", "cls+4-registers"])
@pytest.mark.parametrize("index", POSITIONS, ids=str)
def test_given_grid_addresses_token_prefix_plus_i_w_plus_j(prefix, index):
    net = constant_prefix(prefix)
    given = jaxrf.gradient_map(net, X, index, token_grid=(4, 4))
    assert given.shape == (1, 16, 16)
    assert np.array_equal(given[0] > 0, hand_mask(*index))
    assert np.array_equal(given, jaxrf.gradient_map(net, X, index))  # the inferred path
    for mode in ("measured", "structural"):
        arf = jaxrf.actual_receptive_field(net, X, index, mode=mode, token_grid=[4, 4])
        assert arf.box == hand_box(*index) and arf.output_shape == (4, 4)
        assert np.array_equal(arf.mask, hand_mask(*index))
        assert arf.box == jaxrf.actual_receptive_field(net, X, index, mode=mode).box


# ---------------------------------------------------------------------------------------
# A network whose flattening jaxrf cannot follow.
# ---------------------------------------------------------------------------------------


def test_input_dependent_cls_defeats_inference():
    with pytest.raises(TypeError, match="prefix tokens that depend on the input"):
        jaxrf.gradient_map(mean_cls, X, (1, 2))


@pytest.mark.parametrize("index", POSITIONS, ids=str)
def test_token_grid_measures_what_inference_cannot(index):
    gmap = jaxrf.gradient_map(mean_cls, X, index, token_grid=(4, 4))
    assert np.array_equal(gmap[0] > 0, hand_mask(*index))
    for mode in ("measured", "structural"):
        arf = jaxrf.actual_receptive_field(mean_cls, X, index, mode=mode, token_grid=(4, 4))
        assert arf.box == hand_box(*index)
        assert np.array_equal(arf.mask, hand_mask(*index))


@pytest.mark.parametrize("mode", ["measured", "structural"])
def test_support_map_with_token_grid_is_every_patch(mode):
    sm = jaxrf.support_map(mean_cls, X, mode=mode, token_grid=(4, 4))
    assert sm.output_shape == (4, 4) and sm.input_shape == (16, 16)
    for i, j in np.ndindex(4, 4):
        assert sm.box((i, j)) == hand_box(i, j)


def test_token_grid_does_not_trace_the_flattening(monkeypatch):
    """With the grid given, jaxrf's analytic trace is never called."""

    def refuse(*args, **kwargs):
        raise AssertionError("jaxrf._trace.receptive_field was called")

    monkeypatch.setattr(jaxrf._trace, "receptive_field", refuse)

    def net(x):  # a fresh function: no cached grid from another test
        return mlp(jnp.concatenate([jnp.ones((x.shape[0], 1, 2)), patches(x)], axis=1))

    gmap = jaxrf.gradient_map(net, X, (2, 1), token_grid=(4, 4))
    assert np.array_equal(gmap[0] > 0, hand_mask(2, 1))
    assert jaxrf.actual_receptive_field(net, X, (2, 1), token_grid=(4, 4)).box == hand_box(2, 1)
    erf = jaxrf.effective_receptive_field(net, X, (2, 1), token_grid=(4, 4))
    assert np.array_equal(erf.map > 0, hand_mask(2, 1))
    with pytest.raises(AssertionError, match="was called"):  # the inferred path traces
        jaxrf.gradient_map(net, X, (2, 1))


# ---------------------------------------------------------------------------------------
# The effective receptive field.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", POSITIONS, ids=str)
def test_erf_with_token_grid_is_the_hand_map(index):
    """:func:`linear_mean_cls`: the map is 4 on the patch of token (i, j), 0 elsewhere, for
    every input (the network is linear); float64, compared exactly."""
    with jax.enable_x64(True):
        images = jax.random.normal(jax.random.key(1), (3, 16, 16, 1), jnp.float64)
        erf = jaxrf.effective_receptive_field(linear_mean_cls, images, index, token_grid=(4, 4))
    assert erf.count == 3 and erf.output_shape == (4, 4) and erf.index == index
    assert np.array_equal(erf.map, np.where(hand_mask(*index), 4.0, 0.0))


@pytest.mark.parametrize("index", [(0, 0), (2, 3)], ids=str)
def test_erf_with_token_grid_nonlinear_support(index):
    """:func:`mean_cls` (tanh): the values depend on the input, the support does not."""
    erf = jaxrf.effective_receptive_field(mean_cls, X, index, token_grid=(4, 4))
    assert np.array_equal(erf.map > 0, hand_mask(*index))


def test_erf_with_token_grid_and_init_fn():
    """``fn(params, x)``: ``params`` scales the channel mix, so the map is ``4 * s`` = 12 on the
    patch for ``s = 3``."""

    def net(params, x):
        t = patches(x)
        t = jnp.concatenate([jnp.mean(t, axis=1, keepdims=True), t], axis=1)
        return t @ (params * jnp.ones((2, 2)))

    with jax.enable_x64(True):
        images = jnp.ones((2, 16, 16, 1), jnp.float64)
        erf = jaxrf.effective_receptive_field(
            net, images, (3, 1), init_fn=lambda key: jnp.float64(3.0), token_grid=(4, 4)
        )
    assert np.array_equal(erf.map, np.where(hand_mask(3, 1), 12.0, 0.0))


def test_one_dimensional_token_grid():
    """1-D: a 2-tap stride-2 patch embedding of 8 samples, 4 tokens after one CLS token: token
    ``1 + i`` reads samples ``[2 i, 2 i + 1]`` (inference covers 2-D grids and up only)."""

    def net(x):
        y = lax.conv_general_dilated(
            x, jnp.ones((2, 1, 3)), (2,), "VALID", dimension_numbers=("NWC", "WIO", "NWC")
        )
        return jnp.concatenate([jnp.zeros((x.shape[0], 1, 3)), jnp.tanh(y)], axis=1)

    x = jnp.full((1, 8, 1), 0.1)
    for i in range(4):
        arf = jaxrf.actual_receptive_field(net, x, (i,), token_grid=(4,))
        assert arf.box == ((2 * i, 2 * i + 1),) and arf.output_shape == (4,)


# ---------------------------------------------------------------------------------------
# Bad arguments.
# ---------------------------------------------------------------------------------------


def conv_map(x):
    """An output with spatial axes, (B, 4, 4, 2): not a token sequence."""
    return lax.conv_general_dilated(
        x, jnp.ones((4, 4, 1, 2)), (4, 4), "VALID", dimension_numbers=DN
    )


PROBES = {
    "gradient_map": lambda fn, **kw: jaxrf.gradient_map(fn, X, (0, 0), **kw),
    "actual_receptive_field": lambda fn, **kw: jaxrf.actual_receptive_field(fn, X, (0, 0), **kw),
    "support_map": lambda fn, **kw: jaxrf.support_map(fn, X, **kw),
    "effective_receptive_field": lambda fn, **kw: jaxrf.effective_receptive_field(
        fn, X, (0, 0), **kw
    ),
}

SHAPE = "must be a tuple of 2 positive ints"
BAD = [
    ("one-entry", mean_cls, {"token_grid": (16,)}, r"`token_grid` \(=\(16,\)\) " + SHAPE),
    ("three-entries", mean_cls, {"token_grid": (4, 2, 2)}, SHAPE),
    ("zero", mean_cls, {"token_grid": (4, 0)}, r"`token_grid` \(=\(4, 0\)\) " + SHAPE),
    ("negative", mean_cls, {"token_grid": (-4, -4)}, SHAPE),
    ("float", mean_cls, {"token_grid": (4.0, 4)}, SHAPE),
    ("bool", mean_cls, {"token_grid": (True, 4)}, SHAPE),
    ("int", mean_cls, {"token_grid": 4}, r"`token_grid` \(=4\) " + SHAPE),
    ("string", mean_cls, {"token_grid": "44"}, SHAPE),
    ("with-output-spatial-axes", mean_cls, {"token_grid": (4, 4), "output_spatial_axes": (1, 2)},
     r"give `token_grid` \(=\(4, 4\)\) or `output_spatial_axes` \(=\(1, 2\)\), not both"),
    ("not-3d", conv_map, {"token_grid": (4, 4)},
     r"`token_grid` \(=\(4, 4\)\) needs the probed output to be a token sequence "
     r".* shape \(1, 4, 4, 2\)"),
    ("too-many-grid-tokens", mean_cls, {"token_grid": (5, 4)},
     r"`token_grid` \(=\(5, 4\)\) has 20 tokens but the probed output has only 17"),
]  # fmt: skip


@pytest.mark.parametrize("probe", PROBES.values(), ids=PROBES.keys())
@pytest.mark.parametrize(
    ("fn", "options", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_token_grid(probe, fn, options, message):
    with pytest.raises(ValueError, match=message):
        probe(fn, **options)


def test_erf_crop_with_token_grid():
    with pytest.raises(
        ValueError, match=r"`crop` with `token_grid` \(=\(4, 4\)\) is not supported"
    ):
        jaxrf.effective_receptive_field(mean_cls, X, (0, 0), crop="cone", token_grid=(4, 4))


def test_layer_report_forwards_token_grid():
    """``conv0``, the only named layer, is a (B, 4, 4, 2) map, not tokens: ``token_grid``
    reaches its structural box (probed first, through ``layer=``) and is refused there, as it
    is by the ERF of that layer."""
    net = constant_prefix(1)
    message = r"`token_grid` \(=\(4, 4\)\) needs the probed output to be a token sequence"
    with pytest.raises(ValueError, match=message):
        jaxrf.layer_report(net, X, token_grid=(4, 4))
    with pytest.raises(ValueError, match=message):
        jaxrf.effective_receptive_field(net, X, (0, 0), layer="conv0", token_grid=(4, 4))
