"""Control flow, reversal, sorting: hand-derived regions, analytic and structural.

Each expected box is derived in the test's docstring from what the operation reads; both
``receptive_field(...).region(index, clip=True)`` and the structural support
(``actual_receptive_field(..., mode="structural")``) must equal it.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxrf

DN = ("NHWC", "HWIO", "NHWC")


def conv(x, k):
    """A k x k SAME convolution of a one-channel NHWC map (weights all ones)."""
    return lax.conv_general_dilated(x, jnp.ones((k, k, 1, 1)), (1, 1), "SAME", dimension_numbers=DN)


def clip_box(lo, hi, n):
    return (max(lo, 0), min(hi, n - 1))


X32 = jnp.zeros((1, 32, 32, 1), jnp.float32)
POSITIONS = [(0, 0), (16, 16), (31, 5), (3, 30)]


def conv_stack_scan(x):
    return lax.scan(lambda c, _: (conv(c, 3), None), x, None, length=12)[0]


def test_scan_of_twelve_3x3_convs(both_sides):
    """12 SAME 3x3 convs: size ``1 + 12 * 2 = 25``; output ``i`` reads ``[i - 12, i + 12]``
    clipped to ``[0, 31]`` on each axis."""
    rf, analytic, measured = both_sides(conv_stack_scan, X32, POSITIONS)
    expected = [tuple(clip_box(i - 12, i + 12, 32) for i in p) for p in POSITIONS]
    assert rf.size == (25, 25) and rf.stride == (1, 1) and rf.padding == (12, 12)
    assert analytic == expected
    assert measured == expected
    assert sum(r.op == "conv" for r in rf.layers) == 12


def test_scan_over_stacked_weights(both_sides):
    """``scan`` over 12 stacked 3x3 kernels (the ``nn.scan`` layout): as above."""

    def net(x):
        ws = jnp.ones((12, 3, 3, 1, 1))

        def body(c, w):
            return lax.conv_general_dilated(c, w, (1, 1), "SAME", dimension_numbers=DN), 0

        return lax.scan(body, x, ws)[0]

    rf, analytic, measured = both_sides(net, X32, POSITIONS)
    expected = [tuple(clip_box(i - 12, i + 12, 32) for i in p) for p in POSITIONS]
    assert rf.size == (25, 25)
    assert analytic == expected
    assert measured == expected


def test_scan_fixed_point_stops_early():
    """10000 iterations of ``c + conv1x1(c)``: the field never grows (size 1), and the walk
    stops at the first iteration that leaves the carried state unchanged."""

    def net(x):
        return lax.scan(lambda c, _: (c + conv(c, 1), None), x, None, length=10_000)[0]

    rf = jaxrf.receptive_field(net, X32)
    assert rf.size == (1, 1)
    assert rf.region((7, 9), clip=True) == ((7, 7), (9, 9))
    assert sum(r.op == "conv" for r in rf.layers) <= 2


def test_fori_loop_static_and_traced_bounds(both_sides):
    """``fori_loop(0, 4, conv3)`` (a scan) has size 9; with a traced bound of 3 (a ``while``
    with a constant trip count) size 7."""

    def static(x):
        return lax.fori_loop(0, 4, lambda i, c: conv(c, 3), x)

    def traced(x):
        return lax.fori_loop(0, jnp.asarray(3), lambda i, c: conv(c, 3), x)

    for fn, half in ((static, 4), (traced, 3)):
        rf, analytic, measured = both_sides(fn, X32, POSITIONS)
        expected = [tuple(clip_box(i - half, i + half, 32) for i in p) for p in POSITIONS]
        assert rf.size == (2 * half + 1,) * 2
        assert analytic == expected
        assert measured == expected


def test_switch_with_a_constant_index_takes_its_branch(both_sides):
    """``switch(1, [conv3, conv5])``: the 5x5 branch runs: ``[i - 2, i + 2]`` clipped."""
    index = jnp.asarray(1)

    def net(x):
        return lax.switch(index, [lambda y: conv(y, 3), lambda y: conv(y, 5)], x)

    rf, analytic, measured = both_sides(net, X32, POSITIONS)
    expected = [tuple(clip_box(i - 2, i + 2, 32) for i in p) for p in POSITIONS]
    assert rf.size == (5, 5)
    assert analytic == expected
    assert measured == expected


def test_cond_on_the_input_is_the_union_of_branches_and_predicate(both_sides):
    """``cond(x[0, 0, 0, 0] > 0, conv3, conv5)``: the union of the 3x3 and 5x5 windows (the
    5x5 one) and the predicate's pixel (0, 0): rows ``[0, min(i + 2, 31)]``, same for cols."""

    def net(x):
        return lax.cond(x[0, 0, 0, 0] > 0, lambda y: conv(y, 3), lambda y: conv(y, 5), x)

    rf, analytic, measured = both_sides(net, X32, POSITIONS)
    expected = [tuple((0, min(i + 2, 31)) for i in p) for p in POSITIONS]
    assert analytic == expected
    assert measured == expected


