"""Effective receptive field (Luo et al., NeurIPS 2016): mean gradient maps over inputs and weights.

Streaming: inputs come as one array (cut into ``batch_size`` chunks) or as an iterable of
batches; only the running sum of the maps (float64, on the host) is kept, so memory does not
grow with the number of samples. Each batch runs one jitted program: ``vmap`` over the samples
of a per-sample ``jax.vjp`` with respect to the input only (weights are closed over and never
differentiated), with the batch sharded over the devices.

Several devices: the batch axis is sharded over every local device with a one-axis
:class:`jax.sharding.Mesh` and ``NamedSharding(mesh, P("batch"))`` (batches are padded to a
multiple of the device count with masked samples); the sum over samples is a cross-device
reduction inside the jitted program. Several hosts: call ``jax.distributed.initialize()`` on
every process first, then call :func:`effective_receptive_field` on every process with that
process's share of the inputs (the same number of batches of the same size everywhere); the
mesh then spans ``jax.devices()`` and each process's batch is assembled into one global array
with ``jax.make_array_from_process_local_data``, so every process gets the same global map.
On CPU the cross-process sum goes over gloo (jax's default ``jax_cpu_collectives_implementation``);
tests/test_distributed.py runs two local processes (coordinator on ``127.0.0.1``, one or two
forced host devices each) and checks both maps against the hand-derived mean over all inputs.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _stats
from ._field import check_index
from ._lowering import lower_convs, resolve_lowering
from ._probe import (
    Layout,
    NonFiniteGradientError,
    center_index,
    channel_weight_array,
    check_reduce,
    input_gradient,
    make_layout,
    reduce_channels,
)


@dataclass(frozen=True)
class _Apply:
    """``fn`` as ``(params, x) -> y`` (hashable, so jit caches one program per network)."""

    fn: Callable
    takes_params: bool

    def __call__(self, params, x):
        return self.fn(params, x) if self.takes_params else self.fn(x)


def one_hot_seed(out_spatial, index):
    ndim = len(out_spatial)
    return functools.reduce(
        jnp.multiply,
        [
            jnp.reshape(jnp.arange(n) == index[a], [n if b == a else 1 for b in range(ndim)])
            for a, n in enumerate(out_spatial)
        ],
    )


@functools.partial(
    jax.jit, static_argnames=("apply", "in_layout", "out_layout", "reduce", "lowering")
)
def _batch_sum(
    apply, params, xb, valid, index, weights, *, in_layout, out_layout, reduce, lowering
):
    """Sum over the valid, finite samples of the per-sample maps; counts of each kind."""
    lowered = lower_convs(apply, lowering)

    def one(xi):
        fn = functools.partial(lowered, params)
        out_spatial = out_layout.spatial_shape(jax.eval_shape(fn, xi[None]).shape)
        g = input_gradient(fn, xi[None], one_hot_seed(out_spatial, index), weights, out_layout)
        return reduce_channels(g, in_layout, reduce)[0]

    maps = jax.vmap(one)(xb)
    finite = jnp.all(jnp.isfinite(maps), axis=tuple(range(1, maps.ndim)))
    keep = valid & finite
    total = jnp.sum(jnp.where(keep.reshape((-1,) + (1,) * (maps.ndim - 1)), maps, 0), axis=0)
    bad = valid & ~finite
    first_bad = jnp.argmax(bad)
    return total, jnp.sum(keep), jnp.sum(bad), first_bad


@dataclass(frozen=True)
class EffectiveReceptiveField:
    """Mean gradient map of one output position, and its statistics.

    Attributes:
        map: float64 numpy array of the input's spatial shape: the mean over samples (and
            weight draws) of the reduced input-gradient maps.
        count: samples averaged (all draws together; samples with NaN/inf skipped excluded).
        num_draws: weight draws (1 when no ``init_fn``).
        index: the output position probed.
        reduce: how input channels were combined.
        input_shape, output_shape: spatial shapes.
        nonfinite_samples: samples skipped for NaN/inf gradients (``nonfinite="skip"``).
    """

    map: np.ndarray = field(repr=False)
    count: int
    num_draws: int
    index: tuple[int, ...]
    reduce: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    nonfinite_samples: int = 0

    def luo_size(self, **options) -> _stats.LuoSize:
        """:func:`jaxrf.luo_size` of :attr:`map`."""
        return _stats.luo_size(self.map, **options)

    def std(self, **options) -> tuple[float, ...]:
        """:func:`jaxrf.erf_std` of :attr:`map` (per-axis standard deviation)."""
        return _stats.erf_std(self.map, **options)

    def centroid(self, **options) -> tuple[float, ...]:
        """:func:`jaxrf.centroid` of :attr:`map`."""
        return _stats.centroid(self.map, **options)

    def centroid_offset(self, center, **options) -> tuple[float, ...]:
        """:func:`jaxrf.centroid_offset`: centroid minus the analytic ``center``."""
        return _stats.centroid_offset(self.map, center, **options)

    def area_ratio(self, thresholds=(0.2, 0.3, 0.5, 0.99), **options) -> _stats.AreaRatio:
        """:func:`jaxrf.area_ratio` (RepLKNet) of :attr:`map`."""
        return _stats.area_ratio(self.map, thresholds, **options)

    def share_inside(self, box, **options) -> float:
        """:func:`jaxrf.share_inside`: fraction of the ERF's mass inside ``box``."""
        return _stats.share_inside(self.map, box, **options)


