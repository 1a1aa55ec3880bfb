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

from ._walk import ROOT, bind, locate, walk
from ._xla import jit

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


def structural_primitives() -> list[str]:
    """Names of the primitives the structural rewrite has a rule for."""
    from ._registry import REGISTRY

    return sorted(n for n, e in REGISTRY.items() if e.structural is not None or e.container)


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


# ---------------------------------------------------------------------------------------
# Surrogates: ``surrogate(eqn, vals) -> outputs`` (arrays, before binarisation). ``vals`` hold
# a :class:`Dep` for each input-dependent operand and the concrete value of each constant one;
# index operands are already checked to be constants.
# ---------------------------------------------------------------------------------------


def sum_surrogate(eqn, vals):
    """Elementwise ops: the sum of the input-dependent operands (union of dependences)."""
    return [_sum_deps(vals, _shape(eqn.outvars[0]))] * len(eqn.outvars)


def identity_surrogate(eqn, vals):
    """Ops returning their operands: each output is its operand's surrogate (0 if constant)."""
    return [
        v.value if isinstance(v, Dep) else jnp.zeros(_shape(var), DTYPE)
        for v, var in zip(vals, eqn.outvars, strict=False)
    ]


def _linear_args(eqn, vals):
    """Operands of a kept (linear) op: surrogates, zeros for constants, indices as they are."""
    index_ops = set(index_operands(eqn))
    return [
        v
        if i in index_ops
        else _as_dtype(v.value)
        if isinstance(v, Dep)
        else jnp.zeros(np.shape(v), DTYPE)
        for i, v in enumerate(vals)
    ]


def keep_surrogate(eqn, vals):
    """Data movement and linear ops with non-negative coefficients: the op itself."""
    outs = eqn.primitive.bind(*_linear_args(eqn, vals), **eqn.params)
    return list(outs) if eqn.primitive.multiple_results else [outs]


def scatter_add_surrogate(eqn, vals):
    """``scatter``/``scatter_{add,mul,min,max}``: every update lands, summed."""
    args = _linear_args(eqn, vals)
    p = eqn.params
    out = lax.scatter_add(
        args[0],
        args[1],
        args[2],
        p["dimension_numbers"],
        indices_are_sorted=p["indices_are_sorted"],
        unique_indices=p["unique_indices"],
        mode=p["mode"],
    )
    return [out]


def sum_reduction_surrogate(eqn, vals):
    """Max/min/prod/arg reductions: the sum over the same axes."""
    return [jnp.sum(_as_dtype(vals[0].value), axis=tuple(eqn.params["axes"]))]


