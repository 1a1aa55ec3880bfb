"""Gradient probes: input gradients of one output position, and the actual receptive field.

Luo et al. (NeurIPS 2016) put a cotangent of 1 at one output unit and 0 elsewhere, pull it back
to the input and read the input gradient. :func:`gradient_map` does exactly that (only the
gradient with respect to the input is computed); :func:`actual_receptive_field` turns it into the
set of input pixels an output really depends on, either *measured* on given inputs with the
network as it is, or *structurally* from the traced program, whatever the weights
(see :mod:`jaxrf._structural`). :func:`jaxrf.support_map` (in :mod:`jaxrf._support`) gives every
output position's support at once. The shared plumbing (layouts, seeds, channel weights, the
non-finite check) is :mod:`jaxrf._gradient`.

Layout: arrays are ``(batch, *spatial, channels)`` (channels-last, NHWC in 2-D) unless
``spatial_axes`` names the spatial axes; the batch axis is always axis 0, every other axis is a
channel axis. The network's output uses the same ``spatial_axes`` unless
``output_spatial_axes`` is given.

Layer taps: with ``layer=NAME`` (a name from ``receptive_field(fn, x).layers``) the probe
measures a unit of that layer's output instead of the network's: the network is cut after that
layer (:func:`jaxrf._gradient.truncate`) and probed as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from ._field import check_index
from ._gradient import (
    Box,
    NonFiniteGradientError,
    NonFiniteGradientWarning,
    channel_weight_array,
    check_array,
    check_finite,
    check_nonfinite,
    check_reduce,
    layouts,
    map_at_index,
    map_for_seed,
    on_token_grid,
    output_shape,
    reduce_channels,
    seed_from_spatial,
    truncate,
)
from ._xla import jit

__all__ = [
    "ActualReceptiveField",
    "NonFiniteGradientError",
    "NonFiniteGradientWarning",
    "actual_receptive_field",
    "gradient_map",
    "mask_box",
]


def _shapes(fn, x, spatial_axes, output_spatial_axes):
    """Input layout, output layout and output shape of ``fn`` at ``x``."""
    out = output_shape(fn, x)
    return (*layouts(x.shape, out.shape, spatial_axes, output_spatial_axes), out)


def _support(pull, seeds, weights, in_layout):
    """``(k, *out_spatial)`` seeds x ``(p, *channels)`` weights -> ``(k, p, batch, *spatial)``.

    ``pull(seed, w)`` is one input gradient; ``jax.vmap`` batches the ``k * p`` backward passes
    (a forward pass closed over by ``pull`` is computed once).
    """

    def one(seed, w):
        return reduce_channels(pull(seed, w), in_layout, "abs")

    return jax.vmap(jax.vmap(one, (None, 0)), (0, None))(seeds, weights)


@functools.partial(jit, static_argnames=("fn", "in_layout", "out_layout"))
def _measured_masks(fn, x, seeds, weights, *, in_layout, out_layout):
    """Masks ``(k, *spatial)`` (union over weights and samples) and non-finite flags ``(k,)``."""
    y, pullback = jax.vjp(fn, x)

    def pull(seed, w):
        return pullback(seed_from_spatial(seed, w, y.shape, out_layout, y.dtype))[0]

    values = _support(pull, seeds, weights, in_layout)
    bad = jnp.any(~jnp.isfinite(values), axis=tuple(range(1, values.ndim)))
    return jnp.any(values > 0, axis=(1, 2)), bad


def structural_masks(fn, x, out_shape, in_layout, out_layout, unknown: str):
    """Jitted ``(seeds (k, *out_spatial), weights (p, *channels)) -> (k, *in_spatial)`` masks.

    Built on :func:`jaxrf._structural.structural_pullback` and cached with it: probing the same
    network again (another position, another ``support_map``) compiles nothing new, except once
    per new number of seeds per call.
    """
    from ._structural import per_object_cache, structural_pullback

    structural = structural_pullback(fn, x, unknown=unknown)
    cache = per_object_cache(structural)
    key = ("masks", tuple(out_shape), in_layout, out_layout)
    if key not in cache:

        def pull(seed, w):
            return structural(seed_from_spatial(seed, w != 0, out_shape, out_layout, jnp.float32))

        @jit
        def masks(seeds, weights):
            return jnp.any(_support(pull, seeds, weights, in_layout) > 0, axis=(1, 2))

        cache[key] = masks
    return cache[key]


def gradient_map(
    fn: Callable,
    x,
    index,
    *,
    channel=None,
    channel_weights=None,
    key=None,
    reduce: str = "abs",
    spatial_axes=None,
    output_spatial_axes=None,
    nonfinite: str = "raise",
    layer: str | None = None,
    token_grid=None,
) -> np.ndarray:
    """Input gradient of one output position: Luo's one-hot cotangent, pulled back.

    The output cotangent is 1 at spatial position ``index`` of every sample (times the channel
    weights) and 0 elsewhere; ``jax.vjp`` pulls it back to the input only (never to weights
    closed over by ``fn``), and the input channels are combined by ``reduce``. The computation
    is jitted with ``index`` as a traced argument: probing another position does not recompile.

    Args:
        fn: network, ``(batch, *spatial, channels) -> (batch, *spatial_out, channels_out)``.
            Samples must not interact (batch norm in training mode mixes them).
        x: input batch, ``(batch, *spatial, channels)``; a batch of size 1 for one image. Each
            sample gets its own map (the cotangent sits at ``index`` of every sample).
        index: output spatial position, one int per spatial axis (not wrapped if negative).
        channel: one output channel to probe (default: all channels summed).
        channel_weights: output-channel weights, an array of the output channel shape or
            ``"random"`` (standard normal from ``key``): use it when the channel sum is
            constant (a final LayerNorm makes the summed gradient exactly zero).
        key: PRNG key for ``channel_weights="random"`` (default ``jax.random.key(0)``).
        reduce: how input channels are combined: ``"abs"`` (sum of ``|g|``), ``"signed"``
            (sum of ``g``), ``"positive"`` (sum of ``max(g, 0)``), ``"squared"`` (sum of
            ``g**2``).
        spatial_axes: spatial axes of ``x`` (default: all but the first and the last).
        output_spatial_axes: spatial axes of ``fn(x)`` (default: as ``spatial_axes``).
        nonfinite: NaN/inf in the map: ``"raise"`` (default, :class:`NonFiniteGradientError`
            naming the first sample and position), ``"warn"`` (a
            :class:`NonFiniteGradientWarning`, then the map is returned with them) or ``"skip"``
            (the map is returned with them, silently; ``"keep"`` is the older name).
        layer: probe a unit of this intermediate layer's output (a name from
            ``jaxrf.receptive_field(fn, x).layers``) instead of the network's output; equal to
            probing the network cut after that layer.
        token_grid: the grid shape ``(h, w)`` (one int per input spatial axis) of an output
            that is a token sequence ``(batch, P + h*w, channels)``: ``index`` ``(i, j)`` is
            token ``P + i*w + j``, ``P`` the tokens before the grid (default: the grid is read
            from the traced flattening; give it when jaxrf cannot follow the flattening).

    Returns:
        Float numpy array ``(batch, *spatial)``: the map of every sample, in the order of
        ``spatial_axes``. RepLKNet's variant (cotangent = relu of the output) is
        ``gradient_map(lambda x: jax.nn.relu(fn(x)), x, index, reduce="positive")`` up to the
        cotangent's mask: it weights channels by whether they are positive.

    Raises:
        ValueError: ``index`` outside the output, bad ``reduce`` / ``channel`` / ``layer`` /
            shapes, an empty axis in ``x``.
        NonFiniteGradientError: NaN or inf in the map (a ValueError).

    Example:
        >>> import jax, jax.numpy as jnp, jaxrf
        >>> conv = lambda x: jax.lax.conv_general_dilated(
        ...     x, jnp.ones((3, 1, 1)), (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))
        >>> fn = lambda x: conv(conv(x))  # two 3-tap box filters: 1, 2, 3, 2, 1
        >>> jaxrf.gradient_map(fn, jnp.zeros((1, 7, 1)), (0,))
        array([[1., 2., 3., 2., 1., 0., 0.]], dtype=float32)
    """
    x = check_array(x)
    reduce = check_reduce(reduce)
    nonfinite = check_nonfinite(nonfinite)
    fn, output_spatial_axes = on_token_grid(
        truncate(fn, x, layer, spatial_axes), x, spatial_axes, output_spatial_axes, token_grid
    )
    in_layout, out_layout, out = _shapes(fn, x, spatial_axes, output_spatial_axes)
    index = check_index(index, out_layout.spatial_shape(out.shape))
    weights = channel_weight_array(
        out_layout.channel_shape(out.shape), channel, channel_weights, key, out.dtype
    )
    values = map_at_index(
        fn,
        x,
        jnp.asarray(index, jnp.int32),
        weights,
        in_layout=in_layout,
        out_layout=out_layout,
        reduce=reduce,
    )
    values = np.asarray(values)
    check_finite(values, f"gradient_map at output index {index}", nonfinite)
    return values


# ---------------------------------------------------------------------------------------
# Actual receptive field.
# ---------------------------------------------------------------------------------------


def mask_box(mask: np.ndarray) -> Box | None:
    """Per-axis inclusive bounding box ``(lo, hi)`` of a boolean mask; None if empty."""
    if not mask.any():
        return None
    box = []
    for a in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(b for b in range(mask.ndim) if b != a)))
        box.append((int(hit[0]), int(hit[-1])))
    return tuple(box)


@dataclass(frozen=True)
class ActualReceptiveField:
    """The input pixels one output position depends on.

    Attributes:
        mask: bool numpy array of the input's spatial shape: True where the dependence is.
        box: per-axis inclusive ``(lo, hi)`` bounding box of ``mask``; None if it is empty.
        index: the output position probed.
        mode: ``"measured"`` or ``"structural"``.
        input_shape: spatial shape of the input.
        output_shape: spatial shape of the output.
        num_samples: samples the measured union ran over (1 for structural mode).
    """

    mask: np.ndarray = field(repr=False)
    box: Box | None
    index: tuple[int, ...]
    mode: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    num_samples: int = 1

    @property
    def size(self) -> tuple[int, ...] | None:
        """Width ``hi - lo + 1`` of the box per axis (None if the mask is empty)."""
        return None if self.box is None else tuple(hi - lo + 1 for lo, hi in self.box)

    @property
    def count(self) -> int:
        """Number of input pixels in the mask."""
        return int(self.mask.sum())


MODES = ("measured", "structural")


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(
            f"`mode` (={mode!r}) must be 'measured' (the network as it is, on these inputs) or "
            "'structural' (every dependency the program can have, whatever the weights)."
        )
    return mode


PROBE_OPTIONS = (
    "mode",
    "channel",
    "channel_weights",
    "key",
    "per_channel",
    "spatial_axes",
    "output_spatial_axes",
    "nonfinite",
    "unknown",
    "layer",
    "token_grid",
)


def prober_for(fn, x, options: dict) -> Prober:
    """The :class:`Prober` of ``fn`` at ``x`` for a public function's keyword ``options``.

    ``options`` may hold more than :data:`PROBE_OPTIONS` (e.g. a function's ``locals()``);
    only those are read.
    """
    return Prober(fn, x, **{name: options[name] for name in PROBE_OPTIONS})


def _weight_list(channel_shape, channel, channel_weights, key, per_channel, dtype):
    """The channel weightings pulled back: one, or one one-hot per channel (``per_channel``)."""
    if not per_channel:
        return [channel_weight_array(channel_shape, channel, channel_weights, key, dtype)]
    if channel is not None or channel_weights is not None:
        raise ValueError(
            "`per_channel=True` probes every channel; drop `channel` / `channel_weights`."
        )
    return [
        channel_weight_array(channel_shape, c, None, None, dtype)
        for c in np.ndindex(*channel_shape)
    ]


class Prober:
    """Spatial seeds (output spatial shape) -> bool masks of the input spatial shape.

    :meth:`masks` pulls back a stack of seeds in one jitted call: the forward pass (measured
    mode) is shared and the backward passes are batched with ``jax.vmap``; only bool masks
    come back to the host.
    """

    def __init__(self, fn, x, *, mode, channel, channel_weights, key, per_channel, spatial_axes,
                 output_spatial_axes, nonfinite, unknown, layer, token_grid):  # fmt: skip
        self.x = check_array(x)
        self.mode = _check_mode(mode)
        self.nonfinite = check_nonfinite(nonfinite)
        self.fn, output_spatial_axes = on_token_grid(
            truncate(fn, self.x, layer, spatial_axes),
            self.x,
            spatial_axes,
            output_spatial_axes,
            token_grid,
        )
        self.in_layout, self.out_layout, out = _shapes(
            self.fn, self.x, spatial_axes, output_spatial_axes
        )
        self.input_shape = self.in_layout.spatial_shape(self.x.shape)
        self.output_shape = self.out_layout.spatial_shape(out.shape)
        channel_shape = self.out_layout.channel_shape(out.shape)
        self.weights = _weight_list(
            channel_shape, channel, channel_weights, key, per_channel, out.dtype
        )
        self._weight_stack = jnp.stack(self.weights)
        if mode == "structural":
            self._masks = structural_masks(
                self.fn, self.x, tuple(out.shape), self.in_layout, self.out_layout, unknown
            )

    @property
    def seed_cost(self) -> int:
        """Input-sized cotangents one seed costs (channel weightings x samples)."""
        return len(self.weights) * int(self.x.shape[0] if self.mode == "measured" else 1)

    def masks(self, seeds: np.ndarray) -> np.ndarray:
        """``(k, *output_spatial)`` seeds -> ``(k, *input_spatial)`` bool masks, one call."""
        seeds = jnp.asarray(seeds, jnp.float32)
        if self.mode == "structural":
            return np.asarray(self._masks(seeds, self._weight_stack))
        masks, bad = _measured_masks(
            self.fn,
            self.x,
            seeds,
            self._weight_stack,
            in_layout=self.in_layout,
            out_layout=self.out_layout,
        )
        if self.nonfinite != "skip":
            for k in np.flatnonzero(np.asarray(bad)):  # rare: redo that seed for the message
                for w in self.weights:
                    values = map_for_seed(
                        self.fn,
                        self.x,
                        seeds[k],
                        w,
                        in_layout=self.in_layout,
                        out_layout=self.out_layout,
                        reduce="abs",
                    )
                    what = "actual_receptive_field (measured)"
                    check_finite(np.asarray(values), what, self.nonfinite)
        return np.asarray(masks)

    def __call__(self, seed: np.ndarray) -> np.ndarray:
        return self.masks(np.asarray(seed)[None])[0]

    def one_hot(self, index) -> np.ndarray:
        seed = np.zeros(self.output_shape, np.float32)
        seed[index] = 1
        return seed


def actual_receptive_field(
    fn: Callable,
    x,
    index,
    *,
    mode: str = "measured",
    channel=None,
    channel_weights=None,
    key=None,
    per_channel: bool = False,
    spatial_axes=None,
    output_spatial_axes=None,
    nonfinite: str = "raise",
    unknown: str = "raise",
    layer: str | None = None,
    token_grid=None,
) -> ActualReceptiveField:
    """The input pixels output position ``index`` depends on, measured or structural.

    Two questions, two modes:

    * ``mode="measured"`` answers *"which pixels does this output use, with these weights, on
      these inputs?"*: the union over the samples of ``x`` of the pixels with a nonzero input
      gradient (all input channels). Dead ReLUs, max-pool routing (one pixel per window gets the
      gradient), zero-initialised batch-norm scales (a residual branch switched off) and
      cancellation between channels all show; so does float underflow in deep networks (use
      float64 there).
    * ``mode="structural"`` answers *"which pixels can this output depend on, whatever the
      weights and inputs?"*: the program traced from ``fn`` is rewritten so that no dependency
      can vanish (kernels of ones, multiplications by constants by 1, nonlinearities by the
      identity, max by sum; see :func:`jaxrf._structural.structural_pullback`) and pulled back
      with a binarisation after every operation, so 200 layers do not underflow. It equals the
      clipped analytic region of the theory. ``x`` only gives shapes.

    Args:
        fn: network, ``(batch, *spatial, channels) -> (batch, *spatial_out, channels_out)``.
        x: input batch ``(batch, *spatial, channels)``: the samples of the measured union.
        index: output spatial position, one int per axis.
        mode: ``"measured"`` (default) or ``"structural"``.
        channel, channel_weights, key: output-channel weighting as in :func:`gradient_map`
            (structural mode uses only which weights are nonzero).
        per_channel: probe every output channel separately and take the union (the answer
            when a channel sum cancels, e.g. after a final LayerNorm).
        spatial_axes, output_spatial_axes: layout overrides as in :func:`gradient_map`.
        nonfinite: NaN/inf gradients (measured mode): ``"raise"`` (default), ``"warn"`` (warn,
            then as ``"skip"``) or ``"skip"`` (a NaN/inf pixel is not in the mask; ``"keep"``
            is the older name).
        layer: probe a unit of this intermediate layer's output, as in :func:`gradient_map`.
        token_grid: the grid ``(h, w)`` of a token-sequence output, as in :func:`gradient_map`.
        unknown: structural mode, primitive without a rule: ``"raise"`` (TypeError) or
            ``"global"`` (conservative: each output reads all of its inputs).

    Returns:
        :class:`ActualReceptiveField` with ``.mask`` and ``.box``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxrf
        >>> conv = lambda x: jax.lax.conv_general_dilated(
        ...     x, jnp.ones((3, 1, 1)), (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))
        >>> fn = lambda x: jax.nn.relu(conv(jax.nn.relu(conv(x))))
        >>> jaxrf.actual_receptive_field(fn, jnp.ones((1, 9, 1)), (2,), mode="structural").box
        ((2, 6),)
        >>> jaxrf.actual_receptive_field(fn, -jnp.ones((1, 9, 1)), (2,)).box is None  # dead ReLU
        True
    """
    prober = prober_for(fn, x, locals())
    index = check_index(index, prober.output_shape)
    mask = prober(prober.one_hot(index))
    return ActualReceptiveField(
        mask=mask,
        box=mask_box(mask),
        index=index,
        mode=mode,
        input_shape=prober.input_shape,
        output_shape=prober.output_shape,
        num_samples=int(prober.x.shape[0]) if mode == "measured" else 1,
    )
