"""The receptive-field cone crop: the cropped gradient, pasted back, equals the full one exactly.

Exactness without tolerance: weights and inputs are small integers and the arithmetic is
float64, so every sum is exact whatever order XLA adds in (values stay far below 2**53), and
two gradient maps computed on different input sizes can be compared with ``array_equal``.
ReLU masks and max-pool choices are part of what must match: the nets have both.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrf
from jaxrf import Layer, Parallel

# ---------------------------------------------------------------------------------------
# Two small ResNet-like nets in jax.lax (NHWC), with their layer-list descriptions.
# ---------------------------------------------------------------------------------------

DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w, stride, padding):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)


def max_pool(x, k, stride, padding):
    pad = padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, stride, stride, 1), pad
    )


def slim_like(p, x):
    """SAME everywhere (TF-Slim style): the left padding of stride-2 layers depends on n."""
    x = jax.nn.relu(conv(x, p["c1"], 2, "SAME"))  # 5x5 / 2
    x = max_pool(x, 3, 2, "SAME")
    y = jax.nn.relu(conv(x, p["b1"], 2, "SAME"))  # 3x3 / 2
    y = conv(y, p["b2"], 1, "SAME")  # 3x3
    s = conv(x, p["sc"], 2, "SAME")  # 1x1 / 2 shortcut
    return jax.nn.relu(y + s)


SLIM_LAYERS = [
    Layer(5, stride=2, padding="SAME"),
    Layer(3, stride=2, padding="SAME", op="max_pool"),
    Parallel(
        [
            [Layer(3, stride=2, padding="SAME"), Layer(3, padding="SAME")],
            [Layer(1, stride=2, padding="SAME")],
        ]
    ),
]


def torchvision_like(p, x):
    """Explicit padding (torchvision style), stride in the bottleneck's 3x3 conv."""
    x = jax.nn.relu(conv(x, p["c1"], 2, ((3, 3), (3, 3))))  # 7x7 / 2, pad 3
    x = max_pool(x, 3, 2, ((1, 1), (1, 1)))
    y = jax.nn.relu(conv(x, p["b1"], 1, ((0, 0), (0, 0))))  # 1x1
    y = jax.nn.relu(conv(y, p["b2"], 2, ((1, 1), (1, 1))))  # 3x3 / 2, pad 1
    y = conv(y, p["b3"], 1, ((0, 0), (0, 0)))  # 1x1
    s = conv(x, p["sc"], 2, ((0, 0), (0, 0)))  # 1x1 / 2 shortcut
    return jax.nn.relu(y + s)


TORCHVISION_LAYERS = [
    Layer(7, stride=2, padding=3),
    Layer(3, stride=2, padding=1, op="max_pool"),
    Parallel([[Layer(1), Layer(3, stride=2, padding=1), Layer(1)], [Layer(1, stride=2)]]),
]

KERNELS = {
    "slim_like": {"c1": (5, 3, 4), "b1": (3, 4, 4), "b2": (3, 4, 4), "sc": (1, 4, 4)},
    "torchvision_like": {
        "c1": (7, 3, 4),
        "b1": (1, 4, 3),
        "b2": (3, 3, 3),
        "b3": (1, 3, 4),
        "sc": (1, 4, 4),
    },
}
NETS = {
    "slim_like": (slim_like, SLIM_LAYERS),
    "torchvision_like": (torchvision_like, TORCHVISION_LAYERS),
}


