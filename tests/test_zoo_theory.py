"""Theory against measurement on the zoo: the structural support of every output position equals
the traced analytic region ``rf.region(index, clip=True)``, as integer boxes, no tolerance.

Two measurements, both from the probes, never from the theory's code:

* :func:`jaxrf.support_map` (structural mode) gives the support box of EVERY output position
  from colouring passes (its attribution is verified by the probe itself);
* :func:`jaxrf.actual_receptive_field` (structural mode) probes single positions one backward
  pass each, independently of the colouring: every border position where that is affordable,
  else the four corners, plus a seeded sample of interior positions.

A comparison can only fail where the clipped region is smaller than the image, so every case
checks at least one position whose region leaves part of the image out on both axes (asserted).
The ImageNet-scale nets and DeepLab have RFs of 195 to 1507 px: they are checked at corner
outputs (region ``[0, r - 1 - P]`` per axis) of an input just larger than that corner region,
at a quarter of their width (Slim's ``depth_multiplier``; receptive fields do not depend on
channels), and by single-position probes only where ``support_map`` would need one colouring
pass per output (every pair of outputs overlaps). The larger ones are in the slow set.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import jaxrf
import jaxrf.models as zoo

NARROW = {"width": 0.25}

# (name, input side, support_map over all positions?, per-position probes: "border" (every
# border position), "corners" or None, interior samples, builder overrides, slow?)
CASES = [
    ("luo_uniform", 16, True, "corners", 2, {}, False),
    ("luo_dropout", 16, True, None, 0, {}, False),
    ("luo_subsample", 16, True, None, 0, {}, False),
    ("luo_dilated", 16, True, None, 0, {}, False),
    ("luo_skip", 16, True, None, 0, {}, False),
    ("luo_skip_subsample", 16, True, "border", 1, {}, False),
    ("distill_aligned", 16, True, None, 0, {}, False),
    ("distill_misaligned", 16, True, "corners", 2, {}, False),
    ("unet", 32, True, None, 0, {}, False),
    # Corner region [0, 130] of a 132-px image (RF 195, P 64 at the corner).
    ("alexnet_v2", 132, True, "corners", 0, NARROW, False),
    # Corner regions [0, 188] / [0, 243] / [0, 345]: RF 315 / 483 / 691, P 126 / 239 / 345.
    ("mobilenet_v1", 192, False, "corners", 0, NARROW, True),  # slow: as mobilenet_v1@224
    ("resnet_v1_50", 256, False, "corners", 0, NARROW, True),  # 10 s: slow set
    ("deeplab_os8", 353, False, "corners", 0, {}, False),
    # Slow: structurally identical variants, and the heavier nets.
    ("distill_misaligned", 16, True, "border", 4, {}, True),
    ("unet", 32, True, "corners", 8, {}, True),
    ("luo_random", 16, True, None, 0, {}, True),
    ("luo_relu", 16, True, None, 0, {}, True),
    ("luo_tanh", 16, True, None, 0, {}, True),
    ("luo_sigmoid", 16, True, None, 0, {}, True),
    ("deeplab_os16", 369, False, "corners", 1, {}, True),
    ("vgg_16", 128, True, "corners", 0, NARROW, True),
    ("resnet_v1_101", 520, False, "corners", 0, NARROW, True),
    ("inception_v3", 736, False, "corners", 0, NARROW, True),
    ("resnet_v1_152", 768, False, "corners", 0, NARROW, True),
    # Slow: the published input size where a corner region is smaller than it (RF larger than
    # the image: clipping everywhere, and the corners leave part of the image out).
    ("alexnet_v2", 224, True, "corners", 2, NARROW, True),
    ("vgg_16", 224, True, "corners", 2, NARROW, True),
    ("mobilenet_v1", 224, True, "corners", 2, NARROW, True),
    ("resnet50_torchvision", 224, True, "corners", 2, NARROW, True),
]


def _smaller_than_image(region, side: int) -> bool:
    """The clipped region leaves part of the ``side``-px image out on every axis."""
    return region is not None and all(hi - lo + 1 < side for lo, hi in region)


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
    name, side, full_map, probes, interior, options, _ = case
    text = f"{name}@{side}" + ("-map" if full_map else "")
    text += f"-{probes}+{interior}" if probes else ""
    return text + ("-narrow" if options else "")


@pytest.mark.parametrize(
    "name, side, full_map, probes, interior, options",
    [
        pytest.param(*case[:6], id=_case_id(case), marks=[pytest.mark.slow] if case[6] else [])
        for case in CASES
    ],
)
def test_structural_support_equals_clipped_region(name, side, full_map, probes, interior, options):
    entry = zoo.get(name)
    x = jnp.zeros((1, side, side, entry.input_shape[-1]), jnp.float32)
    fn = entry.build(**options)
    with warnings.catch_warnings():
        # The misaligned toy warns by design (tested in test_zoo.py); nothing else may warn.
        if entry.expected is not None and not entry.expected.aligned:
            warnings.simplefilter("ignore", jaxrf.MisalignmentWarning)
        rf = jaxrf.receptive_field(fn, x)

    checked = []
    if full_map:
        support = jaxrf.support_map(fn, x, mode="structural")
        assert support.output_shape == rf.output_shape
        mismatches = [
            (idx, support.box(idx), rf.region(idx, clip=True))
            for idx in np.ndindex(*rf.output_shape)
            if support.box(idx) != rf.region(idx, clip=True)
        ]
        assert not mismatches, mismatches[:5]
        checked += list(np.ndindex(*rf.output_shape))

    for idx in _positions(rf.output_shape, probes, interior):
        actual = jaxrf.actual_receptive_field(fn, x, idx, mode="structural")
        assert actual.box == rf.region(idx, clip=True), idx
        checked.append(idx)

    # The case can fail: some checked position's region leaves part of the image out.
    assert any(_smaller_than_image(rf.region(i, clip=True), side) for i in checked)


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
