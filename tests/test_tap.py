"""Layer taps: the tapped feature map equals the network cut by hand after that layer."""

import flax.linen as nn
import jax
import numpy as np
import pytest

import jaxrf
from jaxrf._tap import intermediate


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = nn.Conv(4, (3, 3), padding="SAME", name="left")(x)
        b = nn.Conv(4, (1, 1), name="right")(x)
        return nn.relu(a + b)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, upto=None):
        x = nn.Conv(4, (3, 3), strides=(2, 2), padding="VALID", name="stem")(x)
        if upto == "stem":
            return x
        x = _Block(name="block")(x)
        if upto == "block":
            return x
        return nn.Conv(2, (5, 5), padding="SAME", name="head")(x)


def _setup():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 17, 17, 3))
    model = _Net()
    params = model.init(jax.random.PRNGKey(1), x)
    return model, params, x


@pytest.mark.slow  # 12 s; CI runs the slow set after the default run
def test_taps_equal_hand_truncation():
    model, params, x = _setup()
    fn = lambda v: model.apply(params, v)  # noqa: E731
    layers = [(r.name, r.op) for r in jaxrf.receptive_field(fn, x).layers]
    assert ("_Net/stem", "conv") in layers and ("_Net/block", "add") in layers
    g = intermediate(fn, x, ["_Net/stem", "_Net/block"])
    got_stem, got_merge = g(x)
    want_stem = model.apply(params, x, upto="stem")
    # the block's merge is its sum before the ReLU: the hand cut applies no ReLU
    block_in = want_stem
    p = params["params"]["block"]
    left = nn.Conv(4, (3, 3), padding="SAME").apply({"params": p["left"]}, block_in)
    right = nn.Conv(4, (1, 1)).apply({"params": p["right"]}, block_in)
    np.testing.assert_array_equal(np.asarray(got_stem), np.asarray(want_stem))
    np.testing.assert_allclose(np.asarray(got_merge), np.asarray(left + right), rtol=0, atol=1e-6)
    # under jit and vjp, too
    jitted = jax.jit(lambda v: g(v)[0])
    np.testing.assert_array_equal(np.asarray(jitted(x)), np.asarray(want_stem))


@pytest.mark.slow  # 10 s; CI runs the slow set after the default run
def test_unknown_layer_names_the_layers():
    model, params, x = _setup()
    fn = lambda v: model.apply(params, v)  # noqa: E731
    with pytest.raises(ValueError, match=r"`layers` \(=\['nope'\]\) must name layers of `fn`"):
        intermediate(fn, x, ["nope"])
