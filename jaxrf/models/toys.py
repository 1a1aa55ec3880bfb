"""Toy networks: Luo et al.'s conv stacks and the Distill article's two-branch examples.

* :class:`LuoStack`: ``depth`` layers of ``kernel x kernel`` convs as in Luo, Li, Urtasun and
  Zemel, "Understanding the Effective Receptive Field in Deep CNNs" (NeurIPS 2016), with the
  knobs the paper turns: uniform or random weights, a nonlinearity (none, ReLU, tanh, sigmoid),
  dropout, subsampling (stride 2), dilation, and residual skip connections.
* :class:`TwoBranch`: the shape of Araujo et al.'s (Distill 2019) alignment figures:
  three convolutions on two branches, then an addition. The extracted article lost the figures'
  layer parameters, so the two toys here are our construction following its text ("padding is
  used only for the left branch"); their numbers are hand-derived below, not quoted.

Every layer pads symmetrically by ``(k' - 1) // 2`` (``k'`` the dilated span) on both sides;
for odd ``k'`` that centres each layer, which is what makes residual skips aligned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

NONLINEARITIES = {
    "none": None,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
}
WEIGHTS = ("uniform", "random")


def _check_choice(value, argument: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"`{argument}` (={value!r}) must be one of {list(choices)}.")


class LuoStack(nn.Module):
    """``depth`` ``kernel x kernel`` convs, stride 1 except at ``subsample`` (stride 2). NHWC.

    Args:
        depth: number of conv layers ``n``.
        kernel: kernel size ``k``.
        features: channels of every layer.
        weights: ``"uniform"``: every kernel entry ``1 / (k^2 c_in)``, bias 0 (Luo's uniform
            case: each layer is a normalised box filter); ``"random"``: He-normal kernels
            (variance ``2 / (k^2 c_in)``, as the zoo's shape fill), bias 0.
        nonlinearity: ``"none"``, ``"relu"``, ``"tanh"`` or ``"sigmoid"`` after every conv.
        dropout: dropout rate after every layer; inactive when ``deterministic`` (then ``apply``
            needs no RNG), else ``apply`` needs ``rngs={"dropout": key}``.
        deterministic: see ``dropout``.
        subsample: 0-based indices of the layers with stride 2.
        dilation: kernel dilation of every layer.
        skip: residual connections ``x + f(x)`` around every layer whose input already has
            ``features`` channels (all but the first on a narrower input); at a subsampling
            layer the shortcut is the strided slice ``x[:, ::2, ::2]``. Needs an odd span so
            both paths stay centred.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = LuoStack(depth=2, kernel=3, features=1)
        >>> x = jnp.zeros((1, 8, 8, 1))
        >>> model.apply(model.init(jax.random.key(0), x), x).shape
        (1, 8, 8, 1)
    """

    depth: int = 5
    kernel: int = 3
    features: int = 4
    weights: str = "uniform"
    nonlinearity: str = "none"
    dropout: float = 0.0
    deterministic: bool = True
    subsample: Sequence[int] = ()
    dilation: int = 1
    skip: bool = False

    @nn.compact
    def __call__(self, x):
        _check_choice(self.weights, "weights", WEIGHTS)
        _check_choice(self.nonlinearity, "nonlinearity", NONLINEARITIES)
        span = self.dilation * (self.kernel - 1) + 1
        if self.skip and span % 2 == 0:
            raise ValueError(
                f"`skip=True` needs an odd dilated span, but kernel={self.kernel}, "
                f"dilation={self.dilation} give {span}: the residual and conv paths would be "
                "misaligned by half a pixel. Use an odd kernel."
            )
        bad = [i for i in self.subsample if not 0 <= i < self.depth]
        if bad:
            raise ValueError(
                f"`subsample` (={tuple(self.subsample)}) lists layers {bad} outside "
                f"0..{self.depth - 1}; give 0-based layer indices below `depth`."
            )
        pad = ((span - 1) // 2, span - 1 - (span - 1) // 2)
        act = NONLINEARITIES[self.nonlinearity]
        for layer in range(self.depth):
            stride = 2 if layer in self.subsample else 1
            c_in = x.shape[-1]
            if self.weights == "uniform":
                init = nn.initializers.constant(1.0 / (self.kernel**2 * c_in))
            else:
                init = nn.initializers.normal(math.sqrt(2.0 / (self.kernel**2 * c_in)))
            y = nn.Conv(
                self.features,
                (self.kernel, self.kernel),
                strides=stride,
                padding=(pad, pad),
                kernel_dilation=self.dilation,
                kernel_init=init,
                name=f"conv{layer}",
            )(x)
            if act is not None:
                y = act(y)
            if self.dropout:
                y = nn.Dropout(self.dropout)(y, deterministic=self.deterministic)
            if self.skip and c_in == self.features:
                if stride > 1:
                    x = lax.slice(x, (0, 0, 0, 0), x.shape, (1, stride, stride, 1))
                y = x + y
            x = y
        return x


class TwoBranch(nn.Module):
    """Two branches from the input, added: the Distill article's alignment toys. NHWC.

    Left branch: a 3x3 conv (stride 1, padding 1: the only padding in the net), then a 1x1
    conv with stride 2. Right branch: one conv with stride 2, no padding, of size
    ``right_kernel``. Per axis the left path has size 3, stride 2, padding 1, so output ``i``
    sees ``[2i - 1, 2i + 1]``, centred on ``2i``:

    * ``right_kernel=1`` (**aligned**): the right path sees ``[2i, 2i]``, also centred on
      ``2i``; the sum has size 3, stride 2, padding 1.
    * ``right_kernel=2`` (**misaligned**): the right path sees ``[2i, 2i + 1]``, centred on
      ``2i + 1/2``: stride 2, padding 0, size 2, offset ``1/2`` against the left's ``0``. The
      union is still ``[2i - 1, 2i + 1]`` (size 3, stride 2, padding 1), but the centre of
      the region is no longer one affine function of ``i`` for both paths.

    On an even input ``n`` both branches give ``n / 2`` outputs.
    """

    right_kernel: int = 1
    features: int = 2

    @nn.compact
    def __call__(self, x):
        k = self.right_kernel
        left = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="left1")(x)
        left = nn.Conv(self.features, (1, 1), strides=2, padding="VALID", name="left2")(left)
        right = nn.Conv(self.features, (k, k), strides=2, padding="VALID", name="right")(x)
        return left + right
