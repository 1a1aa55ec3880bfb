"""Everything jaxrf knows about a primitive, in one entry per primitive (or family).

An :class:`Entry` states, for one primitive:

* ``interval``: the analytic rule (:mod:`jaxrf._rules`), ``rule(ctx, eqn, inputs)``;
* ``structural``: the surrogate of the structural rewrite (:mod:`jaxrf._structural`),
  ``surrogate(eqn, vals) -> outputs``, or ``"bilinear"`` / ``"cond"`` / ``"scan"`` /
  ``"while"`` (handled there; the loops are unrolled by :mod:`jaxrf._structural_loops`);
* ``layout``: how the primitive carries the layout, for reading the spatial axes of an input
  from the program: ``"same"`` (the outputs hold the same axes as the first tracked operand,
  when the rank is kept), ``"conv"`` (the spatial axes are read here), or ``fn(eqn, axes) ->
  axes`` (the same label function the interval rule uses); None stops the tracking;
* ``lowering``: how the CPU lowering (:mod:`jaxrf._lowering`) rewrites it,
  ``fn(eqn, vals, policy) -> outputs or None`` (None: left as it is), or ``"inline"``
  (a call whose body is lowered in place);
* ``index_operands``: ``fn(n_operands) -> positions`` of the operands that are indices and must
  be constants for the structure to be kept;
* ``cone``: the cone-pruning rule (:mod:`jaxrf._prune`), ``fn(eqn, out_box) -> Cone or None``:
  given the box (one ``[lo, hi)`` per axis) needed of the one output, the box the equation
  computes, the box read of each operand and the padding made explicit; None (or no rule): it
  runs whole;
* ``container``: the parameter holding the sub-program (a string: one sub-program, entered by
  the walker of :mod:`jaxrf._walk`), or a tuple of parameter names for containers whose rule
  chooses among several sub-programs (``cond``'s ``branches``; ``scan``/``while`` go here too).

The rule interface
------------------
A rule is ``rule(ctx, eqn, inputs) -> outputs``:

* ``inputs``: one value per equation input, a :class:`jaxrf._rules.Dependent` (a feature map
  that depends on the network input: ``.state``, a :class:`~jaxrf._field.FieldState`, and
  ``.axes``, per array axis the spatial axis it holds, or None, or a ``Flat`` of several) or a
  :class:`jaxrf._rules.Constant` (``.value``, evaluated on first use). A rule is called only
  when at least one input is ``Dependent``.
* ``ctx``: an immutable :class:`jaxrf._rules.Context`: ``ctx.ndim`` (spatial axes of the
  network input), ``ctx.name(op)`` (a fresh layer name for this equation: its module path, else
  ``op<k>``), ``ctx.layer(state, name, op, windows=None, out=0)`` (builds the
  :class:`~jaxrf.LayerRecord` of output ``out``; it is not stored), ``ctx.walk(sub, inputs,
  sub_index=0)`` (walks a sub-program with the same rules and returns its ``Result``: for
  container rules), ``ctx.site`` (where the equation is).
* Returns: a list of output values (no layer recorded), or a :class:`jaxrf._rules.Result`
  ``(outputs, records)``. ``jaxrf._rules.through(ctx, dep, windows, axes, op)`` pushes a map
  through per-array-axis windows and returns such a ``Result``.
* A rule that cannot follow the operation raises ``jaxrf._rules.Mixing(why)``; the walk then
  raises a ``TypeError`` naming the primitive and its line, or treats it as global.

Example of a callable rule (a 3-wide box filter along every spatial axis, padding 1)::

    def box3(ctx, eqn, inputs):
        (x,) = inputs
        windows = [Window(3, padding=(1, 1)) if a is not None else None for a in x.axes]
        return through(ctx, x, windows, x.axes, "box")

    jaxrf.register_rule("box3", box3)

Adding a primitive is one entry in :data:`REGISTRY` (below) or one
:func:`register_rule` call; the parity test checks that both modes know it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from . import _lowering as L
from . import _prune as P
from . import _rules as R
from . import _rules_factor as F
from . import _rules_grids as G
from . import _rules_tokens as T
from . import _structural as S


@dataclass(frozen=True)
class Entry:
    """What jaxrf knows about one primitive (see the module docstring for each field)."""

    interval: Callable | None = None
    structural: Callable | str | None = None
    layout: Callable | str | None = None
    lowering: Callable | str | None = None
    index_operands: Callable[[int], object] | None = None
    container: str | tuple[str, ...] | None = None
    cone: Callable | None = None


ELEMENTWISE = Entry(R.elementwise, S.sum_surrogate, "same", cone=P.elementwise_cone)
IDENTITY = Entry(R.identity, S.identity_surrogate, "same")
GLOBAL = Entry(R.treat_as_global, S.global_surrogate)


def _container(key: str, lowering: str | None = None) -> Entry:
    return Entry(container=key, lowering=lowering)


def _names(text: str) -> list[str]:
    return text.split()


_UNARY = _names(
    """neg sign floor ceil round is_finite exp exp2 log log1p expm1 tanh logistic sin cos tan
    asin acos atan sinh cosh asinh acosh atanh sqrt rsqrt cbrt abs not erf erfc erf_inv lgamma
    digamma real imag conj square integer_pow convert_element_type reduce_precision copy copy_p
    clz population_count bessel_i0e bessel_i1e stop_gradient"""
)
_NARY = _names(
    """add add_any sub mul div rem pow max min atan2 and or xor eq ne lt le gt ge shift_left
    shift_right_logical shift_right_arithmetic nextafter igamma igammac complex select_n clamp"""
)
_TO_SUM = _names("reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin")
_SCATTERS = _names("scatter scatter_add scatter_mul scatter_min scatter_max")

REGISTRY: dict[str, Entry] = {
    **dict.fromkeys(_UNARY + _NARY, ELEMENTWISE),
    "max": replace(ELEMENTWISE, lowering=L.lower_max),
    **dict.fromkeys(["optimization_barrier", "sharding_constraint"], IDENTITY),
    # Sliding windows.
    "conv_general_dilated": Entry(R.conv, "bilinear", "conv", L.lower_conv, cone=P.conv_cone),
    "reduce_window_max": Entry(
        R.reduce_window,
        S.window_sum_surrogate,
        "same",
        L.lower_max_pool,
        cone=P.window_cone(-float("inf")),
    ),
    "reduce_window_min": Entry(
        R.reduce_window, S.window_sum_surrogate, "same", cone=P.window_cone(float("inf"))
    ),
    "reduce_window": Entry(R.reduce_window, S.window_sum_surrogate, "same"),
    "reduce_window_sum": Entry(
        R.reduce_window, S.window_sum_surrogate, "same", cone=P.window_cone(0)
    ),
    "pad": Entry(R.pad, S.keep_surrogate, "same"),
    "slice": Entry(T.slice_tokens, S.keep_surrogate, "same"),
    "dynamic_slice": Entry(R.dynamic_slice, S.keep_surrogate, "same", None, lambda n: range(1, n)),
    "split": Entry(R.split, S.keep_surrogate, "same"),
    "cumsum": Entry(R.cumulative, S.keep_surrogate, "same"),
    **dict.fromkeys(
        _names("cumprod cummax cummin cumlogsumexp"),
        Entry(R.cumulative, S.cumsum_surrogate, "same"),
    ),
    # Merges and reductions.
    "concatenate": Entry(T.concat_tokens, S.keep_surrogate, cone=P.concatenate_cone),
    "reduce_sum": Entry(R.reduction, S.keep_surrogate, cone=P.reduction_cone),
    **dict.fromkeys(_TO_SUM, Entry(R.reduction, S.sum_reduction_surrogate, cone=P.reduction_cone)),
    "reduce": Entry(R.reduction),
    # Shape and layout: only the labels move.
    "transpose": Entry(R.transpose, S.keep_surrogate, R.transpose_axes, cone=P.transpose_cone),
    "squeeze": Entry(R.squeeze, S.keep_surrogate, R.squeeze_axes),
    "expand_dims": Entry(R.expand_dims, S.keep_surrogate, R.expand_dims_axes),
    "broadcast_in_dim": Entry(
        R.broadcast_in_dim, S.keep_surrogate, R.broadcast_layout, cone=P.broadcast_cone
    ),
    "reshape": Entry(F.reshape, S.keep_surrogate, R.reshape_axes),
    "rev": Entry(G.rev, S.keep_surrogate, "same"),
    # Contractions and lookups.
    "dot_general": Entry(R.dot_general, "bilinear"),
    "gather": Entry(R.gather, S.keep_surrogate, None, None, lambda n: (1,)),
    "sort": Entry(G.sort, S.sort_surrogate),
    # Structural only (see STRUCTURAL_ONLY).
    "dynamic_update_slice": Entry(None, S.keep_surrogate, None, None, lambda n: range(2, n)),
    "scatter-add": Entry(None, S.keep_surrogate, None, None, lambda n: (1,)),
    **dict.fromkeys(_SCATTERS, Entry(None, S.scatter_add_surrogate, None, None, lambda n: (1,))),
    # Containers.
    **{name: _container("jaxpr", "inline") for name in ("jit", "pjit")},
    **{name: _container("call_jaxpr", "inline") for name in ("closed_call", "core_call")},
    **dict.fromkeys(["custom_jvp_call", "custom_vjp_call"], _container("call_jaxpr")),
    "custom_vjp_call_jaxpr": _container("fun_jaxpr"),
    **dict.fromkeys(["remat", "remat2", "checkpoint"], _container("jaxpr")),
    # Containers whose rule walks the sub-programs itself.
    "cond": Entry(G.cond, "cond", container=("branches",)),
    "scan": Entry(G.scan, "scan", container=("jaxpr",)),
    "while": Entry(G.while_loop, "while", container=("cond_jaxpr", "body_jaxpr")),
}

#: Primitives only the analytic side handles, and why.
ANALYTIC_ONLY = {
    "reduce": "a variadic reduction with a user reducer: no surrogate can know its reducer",
}
#: Primitives only the structural side handles, and why.
STRUCTURAL_ONLY = {
    "dynamic_update_slice": "an overwrite: no interval rule yet",
    "scatter-add": "data-dependent placement: no interval rule",
    **dict.fromkeys(_SCATTERS, "data-dependent placement: no interval rule"),
}

_KINDS = {"elementwise": ELEMENTWISE, "global": GLOBAL, "identity": IDENTITY}
_SURROGATES = {
    "sum": S.sum_surrogate,
    "keep": S.keep_surrogate,
    "global": S.global_surrogate,
    "identity": S.identity_surrogate,
}


def interval_rules() -> dict[str, Callable]:
    """Primitive name -> analytic rule, for the primitives that have one."""
    return {n: e.interval for n, e in REGISTRY.items() if e.interval is not None}


def analytic_primitives() -> list[str]:
    """Names of the primitives the analytic walk handles (rules and containers)."""
    return sorted(
        n for n, e in REGISTRY.items() if e.interval is not None or isinstance(e.container, str)
    )


def _entry_for(name: str, rule, structural) -> Entry:
    """The entry :func:`register_rule` stores (validating its arguments)."""
    if isinstance(rule, str):
        if rule not in _KINDS:
            raise TypeError(
                f"`rule` (={rule!r}) for primitive '{name}' must be a callable or one of "
                f"{sorted(_KINDS)}."
            )
        entry = _KINDS[rule]
    elif callable(rule):
        entry = Entry(rule, S.keep_surrogate)
    else:
        raise TypeError(
            f"`rule` (={rule!r}) for primitive '{name}' must be a callable "
            "rule(ctx, eqn, inputs) -> outputs or one of " + str(sorted(_KINDS)) + "."
        )
    if structural is None:
        return entry
    if isinstance(structural, str) and structural in _SURROGATES:
        structural = _SURROGATES[structural]
    if not callable(structural):
        raise TypeError(
            f"`structural` (={structural!r}) for primitive '{name}' must be a callable "
            f"surrogate(eqn, vals) -> outputs or one of {sorted(_SURROGATES)}."
        )
    return replace(entry, structural=structural)


def register_rule(name: str, rule: Callable | str, *, structural: Callable | str | None = None):
    """Teach jaxrf a primitive it does not know, in every mode at once.

    The analytic walk (:func:`jaxrf.receptive_field`), layout detection and the structural
    probe (``mode="structural"``) all read the same registry entry.

    Args:
        name: the primitive's name as it appears in the jaxpr (``eqn.primitive.name``).
        rule: ``"elementwise"`` (outputs depend on the same positions as the inputs),
            ``"global"`` (every output reads the whole input), ``"identity"`` (returns its
            operands), or a callable ``rule(ctx, eqn, inputs) -> outputs`` (the interface is
            described in :mod:`jaxrf._registry`).
        structural: the structural surrogate; default: the sum of the operands for
            ``"elementwise"``, conservative for ``"global"``, the operands for ``"identity"``,
            and for a callable ``rule`` the primitive itself applied to the surrogates
            (``"keep"``: right for data movement and linear ops with non-negative weights; the
            primitive must then be differentiable). Also ``"sum"``, ``"global"``,
            ``"identity"`` or a callable ``surrogate(eqn, vals) -> outputs``.

    Raises:
        TypeError: ``rule`` or ``structural`` is neither a callable nor one of the strings.

    Example:
        >>> import jaxrf
        >>> jaxrf.register_rule("my_activation", "elementwise")
    """
    global _GENERATION
    REGISTRY[name] = _entry_for(name, rule, structural)
    _GENERATION += 1


_GENERATION = 0


def generation() -> int:
    """How many times :func:`register_rule` has changed the registry (for caches)."""
    return _GENERATION
