"""Constant folding (jaxrf._fold): a convolution followed by per-channel affine constants
becomes one convolution, and the network computes the same values and input gradients.

Expected values come from the unfolded network itself (the fold must not change the function),
and the structure checks count the equations a hand-written chain must leave behind.
"""

from __future__ import annotations

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend import core as jcore

import jaxrf.models
from jaxrf._fold import fold_constants, fold_convs, per_channel


def _names(closed) -> Counter:
    return Counter(e.primitive.name for e in closed.jaxpr.eqns)


def _random_bn(variables, key):
    """Non-trivial inference batch-norm statistics, so the fold has a scale and a bias."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(key, len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys, strict=True):
        name = jax.tree_util.keystr(path)
        if "'var'" in name:
            leaf = jax.random.uniform(k, leaf.shape, jnp.float64, 0.5, 2.0)
        elif any(s in name for s in ("'mean'", "'bias'", "'scale'")):
            leaf = jax.random.normal(k, leaf.shape, jnp.float64)
        out.append(jnp.asarray(leaf, jnp.float64))
    return jax.tree_util.tree_unflatten(tree, out)


def _grad(fn, x):
    return jax.grad(lambda v: jnp.sum(jax.nn.relu(fn(v))[:, 1, 1, :]))(x)


@pytest.mark.slow  # ~30 s: CI runs the slow set after the default run
def test_zoo_resnet_folds_every_batch_norm_float64():
    with jax.enable_x64(True):
        entry = jaxrf.models.get("resnet50_torchvision")
        kw = dict(layers=(1, 1, 1, 1), width=0.125)
        variables = entry.init(jax.random.key(0), (1, 32, 32, 3), **kw)
        variables = _random_bn(variables, jax.random.key(5))

        def net(x):
            return entry.apply(variables, x, **kw)

        x = jax.random.normal(jax.random.key(1), (1, 48, 48, 3), jnp.float64)
        folded = fold_constants(jax.make_jaxpr(net)(x))
        names = _names(folded)
        # 17 convolutions (stem, 4 x 3 in the blocks, 4 downsamples) each followed by a batch
        # norm: the affine chains are gone, one bias add per convolution is left, plus the
        # 4 residual adds; ReLU stays as max.
        assert names["conv_general_dilated"] == 17
        assert names["mul"] == 0 and names["sub"] == 0 and names["rsqrt"] == 0
        assert names["add"] == 17 + 4
        fast = fold_convs(net)
        np.testing.assert_allclose(fast(x), net(x), rtol=0, atol=1e-10)
        np.testing.assert_allclose(_grad(fast, x), _grad(net, x), rtol=0, atol=1e-10)


def _conv(x, w, layout):
    dn = ("NHWC", "HWIO", "NHWC") if layout == "NHWC" else ("NCHW", "OIHW", "NCHW")
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)


@pytest.mark.slow  # 14 s; the fold + cone ERF test of test_prune folds in the default run
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_layouts_and_every_affine_step(layout):
    """BN-like (y - m) * s + b, LayerScale (C,), fixed scalar scale, c - y and y / c."""
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(2), 6)
        c = 5
        if layout == "NHWC":
            w = jax.random.normal(k[0], (3, 3, 4, c), jnp.float64)
            x = jax.random.normal(k[1], (2, 9, 9, 4), jnp.float64)
            per = (1, 1, 1, c)
        else:
            w = jax.random.normal(k[0], (c, 4, 3, 3), jnp.float64)
            x = jax.random.normal(k[1], (2, 4, 9, 9), jnp.float64)
            per = (1, c, 1, 1)
        m, s, b = (jax.random.normal(k[i], per, jnp.float64) for i in (2, 3, 4))
        gamma = jax.random.normal(k[5], (c,), jnp.float64)

        def net(v):
            y = (_conv(v, w, layout) - m) * s + b
            if layout == "NHWC":
                y = y * gamma  # LayerScale, broadcast along the last (feature) axis
            y = 0.5 - y * 3.0
            return y / 1.5

        folded = fold_constants(jax.make_jaxpr(net)(x))
        names = _names(folded)
        assert names["conv_general_dilated"] == 1
        assert names["mul"] + names["sub"] + names["div"] == 0
        assert names["add"] == 1
        got = jcore.jaxpr_as_fun(folded)(x)[0]
        np.testing.assert_allclose(got, net(x), rtol=0, atol=1e-10)
        g = jax.grad(lambda v: jnp.sum(jnp.sin(jcore.jaxpr_as_fun(folded)(v)[0])))(x)
        np.testing.assert_allclose(g, jax.grad(lambda v: jnp.sum(jnp.sin(net(v))))(x), atol=1e-10)


def test_spatially_varying_constant_is_not_folded():
    with jax.enable_x64(True):
        w = jax.random.normal(jax.random.key(0), (3, 3, 2, 3), jnp.float64)
        x = jax.random.normal(jax.random.key(1), (1, 6, 6, 2), jnp.float64)
        ramp = jnp.arange(6.0).reshape(1, 6, 1, 1)  # varies along H: not per-channel

        def net(v):
            return _conv(v, w, "NHWC") * ramp + 1.0

        folded = fold_constants(jax.make_jaxpr(net)(x))
        assert _names(folded)["mul"] == 1
        np.testing.assert_allclose(jcore.jaxpr_as_fun(folded)(x)[0], net(x), atol=1e-12)


def test_per_channel_reduces_only_constant_axes():
    c = np.array([1.0, 2.0, 3.0]).reshape(1, 1, 3) * np.ones((4, 5, 3))
    np.testing.assert_array_equal(per_channel(c, (4, 5, 3), 2), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(per_channel(2.0, (4, 5, 3), 2), [2.0, 2.0, 2.0])
    assert per_channel(np.arange(5.0).reshape(5, 1), (4, 5, 3), 2) is None
