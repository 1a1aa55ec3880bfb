"""The same receptive_field call on Haiku, Equinox and Keras 3 (JAX backend) models.

Optional dependencies (``pip install jaxrf[thirdparty]``); each test skips when its library
is missing. No weights are downloaded: Keras applications are built with ``weights=None``
and Haiku parameters are initialised from a constant input inside the traced function (so
they are constants of the jaxpr, never evaluated).
"""

import os
import re
import warnings

import jax
import jax.numpy as jnp
import pytest

import jaxrf

IMAGE = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)


def test_haiku_resnet50():
    hk = pytest.importorskip("haiku")
    net = hk.transform_with_state(
        lambda x, training: hk.nets.ResNet50(1000)(x, is_training=training)
    )

    def logits(x):
        params, state = net.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), True)
        return net.apply(params, state, None, x, False)[0]

    # Haiku uses SAME padding; the stride-2 3x3 conv of block_group_1/block_0 pads (0, 1) at
    # 56, so its centre moves right of the 1x1 stride-2 shortcut's: a misaligned add.
    # Main path: 43 = 35 + 4*2, P 14 + 0; shortcut: 35, P 14. Offsets 21 - 14 vs 17 - 14.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rf = jaxrf.receptive_field(logits, IMAGE)
    assert caught[0].category is jaxrf.MisalignmentWarning
    pattern = (
        r"block_group_1/block_0'.*stride 8, padding 14, size 43.*stride 8, padding 14, size 35"
    )
    assert re.search(pattern, str(caught[0].message))
    # logits: global average pooling, then a dense layer
    assert rf.is_global and rf.size == (224, 224) and rf.output_shape == (1, 1)
    rows = {r.name: r for r in rf.layers}
    # initial conv 7x7 s2 SAME at 224: pad (2, 3): r 7, P 2; max pool 3 s2 SAME at 112:
    # pad (0, 1): r 7 + 2*2 = 11, S 4, P 2; first 3x3 SAME: r 11 + 4*2 = 19, P 2 + 4 = 6
    first = rows["res_net50/initial_conv"]
    assert (first.size, first.effective_stride, first.effective_padding) == ((7, 7), (2, 2), (2, 2))
    pool = rows["res_net50"]
    assert (pool.op, pool.size, pool.effective_stride, pool.effective_padding) == (
        "max_pool",
        (11, 11),
        (4, 4),
        (2, 2),
    )
    conv = rows["res_net50/block_group_0/block_0/conv_1"]
    assert (conv.size, conv.effective_padding) == ((19, 19), (6, 6))
    assert rows["res_net50/block_group_1/block_0"].aligned is False


def test_equinox_conv_net():
    eqx = pytest.importorskip("equinox")
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    net = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(3, 8, 3, stride=2, padding=1, key=k1),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.MaxPool2d(3, 2),
            eqx.nn.Conv2d(8, 8, 3, padding=1, key=k2),
        ]
    )
    # Equinox is unbatched channels-first (C, H, W): the layout comes from the conv.
    rf = jaxrf.receptive_field(net, jax.ShapeDtypeStruct((3, 32, 32), jnp.float32))
    # conv 3 s2 p1: r 3, S 2, P 1 (n 16); pool 3 s2: r 7, S 4, P 1 (n 7); conv 3 p1: r 15, P 5
    assert (rf.size, rf.stride, rf.padding, rf.output_shape) == ((15, 15), (4, 4), (5, 5), (7, 7))
    assert [r.op for r in rf.layers] == ["conv", "max_pool", "conv"]


def _keras():
    os.environ["KERAS_BACKEND"] = "jax"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported earlier with another backend")
    return keras


def _keras_field(name):
    keras = _keras()
    model = getattr(keras.applications, name)(
        weights=None, include_top=False, input_shape=(224, 224, 3)
    )
    return jaxrf.receptive_field(lambda x: model(x, training=False), IMAGE)


@pytest.mark.slow
def test_keras_vgg16():
    # Published (Araujo et al., vgg_16 pool5 at 224): 212, 32, 90
    rf = _keras_field("VGG16")
    assert (rf.size, rf.stride, rf.padding, rf.output_shape) == (
        (212, 212),
        (32, 32),
        (90, 90),
        (7, 7),
    )


@pytest.mark.slow
def test_keras_resnet50():
    # Keras ResNet50 puts the stride in the first 1x1 conv of a stage: zero-pad 3 + 7x7 s2
    # (r 7, P 3), zero-pad 1 + pool 3 s2 (r 11, S 4, P 5), then one 3x3 per block:
    # r = 11 + 2 (3*4 + 4*8 + 6*16 + 3*32) = 483, P = 5 + 3*4 + 4*8 + 6*16 + 3*32 = 241
    rf = _keras_field("ResNet50")
    assert (rf.size, rf.stride, rf.padding, rf.output_shape) == (
        (483, 483),
        (32, 32),
        (241, 241),
        (7, 7),
    )
    assert rf.aligned


@pytest.mark.slow
def test_keras_inception_v3():
    # Published (Araujo et al., inception_v3 Mixed_7c at 224): 1311, 32, 618; VALID stem: 5x5
    rf = _keras_field("InceptionV3")
    assert (rf.size, rf.stride, rf.padding, rf.output_shape) == (
        (1311, 1311),
        (32, 32),
        (618, 618),
        (5, 5),
    )


# Applications seen to trace, with what is known by hand: five stride-2 stages (output 7x7 at
# 224, effective stride 32); EfficientNet's squeeze-excitation blocks make it global.
KERAS_TRACED = [("MobileNetV2", False), ("DenseNet121", False), ("EfficientNetB0", True)]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "is_global"), KERAS_TRACED)
def test_keras_applications_trace(name, is_global):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxrf.GlobalReceptiveFieldWarning)
        rf = _keras_field(name)
    assert rf.output_shape == (7, 7) and rf.is_global is is_global
    assert rf.stride == ((0, 0) if is_global else (32, 32))
