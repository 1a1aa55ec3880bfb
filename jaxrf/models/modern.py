"""Small Flax linen networks of today's families, with hand-derived receptive fields.

Single-head attention everywhere (heads do not change which positions are read). Shapes NHWC.

* :class:`SwinPair`: patch embedding 4x4/4, a W-MSA block (window 7) and an SW-MSA block
  (window 7, shift 3, cyclic shift by ``jnp.roll``, no attention mask), each with an MLP.
  At 112x112 (28x28 tokens, 4x4 windows): after W-MSA token ``i`` reads its window's pixels
  ``[28 (i // 7), 28 (i // 7) + 27]``; SW-MSA groups tokens ``[7k + 3, 7k + 9]`` (``k = 0, 1,
  2``), which read the W-MSA windows ``k`` and ``k + 1``: pixels ``[28k, 28k + 55]``; the
  wrapped group ``{24..27, 0..2}`` reads windows 3 and 0, whose bounding box is ``[0, 111]``.
  Distill summary per axis (tokens: ``S = 4``): the embedding ``4/4/0``; a window-7 group on 28
  tokens is the band ``r = 13, P = 6`` (token ``i`` reads ``7 (i // 7) .. + 6``), so W-MSA gives
  ``r = 4 + 4 * 12 = 52, P = 24`` (the residual ``4/4/0`` has the same centre). The cyclic
  shift by ``-3`` is two pieces: ``x[3:]`` at 0 (``P - 12 = 12``) and ``x[:3]`` at 25 (``P +
  100 = 124``); SW-MSA adds ``48`` to ``r`` and ``24`` to ``P`` (``100/4/36``, ``100/4/148``);
  the shift back splits each again (``x[25:]`` at 0: ``P - 100``; ``x[:25]`` at 3: ``P +
  12``): paths ``100/4/48`` (the residual's centre: aligned with it), ``100/4/-64`` and
  ``100/4/160``, misaligned. Their hull at output 0 is ``[-160, 163]``: size 324, stride 4,
  padding 160.
* :class:`MaxViTBlock`: MBConv (1x1, 3x3 depthwise, 1x1), block attention (4x4 blocks), grid
  attention (4x4 grid). At 32x32: after MBConv ``h`` reads ``[h - 1, h + 1]``; block attention
  ``[4b - 1, 4b + 4]`` (``b = h // 4``); the grid groups ``{h mod 8 + 8m}``, whose blocks are
  ``2m + c`` (``c = (h mod 8) // 4``): rows ``[4c - 1, 28 + 4c]`` clipped, i.e. ``(0, 28)`` or
  ``(3, 31)``. Distill summary: MBConv ``3/1/1``; block attention is the band ``r = 7, P = 3``
  (``h`` reads ``4b .. 4b + 3``): ``3 + 6 = 9``, ``P = 1 + 3 = 4``; grid attention (rows with
  equal ``h mod 8``, 32 rows) the band ``r = 49, P = 24``: ``9 + 48 = 57``, ``P = 28``, stride
  1; every residual has the same centre (aligned).
* :class:`ViTRegisters`: ViT-S/16-like (patch 16, one CLS and four register tokens, global
  self-attention blocks); the CLS output reads the whole input (global: size = the input,
  stride 0, padding 0).
* :class:`ShuffleDecoder`: a U-Net-like decoder that upsamples with PixelShuffle (see
  :class:`ShuffleDecoder` for its derivation): size 12, stride 1, padding 5, misaligned.
* :class:`ScanStack`: 12 blocks of 3x3 SAME conv + ReLU written with ``nn.scan``: size
  ``1 + 12 * 2 = 25``, stride 1, padding 12.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def partition(x, w: int):
    """(B, H, W, C) -> (B * H/w * W/w, w * w, C): non-overlapping w x w windows."""
    b, h, wd, c = x.shape
    x = x.reshape(b, h // w, w, wd // w, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def unpartition(t, w: int, shape):
    """The inverse of :func:`partition` for a map of ``shape`` (B, H, W, C)."""
    b, h, wd, c = shape
    x = t.reshape(b, h // w, wd // w, w, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, c)


def grid_partition(x, g: int):
    """(B, H, W, C) -> (B * H/g * W/g, g * g, C): a g x g grid strided by (H/g, W/g)."""
    b, h, wd, c = x.shape
    x = x.reshape(b, g, h // g, g, wd // g, c).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, g * g, c)


def grid_unpartition(t, g: int, shape):
    b, h, wd, c = shape
    x = t.reshape(b, h // g, wd // g, g, g, c).transpose(0, 3, 1, 4, 2, 5)
    return x.reshape(b, h, wd, c)


def pixel_shuffle(x, r: int):
    """Depth-to-space: (B, H, W, r*r*C) -> (B, r H, r W, C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * r, w * r, c // (r * r))


class Attention(nn.Module):
    """Single-head self-attention over axis 1 of (groups, tokens, C)."""

    @nn.compact
    def __call__(self, t):
        c = t.shape[-1]
        q, k, v = (nn.Dense(c, name=n)(t) for n in ("q", "k", "v"))
        weights = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / jnp.sqrt(c), axis=-1)
        return nn.Dense(c, name="proj")(jnp.einsum("bij,bjc->bic", weights, v))


class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        return nn.Dense(c, name="fc2")(nn.gelu(nn.Dense(2 * c, name="fc1")(x)))


class SwinBlock(nn.Module):
    window: int = 7
    shift: int = 0

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(name="norm1")(x)
        if self.shift:
            y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
        y = unpartition(Attention(name="attn")(partition(y, self.window)), self.window, y.shape)
        if self.shift:
            y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
        x = x + y
        return x + Mlp(name="mlp")(nn.LayerNorm(name="norm2")(x))


