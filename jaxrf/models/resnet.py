"""ResNet-50 in torchvision's layout, to show why published ResNet receptive fields disagree.

torchvision (``torchvision/models/resnet.py``, "ResNet v1.5") puts each stage's stride in its
FIRST bottleneck, on the 3x3 conv (padding 1); the stem is a 7x7/2 conv with padding 3 and a
3x3/2 max pool with padding 1. TF-Slim's ResNet v1 (:mod:`jaxrf.models.slim`) puts the stride
in the LAST unit of blocks 1-3, so more of its 3x3 convs run at the coarser resolution and its
receptive field is larger: 483 against 427 at ResNet-50's last block.

Hand derivation for this layout, per axis (``r`` size, ``S`` effective stride, ``P`` effective
padding; a layer ``(k, s, p)`` maps ``r += (k - 1) S``, ``P += p S``, ``S *= s``; 1x1 convs and
the shortcuts change nothing):

====================  ====  ===  ===
layer                  r     S    P
====================  ====  ===  ===
conv1 7x7/2 p3          7    2    3
maxpool 3x3/2 p1       11    4    5
layer1: 3 x 3x3/1      35    4   17
layer2: 3x3/2 first    43    8   21
  + 3 x 3x3/1          91    8   45
layer3: 3x3/2 first   107   16   53
  + 5 x 3x3/1         267   16  133
layer4: 3x3/2 first   299   32  149
  + 2 x 3x3/1         427   32  213
====================  ====  ===  ===

The 1x1 stride-2 downsample shortcut keeps ``r`` and ``P`` and doubles ``S``: its centre
offset ``(r - 1)/2 - P`` equals the main path's (``+S`` from the 3x3's size, ``-S`` from its
padding), so every merge is aligned.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ._blocks import ConvUnit, max_pool, scaled

PAD1 = ((1, 1), (1, 1))


class TorchBottleneck(nn.Module):
    """torchvision ``Bottleneck``: 1x1, 3x3 (stride, padding 1), 1x1 x4; 1x1/stride downsample."""

    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        out = 4 * self.planes
        if self.stride != 1 or x.shape[-1] != out:
            shortcut = ConvUnit(
                out, (1, 1), self.stride, "VALID", norm=True, activation=None, name="downsample"
            )(x)
        else:
            shortcut = x
        y = ConvUnit(self.planes, (1, 1), 1, "VALID", norm=True, name="conv1")(x)
        y = ConvUnit(self.planes, (3, 3), self.stride, PAD1, norm=True, name="conv2")(y)
        y = ConvUnit(out, (1, 1), 1, "VALID", norm=True, activation=None, name="conv3")(y)
        return nn.relu(shortcut + y)


class TorchResNet(nn.Module):
    """torchvision ResNet up to ``layer4``; ``layers`` = units per stage ((3, 4, 6, 3) = 50)."""

    layers: Sequence[int] = (3, 4, 6, 3)
    width: float = 1.0
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x):
        x = ConvUnit(scaled(64, self.width), (7, 7), 2, ((3, 3), (3, 3)), norm=True, name="conv1")(
            x
        )
        x = max_pool(x, 3, 2, PAD1)
        for stage, units in enumerate(self.layers):
            planes = scaled(64 * 2**stage, self.width)
            for u in range(units):
                stride = 2 if (u == 0 and stage > 0) else 1
                x = TorchBottleneck(planes, stride, name=f"layer{stage + 1}_{u}")(x)
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))
        return x