def test_cond_on_a_pooled_predicate_is_global():
    """A predicate read from the global mean: every output reads the whole input."""

    def net(x):
        return lax.cond(x.mean() > 0, lambda y: conv(y, 3), lambda y: conv(y, 5), x)

    with pytest.warns(jaxrf.GlobalReceptiveFieldWarning):
        rf = jaxrf.receptive_field(net, X32)
    assert rf.is_global
    assert rf.region((5, 5), clip=True) == ((0, 31), (0, 31))


def test_while_with_an_input_dependent_trip_count_is_global():
    def net(x):
        return lax.while_loop(lambda c: c.sum() < 3, lambda c: conv(c, 3), x)

    with pytest.warns(jaxrf.GlobalReceptiveFieldWarning, match="trip count depends on the input"):
        rf = jaxrf.receptive_field(net, X32)
    assert rf.is_global and rf.output_shape == (32, 32)
    box = jaxrf.actual_receptive_field(net, X32, (4, 4), mode="structural").box
    assert box == ((0, 31), (0, 31))


def test_rev_then_conv(both_sides):
    """``x[:, ::-1]`` then a 3x3 SAME conv: output row ``i`` reads reversed rows ``i - 1..i + 1``,
    i.e. input rows ``31 - i - 1..31 - i + 1`` clipped; columns as usual."""

    def net(x):
        return conv(x[:, ::-1], 3)

    rf, analytic, measured = both_sides(net, X32, POSITIONS)
    expected = [(clip_box(30 - i, 32 - i, 32), clip_box(j - 1, j + 1, 32)) for i, j in POSITIONS]
    assert analytic == expected
    assert measured == expected


def test_sort_over_channels_and_over_a_spatial_axis():
    """``sort`` over channels keeps the field (output ``i`` reads ``i``); along the spatial
    axis of a 1-D signal every output reads the whole axis (with a warning)."""
    x = jnp.zeros((1, 8, 3), jnp.float32)
    rf = jaxrf.receptive_field(lambda v: jnp.sort(v, axis=-1), x)
    assert [rf.region((i,), clip=True) for i in range(8)] == [((i, i),) for i in range(8)]
    with pytest.warns(jaxrf.GlobalReceptiveFieldWarning, match="sorts along spatial axis 0"):
        rf = jaxrf.receptive_field(lambda v: jnp.sort(v, axis=1), x)
    assert [rf.region((i,), clip=True) for i in range(8)] == [((0, 7),)] * 8


def test_squeeze_excitation_with_keepdims_is_global_once():
    """SE: ``x * dense(mean(x, (1, 2), keepdims=True))``: every output reads everything, and
    the output keeps the input's spatial shape."""

    def net(x):
        g = jnp.mean(x, axis=(1, 2), keepdims=True)
        return x * jnp.tanh(g @ jnp.ones((1, 1)))

    with pytest.warns(jaxrf.GlobalReceptiveFieldWarning):
        rf = jaxrf.receptive_field(net, X32)
    assert rf.output_shape == (32, 32)
    assert rf.region((3, 4), clip=True) == ((0, 31), (0, 31))


def test_separable_contraction_that_does_not_factorise_raises():
    """A constant (2, 2, 2, 2) contracted with both spatial axes, nonzero where the parities of
    ``h + w`` and ``p + q`` agree: no pairing of its axes makes it a product of per-axis
    patterns (every marginal is all ones), so the rule raises instead of guessing a shape."""
    idx = np.indices((2, 2, 2, 2))
    c = ((idx[0] + idx[1]) % 2 == (idx[2] + idx[3]) % 2).astype(np.float32)

    def net(x):
        return jnp.einsum("bhwc,hwpq->bpqc", x, jnp.asarray(c))

    with pytest.raises(TypeError, match="not a product of per-axis patterns"):
        jaxrf.receptive_field(net, jnp.zeros((1, 2, 2, 1)))