def field(layers, shape):
    """The layer list's receptive field. The slim-like net's SAME 1x1 stride-2 shortcut is
    misaligned with its 3x3 branch (different centre offsets): on purpose, the crop must be
    exact for misaligned fields too, so the warning is expected and silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxrf.MisalignmentWarning)
        return jaxrf.from_layers(layers, shape)


def integer_params(name, seed=0):
    rng = np.random.default_rng(seed)
    return {
        k: jnp.asarray(rng.integers(-2, 3, size=(kk, kk, ci, co)), jnp.float64)
        for k, (kk, ci, co) in KERNELS[name].items()
    }


def integer_image(shape, seed=1):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(-3, 4, size=(1, *shape, 3)), jnp.float64)


@jax.jit(static_argnums=0)
def _gradient_map(fn, params, x, index):
    out, vjp = jax.vjp(lambda x: fn(params, x), x)
    h, w = jnp.arange(out.shape[1]), jnp.arange(out.shape[2])
    cot = ((h[:, None] == index[0]) & (w[None, :] == index[1])).astype(out.dtype)
    (g,) = vjp(jnp.broadcast_to(cot[None, :, :, None], out.shape))
    return g


def gradient_map(fn, params, x, index):
    """Input gradient of the sum over channels of output ``index`` (batch 1, NHWC).

    Jitted with a traced index: one compilation per input shape, not per unit."""
    return np.asarray(_gradient_map(fn, params, x, jnp.asarray(index)))


def cropped_gradient_map(fn, params, x, crop):
    g = gradient_map(fn, params, crop.take(x), crop.index)
    return crop.paste(g)


# Input shapes: odd and even sizes (SAME padding of stride-2 layers depends on n mod 2).
CASES = [
    ("slim_like", (61, 64), "corners"),
    pytest.param("torchvision_like", (66, 59), "corners", marks=pytest.mark.slow),  # 8 s
    pytest.param("slim_like", (58, 63), "all", marks=pytest.mark.slow),
    pytest.param("torchvision_like", (61, 64), "all", marks=pytest.mark.slow),
    pytest.param("slim_like", (61, 64), "all", marks=pytest.mark.slow),
]


def units(output_shape, which="corners"):
    """The centre and the four corners, or every output unit."""
    h, w = output_shape
    if which == "all":
        return [(i, j) for i in range(h) for j in range(w)]
    return sorted({(h // 2, w // 2), (0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)})


@pytest.mark.parametrize(("name", "shape", "which"), CASES)
def test_cropped_gradient_equals_full_gradient(name, shape, which):
    fn, layers = NETS[name]
    rf = field(layers, shape)
    with jax.enable_x64(True):
        params, x = integer_params(name), integer_image(shape)
        assert fn(params, x).shape[1:3] == rf.output_shape  # the layer list describes the net
        smaller = 0
        for index in units(rf.output_shape, which):
            crop = jaxrf.crop_for_unit(rf, index)
            full = gradient_map(fn, params, x, index)
            assert np.any(full != 0), index  # a non-trivial probe
            np.testing.assert_array_equal(cropped_gradient_map(fn, params, x, crop), full)
            smaller += crop.fraction < 1
        assert smaller >= 5  # the crops really are smaller than the image


def test_crop_contains_region_and_keeps_the_grid():
    """Hand check on the slim-like net at 61x64: S = 8 on both axes."""
    rf = field(SLIM_LAYERS, (61, 64))
    assert rf.stride == (8, 8)
    for index in units(rf.output_shape, "all"):
        crop = jaxrf.crop_for_unit(rf, index)
        for (lo, hi), o, c, n in zip(
            rf.region(index, clip=True), crop.start, crop.size, rf.input_shape, strict=True
        ):
            assert o <= lo and hi < o + c <= n
            assert o % 8 == 0 and (n - c) % 8 == 0
            assert o - 8 < lo or o == 0  # no whole grid step wasted at the start
        assert all(0 <= i < m for i, m in zip(crop.index, rf.output_shape, strict=True))


def test_centre_crop_of_a_large_image_is_small():
    """Two 3x3 stride-2 SAME convs (r = 7, S = 4) at 101: a 9-pixel crop for output 12."""
    rf = jaxrf.from_layers([Layer(3, stride=2, padding="SAME")] * 2, (101,))
    # 101 odd: layer 1 pads (1, 1) -> 51; layer 2 pads (1, 1) -> 26; P = 1 + 2 = 3.
    crop = jaxrf.crop_for_unit(rf, (12,))  # u = 48 - 3 = 45, v = 51
    assert rf.region((12,), clip=True) == ((45, 51),)
    assert (
        crop.start == (44,) and crop.size == (9,) and crop.index == (1,)
    )  # 44 = 4*11; 101 - 53 = 48 = 4*12


@pytest.mark.parametrize("name", ["slim_like"])
def test_misaligned_crop_is_not_exact(name):
    """Negative control: the tight crop (start = lo, size = region) breaks the grid."""
    fn, layers = NETS[name]
    shape = (61, 64)
    rf = field(layers, shape)
    index = (rf.output_shape[0] // 2, rf.output_shape[1] // 2)
    (lo0, hi0), (lo1, hi1) = rf.region(index, clip=True)
    with jax.enable_x64(True):
        params, x = integer_params(name), integer_image(shape)
        full = gradient_map(fn, params, x, index)
        good = jaxrf.crop_for_unit(rf, index)
        assert good.start != (lo0, lo1)  # the grid-aligned crop differs from the tight one
        tight = x[:, lo0 : hi0 + 1, lo1 : hi1 + 1, :]
        g = gradient_map(fn, params, tight, (0, 0))  # unit at the tight crop's first output
        pasted = np.zeros_like(full)
        pasted[:, lo0 : hi0 + 1, lo1 : hi1 + 1, :] = g
        assert not np.array_equal(pasted, full)


def test_global_field_crops_nothing():
    rf = jaxrf.from_layers([Layer(3), jaxrf.Global()], (9, 9))
    crop = jaxrf.crop_for_unit(rf, (0, 0))
    assert crop.start == (0, 0) and crop.size == (9, 9) and crop.fraction == 1.0


def test_bad_index_names_the_argument():
    rf = jaxrf.from_layers([Layer(3)], (9,))
    with pytest.raises(ValueError, match=r"`index` \(=\(7,\)\) is outside the output"):
        jaxrf.crop_for_unit(rf, (7,))


def test_paste_checks_the_shape():
    rf = jaxrf.from_layers([Layer(3, stride=2)] * 2, (31, 31))
    crop = jaxrf.crop_for_unit(rf, (3, 3))
    with pytest.raises(ValueError, match="must have the crop size"):
        crop.paste(np.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="`spatial_axes`"):
        crop.take(np.zeros((1, 31, 31, 3)), spatial_axes=(1,))


def test_take_and_paste_nchw():
    rf = jaxrf.from_layers([Layer(3, stride=2)] * 2, (31, 31))
    crop = jaxrf.crop_for_unit(rf, (3, 3))
    x = np.arange(2 * 3 * 31 * 31, dtype=np.float32).reshape(2, 3, 31, 31)
    back = crop.paste(crop.take(x, spatial_axes=(2, 3)), spatial_axes=(2, 3))
    inside = np.zeros_like(x, dtype=bool)
    inside[:, :, crop.slices[0], crop.slices[1]] = True
    np.testing.assert_array_equal(back, np.where(inside, x, 0))
