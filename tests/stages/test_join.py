"""JoinProcessor: prediction ⨝ feedback quality, orphans, shadow pairs, agreement invariants,
exposures ⨝ outcomes, snapshots with exact replay, metrics."""

import itertools
import math

import numpy as np
import orjson
import pytest
from sklearn.metrics import accuracy_score, mean_absolute_error

from prodlens.config import load_config
from prodlens.contract import validator
from prodlens.joins import (METRICS, JoinProcessor, ShadowPairs, collect_all, comparable_output, model_spec,
                            parse_join_settings, window_quality_from_record)
from prodlens.quality.windows import ModelSpec, merge_all

DAY = 86400.0
TOPIC = "prodlens.joins"


def config(**extra):
    data = {"models": {"churn": {"output": "binary", "classes": ["stay", "churn"]},
                       "intent": {"output": "multiclass", "classes": ["a", "b", "c"]},
                       "eta": {"output": "regression"}},
            "window": {"length": "60s", "allowed_lateness": "0s"},
            "quality": {"window": "60s", "horizon": "2d", "grace": "10m"}}
    data.update(extra)
    return load_config(data=data)


_SEQ = itertools.count(1)


def _seq(seq):
    """Real ingest seqs increase per source (the input offset); a fresh one unless given."""
    return next(_SEQ) if seq is None else seq


def pred_record(rows, seq=None):
    """rows: dicts with prediction_id, timestamp, model, version, and optional segment, role, latency_ms,
    label/score/value/probabilities, experiment, variant, unit_id."""
    out_keys = ("label", "score", "probabilities", "value")
    cols = {k: [r.get(k) for r in rows] for k in ("prediction_id", "timestamp", "model", "version", "role",
                                                  "experiment", "variant", "unit_id", "latency_ms")}
    cols["segment"] = [r.get("segment", "__all__") for r in rows]
    cols["output"] = {k: [r.get(k) for r in rows] for k in out_keys if any(k in r for r in rows)}
    return orjson.dumps({"kind": "prediction", "source": "prodlens.predictions:0", "seq": _seq(seq), "columns": cols})


def fb_record(rows, seq=None):
    cols = {k: [r.get(k) for r in rows] for k in ("prediction_id", "timestamp", "kind", "value", "size",
                                                  "corrected", "model")}
    return orjson.dumps({"kind": "feedback", "source": "prodlens.feedback:0", "seq": _seq(seq), "columns": cols})


def unit_record(kind, rows, seq=None):
    names = (("unit_id", "timestamp", "experiment", "variant", "model", "version") if kind == "exposure"
             else ("unit_id", "timestamp", "metric", "value", "experiment", "model"))
    return orjson.dumps({"kind": kind, "source": "x:0", "seq": _seq(seq),
                         "columns": {k: [r.get(k) for r in rows] for k in names}})


class Runner:
    """Feeds messages at consecutive offsets, collecting every emitted message."""

    def __init__(self, proc):
        self.p, self.offset, self.emitted = proc, 0, []

    def feed(self, raw):
        out = self.p.process(raw, self.offset, now=0.0)
        self.offset += 1
        return out

    def tick(self, now=1.0):
        out = self.p.tick(now)
        self.emitted.extend(out.messages)
        return out.messages


def latest(messages, type_):
    """Latest record per key of the given type (later emissions replace earlier: cumulative)."""
    found = {}
    for _, key, rec in messages:
        if rec["type"] == type_:
            ident = {"quality_partial": lambda r: (r["model"], r["version"], r["segment"], r["window_start"]),
                     "shadow_partial": lambda r: (r["model"], r["primary_version"], r["shadow_version"], r["segment"]),
                     "experiment_partial": lambda r: r["experiment"],
                     "invariant_window": lambda r: (r["model"], r["invariant"], r["version"], r["segment"],
                                                    r["window_start"])}[type_](rec)
            found[ident] = rec
    return found


