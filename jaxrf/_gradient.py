"""What every gradient probe shares: layouts, one-hot seeds, channel weights, the pullback.

Luo et al. (NeurIPS 2016) put a cotangent of 1 at one output unit and 0 elsewhere, pull it back
to the input and read the input gradient. The pieces here are used by the probes
(:func:`jaxrf.gradient_map`, :func:`jaxrf.actual_receptive_field`, :func:`jaxrf.support_map`)
and by the ERF (:func:`jaxrf.effective_receptive_field`):

* :class:`Layout`: which array axes are batch (axis 0), spatial and channels;
* :func:`center_index`: the centre output position, ``n // 2`` per axis;
* :func:`one_hot_seed` and :func:`seed_from_spatial`: the output cotangent, a spatial seed
  times channel weights (:func:`channel_weight_array`);
* :func:`input_gradient` and :func:`reduce_channels`: the pullback to the input only, and the
  input channels combined;
* :func:`check_nonfinite` and :func:`check_finite`: one vocabulary for NaN/inf gradients.

Layout: arrays are ``(batch, *spatial, channels)`` (channels-last, NHWC in 2-D) unless
``spatial_axes`` names the spatial axes; every axis but the batch and the spatial ones is a
channel axis.
"""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ._xla import jit

REDUCTIONS = ("abs", "signed", "positive", "squared")
NONFINITE = ("raise", "warn", "skip")
Box = tuple[tuple[int, int], ...]


class NonFiniteGradientError(ValueError):
    """A gradient map holds NaN or inf values (raised when ``nonfinite="raise"``).

    Attributes:
        partial: what was computed before the bad values were met, when the caller can use it
            (:func:`jaxrf.effective_receptive_field` puts the ERF of the batches before the bad
            one here, or None when there were none); None otherwise.
    """

    def __init__(self, message: str, partial=None):
        super().__init__(message)
        self.partial = partial


class NonFiniteGradientWarning(UserWarning):
    """A gradient map holds NaN or inf values and ``nonfinite="warn"`` was asked for."""


# ---------------------------------------------------------------------------------------
# Validation at the boundary.
# ---------------------------------------------------------------------------------------


