"""Effective receptive field (Luo et al., NeurIPS 2016): mean gradient maps over inputs and weights.

The run has three stages: :func:`_validate` checks the arguments, :func:`_plan` fixes
everything the batches share (layouts, seeds, channel weights) from the first batch, before the
loop, and :func:`_accumulate` streams the batches into float64 running sums
(:class:`jaxrf._checkpoint.Progress`), optionally checkpointed.

Streaming: inputs come as one array (cut into ``batch_size`` chunks) or as an iterable of
batches; only the running sum of the maps (float64, on the host) is kept, so memory does not
grow with the number of samples. Each batch runs one jitted program: ``vmap`` over the samples
of a per-sample ``jax.vjp`` with respect to the input only (weights are closed over and never
differentiated), with the batch sharded over the devices. What the backward pass keeps of
the forward pass is, for a ReLU network, its masks: boolean residuals are packed eight to a
byte (:func:`_compact_masks`), so memory grows by about one bit per activation and image
rather than by the float activations themselves.

Several devices: the batch axis is sharded over every local device with a one-axis
:class:`jax.sharding.Mesh` and ``NamedSharding(mesh, P("batch"))`` (batches are padded to a
multiple of the device count with masked samples); the sum over samples is a cross-device
reduction inside the jitted program. Several hosts: call ``jax.distributed.initialize()`` on
every process first, then call :func:`effective_receptive_field` on every process with that
process's share of the inputs (the same number of batches of the same size everywhere); the
mesh then spans ``jax.devices()`` and each process's batch is assembled into one global array
with ``jax.make_array_from_process_local_data``, so every process gets the same global map.
On CPU the cross-process sum goes over gloo (jax's default ``jax_cpu_collectives_implementation``).

Layer taps: with ``layer=[a, b, ...]`` every sample runs one forward pass of the network cut
after the deepest tapped layer (:func:`jaxrf._tap.intermediate`, returning every tapped feature
map) and one backward pass per layer from that shared forward pass: ``1 forward + k backward``
per sample for ``k`` layers, not ``k`` of each.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _checkpoint, _stats
from ._checkpoint import Progress
from ._field import check_index
from ._fold import fold_convs
from ._gradient import (
    Layout,
    NonFiniteGradientError,
    NonFiniteGradientWarning,
    center_index,
    channel_weight_array,
    check_nonfinite,
    check_not_empty,
    check_reduce,
    check_token_grid,
    layouts,
    on_token_grid,
    one_hot_seed,
    reduce_channels,
    seed_from_spatial,
    tapped,
    tokens_to_grid,
)
from ._lowering import lower_convs, resolve_lowering
from ._prune import prune_to_cone
from ._xla import LOWERED_VALUE, jit


@dataclass(frozen=True)
class _Apply:
    """``fn`` as ``(params, x) -> tuple`` of the probed outputs (hashable: one program per net).

    ``layers=None``: the network's output, alone. Otherwise the feature maps of those layers
    (:func:`jaxrf._tap.intermediate`), from one evaluation of the program. ``grid``: each
    output is a token sequence viewed on that grid (:func:`jaxrf._gradient.tokens_to_grid`).
    """

    fn: Callable
    takes_params: bool
    layers: tuple[str, ...] | None = None
    spatial_axes: tuple | int | None = None
    grid: tuple[int, ...] | None = None

    def __call__(self, params, x):
        outs = self._outputs(params, x)
        return outs if self.grid is None else tuple(tokens_to_grid(y, self.grid) for y in outs)

    def _outputs(self, params, x):
        if self.layers is None:
            return (self.fn(params, x) if self.takes_params else self.fn(x),)
        if self.takes_params:  # params may be tracers: the tap is traced here, not cached
            from ._tap import intermediate

            net = functools.partial(self.fn, params)
            struct = jax.ShapeDtypeStruct(x.shape, x.dtype)
            return intermediate(net, struct, list(self.layers), spatial_axes=self.spatial_axes)(x)
        g = tapped(self.fn, tuple(x.shape), str(x.dtype), self.layers, self.spatial_axes)
        return g(x)


def _pack_bits(mask):
    """A boolean array as one bit an element, eight to a ``uint8`` (zero-padded)."""
    n = mask.size
    flat = jnp.pad(mask.reshape(-1), (0, -n % 8)).reshape(-1, 8).astype(jnp.uint8)
    return jnp.sum(flat << jnp.arange(8, dtype=jnp.uint8), axis=1, dtype=jnp.uint8)


def _unpack_bits(packed, shape):
    """The inverse of :func:`_pack_bits`: the boolean array of ``shape``."""
    bits = (packed[:, None] >> jnp.arange(8, dtype=jnp.uint8)) & 1
    return bits.reshape(-1)[: math.prod(shape)].reshape(shape).astype(bool)


def _compact_masks(pullback):
    """``pullback`` with its boolean residuals (ReLU masks) kept as one bit an element.

    Left alone, XLA fuses the comparison that makes a mask into the backward pass and keeps
    the float pre-activation alive from the forward pass instead: 32 bits an element, and the
    comparison done twice. A packed mask is a reduction, which XLA does not recompute inside
    its consumers: it is made once in the forward pass and the pre-activation dies there.
    """
    leaves, tree = jax.tree_util.tree_flatten(pullback)
    for k, v in enumerate(leaves):
        if v.dtype == jnp.bool_ and v.size >= 8:
            leaves[k] = _unpack_bits(_pack_bits(v), v.shape)
    return jax.tree_util.tree_unflatten(tree, leaves)


def _sample_maps(apply, params, xi, indices, weights, in_layout, out_layouts, reduce):
    """One sample's maps, one per probed output: one forward pass, one backward pass each."""
    ys, pullback = jax.vjp(functools.partial(apply, params), xi[None])
    pullback = _compact_masks(pullback)
    maps = []
    for k, (y, layout) in enumerate(zip(ys, out_layouts, strict=True)):
        seed = one_hot_seed(layout.spatial_shape(y.shape), indices[k])
        cts = [jnp.zeros_like(v) for v in ys]
        cts[k] = seed_from_spatial(seed, weights[k], y.shape, layout, y.dtype)
        (g,) = pullback(tuple(cts))
        maps.append(reduce_channels(g, in_layout, reduce)[0])
    return tuple(maps)