# ----------------------------------------------------------------------------------- quality
def test_joined_accuracy_equals_sklearn_through_the_processor():
    rng = np.random.default_rng(3)
    n = 3000
    r = Runner(JoinProcessor(config(), TOPIC, 2))
    truth, predicted = {}, {}
    rows = []
    for i in range(n):
        t = 1000.0 + i * 0.5  # 25 one-minute windows
        score = float(rng.random())
        label = "churn" if score >= 0.5 else "stay"
        y = label if rng.random() < 0.8 else ("stay" if label == "churn" else "churn")
        pid = f"p{i}"
        predicted[pid], truth[pid] = label, y
        rows.append({"prediction_id": pid, "timestamp": t, "model": "churn", "version": "v1",
                     "segment": "country=US" if i % 3 else "country=DE", "label": label, "score": score})
    for k in range(0, n, 500):
        r.feed(pred_record(rows[k:k + 500]))
        r.tick()
    # labels for 70 % of predictions, in shuffled order, arriving a day later
    labelled = [f"p{i}" for i in rng.permutation(n) if rng.random() < 0.7]
    fbs = [{"prediction_id": pid, "timestamp": 1000.0 + DAY, "kind": "label", "value": truth[pid]}
           for pid in labelled]
    for k in range(0, len(fbs), 400):
        r.feed(fb_record(fbs[k:k + 400]))
        if k % 800 == 0:
            r.tick()
    r.tick()
    partials = latest(r.emitted, "quality_partial")
    assert {k[2] for k in partials} == {"country=US", "country=DE"}
    merged = merge_all(window_quality_from_record(rec) for rec in partials.values())
    res = merged.result()
    expected = accuracy_score([truth[p] for p in labelled], [predicted[p] for p in labelled])
    assert res["classification"].metrics["accuracy"].value == expected
    assert res["classification"].metrics["accuracy"].n == len(labelled)
    assert r.p.counters["joined"]["churn"] == len(labelled)
    assert merged.feedback.to_dict() is not None
    # per window too: one window, one segment
    key = next(k for k in partials if k[2] == "country=DE")
    one = window_quality_from_record(partials[key]).result()["classification"].metrics["accuracy"]
    ids = [f"p{i}" for i in range(n) if i % 3 == 0 and math.floor((1000.0 + i * 0.5) / 60) * 60 == key[3]]
    ids = [p for p in ids if p in set(labelled)]
    assert one.value == accuracy_score([truth[p] for p in ids], [predicted[p] for p in ids])
    # CBPE sums ride along (scores treated as calibrated): n = every prediction of the window
    assert partials[key]["state"]["cbpe"]["n"] == sum(
        1 for i in range(n) if i % 3 == 0 and math.floor((1000.0 + i * 0.5) / 60) * 60 == key[3])


def test_regression_mae_and_multiclass_accuracy():
    rng = np.random.default_rng(5)
    r = Runner(JoinProcessor(config(), TOPIC, 0))
    preds, fbs, pairs_r, pairs_c = [], [], ([], []), ([], [])
    for i in range(400):
        yhat, y = float(rng.normal(10, 3)), float(rng.normal(10, 3))
        preds.append({"prediction_id": f"e{i}", "timestamp": 100.0 + i, "model": "eta", "version": "v2",
                      "value": yhat})
        fbs.append({"prediction_id": f"e{i}", "timestamp": 5000.0, "kind": "label", "value": y})
        pairs_r[0].append(y), pairs_r[1].append(yhat)
        probs = rng.dirichlet([1, 1, 1])
        truth = "abc"[int(rng.integers(3))]
        preds.append({"prediction_id": f"c{i}", "timestamp": 100.0 + i, "model": "intent", "version": "v1",
                      "probabilities": dict(zip("abc", map(float, probs)))})
        fbs.append({"prediction_id": f"c{i}", "timestamp": 5000.0, "kind": "label", "value": truth})
        pairs_c[0].append(truth), pairs_c[1].append("abc"[int(np.argmax(probs))])
    r.feed(pred_record(preds))
    r.feed(fb_record(fbs))
    r.tick()
    parts = latest(r.emitted, "quality_partial")
    eta = merge_all(window_quality_from_record(v) for k, v in parts.items() if k[0] == "eta").result()
    assert eta["regression"].metrics["mae"].value == pytest.approx(mean_absolute_error(*pairs_r), rel=1e-12)
    intent = merge_all(window_quality_from_record(v) for k, v in parts.items() if k[0] == "intent").result()
    assert intent["classification"].metrics["accuracy"].value == accuracy_score(*pairs_c)


