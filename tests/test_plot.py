"""jaxrf.plot: every function draws on the Axes it is given, returns it, and leaves pyplot alone.

Expected geometry comes from hand derivations written next to each case (Distill's closed
forms) and from the published AlexNet v2 rows of Araujo et al.
"""

import warnings

import matplotlib
import numpy as np
import pytest
from matplotlib import colors
from matplotlib.figure import Figure

import jaxrf
import jaxrf.plot as jplot
from jaxrf import Layer, MisalignmentWarning, Parallel

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (only to check that its state is untouched)

TWO_PADDED_3X3 = [Layer(3, padding=1), Layer(3, padding=1)]  # r 5, S 1, P 2


def _ax():
    return Figure().add_subplot()


def _bounds(patch):
    return tuple(float(v) for v in patch.get_bbox().bounds)


@pytest.fixture
def pyplot_untouched():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before, "a jaxrf.plot function created a pyplot figure"


# -- erf_heatmap ---------------------------------------------------------------------------

HEATMAP_CASES = [
    # index, unclipped [u, v] per axis (u = i - 2, v = i + 2), clipped to [0, 7], centre (i, j)
    ((0, 0), ((-2, 2), (-2, 2)), ((0, 2), (0, 2)), (0, 0)),
    ((3, 5), ((1, 5), (3, 7)), ((1, 5), (3, 7)), (3, 5)),
    ((7, 4), ((5, 9), (2, 6)), ((5, 7), (2, 6)), (7, 4)),
]


@pytest.mark.parametrize("index,region,clipped,centre", HEATMAP_CASES, ids=str)
def test_erf_heatmap_boxes_are_the_analytic_regions(
    index, region, clipped, centre, pyplot_untouched
):
    rf = jaxrf.from_layers(TWO_PADDED_3X3, (8, 8))
    ax = _ax()
    out = jplot.erf_heatmap(ax, np.random.default_rng(0).random((8, 8)), rf=rf, index=index)
    assert out is ax
    assert len(ax.images) == 1 and ax.images[0].get_array().shape == (8, 8)
    unclipped_patch, clipped_patch = ax.patches
    (r0, r1), (c0, c1) = region
    # Rectangle (x, y, width, height): x along columns (axis 1), y along rows (axis 0).
    assert _bounds(unclipped_patch) == (c0 - 0.5, r0 - 0.5, c1 - c0 + 1, r1 - r0 + 1)
    (r0, r1), (c0, c1) = clipped
    assert _bounds(clipped_patch) == (c0 - 0.5, r0 - 0.5, c1 - c0 + 1, r1 - r0 + 1)
    (marker,) = ax.lines
    assert (float(marker.get_ydata()[0]), float(marker.get_xdata()[0])) == centre


def test_erf_heatmap_default_index_is_the_centre_output():
    # Output 8x8 -> index (4, 4): region [2, 6] on both axes.
    ax = jplot.erf_heatmap(_ax(), np.ones((8, 8)), rf=jaxrf.from_layers(TWO_PADDED_3X3, (8, 8)))
    assert _bounds(ax.patches[0]) == (1.5, 1.5, 5.0, 5.0)


def test_erf_heatmap_linear_and_log_scales():
    data = np.zeros((8, 8))
    data[3:6, 3:6] = [[1, 10, 1], [10, 100, 10], [1, 10, 1]]
    linear = jplot.erf_heatmap(_ax(), data, colorbar=False).images[0].norm
    assert isinstance(linear, colors.Normalize) and not isinstance(linear, colors.LogNorm)
    assert (linear.vmin, linear.vmax) == (0.0, 100.0)
    log = jplot.erf_heatmap(_ax(), data, log=True).images[0]
    assert isinstance(log.norm, colors.LogNorm)
    assert (log.norm.vmin, log.norm.vmax) == (1.0, 100.0)  # smallest positive value, max
    assert log.get_array().mask.sum() == 64 - 9  # zeros are masked, drawn as the lowest colour


