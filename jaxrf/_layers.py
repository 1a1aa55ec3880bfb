"""Networks written as lists of layer descriptions, and :func:`from_layers`.

A layer list is the quickest way to ask "what is the receptive field of this architecture?"
without writing the network: each :class:`Layer` is a convolution, pooling, padding or
cropping window; :class:`Parallel` holds branches that are added or concatenated on channels;
:class:`Global` reads the whole map (global pooling). The same engine walks traced JAX
functions, so a layer list and the code it describes give the same answer.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from ._axis import Window, same_padding
from ._field import FieldState, LayerRecord, ReceptiveField, merge_states

PaddingSpec = str | int | Sequence[int | tuple[int, int]]
_PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID")


@dataclass(frozen=True)
class Layer:
    """A sliding-window layer: convolution, pooling, padding (``kernel=1``) or cropping.

    Args:
        kernel: kernel size, an int for every axis or one per axis.
        stride: stride, int or per axis.
        padding: ``"VALID"`` (default), ``"SAME"``, ``"SAME_LOWER"`` (resolved for the input
            size exactly as ``jax.lax`` does), an int (same on both sides of every axis), or one
            entry per axis, each an int or a ``(before, after)`` pair. Negative values crop.
        dilation: kernel dilation (atrous), int or per axis.
        input_dilation: input dilation, int or per axis; ``> 1`` is a transposed convolution
            (fractional effective stride). String padding is not allowed with it (as in
            ``jax.lax.conv_general_dilated``): give explicit padding.
        name: shown in tables and messages; defaults to ``op`` and the position.
        op: a label for tables (``"conv"``, ``"max_pool"``, ``"pad"``...); no effect on the
            arithmetic, since pooling and convolution have the same spatial rule.

    Example:
        >>> import jaxrf
        >>> jaxrf.from_layers([jaxrf.Layer(3, stride=2, padding="SAME")], (224, 224)).padding
        (0, 0)
    """

    kernel: int | Sequence[int]
    stride: int | Sequence[int] = 1
    padding: PaddingSpec = "VALID"
    dilation: int | Sequence[int] = 1
    input_dilation: int | Sequence[int] = 1
    name: str | None = None
    op: str = "conv"


@dataclass(frozen=True)
class Parallel:
    """Branches fed by the same map, merged by ``"add"``, ``"concat"`` (channels) or ``"mul"``.

    Each branch is a list of :class:`Layer` / :class:`Parallel` / :class:`Global`; an empty
    list is the identity (a residual shortcut). All branches must end at the same spatial shape
    (a size-1 axis broadcasts, as in a squeeze-excitation gate).
    """

    branches: Sequence[Sequence[Layer | Parallel | Global]]
    merge: str = "add"
    name: str | None = None


@dataclass(frozen=True)
class Global:
    """Global pooling: one output feature per axis that reads the whole input map."""

    name: str | None = None
    keep_dims: bool = True


def _positive_ints(value, argument: str, layer: str, ndim: int) -> tuple[int, ...]:
    values = (value,) * ndim if _is_int(value) else value
    try:
        values = tuple(values)
    except TypeError:
        values = (value,)
    if len(values) != ndim or not all(_is_int(v) for v in values):
        raise ValueError(
            f"`{argument}` (={value!r}) of layer '{layer}' must be an int or a tuple of {ndim} "
            f"ints, one per spatial axis of the input; e.g. {argument}=3 or "
            f"{argument}={(3,) * ndim}."
        )
    if any(v < 1 for v in values):
        raise ValueError(
            f"`{argument}` (={value!r}) of layer '{layer}' must be >= 1 on every axis; "
            f"use 1 for no {argument.replace('_', ' ')}."
        )
    return tuple(int(v) for v in values)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def resolve_padding(
    padding: PaddingSpec,
    shape: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    input_dilation: Sequence[int],
    layer: str = "layer",
) -> tuple[tuple[int, int], ...]:
    """Canonicalise a padding spec to one ``(before, after)`` pair of ints per axis.

    Example:
        >>> resolve_padding("SAME", (5,), (3,), (2,), (1,), (1,))
        ((1, 1),)
        >>> resolve_padding([(2, 1), 0], (8, 8), (3, 3), (1, 1), (1, 1), (1, 1))
        ((2, 1), (0, 0))
    """
    ndim = len(shape)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode not in _PADDING_STRINGS:
            raise ValueError(
                f"`padding` (={padding!r}) of layer '{layer}' is not a known padding string; use "
                "one of 'SAME', 'SAME_LOWER', 'VALID', an int, or (before, after) pairs per axis."
            )
        if mode == "VALID":
            return ((0, 0),) * ndim
        if any(D != 1 for D in input_dilation):
            raise ValueError(
                f"`padding` (={padding!r}) of layer '{layer}' is a string but the layer has "
                f"input_dilation={tuple(input_dilation)}; jax.lax does not define SAME for "
                "transposed convolutions either: give explicit (before, after) padding."
            )
        return tuple(
            same_padding(n, k, s, d, lower=mode == "SAME_LOWER")
            for n, k, s, d in zip(shape, kernel, stride, dilation, strict=True)
        )
    if _is_int(padding):
        return ((int(padding), int(padding)),) * ndim
    try:
        entries = list(padding)
    except TypeError:
        entries = None
    if entries is None or len(entries) != ndim:
        raise ValueError(
            f"`padding` (={padding!r}) of layer '{layer}' must be 'SAME', 'VALID', an int, or "
            f"{ndim} entries (one per spatial axis), each an int or a (before, after) pair."
        )
    out = []
    for e in entries:
        if _is_int(e):
            out.append((int(e), int(e)))
            continue
        pair = tuple(e) if isinstance(e, Sequence) else ()
        if len(pair) != 2 or not all(_is_int(v) for v in pair):
            raise ValueError(
                f"`padding` entry {e!r} of layer '{layer}' must be an int or a (before, after) "
                "pair of ints; negative values crop."
            )
        out.append((int(pair[0]), int(pair[1])))
    return tuple(out)


def layer_windows(layer: Layer, shape: Sequence[int], name: str) -> tuple[Window, ...]:
    """The per-axis windows of a :class:`Layer` on an input of spatial ``shape``."""
    ndim = len(shape)
    kernel = _positive_ints(layer.kernel, "kernel", name, ndim)
    stride = _positive_ints(layer.stride, "stride", name, ndim)
    dilation = _positive_ints(layer.dilation, "dilation", name, ndim)
    input_dilation = _positive_ints(layer.input_dilation, "input_dilation", name, ndim)
    padding = resolve_padding(layer.padding, shape, kernel, stride, dilation, input_dilation, name)
    return tuple(
        Window(k, s, p, d, D)
        for k, s, p, d, D in zip(kernel, stride, padding, dilation, input_dilation, strict=True)
    )


def broadcast_state(state: FieldState, shape: Sequence[int], name: str) -> FieldState:
    """Broadcast size-1 axes of a map to ``shape`` (every position reads position 0)."""
    if tuple(state.shape) == tuple(shape):
        return state
    for a, (n, m) in enumerate(zip(state.shape, shape, strict=True)):
        if n != m and n != 1:
            raise ValueError(
                f"merge '{name}': a branch has spatial shape {state.shape}, which does not "
                f"broadcast to {tuple(shape)} (axis {a}: {n} vs {m}); make the branches end at "
                "the same shape."
            )
    terms = tuple(
        tuple(
            m if m.shape[0] == n else np.repeat(m, n, axis=0) for m, n in zip(t, shape, strict=True)
        )
        for t in state.terms
    )
    paths = []
    for p in state.paths:
        if p.is_global:
            paths.append(p)
            continue
        # Region of every position is that of position 0: stride 0 on broadcast axes.
        stride = tuple(
            Fraction(0) if n == 1 and m != 1 else S
            for S, n, m in zip(p.stride, state.shape, shape, strict=True)
        )
        paths.append(replace(p, stride=stride))
    return FieldState(tuple(shape), tuple(paths), terms)


def _walk(items, state: FieldState, prefix: str, records: list[LayerRecord]) -> FieldState:
    if not isinstance(items, Sequence) or isinstance(items, str | Layer | Parallel | Global):
        raise TypeError(
            f"`layers` (={items!r}) must be a list of jaxrf.Layer, jaxrf.Parallel or "
            "jaxrf.Global; wrap a single layer in a list."
        )
    for position, item in enumerate(items):
        default = f"{prefix}{position}"
        if isinstance(item, Layer):
            name = item.name or f"{prefix}{item.op}{position}"
            windows = layer_windows(item, state.shape, name)
            new = state.through(windows, name)
            if 0 in new.shape:
                raise ValueError(
                    f"layer '{name}' maps spatial shape {state.shape} to {new.shape}: the input "
                    "is too small for its kernel and padding; use a larger input_shape or more "
                    "padding."
                )
            state = new
            records.append(state.record(name, item.op, windows))
        elif isinstance(item, Global):
            name = item.name or f"{prefix}global_pool{position}"
            shape = (1,) * len(state.shape)
            state = state.make_global(shape, name)
            records.append(state.record(name, "global_pool"))
        elif isinstance(item, Parallel):
            name = item.name or f"{prefix}{item.merge}{position}"
            if item.merge not in ("add", "concat", "mul"):
                raise ValueError(
                    f"`merge` (={item.merge!r}) of '{name}' must be 'add', 'concat' (channels) "
                    "or 'mul'."
                )
            if len(item.branches) == 0:
                raise ValueError(f"Parallel '{name}' has no branches; give at least one list.")
            ends = [
                _walk(branch, state, f"{name}/branch{b}/", records)
                for b, branch in enumerate(item.branches)
            ]
            shape = tuple(max(s.shape[a] for s in ends) for a in range(len(state.shape)))
            ends = [broadcast_state(s, shape, name) for s in ends]
            state = merge_states(ends, name)
            records.append(state.record(name, item.merge))
        else:
            raise TypeError(
                f"layer {default} (={item!r}) is a {type(item).__name__}; a layer list holds "
                "jaxrf.Layer, jaxrf.Parallel or jaxrf.Global."
            )
    return state


def check_input_shape(input_shape, argument: str = "input_shape") -> tuple[int, ...]:
    """Spatial input shape as a tuple of positive ints, or a clear error."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if not shape or not all(_is_int(n) and n >= 1 for n in shape):
        raise ValueError(
            f"`{argument}` (={input_shape!r}) must be the spatial shape of the input, a tuple of "
            "positive ints without batch or channel axes; e.g. (224, 224)."
        )
    return tuple(int(n) for n in shape)


def from_layers(
    layers: Sequence[Layer | Parallel | Global], input_shape: Sequence[int]
) -> ReceptiveField:
    """Receptive field of a network given as a list of layer descriptions.

    Args:
        layers: :class:`Layer`, :class:`Parallel` (branches) and :class:`Global` entries, in
            order from input to output.
        input_shape: spatial shape of the input, e.g. ``(224, 224)`` (1-D, 2-D, 3-D...).

    Returns:
        The :class:`ReceptiveField` of the last layer's output.

    Raises:
        ValueError: bad layer parameters, an input too small for the network, or branches that
            end at different shapes.
        TypeError: an entry that is not a layer description.

    Example:
        >>> import jaxrf
        >>> rf = jaxrf.from_layers([jaxrf.Layer(3), jaxrf.Layer(3)], input_shape=(32, 32))
        >>> rf.size, rf.stride, rf.padding
        ((5, 5), (1, 1), (0, 0))
    """
    shape = check_input_shape(input_shape)
    records: list[LayerRecord] = []
    state = _walk(layers, FieldState.input(shape), "", records)
    return ReceptiveField.from_state(state, shape, records)