def _batch_sum_of(
    apply, params, xb, valid, indices, weights, *, in_layout, out_layouts, reduce, lowering
):
    """Per probed output, the sum over the valid, finite samples of their maps; counts.

    A sample with a NaN/inf value in any of its maps is left out of every sum.
    """
    lowered = lower_convs(apply, lowering)
    one = functools.partial(
        _sample_maps,
        lowered,
        params,
        indices=indices,
        weights=weights,
        in_layout=in_layout,
        out_layouts=out_layouts,
        reduce=reduce,
    )
    maps = jax.vmap(one)(xb)
    finite = functools.reduce(
        jnp.logical_and, [jnp.all(jnp.isfinite(m), axis=tuple(range(1, m.ndim))) for m in maps]
    )
    keep = valid & finite
    totals = tuple(
        jnp.sum(jnp.where(keep.reshape((-1,) + (1,) * (m.ndim - 1)), m, 0), axis=0) for m in maps
    )
    bad = valid & ~finite
    return totals, jnp.sum(keep), jnp.sum(bad), jnp.argmax(bad)


_STATIC = ("apply", "in_layout", "out_layouts", "reduce", "lowering")
#: The step as compiled: under a CPU lowering with XLA's own convolutions and YNNPACK's dots
#: (faster on the CPUs measured, see :mod:`jaxrf._xla`); with ``lowering="none"`` as any
#: other jaxrf program.
_BATCH_SUM = {
    "none": jit(_batch_sum_of, static_argnames=_STATIC),
    "lowered": jit(_batch_sum_of, static_argnames=_STATIC, ynn=LOWERED_VALUE),
}


