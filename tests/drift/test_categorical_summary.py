import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prodlens.sketches.categorical import OTHER, CategoricalSummary, canonical_category

streams = st.lists(st.sampled_from([f"c{i}" for i in range(30)] + ["x", "y", None]), max_size=400)


def summarise(*parts, capacity=1000):
    s = CategoricalSummary(capacity)
    for p in parts:
        s.update_many(p)
    return s


def check_bounds(s: CategoricalSummary, values):
    truth = Counter(v for v in values if v is not None)
    assert s.count == sum(truth.values())
    assert s.missing == sum(v is None for v in values)
    counters = sum(s.counters.values())
    # Misra-Gries: counter <= true <= counter + decrement, decrement <= (W - sum counters) / (capacity + 1)
    assert s.decrement * (s.capacity + 1) <= s.count - counters
    assert len(s.counters) <= s.capacity
    for cat in set(truth) | set(s.counters):
        lo, hi = s.bounds(cat)
        assert lo <= truth[cat] <= hi
        assert hi - lo <= s.decrement


def test_exact_counts_and_top_k():
    s = summarise(["a", "b", "a", None, True, 1, 1.0, 2.5, float("nan")])
    assert s.exact and s.error == 0 and s.epsilon == 0.0
    assert s.count == 7 and s.missing == 2
    assert s.counts() == {"1": 2, "a": 2, "2.5": 1, "b": 1, "true": 1}
    assert s.counts(2) == {"1": 2, "a": 2, OTHER: 3}
    assert s.top(1) == [("1", 2)]
    assert s.counts_for(["a", "zzz"]).tolist() == [2.0, 0.0, 5.0]
    assert canonical_category(False) == "false" and canonical_category(np.int64(3)) == "3"
    assert canonical_category(3.0) == "3" and canonical_category(None) is None


@given(streams, st.integers(1, 8))
@settings(max_examples=150, deadline=None)
def test_misra_gries_bound_single_stream(values, capacity):
    s = CategoricalSummary(capacity)
    for i in range(0, len(values), 37):  # batches of any size give the same guarantee
        s.update_many(values[i:i + 37])
    check_bounds(s, values)


@given(streams, streams, streams, st.integers(1, 8))
@settings(max_examples=150, deadline=None)
def test_merge_associative_commutative_within_bound(a, b, c, capacity):
    left = summarise(a, capacity=capacity).merge(summarise(b, capacity=capacity)).merge(summarise(c, capacity=capacity))
    right = summarise(c, capacity=capacity).merge(summarise(b, capacity=capacity).merge(summarise(a, capacity=capacity)))
    whole = summarise(a + b + c, capacity=capacity)
    for s in (left, right, whole):
        check_bounds(s, a + b + c)


@given(streams, streams, streams)
@settings(max_examples=100, deadline=None)
def test_exact_mode_merge_equals_whole_exactly(a, b, c):
    left = summarise(a).merge(summarise(b)).merge(summarise(c))
    right = summarise(c).merge(summarise(b).merge(summarise(a)))
    whole = summarise(a + b + c)
    assert left == right == whole
    assert whole.exact


def test_high_cardinality_keeps_heavy_hitters():
    rng = np.random.default_rng(0)
    heavy = rng.choice(["A", "B", "C"], size=30_000, p=[0.5, 0.3, 0.2])
    noise = np.array([f"u{i}" for i in range(20_000)])  # 20k distinct singletons
    values = np.concatenate([heavy, noise])
    rng.shuffle(values)
    s = CategoricalSummary(capacity=100)
    for part in np.array_split(values, 100):
        s.update_many(part)
    check_bounds(s, values.tolist())
    assert not s.exact and s.epsilon == pytest.approx(1 / 101)
    assert [c for c, _ in s.top(3)] == ["A", "B", "C"]
    assert s.decrement <= values.size / 101
    counts = s.counts(3)
    assert sum(counts.values()) == values.size and counts[OTHER] >= 20_000


def test_update_counts_and_errors():
    s = CategoricalSummary()
    s.update_counts({"a": 3, None: 2, True: 1})
    assert s.counts() == {"a": 3, "true": 1} and s.missing == 2
    with pytest.raises(ValueError, match=r"counts\['b'\]: must be >= 0"):
        s.update_counts({"b": -1})
    with pytest.raises(ValueError, match="capacity"):
        CategoricalSummary(0)
    with pytest.raises(TypeError):
        s.merge(object())


def test_roundtrip_exact():
    s = summarise([f"c{i % 50}" for i in range(1000)] + [None], capacity=10)
    d = s.to_dict()
    back = CategoricalSummary.from_dict(json.loads(json.dumps(d)))
    assert back == s and back.to_dict() == d
    bad = dict(summarise(["a", "a", "b"]).to_dict(), count=1)
    with pytest.raises(ValueError, match="counts: add up to more than count"):
        CategoricalSummary.from_dict(bad)
