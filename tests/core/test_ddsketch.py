import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prodlens.sketches.ddsketch import DDSketch

values = st.lists(st.floats(min_value=0.01, max_value=1e6, allow_nan=False), min_size=1, max_size=300)


def _true_quantile(data, q):
    # DDSketch's rank convention: the value at rank floor-ish q*(n-1) ("lower" interpolation).
    return float(np.quantile(np.asarray(data), q, method="lower"))


@given(values, st.floats(min_value=0, max_value=1))
@settings(max_examples=200, deadline=None)
def test_relative_error_bound(data, q):
    sketch = DDSketch(alpha=0.01)
    sketch.update_many(data)
    exact = _true_quantile(data, q)
    assert abs(sketch.quantile(q) - exact) <= 0.01 * exact + 1e-12


@given(values, values, values)
@settings(max_examples=100, deadline=None)
def test_merge_is_exact_associative_commutative(a, b, c):
    def sk(*parts):
        s = DDSketch()
        for p in parts:
            s.update_many(p)
        return s
    left = sk(a).merge(sk(b)).merge(sk(c))
    right = sk(c).merge(sk(b).merge(sk(a)))
    whole = sk(a + b + c)
    assert np.array_equal(left.counts, whole.counts) and np.array_equal(right.counts, whole.counts)
    assert left.count == whole.count and left.min == whole.min and left.max == whole.max
    for q in (0, 0.25, 0.5, 0.9, 0.99, 1):
        assert left.quantile(q) == whole.quantile(q) == right.quantile(q)


def test_roundtrip_and_zero_and_nan():
    s = DDSketch()
    s.update_many([0.0, 0.0, 5.0, float("nan"), 7.0])
    assert s.count == 4 and s.zero_count == 2
    assert s.quantile(0) == 0.0
    assert DDSketch.from_dict(s.to_dict()) == s
    assert np.isnan(DDSketch().quantile(0.5))


def test_memory_is_fixed():
    s = DDSketch()
    before = s.counts.nbytes
    s.update_many(np.random.default_rng(0).lognormal(3, 2, 200_000))
    assert s.counts.nbytes == before < 16_384