def test_early_feedback_within_grace_joins_and_after_grace_is_orphaned():
    r = Runner(JoinProcessor(config(), TOPIC, 0))
    r.feed(pred_record([{"prediction_id": "x0", "timestamp": 1000.0, "model": "churn", "version": "v1",
                         "label": "stay"}]))
    # feedback before its prediction (another topic, faster path): held, then joined
    r.feed(fb_record([{"prediction_id": "early", "timestamp": 1100.0, "kind": "label", "value": "churn"},
                      {"prediction_id": "never", "timestamp": 1100.0, "kind": "label", "value": "churn"}]))
    assert len(r.p.join.early) == 2
    r.feed(pred_record([{"prediction_id": "early", "timestamp": 1090.0 + 500, "model": "churn",
                         "version": "v1", "label": "churn"}]))
    r.tick()
    assert r.p.counters["joined"]["churn"] == 1
    parts = latest(r.emitted, "quality_partial")
    rec = parts[("churn", "v1", "__all__", 1560.0)]
    assert window_quality_from_record(rec).result()["classification"].metrics["accuracy"].value == 1.0
    # prediction watermark passes 1100 + grace (600 s): "never" becomes a grace_expired orphan
    r.feed(pred_record([{"prediction_id": "x1", "timestamp": 1701.0, "model": "churn", "version": "v1",
                         "label": "stay"}]))
    r.tick()
    assert r.p.join.orphans.counts["grace_expired"] == 1 and len(r.p.join.early) == 0


def test_orphans_by_reason_and_metrics():
    cfg = config(quality={"window": "60s", "horizon": "1h", "grace": "60s", "max_early": 1})
    r = Runner(JoinProcessor(cfg, TOPIC, 1))
    r.feed(pred_record([{"prediction_id": "old", "timestamp": 0.0, "model": "churn", "version": "v1",
                         "label": "stay"},
                        {"prediction_id": "now", "timestamp": 10_000.0, "model": "churn", "version": "v1",
                         "label": "stay"}]))
    r.tick()  # "old" is past the 1 h horizon: expired, remembered in the Bloom filter
    fed = r.feed(fb_record([
        {"prediction_id": "old", "timestamp": 10_001.0, "kind": "label", "value": "stay"},       # expired
        {"prediction_id": "ghost", "timestamp": 5_000.0, "kind": "complaint"},                   # unknown
        {"prediction_id": "soon", "timestamp": 10_005.0, "kind": "label", "value": "stay"},      # held early
        {"prediction_id": "soon2", "timestamp": 10_005.0, "kind": "label", "value": "stay"},     # buffer full
        {"prediction_id": "now", "timestamp": 10_002.0, "kind": "rating", "value": 4},           # joined
        {"prediction_id": "now", "timestamp": 10_003.0, "kind": "nonsense", "value": 4},         # invalid kind
    ]))
    r.feed(pred_record([{"prediction_id": "later", "timestamp": 10_100.0, "model": "churn", "version": "v1",
                         "label": "stay"}]))
    r.tick()
    counts = r.p.join.orphans.counts
    assert counts == {"unknown_prediction": 1, "expired_prediction": 1, "grace_expired": 1, "buffer_full": 1}
    assert r.p.counters["invalid_feedback"] == 1
    [(key, dead)] = fed.deadletters  # the invalid row alone, with its reason and the row itself
    assert dead["reason"] == "schema_violation" and "unknown feedback kind 'nonsense'" in dead["error"]
    assert dead["source"]["index"] == 5 and dead["event"]["kind"] == "nonsense" and dead["original_b64"] is None
    assert key.endswith(b":5")
    validator("deadletter")(dead)  # raises if the record breaks its schema
    fams = {f.name: f for f in r.p.collect()}
    assert set(METRICS) == {f.name + ("_total" if f.type == "counter" else "") for f in fams.values()}
    orphaned = {s.labels["reason"]: s.value for s in fams["prodlens_feedback_orphaned"].samples
                if s.name.endswith("_total")}
    assert orphaned == counts
    joined = {s.labels["model"]: s.value for s in fams["prodlens_feedback_joined"].samples
              if s.name.endswith("_total")}
    assert joined == {"churn": 1, "eta": 0, "intent": 0}
    assert fams["prodlens_join_pending_predictions"].samples[0].value == 2
    assert fams["prodlens_join_early_feedback"].samples[0].value == 0
    assert fams["prodlens_join_state_bytes"].samples[0].value > 0
    # several partitions of one worker: summed into one family each
    two = {f.name: f for f in collect_all([r.p, r.p])}
    assert two["prodlens_join_pending_predictions"].samples[0].value == 4