class SwinPair(nn.Module):
    """Patch embedding 4x4/4 (8 channels), then W-MSA and SW-MSA (window 7, shift 3)."""

    channels: int = 8

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.channels, (4, 4), (4, 4), padding="VALID", name="patch_embed")(x)
        x = SwinBlock(shift=0, name="wmsa")(x)
        return SwinBlock(shift=3, name="swmsa")(x)


class MaxViTBlock(nn.Module):
    """MBConv (1x1, 3x3 depthwise, 1x1, residual), block attention, grid attention."""

    channels: int = 8
    block: int = 4
    grid: int = 4

    @nn.compact
    def __call__(self, x):
        c = self.channels
        x = nn.Conv(c, (1, 1), name="stem")(x)
        y = nn.gelu(nn.Conv(2 * c, (1, 1), name="mb_expand")(x))
        y = nn.gelu(nn.Conv(2 * c, (3, 3), feature_group_count=2 * c, name="mb_dw")(y))
        x = x + nn.Conv(c, (1, 1), name="mb_project")(y)
        y = partition(nn.LayerNorm(name="norm_block")(x), self.block)
        x = x + unpartition(Attention(name="block_attn")(y), self.block, x.shape)
        y = grid_partition(nn.LayerNorm(name="norm_grid")(x), self.grid)
        return x + grid_unpartition(Attention(name="grid_attn")(y), self.grid, x.shape)


class ViTRegisters(nn.Module):
    """ViT-S/16-like: patch 16, one CLS and ``registers`` register tokens, ``depth`` blocks;
    returns the CLS token's features (B, C)."""

    channels: int = 16
    depth: int = 2
    registers: int = 4

    @nn.compact
    def __call__(self, x):
        c = self.channels
        t = nn.Conv(c, (16, 16), (16, 16), padding="VALID", name="patch_embed")(x)
        b, h, w, _ = t.shape
        t = t.reshape(b, h * w, c)
        prefix = self.param("prefix", nn.initializers.normal(0.02), (1, 1 + self.registers, c))
        t = jnp.concatenate([jnp.broadcast_to(prefix, (b, 1 + self.registers, c)), t], axis=1)
        t = t + self.param("pos", nn.initializers.normal(0.02), (1, t.shape[1], c))
        for i in range(self.depth):
            t = t + Attention(name=f"attn{i}")(nn.LayerNorm(name=f"norm{i}a")(t))
            t = t + Mlp(name=f"mlp{i}")(nn.LayerNorm(name=f"norm{i}b")(t))
        return nn.LayerNorm(name="norm")(t)[:, 0]


class ShuffleDecoder(nn.Module):
    """A U-Net-like encoder-decoder upsampling with PixelShuffle.

    ``enc1`` 3x3 SAME, ``down`` 3x3 stride 2 SAME, ``mid`` 3x3 SAME, ``up`` 1x1 to 4x channels
    then PixelShuffle 2, concatenated with ``enc1`` (the skip), ``out`` 3x3 SAME.

    Per axis at even size ``n``: ``enc1`` row ``h`` reads ``[h - 1, h + 1]``; ``down`` (XLA
    SAME pads ``(0, 1)``) row ``i`` reads ``enc1`` rows ``2i..2i + 2``: input ``[2i - 1, 2i +
    3]``; ``mid`` reads ``[2i - 3, 2i + 5]``; after the shuffle row ``y`` reads ``mid`` row
    ``y // 2``. ``out`` row ``y`` reads shuffled rows ``y - 1..y + 1`` (the skip's reads lie
    inside): ``[2 ((y - 1) // 2) - 3, 2 ((y + 1) // 2) + 5]``, rows ``-1`` and ``n`` being
    padding, clipped to ``[0, n - 1]``.

    Distill paths: ``enc1 3/1/1``, ``down 5/2/1``, ``mid 9/2/3``; the shuffle is a nearest 2x
    upsampling (band ``r = 3/2, S = 1/2, P = 1/2``): ``r = 9 + 2 (1/2) = 10, S = 1, P = 3 + 1 =
    4`` (centre ``+1/2``), beside the skip ``3/1/1`` (centre 0): misaligned. ``out`` gives
    ``12/1/5`` and ``5/1/2``, whose hull ``[i - 5, i + 6]`` has size 12, stride 1, padding 5.
    """

    channels: int = 4

    @nn.compact
    def __call__(self, x):
        c = self.channels
        skip = nn.relu(nn.Conv(c, (3, 3), name="enc1")(x))
        y = nn.relu(nn.Conv(2 * c, (3, 3), (2, 2), name="down")(skip))
        y = nn.relu(nn.Conv(2 * c, (3, 3), name="mid")(y))
        y = pixel_shuffle(nn.Conv(4 * c, (1, 1), name="up")(y), 2)
        return nn.Conv(c, (3, 3), name="out")(jnp.concatenate([y, skip], axis=-1))


class _ScanBlock(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x, _):
        return nn.relu(nn.Conv(self.channels, (3, 3), name="conv")(x)), None


class ScanStack(nn.Module):
    """``depth`` blocks of 3x3 SAME conv + ReLU, one ``nn.scan`` over the stacked weights."""

    channels: int = 4
    depth: int = 12

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.channels, (1, 1), name="stem")(x)
        blocks = nn.scan(
            _ScanBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.depth,
        )(self.channels, name="blocks")
        return blocks(x, None)[0]
