"""A DeepLab-style dilated network: strided stem, atrous convs, atrous spatial pyramid pooling.

In the spirit of DeepLab v3 (Chen et al., 2017), scaled down: a stem of 3x3 convs with
``log2(output_stride)`` stride-2 steps, two atrous 3x3 convs, then ASPP (a 1x1 branch and three
atrous 3x3 branches, concatenated on channels), a 1x1 projection and a 1x1 classifier. The
image-pooling branch of ASPP is left out: it makes every output read the whole image. All
convs are SAME, NHWC.

Like DeepLab's 513 crops, the default input size 129 = 8 * 16 + 1 keeps every stride-2 input
odd, so SAME pads 3x3/2 convs by ``(1, 1)`` (``n % 2 == 1``: total ``k - 1 = 2``): symmetric,
hence aligned branches and an effective padding that does not change with the stride.

Hand derivation at input 129 (a 3x3 conv of dilation ``d`` at effective stride ``S`` adds
``2 d S`` to ``r`` and ``d S`` to ``P``; stride 2 doubles ``S`` after the layer):

* ``output_stride=8``: stem ``(r, S, P)`` 3/2/1, 7/2/3, 11/4/5, 19/8/9; body rates 2, 4:
  51/8/25, 115/8/57; ASPP rates 12, 24, 36: the largest branch adds ``2 * 36 * 8 = 576``
  and ``288``: **691 / 8 / 345**.
* ``output_stride=16``: stem 3/2/1, 7/2/3, 11/4/5, 19/8/9, 35/16/17; body rates 1, 2:
  67/16/33, 131/16/65; ASPP rates 6, 12, 18: ``+ 2 * 18 * 16 = 576``, ``+ 288``:
  **707 / 16 / 353**.

Every ASPP branch is centred (odd span, symmetric SAME padding at stride 1), so the
concatenation is aligned: size of the largest branch, its padding.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ._blocks import ConvUnit

#: ``output_stride -> (stride-2 stem convs after the first, body rates, ASPP rates)``.
DEEPLAB_CONFIGS = {
    8: (2, (2, 4), (12, 24, 36)),
    16: (3, (1, 2), (6, 12, 18)),
}


class DeepLab(nn.Module):
    """Dilated segmentation net with output stride 8 or 16 (input NHWC, output NHWC logits)."""

    output_stride: int = 8
    features: int = 16
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        if self.output_stride not in DEEPLAB_CONFIGS:
            raise ValueError(
                f"`output_stride` (={self.output_stride!r}) must be one of "
                f"{sorted(DEEPLAB_CONFIGS)}; DeepLab uses 8 or 16."
            )
        steps, body_rates, aspp_rates = DEEPLAB_CONFIGS[self.output_stride]
        c = self.features
        x = ConvUnit(c, (3, 3), 2, name="stem1")(x)
        x = ConvUnit(c, (3, 3), 1, name="stem2")(x)
        for i in range(steps):
            x = ConvUnit(c, (3, 3), 2, name=f"down{i + 1}")(x)
        for rate in body_rates:
            x = ConvUnit(c, (3, 3), rate=rate, name=f"atrous{rate}")(x)
        branches = [ConvUnit(c, (1, 1), name="aspp_1x1")(x)]
        branches += [ConvUnit(c, (3, 3), rate=r, name=f"aspp_rate{r}")(x) for r in aspp_rates]
        x = ConvUnit(c, (1, 1), name="project")(jnp.concatenate(branches, axis=-1))
        return nn.Conv(self.num_classes, (1, 1), name="logits")(x)