def _batches(inputs, batch_size):
    """Yield batches from an array (chunked) or an iterable of batches."""
    if hasattr(inputs, "shape"):
        n = inputs.shape[0]
        size = n if batch_size is None else batch_size
        for start in range(0, n, size):
            yield inputs[start : start + size]
    else:
        for b in inputs:
            if batch_size is not None and hasattr(b, "shape") and b.shape[0] > batch_size:
                for start in range(0, b.shape[0], batch_size):
                    yield b[start : start + batch_size]
            else:
                yield b


def _num_batches(inputs, batch_size):
    if hasattr(inputs, "shape"):
        size = inputs.shape[0] if batch_size is None else batch_size
        return -(-inputs.shape[0] // size)
    try:
        return len(inputs)
    except TypeError:
        return None


def _mesh(devices):
    devices = (
        list(jax.devices() if jax.process_count() > 1 else jax.local_devices())
        if devices is None
        else list(devices)
    )
    if not devices:
        raise ValueError("`devices` is empty; give at least one device or None for all.")
    return Mesh(np.array(devices), ("batch",)), len(devices)


def _put(mesh, n_devices, xb, valid):
    """Pad the batch to a multiple of the device count and shard it on the batch axis."""
    pad = (-xb.shape[0]) % n_devices
    if pad:
        xb = np.concatenate([np.asarray(xb), np.zeros((pad, *xb.shape[1:]), xb.dtype)])
        valid = np.concatenate([valid, np.zeros(pad, bool)])
    sharding = NamedSharding(mesh, P("batch"))
    if jax.process_count() > 1:
        put = functools.partial(jax.make_array_from_process_local_data, sharding)
        return put(np.asarray(xb)), put(valid)
    return jax.device_put(xb, sharding), jax.device_put(valid, sharding)


def effective_receptive_field(
    fn: Callable,
    inputs,
    index="center",
    *,
    init_fn: Callable | None = None,
    key=None,
    num_draws: int = 1,
    batch_size: int | None = None,
    reduce: str = "abs",
    channel=None,
    channel_weights=None,
    spatial_axes=None,
    output_spatial_axes=None,
    devices=None,
    progress: bool | None = None,
    nonfinite: str = "raise",
    crop=None,
    lowering: str = "auto",
) -> EffectiveReceptiveField:
    """Luo's effective receptive field: the mean gradient map of one output position.

    For every sample (and every weight draw) the one-hot output cotangent at ``index`` (all
    channels, or ``channel`` / ``channel_weights``) is pulled back to that sample's input
    (never to the weights), input channels are combined by ``reduce``, and the maps are
    averaged. Luo's protocol with random weights: give ``init_fn(key) -> params`` and a ``fn``
    taking ``(params, x)``; ``num_draws`` parameter sets are drawn from ``key`` and every
    input batch is run under each.

    Args:
        fn: ``x -> y``, or ``(params, x) -> y`` when ``init_fn`` is given; ``x`` is ``(batch,
            *spatial, channels)`` (see ``spatial_axes``). Each sample is pushed through ``fn``
            on its own (batch of 1, under ``vmap``), so batch statistics cannot mix samples.
        inputs: an array ``(N, *spatial, channels)``, or an iterable of such batches (streamed;
            with ``num_draws > 1`` it must be re-iterable, e.g. a list).
        index: output spatial position, or ``"center"`` (``n // 2`` per axis, the default).
        init_fn: ``key -> params`` for Luo's averaging over random initialisations.
        key: PRNG key for ``init_fn`` (default ``jax.random.key(0)``).
        num_draws: number of weight draws (needs ``init_fn`` when > 1).
        batch_size: samples per jitted step (chunks an array input; default: all at once).
        reduce: ``"abs"`` (default), ``"signed"``, ``"positive"`` or ``"squared"``.
        channel, channel_weights: output-channel weighting as in :func:`jaxrf.gradient_map`
            (``"random"`` draws fixed normal weights from ``jax.random.key(0)``).
        spatial_axes, output_spatial_axes: layout overrides as in :func:`jaxrf.gradient_map`.
        devices: devices to shard the batch over (default: all local devices; all devices
            under ``jax.distributed``).
        progress: show a tqdm bar (default: when there are more than 10 batches).
        nonfinite: ``"raise"`` (default: NaN/inf gradients raise, naming the sample) or
            ``"skip"`` (leave those samples out, counted in ``nonfinite_samples``).
        lowering: how convolutions and max-pools are compiled: ``"auto"`` (default:
            ``"matmul"`` on CPU devices, ``"none"`` elsewhere), ``"matmul"`` (1x1
            convolutions as matrix products and max-pool gradients as slices: XLA:CPU runs
            them near its matmul throughput; the ResNet-50 ERF step at 224 ran 1.24x and
            1.33x faster than with ``"none"`` in two runs, see results/benchmark.md and
            results/profile_erf.md), ``"patches"`` (every convolution as patches times a
            matrix: as fast on that benchmark, within its noise) or ``"none"`` (the network's
            own operations). Same sums in another order: in float64 the maps agree with
            ``"none"`` to 1e-14; in float32, ``"matmul"`` to 1e-6 of the map's maximum,
            ``"patches"`` to 1e-2 (rounding can flip a ReLU or max-pool decision, as between
            any two float32 programs).
        crop: a :class:`jaxrf.Crop` from :func:`jaxrf.crop_for_unit` for the probed unit: every
            sample is cut to the unit's receptive-field cone, the network runs forward and
            backward on the crop only, and the map is pasted back at full size. Exact (the
            crop keeps every layer's grid and SAME padding); ``index`` must then be the crop's
            ``output_index`` (or ``"center"`` when that is the crop's unit). Inputs must use the
            default layout (spatial axes between batch and channels).

    Returns:
        :class:`EffectiveReceptiveField` (``.map``, ``.count``, statistics methods).

    Raises:
        ValueError: bad ``index``, ``reduce``, shapes, or NaN/inf gradients (``nonfinite``).

    Example:
        >>> import jax, jax.numpy as jnp, jaxrf
        >>> conv = lambda x: jax.lax.conv_general_dilated(
        ...     x, jnp.ones((3, 1, 1)), (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))
        >>> erf = jaxrf.effective_receptive_field(lambda x: conv(conv(x)), jnp.ones((4, 7, 1)))
        >>> erf.map, erf.count
        (array([0., 1., 2., 3., 2., 1., 0.]), 4)
    """
    reduce = check_reduce(reduce)
    resolve_lowering(lowering)  # checks the value early
    if nonfinite not in ("raise", "skip"):
        raise ValueError(f"`nonfinite` (={nonfinite!r}) must be 'raise' or 'skip'.")
    if not isinstance(num_draws, numbers.Integral) or num_draws < 1:
        raise ValueError(f"`num_draws` (={num_draws!r}) must be a positive int.")
    if num_draws > 1 and init_fn is None:
        raise ValueError(
            f"`num_draws` (={num_draws}) > 1 needs `init_fn` (key -> params) to draw weights; "
            "fn then takes (params, x)."
        )
    if batch_size is not None and (not isinstance(batch_size, numbers.Integral) or batch_size < 1):
        raise ValueError(f"`batch_size` (={batch_size!r}) must be a positive int or None.")
    if num_draws > 1 and not hasattr(inputs, "shape") and iter(inputs) is inputs:
        raise TypeError(
            "`inputs` is a one-shot iterator but num_draws > 1 runs it once per draw; pass a "
            "list of batches or an array."
        )
    if not hasattr(inputs, "shape") and not isinstance(inputs, Iterable):
        raise TypeError(
            f"`inputs` (={type(inputs).__name__}) must be an array (N, *spatial, channels) or an "
            "iterable of such batches."
        )
    if crop is not None:
        return _cropped_erf(
            fn,
            inputs,
            index,
            crop,
            init_fn=init_fn,
            key=key,
            num_draws=num_draws,
            batch_size=batch_size,
            reduce=reduce,
            channel=channel,
            channel_weights=channel_weights,
            spatial_axes=spatial_axes,
            output_spatial_axes=output_spatial_axes,
            devices=devices,
            progress=progress,
            nonfinite=nonfinite,
            lowering=lowering,
        )
    apply = _Apply(fn, init_fn is not None)
    key = jax.random.key(0) if key is None else key
    draw_keys = jax.random.split(key, num_draws)
    mesh, n_devices = _mesh(devices)
    lowering = resolve_lowering(lowering, mesh.devices.flat)
    replicated = NamedSharding(mesh, P())
    total_batches = _num_batches(inputs, batch_size)
    total_steps = None if total_batches is None else total_batches * num_draws
    show = (total_steps is None or total_steps > 10) if progress is None else bool(progress)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, disable=not show, desc="ERF", unit="batch")
    acc = None
    count = skipped = seen = 0
    layouts = weights = index_arr = None
    try:
        for d in range(num_draws):
            params = init_fn(draw_keys[d]) if init_fn is not None else None
            params = jax.device_put(params, replicated) if params is not None else None
            for xb in _batches(inputs, batch_size):
                if not hasattr(xb, "shape") or xb.ndim < 2:
                    raise TypeError(
                        f"each batch of `inputs` must be an array (batch, *spatial, channels); "
                        f"got {type(xb).__name__}."
                    )
                if layouts is None:
                    layouts, weights, index_arr, index, shapes = _setup(
                        apply,
                        params,
                        xb,
                        index,
                        spatial_axes,
                        output_spatial_axes,
                        channel,
                        channel_weights,
                    )
                    in_shape_full = tuple(xb.shape[1:])
                elif tuple(xb.shape[1:]) != in_shape_full:
                    raise ValueError(
                        f"a batch of `inputs` has sample shape {tuple(xb.shape[1:])}, but the "
                        f"first had {in_shape_full}; all samples must have the same shape."
                    )
                xs, valid = _put(mesh, n_devices, xb, np.ones(xb.shape[0], bool))
                s, kept, bad, first = _batch_sum(
                    apply,
                    params,
                    xs,
                    valid,
                    index_arr,
                    weights,
                    in_layout=layouts[0],
                    out_layout=layouts[1],
                    reduce=reduce,
                    lowering=lowering,
                )
                bad = int(bad)
                if bad and nonfinite == "raise":
                    raise NonFiniteGradientError(
                        f"effective_receptive_field: {bad} sample(s) of a batch have NaN or inf "
                        f"gradients (first: sample {seen + int(first)} of draw {d}); the network "
                        "overflows or divides by zero there. Use float64, check the inputs, or "
                        "pass nonfinite='skip' to leave those samples out (they are counted)."
                    )
                s = np.asarray(s, np.float64)
                acc = s if acc is None else acc + s
                count += int(kept)
                skipped += bad
                seen += int(xb.shape[0])
                bar.update(1)
            seen = 0
    finally:
        bar.close()
    if acc is None:
        raise ValueError("`inputs` held no batches; give at least one sample.")
    if count == 0:
        raise ValueError(f"all {skipped} samples had NaN or inf gradients; no map to average.")
    return EffectiveReceptiveField(
        map=acc / count,
        count=count,
        num_draws=num_draws,
        index=index,
        reduce=reduce,
        input_shape=shapes[0],
        output_shape=shapes[1],
        nonfinite_samples=skipped,
    )