def test_duplicates_and_offsets_below_next_offset_do_not_count_twice():
    r = Runner(JoinProcessor(config(), TOPIC, 0))
    rec = pred_record([{"prediction_id": "a", "timestamp": 10.0, "model": "churn", "version": "v1", "label": "stay"},
                       {"prediction_id": "a", "timestamp": 10.0, "model": "churn", "version": "v1", "label": "stay"}])
    r.feed(rec)
    r.feed(rec)  # re-emitted by an ingest worker replaying from an older snapshot: same source and seq
    again = pred_record([{"prediction_id": "a", "timestamp": 10.0, "model": "churn", "version": "v1",
                          "label": "stay"}])
    r.feed(again)  # the same prediction sent twice by the app (a new seq): the pending chain catches it
    assert r.p.process(rec, 0, 0.0).messages == [] and r.p.next_offset == 3  # already applied
    r.tick()
    assert r.p.counters["replayed_records"] == 1
    assert r.p.counters["duplicate_predictions"] == 2 and r.p.counters["predictions"] == 1
    state = latest(r.emitted, "quality_partial")[("churn", "v1", "__all__", 0.0)]["state"]
    assert state["feedback"]["predictions"] == 1


def test_feedback_re_emitted_by_a_restarted_ingest_counts_once():
    """Ingest restarted from a snapshot at offset 5 routes its messages 5.. again: the records the
    join already applied (seq <= the highest seen from that source and kind) are skipped, exactly."""
    r = Runner(JoinProcessor(config(), TOPIC, 0))
    r.feed(pred_record([{"prediction_id": f"p{i}", "timestamp": 10.0 + i, "model": "churn", "version": "v1",
                         "label": "stay", "score": 0.2} for i in range(8)], seq=1))
    labels = [fb_record([{"prediction_id": f"p{i}", "timestamp": 5000.0 + i, "kind": "label", "value": "churn"}],
                        seq=4 + i) for i in range(4)]  # input offsets 4..7
    for raw in labels:
        r.feed(raw)
    snapshot = r.p.to_dict()
    for raw in labels[1:]:          # replay from offset 5: seqs 5, 6, 7 again, at new joins offsets
        r.feed(raw)
    r.feed(fb_record([{"prediction_id": "p4", "timestamp": 6000.0, "kind": "label", "value": "stay"}], seq=8))
    r.tick()
    assert r.p.counters["replayed_records"] == 3
    assert r.p.counters["joined"] == {"churn": 5}
    state = latest(r.emitted, "quality_partial")[("churn", "v1", "__all__", 0.0)]["state"]
    assert state["feedback"]["predictions"] == 8 and sum(map(sum, state["classification"]["confusion"])) == 5
    # the marks are part of the snapshot: a restored join skips the same records
    restored = JoinProcessor(config(), TOPIC, 0)
    restored.restore(snapshot)
    assert restored.upstream == {"prodlens.predictions:0|prediction": 1, "prodlens.feedback:0|feedback": 7}
    restored.process(labels[3], snapshot["next_offset"], now=0.0)
    assert restored.counters["replayed_records"] == 1 and restored.counters["joined"] == {"churn": 4}


