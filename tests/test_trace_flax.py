"""jaxrf.receptive_field on Flax linen and NNX modules, values derived by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import jaxrf


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Conv(4, (3, 3), padding="SAME", name="conv_a")(x)
        y = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(y))
        y = nn.Conv(4, (3, 3), padding="SAME", name="conv_b")(y)
        return nn.relu(x + y)


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=2, padding=((1, 1), (1, 1)), name="stem")(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = Block(name="block1")(x)
        return nn.LayerNorm(name="norm")(x)


def test_linen_residual_net():
    x = jnp.zeros((1, 16, 16, 3))
    variables = jax.jit(Net().init)(jax.random.PRNGKey(0), x)  # one compile, not per op
    rf = jaxrf.receptive_field(lambda x: Net().apply(variables, x), x)
    # stem 3x3 s2 p1: r 3, S 2, P 1 (n 8); pool 2 s2: r 5, S 4, P 1 (n 4);
    # conv_a, conv_b 3x3 SAME: r 13 then 21, P 5 then 9. Shortcut r 5, P 1: centre offset
    # (5-1)/2 - 1 = 1 = (21-1)/2 - 9, so the add is aligned: r 21, S 4, P 9.
    assert (rf.size, rf.stride, rf.padding, rf.output_shape) == ((21, 21), (4, 4), (9, 9), (4, 4))
    assert rf.aligned and not rf.is_global
    rows = [(r.name, r.op, r.size[0], r.effective_padding[0]) for r in rf.layers]
    assert rows == [
        ("Net/stem", "conv", 3, 1),
        ("Net", "max_pool", 5, 1),
        ("Net/block1/conv_a", "conv", 13, 5),
        ("Net/block1/conv_b", "conv", 21, 9),
        ("Net/block1", "add", 21, 9),
    ]


class Excite(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.sigmoid(nn.Dense(4, name="fc2")(nn.relu(nn.Dense(2, name="fc1")(s))))
        return x * s


def test_linen_squeeze_excitation_global():
    x = jnp.zeros((1, 8, 8, 3))
    variables = jax.jit(Excite().init)(jax.random.PRNGKey(0), x)
    with pytest.warns(
        jaxrf.GlobalReceptiveFieldWarning, match="every output now depends on the whole input"
    ):
        rf = jaxrf.receptive_field(lambda x: Excite().apply(variables, x), x)
    assert rf.is_global and rf.size == (8, 8)


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
        self.conv2 = nnx.Conv(4, 4, (3, 3), strides=2, rngs=rngs)

    def __call__(self, x):
        return self.conv2(nnx.relu(self.bn(self.conv1(x))))


def test_nnx_net():
    model = NNXNet(nnx.Rngs(0))
    rf = jaxrf.receptive_field(model, jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
    # conv1 3x3 SAME: r 3, P 1; conv2 3x3 s2 SAME at 16: pad (0, 1): r 3 + 2 = 5, S 2, P 1
    assert (rf.size, rf.stride, rf.padding, rf.output_shape) == ((5, 5), (2, 2), (1, 1), (8, 8))
    # NNX puts nothing on the name stack; jaxrf names the layers by their module paths
    assert [r.name for r in rf.layers] == ["conv1", "conv2"]


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(2, 2, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(2, 2, (3, 3), rngs=rngs)

    def __call__(self, x):
        return x + self.conv2(nnx.relu(self.conv1(x)))


class NNXStack(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Conv(3, 2, (3, 3), rngs=rngs)
        self.blocks = nnx.List([NNXBlock(rngs), NNXBlock(rngs)])

    def __call__(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


def test_nnx_module_paths_in_a_nested_model():
    """Layers are named by their paths in the module graph, called directly or in a lambda;
    the patched ``__call__`` methods are restored afterwards."""
    model = NNXStack(nnx.Rngs(0))
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    expected = [
        ("stem", "conv"),
        ("blocks.0.conv1", "conv"),
        ("blocks.0.conv2", "conv"),
        ("blocks.0", "add"),
        ("blocks.1.conv1", "conv"),
        ("blocks.1.conv2", "conv"),
        ("blocks.1", "add"),
    ]
    for fn in (model, lambda v: model(v)):
        rf = jaxrf.receptive_field(fn, x)
        assert [(r.name, r.op) for r in rf.layers] == expected
        # stem + 4 convs, 3x3 SAME each: 1 + 5 * 2 = 11
        assert rf.size == (11, 11)
    assert "__call__" in NNXBlock.__dict__ and NNXBlock.__call__.__name__ == "__call__"
    assert not hasattr(NNXBlock.__call__, "__wrapped__")