def window_sum_surrogate(eqn, vals):
    """Pooling (sum, max, min, generic): the sum over the same windows (dilated windows as
    strided slices, see :func:`_dilated_window_sum`)."""
    p = eqn.params
    operands = (
        [v for v in vals[: len(vals) // 2] if isinstance(v, Dep)]
        if eqn.primitive.name == "reduce_window"
        else [vals[0]]
    )
    total = _sum_deps(operands, _shape(eqn.invars[0]))
    window = (p["window_dimensions"], p["window_strides"], p["padding"], p["base_dilation"])
    if any(d != 1 for d in p["window_dilation"]):
        out = _dilated_window_sum(total, *window, p["window_dilation"])
    else:
        out = lax.reduce_window(total, np.array(0, DTYPE), lax.add, *window)
    return [out] * len(eqn.outvars)


def _dilated_window_sum(x, window, strides, padding, base_dilation, window_dilation):
    """``reduce_window`` add with dilated windows, as a sum of one strided slice per tap.

    XLA:CPU (jaxlib 0.10.2) simplifies the transpose of such a window sum, a pad followed by a
    dilated ``reduce_window``, to the identity when every tap of a window but one falls in the
    padding: a max pool with window 2, dilation 2 and SAME padding on a 1-pixel map then
    "reads" the pixel its taps at -1 and +1 step over. Slices cannot be simplified that way.
    """
    config = [(lo, hi, b - 1) for (lo, hi), b in zip(padding, base_dilation, strict=True)]
    padded = lax.pad(x, np.array(0, x.dtype), config)
    out_shape = [
        max((n - (k - 1) * d - 1) // s + 1, 0)
        for n, k, d, s in zip(padded.shape, window, window_dilation, strides, strict=True)
    ]
    total = jnp.zeros(out_shape, x.dtype)
    if 0 in out_shape:
        return total
    for tap in np.ndindex(*window):
        start = [t * d for t, d in zip(tap, window_dilation, strict=True)]
        limit = [a + (m - 1) * s + 1 for a, m, s in zip(start, out_shape, strides, strict=True)]
        total = total + lax.slice(padded, start, limit, strides)
    return total


def cumsum_surrogate(eqn, vals):
    """Cumulative ops: the cumulative sum along the same axis and direction."""
    p = eqn.params
    return [lax.cumsum(_as_dtype(vals[0].value), axis=p["axis"], reverse=p["reverse"])]


def sort_surrogate(eqn, vals):
    """``sort``: every output reads the whole sorted line of every operand."""
    total = _sum_deps(vals, _shape(eqn.invars[0]))
    line = jnp.sum(total, axis=eqn.params["dimension"], keepdims=True)
    return [jnp.broadcast_to(line, _shape(v)) for v in eqn.outvars]


def global_surrogate(eqn, vals):
    """Conservative: every output reads every element of every input-dependent operand."""
    return [_global(vals, _shape(v)) for v in eqn.outvars]


def index_operands(eqn) -> tuple[int, ...]:
    """Positions of the operands of ``eqn`` that are indices (must be constants)."""
    from ._registry import REGISTRY

    entry = REGISTRY.get(eqn.primitive.name)
    if entry is None or entry.index_operands is None:
        return ()
    return tuple(entry.index_operands(len(eqn.invars)))


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
            (out,) = self.run(closed, [Dep(None)])
        finally:
            self.planning = False
        return isinstance(out, Dep)

    def replay(self, closed, xs):
        """Traced pass: the surrogate, using the concrete patterns recorded by :meth:`plan`."""
        self._replay = iter(self.tape)
        (out,) = self.run(closed, [Dep(xs)])
        return out.value

    def run(self, program, args, site=ROOT):
        return walk(program, args, self.visit, descend=_any_dep, site=site)

    def visit(self, eqn, vals, site):
        if not _any_dep(eqn, vals):
            return bind(eqn, vals)
        surrogate = self.surrogate(eqn, site)
        if surrogate == "bilinear":
            out = self.bilinear(eqn, vals)
            return [Dep(None if out is None else binarize(out))]
        if surrogate == "cond":
            return self.cond(eqn, vals, site)
        if surrogate in ("scan", "while"):
            from ._structural_loops import LOOPS

            return LOOPS[surrogate](self, eqn, vals, site)
        if any(isinstance(vals[i], Dep) for i in index_operands(eqn)):
            surrogate = global_surrogate  # data-dependent indexing
        if self.planning:
            return [Dep(None) for _ in eqn.outvars]
        return [Dep(binarize(_as_dtype(o))) for o in surrogate(eqn, vals)]

    def surrogate(self, eqn, site):
        """The registry's surrogate for ``eqn``; unknown: an error, or global if asked."""
        from ._registry import REGISTRY

        name = eqn.primitive.name
        entry = REGISTRY.get(name)
        if entry is not None and entry.structural is not None:
            return entry.structural
        if self.unknown == "global":
            return global_surrogate
        raise TypeError(
            f"structural mode has no rule for primitive '{name}' (traced from "
            f"{locate(eqn, site)}). Supported: {', '.join(structural_primitives())}. Escape "
            "hatches: unknown='global' (conservative: every output of that operation reads all "
            f"of its inputs), jaxrf.register_rule('{name}', ...) (teaches both modes), or "
            "mode='measured'."
        )

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

    def cond(self, eqn, vals, site):
        """``cond``: the branch a constant index selects; else the sum of all branches."""
        index, operands = vals[0], vals[1:]
        branches = eqn.params["branches"]
        if not isinstance(index, Dep):
            if self.planning:
                self.tape.append(int(np.clip(int(np.asarray(index)), 0, len(branches) - 1)))
            k = self.tape[-1] if self.planning else next(self._replay)
            return self.run(branches[k], operands, site.inside(eqn, k))
        results = [self.run(br, operands, site.inside(eqn, k)) for k, br in enumerate(branches)]
        outs = []
        for k, var in enumerate(eqn.outvars):
            parts = [Dep(r[k].value) for r in results if isinstance(r[k], Dep)] + [index]
            outs.append(Dep(None if self.planning else binarize(_sum_deps(parts, _shape(var)))))
        return outs


def _any_dep(eqn, vals, site=None) -> bool:
    return any(isinstance(v, Dep) for v in vals)


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

    Building it (trace, eager plan of the constants, compilation of the replay) is the costly
    part, so it is cached per function object
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
        _registry_generation(),
    )
    cache = per_object_cache(fn)
    if key not in cache:
        cache[key] = _build_pullback(fn, x, unknown)
    return cache[key]


def _registry_generation() -> int:
    from ._registry import generation

    return generation()


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

    @jit
    def pull(ct):
        _, pullback = jax.vjp(lambda xs: rewriter.replay(closed, xs), jnp.zeros(in_shape, DTYPE))
        return pullback(ct.astype(DTYPE))[0]

    return pull
