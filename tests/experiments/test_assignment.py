"""Assignment: GrowthBook layout, uniformity, layer independence / exclusion, stickiness."""

import json
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from prodlens.experiments.assignment import (
    BUCKET_VERSION_EXCLUDED, HASHED, NOT_COVERED, NOT_IN_NAMESPACE, STICKY, Assigner, Experiment,
    InMemoryStickyStore, bucket_ranges, canary_experiment, choose_variant, layer_slices, validate_layers)

N_UNITS = 100_000
UNITS = [f"user-{i}" for i in range(N_UNITS)]


# ----------------------------------------------------------------------------- GrowthBook layout

@pytest.mark.parametrize("weights,coverage,expected", [
    ([0.5, 0.5], 1, [(0, 0.5), (0.5, 1)]),
    ([0.5, 0.5], 0.5, [(0, 0.25), (0.5, 0.75)]),
    ([0.5, 0.5], 0, [(0, 0), (0.5, 0.5)]),
    ([0.25] * 4, 1, [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)]),
    ([0.4, 0.6], 1, [(0, 0.4), (0.4, 1)]),
    ([0.2, 0.3, 0.5], 1, [(0, 0.2), (0.2, 0.5), (0.5, 1)]),
    ([0.2, 0.3, 0.5], 0.2, [(0, 0.04), (0.2, 0.26), (0.5, 0.6)]),
    ([0.4, 0.5999], 1, [(0, 0.4), (0.4, 0.9999)]),
])
def test_bucket_ranges_growthbook_cases(weights, coverage, expected):
    got = bucket_ranges(weights, coverage)
    assert np.allclose(got, expected, rtol=0, atol=1e-12) and len(got) == len(expected)


@pytest.mark.parametrize("weights,coverage,match", [
    ([0.4, 0.1], 1, "sum to 1"), ([0.7, 0.6], 1, "sum to 1"), ([0.5, 0.5], -0.2, "coverage"),
    ([0.5, 0.5], 1.5, "coverage"), ([1.2, -0.2], 1, ">= 0"),
])
def test_bucket_ranges_reject_what_growthbook_silently_fixes(weights, coverage, match):
    with pytest.raises(ValueError, match=match):
        bucket_ranges(weights, coverage)


@pytest.mark.parametrize("n,ranges,expected", [
    (0.2, [(0, 0.5), (0.5, 1)], 0), (0.6, [(0, 0.5), (0.5, 1)], 1), (0.5, [(0, 0.5), (0.5, 1)], 1),
    (0.3, [(0, 0.25), (0.5, 0.75)], -1), (0.5, [(0, 0.5), (0.5, 0.5), (0.5, 1)], 2),
])
def test_choose_variant_growthbook_cases(n, ranges, expected):
    assert choose_variant(n, ranges) == expected


@pytest.mark.parametrize("unit,variant", [("123", "c"), ("456", "a"), ("fds", "b")])
def test_growthbook_experiment_cases_v1(unit, variant):
    # GrowthBook spec "empty experiment rule": key "feature", variations a/b/c, hash v1
    a = Assigner([Experiment("feature", ("a", "b", "c"), hash_version=1)]).assign("feature", unit)
    assert a.variant == variant


def test_growthbook_experiment_case_v2_with_namespace():
    exp = Experiment("hello", ("v0", "v1"), (0.1, 0.9), coverage=0.99, seed="feature",
                     namespace=("pricing", 0, 1))
    a = Assigner([exp]).assign("hello", "123")
    assert (a.variant, a.hash_value) == ("v1", 0.5231)


@pytest.mark.parametrize("unit,layer,start,end,inside", [
    ("1", "namespace1", 0, 0.4, False), ("1", "namespace1", 0.4, 1, True),
    ("1", "namespace2", 0, 0.4, False), ("1", "namespace2", 0.4, 1, True),
    ("2", "namespace1", 0.4, 1, True), ("2", "namespace2", 0.4, 1, True),
    ("3", "namespace1", 0.4, 1, True), ("3", "namespace2", 0, 0.4, True),
    ("4", "namespace1", 0, 0.4, False), ("4", "namespace2", 0, 0.4, True),
])
def test_growthbook_in_namespace_cases(unit, layer, start, end, inside):
    exp = Experiment("e", ("a", "b"), namespace=(layer, start, end))
    a = Assigner([exp]).assign("e", unit)
    assert (a.reason != NOT_IN_NAMESPACE) == inside


# ----------------------------------------------------------------------------- statistical properties

def _variants(assigner, name):
    return [assigner.assign(name, u).variant_index for u in UNITS]


def test_uniform_over_100k_units():
    weights = (0.2, 0.3, 0.5)
    a = Assigner([Experiment("checkout", ("a", "b", "c"), weights)])
    counts = np.bincount(_variants(a, "checkout"), minlength=3)
    assert counts.sum() == N_UNITS
    chi2, p = stats.chisquare(counts, np.array(weights) * N_UNITS)
    assert p > 0.001, (counts, p)
    # and the chi-square test has teeth: a 1 % skew over 100k units would be caught
    assert stats.chisquare(counts + [1000, 0, -1000], np.array(weights) * N_UNITS).pvalue < 1e-6


