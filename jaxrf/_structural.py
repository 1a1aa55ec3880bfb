"""Structural dependence: rewrite a traced network so that no dependency can be missed.

A measured gradient can be zero where the output still *depends* on a pixel: a dead ReLU, a
max that routed its gradient elsewhere, a batch-norm scale initialised to zero, two signed
paths that cancel, or a product of 200 factors ``1/3`` that underflows. This module answers the
structural question instead: which input pixels *can* an output depend on, whatever the weights
and inputs?

How: the jaxpr of ``fn`` is re-evaluated with a *surrogate* of every operation that touches the
input, chosen so that the surrogate is linear with non-negative coefficients and reads at least
every operand element the original reads:

* convolution with a constant kernel -> the same convolution with a kernel of ones (every tap);
* ``dot_general`` with a constant -> with its nonzero pattern ``|c| > 0`` (interpolation and
  selection matrices keep their exact structure; an all-zero constant, a zero-initialised
  layer, becomes all ones);
* multiplication or division by a constant -> by 1 (a zero batch-norm gamma cannot hide a
  branch); products and quotients of two input-dependent values -> their sum (the union of the
  dependences); bilinear ops (conv, dot) of two input-dependent values ``f(a, b)`` ->
  ``f(a, 1) + f(1, b)``;
* every elementwise nonlinearity (relu's max, tanh, logistic, exp, comparisons...) -> the sum
  of its input-dependent operands; ``select_n`` -> the sum of its branches and predicate;
* max/min reductions and ``reduce_window_max`` (max pooling) -> sums; ``argmax``, ``sort`` ->
  conservative (every output reads the whole reduced axis); ``scatter`` -> ``scatter_add``;
* data movement (reshape, transpose, slice, pad, concatenate, gather/dynamic slices with
  constant indices...) is kept as it is; constants added to the input are dropped.

The surrogate is pulled back with ``jax.vjp`` (JAX's own transposes, XLA's convolution
arithmetic, not interval rules), and the cotangent is binarised (``> 0 -> 1``) after every
operation, so depth cannot underflow or overflow it. Containers (``jit``, ``custom_jvp_call``,
``custom_vjp_call``, ``closed_call``, ``remat``, ``cond``) are walked recursively;
``scan`` and ``while`` are unrolled (:mod:`jaxrf._structural_loops`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from ._jaxpr import bind, interpret

DTYPE = jnp.float32


class Dep:
    """A value that depends on the input: its surrogate (float array of the var's shape)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


@jax.custom_vjp
def binarize(v):
    """Identity forward; the cotangent becomes ``(ct > 0)`` so it never under- or overflows."""
    return v


def _binarize_fwd(v):
    return v, None


def _binarize_bwd(_, ct):
    return ((ct > 0).astype(ct.dtype),)


binarize.defvjp(_binarize_fwd, _binarize_bwd)


ELEMENTWISE = frozenset(
    """abs neg sign floor ceil round is_finite exp exp2 log log1p expm1 tanh logistic sin cos tan
    asin acos atan sinh cosh asinh acosh atanh sqrt rsqrt cbrt square integer_pow pow erf erfc
    erf_inv lgamma digamma igamma igammac bessel_i0e bessel_i1e add add_any sub mul div rem max
    min atan2 nextafter eq ne lt le gt ge and or not xor convert_element_type stop_gradient copy
    copy_p reduce_precision real imag conj select_n clamp population_count clz shift_left
    shift_right_logical shift_right_arithmetic sharding_constraint""".split()
)
# Kept as they are (linear in the data operands); index operands must be constants.
STRUCTURAL = frozenset(
    """reshape broadcast_in_dim transpose squeeze expand_dims rev slice reduce_sum
    reduce_window_sum cumsum concatenate pad dynamic_slice dynamic_update_slice gather split
    scatter-add scatter_add""".split()
)
TO_SUM = frozenset(
    "reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin".split()
)
TO_WINDOW_SUM = frozenset("reduce_window_max reduce_window_min reduce_window".split())
TO_CUMSUM = frozenset("cumprod cummax cummin cumlogsumexp".split())
TO_SCATTER_ADD = frozenset("scatter scatter_mul scatter_min scatter_max".split())
BILINEAR = frozenset("conv_general_dilated dot_general".split())
CONTAINERS = frozenset(
    "jit pjit closed_call core_call remat remat2 checkpoint custom_jvp_call custom_vjp_call "
    "custom_vjp_call_jaxpr custom_lin cond scan while".split()
)
# Which operands of these primitives are indices (must be constants to keep the structure).
_INDEX_OPERANDS = {
    "dynamic_slice": lambda n: range(1, n),
    "dynamic_update_slice": lambda n: range(2, n),
    "gather": lambda n: (1,),
    "scatter-add": lambda n: (1,),
    "scatter_add": lambda n: (1,),
}


def structural_primitives() -> list[str]:
    """Names of the primitives the structural rewrite has a rule for."""
    return sorted(
        ELEMENTWISE
        | STRUCTURAL
        | TO_SUM
        | TO_WINDOW_SUM
        | TO_CUMSUM
        | TO_SCATTER_ADD
        | BILINEAR
        | CONTAINERS
        | {"sort"}
    )


def _where(eqn) -> str:
    try:
        from jax._src import source_info_util

        return source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 -- a location is a courtesy, never a failure
        return "an unknown location"


def _shape(var) -> tuple[int, ...]:
    return tuple(var.aval.shape)


def _as_dtype(v):
    return v.astype(DTYPE) if v.dtype != DTYPE else v


def _sum_deps(vals, shape):
    """Sum of the input-dependent operands, broadcast to ``shape`` (union of dependences)."""
    total = None
    for v in vals:
        if isinstance(v, Dep):
            term = jnp.broadcast_to(_as_dtype(v.value), shape)
            total = term if total is None else total + term
    return total


def _global(vals, shape):
    """Conservative: every output element reads every element of every dependent operand."""
    total = sum(jnp.sum(_as_dtype(v.value)) for v in vals if isinstance(v, Dep))
    return jnp.broadcast_to(total, shape)


def _pattern(c):
    """Nonzero pattern of a constant as 0/1; an all-zero constant (zero init) becomes all ones."""
    c = np.asarray(c)
    nz = np.abs(c) > 0
    if not nz.any():
        nz = np.ones_like(nz)
    return nz.astype(np.float32)


class _Rewriter:
    def __init__(self, unknown: str):
        if unknown not in ("raise", "global"):
            raise ValueError(
                f"`unknown` (={unknown!r}) must be 'raise' or 'global' (treat a primitive without "
                "a rule as reading all of its inputs, conservatively)."
            )
        self.unknown = unknown
        self.planning = False
        self.tape: list = []
        self._replay = iter(())

    def plan(self, closed) -> bool:
        """Eager pass: constants computed concretely, patterns recorded, rules checked.

        Returns whether the output depends on the input at all.
        """
        self.planning, self.tape = True, []
        try:
            (out,) = self.run(closed.jaxpr, closed.consts, [Dep(None)])
        finally:
            self.planning = False
        return isinstance(out, Dep)

    def replay(self, closed, xs):
        """Traced pass: the surrogate, using the concrete patterns recorded by :meth:`plan`."""
        self._replay = iter(self.tape)
        (out,) = self.run(closed.jaxpr, closed.consts, [Dep(xs)])
        return out.value

    def run(self, jaxpr, consts, args):
        def rule(eqn, vals):
            if any(isinstance(v, Dep) for v in vals):
                return self.rule(eqn, vals)
            return bind(eqn, vals)

        return interpret(jaxpr, consts, args, rule)

    def rule(self, eqn, vals):
        name = eqn.primitive.name
        params = eqn.params
        shapes = [_shape(v) for v in eqn.outvars]
        if name in CONTAINERS:
            return self.container(eqn, vals)
        if name in BILINEAR:
            out = self.bilinear(eqn, vals)
            return [Dep(None if out is None else binarize(out))]
        known = (
            name in ELEMENTWISE | STRUCTURAL | TO_SCATTER_ADD | TO_SUM | TO_WINDOW_SUM | TO_CUMSUM
        )
        if not known and name not in ("cumsum", "sort") and self.unknown != "global":
            raise TypeError(
                f"structural mode has no rule for primitive '{name}' (traced from "
                f"{_where(eqn)}). Supported: {', '.join(structural_primitives())}. Escape hatches: "
                "unknown='global' (conservative: every output of that operation reads all of its "
                "inputs), or mode='measured'."
            )
        if self.planning:
            return [Dep(None) for _ in shapes]
        if name in ELEMENTWISE:
            outs = [_sum_deps(vals, shapes[0])]
        elif name in STRUCTURAL or name in TO_SCATTER_ADD:
            index_ops = set(_INDEX_OPERANDS.get(name, lambda n: ())(len(vals)))
            if name in TO_SCATTER_ADD:
                index_ops = {1}
            if any(isinstance(vals[i], Dep) for i in index_ops):
                outs = [_global(vals, s) for s in shapes]  # data-dependent indexing
            else:
                args = [
                    v
                    if i in index_ops
                    else _as_dtype(v.value)
                    if isinstance(v, Dep)
                    else jnp.zeros(np.shape(v), DTYPE)
                    for i, v in enumerate(vals)
                ]
                if name in TO_SCATTER_ADD or name == "scatter_add":
                    outs = [
                        lax.scatter_add(
                            args[0],
                            args[1],
                            args[2],
                            params["dimension_numbers"],
                            indices_are_sorted=params["indices_are_sorted"],
                            unique_indices=params["unique_indices"],
                            mode=params["mode"],
                        )
                    ]
                else:
                    outs = eqn.primitive.bind(*args, **params)
                    outs = outs if eqn.primitive.multiple_results else [outs]
        elif name in TO_SUM:
            outs = [jnp.sum(_as_dtype(vals[0].value), axis=tuple(params["axes"]))]
        elif name in TO_WINDOW_SUM:
            operands = (
                [v for v in vals[: len(vals) // 2] if isinstance(v, Dep)]
                if name == "reduce_window"
                else [vals[0]]
            )
            total = _sum_deps(operands, _shape(eqn.invars[0]))
            out = lax.reduce_window(
                total,
                np.array(0, DTYPE),
                lax.add,
                params["window_dimensions"],
                params["window_strides"],
                params["padding"],
                params["base_dilation"],
                params["window_dilation"],
            )
            outs = [out] * len(shapes)
        elif name in TO_CUMSUM or name == "cumsum":
            outs = [
                lax.cumsum(_as_dtype(vals[0].value), axis=params["axis"], reverse=params["reverse"])
            ]
        elif name == "sort":
            total = _sum_deps(vals, _shape(eqn.invars[0]))
            line = jnp.sum(total, axis=params["dimension"], keepdims=True)
            outs = [jnp.broadcast_to(line, s) for s in shapes]
        else:  # unknown primitive, unknown="global"
            outs = [_global(vals, s) for s in shapes]
        return [Dep(binarize(_as_dtype(o))) for o in outs]

    def bilinear(self, eqn, vals):
        a, b = vals
        if eqn.primitive.name == "dot_general":
            if self.planning:
                self.tape.append(tuple(None if isinstance(v, Dep) else _pattern(v) for v in (a, b)))
                return None
            pattern_a, pattern_b = next(self._replay)
        elif self.planning:
            return None
        params = dict(eqn.params)
        params["preferred_element_type"] = DTYPE
        ones_a = jnp.ones(_shape(eqn.invars[0]), DTYPE)
        ones_b = jnp.ones(_shape(eqn.invars[1]), DTYPE)
        if eqn.primitive.name == "conv_general_dilated":
            const_b = ones_b  # every kernel tap, whatever its value
            const_a = ones_a
        else:
            const_a = ones_a if pattern_a is None else jnp.asarray(pattern_a)
            const_b = ones_b if pattern_b is None else jnp.asarray(pattern_b)
        total = None
        if isinstance(a, Dep):
            total = eqn.primitive.bind(_as_dtype(a.value), const_b, **params)
        if isinstance(b, Dep):
            term = eqn.primitive.bind(const_a, _as_dtype(b.value), **params)
            total = term if total is None else total + term
        return total

    def container(self, eqn, vals):
        name = eqn.primitive.name
        params = eqn.params
        if name in ("scan", "while"):
            from ._structural_loops import LOOPS

            return LOOPS[name](self, eqn, vals)
        if name == "cond":
            index, operands = vals[0], vals[1:]
            branches = params["branches"]
            if not isinstance(index, Dep):
                if self.planning:
                    self.tape.append(int(np.clip(int(np.asarray(index)), 0, len(branches) - 1)))
                chosen = branches[self.tape[-1] if self.planning else next(self._replay)]
                return self.run(chosen.jaxpr, chosen.consts, operands)
            shapes = [_shape(v) for v in eqn.outvars]
            outs = []
            results = [self.run(br.jaxpr, br.consts, operands) for br in branches]
            for k, s in enumerate(shapes):
                parts = [Dep(r[k].value) if isinstance(r[k], Dep) else None for r in results]
                parts = [p for p in parts if p is not None] + [index]
                outs.append(Dep(None if self.planning else binarize(_sum_deps(parts, s))))
            return outs
        for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
            if key in params:
                sub = params[key]
                break
        else:
            raise TypeError(f"container primitive '{name}' has no jaxpr parameter ({_where(eqn)}).")
        if isinstance(sub, jcore.ClosedJaxpr):
            outs = self.run(sub.jaxpr, sub.consts, vals)
        else:
            outs = self.run(sub, [], vals)
        return outs


_PER_OBJECT: dict[int, dict] = {}


def per_object_cache(obj) -> dict:
    """A dict of compiled programs that lives exactly as long as ``obj`` (keyed by identity).

    Identity, not equality: two equal-looking networks with different weights never share an
    entry. An object that cannot be weakly referenced (a builtin) gets a fresh, unshared dict.
    """
    key = id(obj)
    entry = _PER_OBJECT.get(key)
    if entry is not None and entry[0]() is obj:
        return entry[1]
    try:
        ref = weakref.ref(obj)
    except TypeError:
        return {}
    cache: dict = {}
    _PER_OBJECT[key] = (ref, cache)
    weakref.finalize(obj, _forget, key, ref)
    return cache


def _forget(key: int, ref) -> None:
    entry = _PER_OBJECT.get(key)
    if entry is not None and entry[0] is ref:
        del _PER_OBJECT[key]


def structural_pullback(fn: Callable, x, *, unknown: str = "raise") -> Callable:
    """The binarised structural pullback of ``fn`` at the shape of ``x``.

    Building it (trace, eager plan of the constants, compilation of the replay) costs a
    fraction of a second to seconds on a real network, so it is cached per function object
    (identity, held weakly) and input shape, dtype and ``unknown``: probing the same ``fn``
    again, at any output position, reuses the compiled program. As with ``jax.jit``, a
    function whose closed-over weights are *replaced* between calls must be a new function
    object (the structure depends on which constants are zero and which ``cond`` branch they
    select).

    Args:
        fn: one array in, one array out.
        x: an input (only its shape and dtype matter).
        unknown: ``"raise"`` (TypeError naming the primitive) or ``"global"``.

    Returns:
        A jitted function: output cotangent (``fn(x)``'s shape, float32, non-negative) -> input
        cotangent (``x``'s shape, float32), positive exactly where the input can influence the
        seeded outputs.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> fn = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 1), (1, 2, 1),
        ...                                      "VALID")
        >>> pull = structural_pullback(fn, jnp.zeros((1, 6, 1)))
        >>> pull(jnp.zeros((1, 3, 1)).at[0, 1, 0].set(1.0))[0, :, 0]
        Array([0., 0., 1., 1., 0., 0.], dtype=float32)
        >>> structural_pullback(fn, jnp.zeros((1, 6, 1))) is pull  # cached
        True
    """
    key = (
        "structural_pullback",
        tuple(np.shape(x)),
        np.dtype(x.dtype),
        bool(getattr(x, "weak_type", False)),
        unknown,
        bool(jax.config.jax_enable_x64),
    )
    cache = per_object_cache(fn)
    if key not in cache:
        cache[key] = _build_pullback(fn, x, unknown)
    return cache[key]


def _build_pullback(fn: Callable, x, unknown: str) -> Callable:
    closed = jax.make_jaxpr(fn)(x)
    if len(closed.jaxpr.outvars) != 1:
        raise TypeError(f"`fn` must return one array; it returned {len(closed.jaxpr.outvars)}.")
    rewriter = _Rewriter(unknown)
    in_shape = tuple(np.shape(x))
    if not rewriter.plan(closed):  # the output ignores the input

        def zero(ct):
            return jnp.zeros(in_shape, DTYPE)

        return zero

    @jax.jit
    def pull(ct):
        _, pullback = jax.vjp(lambda xs: rewriter.replay(closed, xs), jnp.zeros(in_shape, DTYPE))
        return pullback(ct.astype(DTYPE))[0]

    return pull
