"""Snapshot at offset k, restore in a new JoinProcessor, replay from replay_from: the same state
and the same partial emissions as an uninterrupted run."""

import numpy as np
import orjson
import pytest

from prodlens.joins import JoinProcessor
from stages.test_join import DAY, TOPIC, config, fb_record, pred_record, unit_record

INVARIANTS = {"churn": [{"name": "shadow_agrees", "kind": "agreement", "reference": {"role": "primary"},
                         "candidate": {"role": "shadow"}, "min_agreement": 0.9, "pair_timeout": "30s"}]}
EXPERIMENTS = {"ab": {"button": {"variants": ["a", "b"], "metrics": [{"name": "conversion", "aggregation": "any"},
                                                                    "revenue"]}}}


def cfg():
    return config(invariants=INVARIANTS, experiments=EXPERIMENTS,
                  quality={"window": "60s", "horizon": "7d", "grace": "10m", "max_early": 50})


def scenario(seed=7):
    """Messages: predictions (primary + shadow, 3 segments, several windows), early feedback,
    exposures, outcomes, duplicates, and labels arriving three days later in event time."""
    rng = np.random.default_rng(seed)
    msgs = []
    t0 = 10_000.0
    # a shadow first, so the model's primaries are buffered for pairing
    msgs.append(pred_record([{"prediction_id": "s0", "timestamp": t0, "model": "churn", "version": "v2",
                              "role": "shadow", "label": "stay", "score": 0.2, "latency_ms": 30.0}]))
    msgs.append(fb_record([{"prediction_id": f"q{i}", "timestamp": t0 + 100, "kind": "label", "value": "churn"}
                           for i in range(3)]))  # early: their predictions come next
    for b in range(8):
        rows = []
        for i in range(25):
            k = b * 25 + i
            t = t0 + 30.0 * b + i
            score = float(rng.random())
            seg = ["country=US", "country=DE", "__other__"][k % 3]
            rows.append({"prediction_id": f"q{k}", "timestamp": t, "model": "churn", "version": "v1",
                         "role": "primary", "segment": seg, "score": score, "latency_ms": float(rng.gamma(2, 5)),
                         "experiment": "button", "variant": "ab"[k % 2], "unit_id": f"u{k}"})
            if k % 4 == 0:
                rows.append({"prediction_id": f"q{k}", "timestamp": t + 0.2, "model": "churn", "version": "v2",
                             "role": "shadow", "segment": seg, "score": float(np.clip(score + rng.normal(0, .2), 0, 1)),
                             "latency_ms": float(rng.gamma(2, 8))})
            rows.append({"prediction_id": f"r{k}", "timestamp": t, "model": "eta", "version": "v3",
                         "value": float(rng.normal(30, 5))})
        msgs.append(pred_record(rows))
        if b == 3:
            msgs.append(pred_record(rows[:5]))  # a re-delivered batch
        msgs.append(unit_record("exposure", [{"unit_id": r["unit_id"], "timestamp": r["timestamp"],
                                              "experiment": "button", "variant": r["variant"]}
                                             for r in rows if r.get("unit_id")]))
        msgs.append(unit_record("outcome", [{"unit_id": f"u{b * 25 + i}", "timestamp": t0 + 30.0 * b + 40,
                                             "metric": "revenue" if i % 2 else "conversion",
                                             "value": float(rng.integers(0, 3))} for i in range(0, 25, 3)]))
        msgs.append(fb_record([{"prediction_id": f"q{b * 25 + i}", "timestamp": t0 + 30.0 * b + 50,
                                "kind": "complaint"} for i in range(0, 25, 5)]))
    # three days later: more predictions move event time on, then the labels of the first hour
    msgs.append(pred_record([{"prediction_id": "late0", "timestamp": t0 + 3 * DAY, "model": "churn",
                              "version": "v1", "score": 0.9}]))
    labels = [{"prediction_id": f"q{k}", "timestamp": t0 + 3 * DAY + k, "kind": "label",
               "value": "churn" if rng.random() < 0.4 else "stay"} for k in map(int, rng.permutation(200)[:150])]
    labels += [{"prediction_id": f"r{k}", "timestamp": t0 + 3 * DAY + k, "kind": "label",
                "value": float(rng.normal(30, 5))} for k in range(0, 200, 2)]
    for i in range(0, len(labels), 60):
        msgs.append(fb_record(labels[i:i + 60]))
    msgs.append(fb_record([{"prediction_id": "ghost", "timestamp": t0, "kind": "label", "value": "stay"}]))
    msgs.append(pred_record([{"prediction_id": "late1", "timestamp": t0 + 9 * DAY, "model": "churn",
                              "version": "v1", "score": 0.1}]))
    return msgs


