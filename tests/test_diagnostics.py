"""jaxrf.resolution_diagnostics: border layer, unproductive layers, range, min/max over paths.

Every expected value is derived by hand in the comments, with Distill's recurrence per path:
``r' = r + S (k - 1)``, ``S' = S s``, and the definitions of jaxrf._diagnostics: a layer covers
an input of ``n`` pixels when ``r_min >= n``; the border layer is the first that covers on every
axis; a layer is unproductive when the map it reads covers already; no layer is unproductive
for ``n >= floor(max input r_min) + 1``.
"""

import warnings

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import jaxrf

L, P = jaxrf.Layer, jaxrf.Parallel

# Graph 1, a strided chain (1-D):
#   c0 k3 s1 p1: r 1 + 1*2 = 3,       S 1, input r 1
#   c1 k3 s2 p1: r 3 + 1*2 = 5,       S 2, input r 3
#   c2 k3 s1 p1: r 5 + 2*2 = 9,       S 2, input r 5
#   c3 k3 s1 p1: r 9 + 2*2 = 13,      S 2, input r 9
CHAIN = [
    L(3, padding=1, name="c0"),
    L(3, stride=2, padding=1, name="c1"),
    L(3, padding=1, name="c2"),
    L(3, padding=1, name="c3"),
]


def test_chain_at_9():
    # n = 9: c2 is the first with r >= 9; c3 reads r 9 >= 9: unproductive.
    d = jaxrf.resolution_diagnostics(jaxrf.from_layers(CHAIN, (32,)), (9,))
    assert d.min_size == d.max_size == ((3,), (5,), (9,), (13,))
    assert d.input_min_size == ((1,), (3,), (5,), (9,))
    assert d.covers == ((False,), (False,), (True,), (True,))
    assert d.border_layer == "c2"
    assert d.border_layer_per_axis == ("c2",)
    assert d.unproductive == ("c3",)
    # largest input r_min is 9 (c3): no unproductive layer for n >= 10.
    assert d.resolution_range == ((10, None),)


@pytest.mark.parametrize(
    ("n", "border", "unproductive"),
    [
        (10, "c3", ()),  # 13 >= 10 only at c3; its input r 9 < 10
        (5, "c1", ("c2", "c3")),  # 5 >= 5 at c1; c2 reads 5, c3 reads 9
        (3, "c0", ("c1", "c2", "c3")),  # c0 has r 3; c1 reads 3
        (14, None, ()),  # no layer reaches 14
    ],
)
def test_chain_other_sizes(n, border, unproductive):
    d = jaxrf.resolution_diagnostics(jaxrf.from_layers(CHAIN, (32,)), (n,))
    assert (d.border_layer, d.unproductive) == (border, unproductive)


def test_chain_default_size_is_the_traced_one():
    # the traced input is 9 wide: same as test_chain_at_9
    d = jaxrf.resolution_diagnostics(jaxrf.from_layers(CHAIN, (9,)))
    assert d.input_shape == (9,)
    assert (d.border_layer, d.unproductive) == ("c2", ("c3",))


# Graph 2, a residual block with a 1x1 shortcut (2-D, multi-path, aligned):
#   stem k3 p1:            r 3,                      input r 1
#   a    k3 p1 (branch 0): r 3 + 2 = 5,              input r 3
#   b    k3 p1 (branch 0): r 5 + 2 = 7,              input r 5
#   s    k1    (branch 1): r 3 + 0 = 3,              input r 3
#   add: paths 7 (a, b) and 3 (s), aligned (stride 1, centre offset 0 both): the region
#        keeps r 7; r_min 3, r_max 7; input r_min = min(7, 3) = 3
#   post k3 p1: paths 7 + 2 = 9 and 3 + 2 = 5: r_min 5, r_max 9, input r_min 3
RESIDUAL = [
    L(3, padding=1, name="stem"),
    P([[L(3, padding=1, name="a"), L(3, padding=1, name="b")], [L(1, name="s")]], name="add"),
    L(3, padding=1, name="post"),
]