def test_erf_heatmap_without_rf_draws_no_overlay():
    ax = jplot.erf_heatmap(_ax(), np.ones((4, 6)), colorbar=False, title="t")
    assert not ax.patches and not ax.lines and ax.get_title() == "t"


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (
            {"erf_map": np.ones((1, 8, 8, 3))},
            ValueError,
            r"`erf_map` has shape \(1, 8, 8, 3\).*2-D",
        ),
        ({"erf_map": np.ones((7, 8)), "rf": "rf"}, ValueError, r"input shape \(8, 8\)"),
        ({"erf_map": np.zeros((8, 8)), "log": True}, ValueError, r"no positive value.*log=False"),
        ({"erf_map": np.ones((8, 8)), "cmap": "nope"}, ValueError, r"`cmap` \(='nope'\)"),
        ({"erf_map": np.ones((8, 8)), "ax": "not an axes"}, TypeError, r"`ax`.*matplotlib Axes"),
    ],
    ids=["4-D map", "shape mismatch", "log of zeros", "bad cmap", "not an Axes"],
)
def test_erf_heatmap_errors(kwargs, error, match):
    kwargs = dict(kwargs)
    if kwargs.get("rf") == "rf":
        kwargs["rf"] = jaxrf.from_layers(TWO_PADDED_3X3, (8, 8))
    ax = kwargs.pop("ax", _ax())
    with pytest.raises(error, match=match):
        jplot.erf_heatmap(ax, **kwargs)


# -- rf_growth ----------------------------------------------------------------------------

VGG_16_TO_POOL3 = [
    *(Layer(3, padding="SAME", name=f"conv1_{u}") for u in (1, 2)),
    Layer(2, stride=2, name="pool1", op="max_pool"),
    *(Layer(3, padding="SAME", name=f"conv2_{u}") for u in (1, 2)),
    Layer(2, stride=2, name="pool2", op="max_pool"),
    *(Layer(3, padding="SAME", name=f"conv3_{u}") for u in (1, 2, 3)),
    Layer(2, stride=2, name="pool3", op="max_pool"),
]


def test_rf_growth_plots_the_published_vgg_sizes(pyplot_untouched):
    # By hand, a 3x3 conv adds 2 S and a 2x2/2 pool adds S, then doubles S: 3, 5, 6 (S 2),
    # 10, 14, 16 (S 4), 24, 32, 40, 44. Araujo et al.'s table (vgg_16 at 224) lists conv1_1 3,
    # pool1 6, conv2_1 10, pool2 16, conv3_1 24, conv3_2 32, pool3 44.
    ax = _ax()
    assert jplot.rf_growth(ax, jaxrf.from_layers(VGG_16_TO_POOL3, (224, 224)), log=True) is ax
    (line,) = ax.lines  # both axes agree: one line
    assert line.get_ydata().tolist() == [3, 5, 6, 10, 14, 16, 24, 32, 40, 44]
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["conv1_1", "conv1_2", "pool1"]
    assert ax.get_yscale() == "log"


def test_rf_growth_draws_one_line_per_axis_when_they_differ_and_marks_global_layers():
    # kernel (3, 5) then (3, 1) stride 2 (google-research network 5): H 3, 7; W 5, 5.
    rf = jaxrf.from_layers(
        [Layer((3, 5), stride=2), Layer((3, 1), stride=2), jaxrf.Global()], (17, 17)
    )
    ax = jplot.rf_growth(_ax(), rf)
    h, global_h, w, global_w = ax.lines
    assert h.get_ydata().tolist() == [3, 7, 17] and w.get_ydata().tolist() == [5, 5, 17]
    assert global_h.get_xdata().tolist() == [2]
    assert jplot.rf_growth(_ax(), rf, axis=1).lines[0].get_ydata().tolist() == [5, 5, 17]
    with pytest.raises(ValueError, match=r"`axis` \(=2\)"):
        jplot.rf_growth(_ax(), rf, axis=2)


# -- area_ratio_curves -----------------------------------------------------------------------


