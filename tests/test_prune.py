"""Cone pruning (jaxrf._prune): every layer computes only the probed unit's cone.

Equality is checked against the full network (values and input-gradient maps, float64), and
the cone's input box against hand-derived windows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxrf.models
from jaxrf._prune import prune_to_cone


def _resnet():
    entry = jaxrf.models.get("resnet50_torchvision")
    kw = dict(layers=(1, 1, 1, 1), width=0.125)
    variables = entry.init(jax.random.key(0), (1, 32, 32, 3), **kw)
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
    return lambda x: entry.apply(variables, x, **kw)


def _sel(index):
    return tuple(slice(None) if i is None else slice(i, i + 1) for i in index)


@pytest.mark.slow  # ~36 s each; test_erf_with_fold_and_cone_equals_the_plain_map stays default
@pytest.mark.parametrize("unit", [(0, 0), (1, 0)])
def test_resnet_gradient_map_equals_full_float64(unit):
    with jax.enable_x64(True):
        net = _resnet()
        x = jax.random.normal(jax.random.key(1), (1, 64, 64, 3), jnp.float64)
        index = (None, *unit, None)
        pruned = prune_to_cone(net, x, index)
        assert pruned.whole == []
        full = net(x)[_sel(index)]
        np.testing.assert_array_equal(pruned(x), full)

        def erf(fn):
            return jax.grad(lambda v: jnp.sum(jax.nn.relu(fn(v))))(x)

        want = erf(lambda v: net(v)[_sel(index)])
        assert np.abs(erf(pruned) - want).max() <= 1e-13 * np.abs(want).max()
        # the cone reads less than the whole image, and the pruned step costs fewer FLOPs
        assert pruned.input_box[1:3] != ((0, 64), (0, 64))

        def flops(fn):
            step = jax.jit(jax.grad(lambda v: jnp.sum(jax.nn.relu(fn(v)))))
            cost = step.lower(x).compile().cost_analysis()
            return (cost[0] if isinstance(cost, list | tuple) else cost)["flops"]

        if unit != (0, 0):
            return
        assert flops(pruned) < 0.8 * flops(lambda v: net(v)[_sel(index)])


def test_input_box_of_conv_then_pool_by_hand():
    """3x3 conv, stride 2, padding 1, then 2x2 max pool stride 2 on a 16-long axis.

    Pool output 1 reads conv outputs [2, 4); conv output j reads 2j - 1 .. 2j + 1, so [2, 4)
    reads input [3, 8) per spatial axis.
    """
    w = jnp.ones((3, 3, 1, 2))

    def net(v):
        y = lax.conv_general_dilated(
            v, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return lax.reduce_window(y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 1))
    pruned = prune_to_cone(net, x, (None, 1, 1, None))
    assert pruned.input_box == ((0, 1), (3, 8), (3, 8), (0, 1))
    np.testing.assert_array_equal(pruned(x), net(x)[:, 1:2, 1:2, :])
    # unit 0 reads conv outputs [0, 2): input [-1, 4) of which -1 is the conv's zero padding
    p0 = prune_to_cone(net, x, (None, 0, 0, None))
    assert p0.input_box == ((0, 1), (0, 4), (0, 4), (0, 1))
    np.testing.assert_array_equal(p0(x), net(x)[:, :1, :1, :])


def test_operation_without_box_rule_runs_whole_and_stays_exact():
    def net(v):
        y = jnp.tanh(v).reshape(1, 8, 8, 1)  # reshape has no box rule: computed whole
        return lax.reduce_window(y, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")

    x = jax.random.normal(jax.random.key(0), (1, 64))
    pruned = prune_to_cone(net, x, (None, 4, 4, None))
    assert "reshape" in pruned.whole
    np.testing.assert_array_equal(pruned(x), net(x)[:, 4:5, 4:5, :])


def test_bad_index_is_named():
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match=r"`index` .* one entry per output axis"):
        prune_to_cone(jnp.tanh, x, (3, 3))
    with pytest.raises(ValueError, match=r"`index\[1\]` \(=9\) must be None or an int"):
        prune_to_cone(jnp.tanh, x, (None, 9, 0, None))
    pruned = prune_to_cone(jnp.tanh, x, (None, 3, 3, None))
    with pytest.raises(ValueError, match=r"`x` has shape \(1, 9, 9, 1\), but the cone was"):
        pruned(jnp.zeros((1, 9, 9, 1)))


@pytest.mark.parametrize(
    "options",
    [
        dict(fold=True, crop="cone"),
        pytest.param(dict(fold=True), marks=pytest.mark.slow),
        pytest.param(dict(crop="cone"), marks=pytest.mark.slow),
    ],
)
def test_erf_with_fold_and_cone_equals_the_plain_map_float64(options):
    """effective_receptive_field(..., fold=True, crop="cone") on a small zoo ResNet: the same
    map as the plain computation (the fold and the pruning change no value); each alone in the
    slow set."""
    with jax.enable_x64(True):
        net = _resnet()
        xs = jax.random.normal(jax.random.key(4), (3, 40, 40, 3), jnp.float64)
        kw = dict(index=(1, 0), reduce="signed", progress=False, lowering="none")
        plain = jaxrf.effective_receptive_field(net, xs, **kw)
        got = jaxrf.effective_receptive_field(net, xs, **kw, **options)
    assert got.map.shape == (40, 40) and got.count == 3
    assert got.index == (1, 0) and got.output_shape == plain.output_shape
    diff = np.abs(got.map - plain.map).max()
    assert diff <= 1e-12 * np.abs(plain.map).max(), (options, diff)


def test_erf_cone_errors_are_named():
    x = jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match=r"`crop` \(='box'\) must be None, a jaxrf.Crop"):
        jaxrf.effective_receptive_field(jnp.tanh, x, crop="box")
    with pytest.raises(ValueError, match=r"`crop='cone'` with `init_fn` is not supported"):
        jaxrf.effective_receptive_field(
            lambda p, v: jnp.tanh(v), x, crop="cone", init_fn=lambda k: None
        )
    with pytest.raises(ValueError, match=r"`crop='cone'` needs fn\(x\) shaped"):
        jaxrf.effective_receptive_field(lambda v: v.sum(axis=(1, 2)), x, crop="cone")
    with pytest.raises(TypeError, match=r"`fold` \(=1\) must be True or False"):
        jaxrf.effective_receptive_field(jnp.tanh, x, fold=1)
