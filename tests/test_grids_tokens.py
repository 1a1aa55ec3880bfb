"""Token sequences with prefix tokens (CLS, registers): ``(B, P + h*w, C)``.

Hand derivations in the docstrings; the grid is inferred from the traced flattening.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxrf

DN = ("NHWC", "HWIO", "NHWC")


def tokens_of(x, patch=16, c=8):
    """Patch embedding (patch x patch, stride patch) flattened to (B, h*w, c)."""
    t = lax.conv_general_dilated(
        x, jnp.ones((patch, patch, x.shape[-1], c)), (patch, patch), "VALID", dimension_numbers=DN
    )
    b, h, w, _ = t.shape
    return t.reshape(b, h * w, c), (h, w)


def with_prefix(t, prefix):
    """``prefix`` learned tokens (constants) in front of the grid tokens, plus a position
    embedding."""
    b, n, c = t.shape
    front = jnp.broadcast_to(jnp.ones((1, prefix, c)), (b, prefix, c))
    return jnp.concatenate([front, t], axis=1) + jnp.ones((1, prefix + n, c))


def block(t):
    """A pre-norm-free transformer block: global self-attention and an MLP, with residuals."""
    c = t.shape[-1]
    q, k = t @ jnp.ones((c, c)), t @ jnp.ones((c, c))
    weights = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k), axis=-1)
    t = t + jnp.einsum("bij,bjc->bic", weights, t)
    return t + jax.nn.gelu(t @ jnp.ones((c, 2 * c))) @ jnp.ones((2 * c, c))


X64 = jnp.zeros((1, 64, 64, 3), jnp.float32)


def test_vit_with_cls_and_registers_cls_head_is_global():
    """1 CLS + 4 registers, one block, the CLS token as output: it attended to every patch,
    so it reads the whole 64x64 input (global, with the residual's warning)."""

    def net(x):
        t, _ = tokens_of(x)
        return block(with_prefix(t, 5))[:, 0]

    with pytest.warns(jaxrf.GlobalReceptiveFieldWarning):
        rf = jaxrf.receptive_field(net, X64)
    assert rf.is_global and rf.output_shape == (1, 1)
    assert rf.region((0, 0), clip=True) == ((0, 63), (0, 63))


def test_vit_patch_tokens_index_the_grid():
    """The same network returning the patch tokens ``t[:, 5:]`` reshaped to the 4x4 grid:
    every token attended to all, so each reads the whole input; the output shape is the grid."""

    def net(x):
        t, (h, w) = tokens_of(x)
        return block(with_prefix(t, 5))[:, 5:].reshape(1, h, w, -1)

    with pytest.warns(jaxrf.GlobalReceptiveFieldWarning):
        rf = jaxrf.receptive_field(net, X64)
    assert rf.output_shape == (4, 4)
    assert rf.region((1, 2), clip=True) == ((0, 63), (0, 63))
    box = jaxrf.actual_receptive_field(net, X64, (1, 2), mode="structural").box
    assert box == ((0, 63), (0, 63))


def test_prefix_tokens_without_attention_keep_the_grid_exact():
    """Prefix tokens added and removed with only token-wise ops in between: token ``(i, j)``
    reads its own 16x16 patch ``[16 i, 16 i + 15] x [16 j, 16 j + 15]``."""

    def net(x):
        t, (h, w) = tokens_of(x)
        t = with_prefix(t, 1)
        t = t + jax.nn.gelu(t @ jnp.ones((8, 8)))
        return t[:, 1:].reshape(1, h, w, -1)

    rf = jaxrf.receptive_field(net, X64)
    for i, j in [(0, 0), (3, 1), (2, 3)]:
        expected = ((16 * i, 16 * i + 15), (16 * j, 16 * j + 15))
        assert rf.region((i, j), clip=True) == expected
        assert jaxrf.actual_receptive_field(net, X64, (i, j), mode="structural").box == expected


def test_prefix_token_read_before_any_attention_raises():
    """The CLS token sliced out before any attention does not depend on the input: raise."""

    def net(x):
        t, _ = tokens_of(x)
        return with_prefix(t, 1)[:, 0]

    with pytest.raises(TypeError, match="neither the grid nor prefix tokens"):
        jaxrf.receptive_field(net, X64)


def _patch_tokens(prefix: int):
    """4x4 stride-4 patch embedding of a 16x16 image (4x4 grid), ``prefix`` constant tokens in
    front, then a per-token tanh: token ``prefix + 4 i + j`` reads pixels [4i, 4i+3] x [4j, 4j+3].
    """
    w = jnp.ones((4, 4, 1, 2))
    front = jnp.ones((1, prefix, 2))

    def net(x):
        dn = ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(x, w, (4, 4), "VALID", dimension_numbers=dn)
        t = y.reshape(y.shape[0], -1, 2)
        t = jnp.concatenate([jnp.broadcast_to(front, (t.shape[0], prefix, 2)), t], axis=1)
        return jnp.tanh(t)

    return net


@pytest.mark.parametrize("prefix", [1, 5], ids=["cls", "cls+4-registers"])
@pytest.mark.parametrize("index", [(0, 0), (1, 2), (3, 3)], ids=str)
def test_probes_and_erf_address_the_token_grid(prefix, index):
    net, x = _patch_tokens(prefix), jnp.full((1, 16, 16, 1), 0.1)
    i, j = index
    hand = ((4 * i, 4 * i + 3), (4 * j, 4 * j + 3))
    rf = jaxrf.receptive_field(net, x)
    assert rf.output_shape == (4, 4) and rf.region(index, clip=True) == hand
    assert jaxrf.actual_receptive_field(net, x, index, mode="structural").box == hand
    assert jaxrf.actual_receptive_field(net, x, index).box == hand
    erf = jaxrf.effective_receptive_field(net, x, index)
    nonzero = np.argwhere(erf.map > 0)
    assert tuple(map(tuple, zip(nonzero.min(0), nonzero.max(0), strict=True))) == hand
    gmap = jaxrf.gradient_map(net, x, index)
    assert gmap.shape == (1, 16, 16) and float(gmap[0, 4 * i, 4 * j]) > 0
