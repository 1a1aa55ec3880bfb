"""from_layers and ReceptiveField: hand networks, published numbers, clipping, graphs, errors.

Sources of the expected values:
- google-research/receptive_field's hand test networks (receptive_field_computation_test.py);
- Araujo et al. (Distill 2019) published table: AlexNet v2 pool5 195/32/64, VGG-16 pool5
  212/32/90 at input 224;
- hand derivations written next to each case;
- for the property tests, a literal enumeration written in this file (the padded row laid out
  as a list, the dilated kernel slid along it), independent of jaxrf's per-axis algebra.
"""

import itertools
import warnings
from fractions import Fraction

import hypothesis.strategies as st
import pytest
from hypothesis import assume, given, settings

import jaxrf
from jaxrf import Global, Layer, MisalignmentWarning, Parallel, from_layers

# -- published networks as layer lists --------------------------------------------------------

# TF-Slim alexnet_v2: convs SAME except conv1 (VALID), pools 3x3 stride 2 VALID.
ALEXNET_V2 = [
    Layer(11, stride=4, padding="VALID", name="conv1"),
    Layer(3, stride=2, name="pool1", op="max_pool"),
    Layer(5, padding="SAME", name="conv2"),
    Layer(3, stride=2, name="pool2", op="max_pool"),
    Layer(3, padding="SAME", name="conv3"),
    Layer(3, padding="SAME", name="conv4"),
    Layer(3, padding="SAME", name="conv5"),
    Layer(3, stride=2, name="pool5", op="max_pool"),
]


def _vgg16():
    layers = []
    for block, convs in enumerate([2, 2, 3, 3, 3], start=1):
        layers += [Layer(3, padding="SAME", name=f"conv{block}_{c}") for c in range(1, convs + 1)]
        layers.append(Layer(2, stride=2, name=f"pool{block}", op="max_pool"))
    return layers


PUBLISHED = [
    # name, layers, size, stride, padding (Araujo et al., input 224)
    ("alexnet_v2/pool5", ALEXNET_V2, 195, 32, 64),
    ("vgg_16/pool5", _vgg16(), 212, 32, 90),
]


@pytest.mark.parametrize(
    "name,layers,size,stride,padding", PUBLISHED, ids=[p[0] for p in PUBLISHED]
)
def test_published_networks(name, layers, size, stride, padding):
    rf = from_layers(layers, (224, 224))
    assert rf.size == (size, size)
    assert rf.stride == (stride, stride)
    assert rf.padding == (padding, padding)
    assert rf.aligned


def test_alexnet_per_layer_records_match_the_published_end_points():
    # Rows of Araujo et al.'s published table (Distill 2019) for alexnet_v2 at 224.
    published = {
        "conv1": (11, 4, 0),
        "pool1": (19, 8, 0),
        "conv2": (51, 8, 16),
        "conv3": (99, 16, 32),
        "pool5": (195, 32, 64),
    }
    rows = {r.name: r for r in from_layers(ALEXNET_V2, (224, 224)).layers}
    for name, (r, s, p) in published.items():
        assert rows[name].size == (r, r), name
        assert rows[name].effective_stride == (s, s), name
        assert rows[name].effective_padding == (p, p), name
    # output shapes: 224 -> 54 -> 26 -> 26 -> 12 -> ... -> 5 (floor((12 - 3)/2) + 1)
    assert rows["conv1"].output_shape == (54, 54)
    assert rows["pool1"].output_shape == (26, 26)
    assert rows["pool5"].output_shape == (5, 5)


# -- google-research hand networks ----------------------------------------------------------

NETWORK_1 = [  # aligned: 1x1 s4 beside pad[1,0] + 3x3 VALID s2 + 1x1 s2
    Parallel(
        [
            [Layer(1, stride=4, name="L1")],
            [
                Layer(1, padding=[(1, 0), (1, 0)], op="pad"),
                Layer(3, stride=2, name="L2"),
                Layer(1, stride=2, name="L3"),
            ],
        ]
    )
]
NETWORK_2 = [  # network 1 with the right branch as max pools: same numbers
    Parallel(
        [
            [Layer(1, stride=4, name="L1")],
            [
                Layer(1, padding=[(1, 0), (1, 0)], op="pad"),
                Layer(3, stride=2, op="max_pool"),
                Layer(1, stride=2, op="max_pool"),
            ],
        ]
    )
]
NETWORK_5 = [Layer((3, 5), stride=2), Layer((3, 1), stride=2)]


