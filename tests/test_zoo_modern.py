"""Today's families (jaxrf.models.modern): hand-derived regions, and the structural support
equal to the analytic region at every output position.

The structural side is the binarised pullback of the dependency surrogate
(:func:`jaxrf._structural.structural_pullback`), seeded at every output position at once (a
batch of one-hot cotangents over all channels), independent of the interval rules.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrf
from jaxrf._structural import structural_pullback
from jaxrf.models import modern


def build(cls, shape):
    module = cls()
    x = jnp.zeros(shape, jnp.float32)
    variables = jax.jit(module.init)(jax.random.key(0), x)
    return (lambda v: module.apply(variables, v)), x


def structural_boxes(fn, x):
    """Bounding box of the structural support of every output position, row-major."""
    out = jax.eval_shape(fn, x).shape
    spatial = out[1:-1]
    pull = structural_pullback(fn, x)
    boxes = []
    for index in np.ndindex(*spatial):
        ct = np.zeros(out, np.float32)
        ct[(0, *index)] = 1.0
        mask = np.asarray(pull(jnp.asarray(ct)))[0].max(axis=-1) > 0
        box = []
        for a in range(mask.ndim):
            hit = np.flatnonzero(mask.any(axis=tuple(b for b in range(mask.ndim) if b != a)))
            box.append((int(hit[0]), int(hit[-1])))
        boxes.append(tuple(box))
    return boxes


def analytic(fn, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxrf.MisalignmentWarning)
        warnings.simplefilter("ignore", jaxrf.GlobalReceptiveFieldWarning)
        return jaxrf.receptive_field(fn, x)


def swin_rows(i):
    """Pixel rows read by token row ``i`` after W-MSA + SW-MSA at 112 (module docstring)."""
    if 3 <= i <= 23:
        k = (i - 3) // 7
        return (28 * k, 28 * k + 55)
    return (0, 111)


def maxvit_rows(h):
    return (0, 28) if (h % 8) // 4 == 0 else (3, 31)


def decoder_rows(y, n=16):
    return (max(0, 2 * ((y - 1) // 2) - 3), min(n - 1, 2 * ((y + 1) // 2) + 5))


CASES = {
    "swin_pair": (modern.SwinPair, (1, 112, 112, 3), (28, 28), swin_rows),
    "maxvit_block": (modern.MaxViTBlock, (1, 32, 32, 3), (32, 32), maxvit_rows),
    "shuffle_decoder": (modern.ShuffleDecoder, (1, 16, 16, 1), (16, 16), decoder_rows),
    "scan_stack": (
        modern.ScanStack,
        (1, 16, 16, 1),
        (16, 16),
        lambda i: (max(0, i - 12), min(15, i + 12)),
    ),
}


#: 11 s each; CI runs them in the slow set.
_SLOW_CASES = {"maxvit_block", "shuffle_decoder", "swin_pair"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if n in _SLOW_CASES else []) for n in sorted(CASES)],
)
def test_hand_derived_region_at_every_position(name):
    cls, shape, out, rows = CASES[name]
    fn, x = build(cls, shape)
    rf = analytic(fn, x)
    assert rf.output_shape == out
    got = [rf.region(i, clip=True) for i in np.ndindex(*out)]
    assert got == [(rows(i), rows(j)) for i, j in np.ndindex(*out)]
    assert got == structural_boxes(fn, x)


def test_scan_stack_distill_numbers():
    """12 scanned 3x3 SAME convs after a 1x1 stem: size 25, stride 1, padding 12."""
    fn, x = build(modern.ScanStack, (1, 32, 32, 1))
    rf = analytic(fn, x)
    assert (rf.size, rf.stride, rf.padding) == ((25, 25), (1, 1), (12, 12))
    assert sum(r.op == "conv" for r in rf.layers) == 13


def test_vit_with_registers_is_global():
    """The CLS token of a ViT-S/16-like model with 4 registers attends to every patch: global,
    the whole 64x64 input, with the summary of a global field (size = input, stride 0)."""
    fn, x = build(modern.ViTRegisters, (1, 64, 64, 3))
    rf = analytic(fn, x)
    assert rf.is_global and rf.output_shape == (1, 1)
    assert (rf.size, rf.stride, rf.padding) == ((64, 64), (0, 0), (0, 0))
    assert rf.region((0, 0), clip=True) == ((0, 63), (0, 63))