def test_bad_record_goes_to_deadletter_with_reason():
    p = JoinProcessor(config(), TOPIC, 3)
    out = p.process(b'{"kind": "prediction", "columns": {"timestamp": [1.0], "model": ["m"]}}', 0, 5.0)
    assert p.counters["bad_records"] == 1 and p.next_offset == 1
    (key, rec), = out.deadletters
    assert key == b"prodlens.joins:3:0:-" and "columns.prediction_id" in rec["error"]
    out = p.process(b"not json", 1, 5.0)
    assert out.deadletters[0][1]["reason"] == "schema_violation"
    assert p.process(orjson.dumps({"kind": "weird", "columns": {"timestamp": []}}), 2).deadletters


def test_quality_windows_dropped_after_horizon_with_a_final_emission():
    cfg = config(quality={"window": "60s", "horizon": "1h", "grace": "0s"})
    r = Runner(JoinProcessor(cfg, TOPIC, 0))
    r.feed(pred_record([{"prediction_id": "a", "timestamp": 30.0, "model": "churn", "version": "v1",
                         "label": "stay"}]))
    r.tick()
    r.feed(fb_record([{"prediction_id": "a", "timestamp": 3000.0, "kind": "label", "value": "churn"}]))
    r.feed(pred_record([{"prediction_id": "b", "timestamp": 4000.0, "model": "churn", "version": "v1",
                         "label": "stay"}]))
    msgs = r.tick()
    assert [m[2]["window_start"] for m in msgs] == [0.0, 3960.0]  # the label updated window 0 first
    r.feed(pred_record([{"prediction_id": "c", "timestamp": 3 * 3600.0, "model": "churn", "version": "v1",
                         "label": "stay"}]))
    r.tick()
    assert (0.0, "churn", "v1", "__all__") not in r.p.quality.windows
    assert r.p.counters["quality_windows_dropped"] >= 1
    # a straggler for a dropped window does not resurrect it with a tiny partial
    r.feed(pred_record([{"prediction_id": "d", "timestamp": 10.0, "model": "churn", "version": "v1",
                         "label": "stay"}]))
    assert not [m for m in r.tick() if m[2]["window_start"] == 0.0]
    assert r.p.counters["late_for_quality"] == 1


# ----------------------------------------------------------------------------------- shadow pairs
def test_shadow_pairs_disagreement_latency_and_late_labels():
    r = Runner(JoinProcessor(config(), TOPIC, 0))
    rng = np.random.default_rng(11)
    rows, fbs = [], []
    disagree = correct_p = correct_s = 0
    for i in range(300):
        t = 100.0 + i
        p_label = "churn" if rng.random() < 0.5 else "stay"
        s_label = p_label if rng.random() < 0.9 else ("stay" if p_label == "churn" else "churn")
        truth = "churn" if rng.random() < 0.5 else "stay"
        disagree += p_label != s_label
        correct_p += p_label == truth
        correct_s += s_label == truth
        shadow = {"prediction_id": f"p{i}", "timestamp": t + 0.01, "model": "churn", "version": "v9",
                  "role": "shadow", "segment": "country=US", "label": s_label, "latency_ms": 20.0}
        primary = {"prediction_id": f"p{i}", "timestamp": t, "model": "churn", "version": "v7", "role": "primary",
                   "segment": "country=US", "label": p_label, "latency_ms": 10.0}
        rows += [shadow, primary] if i % 2 else [primary, shadow]
        fbs.append({"prediction_id": f"p{i}", "timestamp": t + 3 * 3600, "kind": "label", "value": truth})
    # the first shadow must precede its primary for the model's primaries to be buffered
    r.feed(pred_record(rows[1:2] + rows[0:1] + rows[2:]))
    r.tick()
    r.feed(pred_record([{"prediction_id": "z", "timestamp": 2000.0, "model": "churn", "version": "v7",
                         "label": "stay"}]))  # moves event time past the pair timeout: pairs await labels
    r.tick()
    assert len(r.p.shadow._awaiting) == 300
    r.feed(fb_record(fbs))
    r.tick()
    (key, rec), = latest(r.emitted, "shadow_partial").items()
    assert key == ("churn", "v7", "v9", "country=US")
    from prodlens.experiments.shadow import ShadowStats
    res = ShadowStats.from_dict(rec["state"]).result()
    assert res.pairs == 300 and res.disagreement.value == disagree / 300
    assert res.labelled == 300
    assert res.accuracy_primary.value == correct_p / 300 and res.accuracy_shadow.value == correct_s / 300
    assert res.latency["primary"]["n"] == 300 and res.latency["primary"]["p50"] == pytest.approx(10.0, rel=0.01)
    assert res.latency["shadow"]["p50"] == pytest.approx(20.0, rel=0.01)
    # quality windows exist for both versions (the shadow's labels join too)
    versions = {k[1] for k in latest(r.emitted, "quality_partial")}
    assert versions == {"v7", "v9"}


