"""jaxrf layer report: theory and ERF statistics per layer, assembled from given measurements.

Expected values are derived by hand in the comments (Distill's r, S, P; moments of small
integer maps; RepLKNet's log10(x + 1) normalised squares).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxrf
from jaxrf._report import assemble_report, unit_indices, unit_region

L = jaxrf.Layer

# 1-D, input 9: c0 k3 VALID -> 7 outputs, r 3, S 1, P 0; c1 k3 VALID -> 5 outputs, r 5.
# Centre units: c0 7 // 2 = 3, region [3, 5]; c1 5 // 2 = 2, region [2, 6]. The region's centre
# S i - P + (r - 1)/2 is pixel 4 for both.
CHAIN = [L(3, name="c0"), L(3, name="c1")]
# c0: a map wider than its region (pure arithmetic): mass 1+2+4+2+1 = 10, 8 of it in [3, 5].
MAP_C0 = np.array([0, 0, 1, 2, 4, 2, 1, 0, 0], float)
# c1: the ERF of two all-ones 3-tap linear convolutions: the box convolved with itself.
MAP_C1 = np.array([0, 0, 1, 2, 3, 2, 1, 0, 0], float)


def _report():
    rf = jaxrf.from_layers(CHAIN, (9,))
    indices = unit_indices(rf, ["c0", "c1"])
    assert indices == {"c0": (3,), "c1": (2,)}
    supports = {"c0": ((3, 5),), "c1": ((2, 6),)}
    return assemble_report(rf, indices, supports, {"c0": MAP_C0, "c1": MAP_C1}, count=4)


def test_theory_columns():
    c0, c1 = _report().rows
    assert (c0.size, c0.stride, c0.padding, c0.region, c0.support) == (
        (3,),
        (1,),
        (0,),
        ((3, 5),),
        ((3, 5),),
    )
    assert (c1.size, c1.region) == ((5,), ((2, 6),))


def test_erf_statistics_c0():
    c0 = _report().rows[0]
    # mean 4; variance (1*4 + 2*1 + 2*1 + 1*4) / 10 = 1.2
    assert c0.std == pytest.approx((math.sqrt(1.2),), rel=1e-12)
    # reference pixel 4 (value 4), threshold 0.0455 * 4: 5 pixels above -> sqrt(5)
    assert c0.luo_size == pytest.approx(math.sqrt(5), rel=1e-12)
    assert c0.share_inside == pytest.approx(0.8, rel=1e-12)
    # sqrt(5) over sqrt(3 pixels of [3, 5])
    assert c0.erf_to_rf == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    # A = log10(m + 1) / log10(5): 1 at 4, 0.6826 at 3 and 5, 0.4307 at 2 and 6, total 3.2266.
    # Side 3 holds 2.3652 / 3.2266 = 0.733 > 0.2, 0.3, 0.5 -> 3/9; side 5 holds all > 0.99 -> 5/9.
    assert c0.area_ratios == pytest.approx((1 / 3, 1 / 3, 1 / 3, 5 / 9), rel=1e-12)


def test_erf_statistics_c1():
    c1 = _report().rows[1]
    # two 3-tap boxes: variance 2 (3**2 - 1) / 12 = 4/3
    assert c1.std == pytest.approx((math.sqrt(4 / 3),), rel=1e-12)
    # reference 3 at pixel 4; all 5 nonzero pixels exceed 0.1365: sqrt(5); region has 5 pixels
    assert c1.luo_size == pytest.approx(math.sqrt(5), rel=1e-12)
    assert c1.erf_to_rf == pytest.approx(1.0, rel=1e-12)
    assert c1.share_inside == 1.0
    # A = log10(m + 1) / log10(4) = 0.5, 0.7925, 1, 0.7925, 0.5 (total 3.585); side 3 holds
    # 2.585 / 3.585 = 0.721: 3/9 for 20/30/50 %; side 5 holds all: 5/9 for 99 %.
    assert c1.area_ratios == pytest.approx((1 / 3, 1 / 3, 1 / 3, 5 / 9), rel=1e-12)


def test_csv():
    lines = _report().table("csv").splitlines()
    assert lines == [
        "name,unit,RF size,effective stride,effective padding,RF region,support box,ERF std,"
        "Luo size,area 20%,area 30%,area 50%,area 99%,ERF in RF,ERF/RF",
        # sqrt(1.2) = 1.095, sqrt(5) = 2.236, sqrt(5/3) = 1.291
        'c0,3,3,1,0,"[3,5]","[3,5]",1.1,2.24,0.333,0.333,0.333,0.556,0.8,1.29',
        # sqrt(4/3) = 1.155
        'c1,2,5,1,0,"[2,6]","[2,6]",1.15,2.24,0.333,0.333,0.333,0.556,1,1',
    ]


def test_other_formats():
    report = _report()
    text = report.table("text").splitlines()
    assert text[0].split()[:4] == ["name", "unit", "RF", "size"]
    assert text[2].split() == [
        "c0", "3", "3", "1", "0", "[3,5]", "[3,5]", "1.1", "2.24",
        "0.333", "0.333", "0.333", "0.556", "0.8", "1.29",
    ]  # fmt: skip
    md = report.table("markdown").splitlines()
    assert md[2] == (
        "| c0 | 3 | 3 | 1 | 0 | [3,5] | [3,5] | 1.1 | 2.24 | 0.333 | 0.333 | 0.333 | 0.556 | 0.8 "
        "| 1.29 |"
    )
    latex = report.table("latex").splitlines()
    assert latex[2].endswith(
        r"area 20\% & area 30\% & area 50\% & area 99\% & ERF in RF & ERF/RF \\"
    )
    with pytest.raises(ValueError, match=r"`fmt` \(='html'\) must be one of"):
        report.table("html")


def test_global_layer_and_missing_threshold():
    # conv k3 VALID on 7 -> 5, then global pool: the pool's region is the whole input [0, 6]
    # and it has no analytic centre, so Luo's reference is the maximum.
    rf = jaxrf.from_layers([L(3, name="c"), jaxrf.Global(name="gp")], (7,))
    # a flat map: std of 7 uniform pixels sqrt((49 - 1) / 12) = 2; Luo: all 7 -> sqrt(7), and
    # sqrt(7) / sqrt(7 pixels) = 1. RepLKNet squares centred at 7 // 2 = 3 of sides 3 and 5
    # (i = 1, 2 < 7 // 2): 3/7 = 0.43 > 0.2, 0.3 -> 3/7; 5/7 = 0.71 > 0.5 -> 5/7; no tried
    # square holds more than 99 %: None.
    report = assemble_report(rf, {"gp": (0,)}, {"gp": ((0, 6),)}, {"gp": np.ones(7)})
    (row,) = report.rows
    assert row.is_global and row.region == ((0, 6),)
    assert row.std == pytest.approx((2.0,), rel=1e-12)
    assert row.luo_size == pytest.approx(math.sqrt(7), rel=1e-12)
    assert row.erf_to_rf == pytest.approx(1.0, rel=1e-12)
    assert row.area_ratios == pytest.approx((3 / 7, 3 / 7, 5 / 7, None))
    assert report.table("csv").splitlines()[1] == (
        'gp,0,global,global,global,"[0,6]","[0,6]",2,2.65,0.429,0.429,0.714,-,1,1'
    )


def test_dead_unit_has_no_statistics():
    rf = jaxrf.from_layers(CHAIN, (9,))
    report = assemble_report(rf, {"c1": (2,)}, {"c1": None}, {"c1": np.zeros(9)})
    row = report.rows[0]
    assert (row.std, row.luo_size, row.area_ratios, row.share_inside, row.erf_to_rf) == (None,) * 5
    assert report.table("csv").splitlines()[1] == 'c1,2,5,1,0,"[2,6]",-,-,-,-,-,-,-,-,-'


def test_region_clipped_at_the_border_and_2d():
    # 2-D, two k3 p1 convs on 6x5: r 5, P 2. Unit (0, 4): [-2, 2] x [2, 6] -> [0, 2] x [2, 4].
    rf = jaxrf.from_layers([L(3, padding=1), L(3, padding=1, name="b")], (6, 5))
    assert unit_region(rf.layers[1], (0, 4), (6, 5)) == ((0, 2), (2, 4))
    # strided: k2 s2 on 8: r 2, S 2; unit 3 -> [6, 7]
    rf = jaxrf.from_layers([L(2, stride=2, name="p")], (8,))
    assert unit_region(rf.layers[0], (3,), (8,)) == ((6, 7),)


def test_indices():
    rf = jaxrf.from_layers([L(3, padding=1, name="a"), L(2, stride=2, name="p")], (8, 6))
    # centres: a 8x6 -> (4, 3); p 4x3 -> (2, 1)
    assert unit_indices(rf, ["a", "p"]) == {"a": (4, 3), "p": (2, 1)}
    assert unit_indices(rf, ["a", "p"], (1, 1)) == {"a": (1, 1), "p": (1, 1)}
    assert unit_indices(rf, ["a", "p"], {"p": (0, 2)}) == {"a": (4, 3), "p": (0, 2)}
    with pytest.raises(ValueError, match=r"`index for layer 'p'` \(=\(5, 0\)\) is outside"):
        unit_indices(rf, ["p"], (5, 0))
    with pytest.raises(ValueError, match=r"layer 'nope' is not a layer of this network; .*: a, p"):
        unit_indices(rf, ["nope"])


def test_map_of_the_wrong_shape():
    rf = jaxrf.from_layers(CHAIN, (9,))
    with pytest.raises(ValueError, match=r"the ERF map of layer 'c1' has shape \(8,\); it must"):
        assemble_report(rf, {"c1": (2,)}, {}, {"c1": np.ones(8)})


# ---------------------------------------------------------------------------------------
# End to end: jaxrf.layer_report on linear networks with all-ones kernels, whose ERF maps are
# integer counts of paths (input-independent), derived by hand below.
# ---------------------------------------------------------------------------------------

DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, stride=1, padding="VALID"):
    return lax.conv_general_dilated(
        x, jnp.ones((3, 3, 1, 1)), (stride, stride), padding, dimension_numbers=DN
    )


def _chain(x):
    return _conv(_conv(_conv(x), stride=2))


def test_layer_report_chain_end_to_end():
    # 16x16 input. conv0 -> 14x14, r 3: centre 7, region [7, 9]; ERF the 3x3 box (var 2/3).
    # conv1 (s2) -> 6x6, r 5, S 2: centre 3, region [6, 10]; per axis conv1's unit reads
    #   conv0 at 6, 7, 8, each reading [p, p + 2]: profile 1,2,3,2,1 (sum 9, mean 8,
    #   var (4 + 2 + 0 + 2 + 4) / 9 = 4/3).
    # conv2 -> 4x4, r 9, S 2: centre 2, region [4, 12]; it reads conv1 at 2, 3, 4, whose
    #   profiles 1,2,3,2,1 start at 4, 6, 8: 1,2,4,4,5,4,4,2,1 (sum 27, mean 8,
    #   var (16 + 18 + 16 + 4 + 0 + 4 + 16 + 18 + 16) / 27 = 4).
    # Luo's reference is the region's centre pixel, 8 for conv1 and conv2 (values 9 and 25).
    # conv0, conv1: every nonzero pixel is above 4.55 % of it: 9 and 25 pixels, sizes 3 and 5,
    # the regions' sides: ERF/RF 1. conv2: threshold 0.0455 * 25 = 1.1375 drops the 4 corner
    # pixels (1 * 1): 77 pixels, size sqrt(77), ERF/RF sqrt(77) / 9. All mass inside.
    report = jaxrf.layer_report(_chain, jnp.ones((2, 16, 16, 1)))
    assert [r.name for r in report.rows] == ["conv0", "conv1", "conv2"]
    assert report.count == 2
    expected = {
        "conv0": ((7, 7), ((7, 9),) * 2, 2 / 3, 3),
        "conv1": ((3, 3), ((6, 10),) * 2, 4 / 3, 5),
        "conv2": ((2, 2), ((4, 12),) * 2, 4, math.sqrt(77)),
    }
    for row in report.rows:
        index, region, var, side = expected[row.name]
        assert row.index == index and row.region == region and row.support == region
        assert row.std == pytest.approx((math.sqrt(var),) * 2, rel=1e-6)
        assert row.luo_size == pytest.approx(side, rel=1e-12)
        assert row.share_inside == pytest.approx(1.0, rel=1e-6)
        assert row.erf_to_rf == pytest.approx(side / (region[0][1] - region[0][0] + 1), rel=1e-12)
    assert report.table("csv").splitlines()[3].startswith('conv2,"2,2",9,2,0,"[4,12]x[4,12]"')


def test_layer_report_residual_layer_and_index():
    # x + conv1(conv0(x)), SAME, 9x9. add0 at (4, 4): the conv path's map is the outer
    # product of 1,2,3,2,1 on [2, 6], the identity adds 1 at (4, 4): total 81 + 1 = 82. Per
    # axis the conv path's second moment about 4 is 9 (4 + 2 + 0 + 2 + 4) = 108, the identity's
    # 0: variance 108 / 82. Luo: reference 9 + 1 = 10 at (4, 4); all 25 pixels > 0.455: 5.
    # conv0 at (0, 8): region [-1, 1] x [7, 9] clipped to [0, 1] x [7, 8].
    def net(x):
        return x + _conv(_conv(x, padding="SAME"), padding="SAME")

    report = jaxrf.layer_report(net, jnp.ones((1, 9, 9, 1)), ["add0", "conv0"], {"conv0": (0, 8)})
    add, conv0 = report.rows
    assert (add.index, add.region, add.support) == ((4, 4), ((2, 6),) * 2, ((2, 6),) * 2)
    assert add.std == pytest.approx((math.sqrt(108 / 82),) * 2, rel=1e-6)
    assert add.luo_size == pytest.approx(5.0, rel=1e-12)
    assert (conv0.index, conv0.region, conv0.support) == (
        (0, 8),
        ((0, 1), (7, 8)),
        ((0, 1), (7, 8)),
    )
    # conv0's clipped map is ones on 2x2: Luo 2 over sqrt(4 region pixels)
    assert conv0.erf_to_rf == pytest.approx(1.0, rel=1e-12)


def test_layer_report_bad_layer():
    with pytest.raises(ValueError, match=r"layer 'conv9' is not a layer of this network"):
        jaxrf.layer_report(_chain, jnp.ones((1, 16, 16, 1)), "conv9")


def test_layer_report_one_shot_iterator():
    # centre units share one pass: a generator is fine (the chain's conv2 as above)
    batches = (jnp.ones((1, 16, 16, 1)) for _ in range(3))
    report = jaxrf.layer_report(_chain, batches, ["conv1", "conv2"])
    assert report.count == 3
    assert report.rows[1].luo_size == pytest.approx(math.sqrt(77), rel=1e-12)
    # two positions need two passes: refused for a one-shot iterator
    batches = (jnp.ones((1, 16, 16, 1)) for _ in range(3))
    with pytest.raises(ValueError, match=r"`index` asks for 2 different positions"):
        jaxrf.layer_report(_chain, batches, ["conv1", "conv2"], {"conv1": (0, 0)})


def test_layer_row_equals_the_network_cut_by_hand():
    # conv1 inside x + conv1(conv0(x)) against the last layer of conv1(conv0(x)) alone, on
    # random inputs: the same unit, so the same row.
    def cut(x):
        return _conv(_conv(x, padding="SAME"), padding="SAME")

    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 11, 11, 1)), jnp.float32)
    inside = jaxrf.layer_report(lambda x: x + cut(x), x, "conv1", (2, 7)).rows[0]
    alone = jaxrf.layer_report(cut, x, "conv1", (2, 7)).rows[0]
    assert inside == alone
    # r 5, P 2: [0, 4] x [5, 9]
    assert inside.region == inside.support == ((0, 4), (5, 9))


def test_layer_report_with_init_fn_averages_weight_draws():
    # The chain above with its kernels as parameters: init_fn draws the ones kernels (every
    # draw equal), so each row is the chain's (hand derivation in the test above) and the
    # ERF averages 2 inputs x 3 draws. Theory and the structural box use one draw.
    def init_fn(key):
        del key
        return [jnp.ones((3, 3, 1, 1))] * 3

    def net(params, x):
        strides = (1, 2, 1)
        for w, s in zip(params, strides, strict=True):
            x = lax.conv_general_dilated(x, w, (s, s), "VALID", dimension_numbers=DN)
        return x

    report = jaxrf.layer_report(
        net, jnp.ones((2, 16, 16, 1)), init_fn=init_fn, num_draws=3, key=jax.random.key(1)
    )
    assert report.count == 6
    chain = jaxrf.layer_report(_chain, jnp.ones((2, 16, 16, 1)))
    assert [r.name for r in report.rows] == ["conv0", "conv1", "conv2"]
    for got, want in zip(report.rows, chain.rows, strict=True):
        assert (got.index, got.region, got.support) == (want.index, want.region, want.support)
        assert got.std == pytest.approx(want.std, rel=1e-6)
        assert got.luo_size == pytest.approx(want.luo_size, rel=1e-12)