def test_area_ratio_curves_in_percent_with_paper_reference(pyplot_untouched):
    # RepLKNet Table 10, ResNet-101 (trained, 1024): 1.0 / 1.7 / 3.5 / 23.4 % at t = 20/30/50/99 %.
    paper = {"ResNet-101": {0.2: 0.010, 0.3: 0.017, 0.5: 0.035, 0.99: 0.234}}
    ax = _ax()
    out = jplot.area_ratio_curves(ax, {"mine": {0.99: 0.5, 0.2: 0.05}}, reference=paper)
    assert out is ax
    mine, ref = ax.lines
    assert mine.get_xdata().tolist() == [20, 99] and mine.get_ydata().tolist() == [5, 50]
    assert np.allclose(ref.get_ydata(), [1.0, 1.7, 3.5, 23.4])
    assert ref.get_label() == "ResNet-101 (paper)" and ref.get_linestyle() == "--"


def test_area_ratio_curves_rejects_percentages():
    with pytest.raises(ValueError, match=r"fractions in \(0, 1\]"):
        jplot.area_ratio_curves(_ax(), {"x": {20: 1.0}})


# -- alignment_regions --------------------------------------------------------------------


def _network_3():
    net = [
        Parallel(
            [
                [Layer(1, padding=[(2, 1), (2, 1)], op="pad"), Layer(5, stride=2, name="L1")],
                [Layer(3, name="L2"), Layer(3, name="L3")],
            ]
        )
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MisalignmentWarning)
        return jaxrf.from_layers(net, (7, 7))


def test_alignment_regions_of_the_misaligned_toy(pyplot_untouched):
    # google-research network 3 at input 7 (hand derivation in test_layers.py): left path
    # [2i - 2, 2i + 2], right path [i, i + 4]; hulls [-2, 4], [0, 5], [2, 6]; clipped (input
    # 0..6) [0, 4], [0, 5], [2, 6]. The hull grows by 2 then 2 on the left, 1 then 1 on the
    # right: not a shift by a fixed stride.
    ax = _ax()
    assert jplot.alignment_regions(ax, _network_3(), axis=1) is ax
    bars = ax.patches[:-1]  # the last patch is the input shading
    spans = [(b.get_x() + 0.5, b.get_x() + b.get_width() - 0.5) for b in bars]
    assert spans == [(-2, 4), (0, 4), (0, 5), (0, 5), (2, 6), (2, 6)]
    path_lines = [ln for ln in ax.lines if len(ln.get_xdata()) == 2]  # centres are single dots
    ends = sorted(
        (float(ln.get_xdata()[0]) + 0.5, float(ln.get_xdata()[1]) - 0.5) for ln in path_lines
    )
    assert ends == sorted([(-2, 2), (0, 4), (0, 4), (1, 5), (2, 6), (2, 6)])


def test_alignment_regions_axis_error():
    with pytest.raises(ValueError, match=r"`axis` \(=1\).*1-D"):
        jplot.alignment_regions(_ax(), jaxrf.from_layers([Layer(3)], (8,)), axis=1)


# -- fixed_size_feature_map ------------------------------------------------------------------


def test_fixed_size_feature_map_of_seed_000(pyplot_untouched):
    # Dang Ha The Hien's post, 5x5 input, two 3x3 stride-2 pad-1 convs. Layer 2: n = 2,
    # j = 4, r = 3 + 2*2 = 7, start (0-indexed) = -P + (r-1)/2 = -3 + 3 = 0: centres 0 and 4.
    rf = jaxrf.from_layers([Layer(3, stride=2, padding=1)] * 2, (5, 5))
    ax = jplot.fixed_size_feature_map(_ax(), rf.layers[1], (5, 5), box_index=(1, 0))
    centres = sorted(tuple(map(float, p)) for p in ax.collections[0].get_offsets())
    assert centres == [(0, 0), (0, 4), (4, 0), (4, 4)]  # (x, y)
    # box of side 7 around feature (1, 0): centre (x 0, y 4)
    assert _bounds(ax.patches[-1]) == (-3.5, 0.5, 7.0, 7.0)


def test_fixed_size_feature_map_refuses_a_global_layer():
    rf = jaxrf.from_layers([Layer(3), jaxrf.Global(name="gap")], (5, 5))
    with pytest.raises(ValueError, match="layer 'gap' has no single receptive field"):
        jplot.fixed_size_feature_map(_ax(), rf.layers[1], (5, 5))
