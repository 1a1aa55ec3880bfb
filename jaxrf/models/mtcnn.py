"""MTCNN's three networks (Zhang et al. 2016) in Flax, with the `mtcnn` wheel's trained weights.

K. Zhang, Z. Zhang, Z. Li, Y. Qiao, "Joint Face Detection and Alignment Using Multitask Cascaded
Convolutional Networks", IEEE Signal Processing Letters 23(10), 2016. The layer order, kernel
sizes, pooling and padding follow the Keras definitions of the ``mtcnn`` package (MIT licence,
``mtcnn/network/{pnet,rnet,onet}.py``); its weights are lists of float32 arrays in that order
(conv kernels HWIO, biases, PReLU slopes of shape ``(1, 1, C)``, dense kernels ``(in, out)``).
The package itself is never imported (it needs TensorFlow); :func:`mtcnn_params` reads its weight
files with ``joblib``. Install them with ``pip install "jaxrf[images]"``.

Input: NHWC RGB images normalised as ``(x - 127.5) / 128`` with ``x`` in ``[0, 255]``, as the
package's ``normalize_images`` does (no width/height transpose in this version of the package).

Trunks (all convolutions VALID, stride 1; PReLU after each; ``pool k/s`` a max pool whose TF
padding is given):

* P-Net: conv 3x3 (10), pool 2/2 SAME, conv 3x3 (16), conv 3x3 (32); heads: 1x1 conv to 4 box
  offsets and 1x1 conv to 2 logits (softmax: non-face, face). Fully convolutional. Receptive field
  by hand (Distill's ``r = 1 + sum (k_l - 1) S_{l-1}``): ``1 + 2 + 1 + 2*2 + 2*2 = 12``, stride 2,
  padding 0 (the SAME pool pads nothing on an even input, and P-Net's inputs to it are even
  whenever the image side is even) -- P-Net is the 12x12 detector with stride 2 of the paper.
* R-Net trunk (24x24 input): conv 3x3 (28), pool 3/2 SAME, conv 3x3 (48), pool 3/2 VALID,
  conv 2x2 (64): ``r = 1 + 2 + 2 + 2*2 + 2*2 + 1*4 = 17``, stride 4, padding 0 (SAME pads 0
  before, 1 after on 22). Head: transpose H/W, flatten (576), dense 128, PReLU, dense 4 and 2.
* O-Net trunk (48x48 input): conv 3x3 (32), pool 3/2 SAME, conv 3x3 (64), pool 3/2 VALID,
  conv 3x3 (64), pool 2/2 SAME, conv 2x2 (128): ``r = 1 + 2 + 2 + 4 + 4 + 8 + 4 + 8 = 33``,
  stride 8, padding 0. Head: transpose, flatten (1152), dense 256, PReLU, dense 4, 10 and 2.

Example:
    >>> import jax, jax.numpy as jnp, jaxrf
    >>> net = PNet(output="features")
    >>> x = jnp.zeros((1, 12, 12, 3))
    >>> rf = jaxrf.receptive_field(lambda v: net.apply(net.init(jax.random.key(0), v), v), x)
    >>> rf.size, rf.stride, rf.padding, rf.output_shape
    ((12, 12), (2, 2), (0, 0), (1, 1))
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

#: Input side each network was trained at (Zhang et al. 2016, Sec. II.A).
NATIVE_SIZE = {"pnet": 12, "rnet": 24, "onet": 48}
OUTPUTS = ("features", "logits", "face", "bbox")
EXTRA = 'pip install "jaxrf[images]"  (installs mtcnn, joblib, lz4)'


class PReLU(nn.Module):
    """``max(x, 0) + alpha * min(x, 0)`` with one slope per channel (Keras ``shared_axes=[1, 2]``).

    ``alpha`` starts at 0 (Keras' default), i.e. a ReLU, when not loaded from trained weights.
    """

    shape: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, x):
        alpha = self.param("alpha", nn.initializers.zeros, self.shape or (1, 1, x.shape[-1]))
        return jnp.maximum(x, 0) + alpha * jnp.minimum(x, 0)


def _conv(x, features: int, kernel: int, name: str):
    x = nn.Conv(features, (kernel, kernel), padding="VALID", name=name)(x)
    return PReLU(name=name.replace("conv", "prelu"))(x)


def _pool(x, window: int, padding: str):
    return nn.max_pool(x, (window, window), (2, 2), padding)


def _select(output: str, features, heads: Callable[[], tuple]):
    if output not in OUTPUTS:
        raise ValueError(f"`output` (={output!r}) must be one of {list(OUTPUTS)}.")
    if output == "features":
        return features
    bbox, logits = heads()
    return {"bbox": bbox, "logits": logits, "face": nn.softmax(logits, axis=-1)}[output]


class PNet(nn.Module):
    """P-Net, fully convolutional: NHWC image -> NHWC map at stride 2 (see the module docstring).

    Attributes:
        output: ``"features"`` (the 32-channel trunk), ``"logits"`` (2 channels: non-face, face),
            ``"face"`` (their softmax), or ``"bbox"`` (4 box offsets).
    """

    output: str = "face"

    @nn.compact
    def __call__(self, x):
        x = _pool(_conv(x, 10, 3, "conv1"), 2, "SAME")
        x = _conv(_conv(x, 16, 3, "conv2"), 32, 3, "conv3")
        conv = lambda n, name: nn.Conv(n, (1, 1), padding="VALID", name=name)  # noqa: E731
        return _select(self.output, x, lambda: (conv(4, "conv4_1")(x), conv(2, "conv4_2")(x)))


def _dense_head(x, width: int, first: str, outs: Sequence[tuple[int, str]]):
    """Transpose H and W (Keras ``Permute((2, 1, 3))``), flatten, dense + PReLU, dense heads."""
    x = jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)
    x = PReLU((width,), name=first.replace("fc", "prelu"))(nn.Dense(width, name=first)(x))
    return tuple(nn.Dense(n, name=name)(x) for n, name in outs)


class RNet(nn.Module):
    """R-Net: 24x24 NHWC crop -> trunk map (3x3x64) or per-image head ``(batch, k)``.

    Attributes:
        output: as :class:`PNet`; the heads need a 24x24 input.
    """

    output: str = "face"

    @nn.compact
    def __call__(self, x):
        x = _pool(_conv(x, 28, 3, "conv1"), 3, "SAME")
        x = _pool(_conv(x, 48, 3, "conv2"), 3, "VALID")
        x = _conv(x, 64, 2, "conv3")
        return _select(
            self.output, x, lambda: _dense_head(x, 128, "fc4", [(4, "fc5_1"), (2, "fc5_2")])
        )


class ONet(nn.Module):
    """O-Net: 48x48 NHWC crop -> trunk map (3x3x128) or per-image head ``(batch, k)``.

    Attributes:
        output: as :class:`PNet` (the 10 landmark outputs are not exposed); heads need 48x48.
    """

    output: str = "face"

    @nn.compact
    def __call__(self, x):
        x = _pool(_conv(x, 32, 3, "conv1"), 3, "SAME")
        x = _pool(_conv(x, 64, 3, "conv2"), 3, "VALID")
        x = _pool(_conv(x, 64, 3, "conv3"), 2, "SAME")
        x = _conv(x, 128, 2, "conv4")

        def heads():
            bbox, _, logits = _dense_head(
                x, 256, "fc5", [(4, "fc6_1"), (10, "fc6_2"), (2, "fc6_3")]
            )
            return bbox, logits

        return _select(self.output, x, heads)


MODULES = {"pnet": PNet, "rnet": RNet, "onet": ONet}

# Parameter order of the wheel's weight lists (Keras build order), as (layer, parameter).
_ORDER = {
    "pnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4_1", "conv4_2"],
    "rnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "fc4", "prelu4", "fc5_1"]
    + ["fc5_2"],
    "onet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4", "fc5"]
    + ["prelu5", "fc6_1", "fc6_2", "fc6_3"],
}


def _check_name(name: str) -> None:
    if name not in MODULES:
        raise ValueError(f"`name` (={name!r}) must be one of {list(MODULES)}.")


def weights_path(name: str) -> Path:
    """Path of the ``mtcnn`` wheel's trained weights for ``name`` (pnet, rnet or onet).

    Raises:
        ValueError: unknown name.
        ModuleNotFoundError: the ``mtcnn`` package is not installed (the message names the extra).
    """
    _check_name(name)
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the trained MTCNN weights come from the `mtcnn` package, which is not installed; "
            f"{EXTRA}."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights"
    path = path / f"{name}.lz4"
    if not path.is_file():
        raise FileNotFoundError(f"the installed `mtcnn` package has no {path}; {EXTRA}.")
    return path


def mtcnn_params(name: str) -> dict:
    """The trained variables ``{"params": ...}`` of P-Net, R-Net or O-Net, for ``MODULES[name]``.

    Reads the wheel's ``assets/weights/NAME.lz4`` (a joblib file holding a list of float32
    arrays, Keras order: kernel and bias per conv/dense layer, then the PReLU slopes) without
    importing ``mtcnn``.

    Raises:
        ValueError: unknown name, or a weight list whose shapes do not match the architecture.
        ModuleNotFoundError: ``mtcnn`` or ``joblib`` is not installed (the message names the
            extra to install).
    """
    try:
        import joblib
    except ImportError:  # pragma: no cover - joblib ships with the extra
        raise ModuleNotFoundError(f"reading the MTCNN weights needs `joblib`; {EXTRA}.") from None
    arrays = [np.asarray(a, np.float32) for a in joblib.load(weights_path(name))]
    params, i = {}, 0
    for layer in _ORDER[name]:
        if layer.startswith("prelu"):
            params[layer] = {"alpha": arrays[i]}
            i += 1
        else:
            params[layer] = {"kernel": arrays[i], "bias": arrays[i + 1]}
            i += 2
    if i != len(arrays):
        raise ValueError(f"{weights_path(name)} holds {len(arrays)} arrays; {name} needs {i}.")
    expected = _shapes(name)
    got = jax.tree.map(jnp.shape, params)
    if got != expected:
        raise ValueError(f"{weights_path(name)}: parameter shapes {got} != {name}'s {expected}.")
    return {"params": jax.tree.map(jnp.asarray, params)}


def _shapes(name: str):
    size = NATIVE_SIZE[name]
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(MODULES[name](output="logits").init, jax.random.key(0), x)
    return jax.tree.map(lambda a: a.shape, variables["params"])


def mtcnn_variables(name: str, trained: bool = True, key=None) -> dict:
    """Variables ``{"params": ...}`` of ``MODULES[name]``: the wheel's trained ones, or random.

    Args:
        name: ``"pnet"``, ``"rnet"`` or ``"onet"``.
        trained: False: He-normal kernels (std ``sqrt(2 / fan_in)``), zero biases and PReLU
            slopes 0 (a ReLU, Keras' initial slope), drawn from ``key`` (default
            ``jax.random.key(0)``), as the rest of the zoo is initialised.
        key: random key for ``trained=False``.
    """
    _check_name(name)
    if trained:
        return mtcnn_params(name)
    from . import _fill  # the zoo's He-normal filler

    size = NATIVE_SIZE[name]
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(MODULES[name](output="logits").init, jax.random.key(0), x)
    return _fill(shapes, jax.random.key(0) if key is None else key)


def mtcnn_net(name: str, output: str = "face", trained: bool = True, key=None) -> Callable:
    """``x -> y`` for P-Net / R-Net / O-Net with the wheel's trained weights closed over.

    Args:
        name: ``"pnet"``, ``"rnet"`` or ``"onet"``.
        output: ``"features"``, ``"logits"``, ``"face"`` or ``"bbox"`` (see :class:`PNet`).
        trained: False: the same architecture with random weights (see :func:`mtcnn_variables`).
        key: random key for ``trained=False``.

    Returns:
        a function from normalised NHWC RGB images (``(x - 127.5) / 128``) to the output.
    """
    variables = mtcnn_variables(name, trained, key)
    module = MODULES[name](output=output)
    return lambda x: module.apply(variables, x)


def normalise(images) -> np.ndarray:
    """MTCNN's input normalisation ``(x - 127.5) / 128`` for RGB pixel values in ``[0, 255]``.

    Example:
        >>> normalise(np.array([0.0, 127.5, 255.0])).tolist()
        [-0.99609375, 0.0, 0.99609375]
    """
    return (np.asarray(images, np.float32) - 127.5) / 128
