"""TF-Slim-faithful networks: AlexNet v2, VGG-16, ResNet v1 50/101/152, MobileNet v1, Inception v3.

Each follows the layer order, kernel sizes, strides and padding of ``tensorflow/models``,
``research/slim/nets/{alexnet,vgg,resnet_v1,resnet_utils,mobilenet_v1,inception_v3}.py``, so
that tracing it reproduces the receptive fields published with Araujo et al., Distill 2019
(shipped as :func:`jaxrf.models.araujo_table`). Arrays are NHWC. By default each network
stops at the end point of the published table (no classifier head); ``num_classes`` adds
Slim's head where that is cheap.

``width`` scales every channel count (Slim's ``depth_multiplier``): receptive fields do not
depend on channels, and narrow nets keep tests fast. ``width=1.0`` is the published network.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ._blocks import ConvUnit, avg_pool, fixed_pad, max_pool, scaled


def check_end_point(end_point: str | None, known: Sequence[str], network: str) -> None:
    """Raise ValueError unless ``end_point`` is None or one of ``known`` (Slim's names)."""
    if end_point is not None and end_point not in known:
        raise ValueError(
            f"`end_point` (={end_point!r}) is not an end point of {network}; use one of "
            f"{', '.join(known)} (or None for the last)."
        )


# ---------------------------------------------------------------------------------------
# AlexNet v2 and VGG-16: single-path nets (Slim's alexnet.py, vgg.py).
# ---------------------------------------------------------------------------------------


class AlexNetV2(nn.Module):
    """Slim ``alexnet_v2`` up to ``pool5``: convs SAME (conv1 VALID), max pools 3x3/2 VALID.

    With ``num_classes``, Slim's fully-convolutional head follows: ``fc6`` 5x5 VALID (a 1x1
    map at input 224), ``fc7`` and ``fc8`` 1x1 (dropout omitted: inference). ``end_point``
    stops early at one of :attr:`END_POINTS`.
    """

    END_POINTS = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")
    width: float = 1.0
    num_classes: int | None = None
    end_point: str | None = None

    @nn.compact
    def __call__(self, x):
        check_end_point(self.end_point, self.END_POINTS, "alexnet_v2")
        d = lambda n: scaled(n, self.width)  # noqa: E731
        layers = [
            ("conv1", ConvUnit(d(64), (11, 11), stride=4, padding="VALID", name="conv1")),
            ("pool1", lambda x: max_pool(x, 3, 2)),
            ("conv2", ConvUnit(d(192), (5, 5), name="conv2")),
            ("pool2", lambda x: max_pool(x, 3, 2)),
            ("conv3", ConvUnit(d(384), (3, 3), name="conv3")),
            ("conv4", ConvUnit(d(384), (3, 3), name="conv4")),
            ("conv5", ConvUnit(d(256), (3, 3), name="conv5")),
            ("pool5", lambda x: max_pool(x, 3, 2)),  # the published end point
        ]
        for name, layer in layers:
            x = layer(x)
            if name == self.end_point:
                return x
        if self.num_classes is not None:
            x = ConvUnit(d(4096), (5, 5), padding="VALID", name="fc6")(x)
            x = ConvUnit(d(4096), (1, 1), name="fc7")(x)
            x = ConvUnit(self.num_classes, (1, 1), activation=None, name="fc8")(x)
        return x


class VGG16(nn.Module):
    """Slim ``vgg_16`` up to ``pool5``: 3x3 SAME convs in blocks of 2, 2, 3, 3, 3, max pools 2x2/2.

    With ``num_classes``: ``fc6`` 7x7 VALID, ``fc7``/``fc8`` 1x1 (Slim's conv head).
    ``end_point`` (Slim's names, e.g. ``"conv3/conv3_2"``, ``"pool3"``) stops early.
    """

    BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
    END_POINTS = tuple(
        name
        for b, (repeat, _) in enumerate(BLOCKS, start=1)
        for name in [f"conv{b}/conv{b}_{u}" for u in range(1, repeat + 1)] + [f"pool{b}"]
    )
    width: float = 1.0
    num_classes: int | None = None
    end_point: str | None = None

    @nn.compact
    def __call__(self, x):
        check_end_point(self.end_point, self.END_POINTS, "vgg_16")
        for b, (repeat, depth) in enumerate(self.BLOCKS, start=1):
            for u in range(1, repeat + 1):
                x = ConvUnit(scaled(depth, self.width), (3, 3), name=f"conv{b}_{u}")(x)
                if self.end_point == f"conv{b}/conv{b}_{u}":
                    return x
            x = max_pool(x, 2, 2)
            if self.end_point == f"pool{b}":
                return x
        if self.num_classes is not None:
            x = ConvUnit(scaled(4096, self.width), (7, 7), padding="VALID", name="fc6")(x)
            x = ConvUnit(scaled(4096, self.width), (1, 1), name="fc7")(x)
            x = ConvUnit(self.num_classes, (1, 1), activation=None, name="fc8")(x)
        return x


# ---------------------------------------------------------------------------------------
# ResNet v1 (Slim's resnet_v1.py and resnet_utils.py).
# ---------------------------------------------------------------------------------------


class Conv2dSame(nn.Module):
    """Slim ``resnet_utils.conv2d_same``: SAME when ``stride == 1``, else explicit symmetric
    padding (:func:`fixed_pad`) and a VALID conv, so the padding does not depend on the size."""

    features: int
    kernel: int
    stride: int
    rate: int = 1

    @nn.compact
    def __call__(self, x):
        k = (self.kernel, self.kernel)
        if self.stride == 1:
            return ConvUnit(self.features, k, rate=self.rate, norm=True, name="unit")(x)
        x = fixed_pad(x, self.kernel, self.rate)
        return ConvUnit(
            self.features, k, self.stride, "VALID", rate=self.rate, norm=True, name="unit"
        )(x)


class SlimBottleneck(nn.Module):
    """Slim ``resnet_v1.bottleneck``: 1x1, 3x3 (the stride, via :class:`Conv2dSame`), 1x1.

    Shortcut: Slim's ``subsample`` (a 1x1 max pool with the unit's stride) when the depth is
    unchanged, else a 1x1 conv with that stride.
    """

    depth: int
    depth_bottleneck: int
    stride: int

    @nn.compact
    def __call__(self, x):
        if x.shape[-1] == self.depth:
            shortcut = x if self.stride == 1 else max_pool(x, 1, self.stride, "SAME")
        else:
            shortcut = ConvUnit(
                self.depth, (1, 1), self.stride, norm=True, activation=None, name="shortcut"
            )(x)
        r = ConvUnit(self.depth_bottleneck, (1, 1), norm=True, name="conv1")(x)
        r = Conv2dSame(self.depth_bottleneck, 3, self.stride, name="conv2")(r)
        r = ConvUnit(self.depth, (1, 1), norm=True, activation=None, name="conv3")(r)
        return nn.relu(shortcut + r)


#: Slim's ``resnet_v1_block(scope, base_depth, num_units, stride)`` per depth.
RESNET_V1_BLOCKS = {
    50: ((64, 3, 2), (128, 4, 2), (256, 6, 2), (512, 3, 1)),
    101: ((64, 3, 2), (128, 4, 2), (256, 23, 2), (512, 3, 1)),
    152: ((64, 3, 2), (128, 8, 2), (256, 36, 2), (512, 3, 1)),
}


class ResNetV1(nn.Module):
    """Slim ``resnet_v1_{50,101,152}`` up to ``block4`` (``output_stride`` None, no atrous).

    Root: ``conv2d_same`` 7x7/2 (explicit padding 3, 3), max pool 3x3/2 SAME. Block ``b`` of
    ``(base_depth, num_units, stride)``: ``num_units - 1`` units of stride 1, then one of
    stride ``stride``: Slim puts the stride in the LAST unit (torchvision in the first; see
    :class:`jaxrf.models.resnet.TorchResNet`). With ``num_classes``: global mean + dense.
    """

    blocks: Sequence[tuple[int, int, int]]
    width: float = 1.0
    num_classes: int | None = None
    end_point: str | None = None

    @nn.compact
    def __call__(self, x):
        blocks = [f"block{b + 1}" for b in range(len(self.blocks))]
        check_end_point(self.end_point, blocks, "resnet_v1")
        x = Conv2dSame(scaled(64, self.width), 7, 2, name="conv1")(x)
        x = max_pool(x, 3, 2, "SAME")  # pool1
        for b, (base, units, stride) in enumerate(self.blocks):
            depth, bottleneck = scaled(4 * base, self.width), scaled(base, self.width)
            for u in range(units):
                unit_stride = stride if u == units - 1 else 1
                x = SlimBottleneck(
                    depth, bottleneck, unit_stride, name=f"block{b + 1}_unit{u + 1}"
                )(x)
            if self.end_point == blocks[b]:
                return x
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, name="logits")(jnp.mean(x, axis=(1, 2)))
        return x