def test_coverage_excludes_the_right_share():
    a = Assigner([Experiment("e", ("a", "b"), coverage=0.3)])
    res = [a.assign("e", u) for u in UNITS[:20000]]
    inside = sum(r.in_experiment for r in res)
    assert abs(inside / 20000 - 0.3) < 0.015
    assert all(r.reason == NOT_COVERED for r in res if not r.in_experiment)


def test_layers_are_independent():
    """Experiments in different layers: the 2-way table of their variants shows no dependence."""
    a = Assigner([Experiment("search", ("a", "b"), namespace=("ranking", 0, 1)),
                  Experiment("checkout", ("x", "y", "z"), namespace=("payments", 0, 1))])
    table = np.zeros((2, 3), dtype=int)
    for u in UNITS:
        table[a.assign("search", u).variant_index, a.assign("checkout", u).variant_index] += 1
    chi2, p, dof, _ = stats.chi2_contingency(table)
    assert p > 0.001, table
    # the same test flags a dependent assignment (same seed => identical hashes)
    b = Assigner([Experiment("s1", ("a", "b"), seed="same"), Experiment("s2", ("x", "y"), seed="same")])
    dep = np.zeros((2, 2), dtype=int)
    for u in UNITS[:5000]:
        dep[b.assign("s1", u).variant_index, b.assign("s2", u).variant_index] += 1
    assert stats.chi2_contingency(dep)[1] < 1e-6


def test_layer_slices_are_mutually_exclusive_and_balanced():
    slices = layer_slices("checkout", {"e1": 0.5, "e2": 0.5})
    a = Assigner([Experiment("e1", ("a", "b"), namespace=slices["e1"]),
                  Experiment("e2", ("a", "b"), namespace=slices["e2"])])
    both = in1 = in2 = 0
    variants_in_e1 = Counter()
    for u in UNITS[:40000]:
        x, y = a.assign("e1", u), a.assign("e2", u)
        both += x.in_experiment and y.in_experiment
        in1 += x.in_experiment
        in2 += y.in_experiment
        if x.in_experiment:
            variants_in_e1[x.variant] += 1
    assert both == 0
    assert in1 + in2 == 40000
    assert abs(in1 / 40000 - 0.5) < 0.015
    # layer membership (v1 hash) is independent of the variant hash (v2): balanced inside the slice
    assert stats.chisquare(list(variants_in_e1.values())).pvalue > 0.001


def test_overlapping_slices_are_rejected():
    with pytest.raises(ValueError, match="overlap"):
        validate_layers([Experiment("e1", ("a", "b"), namespace=("L", 0, 0.6)),
                         Experiment("e2", ("a", "b"), namespace=("L", 0.5, 1))])
    a = Assigner([Experiment("e1", ("a", "b"), namespace=("L", 0, 0.5))])
    with pytest.raises(ValueError, match="overlap"):
        a.upsert(Experiment("e2", ("a", "b"), namespace=("L", 0.4, 1)))
    assert a.names() == ["e1"]
    # inactive experiments do not hold their slice
    a.upsert(Experiment("e2", ("a", "b"), namespace=("L", 0.4, 1), active=False))


# ----------------------------------------------------------------------------- stickiness

def test_weight_change_does_not_reassign_exposed_units():
    exp = Experiment("price", ("control", "treatment"), (0.5, 0.5))
    units = UNITS[:20000]
    sticky = Assigner([exp], InMemoryStickyStore(50_000))
    plain = Assigner([exp])
    before = {u: sticky.assign("price", u).variant for u in units}
    assert before == {u: plain.assign("price", u).variant for u in units}

    new = exp.with_weights((0.2, 0.8))
    sticky.upsert(new)
    plain.upsert(new)
    after = [sticky.assign("price", u) for u in units]
    assert all(a.variant == before[a.unit_id] and a.reason == STICKY for a in after)
    # without the store about 30 % of units would have switched (hash in [0.2, 0.5))
    switched = sum(plain.assign("price", u).variant != before[u] for u in units) / len(units)
    assert 0.27 < switched < 0.33
    # new units follow the new weights
    fresh = Counter(sticky.assign("price", u).variant for u in UNITS[20000:40000])
    assert abs(fresh["treatment"] / 20000 - 0.8) < 0.015


def test_bucket_version_rerandomises_and_min_version_excludes():
    store = InMemoryStickyStore()
    exp = Experiment("e", ("a", "b"), (0.5, 0.5))
    a = Assigner([exp], store)
    for u in UNITS[:1000]:
        a.assign("e", u)
    a.upsert(Experiment("e", ("a", "b"), (0.1, 0.9), bucket_version=1))
    res = [a.assign("e", u) for u in UNITS[:1000]]
    assert all(r.reason == HASHED and r.bucket_version == 1 for r in res)
    assert sum(r.variant == "b" for r in res) > 850
    a.upsert(Experiment("e", ("a", "b"), bucket_version=2, min_bucket_version=1))
    assert {a.assign("e", u).reason for u in UNITS[:1000]} == {BUCKET_VERSION_EXCLUDED}
    assert a.assign("e", "never-seen").reason == HASHED