def test_shadow_pairs_unit():
    changed = set()
    sp = ShadowPairs({"m": ModelSpec("regression")}, pair_timeout=10, label_horizon=100, max_open=2)
    sp.add("a", 0.0, "m", "v2", "s", "shadow", {"value": 3.0}, None, changed)
    sp.add("a", 0.5, "m", "v2", "s", "shadow", {"value": 3.0}, None, changed)  # duplicate
    sp.add("a", 1.0, "m", "v1", "s", None, {"value": 1.0}, None, changed)
    assert changed == {("m", "v1", "v2", "s")} and sp.counters["duplicates"] == 1
    sp.label("a", "m", 2.0, changed)
    st = sp.stats[("m", "v1", "v2", "s")]
    assert st.labelled == 1 and st.abs_err_diff.mean == 0.0 and st.diff.mean == 2.0
    sp.add("b", 2.0, "m", "v2", "s", "shadow", {"value": 1.0}, None, changed)
    sp.add("c", 3.0, "m", "v2", "s", "shadow", {}, None, changed)
    assert sp.counters["unusable_outputs"] == 1
    sp.expire(100.0)
    assert sp.counters["unpaired_shadows"] == 1 and len(sp) == 0
    assert comparable_output(model_spec(config().models["churn"]), {"score": 0.7}) == "churn"


# ----------------------------------------------------------------------------------- invariants
def test_agreement_invariant_windows():
    inv = {"churn": [{"name": "shadow_agrees", "kind": "agreement", "reference": {"role": "primary"},
                      "candidate": {"role": "shadow"}, "min_agreement": 0.9, "min_pairs": 5,
                      "pair_timeout": "30s"},
                     {"name": "labels_known", "kind": "enum", "field": "output.label", "values": ["a"]}]}
    r = Runner(JoinProcessor(config(invariants=inv), TOPIC, 0))
    rows = []
    for i in range(20):
        rows.append({"prediction_id": f"p{i}", "timestamp": 10.0 + i, "model": "churn", "version": "v1",
                     "role": "primary", "label": "stay"})
        rows.append({"prediction_id": f"p{i}", "timestamp": 10.5 + i, "model": "churn", "version": "v2",
                     "role": "shadow", "label": "stay" if i % 4 else "churn"})
    r.feed(pred_record(rows))
    assert r.tick() == [] or all(m[2]["type"] != "invariant_window" for m in r.emitted)
    r.feed(pred_record([{"prediction_id": "late", "timestamp": 200.0, "model": "churn", "version": "v1",
                         "role": "primary", "label": "stay"}]))
    r.tick()
    wins = latest(r.emitted, "invariant_window")
    (key, rec), = wins.items()   # only the agreement invariant runs on the join partition
    assert key == ("churn", "shadow_agrees", "v2", "__all__", 0.0)
    assert rec["checked"] == 20 and rec["failed"] == 5 and rec["status"] == "violated" and rec["violations"] == 1
    assert rec["source"] == "prodlens.joins:0" and rec["seq"] == 2