def resnet_v1(
    depth: int = 50,
    width: float = 1.0,
    num_classes: int | None = None,
    end_point: str | None = None,
) -> ResNetV1:
    """Slim ResNet v1 of the given depth (50, 101 or 152); ``end_point`` block1..block4.

    Example:
        >>> resnet_v1(50).blocks[0]
        (64, 3, 2)
    """
    if depth not in RESNET_V1_BLOCKS:
        raise ValueError(
            f"`depth` (={depth!r}) must be one of {sorted(RESNET_V1_BLOCKS)}, the Slim ResNet v1 "
            "depths in the zoo."
        )
    return ResNetV1(RESNET_V1_BLOCKS[depth], width, num_classes, end_point)


# ---------------------------------------------------------------------------------------
# MobileNet v1 (Slim's mobilenet_v1.py, use_explicit_padding=False).
# ---------------------------------------------------------------------------------------

#: ``(stride, depth)`` of Conv2d_0, then of the 13 depthwise-separable layers
#: (Slim's ``MOBILENETV1_CONV_DEFS``).
MOBILENET_V1_DEFS = (
    (2, 32),
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
)


class MobileNetV1(nn.Module):
    """Slim ``mobilenet_v1`` up to ``Conv2d_13_pointwise``; every conv SAME, BN, ReLU6.

    ``Conv2d_0`` is a 3x3 conv; each later layer ``i`` is a 3x3 depthwise conv carrying the
    stride (``Conv2d_i_depthwise``) then a 1x1 conv (``Conv2d_i_pointwise``). With
    ``num_classes``: global mean + dense. ``end_point`` stops at one of those names.
    """

    END_POINTS = ("Conv2d_0",) + tuple(
        f"Conv2d_{i}_{kind}" for i in range(1, 14) for kind in ("depthwise", "pointwise")
    )
    width: float = 1.0
    num_classes: int | None = None
    end_point: str | None = None

    @nn.compact
    def __call__(self, x):
        check_end_point(self.end_point, self.END_POINTS, "mobilenet_v1")
        (stride, depth), *separable = MOBILENET_V1_DEFS
        act = nn.relu6
        x = ConvUnit(
            scaled(depth, self.width), (3, 3), stride, norm=True, activation=act, name="Conv2d_0"
        )(x)
        if self.end_point == "Conv2d_0":
            return x
        for i, (stride, depth) in enumerate(separable, start=1):
            c = x.shape[-1]
            name = f"Conv2d_{i}_depthwise"
            x = ConvUnit(c, (3, 3), stride, groups=c, norm=True, activation=act, name=name)(x)
            if self.end_point == name:
                return x
            name = f"Conv2d_{i}_pointwise"
            x = ConvUnit(scaled(depth, self.width), (1, 1), norm=True, activation=act, name=name)(x)
            if self.end_point == name:
                return x
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, name="logits")(jnp.mean(x, axis=(1, 2)))
        return x