def _batch_sum(*args, lowering, **kwargs):
    step = _BATCH_SUM["none" if lowering == "none" else "lowered"]
    return step(*args, lowering=lowering, **kwargs)


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
        nonfinite_samples: samples left out for NaN/inf gradients (``nonfinite="skip"`` or
            ``"warn"``).
        layer: the layer whose output unit was probed (None: the network's output).
    """

    map: np.ndarray = field(repr=False)
    count: int
    num_draws: int
    index: tuple[int, ...]
    reduce: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    nonfinite_samples: int = 0
    layer: str | None = None

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


def _put(mesh, n_devices, xb, valid, size: int = 0):
    """Pad the batch with invalid samples to ``size`` (at least) and a multiple of the device
    count; shard it on the batch axis."""
    size = max(size, xb.shape[0])
    pad = size - xb.shape[0] + (-size) % n_devices
    if pad:
        xb = np.concatenate([np.asarray(xb), np.zeros((pad, *xb.shape[1:]), xb.dtype)])
        valid = np.concatenate([valid, np.zeros(pad, bool)])
    sharding = NamedSharding(mesh, P("batch"))
    if jax.process_count() > 1:
        put = functools.partial(jax.make_array_from_process_local_data, sharding)
        return put(np.asarray(xb)), put(valid)
    return jax.device_put(xb, sharding), jax.device_put(valid, sharding)


# ---------------------------------------------------------------------------------------
# Validate.
# ---------------------------------------------------------------------------------------

CHECKPOINT_EVERY = 10  # batches between checkpoints (default)


def _check_positive(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"`{name}` (={value!r}) must be a positive int{extra}.")
    return int(value)


def _check_inputs(inputs, num_draws: int) -> None:
    if hasattr(inputs, "shape"):
        check_not_empty(inputs.shape, "inputs")
        return
    if not isinstance(inputs, Iterable):
        raise TypeError(
            f"`inputs` (={type(inputs).__name__}) must be an array (N, *spatial, channels) or an "
            "iterable of such batches."
        )
    if num_draws > 1 and iter(inputs) is inputs:
        raise TypeError(
            "`inputs` is a one-shot iterator but num_draws > 1 runs it once per draw; pass a "
            "list of batches or an array."
        )


def _check_layers(layer):
    """``layer`` as a tuple of names (None: the network's output) and whether a dict is asked."""
    if layer is None:
        return None, False
    if isinstance(layer, str):
        return (layer,), False
    names = tuple(layer) if isinstance(layer, Iterable) else None
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise TypeError(
            f"`layer` (={layer!r}) must be a layer name or a non-empty list of distinct names "
            "from [r.name for r in jaxrf.receptive_field(fn, x).layers]."
        )
    return names, True


def _validate(o: dict) -> dict:
    """Checked and canonical options (``o``: the keyword arguments of the public function)."""
    o = dict(o)
    o["reduce"] = check_reduce(o["reduce"])
    resolve_lowering(o["lowering"])  # checks the value early
    o["nonfinite"] = check_nonfinite(o["nonfinite"])
    o["num_draws"] = _check_positive("num_draws", o["num_draws"])
    if o["num_draws"] > 1 and o["init_fn"] is None:
        raise ValueError(
            f"`num_draws` (={o['num_draws']}) > 1 needs `init_fn` (key -> params) to draw "
            "weights; fn then takes (params, x)."
        )
    o["batch_size"] = _check_positive("batch_size", o["batch_size"], allow_none=True)
    o["checkpoint_every"] = _check_positive("checkpoint_every", o["checkpoint_every"])
    if o["checkpoint"] is not None and not isinstance(o["checkpoint"], str | os.PathLike):
        raise TypeError(f"`checkpoint` (={o['checkpoint']!r}) must be a file path or None.")
    _check_inputs(o["inputs"], o["num_draws"])
    o["layers"], o["as_dict"] = _check_layers(o["layer"])
    if isinstance(o["crop"], str) and o["crop"] != "cone":
        raise ValueError(
            f"`crop` (={o['crop']!r}) must be None, a jaxrf.Crop from jaxrf.crop_for_unit, or "
            "'cone' (every layer pruned to the unit's cone)."
        )
    if not isinstance(o["fold"], bool):
        raise TypeError(f"`fold` (={o['fold']!r}) must be True or False.")
    if o["crop"] is not None and o["token_grid"] is not None:
        raise ValueError(
            f"`crop` with `token_grid` (={o['token_grid']!r}) is not supported: crops are made "
            "for outputs with spatial axes; probe the token grid without crop=."
        )
    if o["crop"] is not None and o["layers"] is not None:
        raise ValueError(
            f"`crop` with `layer` (={o['layer']!r}) is not supported: the crop is made for the "
            "network's output unit; probe the layer without crop=."
        )
    return o


# ---------------------------------------------------------------------------------------
# Set up: everything the batches share, fixed from the first one.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What every batch shares: the layouts, seeds and channel weights of each probed output."""

    apply: _Apply
    in_layout: Layout
    out_layouts: tuple[Layout, ...]
    indices: tuple[tuple[int, ...], ...]
    weights: tuple = field(repr=False)
    sample: jax.ShapeDtypeStruct
    input_shape: tuple[int, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    largest_map: int  # elements of the largest array of one sample's forward pass


def _check_batch(xb, number: int, sample) -> None:
    """A batch of the stream: an array with a nonempty floating sample of the first's shape."""
    if not hasattr(xb, "shape") or len(xb.shape) < 2:
        raise TypeError(
            f"batch {number} of `inputs` must be an array (batch, *spatial, channels); got "
            f"{type(xb).__name__}."
        )
    check_not_empty(xb.shape, f"batch {number} of `inputs`")
    if sample is not None and tuple(xb.shape[1:]) != tuple(sample.shape[1:]):
        raise ValueError(
            f"batch {number} of `inputs` has sample shape {tuple(xb.shape[1:])}, but the first "
            f"had {tuple(sample.shape[1:])}; all samples must have the same shape."
        )


def _output_index(index, out_spatial, name):
    if isinstance(index, str):
        if index != "center":
            raise ValueError(f"`index` (={index!r}) must be a tuple of ints or 'center'.")
        return center_index(out_spatial)
    return check_index(index, out_spatial, "index" if name is None else f"index (layer {name})")


def _param_shapes(init_fn):
    """The parameters ``init_fn`` returns, as shapes (traced) or, for an initialiser that needs
    concrete keys (it reads the key's bits with numpy), as one concrete draw."""
    try:
        return jax.eval_shape(init_fn, jax.random.key(0))
    except jax.errors.JAXTypeError:  # TracerArrayConversionError, ConcretizationTypeError...
        return init_fn(jax.random.key(0))


def _plan(o: dict, first) -> _Plan:
    """Layouts, output positions and channel weights of every probed output, before the loop."""
    _check_batch(first, 0, None)
    if not jnp.issubdtype(first.dtype, jnp.floating):
        raise TypeError(f"`inputs` have dtype {first.dtype}; gradients need floats.")
    spatial_axes, out_axes = o["spatial_axes"], o["output_spatial_axes"]
    sample = jax.ShapeDtypeStruct((1, *first.shape[1:]), first.dtype)
    grid = check_token_grid(o["token_grid"], sample.shape, spatial_axes, out_axes)
    out_axes = out_axes if grid is None else tuple(range(1, len(grid) + 1))
    apply = _Apply(o["fn"], o["init_fn"] is not None, o["layers"], spatial_axes, grid)
    params = None if o["init_fn"] is None else _param_shapes(o["init_fn"])
    traced = _apply_jit.trace(apply, params, sample)  # cached per network: no re-trace
    outs = jax.tree_util.tree_leaves(traced.out_info)
    names = o["layers"] or (None,)
    in_layout, out_layouts, indices, weights, shapes = None, [], [], [], []
    for out, name in zip(outs, names, strict=True):
        argument = "fn(x)" if name is None else f"layer {name!r}"
        in_layout, out_layout = layouts(
            sample.shape, out.shape, spatial_axes, out_axes, "inputs", argument
        )
        out_spatial = out_layout.spatial_shape(out.shape)
        out_layouts.append(out_layout)
        shapes.append(out_spatial)
        indices.append(_output_index(o["index"], out_spatial, name))
        channels = out_layout.channel_shape(out.shape)
        weights.append(
            channel_weight_array(channels, o["channel"], o["channel_weights"], None, out.dtype)
        )
    return _Plan(
        apply,
        in_layout,
        tuple(out_layouts),
        tuple(indices),
        tuple(weights),
        sample,
        in_layout.spatial_shape(sample.shape),
        tuple(shapes),
        _largest_map(traced.jaxpr.jaxpr),
    )


@functools.partial(jit, static_argnums=0)
def _apply_jit(apply, params, x):
    return apply(params, x)


def _fingerprint(o: dict, plan: _Plan) -> str:
    """What a checkpoint must match: network, inputs' shape, positions, options."""
    params = None if o["init_fn"] is None else _param_shapes(o["init_fn"])
    program = jax.make_jaxpr(plan.apply)(params, plan.sample)
    init = "" if o["init_fn"] is None else str(jax.make_jaxpr(o["init_fn"])(jax.random.key(0)))
    key = None if o["key"] is None else jax.random.key_data(o["key"])
    fields = {
        "network": _checkpoint.digest(str(program), *program.consts, init),
        "sample_shape": list(plan.sample.shape[1:]),
        "dtype": str(plan.sample.dtype),
        "layers": list(o["layers"] or []),
        "index": [list(i) for i in plan.indices],
        "reduce": o["reduce"],
        "channel_weights": _checkpoint.digest(*plan.weights),
        "num_draws": o["num_draws"],
        "batch_size": o["batch_size"],
        "key": None if key is None else _checkpoint.digest(key),
        "lowering": o["lowering"],
    }
    return _checkpoint.fingerprint(fields)


# ---------------------------------------------------------------------------------------
# Accumulate.
# ---------------------------------------------------------------------------------------


def _results(o: dict, plan: _Plan, progress: Progress, num_draws: int):
    """The ERF of each probed output from the running sums (a dict for a list of layers)."""
    names = o["layers"] or (None,)
    erfs = [
        EffectiveReceptiveField(
            map=total / progress.count,
            count=progress.count,
            num_draws=num_draws,
            index=plan.indices[k],
            reduce=o["reduce"],
            input_shape=plan.input_shape,
            output_shape=plan.output_shapes[k],
            nonfinite_samples=progress.skipped,
            layer=name,
        )
        for k, (name, total) in enumerate(zip(names, progress.sums, strict=True))
    ]
    return dict(zip(names, erfs, strict=True)) if o["as_dict"] else erfs[0]


def _check_finite_batch(o, plan, progress: Progress, number: int, size: int, bad, first, save):
    """Raise (after saving the checkpoint) or warn when a batch had NaN/inf gradients."""
    if not bad or o["nonfinite"] == "skip":
        return
    lo, d = progress.seen, progress.draw
    message = (
        f"effective_receptive_field: {bad} sample(s) of batch {number} (images {lo}.."
        f"{lo + size - 1} of the stream) have NaN or inf gradients "
        f"(first: sample {lo + first} of draw {d}); "
        "the network overflows or divides by zero there. Use float64, check the inputs, or pass "
        "nonfinite='skip' (or 'warn') to leave those samples out (they are counted)."
    )
    if o["nonfinite"] == "warn":
        warnings.warn(message, NonFiniteGradientWarning, stacklevel=4)
        return
    save()
    partial = _results(o, plan, progress, d + 1) if progress.count else None
    raise NonFiniteGradientError(
        message
        + " The ERF of the samples before that batch is this exception's `.partial`"
        + (" (and is in the checkpoint)." if o["checkpoint"] is not None else "."),
        partial=partial,
    )


#: On CPU devices a step runs at most ``max(1, SIDE_BY_SIDE_ELEMENTS // m)`` samples side by
#: side (``vmap``) per device, where ``m`` is the element count of the largest array one
#: sample's forward pass makes; a larger batch runs as several such steps (see
#: :func:`_side_by_side`). 2**24 float32 elements are 64 MiB.
SIDE_BY_SIDE_ELEMENTS = 2**24


def _largest_map(jaxpr) -> int:
    """Elements of the largest array an equation of ``jaxpr`` (or of one nested in it) makes."""
    best = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            best = max(best, math.prod(getattr(v.aval, "shape", ())))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jcore.ClosedJaxpr):
                    best = max(best, _largest_map(sub.jaxpr))
                elif isinstance(sub, jcore.Jaxpr):
                    best = max(best, _largest_map(sub))
    return best


def _side_by_side(devices, largest_map: int) -> int | None:
    """Samples per device one CPU step runs side by side; None: the whole batch (not CPU).

    Side by side, XLA:CPU keeps every sample's backward maps alive at once, so a step's
    memory grows with the batch; its speed grows only while one sample's products are
    small. Measured on ResNet-50 (largest map 112*112*64 = 802,816 elements at 224x224;
    16,777,216 at 1024x1024), 2 cores: at 224, 8 side by side ran 16 images about 20%
    faster than one at a time; at 512, four were within noise of one; at 1024, one at a
    time ran as fast as four and peaked at 1628 MiB against 2903 MiB.
    """
    if {d.platform for d in devices} != {"cpu"}:
        return None
    return max(1, SIDE_BY_SIDE_ELEMENTS // max(1, largest_map))


def _chunked_batch_sum(o: dict, plan: _Plan, params, xb, lowering: str, mesh, n_devices: int):
    """:func:`_batch_sum` over ``xb`` in equal steps of at most the side-by-side width.

    Steps have one shape (one compiled program): the last is padded with invalid samples.
    The steps' sums are added in float64, as batches are.
    """
    width = _side_by_side(mesh.devices.flat, plan.largest_map)
    size = int(xb.shape[0])
    step = size if width is None else min(size, width * n_devices)
    steps = -(-size // step)
    step = -(-size // steps)  # balanced: the padding is less than one sample per step
    indices = jnp.asarray(plan.indices, jnp.int32)
    sums, kept, bad, first = None, 0, 0, 0
    for start in range(0, size, step):
        chunk = xb[start : start + step]
        xs, valid = _put(mesh, n_devices, chunk, np.ones(chunk.shape[0], bool), step)
        totals, k, b, f = _batch_sum(
            plan.apply,
            params,
            xs,
            valid,
            indices,
            plan.weights,
            in_layout=plan.in_layout,
            out_layouts=plan.out_layouts,
            reduce=o["reduce"],
            lowering=lowering,
        )
        if int(b) and not bad:
            first = start + int(f)
        totals = [np.asarray(t, np.float64) for t in totals]
        sums = totals if sums is None else [a + t for a, t in zip(sums, totals, strict=True)]
        kept, bad = kept + int(k), bad + int(b)
    return sums, kept, bad, first


def _accumulate(o: dict, plan: _Plan, draw_batches: Callable, progress: Progress, save):
    """Stream every draw's batches into ``progress``, from where it stands; save on the way."""
    mesh, n_devices = _mesh(o["devices"])
    lowering = resolve_lowering(o["lowering"], mesh.devices.flat)
    replicated = NamedSharding(mesh, P())
    key = jax.random.key(0) if o["key"] is None else o["key"]
    draw_keys = jax.random.split(key, o["num_draws"])
    total = _num_batches(o["inputs"], o["batch_size"])
    steps = None if total is None else total * o["num_draws"]
    show = (steps is None or steps > 10) if o["progress"] is None else bool(o["progress"])
    from tqdm.auto import tqdm

    with tqdm(total=steps, disable=not show, desc="ERF", unit="batch") as bar:
        while progress.draw < o["num_draws"]:
            params = None if o["init_fn"] is None else o["init_fn"](draw_keys[progress.draw])
            params = None if params is None else jax.device_put(params, replicated)
            skip = progress.batch
            for number, xb in enumerate(draw_batches(progress.draw)):
                if number < skip:  # consumed before the checkpoint this run resumes
                    bar.update(1)
                    continue
                _check_batch(xb, number, plan.sample)
                totals, kept, bad, first = _chunked_batch_sum(
                    o, plan, params, xb, lowering, mesh, n_devices
                )
                size, bad = int(xb.shape[0]), int(bad)
                _check_finite_batch(o, plan, progress, number, size, bad, int(first), save)
                progress.add(totals, kept, bad, size)
                bar.update(1)
                if progress.batch % o["checkpoint_every"] == 0:
                    save()
            progress.next_draw()
    save()


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
    fold: bool = False,
    lowering: str = "auto",
    layer: str | list[str] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    token_grid=None,
) -> EffectiveReceptiveField | dict[str, EffectiveReceptiveField]:
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
        batch_size: samples per batch (chunks an array input; default: all at once). A batch
            is one jitted step, except on CPU when its samples are large: then it runs as
            equal steps of at most ``max(1, 2**24 // m)`` samples per device, ``m`` the
            element count of the largest array one sample's forward pass makes (XLA:CPU keeps
            the samples of a step alive side by side; past that size this costs memory and
            gains no speed, measured on ResNet-50 at 224 to 1024 pixels).
        reduce: ``"abs"`` (default), ``"signed"``, ``"positive"`` or ``"squared"``.
        channel, channel_weights: output-channel weighting as in :func:`jaxrf.gradient_map`
            (``"random"`` draws fixed normal weights from ``jax.random.key(0)``).
        spatial_axes, output_spatial_axes: layout overrides as in :func:`jaxrf.gradient_map`.
        devices: devices to shard the batch over (default: all local devices; all devices
            under ``jax.distributed``).
        progress: show a tqdm bar (default: when there are more than 10 batches).
        nonfinite: NaN/inf gradients: ``"raise"`` (default: :class:`NonFiniteGradientError`
            naming the batch, its images in the stream and the first bad sample; its
            ``.partial`` is the ERF of the samples before that batch, None if there were
            none), ``"warn"`` (a :class:`NonFiniteGradientWarning` naming them, then as
            ``"skip"``) or ``"skip"`` (those samples are left out, counted in
            ``nonfinite_samples``). A sample is left out of every layer's map when any of its
            maps has a NaN/inf value. ``"keep"`` is accepted as the probes' older name for
            ``"skip"``.
        lowering: how convolutions and max-pools are compiled: ``"auto"`` (default:
            ``"matmul"`` on CPU devices, ``"none"`` elsewhere), ``"matmul"`` (1x1
            convolutions as matrix products, depthwise convolutions and max-pool gradients as
            slices, and the program compiled with XLA's own convolutions and YNNPACK's dots,
            which XLA:CPU runs near its matmul throughput), ``"patches"`` (every convolution
            as patches times a matrix) or ``"none"`` (the network's own operations). The
            same sums in another order: in float64 the maps agree with ``"none"`` to
            rounding; in float32 rounding can flip a ReLU or max-pool decision, as between any
            two float32 programs.
        crop: a :class:`jaxrf.Crop` from :func:`jaxrf.crop_for_unit` for the probed unit: every
            sample is cut to the unit's receptive-field cone, the network runs forward and
            backward on the crop only, and the map is pasted back at full size. Exact (the
            crop keeps every layer's grid and SAME padding); ``index`` must then be the crop's
            ``output_index`` (or ``"center"`` when that is the crop's unit). Inputs must use the
            default layout (spatial axes between batch and channels). Not with ``layer``.
            ``"cone"``: every layer computes only the part of its output inside the unit's
            cone (:func:`jaxrf.prune_to_cone`; the input crop generalised to every
            intermediate map), on the full-size inputs; the same map as without it (calls
            and custom derivative rules are inlined first, so ``relu``'s derivative at an
            input of exactly 0 is 1/2 there instead of 0). Needs fixed weights (no
            ``init_fn``) and ``fn(x)`` in the input's layout (batch, *spatial, channels).
        fold: evaluate ``fn`` through :func:`jaxrf.fold_convs`: every convolution followed by
            per-channel affine constants (inference batch norm, LayerScale, fixed scales)
            becomes one convolution with folded weights and bias; the same function to float
            rounding. Only constants fold: with ``init_fn`` the weights are inputs and nothing
            folds.
        layer: measure a unit of an intermediate layer's output instead of the network's: a
            name from ``jaxrf.receptive_field(fn, x).layers`` (or :func:`jaxrf.layer_table`), or
            a list of names. ``index`` (a tuple, or ``"center"``: each layer's own centre) is
            then a position in that layer's output. Each sample runs one forward pass, shared
            by one backward pass per layer: ``1 forward + k backward`` passes per sample for
            ``k`` layers. Equal to probing the network cut by hand after that layer. With
            ``init_fn`` the tap is traced once per compiled program.
        checkpoint: a file path (``.npz``): the running sums, counts and position in the
            stream are saved there every ``checkpoint_every`` batches, before raising on
            NaN/inf gradients and at the end (written atomically: a killed run leaves the last
            complete checkpoint). If the file exists, the run resumes from it: the batches it
            already holds are drawn from ``inputs`` and skipped (not computed), and the result
            equals an uninterrupted run's (the same float64 sums in the same order). A
            checkpoint written with other arguments (network, weights, sample shape, ``layer``,
            ``index``, ``reduce``, channel weights, ``num_draws``, ``batch_size``, ``key``,
            ``lowering``) is refused with a ValueError. One path per process under
            ``jax.distributed``.
        checkpoint_every: batches between two checkpoints (default 10).
        token_grid: the grid ``(h, w)`` of a token-sequence output (of the network, or of each
            tapped ``layer``), as in :func:`jaxrf.gradient_map`; not with ``crop``.

    Returns:
        :class:`EffectiveReceptiveField` (``.map``, ``.count``, statistics methods); with a
        list of layers, a dict ``{name: EffectiveReceptiveField}`` in the order given.

    Raises:
        ValueError: bad ``index``, ``reduce``, shapes, an empty input (naming its shape), a
            batch whose sample shape differs from the first's (naming the batch), a checkpoint
            of another run, or NaN/inf gradients (:class:`NonFiniteGradientError`).
        TypeError: ``inputs`` neither an array nor an iterable of arrays, a bad ``layer``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxrf
        >>> conv = lambda x: jax.lax.conv_general_dilated(
        ...     x, jnp.ones((3, 1, 1)), (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))
        >>> erf = jaxrf.effective_receptive_field(lambda x: conv(conv(x)), jnp.ones((4, 7, 1)))
        >>> erf.map, erf.count
        (array([0., 1., 2., 3., 2., 1., 0.]), 4)
    """
    o = _validate(locals())
    if fold:
        o["fn"] = fn = _folded(fn)
    if crop is not None:
        run = _cone_erf if isinstance(crop, str) else _cropped_erf
        return run(fn, inputs, index, crop, **{k: o[k] for k in _PASSED_ON})
    batches = _batches(inputs, o["batch_size"])
    first = next(batches, None)
    if first is None:
        raise ValueError("`inputs` held no batches; give at least one sample.")
    if o["init_fn"] is None and not o["layers"] and token_grid is None:
        sample = jax.ShapeDtypeStruct((1, *first.shape[1:]), first.dtype)
        o["fn"], _ = on_token_grid(o["fn"], sample, o["spatial_axes"], o["output_spatial_axes"])
    plan = _plan(o, first)

    def draw_batches(draw):
        return itertools.chain([first], batches) if draw == 0 else _batches(inputs, batch_size)

    print_ = None if checkpoint is None else _fingerprint(o, plan)
    progress = (checkpoint and _checkpoint.load(checkpoint, print_)) or Progress()

    def save():
        if checkpoint is not None:
            _checkpoint.save(checkpoint, progress, print_)

    _accumulate(o, plan, draw_batches, progress, save)
    if progress.count == 0:
        raise ValueError(
            f"all {progress.skipped} samples had NaN or inf gradients; no map to average."
        )
    return _results(o, plan, progress, o["num_draws"])


_PASSED_ON = (
    "init_fn",
    "key",
    "num_draws",
    "batch_size",
    "reduce",
    "channel",
    "channel_weights",
    "spatial_axes",
    "output_spatial_axes",
    "devices",
    "progress",
    "nonfinite",
    "lowering",
    "checkpoint",
    "checkpoint_every",
)


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
    out_shape = tuple(jax.eval_shape(apply, params, x)[0].shape[1:-1])
    return replace(
        erf, map=full, index=target, input_shape=tuple(crop.input_shape), output_shape=out_shape
    )


def _cone_erf(fn, inputs, index, crop, **kwargs) -> EffectiveReceptiveField:
    """The ERF of one output unit with every layer of ``fn`` pruned to the unit's cone."""
    for name in ("init_fn", "spatial_axes", "output_spatial_axes"):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"`crop='cone'` with `{name}` is not supported: the cone is planned for fixed "
                "weights and the default layout (batch, *spatial, channels); drop crop= or "
                f"`{name}`."
            )
    if hasattr(inputs, "shape"):
        sample = inputs
    else:
        batches = iter(inputs)
        sample = next(batches, None)
        if sample is None:
            raise ValueError("`inputs` held no batches; give at least one sample.")
        inputs = itertools.chain([sample], batches)
    _check_batch(sample, 0, None)
    spec = jax.ShapeDtypeStruct((1, *sample.shape[1:]), sample.dtype)
    out = jax.eval_shape(fn, spec)
    if not hasattr(out, "shape") or len(out.shape) != len(spec.shape):
        raise ValueError(
            f"`crop='cone'` needs fn(x) shaped (batch, *spatial, channels) like x "
            f"{spec.shape}; got {getattr(out, 'shape', type(out).__name__)}. Probe without "
            "crop= or return the feature map."
        )
    target = _output_index(index, tuple(out.shape[1:-1]), None)
    pruned = _pruned(fn, spec.shape, spec.dtype, target)
    erf = effective_receptive_field(pruned, inputs, (0,) * len(target), **kwargs)
    return replace(erf, index=target, output_shape=tuple(out.shape[1:-1]))


# The derived networks are kept (a few at a time) so that probing the same network again reuses
# its compiled step instead of tracing and compiling a new function.


@functools.lru_cache(maxsize=8)
def _folded(fn):
    return fold_convs(fn)


@functools.lru_cache(maxsize=8)
def _pruned(fn, shape, dtype, target):
    return prune_to_cone(fn, jax.ShapeDtypeStruct(shape, dtype), (None, *target, None))
