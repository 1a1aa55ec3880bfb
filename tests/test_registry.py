"""One registry entry teaches every mode: custom primitives, parity, error locations.

A primitive registered once with :func:`jaxrf.register_rule` must be followed by the analytic
walk (``receptive_field``) and by the structural probe (``actual_receptive_field(...,
mode="structural")``), and both must give the hand-derived region.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

import jaxrf
from jaxrf import _registry, _rules

X = jnp.zeros((1, 10, 10, 1), jnp.float32)


def conv3(x):
    """A 3x3 VALID convolution, NHWC: output j reads inputs j..j+2 on each axis."""
    w = jnp.ones((3, 3, 1, 1), x.dtype)
    dn = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=dn)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so registrations do not leak into other tests."""
    monkeypatch.setattr(_registry, "REGISTRY", dict(_registry.REGISTRY))
    return _registry.REGISTRY


# A custom elementwise primitive (softplus), differentiable through its impl.
def _softplus_impl(x):
    return jnp.logaddexp(x, jnp.zeros_like(x))


softplus_p = Primitive("jaxrf_test_softplus")
softplus_p.def_impl(_softplus_impl)
softplus_p.def_abstract_eval(lambda x: jax.core.ShapedArray(x.shape, x.dtype))
mlir.register_lowering(softplus_p, mlir.lower_fun(_softplus_impl, multiple_results=False))
ad.defjvp(softplus_p, lambda t, x: t * jax.nn.sigmoid(x))


# A custom linear primitive: a 3-wide box sum along H and W with zero padding 1 (SAME),
# out[i, j] = sum of x[i + a, j + b] for a, b in {-1, 0, 1} inside the map.
def _box3_impl(x):
    return jax.lax.reduce_window(
        x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )


box3_p = Primitive("jaxrf_test_box3")
box3_p.def_impl(_box3_impl)
box3_p.def_abstract_eval(lambda x: jax.core.ShapedArray(x.shape, x.dtype))
mlir.register_lowering(box3_p, mlir.lower_fun(_box3_impl, multiple_results=False))
ad.deflinear2(box3_p, lambda ct, x: [box3_p.bind(ct)])  # symmetric: its own transpose


def _box3_batch(args, dims):
    """vmap: fold the mapped axis into the batch axis (N), box, unfold."""
    (x,), (d,) = args, dims
    x = jnp.moveaxis(x, d, 0)
    out = box3_p.bind(x.reshape(-1, *x.shape[2:]))
    return out.reshape(x.shape), 0


batching.primitive_batchers[box3_p] = _box3_batch


def box3_rule(ctx, eqn, inputs):
    """The interval rule of ``box3``: a kernel-3 window, padding 1, on every spatial axis."""
    (x,) = inputs
    windows = [jaxrf.Window(3, padding=(1, 1)) if a is not None else None for a in x.axes]
    return _rules.through(ctx, x, windows, x.axes, "box3")


def softplus_net(x):
    return softplus_p.bind(conv3(x))


def box3_net(x):
    return box3_p.bind(conv3(x))


# Hand derivation on a 10x10 input. conv3 (VALID): 8x8, output j reads [j, j + 2].
# softplus (elementwise): the same, [i, i + 2].
# box3 (SAME on the 8-wide map): output i reads conv outputs [max(i-1, 0), min(i+1, 7)], so
# inputs [max(i - 1, 0), min(i + 1, 7) + 2].
CASES = [
    ("softplus", softplus_net, "elementwise", (0, 0), ((0, 2), (0, 2))),
    ("softplus", softplus_net, "elementwise", (3, 5), ((3, 5), (5, 7))),
    ("softplus", softplus_net, "elementwise", (7, 7), ((7, 9), (7, 9))),
    ("box3", box3_net, box3_rule, (0, 0), ((0, 3), (0, 3))),
    ("box3", box3_net, box3_rule, (3, 5), ((2, 6), (4, 8))),
    ("box3", box3_net, box3_rule, (7, 0), ((6, 9), (0, 3))),
]


@pytest.mark.parametrize(
    "prim, net, rule, index, box", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES]
)
def test_one_registration_teaches_both_modes(registry, prim, net, rule, index, box):
    name = f"jaxrf_test_{prim}"
    jaxrf.register_rule(name, rule)
    rf = jaxrf.receptive_field(net, X)
    assert rf.output_shape == (8, 8)
    assert rf.region(index, clip=True) == box
    got = jaxrf.actual_receptive_field(net, X, index, mode="structural")
    assert got.box == box


def test_unregistered_custom_primitive_names_itself_in_both_modes(registry):
    with pytest.raises(TypeError, match=r"no receptive-field rule for primitive 'jaxrf_test_box3'"):
        jaxrf.receptive_field(box3_net, X)
    fresh = lambda x: box3_net(x)  # noqa: E731 -- structural programs are cached per function
    with pytest.raises(TypeError, match=r"structural mode has no rule .*'jaxrf_test_box3'"):
        jaxrf.actual_receptive_field(fresh, X, (0, 0), mode="structural")


def test_register_rule_structural_argument(registry):
    with pytest.raises(TypeError, match=r"`structural` \(='sideways'\)"):
        jaxrf.register_rule("jaxrf_test_box3", box3_rule, structural="sideways")
    jaxrf.register_rule("jaxrf_test_box3", box3_rule, structural="global")
    fresh = lambda x: box3_net(x)  # noqa: E731 -- structural programs are cached per function
    got = jaxrf.actual_receptive_field(fresh, X, (3, 3), mode="structural")
    assert got.box == ((0, 9), (0, 9))  # conservative: the whole input


