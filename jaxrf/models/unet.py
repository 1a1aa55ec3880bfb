"""A small U-Net with transposed-convolution upsampling (Ronneberger et al., 2015, in miniature).

Encoder: per level two 3x3 SAME convs then a 2x2/2 max pool; a bottleneck of two 3x3 convs;
decoder: per level a 2x2/2 transposed conv (``flax.linen.ConvTranspose``, SAME), a channel
concatenation with the encoder map of the same level, two 3x3 convs; a final 1x1 conv. NHWC.

Hand derivation for two levels (the zoo's ``unet``), per axis. A 3x3 SAME conv at effective
stride ``S`` adds ``2 S`` to the size ``r`` and ``S`` to the padding ``P``; the 2x2/2 pool adds
``S`` to ``r``, keeps ``P`` and doubles ``S``. The transposed conv is, in ``jax.lax``, an input
dilation ``D = 2`` with kernel 2 and padding ``(1, 1)`` (``lax._conv_transpose_padding`` for
SAME: ``k - 1 = 1`` before since ``s > k - 1``), so it adds ``S (k - 1)/D = S/2`` to ``r``,
``S p/D = S/2`` to ``P``, and halves ``S``:

=========================  ====  ===  ===
map                          r     S    P
=========================  ====  ===  ===
enc1 (2 convs)               5    1    2
pool1                        6    2    2
enc2 (2 convs)              14    2    6
pool2                       16    4    6
bottleneck (2 convs)        32    4   14
up2 (transposed)            34    2   16
concat with enc2            34    2   16
dec2 (2 convs)              42    2   20
up1 (transposed)            43    1   21
concat with enc1            43    1   21
dec1 (2 convs), 1x1 head    47    1   23
=========================  ====  ===  ===

Both concatenations are aligned: centre offsets ``(r - 1)/2 - P`` are ``1/2`` at ``up2`` and
``enc2`` (``33/2 - 16``, ``13/2 - 6``), and ``0`` at ``up1`` and ``enc1`` (``21 - 21``, ``2 - 2``).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ._blocks import ConvUnit, max_pool


class UNet(nn.Module):
    """U-Net with ``levels`` pooling steps and ``features`` channels at the first level.

    The input's height and width must be divisible by ``2 ** levels``.
    """

    levels: int = 2
    features: int = 8
    out_features: int = 2

    @nn.compact
    def __call__(self, x):
        skips = []
        for level in range(self.levels):
            c = self.features * 2**level
            x = ConvUnit(c, (3, 3), name=f"enc{level + 1}a")(x)
            x = ConvUnit(c, (3, 3), name=f"enc{level + 1}b")(x)
            skips.append(x)
            x = max_pool(x, 2, 2)
        c = self.features * 2**self.levels
        x = ConvUnit(c, (3, 3), name="bottleneck_a")(x)
        x = ConvUnit(c, (3, 3), name="bottleneck_b")(x)
        for level in reversed(range(self.levels)):
            c = self.features * 2**level
            x = nn.ConvTranspose(c, (2, 2), strides=(2, 2), padding="SAME", name=f"up{level + 1}")(
                x
            )
            x = jnp.concatenate([x, skips[level]], axis=-1)
            x = ConvUnit(c, (3, 3), name=f"dec{level + 1}a")(x)
            x = ConvUnit(c, (3, 3), name=f"dec{level + 1}b")(x)
        return nn.Conv(self.out_features, (1, 1), name="head")(x)
