"""The model zoo: every entry builds and runs, and tracing it reproduces the published numbers.

Expected values are typed here from their sources, independently of the registry:

* TF-Slim nets: the rows of the receptive-field table published with Araujo et al. (Distill
  2019; google-research/receptive_field), ``input_resolution`` 224, the end point named. jaxrf
  ships that table (``jaxrf.models.araujo_table``); a test checks the shipped copy against the
  rows typed here.
* torchvision ResNet-50, U-Net, DeepLab, the Distill and Luo toys: hand derivations written out
  in the docstrings of ``jaxrf/models/{resnet,unet,deeplab,toys}.py`` and
  ``jaxrf/models/__init__.py``.
* Today's families (Swin, MaxViT, ViT with registers, PixelShuffle decoder, ``nn.scan``
  stack): hand derivations in the docstring of ``jaxrf/models/modern.py``. The ViT entry is
  global by design (its CLS token attends to every patch): it is checked as global.
* Output shapes: hand-derived per network (comments below).

The receptive fields are obtained only by tracing the Flax model (``jaxrf.receptive_field`` on
``entry.build()``); there is no layer list beside the models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrf
import jaxrf.models as zoo
from jaxrf.models.toys import LuoStack

# name -> (size, stride, padding, aligned, output spatial shape at the default input, source)
RF_TABLE = {
    # Araujo table rows "cnn,224,end_point,...": rf, effective_stride, effective_padding.
    # Output shapes at 224: AlexNet 224 -> 54 -> 26 -> 12 -> 5 (VALID 11/4 then 3/2 pools);
    # the others halve five times to 7 (SAME / explicit padding); Inception v3's VALID stem
    # 224 -> 111 -> 109 -> 109 -> 54 -> 54 -> 52 -> 25, Mixed_6a 12, Mixed_7a 5.
    "alexnet_v2": (195, 32, 64, True, (5, 5), "alexnet_v2,224,alexnet_v2/pool5"),
    "vgg_16": (212, 32, 90, True, (7, 7), "vgg_16,224,vgg_16/pool5"),
    "resnet_v1_50": (483, 32, 239, True, (7, 7), "resnet_v1_50,224,resnet_v1_50/block4"),
    "resnet_v1_101": (1027, 32, 511, True, (7, 7), "resnet_v1_101,224,resnet_v1_101/block4"),
    "resnet_v1_152": (1507, 32, 751, True, (7, 7), "resnet_v1_152,224,resnet_v1_152/block4"),
    "mobilenet_v1": (315, 32, 126, True, (7, 7), "mobilenet_v1,224,Conv2d_13_pointwise"),
    "inception_v3": (1311, 32, 618, True, (5, 5), "inception_v3,224,Mixed_7c"),
    # Hand derivations (module docstrings).
    "resnet50_torchvision": (427, 32, 213, True, (7, 7), "jaxrf/models/resnet.py"),
    "unet": (47, 1, 23, True, (64, 64), "jaxrf/models/unet.py"),
    "deeplab_os8": (691, 8, 345, True, (17, 17), "jaxrf/models/deeplab.py: 129 -> 65 -> 33 -> 17"),
    "deeplab_os16": (707, 16, 353, True, (9, 9), "jaxrf/models/deeplab.py: ... -> 17 -> 9"),
    "distill_aligned": (3, 2, 1, True, (8, 8), "jaxrf/models/toys.py TwoBranch"),
    "distill_misaligned": (3, 2, 1, False, (8, 8), "jaxrf/models/toys.py TwoBranch"),
    "luo_uniform": (11, 1, 5, True, (32, 32), "5 x 3x3: 1 + 5 * 2, padding 5 * 1"),
    "luo_random": (11, 1, 5, True, (32, 32), "as luo_uniform"),
    "luo_relu": (11, 1, 5, True, (32, 32), "as luo_uniform"),
    "luo_tanh": (11, 1, 5, True, (32, 32), "as luo_uniform"),
    "luo_sigmoid": (11, 1, 5, True, (32, 32), "as luo_uniform"),
    "luo_dropout": (11, 1, 5, True, (32, 32), "as luo_uniform"),
    "luo_subsample": (21, 4, 10, True, (8, 8), "3/1/1, 5/2/2, 9/2/4, 13/4/6, 21/4/10"),
    "luo_dilated": (21, 1, 10, True, (32, 32), "5 x span 5: 1 + 5 * 4, padding 5 * 2"),
    "luo_skip": (11, 1, 5, True, (32, 32), "skip path centred: as luo_uniform"),
    "luo_skip_subsample": (21, 4, 10, True, (8, 8), "as luo_subsample"),
    # MTCNN, all VALID: P-Net 1+2+1+4+4 (48 -> 46 -> 23 -> 21 -> 19); R-Net 1+2+2+4+4+4
    # (24 -> 22 -> 11 -> 9 -> 4 -> 3); O-Net 1+2+2+4+4+8+4+8 (48 -> 46 -> 23 -> 21 -> 10 -> 8
    # -> 4 -> 3).
    "mtcnn_pnet": (12, 2, 0, True, (19, 19), "Zhang et al. 2016: 12x12 P-Net, stride 2"),
    "mtcnn_rnet": (17, 4, 0, True, (3, 3), "jaxrf/models/mtcnn.py"),
    "mtcnn_onet": (33, 8, 0, True, (3, 3), "jaxrf/models/mtcnn.py"),
    # jaxrf/models/modern.py: Swin 112 / 4 = 28 tokens per axis; MaxViT and the decoder keep
    # the size; the ViT returns the CLS features (B, C): no spatial axis left, shape (1, 1);
    # global: size = input, stride 0, padding 0.
    "swin_pair": (324, 4, 160, False, (28, 28), "modern.py: hull of 100/4/{48,-64,160}"),
    "maxvit_block": (57, 1, 28, True, (32, 32), "modern.py: 3/1/1, +block 9/1/4, +grid 57/1/28"),
    "vit_registers": (224, 0, 0, True, (1, 1), "modern.py: CLS attends to every patch"),
    "shuffle_decoder": (12, 1, 5, False, (32, 32), "modern.py: hull of 12/1/5 and 5/1/2"),
    "scan_stack": (25, 1, 12, True, (32, 32), "modern.py: 1 + 12 * 2, padding 12"),
}
# Entries whose every output reads the whole input (checked as global, not as a local field).
GLOBAL = {"vit_registers"}

# Every TF-Slim row of Araujo et al.'s table at input 224 for the networks in the zoo, typed
# from the published table (columns cnn, end_point without the "cnn/" prefix, rf,
# effective_stride, effective_padding).
END_POINT_ROWS = [
    ("alexnet_v2", "conv1", 11, 4, 0),
    ("alexnet_v2", "pool1", 19, 8, 0),
    ("alexnet_v2", "conv2", 51, 8, 16),
    ("alexnet_v2", "conv3", 99, 16, 32),
    ("alexnet_v2", "conv4", 131, 16, 48),
    ("alexnet_v2", "conv5", 163, 16, 64),
    ("alexnet_v2", "pool5", 195, 32, 64),
    ("vgg_16", "conv1/conv1_1", 3, 1, 1),
    ("vgg_16", "pool1", 6, 2, 2),
    ("vgg_16", "conv2/conv2_1", 10, 2, 4),
    ("vgg_16", "pool2", 16, 4, 6),
    ("vgg_16", "conv3/conv3_1", 24, 4, 10),
    ("vgg_16", "conv3/conv3_2", 32, 4, 14),
    ("vgg_16", "pool3", 44, 8, 18),
    ("vgg_16", "conv4/conv4_1", 60, 8, 26),
    ("vgg_16", "conv4/conv4_2", 76, 8, 34),
    ("vgg_16", "pool4", 100, 16, 42),
    ("vgg_16", "conv5/conv5_1", 132, 16, 58),
    ("vgg_16", "conv5/conv5_2", 164, 16, 74),
    ("vgg_16", "pool5", 212, 32, 90),
    ("inception_v3", "Conv2d_1a_3x3", 3, 2, 0),
    ("inception_v3", "Conv2d_2a_3x3", 7, 2, 0),
    ("inception_v3", "Conv2d_2b_3x3", 11, 2, 2),
    ("inception_v3", "MaxPool_3a_3x3", 15, 4, 2),
    ("inception_v3", "Conv2d_3b_1x1", 15, 4, 2),
    ("inception_v3", "Conv2d_4a_3x3", 23, 4, 2),
    ("inception_v3", "MaxPool_5a_3x3", 31, 8, 2),
    ("inception_v3", "Mixed_5b", 63, 8, 18),
    ("inception_v3", "Mixed_5c", 95, 8, 34),
    ("inception_v3", "Mixed_5d", 127, 8, 50),
    ("inception_v3", "Mixed_6a", 159, 16, 58),
    ("inception_v3", "Mixed_6b", 351, 16, 154),
    ("inception_v3", "Mixed_6c", 543, 16, 250),
    ("inception_v3", "Mixed_6d", 735, 16, 346),
    ("inception_v3", "Mixed_6e", 927, 16, 442),
    ("inception_v3", "Mixed_7a", 1055, 32, 490),
    ("inception_v3", "Mixed_7b", 1183, 32, 554),
    ("inception_v3", "Mixed_7c", 1311, 32, 618),
    ("mobilenet_v1", "Conv2d_0", 3, 2, 0),
    ("mobilenet_v1", "Conv2d_1_pointwise", 7, 2, 2),
    ("mobilenet_v1", "Conv2d_2_pointwise", 11, 4, 2),
    ("mobilenet_v1", "Conv2d_3_pointwise", 19, 4, 6),
    ("mobilenet_v1", "Conv2d_4_pointwise", 27, 8, 6),
    ("mobilenet_v1", "Conv2d_5_pointwise", 43, 8, 14),
    ("mobilenet_v1", "Conv2d_6_pointwise", 59, 16, 14),
    ("mobilenet_v1", "Conv2d_7_pointwise", 91, 16, 30),
    ("mobilenet_v1", "Conv2d_8_pointwise", 123, 16, 46),
    ("mobilenet_v1", "Conv2d_9_pointwise", 155, 16, 62),
    ("mobilenet_v1", "Conv2d_10_pointwise", 187, 16, 78),
    ("mobilenet_v1", "Conv2d_11_pointwise", 219, 16, 94),
    ("mobilenet_v1", "Conv2d_12_pointwise", 251, 32, 94),
    ("mobilenet_v1", "Conv2d_13_pointwise", 315, 32, 126),
    ("resnet_v1_50", "block1", 35, 8, 15),
    ("resnet_v1_50", "block2", 99, 16, 47),
    ("resnet_v1_50", "block3", 291, 32, 143),
    ("resnet_v1_50", "block4", 483, 32, 239),
    ("resnet_v1_101", "block1", 35, 8, 15),
    ("resnet_v1_101", "block2", 99, 16, 47),
    ("resnet_v1_101", "block3", 835, 32, 415),
    ("resnet_v1_101", "block4", 1027, 32, 511),
    ("resnet_v1_152", "block1", 35, 8, 15),
    ("resnet_v1_152", "block2", 163, 16, 79),
    ("resnet_v1_152", "block3", 1315, 32, 655),
    ("resnet_v1_152", "block4", 1507, 32, 751),
]

# Output shape (N, H, W, C) at the entry's small input (hand-derived): Slim/torchvision nets
# reach 1x1 (AlexNet 67 -> 15 -> 7 -> 3 -> 1; the others /32, or Inception's 75 -> ... -> 1);
# DeepLab 33 -> 17 -> 17 -> 9 -> 5 (-> 3 at output stride 16); TwoBranch halves; Luo stride 1
# except the two subsampling layers (16 -> 4).
SMALL_OUTPUT = {
    "alexnet_v2": (1, 1, 1, 256),
    "vgg_16": (1, 1, 1, 512),
    "resnet_v1_50": (1, 1, 1, 2048),
    "resnet_v1_101": (1, 1, 1, 2048),
    "resnet_v1_152": (1, 1, 1, 2048),
    "mobilenet_v1": (1, 1, 1, 1024),
    "inception_v3": (1, 1, 1, 2048),
    "resnet50_torchvision": (1, 1, 1, 2048),
    "unet": (1, 16, 16, 2),
    "deeplab_os8": (1, 5, 5, 3),
    "deeplab_os16": (1, 3, 3, 3),
    "distill_aligned": (1, 4, 4, 2),
    "distill_misaligned": (1, 4, 4, 2),
    "luo_uniform": (1, 16, 16, 4),
    "luo_random": (1, 16, 16, 4),
    "luo_relu": (1, 16, 16, 4),
    "luo_tanh": (1, 16, 16, 4),
    "luo_sigmoid": (1, 16, 16, 4),
    "luo_dropout": (1, 16, 16, 4),
    "luo_subsample": (1, 4, 4, 4),
    "luo_dilated": (1, 16, 16, 4),
    "luo_skip": (1, 16, 16, 4),
    "luo_skip_subsample": (1, 4, 4, 4),
    "mtcnn_pnet": (1, 1, 1, 2),
    "mtcnn_rnet": (1, 3, 3, 64),
    "mtcnn_onet": (1, 3, 3, 128),
    # Swin 56 / 4 = 14 tokens (two 7-windows); the ViT (small input = its 224 input: the
    # position embedding fixes the token count) returns (B, C) CLS features.
    "swin_pair": (1, 14, 14, 8),
    "maxvit_block": (1, 16, 16, 8),
    "vit_registers": (1, 16),
    "shuffle_decoder": (1, 16, 16, 4),
    "scan_stack": (1, 16, 16, 4),
}

# Running these eagerly costs 4-20 s each on two cores (one XLA compile per op and shape).
HEAVY = {
    "resnet_v1_50",
    "resnet_v1_101",
    "resnet_v1_152",
    "inception_v3",
    "mobilenet_v1",
    "resnet50_torchvision",
}
# Building and tracing these at full width and 224 costs several seconds each.
SLOW_TRACE = {"resnet_v1_101", "resnet_v1_152", "inception_v3"}


def _params(names, slow):
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


def test_tables_cover_the_zoo():
    assert set(RF_TABLE) == set(zoo.names()) == set(SMALL_OUTPUT)


@pytest.mark.parametrize("name", zoo.names())
def test_registry_expected_matches_sources(name):
    size, stride, padding, aligned, _, _ = RF_TABLE[name]
    e = zoo.get(name).expected
    assert (e.size, e.stride, e.padding, e.aligned, e.is_global) == (
        (size, size),
        (stride, stride),
        (padding, padding),
        aligned,
        name in GLOBAL,
    )
    assert e.source


@pytest.mark.parametrize("name", zoo.names())
def test_output_shape_at_small_input(name):
    """Abstract evaluation (no compute) at full width; the default input's spatial output shape
    is checked by the tracing test below."""
    entry = zoo.get(name)
    x = jax.ShapeDtypeStruct(entry.small_input_shape, jnp.float32)
    variables = jax.eval_shape(entry.model().init, jax.random.key(0), x)
    assert jax.eval_shape(entry.apply, variables, x).shape == SMALL_OUTPUT[name]


@pytest.mark.parametrize("name", _params(zoo.names(), HEAVY))
def test_runs_at_small_input(name):
    entry = zoo.get(name)
    fn = entry.build()
    y = fn(
        jnp.asarray(np.random.default_rng(0).standard_normal(entry.small_input_shape), jnp.float32)
    )
    assert y.shape == SMALL_OUTPUT[name]
    assert bool(jnp.isfinite(y).all())


@pytest.mark.parametrize("name", _params(zoo.names(), SLOW_TRACE))
def test_traced_receptive_field_matches_published(name):
    """The headline check: trace the Flax model, compare with the table / hand derivation."""
    size, stride, padding, aligned, out_hw, source = RF_TABLE[name]
    entry = zoo.get(name)
    x = jax.ShapeDtypeStruct(entry.input_shape, jnp.float32)
    if name in GLOBAL:
        with pytest.warns(jaxrf.GlobalReceptiveFieldWarning, match="global"):
            rf = jaxrf.receptive_field(entry.build(), x)
    elif aligned:
        rf = jaxrf.receptive_field(entry.build(), x)
    else:
        with pytest.warns(jaxrf.MisalignmentWarning, match="misaligned merge"):
            rf = jaxrf.receptive_field(entry.build(), x)
    assert rf.size == (size, size), source
    assert rf.stride == (stride, stride), source
    assert rf.padding == (padding, padding), source
    assert rf.aligned is aligned
    assert rf.output_shape == out_hw
    assert rf.is_global is (name in GLOBAL)
    if name in GLOBAL:  # every output reads the whole input
        assert (size, stride, padding) == (entry.input_shape[1], 0, 0)
        corner = tuple(n - 1 for n in entry.input_shape[1:3])
        assert rf.region((0, 0), clip=True) == ((0, corner[0]), (0, corner[1]))


# Networks whose end points are traced in the default run (the others are slow).
FAST_END_POINTS = {"alexnet_v2", "vgg_16", "mobilenet_v1", "resnet_v1_50"}


@pytest.mark.parametrize(
    "cnn, end_point, size, stride, padding",
    [
        pytest.param(
            *row,
            id=f"{row[0]}/{row[1]}",
            marks=[] if row[0] in FAST_END_POINTS else [pytest.mark.slow],
        )
        for row in END_POINT_ROWS
    ],
)
def test_every_published_end_point(cnn, end_point, size, stride, padding):
    """Each intermediate end point of the Slim nets, traced from the model cut there (narrow
    channels: ``width`` does not enter the arithmetic, see the test below)."""
    entry = zoo.get(cnn)
    fn = entry.build(width=0.125, end_point=end_point)
    rf = jaxrf.receptive_field(fn, jax.ShapeDtypeStruct(entry.input_shape, jnp.float32))
    assert (rf.size, rf.stride, rf.padding) == ((size,) * 2, (stride,) * 2, (padding,) * 2)
    assert rf.aligned


def test_bad_end_point():
    with pytest.raises(
        ValueError, match=r"`end_point` \(='block5'\) is not an end point of resnet_v1"
    ):
        zoo.get("resnet_v1_50").init(end_point="block5")


def test_misaligned_toy_paths():
    """The two paths of the misaligned toy, per axis: left 3/2/1 (offset 0), right 2/2/0."""
    x = jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32)
    with pytest.warns(jaxrf.MisalignmentWarning):
        rf = jaxrf.receptive_field(zoo.get("distill_misaligned").build(), x)
    summaries = sorted((p.size[0], p.stride[0], p.padding[0]) for p in rf.paths)
    assert summaries == [(2, 2, 0), (3, 2, 1)]
    # Output 3 sees [5, 7] through the left path and [6, 7] through the right.
    assert rf.region((3, 3)) == ((5, 7), (5, 7))
    assert rf.region((0, 0), clip=True) == ((0, 1), (0, 1))


@pytest.mark.parametrize(
    "width, depth, expected",
    [
        # Araujo table rows (block4 at 224): channels do not enter the arithmetic.
        (0.125, 50, (483, 32, 239)),
        (0.25, 101, (1027, 32, 511)),
    ],
)
def test_receptive_field_does_not_depend_on_width(width, depth, expected):
    fn = zoo.get(f"resnet_v1_{depth}").build(width=width)
    rf = jaxrf.receptive_field(fn, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert (rf.size[0], rf.stride[0], rf.padding[0]) == expected


def test_build_is_deterministic():
    entry = zoo.get("distill_aligned")
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 16, 16, 1)), jnp.float32)
    np.testing.assert_array_equal(entry.build()(x), entry.build()(x))
    assert not np.array_equal(entry.build(jax.random.key(5))(x), entry.build()(x))


def test_luo_uniform_is_a_box_filter():
    """Uniform weights: each layer averages a k x k x c_in window, so ones stay ones inside."""
    fn = zoo.get("luo_uniform").build()
    y = fn(jnp.ones((1, 32, 32, 1)))
    np.testing.assert_allclose(np.asarray(y[0, 5:27, 5:27]), 1.0, rtol=1e-5)
    assert float(y[0, 0, 0, 0]) < 1.0  # zero padding reaches the corner


def test_dropout_active_when_not_deterministic():
    entry = zoo.get("luo_dropout")
    x = jnp.ones(entry.small_input_shape)
    on = entry.build(deterministic=False)(x)
    off = entry.build()(x)
    assert float(jnp.mean(on == 0)) > float(jnp.mean(off == 0))


def test_head_option():
    entry = zoo.get("mobilenet_v1")
    x = jax.ShapeDtypeStruct(entry.small_input_shape, jnp.float32)
    model = entry.model(num_classes=10)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (1, 10)


def test_unknown_name():
    with pytest.raises(ValueError, match=r"`name` \(='resnet'\) is not in the zoo; known names"):
        zoo.get("resnet")


def test_bad_resnet_depth():
    with pytest.raises(ValueError, match=r"`depth` \(=34\) must be one of \[50, 101, 152\]"):
        zoo.slim.resnet_v1(34)


def test_bad_deeplab_output_stride():
    entry = zoo.get("deeplab_os8")
    with pytest.raises(ValueError, match=r"`output_stride` \(=4\) must be one of \[8, 16\]"):
        entry.init(output_stride=4)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"skip": True, "kernel": 2}, r"`skip=True` needs an odd dilated span.*give 2"),
        ({"nonlinearity": "gelu"}, r"`nonlinearity` \(='gelu'\) must be one of"),
        ({"weights": "ones"}, r"`weights` \(='ones'\) must be one of"),
        ({"subsample": (5,)}, r"`subsample` \(=\(5,\)\) lists layers \[5\] outside 0..4"),
    ],
)
def test_bad_luo_options(options, match):
    model = LuoStack(**options)
    with pytest.raises(ValueError, match=match):
        model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


@pytest.mark.parametrize("name", ["alexnet_v2", "luo_uniform"])
def test_init_dtype(name):
    variables = zoo.get(name).init(dtype=jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.bfloat16)}


def _araujo_end_point(cnn: str, end_point: str) -> str:
    """The table prefixes most end points with ``cnn/``; MobileNet and Inception do not."""
    return end_point if cnn in ("mobilenet_v1", "inception_v3") else f"{cnn}/{end_point}"


@pytest.mark.parametrize("cnn, end_point, r, s, p", END_POINT_ROWS)
def test_shipped_araujo_table_has_the_published_rows(cnn, end_point, r, s, p):
    row = zoo.araujo_row(cnn, _araujo_end_point(cnn, end_point), 224)
    assert (row.rf, row.effective_stride, row.effective_padding) == (r, s, p)


def test_shipped_araujo_table_size_and_unknown_row():
    # 561 data rows in the published CSV (20 networks, several input resolutions).
    assert len(zoo.araujo_table()) == 561
    with pytest.raises(ValueError, match=r"no row .*end points listed for 'vgg_16': .*pool5"):
        zoo.araujo_row("vgg_16", "vgg_16/pool6")