# ---------------------------------------------------------------------------------------
# Inception v3 (Slim's inception_v3.py, inception_v3_base).
# ---------------------------------------------------------------------------------------


class _Tower(nn.Module):
    """A chain of Slim convs ``(depth, (kh, kw), stride, padding)`` with BN and ReLU."""

    specs: Sequence[tuple[int, tuple[int, int], int, str]]

    @nn.compact
    def __call__(self, x):
        for i, (depth, kernel, stride, padding) in enumerate(self.specs):
            x = ConvUnit(depth, kernel, stride, padding, norm=True, name=f"conv{i}")(x)
        return x


class InceptionV3(nn.Module):
    """Slim ``inception_v3_base`` up to ``Mixed_7c``; with ``num_classes``, mean + dense.

    Stem (stride 1 and VALID unless told): ``Conv2d_1a_3x3``/2, ``Conv2d_2a_3x3``,
    ``Conv2d_2b_3x3`` SAME, ``MaxPool_3a_3x3``/2, ``Conv2d_3b_1x1``, ``Conv2d_4a_3x3``,
    ``MaxPool_5a_3x3``/2; then the Mixed blocks with SAME padding except their stride-2
    reductions (``Mixed_6a``, ``Mixed_7a``: VALID). ``width`` is Slim's ``depth_multiplier``
    (``min_depth`` 16). ``end_point`` stops at one of :attr:`END_POINTS`.
    """

    END_POINTS = (
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "MaxPool_3a_3x3",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "MaxPool_5a_3x3",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
        "Mixed_7a",
        "Mixed_7b",
        "Mixed_7c",
    )
    width: float = 1.0
    num_classes: int | None = None
    end_point: str | None = None

    def d(self, n: int) -> int:
        return scaled(n, self.width, min_depth=16)

    def tower(self, x, name, *specs):
        specs = [(self.d(c), k, s, p) for c, k, s, p in specs]
        return _Tower(specs, name=name)(x)

    def conv(self, x, name, depth, kernel, stride=1, padding="SAME"):
        return self.tower(x, name, (depth, kernel, stride, padding))

    def pool_branch(self, x, name, depth):
        return self.conv(avg_pool(x, 3, 1, "SAME"), name, depth, (1, 1))

    @nn.compact
    def __call__(self, x):
        check_end_point(self.end_point, self.END_POINTS, "inception_v3")
        V = "VALID"
        x = self.conv(x, "Conv2d_1a_3x3", 32, (3, 3), 2, V)
        if self.end_point == "Conv2d_1a_3x3":
            return x
        x = self.conv(x, "Conv2d_2a_3x3", 32, (3, 3), 1, V)
        if self.end_point == "Conv2d_2a_3x3":
            return x
        x = self.conv(x, "Conv2d_2b_3x3", 64, (3, 3), 1, "SAME")
        if self.end_point == "Conv2d_2b_3x3":
            return x
        x = max_pool(x, 3, 2)  # MaxPool_3a_3x3
        if self.end_point == "MaxPool_3a_3x3":
            return x
        x = self.conv(x, "Conv2d_3b_1x1", 80, (1, 1), 1, V)
        if self.end_point == "Conv2d_3b_1x1":
            return x
        x = self.conv(x, "Conv2d_4a_3x3", 192, (3, 3), 1, V)
        if self.end_point == "Conv2d_4a_3x3":
            return x
        x = max_pool(x, 3, 2)  # MaxPool_5a_3x3
        if self.end_point == "MaxPool_5a_3x3":
            return x

        for name, pool_depth in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = jnp.concatenate(
                [
                    self.conv(x, f"{name}_0", 64, (1, 1)),
                    self.tower(x, f"{name}_1", (48, (1, 1), 1, "SAME"), (64, (5, 5), 1, "SAME")),
                    self.tower(
                        x,
                        f"{name}_2",
                        (64, (1, 1), 1, "SAME"),
                        (96, (3, 3), 1, "SAME"),
                        (96, (3, 3), 1, "SAME"),
                    ),
                    self.pool_branch(x, f"{name}_3", pool_depth),
                ],
                axis=-1,
            )
            if self.end_point == name:
                return x

        x = jnp.concatenate(  # Mixed_6a
            [
                self.conv(x, "Mixed_6a_0", 384, (3, 3), 2, V),
                self.tower(
                    x,
                    "Mixed_6a_1",
                    (64, (1, 1), 1, "SAME"),
                    (96, (3, 3), 1, "SAME"),
                    (96, (3, 3), 2, V),
                ),
                max_pool(x, 3, 2),
            ],
            axis=-1,
        )
        if self.end_point == "Mixed_6a":
            return x

        for name, mid in (
            ("Mixed_6b", 128),
            ("Mixed_6c", 160),
            ("Mixed_6d", 160),
            ("Mixed_6e", 192),
        ):
            x = jnp.concatenate(
                [
                    self.conv(x, f"{name}_0", 192, (1, 1)),
                    self.tower(
                        x,
                        f"{name}_1",
                        (mid, (1, 1), 1, "SAME"),
                        (mid, (1, 7), 1, "SAME"),
                        (192, (7, 1), 1, "SAME"),
                    ),
                    self.tower(
                        x,
                        f"{name}_2",
                        (mid, (1, 1), 1, "SAME"),
                        (mid, (7, 1), 1, "SAME"),
                        (mid, (1, 7), 1, "SAME"),
                        (mid, (7, 1), 1, "SAME"),
                        (192, (1, 7), 1, "SAME"),
                    ),
                    self.pool_branch(x, f"{name}_3", 192),
                ],
                axis=-1,
            )
            if self.end_point == name:
                return x

        x = jnp.concatenate(  # Mixed_7a
            [
                self.tower(x, "Mixed_7a_0", (192, (1, 1), 1, "SAME"), (320, (3, 3), 2, V)),
                self.tower(
                    x,
                    "Mixed_7a_1",
                    (192, (1, 1), 1, "SAME"),
                    (192, (1, 7), 1, "SAME"),
                    (192, (7, 1), 1, "SAME"),
                    (192, (3, 3), 2, V),
                ),
                max_pool(x, 3, 2),
            ],
            axis=-1,
        )
        if self.end_point == "Mixed_7a":
            return x

        for name in ("Mixed_7b", "Mixed_7c"):
            b1 = self.conv(x, f"{name}_1a", 384, (1, 1))
            b2 = self.tower(x, f"{name}_2a", (448, (1, 1), 1, "SAME"), (384, (3, 3), 1, "SAME"))
            x = jnp.concatenate(
                [
                    self.conv(x, f"{name}_0", 320, (1, 1)),
                    jnp.concatenate(
                        [
                            self.conv(b1, f"{name}_1b", 384, (1, 3)),
                            self.conv(b1, f"{name}_1c", 384, (3, 1)),
                        ],
                        axis=-1,
                    ),
                    jnp.concatenate(
                        [
                            self.conv(b2, f"{name}_2b", 384, (1, 3)),
                            self.conv(b2, f"{name}_2c", 384, (3, 1)),
                        ],
                        axis=-1,
                    ),
                    self.pool_branch(x, f"{name}_3", 192),
                ],
                axis=-1,
            )
            if self.end_point == name:
                return x
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, name="logits")(jnp.mean(x, axis=(1, 2)))
        return x
