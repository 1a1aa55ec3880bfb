"""Small building blocks shared by the zoo families (internal).

Every spatial operation here is a plain ``jax.lax`` / Flax call, so a traced network shows the
real primitive (``conv_general_dilated``, ``reduce_window_max``, ``pad``...) to the jaxpr walk:
no block records its own receptive-field arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

Padding = str | Sequence[tuple[int, int]]


class ConvUnit(nn.Module):
    """Convolution, then optional inference-mode batch norm, then optional activation (NHWC).

    This is TF-Slim's ``slim.conv2d`` under an ``arg_scope``: with ``norm=True`` the conv has no
    bias and batch norm uses its running statistics (an elementwise affine map, so it leaves the
    receptive field alone; training-mode batch norm would mix the whole image).
    """

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: Padding = "SAME"
    rate: int = 1
    groups: int = 1
    norm: bool = False
    activation: Callable[[jnp.ndarray], jnp.ndarray] | None = nn.relu

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(
            self.features,
            self.kernel,
            strides=self.stride,
            padding=self.padding,
            kernel_dilation=self.rate,
            feature_group_count=self.groups,
            use_bias=not self.norm,
            name="conv",
        )(x)
        if self.norm:
            x = nn.BatchNorm(use_running_average=True, name="bn")(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fixed_pad(x, kernel: int, rate: int = 1):
    """TF-Slim's explicit symmetric padding (``resnet_utils.conv2d_same`` for stride > 1).

    ``pad_total = k' - 1`` with ``k' = k + (k - 1)(rate - 1)``, ``pad_beg = pad_total // 2``,
    the rest after, on both spatial axes of an NHWC array; the following conv is VALID, so the
    padding no longer depends on the input size as SAME's does.
    """
    span = kernel + (kernel - 1) * (rate - 1)
    total = span - 1
    beg = total // 2
    return jnp.pad(x, ((0, 0), (beg, total - beg), (beg, total - beg), (0, 0)))


def max_pool(x, window: int, stride: int, padding: Padding = "VALID"):
    """Max pooling over the two spatial axes of an NHWC array."""
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=padding)


def avg_pool(x, window: int, stride: int, padding: Padding = "VALID"):
    """Average pooling as TensorFlow computes it: SAME padding is not counted in the mean."""
    return nn.avg_pool(
        x, (window, window), strides=(stride, stride), padding=padding, count_include_pad=False
    )


def scaled(depth: int, width: float, min_depth: int = 8) -> int:
    """Channel count ``max(int(depth * width), min_depth)`` (Slim's ``depth_multiplier``).

    Channels do not change a receptive field; narrow nets keep the tests fast.
    """
    return max(int(depth * width), min_depth)