def test_network_1_aligned():
    # Right branch: P = 1 + 0*2 + 0*4 = 1, r = 1 + 2 = 3 (the 1x1 adds 0), S = 4.
    # Left: r 1, S 4, P 0 -> centre offsets (3-1)/2 - 1 = 0 and 0: aligned; larger size 3.
    for net in (NETWORK_1, NETWORK_2):
        rf = from_layers(net, (8, 8))  # both branches give 2x2 at input 8
        assert (rf.size, rf.stride, rf.padding) == ((3, 3), (4, 4), (1, 1))
        assert rf.aligned and len(rf.paths) == 1


def test_network_5_non_square_kernels():
    # slim kernel [3, 5] is (H, W): H: 3, 3 -> 1 + 2 + 2*2 = 7; W: 5, 1 -> 1 + 4 = 5.
    rf = from_layers(NETWORK_5, (17, 17))
    assert (rf.size, rf.stride, rf.padding) == ((7, 5), (4, 4), (0, 0))


def test_network_3_misaligned_names_both_branches():
    net = [
        Parallel(
            [
                [Layer(1, padding=[(2, 1), (2, 1)], op="pad"), Layer(5, stride=2, name="L1")],
                [Layer(3, name="L2"), Layer(3, name="L3")],
            ]
        )
    ]
    # input 7: left (7 + 3 - 5)//2 + 1 = 3, right 7 - 4 = 3.
    with pytest.warns(
        MisalignmentWarning,
        match=r"'L1' \(stride 2, padding 2, size 5\).*"
        r"'L3' \(stride 1, padding 0, size 5\)",
    ):
        rf = from_layers(net, (7, 7))
    assert not rf.aligned
    # Per-position regions, by hand. Left: u = 2i - 2, v = 2i + 2. Right: [i, i + 4].
    # i=0: hull [-2, 4], clipped [0, 4]; i=1: [0, 5]; i=2: [2, 6].
    assert rf.region((0, 0)) == ((-2, 4), (-2, 4))
    assert [rf.region((i, i), clip=True)[0] for i in range(3)] == [(0, 4), (0, 5), (2, 6)]
    # Summary of the union: widest region (i = 0 or 2: 7 pixels), start of output 0 at -2.
    assert rf.size == (7, 7) and rf.padding == (2, 2)


def test_network_4_same_padding_alignment_depends_on_input_size():
    # google-research network 4: 1x1 s4 VALID beside 3x3 s2 SAME + 1x1 s2 VALID.
    net = [
        Parallel([[Layer(1, stride=4)], [Layer(3, stride=2, padding="SAME"), Layer(1, stride=2)]])
    ]
    # input 9: SAME pads (1, 1): right r 3, P 1, offset 0 == left offset 0 -> aligned 3/4/1.
    rf = from_layers(net, (9, 9))
    assert (rf.size, rf.stride, rf.padding, rf.aligned) == ((3, 3), (4, 4), (1, 1), True)
    # input 8: SAME pads (0, 1): right P 0, offset 1 != 0 -> misaligned.
    with pytest.warns(MisalignmentWarning):
        assert not from_layers(net, (8, 8)).aligned


# -- dilation, transposed convolution, clipping ------------------------------------------------


def test_dilation_keeps_the_centre():
    rf = from_layers([Layer(3, dilation=2, padding=2)], (10,))
    assert (rf.size, rf.padding) == ((5,), (2,))
    assert [rf.center((i,)) for i in range(10)] == [(i,) for i in range(10)]