@functools.partial(jax.jit, static_argnums=0)
def _apply_jit(apply, params, x):
    return apply(params, x)


def _cropped_erf(fn, inputs, index, crop, **kwargs) -> EffectiveReceptiveField:
    """The ERF of ``crop.output_index`` computed on the crop of every sample, pasted back."""
    if spatial := kwargs.get("spatial_axes"):
        raise ValueError(
            f"`crop` with `spatial_axes` (={spatial}) is not supported; give inputs as (batch, "
            "*spatial, channels) or crop them yourself with crop.take(x, spatial_axes)."
        )
    target = tuple(crop.output_index)
    if index != "center" and tuple(index) != target:
        raise ValueError(
            f"`index` (={index!r}) is not the unit the crop was made for ({target}); build the "
            "crop with jaxrf.crop_for_unit(rf, index) for the same index."
        )
    seen = []  # (channels, dtype) of the samples, for the output-shape inference below

    def take(xb):
        if tuple(xb.shape[1:-1]) != tuple(crop.input_shape):
            raise ValueError(
                f"`inputs` have spatial shape {tuple(xb.shape[1:-1])} but the crop was made for "
                f"{tuple(crop.input_shape)}; build it from the receptive field at this input size."
            )
        seen.append((xb.shape[-1], xb.dtype))
        return crop.take(xb)

    if hasattr(inputs, "shape"):
        cropped = take(inputs)
    elif kwargs.get("num_draws", 1) > 1:
        cropped = [take(xb) for xb in inputs]  # re-iterated once per draw
    else:
        cropped = (take(xb) for xb in inputs)
    erf = effective_receptive_field(fn, cropped, tuple(crop.index), **kwargs)
    full = np.zeros(crop.input_shape, np.float64)
    full[crop.slices] = erf.map
    # The full network's output shape, by shape inference only (nothing runs at full size).
    init_fn = kwargs.get("init_fn")
    apply = _Apply(fn, init_fn is not None)
    params = None if init_fn is None else jax.eval_shape(init_fn, jax.random.key(0))
    channels, dtype = seen[0]
    x = jax.ShapeDtypeStruct((1, *crop.input_shape, channels), dtype)
    out_shape = tuple(jax.eval_shape(apply, params, x).shape[1:-1])
    return replace(
        erf, map=full, index=target, input_shape=tuple(crop.input_shape), output_shape=out_shape
    )