# ----------------------------------------------------------------------------------- outcomes
def test_exposures_join_outcomes_into_experiment_partials():
    exps = {"ab": {"button": {"variants": {"a": 0.5, "b": 0.5},
                              "metrics": [{"name": "conversion", "aggregation": "any"}, "revenue"]}},
            "canaries": {"ladder": {"model": "churn", "baseline": "v1", "canary": "v2", "steps": [0.1, 1.0],
                                    "metrics": [{"name": "error_rate", "tolerance": 0.1}]}}}
    r = Runner(JoinProcessor(config(experiments=exps), TOPIC, 0))
    r.feed(unit_record("exposure", [{"unit_id": f"u{i}", "timestamp": 100.0 + i, "experiment": "button",
                                     "variant": "ab"[i % 2], "model": "churn", "version": "v1"}
                                    for i in range(10)]))
    r.feed(unit_record("outcome", [
        {"unit_id": "u0", "timestamp": 200.0, "metric": "conversion", "value": 1.0},
        {"unit_id": "u0", "timestamp": 201.0, "metric": "revenue", "value": 30.0},
        {"unit_id": "u0", "timestamp": 202.0, "metric": "revenue", "value": 12.0},
        {"unit_id": "u1", "timestamp": 203.0, "metric": "revenue", "value": 5.0, "experiment": "button"},
        {"unit_id": "nobody", "timestamp": 203.0, "metric": "revenue", "value": 5.0}]))
    msgs = r.tick()
    (t, key, rec), = msgs
    assert key == b"experiment/button" and rec["type"] == "experiment_partial"
    st = rec["state"]
    assert st["exposures"] == {"a": 5, "b": 5}
    assert st["metrics"]["revenue"]["a"] == {"n": 5, "sum": 42.0, "sum_sq": 42.0 ** 2}
    assert st["metrics"]["revenue"]["b"] == {"n": 5, "sum": 5.0, "sum_sq": 25.0}
    assert st["metrics"]["conversion"]["a"]["sum"] == 1.0
    assert r.p.outcomes.counters["unmatched_outcomes"] == 1
    assert r.tick() == []  # nothing changed: nothing emitted


# ----------------------------------------------------------------------------------- config
def test_settings_parsing_names_the_field():
    assert parse_join_settings(None).horizon == 7 * DAY and parse_join_settings({}).window == 3600.0
    s = parse_join_settings({"window": "5m", "horizon": "1d", "grace": 0, "max_pending": 10, "views": ["1h"]})
    assert (s.window, s.horizon, s.grace, s.max_pending) == (300.0, DAY, 0.0, 10)
    for bad, field in (({"horizon": "soon"}, "quality.horizon"), ({"window": 0}, "quality.window"),
                       ({"max_pending": 0}, "quality.max_pending"), ({"grace": -1}, "quality.grace"),
                       ({"window": "2h", "horizon": "1h"}, "quality.horizon")):
        with pytest.raises(ValueError, match=field):
            parse_join_settings(bad)
    with pytest.raises(ValueError, match=r"experiments.ab.e.metrics\[0\]"):
        JoinProcessor(config(experiments={"ab": {"e": {"variants": ["a", "b"],
                                                       "metrics": [{"name": "x", "aggregation": "median"}]}}}),
                      TOPIC, 0)
    p = JoinProcessor(config(experiments={"attribution": {"horizon": "2d", "max_units": 5},
                                          "ab": {"e": {"variants": ["a", "b"], "metrics": ["conv"]}},
                                          "shadows": {"s": {"model": "eta", "pair_horizon": "1m"}}}), TOPIC, 0)
    assert p.outcomes.horizon_s == 2 * DAY and p.outcomes.max_units == 5
    assert p.shadow.pair_timeout == 60.0 and p.shadow.shadow_models == {"eta"}
    # a declared shadow model pairs even when the very first primary precedes its shadow
    p.process(pred_record([{"prediction_id": "x", "timestamp": 5.0, "model": "eta", "version": "v1", "value": 1.0},
                           {"prediction_id": "x", "timestamp": 5.1, "model": "eta", "version": "v2",
                            "role": "shadow", "value": 1.5}]), 0)
    (_, _, rec), = [m for m in p.tick(1.0).messages if m[2]["type"] == "shadow_partial"]
    assert rec["state"]["pairs"] == 1 and rec["state"]["diff"]["n"] == 1
    assert model_spec(config().models["churn"]) == ModelSpec("classification", "churn", "stay")
    with pytest.raises(Exception, match="invariants"):
        JoinProcessor(config(invariants={"nope": []}), TOPIC, 0)
