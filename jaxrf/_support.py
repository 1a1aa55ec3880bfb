"""Every output position's support at once, with few backward passes (Jacobian colouring).

Naively the support of every output position takes one backward pass per position.
:func:`support_map` puts one-hot cotangents at many positions whose supports cannot overlap
into the same pass and reads each one's support from its own part of the input (Curtis, Powell
and Reid's Jacobian colouring, with the sparsity pattern bounded by the interval algebra where
it applies, else measured). The probe itself is :class:`jaxrf._probe.Prober`.
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import jax
import numpy as np

from ._field import check_index
from ._gradient import Box, center_index
from ._probe import Prober, mask_box, prober_for
from ._trace import receptive_field


@dataclass(frozen=True)
class SupportMap:
    """The support (box and mask) of every output position, from few backward passes.

    Attributes:
        boxes: int numpy array ``(*output_shape, ndim, 2)``: inclusive ``(lo, hi)`` per axis of
            each output position's support; ``-1`` where the support is empty.
        mode: ``"measured"`` or ``"structural"``.
        input_shape, output_shape: spatial shapes.
        passes: backward passes used in all (probes + colouring passes + refinements).
        probe_passes: of which single-position probes that measured the support size.
        spacing: output-index spacing per axis between positions sharing a pass.
    """

    boxes: np.ndarray = field(repr=False)
    mode: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    passes: int
    probe_passes: int
    spacing: tuple[int, ...]
    _pass_masks: dict = field(repr=False, compare=False, default_factory=dict)
    _windows: tuple = field(repr=False, compare=False, default=())

    @property
    def num_positions(self) -> int:
        return int(np.prod(self.output_shape))

    def box(self, index) -> Box | None:
        """Inclusive ``(lo, hi)`` per axis of output ``index``'s support, None if empty."""
        index = check_index(index, self.output_shape)
        b = self.boxes[index]
        return None if b[0, 0] < 0 else tuple((int(lo), int(hi)) for lo, hi in b)

    def mask(self, index) -> np.ndarray:
        """Bool mask (input spatial shape) of output ``index``'s support."""
        index = check_index(index, self.output_shape)
        residue = tuple(i % m for i, m in zip(index, self.spacing, strict=True))
        window = tuple(
            slice(lo[i], hi[i] + 1) for (lo, hi), i in zip(self._windows, index, strict=True)
        )
        out = np.zeros(self.input_shape, bool)
        out[window] = self._pass_masks[residue][window]
        return out


