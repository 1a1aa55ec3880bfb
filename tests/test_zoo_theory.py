"""Theory against measurement on the zoo: the structural support of every output position equals
the traced analytic region ``rf.region(index, clip=True)``, as integer boxes, no tolerance.

Two measurements, both from the probes (``jaxrf._probe``), never from the theory's code:

* :func:`jaxrf.support_map` (structural mode) gives the support box of EVERY output position
  from a few colouring passes (its attribution is verified by the probe itself);
* :func:`jaxrf.actual_receptive_field` (structural mode) probes single positions one backward
  pass each, independently of the colouring: every border position where that is affordable,
  else the four corners, plus a seeded sample of interior positions.

The default run uses small inputs (the big nets then see their whole input, which still checks
the border clipping and VALID layers that drop trailing pixels); the published input 224 and the
deeper nets are in the slow set.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import jaxrf
import jaxrf.models as zoo

# (name, input side, per-position probes: "border" (every border position), "corners", or
# None (support_map only), interior samples, slow?)
CASES = [
    ("luo_uniform", 16, "corners", 2, False),
    ("luo_dropout", 16, None, 0, False),
    ("luo_subsample", 16, None, 0, False),
    ("luo_dilated", 16, None, 0, False),
    ("luo_skip", 16, None, 0, False),
    ("luo_skip_subsample", 16, "border", 1, False),
    ("distill_aligned", 16, None, 0, False),
    ("distill_misaligned", 16, "corners", 2, False),
    ("unet", 32, None, 0, False),
    ("deeplab_os8", 33, None, 0, False),
    ("alexnet_v2", 67, None, 0, False),
    ("mobilenet_v1", 64, None, 0, False),
    ("resnet_v1_50", 64, None, 0, False),
    # Slow: structurally identical variants, and the heavier nets at small inputs.
    ("distill_misaligned", 16, "border", 4, True),
    ("unet", 32, "corners", 8, True),
    ("luo_random", 16, None, 0, True),
    ("luo_relu", 16, None, 0, True),
    ("luo_tanh", 16, None, 0, True),
    ("luo_sigmoid", 16, None, 0, True),
    ("deeplab_os16", 65, "corners", 1, True),
    ("vgg_16", 64, "corners", 0, True),
    ("resnet50_torchvision", 64, "corners", 0, True),
    ("resnet_v1_101", 64, None, 0, True),
    ("inception_v3", 107, "corners", 0, True),
    # Slow: the published input size (RF larger than the image: clipping everywhere).
    ("alexnet_v2", 224, "corners", 2, True),
    ("vgg_16", 224, "corners", 2, True),
    ("mobilenet_v1", 224, "corners", 2, True),
    ("resnet_v1_50", 224, "corners", 2, True),
    ("resnet50_torchvision", 224, "corners", 2, True),
    ("resnet_v1_152", 224, "corners", 2, True),
    ("inception_v3", 224, "corners", 2, True),
]


def _positions(output_shape, probes, interior, seed=0):
    """Output positions to probe one by one: border or corners, plus seeded interior ones."""
    if probes is None:
        chosen = set()
    elif probes == "corners":
        chosen = {(i, j) for i in {0, output_shape[0] - 1} for j in {0, output_shape[1] - 1}}
    else:
        chosen = {
            idx
            for idx in np.ndindex(*output_shape)
            if any(i in (0, n - 1) for i, n in zip(idx, output_shape, strict=True))
        }
    inside = [
        idx
        for idx in np.ndindex(*output_shape)
        if all(0 < i < n - 1 for i, n in zip(idx, output_shape, strict=True))
    ]
    rng = np.random.default_rng(seed)
    if inside and interior:
        picks = rng.choice(len(inside), size=min(interior, len(inside)), replace=False)
        chosen |= {inside[k] for k in picks}
    return sorted(chosen)


def _case_id(case):
    name, side, probes, interior, _ = case
    return f"{name}@{side}" + (f"-{probes}+{interior}" if probes else "")


@pytest.mark.parametrize(
    "name, side, probes, interior",
    [
        pytest.param(*case[:4], id=_case_id(case), marks=[pytest.mark.slow] if case[4] else [])
        for case in CASES
    ],
)
def test_structural_support_equals_clipped_region(name, side, probes, interior):
    entry = zoo.get(name)
    x = jnp.zeros((1, side, side, entry.input_shape[-1]), jnp.float32)
    fn = entry.build()
    with warnings.catch_warnings():
        # The misaligned toy warns by design (tested in test_zoo.py); nothing else may warn.
        if entry.expected is not None and not entry.expected.aligned:
            warnings.simplefilter("ignore", jaxrf.MisalignmentWarning)
        rf = jaxrf.receptive_field(fn, x)

    support = jaxrf.support_map(fn, x, mode="structural")
    assert support.output_shape == rf.output_shape
    mismatches = [
        (idx, support.box(idx), rf.region(idx, clip=True))
        for idx in np.ndindex(*rf.output_shape)
        if support.box(idx) != rf.region(idx, clip=True)
    ]
    assert not mismatches, mismatches[:5]

    for idx in _positions(rf.output_shape, probes, interior):
        actual = jaxrf.actual_receptive_field(fn, x, idx, mode="structural")
        assert actual.box == rf.region(idx, clip=True), idx


def test_luo_uniform_regions_by_hand():
    """Independent of both codes: 5 centred 3x3 layers, so output i reads [i - 5, i + 5]."""
    entry = zoo.get("luo_uniform")
    x = jnp.zeros((1, 16, 16, 1), jnp.float32)
    fn = entry.build()
    rf = jaxrf.receptive_field(fn, x)
    for i, j in [(0, 0), (3, 12), (8, 8), (15, 15)]:
        expected = ((max(i - 5, 0), min(i + 5, 15)), (max(j - 5, 0), min(j + 5, 15)))
        assert rf.region((i, j), clip=True) == expected
        assert jaxrf.actual_receptive_field(fn, x, (i, j), mode="structural").box == expected


def test_luo_uniform_measured_support_equals_structural():
    """Positive uniform weights, no nonlinearity, positive input: no gradient can cancel, so the
    measured support (the gradient with these weights) is the structural one."""
    entry = zoo.get("luo_uniform")
    x = jnp.ones((1, 16, 16, 1), jnp.float32)
    fn = entry.build()
    rf = jaxrf.receptive_field(fn, x)
    for idx in [(0, 0), (7, 9), (15, 0)]:
        measured = jaxrf.actual_receptive_field(fn, x, idx, mode="measured")
        assert measured.box == rf.region(idx, clip=True)
        lo, hi = zip(*measured.box, strict=True)
        assert measured.count == np.prod(np.array(hi) - np.array(lo) + 1)  # no holes
