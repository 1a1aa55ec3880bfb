"""Named regression cases: every mismatch the random-architecture property test ever found.

Each case is the minimised network, with the expected boxes derived by hand in its docstring
(input pixel sets per output position, then their bounding boxes). Both sides are checked
against the hand derivation: the analytic ``region(index, clip=True)`` and the structural
measured support (:func:`jaxrf.actual_receptive_field` with ``mode="structural"``).

Found by ``tests/test_random_architectures.py`` (see its docstring for the harness).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxrf


def analytic_boxes(fn, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxrf.MisalignmentWarning)
        rf = jaxrf.receptive_field(fn, x)
    return [rf.region(index, clip=True) for index in np.ndindex(*rf.output_shape)]


def measured_boxes(fn, x):
    out = jax.eval_shape(fn, x).shape[1:-1]
    return [
        jaxrf.actual_receptive_field(fn, x, index, mode="structural").box
        for index in np.ndindex(*out)
    ]


def pad1(x, lo, hi, interior=0):
    """``lax.pad`` along the one spatial axis of an NWC array."""
    return lax.pad(x, np.float32(0), ((0, 0, 0), (lo, hi, interior), (0, 0, 0)))


X6 = jnp.zeros((1, 6, 1), jnp.float32)


# ---------------------------------------------------------------------------------------
# Fixed: jnp.split had no receptive-field rule.
# ---------------------------------------------------------------------------------------


def split_spatial(x):
    return jnp.split(x, [3], axis=1)[1]


def split_then_conv(x):
    y = jnp.split(x, [2, 5], axis=1)[1]  # input 2..4
    w = jnp.ones((2, 1, 1), jnp.float32)
    return lax.conv_general_dilated(y, w, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))


def split_channels(x):  # what lax.conv_transpose with groups looks like in a model
    a, b = jnp.split(x, 2, axis=-1)
    return a * b


def test_split_on_a_spatial_axis():
    """``jnp.split(x, [3], axis=1)[1]`` on 8 pixels: output ``j`` is input ``3 + j``.

    Found as ``TypeError: jaxrf has no receptive-field rule for primitive 'split'`` on a
    grouped transposed convolution written with ``jnp.split`` over channels (the structural
    side already knew ``split``). Hand derivation: the second piece holds pixels 3..7, so
    output ``j`` (0..4) reads exactly ``{3 + j}``, box ``(3 + j, 3 + j)``.
    Fix: a ``split`` rule in ``jaxrf/_rules.py`` (each piece a kernel-1 crop window).
    """
    x = jnp.zeros((1, 8, 1), jnp.float32)
    expected = [((3 + j, 3 + j),) for j in range(5)]
    assert analytic_boxes(split_spatial, x) == expected
    assert measured_boxes(split_spatial, x) == expected


def test_split_then_conv():
    """Pieces ``[0, 2) [2, 5) [5, 8)`` of 8 pixels; the middle one (pixels 2..4) through a
    kernel-2 VALID conv: 2 outputs, output ``j`` reads ``{2 + j, 3 + j}``."""
    x = jnp.zeros((1, 8, 1), jnp.float32)
    expected = [((2, 3),), ((3, 4),)]
    assert analytic_boxes(split_then_conv, x) == expected
    assert measured_boxes(split_then_conv, x) == expected


def test_split_on_channels():
    """Splitting channels leaves the spatial field alone: output ``i`` reads ``{i}``."""
    x = jnp.zeros((1, 5, 2), jnp.float32)
    expected = [((i, i),) for i in range(5)]
    assert analytic_boxes(split_channels, x) == expected
    assert measured_boxes(split_channels, x) == expected


# ---------------------------------------------------------------------------------------
# Fixed: a spatial axis of size 1 lost its label, so a later pad along it was not followed
# and the merge broadcast the size-1 map to every position.
# ---------------------------------------------------------------------------------------


def nearest_to_one_then_pad(x):
    return x * pad1(jax.image.resize(x, (1, 1, 1), "nearest"), 0, 5)


def linear_to_one_then_pad(x):
    return x * pad1(jax.image.resize(x, (1, 1, 1), "linear", antialias=False), 0, 5)


def broadcast_then_pad(x):
    return x * pad1(jnp.broadcast_to(x[:, 2:3], (1, 4, 1)), 0, 2)


def test_nearest_resize_to_one_then_pad():
    """6 pixels; ``g`` = nearest resize to 1 pixel, padded by ``(0, 5)`` back to 6; ``x * g``.

    Minimised from the hypothesis example ``Net(size=(3, 6, 6), channels=2,
    nodes=(Node('resize', (0,), dict(shape=(5, 1, 7), method='nearest', antialias=False)),
    Node('mul', (0, 1), dict(offsets=(0, 0, 0)))))`` (86 of 90 positions wrong).

    Hand derivation: jax's nearest resize reads input ``floor((i + 1/2) * 6 / 1)`` for output
    ``i``, so the single output reads pixel 3. After the pad, ``g[0]`` reads ``{3}`` and
    ``g[1..5]`` are padding (read nothing). Output ``0`` reads ``{0, 3}``, box ``(0, 3)``;
    output ``i >= 1`` reads only ``x[i]``: ``(i, i)``. The analytic side gave ``(i, 3)`` /
    ``(3, i)``: the gather to size 1 left the axis unlabelled, the pad along it was skipped and
    the multiply broadcast ``g[0]``'s field to every position.
    Fix: the ``gather`` rule keeps the label on its single index axis.
    """
    expected = [((0, 3),)] + [((i, i),) for i in range(1, 6)]
    assert analytic_boxes(nearest_to_one_then_pad, X6) == expected
    assert measured_boxes(nearest_to_one_then_pad, X6) == expected


def test_linear_resize_to_one_then_pad():
    """As above with a linear resize, no antialiasing: the single output samples position
    ``(0 + 1/2) * 6 - 1/2 = 5/2``, between pixels 2 and 3, so ``g[0]`` reads ``{2, 3}``.

    Output ``0`` reads ``{0, 2, 3}``: ``(0, 3)``; output ``i >= 1``: ``(i, i)``. The analytic
    side gave ``(0, 5)`` everywhere: an ``(n_in, 1)`` interpolation matrix was treated as a
    global contraction (axis label dropped). Fix: the ``dot_general`` rule keeps the axis of a
    constant with a single free axis of size 1 (a resize to one pixel).
    """
    expected = [((0, 3),)] + [((i, i),) for i in range(1, 6)]
    assert analytic_boxes(linear_to_one_then_pad, X6) == expected
    assert measured_boxes(linear_to_one_then_pad, X6) == expected


def test_broadcast_of_a_pixel_then_pad():
    """``b`` = pixel 2 broadcast to 4 positions, padded by ``(0, 2)`` to 6; ``x * b``.

    Hand derivation: ``b[0..3]`` read ``{2}``, ``b[4], b[5]`` are padding. Output ``i <= 3``
    reads ``{i, 2}``: ``(0, 2), (1, 2), (2, 2), (2, 3)``; outputs 4 and 5 read ``{i}``. The
    analytic side gave ``(2, 4), (2, 5)`` for the last two (``broadcast_in_dim`` dropped the
    label of the stretched size-1 axis). Fix: ``broadcast_in_dim`` keeps the label and
    broadcasts the field state at once.
    """
    expected = [((0, 2),), ((1, 2),), ((2, 2),), ((2, 3),), ((4, 4),), ((5, 5),)]
    assert analytic_boxes(broadcast_then_pad, X6) == expected
    assert measured_boxes(broadcast_then_pad, X6) == expected


# ---------------------------------------------------------------------------------------
# Fixed: a spatial reduction with keepdims, then a pad along the reduced axis.
# ---------------------------------------------------------------------------------------


def mean_keepdims_then_pad(x):
    return x * pad1(jnp.mean(x, axis=1, keepdims=True), 0, 5)


def test_global_mean_keepdims_then_pad():
    """``g`` = mean over the 6 pixels with ``keepdims``, padded by ``(0, 5)``; ``x * g``.

    Hand derivation: ``g[0]`` reads ``{0..5}``, ``g[1..5]`` are padding. Output ``0`` reads
    everything: ``(0, 5)``; output ``i >= 1`` reads ``{i}``: ``(i, i)``. The structural side
    measures exactly this; the analytic side answered ``(0, 5)`` at every position.
    Fix: the reduced spatial axis keeps size 1 in the field state, and the ``broadcast_in_dim``
    that brings back a size-1 array axis (keepdims) gives it that label again.
    """
    expected = [((0, 5),)] + [((i, i),) for i in range(1, 6)]
    assert measured_boxes(mean_keepdims_then_pad, X6) == expected
    with pytest.warns(jaxrf.GlobalReceptiveFieldWarning, match="merges a global branch"):
        assert analytic_boxes(mean_keepdims_then_pad, X6) == expected


# ---------------------------------------------------------------------------------------
# Fixed: a separable resize of two axes contracted in ONE dot_general.
# ---------------------------------------------------------------------------------------


def resize_one_pixel_to_2x2(x):
    return jax.image.resize(x, (1, 2, 2, 3), "cubic", antialias=False)


def test_separable_resize_in_one_contraction():
    """A 1x1 map (3 channels) resized to 2x2 (cubic, no antialiasing).

    Minimised from the hypothesis example ``Net(size=(1, 1), channels=3, nodes=(...,
    Node('resize', (5,), dict(shape=(2, 2), method='cubic', antialias=False))))`` (output shape
    mismatch). For tiny shapes jax's einsum first multiplies the two per-axis (1, 2) kernels
    into one (1, 2, 1, 2) constant and contracts both spatial axes in one ``dot_general``.

    Hand derivation: output ``i`` on each axis samples input coordinate ``(i + 1/2)/2 - 1/2``
    = -1/4 or 1/4; the cubic kernel is nonzero at distance 1/4 from pixel 0, the only pixel.
    So all four outputs read pixel ``(0, 0)``: output shape (2, 2), every box
    ``((0, 0), (0, 0))``. Fix: the constant's nonzero pattern is split into one ``(n_out,
    n_in)`` pattern per contracted spatial axis when it is their outer product (and the
    contraction raises when it is not).
    """
    x = jnp.zeros((1, 1, 1, 3), jnp.float32)
    expected = [((0, 0), (0, 0))] * 4
    assert measured_boxes(resize_one_pixel_to_2x2, x) == expected
    assert analytic_boxes(resize_one_pixel_to_2x2, x) == expected


# ---------------------------------------------------------------------------------------
# Fixed: support_map's colouring misattributed a support that jumps into another window.
# ---------------------------------------------------------------------------------------


def pixel_zero_copied_to_five(x):
    y = pad1(x[:, 0:1], 5, 6)  # position 5 holds pixel 0, the rest is padding
    return jnp.concatenate([x, y], axis=-1)


def test_pixel_copied_far_per_position():
    """12 pixels; channel 0 is ``x``, channel 1 is pixel 0 placed at position 5.

    Hand derivation: output ``i != 5`` reads ``{i}``; output 5 reads ``{0, 5}``, box
    ``(0, 5)``. Both the analytic region and the per-position structural support agree.
    """
    x = jnp.zeros((1, 12, 1), jnp.float32)
    expected = [((i, i),) if i != 5 else ((0, 5),) for i in range(12)]
    assert analytic_boxes(pixel_zero_copied_to_five, x) == expected
    assert measured_boxes(pixel_zero_copied_to_five, x) == expected


def test_support_map_pixel_copied_far():
    """Same network as above through :func:`jaxrf.support_map` (found by the property
    test's cross-check on ``concat_c(x, crop(conv(x)))`` with a 5-pixel offset). Expected
    as derived above: output 5's box is ``(0, 5)``. The colouring from probed boxes alone
    answered ``(5, 5)`` (positions 5 apart shared a pass and pixel 0 went to output 0); the
    windows now come from the interval algebra's per-axis bounds, which hold pixel 0 for
    output 5, so outputs 0 and 5 never share a pass (spacing 6: the smallest at which
    output 5's window ``[0, 5]`` misses every other window of its residue class)."""
    x = jnp.zeros((1, 12, 1), jnp.float32)
    sm = jaxrf.support_map(pixel_zero_copied_to_five, x)
    assert [sm.box((i,)) for i in range(12)] == [
        ((i, i),) if i != 5 else ((0, 5),) for i in range(12)
    ]
    assert sm.spacing == (6,)
    assert np.flatnonzero(sm.mask((5,))).tolist() == [0, 5]
    assert np.flatnonzero(sm.mask((0,))).tolist() == [0]


def pixel_copied_to_3_4(x):
    """8x8 map: channel 0 is ``x``; channel 1 holds pixel ``(0, 0)`` at position ``(3, 4)``."""
    y = jnp.pad(x[:, 0:1, 0:1], ((0, 0), (3, 4), (4, 3), (0, 0)))
    return jnp.concatenate([x, y], axis=-1)


@pytest.mark.parametrize("mode", ["structural", "measured"])
def test_support_map_pixel_copied_far_in_2d(mode):
    """Hand derivation: output ``(i, j)`` reads ``{(i, j)}``, except ``(3, 4)``, which also
    reads ``(0, 0)``: box ``((0, 3), (0, 4))``. Per axis the bound of row 3 is ``[0, 3]`` and of
    column 4 ``[0, 4]``, so rows need spacing 4 (rows 0 and 3 must not share a pass; 3 apart
    they would, and 4 is the least above 3 with every residue class disjoint) and columns 5."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 8, 8, 1)), jnp.float32)
    with pytest.warns(jaxrf.MisalignmentWarning):
        rf = jaxrf.receptive_field(pixel_copied_to_3_4, x)
    (lo0, hi0), (lo1, hi1) = rf.axis_bounds()
    assert (lo0.tolist(), hi0.tolist()) == ([0, 1, 2, 0, 4, 5, 6, 7], list(range(8)))
    assert (lo1.tolist(), hi1.tolist()) == ([0, 1, 2, 3, 0, 5, 6, 7], list(range(8)))
    sm = jaxrf.support_map(pixel_copied_to_3_4, x, mode=mode)
    assert sm.spacing == (4, 5)
    for i, j in np.ndindex(8, 8):
        want = ((0, 3), (0, 4)) if (i, j) == (3, 4) else ((i, i), (j, j))
        assert sm.box((i, j)) == want
        assert sm.mask((i, j)).sum() == (2 if (i, j) == (3, 4) else 1)


def test_disjoint_spacing_checks_whole_residue_classes():
    """Windows 0:[0,0] 1:[1,1] 2:[5,5] 3:[3,3] 4:[0,4] 5:[5,5] (not monotone in the index).

    By hand: m=1 fails at (3, 4); m=2 passes every neighbour pair (i, i+2) but its class
    {0, 2, 4} holds [0,0] and [0,4]; m=3 fails at (1, 4); m=4 at (0, 4); m=5 leaves {0, 5}
    and singletons, all disjoint. With output 4 reading nothing (an empty window overlaps
    nothing), every neighbour pair of m=1 is disjoint but outputs 2 and 5 share [5,5]; m=2
    leaves {0, 2, 4} and {1, 3, 5}, both disjoint."""
    from jaxrf._support import _disjoint_spacing

    lo, hi = np.array([0, 1, 5, 3, 0, 5]), np.array([0, 1, 5, 3, 4, 5])
    assert _disjoint_spacing(lo, hi) == 5
    lo[4], hi[4] = 6, -1  # output 4 reads nothing
    assert _disjoint_spacing(lo, hi) == 2
    assert _disjoint_spacing(np.zeros(4, int), np.full(4, 3)) == 4  # all overlap: one each


def test_squeeze_excitation_reshape_keeps_the_batch_axis_of_one():
    # Keras' SE block: global mean to (1, C), Reshape to (1, 1, 1, C), 1x1 conv, scale. The
    # reshape adds axes 1 and 2 (the reduced H and W); axis 0 is the batch of 1 it carries.
    # Every output reads the whole input (the mean), and the conv must see an unlabelled batch.
    w = jnp.ones((1, 1, 2, 2))
    dn = ("NHWC", "HWIO", "NHWC")

    def se(x):
        s = jnp.mean(x, axis=(1, 2)).reshape(x.shape[0], 1, 1, x.shape[-1])
        s = jax.lax.conv_general_dilated(s, w, (1, 1), "VALID", dimension_numbers=dn)
        return x * s

    with pytest.warns(jaxrf.GlobalReceptiveFieldWarning):
        rf = jaxrf.receptive_field(se, jnp.zeros((1, 6, 5, 2)))
    assert rf.is_global and rf.output_shape == (6, 5)


# ---------------------------------------------------------------------------------------
# Fixed: a dilated max pool whose taps step over the pixel. Max pool, window 2, window
# dilation 2, stride 1, SAME on a map of n pixels: the dilated window spans 3, so SAME pads
# (1, 1) and output i reads pixels i - 1 and i + 1 (never i). On 1 pixel output 0 reads
# nothing (both taps in the padding); on 5 pixels: 0 -> {1}, 1 -> {0, 2}, 2 -> {1, 3},
# 3 -> {2, 4}, 4 -> {3}. The structural probe said output 0 of the 1-pixel map reads pixel 0:
# XLA:CPU simplified its pull-back (pad, then a dilated window sum) to the identity; the
# surrogate now sums one strided slice per tap.
# ---------------------------------------------------------------------------------------


def dilated_max_pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 1), (1, 1, 1), "SAME", None, (1, 2, 1))


@pytest.mark.parametrize(
    "n, boxes",
    [
        (1, [None]),
        (5, [((1, 1),), ((0, 2),), ((1, 3),), ((2, 4),), ((3, 3),)]),
    ],
)
def test_dilated_max_pool_steps_over_the_pixel(n, boxes):
    x = jnp.zeros((1, n, 1), jnp.float32)
    assert analytic_boxes(dilated_max_pool, x) == boxes
    assert measured_boxes(dilated_max_pool, x) == boxes


# The same for a dilated SUM pool (found by a fresh-draw exploration of the random
# architectures: max pool 3/2 VALID on 4 pixels, then this sum pool, window 4, dilation 2,
# stride 3, SAME). Its structural surrogate was the sum pool itself, whose pull-back JAX
# writes as the same pad + dilated window sum. Sum pool window 4, dilation 2, stride 3, SAME
# on 1 pixel: the window spans 7, SAME pads (3, 3), output 0's taps are -3, -1, 1, 3: it reads
# nothing. Window 2, dilation 2, stride 1: as the max pool above. The chain: the max pool's
# one output (reading [0, 2]) is read by no tap, so nothing. The structural probe said
# pixel 0, resp. pixels [0, 2], before the sum pool's surrogate became the slices too.
# (XLA:CPU's own gradient of these pools, which mode="measured" reads, is wrong the same way
# under jit on jaxlib 0.10.2; jaxrf reports the gradient JAX computes.)


def dilated_sum_pool_4(x):
    return lax.reduce_window(x, 0.0, lax.add, (1, 4, 1), (1, 3, 1), "SAME", None, (1, 2, 1))


def dilated_sum_pool_2(x):
    return lax.reduce_window(x, 0.0, lax.add, (1, 2, 1), (1, 1, 1), "SAME", None, (1, 2, 1))


def max_then_dilated_sum_pool(x):
    return dilated_sum_pool_4(
        lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 1), (1, 2, 1), "VALID")
    )


@pytest.mark.parametrize(
    "fn, n, boxes",
    [
        (dilated_sum_pool_4, 1, [None]),
        (dilated_sum_pool_2, 1, [None]),
        (dilated_sum_pool_2, 5, [((1, 1),), ((0, 2),), ((1, 3),), ((2, 4),), ((3, 3),)]),
        (max_then_dilated_sum_pool, 4, [None]),
    ],
)
def test_dilated_sum_pool_steps_over_the_pixel(fn, n, boxes):
    x = jnp.zeros((1, n, 1), jnp.float32)
    assert analytic_boxes(fn, x) == boxes
    assert measured_boxes(fn, x) == boxes


# ---------------------------------------------------------------------------------------
# Fixed: a reversal (or sort) along an array axis that holds one digit of a split spatial
# axis (found by a fresh-draw exploration: space-to-depth by 2, then jnp.flip). The rules
# indexed the state's shape with the digit's label and raised a bare TypeError.
# ---------------------------------------------------------------------------------------


def space_to_depth_2(x):
    b, n, c = x.shape
    return x.reshape(b, n // 2, 2, c).reshape(b, n // 2, 2 * c)


def channel_sum(x):  # a 1x1 convolution with ones: contracts the channels, digit included
    w = jnp.ones((1, x.shape[-1], 1), x.dtype)
    return lax.conv_general_dilated(x, w, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))


def flipped_digit(x):
    return channel_sum(jnp.flip(space_to_depth_2(x), axis=1))


def sorted_digit(x):
    return channel_sum(jnp.sort(space_to_depth_2(x), axis=1))


def test_reversal_of_a_split_axis_digit():
    """12 pixels; space-to-depth gives 6 positions, position ``q`` holding pixels ``2q, 2q +
    1`` in its channels; the flip makes output ``p`` hold position ``5 - p``; the channel sum
    reads both pixels. Hand derivation: output ``p`` reads ``[10 - 2p, 11 - 2p]``."""
    x = jnp.zeros((1, 12, 1), jnp.float32)
    expected = [((10 - 2 * p, 11 - 2 * p),) for p in range(6)]
    assert analytic_boxes(flipped_digit, x) == expected
    assert measured_boxes(flipped_digit, x) == expected


def test_sort_along_a_split_axis_digit():
    """As above with a sort along the 6 positions: before the channel sum, pixel ``2q + d``
    reads the 6 pixels whose digit is ``d`` (even or odd); the channel sum reads both digits,
    so every output reads all 12 pixels."""
    x = jnp.zeros((1, 12, 1), jnp.float32)
    # before the sum the field still indexes the 12 pixels (a digit sits in the channels)
    before = analytic_boxes(lambda x: jnp.sort(space_to_depth_2(x), axis=1), x)
    assert before == [((0, 10),), ((1, 11),)] * 6
    assert analytic_boxes(sorted_digit, x) == [((0, 11),)] * 6
    assert measured_boxes(sorted_digit, x) == [((0, 11),)] * 6


# ---------------------------------------------------------------------------------------
# Open: a residual add around a channel contraction after a space-to-depth (found by the same
# exploration: a token-wise MLP ``tanh(t @ W) + t`` on the tokens of a space-to-depth map).
# The contraction removes the channel-held digit from one branch (it indexes the 2x coarser
# grid) while the skip branch keeps indexing the fine grid, and the merge refuses the two
# shapes with a ValueError (a clear error, not a wrong answer). The fix re-expands the
# removed digit in the merge (fine pixel 2q + d reads what coarse q reads). Written with
# plain arrays, as here, the add raises the walker's TypeError naming the primitive and the
# escape hatches; on a token sequence (the exploration's case) the merge's ValueError.
# ---------------------------------------------------------------------------------------


def residual_mlp_after_space_to_depth(x):
    t = space_to_depth_2(x)
    w = jnp.ones((t.shape[-1], t.shape[-1]), t.dtype)
    return jnp.tanh(t @ w) + t


@pytest.mark.xfail(strict=True, raises=TypeError, reason="open: the add cannot merge the grids")
def test_residual_mlp_after_space_to_depth():
    """12 pixels, 2 channels. Hand derivation: output ``(q, channel)`` reads pixels ``2q`` and
    ``2q + 1`` through the MLP (it sums every channel), and one of them through the skip: the
    union over channels is ``[2q, 2q + 1]``, on 6 positions."""
    x = jnp.zeros((1, 12, 2), jnp.float32)
    expected = [((2 * q, 2 * q + 1),) for q in range(6)]
    assert measured_boxes(residual_mlp_after_space_to_depth, x) == expected
    assert channel_sum(residual_mlp_after_space_to_depth(x)).shape == (1, 6, 1)
    assert analytic_boxes(lambda x: channel_sum(residual_mlp_after_space_to_depth(x)), x) == [
        ((2 * q, 2 * q + 1),) for q in range(6)
    ]
