"""The per-axis algebra (jaxrf._axis): hand-derived cases and property tests.

Expected values are derived by hand in the comments (Distill eqs. (1)-(2) and Dang Ha The Hien's
forward recurrence), never by running the code under test. The property tests compare with a
literal enumeration written here (:func:`_spread_reads`), not with jaxrf's own ``Window``
methods.
"""

from fractions import Fraction

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from jaxrf._axis import (
    Window,
    compose_window,
    forward_form,
    padding_closed_form,
    padding_recurrence,
    same_padding,
    size_closed_form,
    size_recurrence,
    stride_closed_form,
    window_relation,
)

# -- one layer -----------------------------------------------------------------------------


def _spread_reads(w: Window, n: int) -> list[set[int]]:
    """Which input features each output reads, written out from the textbook definition.

    Build the layer's input row as a list: the ``n`` features with ``D - 1`` holes (``None``)
    between neighbours, ``p`` padding cells before and ``q`` after (negative: crop). Slide the
    kernel's ``k`` taps, ``d`` cells apart, by ``s`` cells while the last tap stays in the row.
    """
    D, (p, q) = w.input_dilation, w.padding
    row = []
    for j in range(n):
        row += [None] * (D - 1 if j else 0) + [j]
    row = [None] * max(p, 0) + row + [None] * max(q, 0)
    row = row[max(-p, 0) : len(row) - max(-q, 0)]
    reads = []
    while w.stride * len(reads) + w.dilation * (w.kernel - 1) < len(row):
        start = w.stride * len(reads)
        reads.append({row[start + w.dilation * t] for t in range(w.kernel)} - {None})
    return reads


# (window, input size, output size, derivation)
OUTPUT_SIZE_CASES = [
    (Window(3), 5, 3, "5 - 3 + 1"),
    (Window(3, 2, (1, 1)), 5, 3, "floor((5 + 2 - 3) / 2) + 1 = 3 (Dang Ha The Hien, Fig. 1)"),
    (Window(11, 4), 224, 54, "floor(213 / 4) + 1"),
    (Window(3, 1, (2, 2), dilation=2), 10, 10, "span 5, 10 + 4 - 5 + 1"),
    (Window(2, 1, (1, 1), input_dilation=2), 4, 8, "spread 7, 7 + 2 - 2 + 1"),
    (Window(1, 1, (-1, -2)), 10, 7, "crop 1 before, 2 after"),
    (Window(5), 3, 0, "kernel larger than the input"),
]


@pytest.mark.parametrize(
    "window,n,expected,why", OUTPUT_SIZE_CASES, ids=[c[3] for c in OUTPUT_SIZE_CASES]
)
def test_output_size(window, n, expected, why):
    assert window.output_size(n) == expected


# (n, k, s, d) -> SAME padding, derived from total = max((ceil(n/s)-1)s + k' - n, 0)
SAME_CASES = [
    (224, 3, 1, 1, (1, 1)),  # total 2
    (224, 3, 2, 1, (0, 1)),  # ceil 112; 111*2 + 3 - 224 = 1
    (225, 3, 2, 1, (1, 1)),  # ceil 113; 112*2 + 3 - 225 = 2
    (224, 7, 2, 1, (2, 3)),  # 111*2 + 7 - 224 = 5
    (9, 3, 2, 1, (1, 1)),  # ceil 5; 8 + 3 - 9 = 2
    (8, 3, 2, 1, (0, 1)),  # ceil 4; 6 + 3 - 8 = 1
    (10, 3, 1, 2, (2, 2)),  # span 5, total 4
    (5, 1, 4, 1, (0, 0)),  # ceil 2; 4 + 1 - 5 = 0
]


@pytest.mark.parametrize("n,k,s,d,expected", SAME_CASES)
def test_same_padding_matches_hand_derivation(n, k, s, d, expected):
    assert same_padding(n, k, s, d) == expected


@pytest.mark.parametrize("n,k,s,d,expected", SAME_CASES)
def test_same_padding_matches_jax_lax(n, k, s, d, expected):
    # jax.lax's own resolution of "SAME" (the behaviour we promise to reproduce).
    span = d * (k - 1) + 1
    assert tuple(jax.lax.padtype_to_pads((n,), (span,), (s,), "SAME")[0]) == expected
    # ... and the output of a real SAME convolution has the size our padding implies.
    x = jnp.zeros((1, n, 1))
    w = jnp.zeros((k, 1, 1))
    y = jax.lax.conv_general_dilated(
        x, w, (s,), "SAME", rhs_dilation=(d,), dimension_numbers=("NWC", "WIO", "NWC")
    )
    assert y.shape[1] == Window(k, s, expected, d).output_size(n)


def test_same_lower_puts_the_odd_pixel_first():
    assert same_padding(224, 3, 2, lower=True) == (1, 0)