def run(msgs, start=0, proc=None, stop=None, ticks_from=0):
    """Process msgs[start:stop] at their offsets, ticking after every second message and the last; returns
    (processor, emitted messages)."""
    p = proc or JoinProcessor(cfg(), TOPIC, 5)
    emitted = []
    for offset in range(start, len(msgs) if stop is None else stop):
        p.process(msgs[offset], offset, now=float(offset))
        if offset % 2 == 1 or offset == len(msgs) - 1:
            emitted.extend(p.tick(float(offset)).messages)
    return p, emitted


def canon(x):
    if isinstance(x, list):  # emitted (topic, key, record) tuples
        x = [[t, k.decode(), r] for t, k, r in x]
    return orjson.loads(orjson.dumps(x))


MSGS = scenario()
FULL_PROC, FULL_EMITTED = run(MSGS)


def test_scenario_exercises_every_partial_and_late_labels():
    types = {m[2]["type"] for m in FULL_EMITTED}
    assert types == {"quality_partial", "shadow_partial", "experiment_partial", "invariant_window"}
    p = FULL_PROC
    assert p.counters["duplicate_predictions"] == 5 and p.join.stats["early_matched"] == 3
    # the three-day-late labels updated the windows of their predictions (prediction time t0 + ...)
    late = [m[2] for m in FULL_EMITTED if m[2]["type"] == "quality_partial"
            and m[2]["model"] == "churn" and m[2]["window_start"] < 11_000 and m[2]["seq"] > len(MSGS) - 8]
    assert late and sum(sum(map(sum, r["state"]["classification"]["confusion"])) for r in late) > 0
    shadows = {(r["primary_version"], r["shadow_version"], r["segment"]): r["state"]
               for _, _, r in FULL_EMITTED if r["type"] == "shadow_partial"}
    assert len(shadows) == 3 and sum(s["pairs"] for s in shadows.values()) == 50
    assert sum(s["labelled"] for s in shadows.values()) > 0 and p.shadow.counters["unpaired_shadows"] == 1
    # windows older than the 7 d horizon were dropped (the last prediction is 9 days on)
    assert all(k[0] > 10_000.0 + 2 * DAY for k in p.quality.windows)
    assert p.counters["quality_windows_dropped"] > 0


@pytest.mark.parametrize("k", sorted(set(range(0, len(MSGS) + 1, 3)) | {len(MSGS) - 9, len(MSGS) - 1}))
def test_snapshot_restore_replay_is_exact(k):
    before, emitted_before = run(MSGS, stop=k)
    snapshot = canon(before.to_dict())
    restored = JoinProcessor(cfg(), TOPIC, 5)
    restored.restore(snapshot)
    assert canon(restored.to_dict()) == snapshot
    assert restored.replay_from == k
    # the stream layer may hand over a few already-applied messages: they change nothing
    for offset in range(max(0, k - 2), k):
        assert restored.process(MSGS[offset], offset).messages == []
    after, emitted_after = run(MSGS, start=k, proc=restored)
    assert canon(emitted_before + emitted_after) == canon(FULL_EMITTED)
    assert canon(after.to_dict()) == canon(FULL_PROC.to_dict())
    fams_a = {f.name: [(s.labels, s.value) for s in f.samples] for f in after.collect()}
    fams_b = {f.name: [(s.labels, s.value) for s in f.samples] for f in FULL_PROC.collect()}
    fams_a.pop("prodlens_join_state_bytes"), fams_b.pop("prodlens_join_state_bytes")
    assert fams_a == fams_b
