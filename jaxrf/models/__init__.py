"""jaxrf's model zoo: Flax networks with their published or hand-derived receptive fields.

Each :class:`ZooEntry` names a network, a builder, a default input shape ``(batch, H, W, C)``
(NHWC) and, where known, the expected receptive field with its source. The numbers are never
computed from a layer list written beside the model: a test traces the Flax model itself with
:func:`jaxrf.receptive_field` and compares.

Why Flax **linen** rather than NNX: a linen module is a pure description and its weights a
separate pytree, so ``lambda x: model.apply(params, x)`` closes over the weights and traces to a
clean jaxpr whose only input is ``x`` (weights become constants), which is exactly what the
jaxpr walk and the gradient probes take. NNX modules carry mutable state that must be split
(``nnx.split``/``nnx.merge``) before the same trace, and the classic architectures (TF-Slim
ports, torchvision ports) read most directly as linen's ``@nn.compact``.

Weights are random (no downloads). Large nets are initialised from their parameter *shapes*
(``jax.eval_shape`` of ``model.init``, no compilation) then filled: He-normal kernels, zero
biases, batch-norm scale 1, mean 0, variance 1, so building a zoo net compiles nothing
(``jax.jit(model.init)`` would compile the whole initialiser).

Example:
    >>> import jax.numpy as jnp
    >>> import jaxrf.models
    >>> entry = jaxrf.models.get("luo_uniform")
    >>> entry.input_shape, entry.expected.size
    ((1, 32, 32, 1), (11, 11))
    >>> fn = entry.build()
    >>> fn(jnp.zeros(entry.input_shape)).shape
    (1, 32, 32, 4)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import deeplab, modern, mtcnn, resnet, slim, toys, unet
from .araujo import AraujoRow as AraujoRow
from .araujo import araujo_row as araujo_row
from .araujo import araujo_table as araujo_table

Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class Expected:
    """Expected receptive field of a zoo entry at its default input shape, per spatial axis.

    Attributes:
        size: Distill's ``r_0`` per axis.
        stride: effective stride ``S_0`` per axis.
        padding: effective padding ``P_0`` per axis.
        aligned: False when the network's paths are misaligned; ``size``/``stride``/``padding``
            are then :class:`jaxrf.ReceptiveField`'s summary of the union.
        source: where the numbers come from (a published table row or a hand derivation).
        is_global: True when every output reads the whole input (global attention); the
            summary is then the input size, stride 0, padding 0.
    """

    size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    source: str
    aligned: bool = True
    is_global: bool = False


def _square(size: int, stride: int, padding: int, source: str, aligned: bool = True) -> Expected:
    return Expected((size, size), (stride, stride), (padding, padding), source, aligned)


@dataclass(frozen=True)
class ZooEntry:
    """One network of the zoo.

    Attributes:
        name: registry name.
        builder: callable returning the Flax linen module; keyword ``options`` are passed on.
        input_shape: default input shape ``(batch, H, W, C)``, the size ``expected`` holds at.
        expected: expected receptive field at ``input_shape``, or None where nothing is
            published or derived.
        small_input_shape: a small input the network accepts (for fast tests).
        options: keyword arguments given to ``builder`` by default.
        native_init: True: initialise with the module's own ``init`` (Luo's uniform weights,
            which are the experiment; constant, so cheap); False: fill the parameter shapes
            with random values (see the module docstring), which needs no compilation.
        description: one line.
    """

    name: str
    builder: Callable[..., nn.Module]
    input_shape: Shape
    expected: Expected | None
    small_input_shape: Shape
    options: Mapping[str, Any] = field(default_factory=dict)
    native_init: bool = False
    description: str = ""

    def model(self, **overrides) -> nn.Module:
        """The Flax module, with ``options`` updated by ``overrides`` (e.g. ``width=0.25``)."""
        return self.builder(**{**self.options, **overrides})

    def init(
        self,
        key: jax.Array | None = None,
        shape: Shape | None = None,
        dtype=jnp.float32,
        **overrides,
    ):
        """Random variables (``{"params": ..., "batch_stats": ...}``) for :meth:`apply`.

        Args:
            key: a ``jax.random.key``; default ``jax.random.key(0)``.
            shape: input shape to initialise at (default :attr:`small_input_shape`; conv
                weights do not depend on the spatial size).
            dtype: floating dtype of the variables (``jnp.float64`` for exact-support probes,
                with ``jax_enable_x64``).
            **overrides: builder options, as in :meth:`model`.
        """
        key = jax.random.key(0) if key is None else key
        module = self.model(**overrides)
        x = jax.ShapeDtypeStruct(shape or self.small_input_shape, jnp.float32)
        if self.native_init:
            variables = module.init(key, jnp.zeros(x.shape, x.dtype))
        else:
            variables = _fill(jax.eval_shape(module.init, key, x), key)
        return jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)

    def apply(self, variables, x, **overrides):
        """Run the network: ``x`` NHWC -> output NHWC (or ``(batch, classes)`` with a head).

        Dropout, when active (``deterministic=False``), draws from a fixed key.
        """
        module = self.model(**overrides)
        return module.apply(variables, x, rngs={"dropout": jax.random.key(1)})

    def build(
        self, key: jax.Array | None = None, dtype=jnp.float32, **overrides
    ) -> Callable[[jax.Array], jax.Array]:
        """``x -> y`` with random weights (fixed seed unless ``key``, ``dtype`` as in
        :meth:`init`) closed over.

        Example:
            >>> import jax.numpy as jnp
            >>> import jaxrf.models
            >>> fn = jaxrf.models.get("luo_uniform").build()
            >>> round(float(fn(jnp.ones((1, 32, 32, 1)))[0, 16, 16, 0]), 4)  # box filters of 1
            1.0
        """
        variables = self.init(key, dtype=dtype, **overrides)
        module = self.model(**overrides)
        rngs = {"dropout": jax.random.key(1)}
        return lambda x: module.apply(variables, x, rngs=rngs)


def _fill(shapes, key: jax.Array):
    """Random values for a pytree of ``ShapeDtypeStruct`` variables (see the module docstring).

    One numpy normal draw, seeded from ``key``, is split among all kernels: no XLA compilation
    (an eager ``jax.random`` call compiles once per shape).
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    names = [str(getattr(path[-1], "key", path[-1])) for path, _ in leaves]
    sizes = [
        math.prod(leaf.shape) if n == "kernel" else 0
        for n, (_, leaf) in zip(names, leaves, strict=True)
    ]
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    noise = np.random.default_rng(seed).standard_normal(sum(sizes), np.float32)
    out, start = [], 0
    for name, (_, leaf), size in zip(names, leaves, sizes, strict=True):
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            value = noise[start : start + size].reshape(leaf.shape) * np.float32(
                math.sqrt(2 / fan_in)
            )
            start += size
        elif name in ("scale", "var"):
            value = np.ones(leaf.shape, leaf.dtype)
        else:  # bias, batch-norm mean
            value = np.zeros(leaf.shape, leaf.dtype)
        out.append(jnp.asarray(value, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


# ---------------------------------------------------------------------------------------
# The registry.
# ---------------------------------------------------------------------------------------


def _from_araujo(cnn: str, end_point: str) -> Expected:
    """Expected values from the shipped Araujo et al. table, at input resolution 224."""
    row = araujo_row(cnn, end_point, 224)
    return _square(row.rf, row.effective_stride, row.effective_padding, row.source)


_IMAGENET: Shape = (1, 224, 224, 3)
_ENTRIES: dict[str, ZooEntry] = {}


def _register(entry: ZooEntry) -> None:
    _ENTRIES[entry.name] = entry


_register(
    ZooEntry(
        "alexnet_v2",
        slim.AlexNetV2,
        _IMAGENET,
        _from_araujo("alexnet_v2", "alexnet_v2/pool5"),
        (1, 67, 67, 3),
        description="TF-Slim AlexNet v2 up to pool5",
    )
)
_register(
    ZooEntry(
        "vgg_16",
        slim.VGG16,
        _IMAGENET,
        _from_araujo("vgg_16", "vgg_16/pool5"),
        (1, 32, 32, 3),
        description="TF-Slim VGG-16 up to pool5",
    )
)
for _depth in (50, 101, 152):
    _name = f"resnet_v1_{_depth}"
    _register(
        ZooEntry(
            _name,
            slim.resnet_v1,
            _IMAGENET,
            _from_araujo(_name, f"{_name}/block4"),
            (1, 32, 32, 3),
            {"depth": _depth},
            description=f"TF-Slim ResNet v1 {_depth} up to block4 (stride in last unit)",
        )
    )
_register(
    ZooEntry(
        "mobilenet_v1",
        slim.MobileNetV1,
        _IMAGENET,
        _from_araujo("mobilenet_v1", "Conv2d_13_pointwise"),
        (1, 32, 32, 3),
        description="TF-Slim MobileNet v1 up to Conv2d_13_pointwise",
    )
)
_register(
    ZooEntry(
        "inception_v3",
        slim.InceptionV3,
        _IMAGENET,
        _from_araujo("inception_v3", "Mixed_7c"),
        (1, 75, 75, 3),
        description="TF-Slim Inception v3 up to Mixed_7c",
    )
)
_register(
    ZooEntry(
        "resnet50_torchvision",
        resnet.TorchResNet,
        _IMAGENET,
        _square(
            427,
            32,
            213,
            "hand derivation in jaxrf/models/resnet.py",
        ),
        (1, 32, 32, 3),
        description="torchvision-layout ResNet-50 (stride in first unit)",
    )
)
_register(
    ZooEntry(
        "unet",
        unet.UNet,
        (1, 64, 64, 1),
        _square(47, 1, 23, "hand derivation in jaxrf/models/unet.py"),
        (1, 16, 16, 1),
        description="two-level U-Net with 2x2/2 transposed convolutions",
    )
)
for _os, (_r, _p) in {8: (691, 345), 16: (707, 353)}.items():
    _register(
        ZooEntry(
            f"deeplab_os{_os}",
            deeplab.DeepLab,
            (1, 129, 129, 3),
            Expected((_r, _r), (_os, _os), (_p, _p), "hand derivation in jaxrf/models/deeplab.py"),
            (1, 33, 33, 3),
            {"output_stride": _os},
            description=f"DeepLab-style atrous net with ASPP, output stride {_os}",
        )
    )
_register(
    ZooEntry(
        "distill_aligned",
        toys.TwoBranch,
        (1, 16, 16, 1),
        _square(3, 2, 1, "hand derivation in jaxrf/models/toys.py (TwoBranch)"),
        (1, 8, 8, 1),
        {"right_kernel": 1},
        description="Distill-style aligned two-branch toy",
    )
)
_register(
    ZooEntry(
        "distill_misaligned",
        toys.TwoBranch,
        (1, 16, 16, 1),
        _square(
            3,
            2,
            1,
            "hand derivation in jaxrf/models/toys.py (TwoBranch): "
            "union of [2i-1, 2i+1] and [2i, 2i+1]",
            aligned=False,
        ),
        (1, 8, 8, 1),
        {"right_kernel": 2},
        description="Distill-style misaligned two-branch toy",
    )
)

# Luo et al. stacks, 32x32 single-channel input, 5 layers of 3x3 unless told. Hand derivation:
# a 3x3 layer (padding 1) at effective stride S adds 2 S to r and S to P, so 5 layers give
# r = 11, P = 5; with dilation 2 each layer spans 5 (padding 2): r = 1 + 5 * 4 = 21, P = 10;
# with stride 2 at layers 1 and 3 (0-based): (r, S, P) = 3/1/1, 5/2/2, 9/2/4, 13/4/6, 21/4/10.
# Skips and pointwise nonlinearities/dropout leave the numbers alone (the skip path is shorter
# and centred, so aligned).
_LUO_SOURCE = "hand derivation in jaxrf/models/__init__.py (Luo stacks)"
_LUO_VARIANTS = {
    "luo_uniform": ({}, (11, 1, 5)),
    "luo_random": ({"weights": "random"}, (11, 1, 5)),
    "luo_relu": ({"weights": "random", "nonlinearity": "relu"}, (11, 1, 5)),
    "luo_tanh": ({"weights": "random", "nonlinearity": "tanh"}, (11, 1, 5)),
    "luo_sigmoid": ({"weights": "random", "nonlinearity": "sigmoid"}, (11, 1, 5)),
    "luo_dropout": ({"weights": "random", "nonlinearity": "relu", "dropout": 0.5}, (11, 1, 5)),
    "luo_subsample": (
        {"weights": "random", "nonlinearity": "relu", "subsample": (1, 3)},
        (21, 4, 10),
    ),
    "luo_dilated": ({"weights": "random", "nonlinearity": "relu", "dilation": 2}, (21, 1, 10)),
    "luo_skip": ({"weights": "random", "nonlinearity": "relu", "skip": True}, (11, 1, 5)),
    "luo_skip_subsample": (
        {"weights": "random", "nonlinearity": "relu", "skip": True, "subsample": (1, 3)},
        (21, 4, 10),
    ),
}
for _name, (_options, (_r, _s, _p)) in _LUO_VARIANTS.items():
    _register(
        ZooEntry(
            _name,
            toys.LuoStack,
            (1, 32, 32, 1),
            _square(_r, _s, _p, _LUO_SOURCE),
            (1, 16, 16, 1),
            _options,
            native_init=_options.get("weights", "uniform") == "uniform",
            description=f"Luo et al. stack: {_options or 'uniform weights, linear'}",
        )
    )

# MTCNN (Zhang et al. 2016): random weights here; the wheel's trained ones via
# jaxrf.models.mtcnn.mtcnn_net(name). Hand derivations in jaxrf/models/mtcnn.py.
for _net, (_r, _s, _shape, _small, _out) in {
    "pnet": (12, 2, (1, 48, 48, 3), (1, 12, 12, 3), "logits"),
    "rnet": (17, 4, (1, 24, 24, 3), (1, 24, 24, 3), "features"),
    "onet": (33, 8, (1, 48, 48, 3), (1, 48, 48, 3), "features"),
}.items():
    _register(
        ZooEntry(
            f"mtcnn_{_net}",
            mtcnn.MODULES[_net],
            _shape,
            _square(_r, _s, 0, "hand derivation in jaxrf/models/mtcnn.py (Zhang et al. 2016)"),
            _small,
            {"output": _out},
            description=f"MTCNN {_net} ({_out}); trained weights: jaxrf.models.mtcnn.mtcnn_net",
        )
    )

# Today's families (hand derivations in the docstring of jaxrf/models/modern.py).
_MODERN = "hand derivation in jaxrf/models/modern.py"
_register(
    ZooEntry(
        "swin_pair",
        modern.SwinPair,
        (1, 112, 112, 3),
        _square(324, 4, 160, f"{_MODERN} (SwinPair)", aligned=False),
        (1, 56, 56, 3),
        description="Swin patch embedding, W-MSA and SW-MSA blocks (window 7, shift 3)",
    )
)
_register(
    ZooEntry(
        "maxvit_block",
        modern.MaxViTBlock,
        (1, 32, 32, 3),
        _square(57, 1, 28, f"{_MODERN} (MaxViTBlock)"),
        (1, 16, 16, 3),
        description="MaxViT block: MBConv, block attention 4x4, grid attention 4x4",
    )
)
_register(
    ZooEntry(
        "vit_registers",
        modern.ViTRegisters,
        _IMAGENET,
        Expected((224, 224), (0, 0), (0, 0), f"{_MODERN} (ViTRegisters)", is_global=True),
        _IMAGENET,  # the position embedding is sized by the token count: one input size
        description="ViT-S/16-like with a CLS and 4 register tokens (CLS features; global)",
    )
)
_register(
    ZooEntry(
        "shuffle_decoder",
        modern.ShuffleDecoder,
        (1, 32, 32, 1),
        _square(12, 1, 5, f"{_MODERN} (ShuffleDecoder)", aligned=False),
        (1, 16, 16, 1),
        description="U-Net-like decoder upsampling with PixelShuffle",
    )
)
_register(
    ZooEntry(
        "scan_stack",
        modern.ScanStack,
        (1, 32, 32, 1),
        _square(25, 1, 12, f"{_MODERN} (ScanStack): 1 + 12 * 2, padding 12"),
        (1, 16, 16, 1),
        description="12 blocks of 3x3 conv + ReLU written with nn.scan",
    )
)

ENTRIES: Mapping[str, ZooEntry] = MappingProxyType(_ENTRIES)


def names() -> tuple[str, ...]:
    """Names of every zoo entry, in registration order.

    Example:
        >>> import jaxrf.models
        >>> "resnet_v1_50" in jaxrf.models.names()
        True
    """
    return tuple(_ENTRIES)


def get(name: str) -> ZooEntry:
    """The zoo entry called ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).

    Example:
        >>> import jaxrf.models
        >>> jaxrf.models.get("vgg_16").expected.size
        (212, 212)
    """
    if name not in _ENTRIES:
        raise ValueError(
            f"`name` (={name!r}) is not in the zoo; known names: {', '.join(_ENTRIES)}."
        )
    return _ENTRIES[name]
