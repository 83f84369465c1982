import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prodlens.sketches.sampling import PrioritySampler, StratifiedReservoir, allocate


def feed(sampler, n_per_stratum, batch=250, seed=0):
    rng = np.random.default_rng(seed)
    events = [(f"{s}-{i}", s) for s, n in n_per_stratum.items() for i in range(n)]
    order = rng.permutation(len(events))
    events = [events[i] for i in order]
    for i in range(0, len(events), batch):
        chunk = events[i:i + batch]
        sampler.update_many([e[0] for e in chunk], [e[1] for e in chunk])
    return events


@given(st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 5000), min_size=1),
       st.integers(1, 500), st.integers(0, 60))
@settings(max_examples=200, deadline=None)
def test_allocation_respects_cap_quota_and_counts(seen, capacity, quota):
    alloc = allocate(seen, capacity, quota)
    assert sum(alloc.values()) <= capacity
    assert sum(alloc.values()) == min(capacity, sum(seen.values()))
    share = min(quota, capacity // len(seen))
    for s, n in seen.items():
        assert 0 <= alloc[s] <= n
        assert alloc[s] >= min(n, share)


def test_rare_strata_get_their_quota_and_rates_are_exposed():
    r = StratifiedReservoir(capacity=200, min_per_stratum=20, seed=1)
    feed(r, {("churn", "v7", "US"): 50_000, ("churn", "v7", "DE"): 8_000, ("churn", "v7", "IS"): 35})
    rates = r.rates()
    assert len(r) == 200
    assert rates[("churn", "v7", "IS")] == {"seen": 35, "sampled": 20, "inclusion_probability": rates[("churn", "v7", "IS")]["inclusion_probability"]}
    assert rates[("churn", "v7", "US")]["sampled"] > rates[("churn", "v7", "DE")]["sampled"] > 20
    for s, info in rates.items():
        assert 0 < info["inclusion_probability"] <= 1
        # the HT weight re-weights the sample to the traffic: sampled / p ~ seen
        assert info["sampled"] / info["inclusion_probability"] == pytest.approx(info["seen"], rel=0.5)
    assert r.weight(("churn", "v7", "IS")) == 1 / r.inclusion_probability(("churn", "v7", "IS"))


def test_each_stratum_sample_is_uniform():
    # every event of a stratum is equally likely to be kept: over many seeds the counts are flat
    hits = Counter()
    runs = 300
    for seed in range(runs):
        r = StratifiedReservoir(capacity=30, min_per_stratum=5, seed=seed)
        feed(r, {"big": 200, "small": 40}, batch=37, seed=seed)
        hits.update(r.samples("small"))
    freq = np.array([hits[f"small-{i}"] for i in range(40)]) / runs
    expected = np.mean(freq)
    assert np.all(np.abs(freq - expected) < 0.15)  # binomial sd ~0.03 per event
    # Horvitz-Thompson estimates of the stratum size are unbiased
    est = []
    for seed in range(runs):
        r = StratifiedReservoir(capacity=30, min_per_stratum=5, seed=seed)
        feed(r, {"big": 200, "small": 40}, seed=seed)
        est.append(len(r.samples("big")) / r.inclusion_probability("big"))
    assert np.mean(est) == pytest.approx(200, rel=0.05)


def test_deterministic_given_seed_and_roundtrip_continues():
    a, b = StratifiedReservoir(100, 10, seed=7), StratifiedReservoir(100, 10, seed=7)
    feed(a, {"x": 3000, ("t", 1): 50})
    feed(b, {"x": 3000, ("t", 1): 50})
    assert a.to_dict() == b.to_dict()
    state = json.loads(json.dumps(a.to_dict()))
    c = StratifiedReservoir.from_dict(state)
    assert c.to_dict() == a.to_dict()
    feed(a, {"x": 500, "y": 500}, seed=3)
    feed(c, {"x": 500, "y": 500}, seed=3)
    assert a.to_dict() == c.to_dict()
    assert StratifiedReservoir(100, 10, seed=8).to_dict() != StratifiedReservoir(100, 10, seed=7).to_dict()


def test_merge_of_workers_is_a_valid_sample():
    w1, w2 = StratifiedReservoir(100, 10, seed=1), StratifiedReservoir(100, 10, seed=2)
    feed(w1, {"US": 4000, "IS": 12}, seed=1)
    feed(w2, {"US": 3000, "DE": 1000}, seed=2)
    merged = w1.merge(w2)
    rates = merged.rates()
    assert {s: v["seen"] for s, v in rates.items()} == {"US": 7000, "IS": 12, "DE": 1000}
    assert len(merged) == 100 and rates["IS"]["sampled"] == 10
    for s in rates:
        tau = merged.inclusion_probability(s)
        assert all(k < tau for k, _ in merged.strata[s].entries)
    with pytest.raises(ValueError, match="strata: has 1 values, items has 2"):
        merged.update_many([1, 2], ["a"])


def test_priority_sampling_keeps_heavy_events_and_is_unbiased():
    rng = np.random.default_rng(0)
    weights = rng.pareto(1.5, 2000) + 0.01
    weights[:5] = 1e4  # "interesting" events
    values = rng.normal(10, 3, 2000)
    total_w, total_v = weights.sum(), values.sum()
    est_w, est_v = [], []
    for seed in range(200):
        ps = PrioritySampler(k=100, seed=seed)
        for i in range(0, 2000, 250):
            ps.update_many(list(range(i, i + 250)), weights[i:i + 250])
        sample = ps.sample()
        assert {item for item, _, _ in sample} >= set(range(5))
        assert all(p == 1.0 for item, _, p in sample if item < 5)
        est_w.append(ps.estimate_sum())
        est_v.append(ps.estimate_sum([values[item] for item, _, _ in sample]))
    assert np.mean(est_w) == pytest.approx(total_w, rel=0.02)
    assert np.mean(est_v) == pytest.approx(total_v, rel=0.05)


def test_priority_small_streams_are_exact_and_invalid_weights_skipped():
    ps = PrioritySampler(k=10, seed=0)
    ps.update_many(["a", "b", "c", "d"], [1.0, 2.0, 0.0, float("nan")])
    assert ps.tau == 0.0 and ps.skipped == 2 and ps.seen == 2
    assert ps.estimate_sum() == 3.0
    assert sorted(i for i, _, _ in ps.sample()) == ["a", "b"]
    with pytest.raises(ValueError, match="weights: has 1 values, items has 2"):
        ps.update_many(["x", "y"], [1.0])


def test_priority_merge_and_roundtrip():
    rng = np.random.default_rng(1)
    w = rng.exponential(1.0, 1000)
    a, b = PrioritySampler(50, seed=1), PrioritySampler(50, seed=2)
    a.update_many(list(range(500)), w[:500])
    b.update_many(list(range(500, 1000)), w[500:])
    merged = PrioritySampler.from_dict(json.loads(json.dumps(a.to_dict()))).merge(b)
    assert len(merged) == 50 and merged.seen == 1000
    priorities = sorted([p for p, *_ in a._heap] + [p for p, *_ in b._heap], reverse=True)
    kept = sorted((p for p, *_ in merged._heap), reverse=True)
    assert kept == priorities[:50]
    assert merged.tau == max(a.tau, b.tau, priorities[50])
    back = PrioritySampler.from_dict(merged.to_dict())
    assert back.to_dict() == merged.to_dict()
    merged.update_many(["x"], [5.0])
    back.update_many(["x"], [5.0])
    assert back.to_dict() == merged.to_dict()