def test_removed_variant_falls_back_to_hash():
    a = Assigner([Experiment("e", ("a", "b", "c"))], InMemoryStickyStore())
    units = [u for u in UNITS[:300] if a.assign("e", u).variant == "c"]
    a.upsert(Experiment("e", ("a", "b")))
    assert {a.assign("e", u).variant for u in units} <= {"a", "b"}


def test_sticky_store_is_bounded_lru_and_serialisable():
    store = InMemoryStickyStore(max_units=100)
    a = Assigner([Experiment("e", ("a", "b"))], store)
    for u in UNITS[:150]:
        a.assign("e", u)
    assert len(store) == 100 and store.evictions == 50
    assert store.get(UNITS[0]) is None and store.get(UNITS[149]) is not None
    restored = InMemoryStickyStore.from_dict(json.loads(json.dumps(store.to_dict())))
    assert restored.to_dict() == store.to_dict()
    store.put("new", {"e__0": "a"})  # LRU order survives the round trip
    restored.put("new", {"e__0": "a"})
    assert restored.to_dict() == store.to_dict()


def test_canary_ramp_is_monotone():
    units = UNITS[:20000]
    previous: set[str] = set()
    for share in (0.01, 0.05, 0.2, 0.5, 1.0):
        a = Assigner([canary_experiment("rollout", "v1", "v2", share)])
        on_canary = {u for u in units if a.assign("rollout", u).variant == "v2"}
        assert previous <= on_canary
        assert abs(len(on_canary) / len(units) - share) < 0.01
        previous = on_canary
    rolled_back = Assigner([canary_experiment("rollout", "v1", "v2", 0.0)])
    assert {rolled_back.assign("rollout", u).variant for u in units[:2000]} == {"v1"}


# ----------------------------------------------------------------------------- events and errors

def test_exposure_event():
    a = Assigner([Experiment("e", ("a", "b"))]).assign("e", "u1")
    ev = a.exposure_event(1700000000.0, model="churn", segment={"country": "US"})
    assert ev["type"] == "exposure" and ev["experiment"] == "e" and ev["variant"] == a.variant
    assert ev["unit_id"] == "u1" and ev["model"] == "churn" and ev["segment"] == {"country": "US"}
    assert ev == a.exposure_event(1700000000.0, model="churn", segment={"country": "US"})  # deterministic id
    other = Assigner([Experiment("e", ("a", "b"))]).assign("e", "u2").exposure_event(1.0)
    assert other["event_id"] != ev["event_id"] and len(ev["event_id"]) <= 128
    out = Assigner([Experiment("e", ("a", "b"), coverage=0.0)]).assign("e", "u1")
    with pytest.raises(ValueError, match="not in experiment"):
        out.exposure_event(1.0)


def test_unknown_inactive_and_empty():
    a = Assigner([Experiment("e", ("a", "b"), active=False)])
    assert a.assign("nope", "u").reason == "unknown_experiment"
    assert a.assign("e", "u").reason == "inactive"
    a.upsert(Experiment("e", ("a", "b")))
    assert a.assign("e", "").reason == "empty_unit"
    assert [x.experiment for x in a.assign_all("u")] == ["e"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(variants=("a", "a")), "unique"), (dict(variants=()), "non-empty"),
    (dict(weights=(0.5,)), "expected 2 values"), (dict(weights=(0.9, 0.9)), "sum to 1"),
    (dict(coverage=2.0), "coverage"), (dict(hash_version=3), "hash_version"),
    (dict(namespace=("L", 0.6, 0.2)), "namespace range"), (dict(min_bucket_version=2), "min_bucket_version"),
])
def test_config_errors_name_the_field(kwargs, match):
    base = dict(name="e", variants=("a", "b"))
    with pytest.raises(ValueError, match=match):
        Experiment(**{**base, **kwargs})


def test_experiment_round_trip_and_duplicate_names():
    exp = Experiment("e", ("a", "b"), (0.3, 0.7), 0.5, "s", ("L", 0.1, 0.4), 2, 3, 1, False)
    assert Experiment.from_dict(json.loads(json.dumps(exp.to_dict()))) == exp
    with pytest.raises(ValueError, match="unique"):
        Assigner([exp, exp])
    with pytest.raises(ValueError, match="code_units"):
        Assigner([exp], code_units="utf8")


def test_codepoint_mode_matches_growthbook_python_for_non_bmp_units():
    exp = Experiment("e", ("a", "b", "c", "d"))
    js, py = Assigner([exp]), Assigner([exp], code_units="codepoint")
    units = [f"user-\U0001F600-{i}" for i in range(400)]
    differs = sum(js.assign("e", u).hash_value != py.assign("e", u).hash_value for u in units)
    assert differs > 350  # different hash inputs, so (almost) always different hashes
    assert all(js.assign("e", u).variant == py.assign("e", u).variant for u in UNITS[:200])