def test_window_relation_hand_cases():
    # 11x11 stride-4 VALID on 224: the last output (53) reads 212..222; pixel 223 never read.
    rel = window_relation(Window(11, 4), 224)
    assert rel.shape == (54, 224)
    assert np.flatnonzero(rel[53]).tolist() == list(range(212, 223))
    assert not rel[:, 223].any()
    # Dilated 3-tap kernel, dilation 2, pad 2: output 0 reads -2, 0, 2 -> {0, 2}.
    rel = window_relation(Window(3, 1, (2, 2), dilation=2), 6)
    assert np.flatnonzero(rel[0]).tolist() == [0, 2]
    assert np.flatnonzero(rel[3]).tolist() == [1, 3, 5]
    # Transposed conv (input dilation 2, kernel 3, pad 1): spread input has real features at
    # even positions; output i reads spread positions i-1, i, i+1.
    rel = window_relation(Window(3, 1, (1, 1), input_dilation=2), 3)
    assert [np.flatnonzero(r).tolist() for r in rel] == [[0], [0, 1], [1], [1, 2], [2]]


# -- chains: three forms agree --------------------------------------------------------------

# Hand-derived chain values (Distill closed forms written out in the comment).
CHAIN_CASES = [
    # two 3x3 stride-1: r = 1 + 2 + 2 = 5
    ([Window(3), Window(3)], 5, 1, 0),
    # Dang Ha The Hien, Fig. 1: two 3x3 s2 p1 convs: r = 1 + 2 + 2*2 = 7, S = 4, P = 1 + 2 = 3
    ([Window(3, 2, (1, 1)), Window(3, 2, (1, 1))], 7, 4, 3),
    # google-research network 5, axis H: [3] s2 then [3] s2: 1 + 2 + 2*2 = 7, S 4
    ([Window(3, 2), Window(3, 2)], 7, 4, 0),
    # ... axis W: [5] s2 then [1] s2: 1 + 4 + 0 = 5
    ([Window(5, 2), Window(1, 2)], 5, 4, 0),
    # dilation: k 3, d 2, pad 2: r = 5, P = 2, centre offset (5-1)/2 - 2 = 0
    ([Window(3, 1, (2, 2), dilation=2)], 5, 1, 2),
    # transposed conv: k 2, D 2, pad 1: stride 1/2, r = 1 + 1/2, P = 1/2
    ([Window(2, 1, (1, 1), input_dilation=2)], Fraction(3, 2), Fraction(1, 2), Fraction(1, 2)),
]


@pytest.mark.parametrize("chain,size,stride,padding", CHAIN_CASES)
def test_chain_hand_values(chain, size, stride, padding):
    assert size_recurrence(chain) == size
    assert size_closed_form(chain) == size
    assert stride_closed_form(chain) == stride
    assert padding_closed_form(chain) == padding
    assert padding_recurrence(chain) == padding


def test_forward_form_seed_000_example():
    # Dang Ha The Hien: 5x5 input, conv k3 s2 p1 twice: n 3 then 2; j 2 then 4; r 3 then 7;
    # start 0.5 then 0.5 + (1 - 1) * 1 = 0.5, then 0.5 + (1 - 1) * 2 = 0.5.
    state = forward_form([Window(3, 2, (1, 1))] * 2, 5)
    assert (state.n, state.jump, state.size, state.start) == (2, 4, 7, Fraction(1, 2))


windows = st.builds(
    lambda k, s, p, q, d, D: Window(k, s, (p, q), d, D),
    k=st.integers(1, 7),
    s=st.integers(1, 4),
    p=st.integers(-2, 4),
    q=st.integers(-2, 4),
    d=st.integers(1, 3),
    D=st.sampled_from([1, 1, 1, 2, 3]),
)


@settings(max_examples=300, deadline=None)
@given(chain=st.lists(windows, min_size=1, max_size=8), n=st.integers(1, 200))
def test_three_forms_agree(chain, n):
    """Recurrence from the output == closed form == forward (n, jump, size, start) form."""
    r = size_recurrence(chain)
    assert r == size_closed_form(chain)
    S, P = stride_closed_form(chain), padding_closed_form(chain)
    assert P == padding_recurrence(chain)
    fwd = forward_form(chain, n)
    assert fwd.size == r
    assert fwd.jump == S
    # the post's start is the 1-based centre of output 0: (r - 1)/2 - P in 0-based terms, + 1/2
    assert fwd.start == Fraction(r - 1, 1) / 2 - P + Fraction(1, 2)
    m = n
    for w in chain:
        m = len(_spread_reads(w, m))
    assert fwd.n == m


@settings(max_examples=200, deadline=None)
@given(w=windows, n=st.integers(1, 40), rows=st.integers(1, 40))
def test_compose_window_equals_set_union(w, n, rows):
    """compose_window == the union of what each read feature depends on (explicit sets)."""
    rng = np.random.default_rng(n * 1000 + rows)
    dep = rng.random((n, rows)) < 0.2
    out = compose_window(w, dep)
    reads = _spread_reads(w, n)
    assert out.shape == (len(reads), rows)
    for i, features in enumerate(reads):
        expected = set()
        for j in features:
            expected |= set(np.flatnonzero(dep[j]).tolist())
        assert set(np.flatnonzero(out[i]).tolist()) == expected


@settings(max_examples=200, deadline=None)
@given(w=windows, n=st.integers(1, 40))
def test_window_relation_and_reads_equal_the_enumeration(w, n):
    reads = _spread_reads(w, n)
    assert w.output_size(n) == len(reads)
    rel = window_relation(w, n)
    assert [set(np.flatnonzero(r).tolist()) for r in rel] == reads
    assert [set(w.reads(i, n)) for i in range(len(reads))] == reads