def test_residual_min_and_max_over_paths():
    rf = jaxrf.from_layers(RESIDUAL, (5, 5))
    d = jaxrf.resolution_diagnostics(rf)
    assert d.names == ("stem", "a", "b", "s", "add", "post")
    assert [m[0] for m in d.min_size] == [3, 5, 7, 3, 3, 5]
    assert [m[0] for m in d.max_size] == [3, 5, 7, 3, 7, 9]
    assert [m[0] for m in d.input_min_size] == [1, 3, 5, 3, 3, 3]
    # the aligned merge keeps the largest path for the region
    assert rf.layers[4].size == (7, 7) and rf.size == (9, 9)


def test_residual_at_5():
    # n = 5: a is the first with r_min >= 5 (border); b reads 5 >= 5 (unproductive); the add's
    # shortcut path has r 3 < 5, so neither it nor post (reads r_min 3) is unproductive, though
    # post covers (r_min 5). With max over paths the add (7) and post (reads 7) would look
    # unproductive: the shortcut is what keeps them productive.
    d = jaxrf.resolution_diagnostics(jaxrf.from_layers(RESIDUAL, (5, 5)))
    assert d.border_layer == "a"
    assert d.unproductive == ("b",)
    assert [d.status(k) for k in range(6)] == ["-", "border", "unproductive", "-", "-", "covers"]
    # largest input r_min: 5 (b): no unproductive layer for n >= 6
    assert d.resolution_range == ((6, None), (6, None))


def test_residual_range_is_tight():
    rf = jaxrf.from_layers(RESIDUAL, (5, 5))
    # at 6x6: b (r 7) is the border, its input r 5 < 6: nothing unproductive
    d6 = jaxrf.resolution_diagnostics(rf, (6, 6))
    assert (d6.border_layer, d6.unproductive) == ("b", ())
    # at 3x3: the stem (r 3) is the border; a, b, s read r_min 3, 5, 3; add reads 3; post 3
    d3 = jaxrf.resolution_diagnostics(rf, (3, 3))
    assert (d3.border_layer, d3.unproductive) == ("stem", ("a", "b", "s", "add", "post"))


def test_residual_anisotropic_input():
    # 5x9: axis 0 is covered from a (r_min 5); along axis 1 (n 9) the r_min are 3, 5, 7, 3, 3,
    # 5, all < 9: no layer covers both axes, so there is no border layer and none unproductive.
    d = jaxrf.resolution_diagnostics(jaxrf.from_layers(RESIDUAL, (5, 9)))
    assert d.border_layer_per_axis == ("a", None)
    assert d.border_layer is None and d.unproductive == ()


# Graph 3, a misaligned concatenation and a global head (1-D):
#   p k3 p(1,1) (branch 0): r 3, centre offset (3-1)/2 - 1 = 0
#   q k2 p(1,0) (branch 1): r 2, centre offset (2-1)/2 - 1 = -1/2: misaligned with p
#   cat: two paths, r_min 2, r_max 3, no single size; input r_min min(3, 2) = 2
#   post k3 p1: paths 5 and 4: r_min 4, r_max 5; input r_min 2
#   gp global pool: every path global: not classified
MISALIGNED = [
    P([[L(3, padding=1, name="p")], [L(2, padding=[(1, 0)], name="q")]], "concat", name="cat"),
    L(3, padding=1, name="post"),
    jaxrf.Global(name="gp"),
]


def _misaligned(n):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxrf.MisalignmentWarning)
        return jaxrf.from_layers(MISALIGNED, (n,))


def test_misaligned_min_and_max():
    rf = _misaligned(4)
    d = jaxrf.resolution_diagnostics(rf)
    assert rf.layers[2].size is None  # misaligned: no single size
    assert d.min_size == ((3,), (2,), (2,), (4,), None)
    assert d.max_size == ((3,), (2,), (3,), (5,), None)
    assert d.input_min_size == ((1,), (1,), (2,), (2,), None)
    # n = 4: post (r_min 4) is the border; nobody reads r_min >= 4; gp is global
    assert (d.border_layer, d.unproductive) == ("post", ())
    assert d.covers[4] is None and d.status(4) == "global"
    # largest input r_min 2: no unproductive layer for n >= 3
    assert d.resolution_range == ((3, None),)


