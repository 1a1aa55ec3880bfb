"""jaxrf.receptive_field on networks written directly in jax.lax: one case per rule.

Every expected value is derived by hand in the comment beside it, with Distill's recurrences
``r' = r + S (k' - 1)``, ``S' = S s``, ``P' = P + S p`` (``k' = d (k - 1) + 1``; with input
dilation ``D`` the layer's numbers are divided by ``D``).
"""

from fractions import Fraction as F

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxrf
from jaxrf import _registry, _rules

NHWC = ("NHWC", "HWIO", "NHWC")


def spec(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def conv(x, k, s=1, pad="VALID", cin=1, cout=1, dn=NHWC, **kw):
    kh, kw_ = (k, k) if isinstance(k, int) else k
    w = jnp.ones((kh, kw_, cin, cout))
    s = (s, s) if isinstance(s, int) else s
    return lax.conv_general_dilated(x, w, s, pad, dimension_numbers=dn, **kw)


def nchw_conv(x):  # OIHW kernel 3x3 stride 2 padding 1 on NCHW input
    w = jnp.ones((4, 3, 3, 3))
    return lax.conv_general_dilated(
        x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )


def conv1d(x):
    return lax.conv_general_dilated(
        x, jnp.ones((5, 1, 1)), (2,), "VALID", dimension_numbers=("NWC", "WIO", "NWC")
    )


def conv3d(x):
    w = jnp.ones((3, 1, 1, 1, 1))
    dn = ("NDHWC", "DHWIO", "NDHWC")
    return lax.conv_general_dilated(x, w, (1, 1, 1), "VALID", dimension_numbers=dn)


def grouped(x):
    w = jnp.ones((3, 3, 1, 2))  # feature_group_count=2: 2 input channels, one per group
    return lax.conv_general_dilated(
        x, w, (1, 1), "VALID", dimension_numbers=NHWC, feature_group_count=2
    )


def batch_grouped(x):
    w = jnp.ones((3, 3, 1, 2))  # batch 2 split into 2 groups, 2 output features
    return lax.conv_general_dilated(
        x, w, (1, 1), "VALID", dimension_numbers=NHWC, batch_group_count=2
    )


# (id, fn, input shape, size, stride, padding, output spatial shape)
CASES = [
    # two 3x3 VALID: r = 1 + 2 + 2 = 5; n = 8 - 2 - 2 = 4
    ("conv_valid_x2", lambda x: conv(conv(x, 3), 3), (1, 8, 8, 1), (5, 5), (1, 1), (0, 0), (4, 4)),
    # SAME 3x3 stride 2 at 8: total pad 3 - 2 = 1 -> (0, 1); P = 0
    (
        "conv_same_stride2",
        lambda x: conv(x, 3, 2, "SAME"),
        (1, 8, 8, 1),
        (3, 3),
        (2, 2),
        (0, 0),
        (4, 4),
    ),
    # explicit asymmetric padding: P = left pad; n = 8 + 3 - 3 + 1 = 9
    (
        "conv_asym_pad",
        lambda x: conv(x, 3, 1, ((2, 1), (0, 3))),
        (1, 8, 8, 1),
        (3, 3),
        (1, 1),
        (2, 0),
        (9, 9),
    ),
    # negative padding crops: P = -1 on H, n = 8 - 2 - 3 + 1 = 4
    (
        "conv_neg_pad",
        lambda x: conv(x, 3, 1, ((-1, -1), (0, 0))),
        (1, 8, 8, 1),
        (3, 3),
        (1, 1),
        (-1, 0),
        (4, 6),
    ),
    # rhs dilation 2: k' = 5, n = 8 - 4 = 4
    (
        "conv_rhs_dilation",
        lambda x: conv(x, 3, rhs_dilation=(2, 2)),
        (1, 8, 8, 1),
        (5, 5),
        (1, 1),
        (0, 0),
        (4, 4),
    ),
    # lhs dilation 2 (transposed conv), k=3, pad (2,2): unit 1/2, r = 1 + 2/2 = 2, S = 1/2,
    # P = 2/2 = 1; n = 15 + 4 - 3 + 1 = 17
    (
        "conv_lhs_dilation",
        lambda x: conv(x, 3, 1, ((2, 2), (2, 2)), lhs_dilation=(2, 2)),
        (1, 8, 8, 1),
        (2, 2),
        (F(1, 2), F(1, 2)),
        (1, 1),
        (17, 17),
    ),
    ("conv_feature_groups", grouped, (1, 8, 8, 2), (3, 3), (1, 1), (0, 0), (6, 6)),
    ("conv_batch_groups", batch_grouped, (2, 8, 8, 1), (3, 3), (1, 1), (0, 0), (6, 6)),
    # NCHW read from the conv's dimension numbers: spatial (16, 16), not (3, 16)
    ("conv_nchw", nchw_conv, (1, 3, 16, 16), (3, 3), (2, 2), (1, 1), (8, 8)),
    # 1-D, kernel 5 stride 2 at 20: n = (20 - 5) // 2 + 1 = 8
    ("conv_1d", conv1d, (1, 20, 1), (5,), (2,), (0,), (8,)),
    ("conv_3d", conv3d, (1, 5, 4, 4, 1), (3, 1, 1), (1, 1, 1), (0, 0, 0), (3, 4, 4)),
    # max pool 3x3 stride 2 SAME at 8: pad (0, 1) -> P = 0
    (
        "reduce_window_max",
        lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME"),
        (1, 8, 8, 1),
        (3, 3),
        (2, 2),
        (0, 0),
        (4, 4),
    ),
    (
        "reduce_window_min",
        lambda x: lax.reduce_window(x, jnp.inf, lax.min, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"),
        (1, 8, 8, 1),
        (2, 2),
        (2, 2),
        (0, 0),
        (4, 4),
    ),
    # average pool = reduce_window_sum then divide; 3x3 stride 1 padding 1
    (
        "reduce_window_sum",
        lambda x: (
            lax.reduce_window(
                x, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
            )
            / 9
        ),
        (1, 8, 8, 1),
        (3, 3),
        (1, 1),
        (1, 1),
        (8, 8),
    ),
    # generic reduce_window (a product): 3x3 stride 2 VALID at 9: n = 4
    (
        "reduce_window_generic",
        lambda x: lax.reduce_window(
            x, 1.0, lambda a, b: a * b, (1, 3, 3, 1), (1, 2, 2, 1), "VALID"
        ),
        (1, 9, 9, 1),
        (3, 3),
        (2, 2),
        (0, 0),
        (4, 4),
    ),
    # interior padding 1 on H = input dilation 2, then a 3x3 conv: pad (1, 2) -> unit 1/2,
    # S = 1/2, P = 1/2; conv: r = 1 + (1/2) 2 = 2; H: n = 15 + 3 - 2 = 16
    (
        "pad_interior",
        lambda x: conv(lax.pad(x, 0.0, ((0, 0, 0), (1, 2, 1), (0, 0, 0), (0, 0, 0))), 3),
        (1, 8, 8, 1),
        (2, 3),
        (F(1, 2), 1),
        (F(1, 2), 0),
        (16, 6),
    ),
    # negative pad crops 2 on top, adds 1 at the bottom: P = -2; n = 8 - 2 + 1 - 2 = 5
    (
        "pad_negative",
        lambda x: conv(lax.pad(x, 0.0, ((0, 0, 0), (-2, 1, 0), (0, 0, 0), (0, 0, 0))), 3),
        (1, 8, 8, 1),
        (3, 3),
        (1, 1),
        (-2, 0),
        (5, 6),
    ),
    # static strided slice 1:7:2 on H: a kernel-1 window, stride 2, P = -1; n = 3
    ("slice_strided", lambda x: x[:, 1:7:2], (1, 8, 8, 1), (1, 1), (2, 1), (-1, 0), (3, 8)),
    (
        "dynamic_slice",
        lambda x: lax.dynamic_slice(x, (0, 2, 0, 0), (1, 4, 8, 1)),
        (1, 8, 8, 1),
        (1, 1),
        (1, 1),
        (-2, 0),
        (4, 8),
    ),
    # channel concat of a 3x3 SAME and a 5x5 SAME conv: same stride and centre -> aligned,
    # size 5, P = 2
    (
        "concatenate_channels",
        lambda x: jnp.concatenate([conv(x, 3, pad="SAME"), conv(x, 5, pad="SAME")], axis=-1),
        (1, 8, 8, 1),
        (5, 5),
        (1, 1),
        (2, 2),
        (8, 8),
    ),
    # spatial concat of the two halves of the input is the identity
    (
        "concatenate_spatial_identity",
        lambda x: jnp.concatenate([x[:, :4], x[:, 4:]], axis=1),
        (1, 8, 8, 1),
        (1, 1),
        (1, 1),
        (0, 0),
        (8, 8),
    ),
    # elementwise with broadcasting (bias, batch-norm style scale), convert, integer_pow
    (
        "elementwise_broadcast",
        lambda x: (
            (conv(x, 3) * jnp.full((1, 1, 1, 1), 2.0) + jnp.ones((1, 1, 1, 1))).astype(jnp.bfloat16)
            ** 3
        ),
        (1, 8, 8, 1),
        (3, 3),
        (1, 1),
        (0, 0),
        (6, 6),
    ),
    # select_n merges the identity (r 1, P 0) with a 3x3 SAME conv (r 3, P 1): same centre
    (
        "select_n",
        lambda x: jnp.where(x > 0, x, conv(x, 3, pad="SAME")),
        (1, 8, 8, 1),
        (3, 3),
        (1, 1),
        (1, 1),
        (8, 8),
    ),
    # ConvNeXt: 7x7 depthwise SAME, then pointwise dense layers (dot_general over channels)
    (
        "dot_general_pointwise",
        lambda x: (
            jax.nn.gelu(conv(x, 7, pad="SAME", cin=1, cout=4) @ jnp.ones((4, 8))) @ jnp.ones((8, 2))
        ),
        (1, 16, 16, 1),
        (7, 7),
        (1, 1),
        (3, 3),
        (16, 16),
    ),
    # LayerNorm: reductions over channels leave the field alone
    (
        "reduce_channels",
        lambda x: (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6),
        (1, 8, 8, 4),
        (1, 1),
        (1, 1),
        (0, 0),
        (8, 8),
    ),
    # reshape/transpose/broadcast/squeeze/expand_dims keep the axes: then a 3x3 conv
    (
        "layout_ops",
        lambda x: conv(
            jnp.squeeze(jnp.expand_dims(x.transpose(0, 3, 1, 2), 0), 0).transpose(0, 2, 3, 1), 3
        ),
        (1, 8, 8, 1),
        (3, 3),
        (1, 1),
        (0, 0),
        (6, 6),
    ),
    # VAN: (B, H, W, C) -> (B, H*W, C), token-wise dense, back, then a 3x3 conv
    (
        "reshape_tokens",
        lambda x: conv((x.reshape(1, 64, 2) @ jnp.ones((2, 2))).reshape(1, 8, 8, 2), 3, cin=2),
        (1, 8, 8, 2),
        (3, 3),
        (1, 1),
        (0, 0),
        (6, 6),
    ),
    # cumsum along H: output i reads 0..i: kernel 8, padding (7, 0)
    ("cumsum", lambda x: jnp.cumsum(x, axis=1), (1, 8, 8, 1), (8, 1), (1, 1), (7, 0), (8, 8)),
]


@pytest.mark.parametrize(
    ("fn", "shape", "size", "stride", "padding", "out"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_rules_table(fn, shape, size, stride, padding, out):
    rf = jaxrf.receptive_field(fn, spec(*shape))
    assert (rf.size, rf.stride, rf.padding, rf.output_shape) == (size, stride, padding, out)
    assert rf.aligned and not rf.is_global


def test_accepts_concrete_array_and_spatial_axes_override():
    # W and H swapped by the user: a (3, 5) kernel then reads 5 along the first named axis
    rf = jaxrf.receptive_field(
        lambda x: conv(x, (3, 5)), jnp.zeros((1, 8, 8, 1)), spatial_axes=(2, 1)
    )
    assert rf.size == (5, 3)


@pytest.mark.parametrize(
    ("spatial_axes", "match"),
    [((1, 9), r"`spatial_axes` \(=\(1, 9\)\)"), ((1, 1), "names an axis twice"), ((), "non-empty")],
)
def test_bad_spatial_axes(spatial_axes, match):
    with pytest.raises(ValueError, match=match):
        jaxrf.receptive_field(lambda x: x, spec(1, 8, 8, 1), spatial_axes=spatial_axes)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"`unknown` \(='ignore'\)"):
        jaxrf.receptive_field(lambda x: x, spec(1, 8, 8, 1), unknown="ignore")
    with pytest.raises(ValueError, match="does not depend on its input"):
        jaxrf.receptive_field(lambda x: jnp.zeros((1, 8, 8, 1)), spec(1, 8, 8, 1))
    with pytest.raises(ValueError, match="one array to one array"):
        jaxrf.receptive_field(lambda x: (x, x), spec(1, 8, 8, 1))


# ---------------------------------------------------------------------------------------
# The foundation issue's hand networks (google-research/receptive_field), from code.
# ---------------------------------------------------------------------------------------


def network_1(x):  # 1x1 stride-4 conv beside pad [1, 0] + 3x3 VALID s2 + 1x1 s2, added
    a = conv(x, 1, 4)
    b = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))
    return a + conv(conv(b, 3, 2), 1, 2)


def network_5(x):  # [3, 5] stride 2 then [3, 1] stride 2, VALID
    return conv(conv(x, (3, 5), 2), (3, 1), 2)


def network_3(x):  # pad [2, 1] + 5x5 stride 2 beside two 3x3 VALID convs
    a = conv(jnp.pad(x, ((0, 0), (2, 1), (2, 1), (0, 0))), 5, 2)
    return a + conv(conv(x, 3), 3)


def test_network_1_matches_layer_list():
    rf = jaxrf.receptive_field(network_1, spec(1, 8, 8, 1))
    layers = [
        jaxrf.Parallel(
            [
                [jaxrf.Layer(1, stride=4)],
                [
                    jaxrf.Layer(1, padding=[(1, 0), (1, 0)]),
                    jaxrf.Layer(3, stride=2),
                    jaxrf.Layer(1, stride=2),
                ],
            ]
        )
    ]
    expected = jaxrf.from_layers(layers, (8, 8))
    # Published: size 3, stride 4, padding 1 (path b: pad 1, then r = 1 + 2 = 3, S = 4)
    assert (rf.size, rf.stride, rf.padding, rf.aligned) == ((3, 3), (4, 4), (1, 1), True)
    assert (rf.size, rf.stride, rf.padding, rf.output_shape) == (
        expected.size,
        expected.stride,
        expected.padding,
        expected.output_shape,
    )


def test_network_5():
    # H: r = 1 + 2 + 2*2 = 7; W: r = 1 + 4 + 0 = 5; S = 4; P = 0
    rf = jaxrf.receptive_field(network_5, spec(1, 32, 32, 1))
    assert (rf.size, rf.stride, rf.padding) == ((7, 5), (4, 4), (0, 0))
    expected = jaxrf.from_layers([jaxrf.Layer((3, 5), 2), jaxrf.Layer((3, 1), 2)], (32, 32))
    assert (rf.size, rf.stride, rf.padding) == (expected.size, expected.stride, expected.padding)


def _network_3_reads(i: int, n: int = 7) -> set[int]:
    """Hand enumeration along one axis: the input pixels output ``i`` of network 3 reads."""
    branch_a = {2 * i + t - 2 for t in range(5)}  # pad 2 on the left, 5 taps, stride 2
    branch_b = {i + t1 + t2 for t1 in range(3) for t2 in range(3)}  # two 3x3 VALID convs
    return {m for m in branch_a | branch_b if 0 <= m < n}


def test_network_3_misaligned_and_exact_regions():
    with pytest.warns(
        jaxrf.MisalignmentWarning, match=r"stride 2, padding 2, size 5.*stride 1, padding 0, size 5"
    ):
        rf = jaxrf.receptive_field(network_3, spec(1, 7, 7, 1))
    assert rf.aligned is False
    # n_a = (7 + 3 - 5) // 2 + 1 = 3, n_b = 7 - 4 = 3
    assert rf.output_shape == (3, 3)
    for i in range(3):
        for j in range(3):
            rows, cols = _network_3_reads(i), _network_3_reads(j)
            assert rf.region((i, j), clip=True) == ((min(rows), max(rows)), (min(cols), max(cols)))


# ---------------------------------------------------------------------------------------
# Resize: interpolation matrices built from iota and evaluated (bilinear: dot_general,
# nearest: gather).
# ---------------------------------------------------------------------------------------


def _bilinear_up2_reads(i: int, n: int = 8) -> tuple[int, int]:
    # half-pixel centres: c = (i + 1/2)/2 - 1/2 reads floor(c), floor(c) + 1, clipped
    c = F(2 * i + 1, 4) - F(1, 2)
    lo = int(np.floor(float(c)))
    return max(lo, 0), min(lo + 1, n - 1)


def test_resize_bilinear_upsampling():
    rf = jaxrf.receptive_field(
        lambda x: jax.image.resize(x, (1, 16, 16, 1), "bilinear"), spec(1, 8, 8, 1)
    )
    # Smallest affine band at stride 1/2 holding every row: even i read (i/2 - 3/4, +1/4)
    # around c, odd i read (-1/4, +3/4): width 3/2 + 1 = 5/2; P = 1 (row 2: lo 0 = 1 - P)
    assert (rf.size, rf.stride, rf.padding) == ((F(5, 2),) * 2, (F(1, 2),) * 2, (1, 1))
    assert rf.output_shape == (16, 16)
    for i in range(16):
        assert rf.region((i, 0), clip=True) == (_bilinear_up2_reads(i), (0, 0))


def test_resize_bilinear_downsampling_antialiased():
    # 16 -> 8 with antialias: the triangle widens to half-width 2; output i (centre 2i + 1/2)
    # reads 2i - 1 .. 2i + 2: size 4, stride 2, padding 1
    rf = jaxrf.receptive_field(
        lambda x: jax.image.resize(x, (1, 8, 8, 1), "bilinear"), spec(1, 16, 16, 1)
    )
    assert (rf.size, rf.stride, rf.padding) == ((4, 4), (2, 2), (1, 1))
    assert rf.region((0, 7), clip=True) == ((0, 2), (13, 15))


def test_resize_nearest_is_a_gather():
    rf = jaxrf.receptive_field(
        lambda x: jax.image.resize(x, (1, 16, 16, 1), "nearest"), spec(1, 8, 8, 1)
    )
    # output i reads floor((i + 1/2) 8/16) = i // 2; band: S = 1/2, P = 1/2, r = 3/2
    assert (rf.size, rf.stride, rf.padding) == ((F(3, 2),) * 2, (F(1, 2),) * 2, (F(1, 2),) * 2)
    assert [rf.region((i, i), clip=True) for i in (0, 1, 5, 15)] == [
        ((0, 0), (0, 0)),
        ((0, 0), (0, 0)),
        ((2, 2), (2, 2)),
        ((7, 7), (7, 7)),
    ]
    assert [r.op for r in rf.layers] == ["gather", "gather"]


# ---------------------------------------------------------------------------------------
# Global operations.
# ---------------------------------------------------------------------------------------


def test_global_average_pool():
    rf = jaxrf.receptive_field(lambda x: conv(x, 3).mean(axis=(1, 2)), spec(1, 8, 8, 1))
    assert rf.is_global and rf.size == (8, 8) and rf.output_shape == (1, 1)
    assert rf.region((0, 0), clip=True) == ((0, 7), (0, 7))


def squeeze_excitation(x):
    y = conv(x, 3, pad="SAME", cin=1, cout=4)
    gate = jax.nn.sigmoid(
        jax.nn.relu(y.mean(axis=(1, 2), keepdims=True) @ jnp.ones((4, 2))) @ jnp.ones((2, 4))
    )
    return y * gate


def test_squeeze_excitation_is_global():
    with pytest.warns(
        jaxrf.GlobalReceptiveFieldWarning,
        match="global branch: every output now depends on the whole input",
    ):
        rf = jaxrf.receptive_field(squeeze_excitation, spec(1, 8, 8, 1))
    # not the conv-only size 3: every output reads the whole 8x8 input
    assert rf.is_global and rf.size == (8, 8)
    assert rf.region((0, 0), clip=True) == ((0, 7), (0, 7))


def test_attention_is_global():
    def attention(x):
        t = x.reshape(1, 16, 2)
        weights = jax.nn.softmax(t @ t.transpose(0, 2, 1))
        return (weights @ t).reshape(1, 4, 4, 2)

    rf = jaxrf.receptive_field(attention, spec(1, 4, 4, 2))
    assert rf.is_global and rf.output_shape == (4, 4)
    assert rf.region((3, 0), clip=True) == ((0, 3), (0, 3))


def test_spatial_concatenation_side_by_side():
    # [x, x] along H: output row i reads input row i mod 8 (exact per index)
    with pytest.warns(jaxrf.MisalignmentWarning, match="misaligned merge"):
        rf = jaxrf.receptive_field(
            lambda x: jnp.concatenate([x, conv(x, 3, pad="SAME")], axis=1), spec(1, 8, 8, 1)
        )
    assert rf.output_shape == (16, 8)
    assert rf.region((2, 0), clip=True) == ((2, 2), (0, 0))
    assert rf.region((8, 0), clip=True) == ((0, 1), (0, 1))  # row 0 of the conv half


# ---------------------------------------------------------------------------------------
# Containers.
# ---------------------------------------------------------------------------------------


@jax.custom_vjp
def _double(x):
    return 2 * x


_double.defvjp(lambda x: (2 * x, None), lambda _, g: (2 * g,))


@jax.custom_jvp
def _soft(x):
    return jnp.log1p(jnp.exp(x))


_soft.defjvp(lambda p, t: (_soft(p[0]), t[0]))


def test_containers_walked_recursively():
    inner = jax.jit(lambda x: conv(x, 3))
    remat = jax.checkpoint(lambda x: conv(x, 3))

    def net(x):
        return remat(_soft(_double(jax.nn.relu(inner(x)))))

    prims = {e.primitive.name for e in jax.make_jaxpr(net)(jnp.zeros((1, 8, 8, 1))).eqns}
    assert {"jit", "custom_jvp_call", "custom_vjp_call", "remat2"} <= prims
    rf = jaxrf.receptive_field(net, spec(1, 8, 8, 1))
    assert (rf.size, rf.output_shape) == ((5, 5), (4, 4))


def test_pjit_name_accepted():
    # jax 0.10 calls the wrapper 'jit'; older versions 'pjit': both are the same container
    assert _registry.REGISTRY["pjit"] == _registry.REGISTRY["jit"]
    assert _registry.REGISTRY["jit"].container == "jaxpr"


def test_layer_records_lax():
    rf = jaxrf.receptive_field(network_5, spec(1, 32, 32, 1))
    assert [(r.name, r.op, r.kernel, r.stride, r.size) for r in rf.layers] == [
        ("conv0", "conv", (3, 5), (2, 2), (3, 5)),
        ("conv1", "conv", (3, 1), (2, 2), (7, 5)),
    ]


# ---------------------------------------------------------------------------------------
# Unknown primitives and the escape hatches.
# ---------------------------------------------------------------------------------------


def _make_primitive(name):
    prim = jax.extend.core.Primitive(name)
    prim.def_impl(lambda x: x)
    prim.def_abstract_eval(lambda x: jax.core.ShapedArray(x.shape, x.dtype))
    return prim


_mystery = _make_primitive("jaxrf_test_mystery")


def _mystery_net(x):
    return _mystery.bind(conv(x, 3))


def test_unknown_primitive_error_message():
    with pytest.raises(TypeError) as info:
        jaxrf.receptive_field(_mystery_net, spec(1, 8, 8, 1))
    message = str(info.value)
    assert "'jaxrf_test_mystery'" in message
    assert "test_trace.py" in message  # the user's line
    assert "conv_general_dilated" in message  # the supported set
    assert "jaxrf.register_rule('jaxrf_test_mystery'" in message
    assert "unknown='global'" in message


def test_unknown_global_hatch():
    with pytest.warns(
        jaxrf.GlobalReceptiveFieldWarning, match="'jaxrf_test_mystery'.*treated as global"
    ):
        rf = jaxrf.receptive_field(_mystery_net, spec(1, 8, 8, 1), unknown="global")
    assert rf.is_global and rf.output_shape == (6, 6) and rf.size == (8, 8)


def test_register_rule(monkeypatch):
    monkeypatch.setattr(_registry, "REGISTRY", dict(_registry.REGISTRY))
    jaxrf.register_rule("jaxrf_test_mystery", "elementwise")
    rf = jaxrf.receptive_field(_mystery_net, spec(1, 8, 8, 1))
    assert rf.size == (3, 3)
    with pytest.raises(TypeError, match=r"`rule` \(='sideways'\)"):
        jaxrf.register_rule("jaxrf_test_mystery", "sideways")


def test_rules_argument_with_callable():
    def as_3x3_window(ctx, eqn, inputs):  # pretend the primitive is a 3x3 pool, padding 1
        (x,) = inputs
        windows = [jaxrf.Window(3, padding=(1, 1)) if a is not None else None for a in x.axes]
        return _rules.through(ctx, x, windows, x.axes, "mystery_pool")

    rf = jaxrf.receptive_field(
        _mystery_net, spec(1, 8, 8, 1), rules={"jaxrf_test_mystery": as_3x3_window}
    )
    # conv 3 (r 3), then the 3-wide window: r = 5, P = 1; shape kept at 6
    assert (rf.size, rf.padding, rf.output_shape) == ((5, 5), (1, 1), (6, 6))
    assert "jaxrf_test_mystery" not in _registry.REGISTRY
