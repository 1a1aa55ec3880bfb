"""Gradient probes: input gradients of one output position, and the actual receptive field.

Luo et al. (NeurIPS 2016) put a cotangent of 1 at one output unit and 0 elsewhere, pull it back
to the input and read the input gradient. :func:`gradient_map` does exactly that (only the
gradient with respect to the input is computed); :func:`actual_receptive_field` turns it into the
set of input pixels an output really depends on, either *measured* on given inputs with the
network as it is, or *structurally* from the traced program, whatever the weights
(see :mod:`jaxrf._structural`); :func:`support_map` gives every output position's support at
once with few backward passes (Jacobian colouring).

Layout: arrays are ``(batch, *spatial, channels)`` (channels-last, NHWC in 2-D) unless
``spatial_axes`` names the spatial axes; the batch axis is always axis 0, every other axis is a
channel axis. The network's output uses the same ``spatial_axes`` unless
``output_spatial_axes`` is given.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from ._field import check_index

REDUCTIONS = ("abs", "signed", "positive", "squared")
Box = tuple[tuple[int, int], ...]


class NonFiniteGradientError(ValueError):
    """A gradient map holds NaN or inf values (raised unless the caller asked to keep them)."""


class NonFiniteGradientWarning(UserWarning):
    """A gradient map holds NaN or inf values and ``nonfinite="warn"`` was asked for."""


# ---------------------------------------------------------------------------------------
# Layout: which axes are batch, spatial, channels.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Axes of one array: batch is axis 0, ``spatial`` in the order given, the rest channels."""

    ndim: int
    spatial: tuple[int, ...]

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(a for a in range(1, self.ndim) if a not in self.spatial)

    def spatial_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(shape[a]) for a in self.spatial)

    def channel_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(shape[a]) for a in self.channels)


def make_layout(shape: Sequence[int], spatial_axes, argument: str) -> Layout:
    """Canonicalise ``spatial_axes`` (None: channels-last) for an array of ``shape``."""
    ndim = len(shape)
    if spatial_axes is None:
        if ndim < 3:
            raise ValueError(
                f"`{argument}` has shape {tuple(shape)}; with the default channels-last layout it "
                "must be (batch, *spatial, channels), at least 3 axes; add a batch axis "
                "(x[None]) or a channel axis (x[..., None]), or give spatial_axes=."
            )
        return Layout(ndim, tuple(range(1, ndim - 1)))
    axes = (spatial_axes,) if isinstance(spatial_axes, numbers.Integral) else spatial_axes
    try:
        axes = tuple(int(a) for a in axes)
    except TypeError:
        raise TypeError(
            f"`spatial_axes` (={spatial_axes!r}) must be a tuple of array axes, e.g. (2, 3) for "
            "NCHW."
        ) from None
    axes = tuple(a + ndim if a < 0 else a for a in axes)
    if not axes or len(set(axes)) != len(axes) or any(not 1 <= a < ndim for a in axes):
        raise ValueError(
            f"`spatial_axes` (={spatial_axes!r}) for `{argument}` of shape {tuple(shape)} must be "
            f"distinct axes in 1..{ndim - 1} (axis 0 is the batch); e.g. (2, 3) for NCHW."
        )
    return Layout(ndim, axes)


def check_array(x, argument: str = "x") -> jax.Array:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"`{argument}` (={type(x).__name__}) must be an array (numpy or jax).")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"`{argument}` has dtype {x.dtype}; gradients need a floating input: "
            f"{argument}.astype(jnp.float32)."
        )
    if x.shape[0] < 1:
        raise ValueError(f"`{argument}` has an empty batch axis (shape {x.shape}).")
    return x


def check_reduce(reduce: str) -> str:
    if reduce not in REDUCTIONS:
        raise ValueError(
            f"`reduce` (={reduce!r}) must be one of {REDUCTIONS}: how input channels are combined "
            "(sum of |g|, sum of g, sum of max(g, 0), sum of g**2)."
        )
    return reduce