def center_index(spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """The centre position ``n // 2`` per axis of a spatial shape (Luo's and RepLKNet's choice).

    Example:
        >>> center_index((7, 8))
        (3, 4)
    """
    return tuple(int(n) // 2 for n in spatial_shape)


def check_nonfinite(nonfinite: str) -> str:
    """The ``nonfinite`` vocabulary shared by every probe and the ERF.

    ``"raise"``: :class:`NonFiniteGradientError`; ``"warn"``: a
    :class:`NonFiniteGradientWarning`, then as ``"skip"``; ``"skip"``: carry on silently, leaving
    the NaN/inf values out of whatever is aggregated (what that means is stated by each
    function). ``"keep"``, the probes' earlier name for ``"skip"``, is still accepted.
    """
    if nonfinite == "keep":
        return "skip"
    if nonfinite not in NONFINITE:
        raise ValueError(
            f"`nonfinite` (={nonfinite!r}) must be 'warn', 'raise' or 'skip': what to do with "
            "NaN or inf gradients (warn and leave them out, stop with an error, or leave them "
            "out silently)."
        )
    return nonfinite


def check_array(x, argument: str = "x") -> jax.Array:
    """``x`` as a floating jax array with no empty axis, or a TypeError/ValueError."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"`{argument}` (={type(x).__name__}) must be an array (numpy or jax).")
    check_not_empty(x.shape, argument)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"`{argument}` has dtype {x.dtype}; gradients need a floating input: "
            f"{argument}.astype(jnp.float32)."
        )
    return x


def check_not_empty(shape: Sequence[int], argument: str) -> None:
    """A ValueError naming ``shape`` when one of its axes has length 0."""
    empty = [a for a, n in enumerate(shape) if int(n) == 0]
    if empty:
        what = "batch axis (axis 0)" if empty[0] == 0 else f"axis {empty[0]}"
        raise ValueError(
            f"`{argument}` has shape {tuple(int(n) for n in shape)}, with an empty {what}; "
            "every axis needs at least one entry (give at least one sample of nonzero size)."
        )


def check_choice(name: str, value, choices: Sequence[str], meaning: str) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming both and ``meaning``."""
    if value not in choices:
        raise ValueError(f"`{name}` (={value!r}) must be one of {tuple(choices)}: {meaning}.")
    return value


def check_reduce(reduce: str) -> str:
    meaning = (
        "how input channels are combined (sum of |g|, sum of g, sum of max(g, 0), sum of g**2)"
    )
    return check_choice("reduce", reduce, REDUCTIONS, meaning)


def check_finite(values: np.ndarray, what: str, nonfinite: str) -> None:
    """Raise (or warn) when ``values`` (``(batch, *spatial)``) has NaN or inf entries."""
    nonfinite = check_nonfinite(nonfinite)
    bad = ~np.isfinite(values)
    count = int(bad.sum())
    if count == 0 or nonfinite == "skip":
        return
    where = tuple(int(v) for v in np.argwhere(bad)[0])
    message = (
        f"{what}: {count} of {values.size} values are NaN or inf (first at sample {where[0]}, "
        f"input position {where[1:]}); the network overflows or divides by zero there. Use "
        "float64, check the input, or pass nonfinite='warn' / 'skip' to get the map anyway."
    )
    if nonfinite == "raise":
        raise NonFiniteGradientError(message)
    warnings.warn(message, NonFiniteGradientWarning, stacklevel=3)


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


def layouts(
    x_shape, out_shape, spatial_axes, output_spatial_axes, inputs: str = "x", output="fn(x)"
):
    """Input and output :class:`Layout` of a network, checked against each other.

    The output uses ``spatial_axes`` unless ``output_spatial_axes`` is given, and must have as
    many spatial axes as the input and the same batch size.
    """
    in_layout = make_layout(x_shape, spatial_axes, inputs)
    axes = spatial_axes if output_spatial_axes is None else output_spatial_axes
    out_layout = make_layout(out_shape, axes, output)
    if len(out_layout.spatial) != len(in_layout.spatial):
        raise ValueError(
            f"`{output}` has shape {tuple(out_shape)} with spatial axes {out_layout.spatial}, but "
            f"`{inputs}` has {len(in_layout.spatial)} spatial axes; give output_spatial_axes= to "
            "name them."
        )
    if out_shape[0] != x_shape[0]:
        raise ValueError(
            f"`{output}` has batch size {out_shape[0]} but `{inputs}` has {x_shape[0]}; axis 0 "
            "must be the batch in both."
        )
    return in_layout, out_layout


def output_shape(fn, x, argument: str = "fn"):
    """``jax.eval_shape(fn, x)`` with jaxrf's errors for a call that fails or a non-array."""
    try:
        out = jax.eval_shape(fn, x)
    except TypeError as e:
        raise TypeError(
            f"`{argument}` could not be called on an input of shape {x.shape}: {e}"
        ) from e
    if not hasattr(out, "shape"):
        raise TypeError(f"`{argument}` must return one array; it returned {type(out).__name__}.")
    return out


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
# Seeds and the pullback.
# ---------------------------------------------------------------------------------------


def one_hot_seed(out_spatial: Sequence[int], index) -> jax.Array:
    """Bool array of spatial shape ``out_spatial``: True at ``index`` only (``index`` traced).

    Built as an outer product of per-axis comparisons, so a traced ``index`` compiles once for
    every position.
    """
    ndim = len(out_spatial)
    return functools.reduce(
        jnp.multiply,
        [
            jnp.reshape(jnp.arange(n) == index[a], [n if b == a else 1 for b in range(ndim)])
            for a, n in enumerate(out_spatial)
        ],
    )


def _place(values: jax.Array, axes: Sequence[int], ndim: int) -> jax.Array:
    """Reshape ``values`` (axes in increasing order) to broadcast against an ``ndim`` array."""
    order = np.argsort(axes)
    values = jnp.transpose(values, tuple(order)) if len(axes) > 1 else values
    shape = [1] * ndim
    for a, n in zip(sorted(axes), values.shape, strict=True):
        shape[a] = n
    return jnp.reshape(values, shape)


def seed_from_spatial(
    seed: jax.Array, weights: jax.Array, out_shape: Sequence[int], layout: Layout, dtype
) -> jax.Array:
    """Output cotangent: ``seed`` (output spatial shape) x ``weights`` (channels), every sample."""
    ndim = len(out_shape)
    ct = _place(seed.astype(dtype), layout.spatial, ndim)
    if layout.channels:
        ct = ct * _place(weights.astype(dtype), layout.channels, ndim)
    return jnp.broadcast_to(ct, tuple(out_shape))


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


def input_gradient(fn, x, seed, weights, out_layout: Layout):
    """Input cotangent of ``fn`` at ``x`` for a spatial ``seed`` (only d/dx is computed)."""
    y, pullback = jax.vjp(fn, x)
    ct = seed_from_spatial(seed, weights, y.shape, out_layout, y.dtype)
    return pullback(ct)[0]


@functools.partial(jit, static_argnames=("fn", "in_layout", "out_layout", "reduce"))
def map_at_index(fn, x, index, weights, *, in_layout, out_layout, reduce):
    """``(batch, *spatial)`` gradient map of output ``index`` (traced: no recompilation)."""
    out_spatial = out_layout.spatial_shape(jax.eval_shape(fn, x).shape)
    g = input_gradient(fn, x, one_hot_seed(out_spatial, index), weights, out_layout)
    return reduce_channels(g, in_layout, reduce)


@functools.partial(jit, static_argnames=("fn", "in_layout", "out_layout", "reduce"))
def map_for_seed(fn, x, seed, weights, *, in_layout, out_layout, reduce):
    """``(batch, *spatial)`` gradient map for an arbitrary spatial cotangent ``seed``."""
    g = input_gradient(fn, x, seed, weights, out_layout)
    return reduce_channels(g, in_layout, reduce)


# ---------------------------------------------------------------------------------------
# Layer taps.
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def tapped(fn, shape: tuple[int, ...], dtype: str, layers: tuple[str, ...], spatial_axes=None):
    """``x -> tuple`` of the feature maps of ``layers`` (names from ``rf.layers``) of ``fn``.

    The program of ``fn`` traced at an input of ``shape`` and ``dtype``, cut after those layers
    (:func:`jaxrf._tap.intermediate`): its outputs are those of the network truncated by hand.
    Cached, so probing the same layers again reuses the same function (and its compiled
    programs).
    """
    from ._tap import intermediate

    bad = [n for n in layers if not isinstance(n, str)]
    if bad or not layers:
        raise TypeError(
            f"`layer` (={layers!r}) must be a layer name (str) from "
            "[r.name for r in jaxrf.receptive_field(fn, x).layers]"
            + (", or a non-empty list of them." if len(layers) != 1 else ".")
        )
    return intermediate(
        fn, jax.ShapeDtypeStruct(shape, dtype), list(layers), spatial_axes=spatial_axes
    )


@functools.lru_cache(maxsize=64)
def _first(g):
    return lambda x: g(x)[0]


def truncate(fn, x, layer: str | None, spatial_axes=None):
    """``fn`` itself (``layer=None``) or ``fn`` cut after ``layer``, as a function of ``x``."""
    if layer is None:
        return fn
    if not isinstance(layer, str):
        raise TypeError(
            f"`layer` (={layer!r}) must be one layer name (str) from "
            "[r.name for r in jaxrf.receptive_field(fn, x).layers]."
        )
    return _first(tapped(fn, tuple(x.shape), str(x.dtype), (layer,), spatial_axes))


# ---------------------------------------------------------------------------------------
# Token grids.
# ---------------------------------------------------------------------------------------


def check_token_grid(token_grid, x_shape, spatial_axes, output_spatial_axes):
    """``token_grid`` as a tuple of positive ints, one per spatial axis of the input (None: None).

    Raises:
        ValueError: ``token_grid`` with ``output_spatial_axes`` (both say where the output's
            grid is), or not one positive int per spatial axis of ``x_shape``.
    """
    if token_grid is None:
        return None
    if output_spatial_axes is not None:
        raise ValueError(
            f"give `token_grid` (={token_grid!r}) or `output_spatial_axes` "
            f"(={output_spatial_axes!r}), not both: both say where the output's grid is "
            "(token_grid views a token sequence (batch, P + h*w, channels) on its h x w grid; "
            "output_spatial_axes names the spatial axes of an output that has them)."
        )
    n = len(make_layout(x_shape, spatial_axes, "x").spatial)
    if (
        not isinstance(token_grid, tuple | list)
        or len(token_grid) != n
        or any(isinstance(g, bool) or not isinstance(g, numbers.Integral) for g in token_grid)
        or any(g < 1 for g in token_grid)
    ):
        raise ValueError(
            f"`token_grid` (={token_grid!r}) must be a tuple of {n} positive ints, one per "
            f"spatial axis of the input (shape {tuple(x_shape)}): the shape of the output's "
            "token grid, e.g. token_grid=(14, 14) for 14 x 14 patches."
        )
    return tuple(int(g) for g in token_grid)


def tokens_to_grid(y, grid: tuple[int, ...]):
    """Token sequence ``(batch, P + prod(grid), channels)`` -> ``(batch, *grid, channels)``.

    The ``P`` prefix tokens (CLS, registers: the token count minus ``prod(grid)``) are dropped
    and the rest unflattened row-major: position ``(i, j)`` of an ``h x w`` grid is token
    ``P + i * w + j``.

    Raises:
        ValueError: ``y`` is not 3-D, or has fewer than ``prod(grid)`` tokens.
    """
    size = int(np.prod(grid))
    if y.ndim != 3:
        raise ValueError(
            f"`token_grid` (={grid}) needs the probed output to be a token sequence (batch, "
            f"tokens, channels), 3-D; it has shape {tuple(y.shape)}. Drop token_grid (or give "
            "output_spatial_axes=) for an output that has spatial axes."
        )
    if size > y.shape[1]:
        raise ValueError(
            f"`token_grid` (={grid}) has {size} tokens but the probed output has only "
            f"{y.shape[1]} (shape {tuple(y.shape)}); the grid must fit in the token axis (the "
            "prefix P = tokens - prod(token_grid) >= 0): give the patch grid's shape."
        )
    prefix = int(y.shape[1]) - size
    return y[:, prefix:, :].reshape(y.shape[0], *grid, y.shape[2])


def on_token_grid(fn, x, spatial_axes=None, output_spatial_axes=None, token_grid=None):
    """``fn`` itself, or the grid view of a network whose output is a token sequence.

    A network mapping ``(batch, *spatial, channels)`` to ``(batch, P + h*w, channels)`` (a ViT
    with ``P`` prefix tokens: CLS, registers, distillation) is probed on its ``h x w`` grid
    (:func:`tokens_to_grid`): output position ``(i, j)`` is token ``P + i * w + j``. The grid
    is ``token_grid`` when given (nothing is traced), else it comes from the traced flattening
    (``jaxrf.receptive_field(fn, x).output_shape``) and ``P`` is the rest of the token axis.
    Without ``token_grid``, any other output, or one whose layout is given by
    ``output_spatial_axes``, is probed as it is.

    Returns:
        ``(fn, output_spatial_axes)``: the function probed and its output's spatial axes (the
        view is channels-last: axes ``1..len(grid)``).
    """
    grid = check_token_grid(token_grid, x.shape, spatial_axes, output_spatial_axes)
    if grid is not None:
        return _grid_view(fn, grid), tuple(range(1, len(grid) + 1))
    if output_spatial_axes is not None or len(x.shape) < 4:
        return fn, output_spatial_axes
    out = output_shape(fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if len(out.shape) != 3:
        return fn, output_spatial_axes
    grid = _traced_grid(fn, tuple(x.shape), str(x.dtype), spatial_axes, int(out.shape[1]))
    return _grid_view(fn, grid), output_spatial_axes


@functools.lru_cache(maxsize=64)
def _traced_grid(fn, shape, dtype, spatial_axes, tokens: int) -> tuple[int, ...]:
    """The grid of a token sequence of ``tokens`` tokens, read from the traced flattening."""
    from ._trace import receptive_field

    grid = receptive_field(
        fn, jax.ShapeDtypeStruct(shape, dtype), spatial_axes=spatial_axes
    ).output_shape
    if len(grid) != len(shape) - 2 or tokens - int(np.prod(grid)) < 0:
        raise ValueError(
            f"`fn(x)` is a token sequence of {tokens} tokens whose grid jaxrf reads as {grid}, "
            f"which does not fit the input's {len(shape) - 2} spatial axes; give the grid with "
            "token_grid=(h, w), name the output's spatial axes with output_spatial_axes= (or "
            "reshape the tokens to a grid in fn)."
        )
    return tuple(grid)


@functools.lru_cache(maxsize=64)
def _grid_view(fn, grid: tuple[int, ...]):
    """``x -> tokens_to_grid(fn(x), grid)``, one function per ``(fn, grid)`` (no recompiling)."""

    def view(v):
        return tokens_to_grid(fn(v), grid)

    return view