def test_separable_contraction_that_transposes_the_grid():
    """The same einsum with ``c[h, w, p, q] = 1`` iff ``p = w, q = h`` (a transpose): exact,
    array axis ``p`` holds spatial axis 1 and ``q`` axis 0, so output ``(p, q)`` reads input
    ``(q, p)``, i.e. region of spatial index ``(a, b)`` is ``((a, a), (b, b))``."""
    idx = np.indices((2, 3, 3, 2))
    c = ((idx[2] == idx[1]) & (idx[3] == idx[0])).astype(np.float32)

    def net(x):
        return jnp.einsum("bhwc,hwpq->bpqc", x, jnp.asarray(c))

    x = jnp.zeros((1, 2, 3, 1))
    rf = jaxrf.receptive_field(net, x)
    assert rf.output_shape == (2, 3)
    assert [rf.region(i, clip=True) for i in np.ndindex(2, 3)] == [
        ((a, a), (b, b)) for a, b in np.ndindex(2, 3)
    ]


def conv_1d(x, k=3):
    """A k-tap SAME convolution of an NWC map with 2 channels (weights all ones)."""
    w = jnp.ones((k, x.shape[-1], x.shape[-1]))
    return lax.conv_general_dilated(x, w, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))


def causal_recurrence(x, reverse=False):
    """A 3-tap SAME conv, then an RNN along time: ``h_t = tanh(h_{t-1} W + y_t)``, outputs h."""
    seq = jnp.moveaxis(conv_1d(x), 1, 0)  # (T, B, C)

    def body(h, y_t):
        h = jnp.tanh(h @ jnp.ones((2, 2)) + y_t)
        return h, h

    _, hs = lax.scan(body, jnp.zeros((1, 2)), seq, reverse=reverse)
    return jnp.moveaxis(hs, 0, 1)


X10 = jnp.zeros((1, 10, 2), jnp.float32)


def test_causal_scan_along_time(both_sides):
    """Output ``t`` reads conv outputs ``0..t``, each reading ``[s - 1, s + 1]``: the region is
    ``[0, t + 1]`` clipped to ``[0, 9]``. Distill's numbers are those of a cumulative sum after
    the conv: size ``3 + 9 = 12``, padding ``1 + 9 = 10``."""
    rf, analytic, measured = both_sides(causal_recurrence, X10, [(t,) for t in range(10)])
    expected = [((0, min(t + 1, 9)),) for t in range(10)]
    assert analytic == expected
    assert measured == expected
    assert rf.size == (12,) and rf.padding == (10,) and rf.stride == (1,)


def test_reverse_scan_along_time(both_sides):
    """``reverse=True``: output ``t`` reads the suffix of steps ``t..9``: ``[t - 1, 9]`` clipped."""

    def net(x):
        return causal_recurrence(x, reverse=True)

    rf, analytic, measured = both_sides(net, X10, [(t,) for t in range(10)])
    expected = [((max(t - 1, 0), 9),) for t in range(10)]
    assert analytic == expected
    assert measured == expected


def test_scan_over_image_rows_with_a_conv_along_columns(both_sides):
    """Rows of an 8x8 map scanned top to bottom: ``h_t = conv3_W(h_{t-1} + x_t)``. Row ``s``
    reaches output row ``t >= s`` through ``t - s + 1`` convs along W, so output ``(t, j)``
    reads rows ``[0, t]`` and columns ``[j - t - 1, j + t + 1]`` (row 0's), clipped."""

    def net(x):
        rows = jnp.moveaxis(x, 1, 0)  # (H, B, W, C)

        def body(h, x_t):
            h = conv_1d(h + x_t)
            return h, h

        _, hs = lax.scan(body, jnp.zeros((1, 8, 2)), rows)
        return jnp.moveaxis(hs, 0, 1)

    x = jnp.zeros((1, 8, 8, 2), jnp.float32)
    positions = [(0, 0), (0, 4), (3, 4), (7, 7), (5, 0)]
    rf, analytic, measured = both_sides(net, x, positions)
    expected = [((0, t), clip_box(j - t - 1, j + t + 1, 8)) for t, j in positions]
    assert analytic == expected
    assert measured == expected