def _setup(apply, params, xb, index, spatial_axes, output_spatial_axes, channel, channel_weights):
    xb = jnp.asarray(xb)
    if not jnp.issubdtype(xb.dtype, jnp.floating):
        raise TypeError(f"`inputs` have dtype {xb.dtype}; gradients need floats.")
    sample = jax.ShapeDtypeStruct((1, *xb.shape[1:]), xb.dtype)
    in_layout = make_layout(sample.shape, spatial_axes, "inputs")
    out = _apply_jit.eval_shape(apply, params, sample)  # cached per network: no re-trace
    axes = spatial_axes if output_spatial_axes is None else output_spatial_axes
    out_layout: Layout = make_layout(out.shape, axes, "fn(x)")
    if len(out_layout.spatial) != len(in_layout.spatial):
        raise ValueError(
            f"`fn(x)` has shape {out.shape} with spatial axes {out_layout.spatial}, but the "
            f"inputs have {len(in_layout.spatial)} spatial axes; give output_spatial_axes=."
        )
    out_spatial = out_layout.spatial_shape(out.shape)
    if isinstance(index, str):
        if index != "center":
            raise ValueError(f"`index` (={index!r}) must be a tuple of ints or 'center'.")
        index = center_index(out_spatial)
    index = check_index(index, out_spatial)
    weights = channel_weight_array(
        out_layout.channel_shape(out.shape), channel, channel_weights, None, out.dtype
    )
    shapes = (in_layout.spatial_shape(sample.shape), out_spatial)
    return (in_layout, out_layout), weights, jnp.asarray(index, jnp.int32), index, shapes