def test_misaligned_at_2():
    # n = 2: p (r 3) covers first; q (r 2) covers too but reads r 1; cat reads 2 (unproductive),
    # post reads 2 (unproductive)
    d = jaxrf.resolution_diagnostics(_misaligned(2))
    assert (d.border_layer, d.unproductive) == ("p", ("cat", "post"))
    statuses = ["border", "covers", "unproductive", "unproductive", "global"]
    assert [d.status(k) for k in range(5)] == statuses


def test_traced_identity_shortcut():
    # x + conv3(conv3(x)) (SAME): paths 5 (conv0 r 3, conv1 r 5) and 1 (identity):
    # add r_min 1, r_max 5, input r_min 1; at n 3 the border is conv0 (r 3), conv1 reads 3
    def conv(x):
        return lax.conv_general_dilated(
            x, jnp.ones((3, 3, 1, 1)), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    rf = jaxrf.receptive_field(
        lambda x: x + conv(conv(x)), jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    )
    d = jaxrf.resolution_diagnostics(rf, (3, 3))
    assert d.names == ("conv0", "conv1", "add0")
    assert [m[0] for m in d.min_size] == [3, 5, 1]
    assert [m[0] for m in d.max_size] == [3, 5, 5]
    assert (d.border_layer, d.unproductive) == ("conv0", ("conv1",))
    assert d.resolution_range == ((4, None), (4, None))  # conv1 reads r 3


def test_describe():
    d = jaxrf.resolution_diagnostics(jaxrf.from_layers(CHAIN, (9,)))
    assert d.describe().splitlines() == [
        "input 9: border layer c2",
        "  unproductive layers (1): c3",
        "  no layer is unproductive for input sizes >= 10 (per axis)",
    ]


def test_bad_input_shape():
    rf = jaxrf.from_layers(CHAIN, (9,))
    with pytest.raises(ValueError, match=r"`input_shape` \(=\(9, 9\)\) has 2 axes but the network"):
        jaxrf.resolution_diagnostics(rf, (9, 9))
    with pytest.raises(ValueError, match=r"`input_shape` \(=\(0,\)\) must be the spatial shape"):
        jaxrf.resolution_diagnostics(rf, (0,))


@pytest.mark.parametrize(
    ("name", "right", "unproductive"),
    [
        # right branch 1x1 s2: r 1. The add (aligned) has r_min 1, so only left2 (reads 3) is
        # unproductive at 2x2.
        ("distill_aligned", 1, ("TwoBranch/left2",)),
        # right branch 2x2 s2: r 2 (misaligned with left). The add's r_min is 2 >= 2: it reads
        # only covering maps, so it is unproductive too.
        ("distill_misaligned", 2, ("TwoBranch/left2", "TwoBranch")),
    ],
)
def test_zoo_two_branch(name, right, unproductive):
    # Flax, traced. left1 3x3 p1: r 3 (input r 1); left2 1x1 s2: r 3 (input 3); right kxk s2:
    # r k (input 1); add: r_min min(3, k), r_max 3, input r_min min(3, k).
    from jaxrf import models

    entry = models.get(name)
    variables = entry.init()
    x = jax.ShapeDtypeStruct(entry.small_input_shape, jnp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxrf.MisalignmentWarning)
        rf = jaxrf.receptive_field(lambda x: entry.apply(variables, x), x)
    d = jaxrf.resolution_diagnostics(rf, (2, 2))
    assert d.names == ("TwoBranch/left1", "TwoBranch/left2", "TwoBranch/right", "TwoBranch")
    assert [m[0] for m in d.min_size] == [3, 3, right, right]
    assert [m[0] for m in d.max_size] == [3, 3, right, 3]
    assert [m[0] for m in d.input_min_size] == [1, 3, 1, right]
    # 2x2: left1 (r 3) is the first to cover
    assert (d.border_layer, d.unproductive) == ("TwoBranch/left1", unproductive)
    # largest input r_min: 3 (left2): none unproductive from 4x4; at the traced 8x8 nothing covers
    assert d.resolution_range == ((4, None), (4, None))
    assert jaxrf.resolution_diagnostics(rf).border_layer is None