def center_index(spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """The centre output position ``n // 2`` per axis (Luo's and RepLKNet's choice)."""
    return tuple(n // 2 for n in spatial_shape)


def channel_weight_array(
    channel_shape: Sequence[int], channel, channel_weights, key, dtype
) -> jax.Array:
    """Weights of the output cotangent over the output channel axes.

    ``channel=None, channel_weights=None``: all ones (the sum of all channels). ``channel``: a
    one-hot at that channel (int for one channel axis, tuple for several). ``channel_weights``:
    an array of the output channel shape, or ``"random"`` (standard normal from ``key``), the
    fix for a network whose channel sum is constant (a final LayerNorm).
    """
    shape = tuple(channel_shape)
    if channel is not None and channel_weights is not None:
        raise ValueError(
            f"give `channel` (={channel!r}) or `channel_weights`, not both; a one-hot channel is "
            "a special channel weighting."
        )
    if channel is not None:
        index = (channel,) if isinstance(channel, numbers.Integral) else tuple(channel)
        if len(index) != len(shape) or any(
            not isinstance(c, numbers.Integral) or not 0 <= c < n
            for c, n in zip(index, shape, strict=False)
        ):
            raise ValueError(
                f"`channel` (={channel!r}) must index the output channels, of shape {shape}: "
                f"one int per channel axis, each in 0..n-1."
            )
        w = np.zeros(shape, dtype)
        w[index] = 1
        return jnp.asarray(w)
    if channel_weights is None:
        return jnp.ones(shape, dtype)
    if isinstance(channel_weights, str):
        if channel_weights != "random":
            raise ValueError(
                f"`channel_weights` (={channel_weights!r}) must be an array of shape {shape} or "
                "'random'."
            )
        key = jax.random.key(0) if key is None else key
        return jax.random.normal(key, shape, dtype)
    w = jnp.asarray(channel_weights, dtype)
    if w.shape != shape:
        raise ValueError(
            f"`channel_weights` has shape {w.shape}; it must have the output channel shape {shape}."
        )
    return w


# ---------------------------------------------------------------------------------------
# The jitted pullback.
# ---------------------------------------------------------------------------------------


def _place(values: jax.Array, axes: Sequence[int], ndim: int) -> jax.Array:
    """Reshape ``values`` (axes in increasing order) to broadcast against an ``ndim`` array."""
    order = np.argsort(axes)
    values = jnp.transpose(values, tuple(order)) if len(axes) > 1 else values
    shape = [1] * ndim
    for a, n in zip(sorted(axes), values.shape, strict=True):
        shape[a] = n
    return jnp.reshape(values, shape)


def reduce_channels(g: jax.Array, layout: Layout, reduce: str) -> jax.Array:
    """``(batch, ...)`` input gradient -> ``(batch, *spatial)`` map, channels combined."""
    g = jnp.transpose(g, (0, *layout.spatial, *layout.channels))
    axes = tuple(range(1 + len(layout.spatial), g.ndim))
    if reduce == "abs":
        g = jnp.abs(g)
    elif reduce == "positive":
        g = jnp.maximum(g, 0)
    elif reduce == "squared":
        g = g * g
    return jnp.sum(g, axis=axes)


def seed_from_spatial(
    seed: jax.Array, weights: jax.Array, out_shape: Sequence[int], layout: Layout, dtype
) -> jax.Array:
    """Output cotangent: ``seed`` (output spatial shape) x ``weights`` (channels), every sample."""
    ndim = len(out_shape)
    ct = _place(seed.astype(dtype), layout.spatial, ndim)
    if layout.channels:
        ct = ct * _place(weights.astype(dtype), layout.channels, ndim)
    return jnp.broadcast_to(ct, tuple(out_shape))


def input_gradient(fn, x, seed, weights, out_layout: Layout):
    """Input cotangent of ``fn`` at ``x`` for a spatial ``seed`` (only d/dx is computed)."""
    y, pullback = jax.vjp(fn, x)
    ct = seed_from_spatial(seed, weights, y.shape, out_layout, y.dtype)
    return pullback(ct)[0]


@functools.partial(jax.jit, static_argnames=("fn", "in_layout", "out_layout", "reduce"))
def _map_at_index(fn, x, index, weights, *, in_layout, out_layout, reduce):
    out_spatial = out_layout.spatial_shape(jax.eval_shape(fn, x).shape)
    ndim = len(out_spatial)
    seed = functools.reduce(
        jnp.multiply,
        [
            jnp.reshape(jnp.arange(n) == index[a], [n if b == a else 1 for b in range(ndim)])
            for a, n in enumerate(out_spatial)
        ],
    )
    g = input_gradient(fn, x, seed, weights, out_layout)
    return reduce_channels(g, in_layout, reduce)


@functools.partial(jax.jit, static_argnames=("fn", "in_layout", "out_layout", "reduce"))
def map_for_seed(fn, x, seed, weights, *, in_layout, out_layout, reduce):
    """``(batch, *spatial)`` gradient map for an arbitrary spatial cotangent ``seed``."""
    g = input_gradient(fn, x, seed, weights, out_layout)
    return reduce_channels(g, in_layout, reduce)


def _support(pull, seeds, weights, in_layout: Layout):
    """``(k, *out_spatial)`` seeds x ``(p, *channels)`` weights -> ``(k, p, batch, *spatial)``.

    ``pull(seed, w)`` is one input gradient; ``jax.vmap`` batches the ``k * p`` backward passes
    (a forward pass closed over by ``pull`` is computed once).
    """

    def one(seed, w):
        return reduce_channels(pull(seed, w), in_layout, "abs")

    return jax.vmap(jax.vmap(one, (None, 0)), (0, None))(seeds, weights)


@functools.partial(jax.jit, static_argnames=("fn", "in_layout", "out_layout"))
def _measured_masks(fn, x, seeds, weights, *, in_layout, out_layout):
    """Masks ``(k, *spatial)`` (union over weights and samples) and non-finite flags ``(k,)``."""
    y, pullback = jax.vjp(fn, x)

    def pull(seed, w):
        return pullback(seed_from_spatial(seed, w, y.shape, out_layout, y.dtype))[0]

    values = _support(pull, seeds, weights, in_layout)
    bad = jnp.any(~jnp.isfinite(values), axis=tuple(range(1, values.ndim)))
    return jnp.any(values > 0, axis=(1, 2)), bad


def structural_masks(fn, x, out_shape, in_layout: Layout, out_layout: Layout, unknown: str):
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

        @jax.jit
        def masks(seeds, weights):
            return jnp.any(_support(pull, seeds, weights, in_layout) > 0, axis=(1, 2))

        cache[key] = masks
    return cache[key]


def check_finite(values: np.ndarray, what: str, nonfinite: str) -> None:
    """Raise (or warn) when ``values`` (``(batch, *spatial)``) has NaN or inf entries."""
    if nonfinite not in ("raise", "warn", "keep"):
        raise ValueError(f"`nonfinite` (={nonfinite!r}) must be 'raise', 'warn' or 'keep'.")
    bad = ~np.isfinite(values)
    count = int(bad.sum())
    if count == 0 or nonfinite == "keep":
        return
    where = tuple(int(v) for v in np.argwhere(bad)[0])
    message = (
        f"{what}: {count} of {values.size} values are NaN or inf (first at sample {where[0]}, "
        f"input position {where[1:]}); the network overflows or divides by zero there. Use "
        "float64, check the input, or pass nonfinite='warn' / 'keep' to get the map anyway."
    )
    if nonfinite == "raise":
        raise NonFiniteGradientError(message)
    import warnings

    warnings.warn(message, NonFiniteGradientWarning, stacklevel=3)


def _shapes(fn, x, spatial_axes, output_spatial_axes):
    in_layout = make_layout(x.shape, spatial_axes, "x")
    try:
        out = jax.eval_shape(fn, x)
    except TypeError as e:
        raise TypeError(f"`fn` could not be called on `x` of shape {x.shape}: {e}") from e
    if not hasattr(out, "shape"):
        raise TypeError(f"`fn` must return one array; it returned {type(out).__name__}.")
    axes = spatial_axes if output_spatial_axes is None else output_spatial_axes
    out_layout = make_layout(out.shape, axes, "fn(x)")
    if len(out_layout.spatial) != len(in_layout.spatial):
        raise ValueError(
            f"`fn(x)` has shape {out.shape} with spatial axes {out_layout.spatial}, but `x` has "
            f"{len(in_layout.spatial)} spatial axes; give output_spatial_axes= to name them."
        )
    if out.shape[0] != x.shape[0]:
        raise ValueError(
            f"`fn(x)` has batch size {out.shape[0]} but `x` has {x.shape[0]}; axis 0 must be "
            "the batch in both."
        )
    return in_layout, out_layout, out


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
        nonfinite: ``"raise"`` (default) on NaN/inf gradients, ``"warn"``, or ``"keep"``.

    Returns:
        Float numpy array ``(batch, *spatial)``: the map of every sample, in the order of
        ``spatial_axes``. RepLKNet's variant (cotangent = relu of the output) is
        ``gradient_map(lambda x: jax.nn.relu(fn(x)), x, index, reduce="positive")`` up to the
        cotangent's mask: it weights channels by whether they are positive.

    Raises:
        ValueError: ``index`` outside the output, bad ``reduce`` / ``channel`` / shapes.
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
    in_layout, out_layout, out = _shapes(fn, x, spatial_axes, output_spatial_axes)
    index = check_index(index, out_layout.spatial_shape(out.shape))
    weights = channel_weight_array(
        out_layout.channel_shape(out.shape), channel, channel_weights, key, out.dtype
    )
    values = _map_at_index(
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


class _Prober:
    """Spatial seeds (output spatial shape) -> bool masks of the input spatial shape.

    :meth:`masks` pulls back a stack of seeds in one jitted call: the forward pass (measured
    mode) is shared and the backward passes are batched with ``jax.vmap``; only bool masks
    come back to the host.
    """

    def __init__(
        self,
        fn,
        x,
        *,
        mode,
        channel,
        channel_weights,
        key,
        per_channel,
        spatial_axes,
        output_spatial_axes,
        nonfinite,
        unknown,
    ):
        self.x = check_array(x)
        self.mode = _check_mode(mode)
        self.fn = fn
        self.in_layout, self.out_layout, out = _shapes(
            fn, self.x, spatial_axes, output_spatial_axes
        )
        self.input_shape = self.in_layout.spatial_shape(self.x.shape)
        self.output_shape = self.out_layout.spatial_shape(out.shape)
        channel_shape = self.out_layout.channel_shape(out.shape)
        if mode == "measured" and nonfinite not in ("raise", "warn", "keep"):
            raise ValueError(f"`nonfinite` (={nonfinite!r}) must be 'raise', 'warn' or 'keep'.")
        self.nonfinite = nonfinite
        if per_channel:
            if channel is not None or channel_weights is not None:
                raise ValueError(
                    "`per_channel=True` probes every channel; drop `channel` / `channel_weights`."
                )
            self.weights = [
                channel_weight_array(channel_shape, c, None, None, out.dtype)
                for c in np.ndindex(*channel_shape)
            ]
        else:
            self.weights = [
                channel_weight_array(channel_shape, channel, channel_weights, key, out.dtype)
            ]
        self._weight_stack = jnp.stack(self.weights)
        if mode == "structural":
            self._masks = structural_masks(
                fn, self.x, tuple(out.shape), self.in_layout, self.out_layout, unknown
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
        masks = np.asarray(masks)
        if self.nonfinite != "keep":
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
                    check_finite(
                        np.asarray(values), "actual_receptive_field (measured)", self.nonfinite
                    )
        return masks

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
        nonfinite: ``"raise"`` (default), ``"warn"`` or ``"keep"`` for NaN/inf gradients.
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
    prober = _Prober(
        fn,
        x,
        mode=mode,
        channel=channel,
        channel_weights=channel_weights,
        key=key,
        per_channel=per_channel,
        spatial_axes=spatial_axes,
        output_spatial_axes=output_spatial_axes,
        nonfinite=nonfinite,
        unknown=unknown,
    )
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


# ---------------------------------------------------------------------------------------
# Every output position at once: Jacobian colouring.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SupportMap:
    """The support (box and mask) of every output position, from few backward passes.

    Attributes:
        boxes: int numpy array ``(*output_shape, ndim, 2)``: inclusive ``(lo, hi)`` per axis of
            each output position's support; ``-1`` where the support is empty.
        passes: backward passes used in all (probes + colouring passes + refinements).
        probe_passes: of which single-position probes that measured the support size.
        spacing: output-index spacing per axis between positions sharing a pass.
        mode: ``"measured"`` or ``"structural"``.
        input_shape, output_shape: spatial shapes.
    """

    boxes: np.ndarray = field(repr=False)
    passes: int
    probe_passes: int
    spacing: tuple[int, ...]
    mode: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
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


def _seeds_per_call(seeds_per_call, prober: _Prober) -> int:
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
    prober: _Prober, seeds: Iterator[np.ndarray], per_call: int, done: list[int], first: int = 0
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
    channel=None,
    channel_weights=None,
    key=None,
    per_channel: bool = False,
    spatial_axes=None,
    output_spatial_axes=None,
    nonfinite: str = "raise",
    unknown: str = "raise",
    max_refinements: int = 4,
    seeds_per_call: int | None = None,
) -> SupportMap:
    """The support of every output position at once, with few backward passes.

    Naively one backward pass per output position. Jacobian colouring puts one-hot cotangents
    at many positions whose supports cannot overlap into the same pass and reads each one's
    support from its own part of the input. The spacing comes from a **measured** support:
    a few positions (centre, its neighbours along each axis, the corners) are probed one by
    one, their boxes give a per-axis affine window ``S i + [lo, hi]`` (plus a margin) for every
    position, and positions whose windows are disjoint share a pass. Attribution is verified:
    every nonzero input pixel of a pass must fall in the window of a position seeded in that
    pass (the windows are disjoint, so at most one); otherwise the margins are doubled and the
    colouring redone (at most ``max_refinements`` times, then one pass per position). A
    support that overflows its window *into another seeded position's window* cannot be seen by
    this check; the margin (one effective stride plus one pixel, doubled at each refinement)
    is there for that, and misaligned networks are covered by probing the borders.

    Speed: ``seeds_per_call`` passes are computed by one jitted call (the backward passes
    batched with ``jax.vmap``, the forward pass shared), only bool masks come back to the host,
    and the attribution is vectorised; the compiled programs are reused by later calls on the
    same ``fn`` and input shape.

    Args:
        fn, x: as in :func:`actual_receptive_field` (``x`` the samples of a measured union).
        mode: ``"structural"`` (default) or ``"measured"``.
        channel, channel_weights, key, per_channel, spatial_axes, output_spatial_axes,
            nonfinite, unknown: as in :func:`actual_receptive_field`.
        max_refinements: margin doublings before falling back to one pass per position.
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
    prober = _Prober(
        fn,
        x,
        mode=mode,
        channel=channel,
        channel_weights=channel_weights,
        key=key,
        per_channel=per_channel,
        spatial_axes=spatial_axes,
        output_spatial_axes=output_spatial_axes,
        nonfinite=nonfinite,
        unknown=unknown,
    )
    per_call = _seeds_per_call(seeds_per_call, prober)
    out_shape, in_shape = prober.output_shape, prober.input_shape
    ndim = len(out_shape)
    centre = center_index(out_shape)
    picks = set()
    for a, n in enumerate(out_shape):
        for i in {0, n - 1, centre[a], min(centre[a] + 1, n - 1), max(n // 4, 0)}:
            picks.add(tuple(i if c == a else centre[c] for c in range(ndim)))
    for corner in np.ndindex(*([2] * ndim)):
        picks.add(tuple((n - 1) * c for n, c in zip(out_shape, corner, strict=True)))
    picks = sorted(picks)
    done = [0]
    masks = _pull_back(prober, (prober.one_hot(p) for p in picks), per_call, done)
    probes = {p: mask_box(m) for p, m in zip(picks, masks, strict=True)}
    probe_passes = done[0]

    for attempt in range(max_refinements + 1):
        windows, spacing = _axis_windows(probes, out_shape, in_shape, 2**attempt)
        if np.prod(spacing) >= np.prod(out_shape):
            break
        boxes = np.full((*out_shape, ndim, 2), -1, int)
        residues = list(np.ndindex(*spacing))
        seeded = {
            r: [np.arange(s, n, m) for s, n, m in zip(r, out_shape, spacing, strict=True)]
            for r in residues
        }

        def seeds(residues=residues, seeded=seeded):
            for residue in residues:
                seed = np.zeros(out_shape, np.float32)
                seed[np.ix_(*seeded[residue])] = 1
                yield seed

        pass_masks, ok = {}, True
        masks = _pull_back(prober, seeds(), per_call, done, first=1)
        for residue, mask in zip(residues, masks, strict=True):
            found = _attribute(mask, seeded[residue], windows)
            if found is None:
                ok = False
                break
            pass_masks[residue] = mask
            boxes[np.ix_(*seeded[residue])] = found
        if ok:
            return SupportMap(
                boxes,
                done[0],
                probe_passes,
                spacing,
                mode,
                in_shape,
                out_shape,
                pass_masks,
                windows,
            )
    # Fallback: one pass per position, exact by construction.
    full = tuple(
        (np.zeros(n, int), np.full(n, m - 1)) for n, m in zip(out_shape, in_shape, strict=True)
    )
    boxes = np.full((*out_shape, ndim, 2), -1, int)
    pass_masks = {}
    positions = list(np.ndindex(*out_shape))
    masks = _pull_back(prober, (prober.one_hot(i) for i in positions), per_call, done)
    for index, mask in zip(positions, masks, strict=True):
        pass_masks[index] = mask
        b = mask_box(mask)
        if b is not None:
            boxes[index] = b
    return SupportMap(
        boxes, done[0], probe_passes, tuple(out_shape), mode, in_shape, out_shape, pass_masks, full
    )
