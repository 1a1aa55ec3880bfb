"""Split spatial axes: window partitions, shifted windows, grids, pixel shuffles.

Expected regions are derived by hand in each docstring from which input pixels each output
reads; the analytic region and the structural support must both equal them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxrf


def partition(x, w):
    """Swin window partition: (B, H, W, C) -> (B * H/w * W/w, w * w, C)."""
    b, h, wd, c = x.shape
    x = x.reshape(b, h // w, w, wd // w, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def unpartition(t, w, b, h, wd):
    """The reverse partition: (B * H/w * W/w, w * w, C) -> (B, H, W, C)."""
    c = t.shape[-1]
    x = t.reshape(b, h // w, wd // w, w, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, c)


def attention(t):
    """Single-head self-attention over axis 1 of (groups, tokens, C)."""
    q, k, v = t @ jnp.ones((t.shape[-1],) * 2), t * 2.0, t * 3.0
    weights = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / 4.0, axis=-1)
    return jnp.einsum("bij,bjc->bic", weights, v)


def patch_embed(x, p=4, c=2):
    """A p x p stride-p convolution (ViT/Swin patch embedding), NHWC."""
    w = jnp.ones((p, p, x.shape[-1], c))
    dn = ("NHWC", "HWIO", "NHWC")
    return lax.conv_general_dilated(x, w, (p, p), "VALID", dimension_numbers=dn)


def wmsa(x, w=7, shift=0):
    """(Shifted-)window attention on the patch tokens: roll by -shift, partition, attend,
    reverse the partition, roll back."""
    t = patch_embed(x)
    b, h, wd, _ = t.shape
    if shift:
        t = jnp.roll(t, (-shift, -shift), axis=(1, 2))
    t = unpartition(attention(partition(t, w)), w, b, h, wd)
    if shift:
        t = jnp.roll(t, (shift, shift), axis=(1, 2))
    return t


X56 = jnp.zeros((1, 56, 56, 1), jnp.float32)
TOKENS = [(0, 0), (6, 7), (7, 13), (13, 6), (3, 10)]


def test_window_attention_after_patch_embedding(both_sides):
    """W-MSA, patch 4, window 7, on 56x56 (14x14 tokens, 2x2 windows): token ``(i, j)`` reads
    its window's tokens ``7 (i // 7) .. 7 (i // 7) + 6``, i.e. pixel rows
    ``[28 (i // 7), 28 (i // 7) + 27]``, and the same for columns."""
    rf, analytic, measured = both_sides(wmsa, X56, TOKENS)
    expected = [tuple((28 * (i // 7), 28 * (i // 7) + 27) for i in p) for p in TOKENS]
    assert rf.output_shape == (14, 14)
    assert analytic == expected
    assert measured == expected


def test_shifted_window_attention_wraps_and_reports_the_bounding_box(both_sides):
    """SW-MSA (shift 3, no attention mask): after ``roll(-3)`` token ``i`` sits at ``(i - 3) mod
    14``, its window there is ``0..6`` for ``i`` in ``3..9`` (tokens ``3..9``: pixels
    ``[12, 39]``) and ``7..13`` otherwise, i.e. tokens ``{10..13, 0..2}``: a wrapped set whose
    bounding box is the whole axis, ``[0, 55]`` (reported as the box: never tighter)."""

    def sw(x):
        return wmsa(x, shift=3)

    rf, analytic, measured = both_sides(sw, X56, TOKENS)

    def rows(i):
        return (12, 39) if 3 <= i <= 9 else (0, 55)

    expected = [tuple(rows(i) for i in p) for p in TOKENS]
    assert analytic == expected
    assert measured == expected


def test_roll_is_exact_per_index(both_sides):
    """``roll(x, 2)`` on 6 pixels: ``y = (x4, x5, x0, x1, x2, x3)``, output ``i`` reads
    ``(i - 2) mod 6``. After a 3-tap SAME conv (zero padding): output 0 reads ``{4, 5}``,
    output 1 ``{4, 5, 0}`` and 2 ``{5, 0, 1}`` (wrapped sets: their bounding box ``(0, 5)``),
    3 ``{0, 1, 2}``, 4 ``{1, 2, 3}``, 5 ``{2, 3}``."""

    def net(x):
        y = jnp.roll(x, 2, axis=1)
        w = jnp.ones((3, 1, 1))
        dn = ("NWC", "WIO", "NWC")
        return lax.conv_general_dilated(y, w, (1,), "SAME", dimension_numbers=dn)

    x = jnp.zeros((1, 6, 1))
    positions = [(i,) for i in range(6)]
    _, analytic, measured = both_sides(lambda v: jnp.roll(v, 2, axis=1), x, positions)
    assert analytic == measured == [(((i - 2) % 6, (i - 2) % 6),) for i in range(6)]
    _, analytic, measured = both_sides(net, x, positions)
    expected = [((4, 5),), ((0, 5),), ((0, 5),), ((0, 2),), ((1, 3),), ((2, 3),)]
    assert analytic == expected
    assert measured == expected


def grid_attention(x, g=2):
    """MaxViT grid attention: a g x g grid of tokens strided by H/g (sparse, global)."""
    b, h, w, c = x.shape
    t = x.reshape(b, g, h // g, g, w // g, c).transpose(0, 2, 4, 1, 3, 5).reshape(-1, g * g, c)
    t = attention(t)
    t = t.reshape(b, h // g, w // g, g, g, c).transpose(0, 3, 1, 4, 2, 5)
    return t.reshape(b, h, w, c)


def block_attention(x, p=4):
    b, h, w, _ = x.shape
    return unpartition(attention(partition(x, p)), p, b, h, w)


X8 = jnp.zeros((1, 8, 12, 2), jnp.float32)
PIXELS = [(0, 0), (5, 7), (7, 11), (3, 4)]


def test_maxvit_block_attention(both_sides):
    """Block (window) attention with 4x4 blocks on 8x12: pixel ``(h, w)`` reads its block
    ``[4 (h // 4), 4 (h // 4) + 3]`` x ``[4 (w // 4), 4 (w // 4) + 3]``."""
    _, analytic, measured = both_sides(block_attention, X8, PIXELS)
    expected = [tuple((4 * (i // 4), 4 * (i // 4) + 3) for i in p) for p in PIXELS]
    assert analytic == expected
    assert measured == expected


def test_maxvit_grid_attention(both_sides):
    """Grid attention, g = 2, on 8x12: pixel ``(h, w)`` reads the rows ``{h mod 4, h mod 4 +
    4}`` and columns ``{w mod 6, w mod 6 + 6}``: boxes ``(h mod 4, h mod 4 + 4)`` and
    ``(w mod 6, w mod 6 + 6)``."""
    _, analytic, measured = both_sides(grid_attention, X8, PIXELS)
    expected = [((h % 4, h % 4 + 4), (w % 6, w % 6 + 6)) for h, w in PIXELS]
    assert analytic == expected
    assert measured == expected


def pixel_shuffle(x, r=2):
    """Depth-to-space: (B, H, W, r*r*C) -> (B, r H, r W, C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * r, w * r, c // (r * r))


def space_to_depth(x, r=2):
    """(B, H, W, C) -> (B, H/r, W/r, r*r*C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // r, r, w // r, r, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // r, w // r, r * r * c)


def test_pixel_shuffle_repeats_each_input_pixel(both_sides):
    """Output ``(y, x)`` of a 2x pixel shuffle reads input ``(y // 2, x // 2)``."""
    x = jnp.zeros((1, 4, 6, 4))
    rf, analytic, measured = both_sides(pixel_shuffle, x, [(0, 0), (3, 5), (7, 11), (4, 1)])
    assert rf.output_shape == (8, 12)
    expected = [((y // 2, y // 2), (v // 2, v // 2)) for y, v in [(0, 0), (3, 5), (7, 11), (4, 1)]]
    assert analytic == expected
    assert measured == expected


@pytest.mark.parametrize("head", ["dense", "conv"])
def test_space_to_depth_then_channel_mixing(head, both_sides):
    """Space-to-depth by 2 then a dense layer or a 1x1 conv over the channels: output
    ``(i, j)`` reads the 2x2 block ``[2i, 2i + 1] x [2j, 2j + 1]``."""

    def net(x):
        y = space_to_depth(x)
        if head == "dense":
            return y @ jnp.ones((y.shape[-1], 3))
        dn = ("NHWC", "HWIO", "NHWC")
        w = jnp.ones((1, 1, y.shape[-1], 3))
        return lax.conv_general_dilated(y, w, (1, 1), "VALID", dimension_numbers=dn)

    x = jnp.zeros((1, 4, 6, 2))
    positions = [(0, 0), (1, 2), (0, 1)]
    rf, analytic, measured = both_sides(net, x, positions)
    assert rf.output_shape == (2, 3)
    expected = [((2 * i, 2 * i + 1), (2 * j, 2 * j + 1)) for i, j in positions]
    assert analytic == expected
    assert measured == expected


def test_space_to_depth_round_trip_is_the_identity(both_sides):
    """``pixel_shuffle(space_to_depth(x))`` is ``x``: output ``(y, x)`` reads ``(y, x)``."""
    x = jnp.zeros((1, 4, 6, 2))
    positions = [(0, 0), (3, 5), (2, 3)]
    _, analytic, measured = both_sides(lambda v: pixel_shuffle(space_to_depth(v)), x, positions)
    expected = [((i, i), (j, j)) for i, j in positions]
    assert analytic == expected
    assert measured == expected


def test_window_mean_pool_reads_the_window():
    """Mean over the tokens of each 4x4 window of an 8x12 map (no reverse): the output has one
    position per window, reading the 4x4 block; index ``(a, b)`` addresses the window grid."""

    def net(x):
        return partition(x, 4).mean(axis=1).reshape(1, 2, 3, x.shape[-1])

    rf = jaxrf.receptive_field(net, X8)
    assert rf.output_shape == (2, 3)
    got = [rf.region(i, clip=True) for i in np.ndindex(2, 3)]
    assert got == [((4 * a, 4 * a + 3), (4 * b, 4 * b + 3)) for a, b in np.ndindex(2, 3)]


def test_reshape_that_cuts_a_factor_unevenly_raises():
    """(1, 6, 4, 1) -> (1, 4, 6, 1) regroups rows and columns unevenly: not a digit move."""
    with pytest.raises(TypeError, match="cuts a factor"):
        jaxrf.receptive_field(lambda v: v.reshape(1, 4, 6, 1), jnp.zeros((1, 6, 4, 1)))


def test_pixel_shuffle_of_a_one_pixel_map_raises():
    """On a 1x1 map the size-1 spatial axes cannot be followed through the shuffle's reshape
    (their digit could land on any axis): raising beats a wrong (1, 1) output shape."""
    with pytest.raises(TypeError, match="size-1 spatial axis"):
        jaxrf.receptive_field(pixel_shuffle, jnp.zeros((1, 1, 1, 4)))


def test_window_partition_of_a_one_pixel_wide_map_raises():
    """A (6, 1) map split into (6, 1) windows: the reshape (1, 6, 1, 1) -> (1, 1, 6, 1, 1, 1)
    adds size-1 axes next to the map's size-1 width, and which of them holds the width is a
    guess (it used to follow the wrong one: after attention and a stride-2 transposed conv the
    output shape came out (12, 1) instead of (12, 2)). It raises instead."""

    def net(x):
        t = x.reshape(1, 1, 6, 1, 1, 1).transpose(0, 1, 3, 2, 4, 5).reshape(1, 6, 1)
        t = jax.nn.softmax(jnp.einsum("bic,bjc->bij", t, t), axis=-1) @ t
        return t.reshape(1, 1, 1, 6, 1, 1).transpose(0, 1, 3, 2, 4, 5).reshape(1, 6, 1, 1)

    with pytest.raises(TypeError, match="size-1 spatial axis"):
        jaxrf.receptive_field(net, jnp.zeros((1, 6, 1, 1)))


def _hiera_unroll(x):
    """Hiera's unroll: (B, H, W, C) -> tokens ordered by the offset inside each 2x2 unit first
    (all top-left pixels of the units, then all top-right, ...)."""
    b, h, w, c = x.shape
    t = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 2, 4, 1, 3, 5)
    return t.reshape(b, 4 * (h // 2) * (w // 2), c)


def _hiera_reroll(t, h, w):
    b, _, c = t.shape
    return t.reshape(b, 2, 2, h // 2, w // 2, c).transpose(0, 3, 1, 4, 2, 5).reshape(b, h, w, c)


def test_hiera_unroll_and_reroll_are_followed_exactly():
    """Unroll, a per-token MLP (tokens do not mix), reroll, then a 3x3 VALID convolution on an
    8x8 map: the unroll moves every pixel's digits into a token order that is not row-major and
    the reroll puts them back, so output (i, j) reads [i, i + 2] x [j, j + 2], at every
    position, analytically and structurally."""

    def net(x):
        t = jnp.tanh(_hiera_unroll(x) @ jnp.ones((x.shape[-1], 2)))
        y = _hiera_reroll(t, x.shape[1], x.shape[2])
        w = jnp.ones((3, 3, 2, 1))
        return lax.conv_general_dilated(
            y, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    x = jnp.zeros((1, 8, 8, 1))
    rf = jaxrf.receptive_field(net, x)
    assert rf.output_shape == (6, 6) and rf.size == (3, 3) and rf.stride == (1, 1)
    for i, j in np.ndindex(6, 6):
        hand = ((i, i + 2), (j, j + 2))
        assert rf.region((i, j), clip=True) == hand
        assert jaxrf.actual_receptive_field(net, x, (i, j), mode="structural").box == hand