def _axis_windows(probes, output_shape, input_shape, margin_scale):
    """Predicted support window ``[lo_i, hi_i]`` of every output index, per axis, from probes.

    The window is the affine fit ``S i + [min offset, max offset]`` over the probed boxes (``S``
    measured from two interior probes), widened by a margin.
    """
    windows, spacing = [], []
    ndim = len(output_shape)
    centre = center_index(output_shape)
    for a in range(ndim):
        n, n_in = output_shape[a], input_shape[a]
        along = {
            p[a]: b[a]
            for p, b in probes.items()
            if b is not None and all(p[c] == centre[c] for c in range(ndim) if c != a)
        }
        keys = sorted(along)
        if len(keys) >= 2:
            i0, i1 = keys[len(keys) // 2 - 1], keys[len(keys) // 2]
            c0, c1 = sum(along[i0]) / 2, sum(along[i1]) / 2
            stride = (c1 - c0) / (i1 - i0)
        else:
            stride = n_in / n
        offs = [
            (b[a][0] - stride * p[a], b[a][1] - stride * p[a])
            for p, b in probes.items()
            if b is not None
        ]
        if not offs:
            offs = [(0.0, n_in - 1.0)]
        margin = margin_scale * (abs(stride) + 1)
        idx = np.arange(n)
        lo = np.clip(np.floor(stride * idx + min(o[0] for o in offs) - margin), 0, n_in - 1)
        hi = np.clip(np.ceil(stride * idx + max(o[1] for o in offs) + margin), 0, n_in - 1)
        lo, hi = lo.astype(int), hi.astype(int)
        m = 1
        while m < n and not np.all(hi[:-m] < lo[m:]):
            m += 1
        windows.append((lo, hi))
        spacing.append(m)
    return tuple(windows), tuple(spacing)


SEED_ELEMENTS_PER_CALL = 2**21  # input-sized cotangent elements batched into one call (auto)
MAX_SEEDS_PER_CALL = 16


def _seeds_per_call(seeds_per_call, prober: Prober) -> int:
    """How many seeds one jitted call pulls back (``None``: from a memory budget)."""
    if seeds_per_call is None:
        per_seed = prober.seed_cost * math.prod(prober.x.shape[1:])
        return max(1, min(MAX_SEEDS_PER_CALL, SEED_ELEMENTS_PER_CALL // max(per_seed, 1)))
    if not isinstance(seeds_per_call, numbers.Integral) or seeds_per_call < 1:
        raise ValueError(
            f"`seeds_per_call` (={seeds_per_call!r}) must be a positive int (or None for an "
            "automatic choice): how many backward passes one batched call computes; lower it "
            "if memory runs out."
        )
    return int(seeds_per_call)


def _pull_back(
    prober: Prober, seeds: Iterator[np.ndarray], per_call: int, done: list[int], first: int = 0
):
    """Masks of ``seeds`` in order, ``per_call`` seeds per jitted call, computed lazily.

    ``first`` > 0: the first call takes only that many seeds (a colouring that fails usually
    fails at its first pass: no batch is wasted). A short call is padded with zero seeds to a
    power of two (at most ``per_call``), so few shapes are compiled. ``done[0]`` counts the
    seeds pulled back (padding excluded).
    """
    seeds = iter(seeds)
    take = first or per_call
    while chunk := list(itertools.islice(seeds, take)):
        take = per_call
        size = min(per_call, 1 << (len(chunk) - 1).bit_length())
        stack = np.zeros((size, *prober.output_shape), np.float32)
        stack[: len(chunk)] = chunk
        masks = prober.masks(stack)
        done[0] += len(chunk)
        yield from masks[: len(chunk)]


def _attribute(mask: np.ndarray, seeded, windows) -> np.ndarray | None:
    """Boxes ``(*counts, ndim, 2)`` of the positions seeded in one pass (``-1``: empty).

    ``seeded[a]`` are the seeded indices along axis ``a``; their windows are disjoint, so each
    nonzero pixel of ``mask`` belongs to at most one seeded position: the one whose window holds
    it on every axis. None when a pixel is in no seeded window (the attribution failed).
    """
    ndim = mask.ndim
    hits = np.nonzero(mask)
    counts = tuple(len(s) for s in seeded)
    owners = []
    for a in range(ndim):
        own = np.full(mask.shape[a], -1)
        lo, hi = windows[a]
        for k, i in enumerate(seeded[a]):
            own[lo[i] : hi[i] + 1] = k
        owner = own[hits[a]]
        if (owner < 0).any():
            return None
        owners.append(owner)
    flat = np.ravel_multi_index(owners, counts) if hits[0].size else np.zeros(0, int)
    boxes = np.full((math.prod(counts), ndim, 2), -1, int)
    seen = np.bincount(flat, minlength=len(boxes)) > 0
    for a in range(ndim):
        lo = np.full(len(boxes), mask.shape[a], int)
        hi = np.full(len(boxes), -1, int)
        np.minimum.at(lo, flat, hits[a])
        np.maximum.at(hi, flat, hits[a])
        boxes[seen, a, 0], boxes[seen, a, 1] = lo[seen], hi[seen]
    return boxes.reshape(*counts, ndim, 2)


def support_map(
    fn: Callable,
    x,
    *,
    mode: str = "structural",
    max_refinements: int = 4,
    seeds_per_call: int | None = None,
    layer: str | None = None,
    spatial_axes=None,
    output_spatial_axes=None,
    channel=None,
    channel_weights=None,
    key=None,
    per_channel: bool = False,
    nonfinite: str = "raise",
    unknown: str = "raise",
    token_grid=None,
) -> SupportMap:
    """The support of every output position at once, with few backward passes.

    Naively one backward pass per output position. Jacobian colouring puts one-hot cotangents
    at many positions whose supports cannot overlap into the same pass and reads each one's
    support from its own part of the input. A few positions (centre, its neighbours along
    each axis, the corners) are first probed one by one. The windows come from the interval
    algebra when it applies: :meth:`jaxrf.ReceptiveField.axis_bounds` bounds every position's
    support per axis, exactly and wherever its pixels are (a pixel copied far away included),
    and is used when every probed box lies inside its bound; positions whose windows are
    pairwise disjoint per axis then share a pass, and the colouring cannot misattribute.
    Otherwise (a primitive without an interval rule) the probed boxes give a per-axis affine
    window ``S i + [lo, hi]`` (plus a margin) for every position. Attribution is verified:
    every nonzero input pixel of a pass must fall in the window of a position seeded in that
    pass (the windows are disjoint, so at most one); otherwise the margins are doubled and the
    colouring redone (at most ``max_refinements`` times, then one pass per position). With
    probed windows, a support that overflows its window *into another seeded position's
    window* cannot be seen by this check; the margin (one effective stride plus one pixel,
    doubled at each refinement) is there for that, and misaligned networks are covered by
    probing the borders.

    Speed: ``seeds_per_call`` passes are computed by one jitted call (the backward passes
    batched with ``jax.vmap``, the forward pass shared), only bool masks come back to the host,
    and the attribution is vectorised; the compiled programs are reused by later calls on the
    same ``fn`` and input shape.

    Args:
        fn, x: as in :func:`jaxrf.actual_receptive_field` (``x`` the samples of a measured union).
        mode: ``"structural"`` (default) or ``"measured"``.
        channel, channel_weights, key, per_channel, spatial_axes, output_spatial_axes,
            nonfinite, unknown, layer: as in :func:`jaxrf.actual_receptive_field` (with
            ``nonfinite="skip"`` a NaN/inf pixel is in no support).
        token_grid: the grid ``(h, w)`` of a token-sequence output, as in
            :func:`jaxrf.gradient_map`.
        max_refinements: margin doublings of probed windows before falling back to one pass
            per position.
        seeds_per_call: backward passes per batched call (default: up to 16, fewer when one
            pass's input-sized cotangents, channel weightings x samples, are large); lower it
            if memory runs out.

    Returns:
        :class:`SupportMap`: ``.boxes``, ``.box(index)``, ``.mask(index)``, ``.passes`` (the
        one-hot cotangent patterns pulled back; a refinement stops after the batched call that
        found the failure).

    Example:
        >>> import jax, jax.numpy as jnp, jaxrf
        >>> conv = lambda x: jax.lax.conv_general_dilated(
        ...     x, jnp.ones((3, 1, 1)), (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
        >>> sm = jaxrf.support_map(conv, jnp.zeros((1, 40, 1)))
        >>> sm.box((0,)), sm.box((20,)), sm.passes < 40
        (((0, 1),), ((19, 21),), True)
    """
    prober = prober_for(fn, x, locals())
    per_call = _seeds_per_call(seeds_per_call, prober)
    done = [0]
    picks = _probe_positions(prober.output_shape)
    masks = _pull_back(prober, (prober.one_hot(p) for p in picks), per_call, done)
    probes = {p: mask_box(m) for p, m in zip(picks, masks, strict=True)}
    probe_passes = done[0]
    analytic = _analytic_windows(prober, probes)
    if analytic is not None:
        windows, spacing = analytic
        if np.prod(spacing) >= np.prod(prober.output_shape):
            return _one_pass_per_position(prober, per_call, done, probe_passes)
        found = _coloured(prober, windows, spacing, per_call, done)
        if found is not None:
            return _support_map(prober, found, done, probe_passes, spacing, windows)
    for attempt in range(max_refinements + 1):
        windows, spacing = _axis_windows(
            probes, prober.output_shape, prober.input_shape, 2**attempt
        )
        if np.prod(spacing) >= np.prod(prober.output_shape):
            break
        found = _coloured(prober, windows, spacing, per_call, done)
        if found is not None:
            return _support_map(prober, found, done, probe_passes, spacing, windows)
    return _one_pass_per_position(prober, per_call, done, probe_passes)


def _support_map(prober: Prober, found, done, probe_passes, spacing, windows) -> SupportMap:
    boxes, pass_masks = found
    return SupportMap(
        boxes=boxes,
        mode=prober.mode,
        input_shape=prober.input_shape,
        output_shape=prober.output_shape,
        passes=done[0],
        probe_passes=probe_passes,
        spacing=spacing,
        _pass_masks=pass_masks,
        _windows=windows,
    )


def _analytic_windows(prober: Prober, probes: dict):
    """Windows and spacing from the interval algebra, or None where it does not apply.

    :meth:`jaxrf.ReceptiveField.axis_bounds` bounds every position's support exactly, wherever
    its pixels are (a pixel copied far away included), so positions whose bounds are disjoint
    can share a pass without a margin. Used only when the algebra knows every primitive of the
    probed function, its output has the probed spatial shape, and every probed box lies inside
    its bound (a cross-check on the axis correspondence); otherwise None, and the windows come
    from the probes as before.
    """
    spec = jax.ShapeDtypeStruct(prober.x.shape, prober.x.dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rf = receptive_field(prober.fn, spec, spatial_axes=prober.in_layout.spatial)
    except (TypeError, ValueError):  # a primitive without a rule, or no dependence on x
        return None
    if tuple(rf.output_shape) != tuple(prober.output_shape):
        return None
    windows = rf.axis_bounds()
    for p, b in probes.items():
        if b is not None and any(
            not (lo[i] <= first and last <= hi[i])
            for (lo, hi), i, (first, last) in zip(windows, p, b, strict=True)
        ):
            return None
    return windows, tuple(_disjoint_spacing(lo, hi) for lo, hi in windows)


def _disjoint_spacing(lo: np.ndarray, hi: np.ndarray) -> int:
    """Smallest ``m`` such that the windows of indices equal modulo ``m`` are pairwise disjoint
    (empty windows, ``lo > hi``, overlap nothing); ``len(lo)`` when there is none.

    Unlike an affine fit, bounds need not grow with the index (a pixel read from far away), so
    disjointness of neighbours ``i, i + m`` is checked first (cheap, necessary), then every
    residue class sorted by its starts.
    """
    n = len(lo)
    empty = lo > hi
    for m in range(1, n):
        near = empty[:-m] | empty[m:] | (hi[:-m] < lo[m:]) | (hi[m:] < lo[:-m])
        if not near.all():
            continue
        if all(_disjoint(lo[s::m], hi[s::m]) for s in range(m)):
            return m
    return n


def _disjoint(lo: np.ndarray, hi: np.ndarray) -> bool:
    keep = lo <= hi
    order = np.argsort(lo[keep], kind="stable")
    starts, ends = lo[keep][order], hi[keep][order]
    return bool(np.all(ends[:-1] < starts[1:]))


def _probe_positions(out_shape) -> list[tuple[int, ...]]:
    """Positions probed one by one to measure the support: along each axis through the centre
    (both ends, the centre and its next neighbour, a quarter in), and every corner."""
    ndim = len(out_shape)
    centre = center_index(out_shape)
    picks = set()
    for a, n in enumerate(out_shape):
        for i in {0, n - 1, centre[a], min(centre[a] + 1, n - 1), max(n // 4, 0)}:
            picks.add(tuple(i if c == a else centre[c] for c in range(ndim)))
    for corner in np.ndindex(*([2] * ndim)):
        picks.add(tuple((n - 1) * c for n, c in zip(out_shape, corner, strict=True)))
    return sorted(picks)


def _coloured(prober: Prober, windows, spacing, per_call: int, done: list[int]):
    """Boxes of every position and the pass masks, one pass per residue modulo ``spacing``.

    None when a pass cannot be attributed (a pixel outside every seeded window).
    """
    out_shape = prober.output_shape
    boxes = np.full((*out_shape, len(out_shape), 2), -1, int)
    residues = list(np.ndindex(*spacing))
    seeded = {
        r: [np.arange(s, n, m) for s, n, m in zip(r, out_shape, spacing, strict=True)]
        for r in residues
    }

    def seeds():
        for residue in residues:
            seed = np.zeros(out_shape, np.float32)
            seed[np.ix_(*seeded[residue])] = 1
            yield seed

    pass_masks = {}
    masks = _pull_back(prober, seeds(), per_call, done, first=1)
    for residue, mask in zip(residues, masks, strict=True):
        found = _attribute(mask, seeded[residue], windows)
        if found is None:
            return None
        pass_masks[residue] = mask
        boxes[np.ix_(*seeded[residue])] = found
    return boxes, pass_masks


def _one_pass_per_position(prober: Prober, per_call: int, done: list[int], probe_passes: int):
    """The fallback: one pass per output position, exact by construction."""
    out_shape, in_shape = prober.output_shape, prober.input_shape
    full = tuple(
        (np.zeros(n, int), np.full(n, m - 1)) for n, m in zip(out_shape, in_shape, strict=True)
    )
    boxes = np.full((*out_shape, len(out_shape), 2), -1, int)
    pass_masks = {}
    positions = list(np.ndindex(*out_shape))
    masks = _pull_back(prober, (prober.one_hot(i) for i in positions), per_call, done)
    for index, mask in zip(positions, masks, strict=True):
        pass_masks[index] = mask
        b = mask_box(mask)
        if b is not None:
            boxes[index] = b
    return SupportMap(
        boxes=boxes,
        mode=prober.mode,
        input_shape=in_shape,
        output_shape=out_shape,
        passes=done[0],
        probe_passes=probe_passes,
        spacing=tuple(out_shape),
        _pass_masks=pass_masks,
        _windows=full,
    )
