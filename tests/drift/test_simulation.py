"""Pure simulation of the end-to-end drift requirement over compare() + Benjamini-Hochberg:

* one feature's mean shifts in one segment -> flagged for that feature and segment only,
  within two windows of the shift;
* 200 stationary windows -> the share of windows raising any warning or alert is at or
  under the configured level (alpha).

Events are produced in the decoded-contract shape and summarised with WindowSummary, the
reference is built from a Parquet training file with build_reference, all with defaults.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prodlens.drift import DriftConfig, compare, flagged
from prodlens.reference import build_reference, segment_key
from prodlens.sketches.summary import SummarySpec, WindowSummary

SEGMENTS = {"US": 0.68, "DE": 0.25, "IS": 0.07}   # IS is rare: ~70 of 1000 events per window
EVENTS_PER_WINDOW = 1600
MODEL = {"name": "churn", "segments": ["country"],
         "features": {"tenure": "numeric", "spend": "numeric", "visits": "numeric", "age": "numeric",
                      "ratio": "numeric", "plan": "categorical"},
         "output": {"score": "numeric"}}


def draw(rng, n, country, shift=None):
    """Feature columns for n events of one country; shift = (feature, start index, sd)."""
    base = {"US": 0.0, "DE": 0.5, "IS": -0.5}[country]
    cols = {"tenure": rng.normal(24 + 4 * base, 6, n),
            "spend": rng.lognormal(3 + 0.2 * base, 0.8, n),
            "visits": rng.poisson(5 + base, n).astype(float),
            "age": rng.uniform(18, 80, n),
            "ratio": rng.beta(2, 5, n)}
    plan = rng.choice(["basic", "pro", "team", "edu"], n, p=[0.5, 0.3, 0.15, 0.05])
    score = rng.beta(2, 5, n)
    if shift is not None:
        feature, start, sd = shift
        cols[feature][start:] += sd * 6.0  # tenure sd is 6: a 1 sd mean shift
    return cols, plan, score


def write_training(path, rng, rows=40_000):
    countries = rng.choice(list(SEGMENTS), rows, p=list(SEGMENTS.values()))
    table = {"country": countries}
    parts = {c: draw(rng, int((countries == c).sum()), c) for c in SEGMENTS}
    for name in ("tenure", "spend", "visits", "age", "ratio"):
        col = np.empty(rows)
        for c, (cols, _, _) in parts.items():
            col[countries == c] = cols[name]
        table[name] = col
    plan = np.empty(rows, dtype=object)
    score = np.empty(rows)
    for c, (_, p, s) in parts.items():
        plan[countries == c] = p
        score[countries == c] = s
    table["plan"] = plan.tolist()
    table["output.score"] = score
    pq.write_table(pa.table(table), path)


def make_window(rng, t, shift=None):
    """One closed window; shift = (country, feature, first window): events of that country from
    the middle of that window on are shifted."""
    countries = rng.choice(list(SEGMENTS), EVENTS_PER_WINDOW, p=list(SEGMENTS.values()))
    order = np.argsort(countries, kind="stable")
    countries = countries[order]
    feats: dict[str, list] = {k: [] for k in ("tenure", "spend", "visits", "age", "ratio", "plan")}
    scores = []
    for c in sorted(SEGMENTS):  # the order of the sorted countries
        n = int((countries == c).sum())
        s = None
        if shift and shift[0] == c and t >= shift[2]:
            s = (shift[1], n // 2 if t == shift[2] else 0, 1.0)
        cols, plan, score = draw(rng, n, c, s)
        for k, v in cols.items():
            feats[k].extend(v.tolist())
        feats["plan"].extend(plan.tolist())
        scores.extend(score.tolist())
    w = WindowSummary("churn", "v7", 60.0 * t, 60.0 * (t + 1), SummarySpec.from_model_config(MODEL))
    keys = [segment_key({"country": c}) for c in countries]
    w.update_columns({"event_id": [f"e{t}-{i}" for i in range(len(keys))],
                      "features": feats, "output": {"score": scores}}, keys)
    return w


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "train.parquet"
    write_training(path, np.random.default_rng(2024))
    return build_reference(path, MODEL)


def test_shift_in_one_segment_is_flagged_there_only_within_two_windows(reference):
    rng = np.random.default_rng(7)
    config = DriftConfig()
    first = 4
    seen = []
    for t in range(first + 2):
        results = compare(make_window(rng, t, shift=("DE", "tenure", first)), reference, config)
        seen.append([(r.segment, r.field, r.verdict) for r in flagged(results)])
    assert all(not flags for flags in seen[:first])  # nothing before the shift
    after = seen[first] + seen[first + 1]
    assert after, "the shift was not flagged within two windows"
    assert {(s, f) for s, f, _ in after} == {("country=DE", "features.tenure")}
    assert ("country=DE", "features.tenure", "alert") in seen[first + 1]


def test_stationary_windows_false_alarm_rate_at_most_alpha(reference):
    rng = np.random.default_rng(8)
    config = DriftConfig()
    windows_flagged = 0
    verdicts = set()
    for t in range(200):
        results = compare(make_window(rng, t), reference, config)
        assert len(results) == 3 * 7
        verdicts |= {r.verdict for r in results}
        windows_flagged += bool(flagged(results))
    assert windows_flagged / 200 <= config.alpha
    assert verdicts <= {"ok", "insufficient_data"}