def test_transposed_convolution_has_fractional_stride():
    # Kernel 2 on the input spread by 2, pad 1 (jax's conv_transpose 'VALID'-like layout):
    # output i reads spread positions i - 1, i -> input floor(i / 2).
    rf = from_layers([Layer(2, input_dilation=2, padding=1)], (4,))
    assert rf.stride == (Fraction(1, 2),)
    assert rf.output_shape == (8,)
    assert [rf.region((i,), clip=True) for i in range(8)] == [((i // 2, i // 2),) for i in range(8)]
    # Unclipped [u, v] = [(i - 1)/2, i/2]: its integer features are floor(i/2) as well.
    assert [rf.region((i,)) for i in range(8)] == [((i // 2, i // 2),) for i in range(8)]


def test_clipped_region_at_border_and_dropped_trailing_pixel():
    # 11x11 s4 VALID then 3x3 SAME: conv1 i covers [4i, 4i + 10]; conv2 j reads conv1 j-1..j+1.
    # Unclipped: [4j - 4, 4j + 14] (r 19, P 4). Clipped at j = 53: conv1 52..53 -> [208, 222]:
    # pixel 223 is never read by conv1 (its last output 53 ends at 222).
    rf = from_layers([Layer(11, stride=4), Layer(3, padding="SAME")], (224,))
    assert (rf.size, rf.stride, rf.padding) == ((19,), (4,), (4,))
    assert rf.region((53,)) == ((208, 226),)
    assert rf.region((53,), clip=True) == ((208, 222),)
    assert rf.region((0,)) == ((-4, 14),)
    assert rf.region((0,), clip=True) == ((0, 14),)


def test_branch_reading_only_padding_does_not_widen_other_axes():
    # Branch A shifts rows down by 3 (crop/pad: row i reads row i - 3) and takes 3 columns;
    # branch B is the identity. At output (0, 0) branch A reads padding only, so the box is
    # B's pixel alone: ((0, 0), (0, 0)). At (4, 2): A reads row 1, columns 1..3; B (4, 2).
    net = [Parallel([[Layer((1, 3), padding=[(3, -3), (1, 1)])], []])]
    with pytest.warns(MisalignmentWarning):  # the shift moves the centre by 3 rows
        rf = from_layers(net, (6, 6))
    assert rf.region((0, 0), clip=True) == ((0, 0), (0, 0))
    assert rf.region((4, 2), clip=True) == ((1, 4), (1, 3))


def test_three_dimensional_network():
    # 3x3x3 conv then 2x2x2 stride-2 pool on a 8x8x8 volume: r = 3 + 1 = 4, S = 2, P = 0.
    rf = from_layers([Layer(3), Layer(2, stride=2, op="max_pool")], (8, 8, 8))
    assert (rf.size, rf.stride, rf.padding, rf.output_shape) == (
        (4,) * 3,
        (2,) * 3,
        (0,) * 3,
        (3,) * 3,
    )
    assert rf.region((2, 0, 1), clip=True) == ((4, 7), (0, 3), (2, 5))


def test_global_pooling_makes_every_output_read_everything():
    rf = from_layers([Layer(3, padding=1), Global()], (7, 5))
    assert rf.is_global and rf.output_shape == (1, 1)
    assert rf.region((0, 0), clip=True) == ((0, 6), (0, 4))


def test_squeeze_excitation_is_global():
    se = [Layer(3, padding=1), Parallel([[], [Global(name="squeeze"), Layer(1)]], merge="mul")]
    with pytest.warns(jaxrf.GlobalReceptiveFieldWarning, match="whole input"):
        rf = from_layers(se, (9, 9))
    assert rf.is_global
    assert rf.region((4, 4), clip=True) == ((0, 8), (0, 8))


# -- centre and its inverse --------------------------------------------------------------------


def test_center_and_index_at_round_trip_on_alexnet():
    rf = from_layers(ALEXNET_V2, (224, 224))
    # centre of output i: 32 i - 64 + 97 = 32 i + 33
    assert rf.center((0, 4)) == (33, 161)
    for i, j in itertools.product(range(5), repeat=2):
        assert rf.index_at(rf.center((i, j))) == (i, j)
    assert rf.index_at((49, 33)) == (Fraction(1, 2), 0)


# -- property test: per-index regions against brute-force enumeration -----------------------------

windows = st.builds(
    lambda k, s, p, q, d: (k, s, (p, q), d),
    k=st.integers(1, 5),
    s=st.integers(1, 3),
    p=st.integers(-1, 3),
    q=st.integers(-1, 3),
    d=st.integers(1, 2),
)


def _layer_reads(k, s, pad, d, n):
    """What each output of one layer reads, written out: lay the padded row out as a list
    (``None`` for padding; negative padding crops) and slide the dilated kernel along it
    while it fits. Returns one set of input pixels per output."""
    p, q = pad
    row = [None] * max(p, 0) + list(range(n)) + [None] * max(q, 0)
    row = row[max(-p, 0) : len(row) - max(-q, 0)]
    outputs = []
    while s * len(outputs) + d * (k - 1) < len(row):
        start = s * len(outputs)
        outputs.append({row[start + d * t] for t in range(k)} - {None})
    return outputs


def _brute_force_sizes(chain, n):
    """Feature-map sizes along a chain of ``(k, s, pad, d)`` layers, by enumeration."""
    sizes = [n]
    for k, s, pad, d in chain:
        sizes.append(len(_layer_reads(k, s, pad, d, sizes[-1])))
    return sizes


def _brute_force_sets(chain, n, i):
    """Input pixels that output i of a chain of ``(k, s, pad, d)`` layers reads, as sets."""
    sizes = _brute_force_sizes(chain, n)
    current = {i}
    for (k, s, pad, d), m in zip(reversed(chain), reversed(sizes[:-1]), strict=True):
        reads = _layer_reads(k, s, pad, d, m)
        current = {j for x in current for j in reads[x]}
    return current


@settings(max_examples=150, deadline=None)
@given(spec=st.lists(windows, min_size=1, max_size=6), n=st.integers(8, 60))
def test_chain_regions_equal_brute_force(spec, n):
    sizes = _brute_force_sizes(spec, n)
    assume(0 not in sizes)
    rf = from_layers([Layer(k, stride=s, padding=[pad], dilation=d) for k, s, pad, d in spec], (n,))
    for i in range(sizes[-1]):
        pixels = _brute_force_sets(spec, n, i)
        expected = ((min(pixels), max(pixels)),) if pixels else None
        assert rf.region((i,), clip=True) == expected
        # Unclipped: walk [i, i] back with a -> s a - p, b -> s b - p + d (k - 1) (no clipping).
        a = b = i
        for k, s, (p, _), d in reversed(spec):
            a, b = s * a - p, s * b - p + d * (k - 1)
        assert rf.region((i,)) == ((a, b),)
        assert rf.index_at(rf.center((i,))) == (i,)


@settings(max_examples=60, deadline=None)
@given(
    left=st.lists(windows, min_size=1, max_size=3),
    right=st.lists(windows, max_size=3),
    n=st.integers(10, 40),
)
def test_two_branch_clipped_region_is_hull_of_branches(left, right, n):
    chains = [list(left), list(right)]
    ends = []
    for chain in chains:
        sizes = _brute_force_sizes(chain, n)
        assume(0 not in sizes)
        ends.append(sizes[-1])
    # Pad or crop the right branch at its end so both branches end at the same size.
    chains[1].append((1, 1, (0, ends[0] - ends[1]), 1))
    net = [
        Parallel(
            [
                [Layer(k, stride=s, padding=[pad], dilation=d) for k, s, pad, d in chain]
                for chain in chains
            ]
        )
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MisalignmentWarning)  # alignment is not under test here
        rf = from_layers(net, (n,))
    assert rf.output_shape == (ends[0],)
    for i in range(ends[0]):
        pixels = set().union(*(_brute_force_sets(c, n, i) for c in chains))
        expected = ((min(pixels), max(pixels)),) if pixels else None
        assert rf.region((i,), clip=True) == expected


# -- bad input ---------------------------------------------------------------------------------

BAD_LAYERS = [
    (Layer(3, stride=0), r"`stride` \(=0\) of layer 'conv0' must be >= 1"),
    (Layer(-3), r"`kernel` \(=-3\) of layer 'conv0' must be >= 1"),
    (Layer(3, padding="FULL"), r"`padding` \(='FULL'\).*not a known padding string.*'SAME'"),
    (Layer((3, 3, 3)), r"`kernel` \(=\(3, 3, 3\)\).*tuple of 2 ints, one per spatial axis"),
    (Layer(3, padding=[1, 2, 3]), r"`padding` \(=\[1, 2, 3\]\).*2 entries"),
    (Layer(3, stride=1.5), r"`stride` \(=1.5\).*must be an int"),
    (Layer(2, input_dilation=2, padding="SAME"), r"input_dilation=\(2, 2\).*explicit"),
    (Layer(50), r"too small for its kernel"),
]


@pytest.mark.parametrize("layer,message", BAD_LAYERS, ids=[m[:25] for _, m in BAD_LAYERS])
def test_bad_layers_raise_clear_errors(layer, message):
    with pytest.raises(ValueError, match=message):
        from_layers([layer], (32, 32))


def test_bad_input_shape_and_entries():
    with pytest.raises(ValueError, match=r"`input_shape` \(=\(0, 32\)\).*positive ints"):
        from_layers([Layer(3)], (0, 32))
    with pytest.raises(TypeError, match=r"`layers`.*wrap a single layer in a list"):
        from_layers(Layer(3), (32, 32))
    with pytest.raises(TypeError, match=r"is a str; a layer list holds"):
        from_layers(["conv"], (32, 32))
    with pytest.raises(ValueError, match=r"branches have spatial shapes|does not broadcast"):
        from_layers([Parallel([[Layer(3)], []])], (8, 8))


def test_index_outside_the_output_raises():
    rf = from_layers([Layer(3)], (8, 8))  # output 6x6
    with pytest.raises(
        ValueError,
        match=r"`index` \(=\(6, 0\)\) is outside the output: axis 0 "
        r"has 6 positions.*<= 5",
    ):
        rf.region((6, 0), clip=True)
    with pytest.raises(ValueError, match=r"`index` \(=\(1,\)\) has 1 entries.*2 spatial axes"):
        rf.region((1,))
    with pytest.raises(ValueError, match=r"`index` \(=\(-1, 0\)\) is outside"):
        rf.center((-1, 0))
