"""Layer taps: probing a named intermediate layer equals probing the network cut there by hand.

The network has two paths merged by an add (a 3x3 and a 5x5 SAME convolution of the input),
then a ReLU, a 3x3 VALID convolution, a tanh and a 3x3 SAME convolution. Its layers, as
``receptive_field(net, x).layers`` names them: conv0 (3x3), conv1 (5x5), add0, conv2, conv3.

Hand-derived supports on a 16x16 input (stride 1 everywhere):
* add0 at (0, 0): the 5x5 branch with padding 2 reads rows/columns 0..2; the 3x3 one 0..1.
* conv2 at (i, j): a VALID 3x3 over add0 rows i..i+2, each reading -2..+2 around itself, so
  rows i-2..i+4, clipped to 0..15: (0, 0) -> 0..4, (5, 5) -> 3..9.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrf

DN = ("NHWC", "HWIO", "NHWC")
RNG = np.random.default_rng(0)
W = {k: RNG.normal(size=s) for k, s in dict(a=(3, 3, 2, 4), b=(5, 5, 2, 4), c=(3, 3, 4, 3),
                                             d=(3, 3, 3, 2)).items()}  # fmt: skip


def conv(x, w, padding="SAME"):
    w = jnp.asarray(w, x.dtype)
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=DN)


def upto_add(x, w=W):
    return conv(x, w["a"]) + conv(x, w["b"])


def upto_conv2(x, w=W):
    return conv(jax.nn.relu(upto_add(x, w)), w["c"], "VALID")


def net(x, w=W):
    return conv(jnp.tanh(upto_conv2(x, w)), w["d"])


CUT_BY_HAND = {"add0": upto_add, "conv2": upto_conv2}

STRUCTURAL_BOXES = [  # (layer, index, hand-derived box)
    ("add0", (0, 0), ((0, 2), (0, 2))),
    ("add0", (7, 9), ((5, 9), (7, 11))),
    ("conv2", (0, 0), ((0, 4), (0, 4))),
    ("conv2", (5, 5), ((3, 9), (3, 9))),
]


def test_layer_names_are_those_of_the_receptive_field():
    names = [r.name for r in jaxrf.receptive_field(net, jnp.ones((1, 16, 16, 2))).layers]
    assert names == ["conv0", "conv1", "add0", "conv2", "conv3"]


@pytest.mark.parametrize("layer, index, box", STRUCTURAL_BOXES, ids=str)
def test_structural_box_of_a_layer_equals_the_network_cut_by_hand(layer, index, box):
    x = jnp.ones((1, 16, 16, 2))
    tapped = jaxrf.actual_receptive_field(net, x, index, mode="structural", layer=layer)
    by_hand = jaxrf.actual_receptive_field(CUT_BY_HAND[layer], x, index, mode="structural")
    assert tapped.box == by_hand.box == box
    np.testing.assert_array_equal(tapped.mask, by_hand.mask)
    assert jaxrf.support_map(net, x, layer=layer).box(index) == box


def test_gradient_map_and_measured_field_of_a_layer():
    with jax.enable_x64(True):
        x = jnp.asarray(RNG.normal(size=(3, 16, 16, 2)))
        tapped = jaxrf.gradient_map(net, x, (5, 6), layer="conv2")
        by_hand = jaxrf.gradient_map(upto_conv2, x, (5, 6))
        measured = jaxrf.actual_receptive_field(net, x, (5, 6), layer="conv2")
        measured_by_hand = jaxrf.actual_receptive_field(upto_conv2, x, (5, 6))
    np.testing.assert_allclose(tapped, by_hand, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(measured.mask, measured_by_hand.mask)


@pytest.mark.slow  # 6 s; CI runs the slow set after the default run
def test_erf_of_several_layers_equals_each_network_cut_by_hand():
    """One forward pass shared by both layers' backward passes, float64 maps to 1e-10."""
    with jax.enable_x64(True):
        x = jnp.asarray(RNG.normal(size=(6, 16, 16, 2)))
        both = jaxrf.effective_receptive_field(net, x, batch_size=4, layer=["conv2", "add0"])
        single = jaxrf.effective_receptive_field(net, x, batch_size=4, layer="conv2")
        by_hand = {
            name: jaxrf.effective_receptive_field(cut, x, batch_size=4)
            for name, cut in CUT_BY_HAND.items()
        }
    assert list(both) == ["conv2", "add0"]
    for name, erf in both.items():
        np.testing.assert_allclose(erf.map, by_hand[name].map, rtol=1e-10, atol=1e-14)
        assert erf.layer == name and erf.count == 6
        assert erf.index == by_hand[name].index == ((7, 7) if name == "conv2" else (8, 8))
        assert erf.output_shape == by_hand[name].output_shape
    np.testing.assert_allclose(single.map, by_hand["conv2"].map, rtol=1e-10, atol=1e-14)


@pytest.mark.slow  # CI runs the slow set after the default run
def test_erf_of_a_layer_with_weight_draws():
    def init_fn(key):
        ks = jax.random.split(key, 4)
        return {k: jax.random.normal(kk, W[k].shape) for k, kk in zip("abcd", ks, strict=True)}

    x = jnp.asarray(RNG.normal(size=(2, 16, 16, 2)), jnp.float32)
    kw = dict(init_fn=init_fn, num_draws=2, key=jax.random.key(3))
    tapped = jaxrf.effective_receptive_field(lambda w, x: net(x, w), x, layer="conv2", **kw)
    by_hand = jaxrf.effective_receptive_field(lambda w, x: upto_conv2(x, w), x, **kw)
    np.testing.assert_allclose(tapped.map, by_hand.map, rtol=1e-5, atol=1e-6)


LAYER_ERRORS = [
    (dict(layer="conv9"), ValueError, r"unknown: \['conv9'\]"),
    (dict(layer=[]), TypeError, r"non-empty list"),
    (dict(layer=["add0", "add0"]), TypeError, r"distinct names"),
    (dict(layer="add0", crop=object()), ValueError, r"`crop` with `layer`"),
]


@pytest.mark.parametrize("kwargs, error, match", LAYER_ERRORS, ids=[e[2] for e in LAYER_ERRORS])
def test_layer_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxrf.effective_receptive_field(net, jnp.ones((1, 16, 16, 2)), **kwargs)


def test_probe_layer_must_be_one_name():
    with pytest.raises(TypeError, match=r"`layer` \(=\['add0'\]\) must be one layer name"):
        jaxrf.gradient_map(net, jnp.ones((1, 16, 16, 2)), (0, 0), layer=["add0"])