def test_registry_lowering_and_index_entries_in_one_place():
    # What the lowering rewrites and which operands are indices, read from the entries.
    reg = _registry.REGISTRY
    rewritten = {n for n, e in reg.items() if callable(e.lowering)}
    assert rewritten == {"conv_general_dilated", "reduce_window_max", "max"}
    assert {n for n, e in reg.items() if e.lowering == "inline"} == {
        "jit",
        "pjit",
        "closed_call",
        "core_call",
    }
    assert list(reg["dynamic_slice"].index_operands(4)) == [1, 2, 3]
    assert list(reg["gather"].index_operands(2)) == [1]


# Containers and the parameter that holds their sub-program, as jax names them.
CONTAINERS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
}


def test_containers_listed_once_with_their_parameter():
    assert {n: _registry.REGISTRY[n].container for n in CONTAINERS} == CONTAINERS
    assert _registry.REGISTRY["cond"].container == ("branches",)
    assert _registry.REGISTRY["scan"].container == ("jaxpr",)
    assert _registry.REGISTRY["while"].container == ("cond_jaxpr", "body_jaxpr")


def test_both_modes_know_the_same_primitives():
    analytic = set(_registry.analytic_primitives())
    structural = set(jaxrf.structural_primitives())
    assert analytic - structural == set(_registry.ANALYTIC_ONLY)
    assert structural - analytic == set(_registry.STRUCTURAL_ONLY)
    # Every exception says why.
    reasons = {**_registry.ANALYTIC_ONLY, **_registry.STRUCTURAL_ONLY}
    assert all(isinstance(r, str) and len(r) > 10 for r in reasons.values())
    # The everyday vocabulary is known to both.
    everyday = """conv_general_dilated dot_general add mul max select_n reduce_window_max
    reduce_window_sum pad slice concatenate reshape transpose broadcast_in_dim reduce_sum
    reduce_max gather cumsum split jit pjit custom_jvp_call custom_vjp_call remat2""".split()
    assert set(everyday) <= analytic & structural


def test_library_code_error_names_the_user_line_analytic():
    def net(x):
        return jnp.fft.fft(conv3(x), axis=1).real

    with pytest.raises(
        TypeError,
        match=r"'fft', traced from \S*test_registry\.py:\d+:\d+ \(\S*net\), inside library code "
        r"\(the call to 'fft'\)",
    ):
        jaxrf.receptive_field(net, X)


def test_library_code_error_names_the_user_line_structural():
    def net(x):
        return jnp.fft.fft(conv3(x), axis=1).real

    with pytest.raises(
        TypeError,
        match=r"no rule for primitive 'fft' \(traced from \S*test_registry\.py:\d+:\d+ \(\S*net\), "
        r"inside library code \(the call to 'fft'\)",
    ):
        jaxrf.actual_receptive_field(net, X, (0, 0), mode="structural")


def test_pretraced_program():
    closed = jax.make_jaxpr(conv3)(X)
    rf = jaxrf.receptive_field(closed)
    assert (rf.size, rf.output_shape) == ((3, 3), (8, 8))
    with pytest.raises(ValueError, match=r"`x` has shape \(1, 5, 5, 1\) but the traced program"):
        jaxrf.receptive_field(closed, np.zeros((1, 5, 5, 1)))


def test_layer_records_locate_their_equation():
    # The record's source is (path, output index); the path alternates equation index and
    # sub-program index: (0, 0, k) is equation k of sub-program 0 of top-level equation 0.
    def net(x):
        return jax.jit(conv3)(x) + 1.0

    closed = jax.make_jaxpr(net)(X)
    rf = jaxrf.receptive_field(closed)
    (rec,) = rf.layers
    path, out = rec.source
    assert (len(path), path[:2], out) == (3, (0, 0), 0)
    call = closed.jaxpr.eqns[path[0]]
    assert call.primitive.name == "jit"
    assert call.params["jaxpr"].jaxpr.eqns[path[2]].primitive.name == "conv_general_dilated"


def test_tap_inside_a_jit_follows_the_record_source():
    # A layer inside a jit body is tapped through the walker: the same values as the cut.
    from jaxrf._tap import intermediate

    def net(x):
        return jax.jit(conv3)(x) + 1.0

    x = jnp.arange(100, dtype=jnp.float32).reshape(1, 10, 10, 1)
    (name,) = [r.name for r in jaxrf.receptive_field(net, x).layers]
    (got,) = intermediate(net, x, [name])(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(conv3(x)))


def conv3_same(x):
    w = jnp.ones((3, 3, 1, 1), x.dtype)
    dn = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)


def test_container_rule_walks_its_sub_program(registry):
    # The container-rule interface: a rule for `cond` with a constant index walks the chosen
    # branch with ctx.walk and returns its Result (outputs and the records made inside).
    def cond_rule(ctx, eqn, inputs):
        index, *operands = inputs
        k = int(index.value)
        return ctx.walk(eqn.params["branches"][k], operands, sub_index=k)

    registry["cond"] = _registry.Entry(cond_rule, "cond", container=("branches",))

    def net(x):
        return jax.lax.switch(jnp.int32(1), [lambda y: 2.0 * y, conv3_same], x)

    closed = jax.make_jaxpr(net)(X)
    rf = jaxrf.receptive_field(closed)
    assert (rf.size, rf.padding, rf.output_shape) == ((3, 3), (1, 1), (10, 10))
    (rec,) = rf.layers
    path, out = rec.source
    cond = closed.jaxpr.eqns[path[0]]
    assert (cond.primitive.name, path[1], out) == ("cond", 1, 0)
    branch = cond.params["branches"][1].jaxpr
    assert branch.eqns[path[2]].primitive.name == "conv_general_dilated"
