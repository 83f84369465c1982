import json
import math
import zlib
from pathlib import Path

import fastjsonschema
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from prodlens.analysis.quality import (ALL, METRICS, QualityAnalyser, QualitySettings, load_cbpe_references,
                                       model_spec)
from prodlens.config import Config
from prodlens.quality.cbpe import CBPEReference
from prodlens.quality.join import FeedbackJoin
from prodlens.quality.windows import QualityWindows, merge_all

HOUR, DAY = 3600.0, 86400.0
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = fastjsonschema.compile(json.loads((ROOT / "schemas" / "quality_summary.v1.json").read_text()))
MODELS = {"churn": {"output": "binary", "classes": ["stay", "churn"], "segments": ["country"]},
          "price": {"output": "regression"}}


def config(**quality):
    return Config.model_validate({"models": MODELS, "quality": {"window": "1h", **quality}})


class Source:
    """One join partition: FeedbackJoin + QualityWindows, publishing cumulative quality partials."""

    def __init__(self, name, analyser):
        self.name = name
        self.join = FeedbackJoin(horizon_seconds=2 * DAY, window_seconds=HOUR)
        self.windows = QualityWindows(HOUR, analyser.specs, references=analyser.references)
        self.seq = 0

    def predictions(self, cols):
        self.windows.record_matches(self.join.add_predictions(cols))
        self.windows.record_predictions(cols)

    def feedback(self, cols):
        self.windows.record_matches(self.join.add_feedback(cols))

    def partials(self):
        self.seq += 1
        return [{"type": "quality_partial", "source": self.name, "seq": self.seq, "model": m, "version": v,
                 "segment": s, "window_start": ws, "window_end": ws + HOUR, "state": w.to_dict()}
                for (ws, m, v, s), w in sorted(self.windows.windows.items())]


def simulate(rng, n, hours=26, degraded=("v2", "country=DE"), label_share=0.6, truth_of=None):
    """Binary churn predictions over ``hours``; labels for ``label_share`` arrive 1-30 min later,
    complaints for 5 %. Accuracy 0.9 except 0.6 in the ``degraded`` (version, segment)."""
    ids, times, versions, segs, outs, truth = [], [], [], [], [], []
    for i in range(n):
        v = "v1" if rng.random() < 0.5 else "v2"
        country = "DE" if rng.random() < 0.5 else "US"
        if truth_of is None:
            y = rng.random() < 0.3
            good = rng.random() < (0.6 if (v, f"country={country}") == degraded else 0.9)
            score = rng.uniform(0.55, 1.0) if y == good else rng.uniform(0.0, 0.45)
        else:
            score = rng.random()
            y = truth_of(v, score, rng)
        ids.append(f"p{i}")
        times.append(i * hours * HOUR / n)
        versions.append(v)
        segs.append({"country": country})
        outs.append({"score": score})
        truth.append("churn" if y else "stay")
    pred = {"prediction_id": ids, "timestamp": times, "model": ["churn"] * n, "version": versions,
            "segment": segs, "output": outs}
    fb_idx = [i for i in range(n) if rng.random() < label_share]
    fb = {"prediction_id": [ids[i] for i in fb_idx],
          "timestamp": [times[i] + rng.uniform(60, 1800) for i in fb_idx],
          "kind": ["label"] * len(fb_idx), "value": [truth[i] for i in fb_idx]}
    comp = [i for i in range(n) if rng.random() < 0.05]
    complaints = {"prediction_id": [ids[i] for i in comp], "timestamp": [times[i] + 30.0 for i in comp],
                  "kind": ["complaint"] * len(comp), "value": [None] * len(comp)}
    return pred, fb, complaints


def route(cols, parts):
    """Split columns by crc32(prediction_id) % parts, as ingest routes the joins topic."""
    out = [{k: [] for k in cols} for _ in range(parts)]
    for i, pid in enumerate(cols["prediction_id"]):
        p = zlib.crc32(pid.encode()) % parts
        for k in cols:
            out[p][k].append(cols[k][i])
    return out


def feed_sources(analyser, sources, pred, fb, complaints, now=100.0):
    for part, cols in zip(sources, route(pred, len(sources))):
        part.predictions(cols)
    for batch in (fb, complaints):
        for part, cols in zip(sources, route(batch, len(sources))):
            part.feedback(cols)
    emits = []
    for s in sources:
        for rec in s.partials():
            analyser.update(b"churn", rec, now)
    emits += analyser.tick(now + analyser.settings.settle)
    return emits


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


def assert_same_exports(x, y):
    ex = x if isinstance(x, dict) else x.exported()
    ey = y if isinstance(y, dict) else y.exported()
    assert ex.keys() == ey.keys()
    bad = [k for k in ex if not same(ex[k], ey[k])]
    assert not bad, bad[:5]


@pytest.fixture(scope="module")
def data():
    return simulate(np.random.default_rng(0), 8000)


def test_two_sources_equal_one_source_fed_everything(data):
    two, one = QualityAnalyser(config()), QualityAnalyser(config())
    emits_two = feed_sources(two, [Source("prodlens.joins:0", two), Source("prodlens.joins:1", two)], *data)
    emits_one = feed_sources(one, [Source("prodlens.joins:0", one)], *data)
    assert_same_exports(two, one)
    assert len(two.exported()) > 1000
    by_key = {(r["version"], r["segment"], r["window_start"]): r for _, _, r in emits_one}
    assert len(emits_two) == len(by_key) == 2 * 26 * 3  # versions × windows × (2 segments + __all__)
    for topic, key, rec in emits_two:
        assert topic == "prodlens.summaries" and key == b"churn"
        SCHEMA(orjson.loads(orjson.dumps(rec)))
        twin = by_key[(rec["version"], rec["segment"], rec["window_start"])]
        assert rec["partials"] == 2 and twin["partials"] == 1
        assert rec["predictions"] == twin["predictions"] and rec["labelled"] == twin["labelled"]
        for name, est in rec["metrics"].items():
            assert est["n"] == twin["metrics"][name]["n"]
            for f in ("value", "lower", "upper"):
                a, b = est[f], twin["metrics"][name][f]
                assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9, abs=1e-12), (name, f)


def test_all_segment_record_and_view_merge_the_segments(data):
    qa = QualityAnalyser(config())
    emits = feed_sources(qa, [Source("prodlens.joins:0", qa)], *data)
    recs = {(r["version"], r["segment"], r["window_start"]): r for _, _, r in emits}
    for ws in (0.0, 5 * HOUR):
        parts = [recs[("v1", s, ws)] for s in ("country=DE", "country=US")]
        whole = recs[("v1", ALL, ws)]
        assert whole["predictions"] == sum(p["predictions"] for p in parts)
        assert whole["metrics"]["accuracy"]["n"] == sum(p["metrics"]["accuracy"]["n"] for p in parts)
    # exported "24h" view of __all__ = the core's merge of the 24 windows ending at T - L
    ex = qa.exported()
    t = 26 * HOUR
    keys = [k for k in qa.store.keys() if k[1] == "v1" and t - HOUR - DAY < qa.ends[k] <= t - HOUR]
    assert len(keys) == 2 * 24
    want = merge_all(qa.merged(k) for k in keys).result()["classification"].metrics["accuracy"]
    labels = ("churn", "v1", ALL, "accuracy", "", "24h")
    assert ex[("prodlens_quality_n", labels)] == want.n
    assert ex[("prodlens_quality", labels)] == pytest.approx(want.value, rel=1e-12)
    assert ex[("prodlens_quality_lower", labels)] == pytest.approx(want.lower, rel=1e-12)
    # "window" = the latest complete window: the one ending at T - L (the join still fills the one ending at T)
    assert ex[("prodlens_quality_window_end_timestamp_seconds", ("churn", "v1", "country=DE"))] == t - HOUR
    one = qa.merged(("churn", "v1", "country=DE", t - 2 * HOUR)).result()["classification"].metrics["accuracy"]
    assert ex[("prodlens_quality_n", ("churn", "v1", "country=DE", "accuracy", "", "window"))] == one.n


def test_degraded_segment_drops_outside_its_interval_others_stay_inside(data):
    qa = QualityAnalyser(config(confidence=0.999))  # 4 intervals: keep the chance of a false miss small
    feed_sources(qa, [Source("prodlens.joins:0", qa), Source("prodlens.joins:1", qa)], *data)
    ex = qa.exported()
    for v in ("v1", "v2"):
        for seg in ("country=DE", "country=US"):
            labels = ("churn", v, seg, "accuracy", "", "24h")
            lo, hi = ex[("prodlens_quality_lower", labels)], ex[("prodlens_quality_upper", labels)]
            assert ex[("prodlens_quality_n", labels)] > 500
            if (v, seg) == ("v2", "country=DE"):
                assert hi < 0.75 and not lo <= 0.9 <= hi
                err = ("churn", v, seg, "error_rate", "", "24h")
                assert ex[("prodlens_quality_lower", err)] == pytest.approx(1 - hi)
            else:
                assert lo <= 0.9 <= hi
    # complaints: a lower bound on the error rate, under its own name; never above the realized error rate
    for v, seg in (("v1", "country=US"), ("v2", "country=DE")):
        lb = ex[("prodlens_quality", ("churn", v, seg, "error_rate_lower_bound", "", "24h"))]
        assert lb == ex[("prodlens_quality", ("churn", v, seg, "complaint_rate", "", "24h"))]
        assert 0.03 < lb < 0.07
    cov = ex[("prodlens_label_coverage_ratio", ("churn", "v1", ALL, "24h"))]
    assert 0.55 < cov < 0.65
    p50 = ex[("prodlens_label_delay_seconds", ("churn", "v1", ALL, "0.5"))]
    assert 60 * 0.98 < p50 < 1800 * 1.02
    for name, labels in ex:
        assert len(labels) == len(METRICS[name])


def test_tiny_n_is_exported_with_n_and_interval():
    qa = QualityAnalyser(config())
    pred, fb, complaints = simulate(np.random.default_rng(5), 40, hours=3, label_share=0.2)
    feed_sources(qa, [Source("prodlens.joins:0", qa)], pred, fb, complaints)
    ex = qa.exported()
    labels = ("churn", "v1", "country=US", "accuracy", "", "window")
    assert ex[("prodlens_quality_n", labels)] < qa.settings.min_n
    assert ex[("prodlens_quality_upper", labels)] - ex[("prodlens_quality_lower", labels)] > 0.2
    names = {name for name, _ in ex}
    assert {"prodlens_quality", "prodlens_quality_n", "prodlens_quality_lower", "prodlens_quality_upper"} <= names


def test_redelivered_and_stale_partials_are_idempotent(data):
    qa, ref = QualityAnalyser(config()), QualityAnalyser(config())
    src = Source("prodlens.joins:0", qa)
    feed_sources(ref, [Source("prodlens.joins:0", ref)], *data)
    emits = feed_sources(qa, [src], *data)
    first = {(r["version"], r["segment"], r["window_start"]): r for _, _, r in emits}
    recs = src.partials()  # seq 2, same content: at-least-once re-delivery
    for rec in recs + recs:
        qa.update(b"churn", rec, 200.0)
    stale = dict(recs[0], seq=0, state=recs[-1]["state"])  # an older seq with other content: ignored
    qa.update(b"churn", stale, 200.0)
    again = qa.tick(300.0)
    assert_same_exports(qa, ref)
    for _, _, rec in again:
        old = first[(rec["version"], rec["segment"], rec["window_start"])]
        assert rec["revision"] == old["revision"] + 1
        assert {k: v for k, v in rec.items() if k != "revision"} == {k: v for k, v in old.items() if k != "revision"}


def test_restore_round_trip_and_continue(data):
    pred, fb, complaints = data
    cut = len(pred["timestamp"]) // 2
    head = {k: v[:cut] for k, v in pred.items()}
    tail = {k: v[cut:] for k, v in pred.items()}
    straight = QualityAnalyser(config())
    s_src = [Source("prodlens.joins:0", straight), Source("prodlens.joins:1", straight)]
    feed_sources(straight, s_src, head, {k: [] for k in fb}, {k: [] for k in complaints})
    snap = orjson.loads(orjson.dumps(straight.to_dict()))
    restored = QualityAnalyser(config())
    restored.restore(snap)
    assert restored.to_dict() == snap
    assert_same_exports(restored, straight)
    # both continue with the same partials
    for src in s_src:
        src.predictions({k: v for k, v in route(tail, 2)[int(src.name[-1])].items()})
        for batch in (fb, complaints):
            src.feedback(route(batch, 2)[int(src.name[-1])])
        for rec in src.partials():
            straight.update(b"churn", rec, 500.0)
            restored.update(b"churn", rec, 500.0)
    a, b = straight.tick(510.0), restored.tick(510.0)
    assert [r for _, _, r in a] == [r for _, _, r in b]
    assert_same_exports(restored, straight)
    assert restored.to_dict() == straight.to_dict()


def test_retention_drops_old_windows_and_counts_late_partials():
    qa = QualityAnalyser(config(horizon="2h", views=["1h", "3h"]))
    assert qa.settings.retention == 4 * HOUR
    pred, fb, complaints = simulate(np.random.default_rng(3), 2000, hours=10)
    src = Source("prodlens.joins:0", qa)
    feed_sources(qa, [src], pred, fb, complaints)
    assert min(qa.ends.values()) > 10 * HOUR - 4 * HOUR
    assert {k[3] for k in qa.store.keys()} == {h * HOUR for h in range(6, 10)}
    assert all(k[3] >= 6 * HOUR for k in qa.revisions)
    old = next(r for r in src.partials() if r["window_start"] == 0.0)
    qa.update(b"churn", old, 1000.0)
    assert ("churn", "v1", "country=DE", 0.0) not in set(qa.store.keys())
    expired = {f.name: f for f in qa.collect()}["prodlens_quality_partials_expired"]
    assert [s.value for s in expired.samples if s.name.endswith("_total")] == [1]


def test_regression_model_metrics():
    qa = QualityAnalyser(config())
    rng = np.random.default_rng(4)
    n = 400
    truth = rng.normal(10, 2, n)
    predv = truth + rng.normal(0.5, 1, n)
    windows = QualityWindows(HOUR, qa.specs)
    join = FeedbackJoin(horizon_seconds=DAY, window_seconds=HOUR)
    cols = {"prediction_id": [f"r{i}" for i in range(n)], "timestamp": list(np.linspace(0, 3 * HOUR - 1, n)),
            "model": ["price"] * n, "version": ["p1"] * n, "segment": [None] * n,
            "output": [{"value": float(v)} for v in predv]}
    windows.record_matches(join.add_predictions(cols))
    windows.record_predictions(cols)
    windows.record_matches(join.add_feedback({"prediction_id": cols["prediction_id"],
                                              "timestamp": [t + 5 for t in cols["timestamp"]],
                                              "kind": ["label"] * n, "value": [float(t) for t in truth]}))
    for (ws, m, v, s), w in windows.windows.items():
        qa.update(b"price", {"type": "quality_partial", "source": "j:0", "seq": 1, "model": m, "version": v,
                             "segment": s, "window_start": ws, "window_end": ws + HOUR, "state": w.to_dict()}, 0.0)
    emits = qa.tick(10.0)
    assert len(emits) == 3 and {r["segment"] for _, _, r in emits} == {ALL}  # no extra __all__ merge
    for _, key, rec in emits:
        assert key == b"price" and rec["task"] == "regression"
        SCHEMA(rec)
    ex = qa.exported()
    sel = np.array(cols["timestamp"]) < 2 * HOUR  # the 24h view ends at T - L = 2h
    labels = ("price", "p1", ALL, "mae", "", "24h")
    assert ex[("prodlens_quality", labels)] == pytest.approx(np.abs(predv - truth)[sel].mean())
    assert ex[("prodlens_quality_n", labels)] == sel.sum()
    bias = ex[("prodlens_quality", ("price", "p1", ALL, "mean_error", "", "24h"))]
    assert bias == pytest.approx((predv - truth)[sel].mean())
    assert ("prodlens_quality", ("price", "p1", ALL, "accuracy", "", "24h")) not in ex


def _trust_run(ref, truth_of, seed):
    qa = QualityAnalyser(config(), references={("churn", "v1"): ref, ("churn", "v2"): ref})
    data = simulate(np.random.default_rng(seed), 8000, hours=8, label_share=1.0, truth_of=truth_of)
    feed_sources(qa, [Source("prodlens.joins:0", qa), Source("prodlens.joins:1", qa)], *data)
    return qa


def test_cbpe_estimates_and_trust_rule():
    rng = np.random.default_rng(7)
    s = rng.random(20_000)
    ref = CBPEReference.fit(s, rng.random(s.size) < s, calibration="none")
    # v1: calibrated scores (trusted); v2: concept drift, P(churn | score) = 1 - score (not trusted)
    qa = _trust_run(ref, lambda v, score, r: r.random() < (score if v == "v1" else 1 - score), 8)
    ex = qa.exported()
    assert ex[("prodlens_quality_estimate_trusted", ("churn", "v1"))] == 1.0
    assert ex[("prodlens_quality_estimate_trusted", ("churn", "v2"))] == 0.0
    trusted, reasons = qa.trust("churn", "v2")
    assert not trusted and {"realized_accuracy_outside_estimate", "realized_calibration_error"} <= set(reasons)
    labels = ("churn", "v1", ALL, "accuracy", "24h")
    est, lo, hi = (ex[(n, labels)] for n in ("prodlens_quality_estimated", "prodlens_quality_estimated_lower",
                                            "prodlens_quality_estimated_upper"))
    assert ex[("prodlens_quality_estimated_n", labels)] > 3000
    assert lo < est < hi and est == pytest.approx(0.75, abs=0.02)  # E[max(s, 1-s)] for uniform s
    real = ex[("prodlens_quality", ("churn", "v1", ALL, "accuracy", "", "24h"))]
    assert lo - 0.02 < real < hi + 0.02
    assert ("prodlens_quality_estimate_trusted", ("price", "p1")) not in ex
    # restored states share the configured reference object, so later partials still merge with them
    back = QualityAnalyser(config(), references={("churn", "v1"): ref, ("churn", "v2"): ref})
    back.restore(orjson.loads(orjson.dumps(qa.to_dict())))
    assert_same_exports(back, qa)
    key = next(k for k in back.store.keys() if k[1] == "v1")
    assert back.merged(key).reference is back.references[("churn", "v1")]
    # the exposition a Prometheus scrape sees
    registry = CollectorRegistry()
    registry.register(type("C", (), {"collect": lambda self: qa.collect()})())
    text = generate_latest(registry).decode()
    assert 'prodlens_quality_estimate_trusted{model="churn",version="v2"} 0.0' in text
    assert 'prodlens_quality_n{class="",metric="accuracy",model="churn",segment="__all__",version="v1",view="24h"}' \
        in text


def test_isotonic_reference_skips_raw_score_ece_rule():
    rng = np.random.default_rng(9)
    s = rng.random(20_000)
    ref = CBPEReference.fit(s, rng.random(s.size) < s ** 2)  # raw scores miscalibrated, isotonic fixes it
    qa = _trust_run(ref, lambda v, score, r: r.random() < score ** 2, 10)
    ece = qa.exported()[("prodlens_quality_lower", ("churn", "v1", ALL, "ece", "", "24h"))]
    assert ece > 0.05  # the raw scores are far from calibrated ...
    assert qa.trust("churn", "v1") == (True, [])  # ... but CBPE's calibrated estimate matches reality


def test_settings_and_spec_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"quality\.window"):
        QualitySettings.parse({"window": "soon"})
    with pytest.raises(ValueError, match=r"quality\.views\.window"):
        QualitySettings.parse({"views": {"window": "1h"}})
    with pytest.raises(ValueError, match=r"quality\.min_n"):
        QualitySettings.parse({"min_n": 0.5})
    with pytest.raises(ValueError, match=r"quality\.confidence"):
        QualitySettings.parse({"confidence": 1.5})
    assert QualitySettings.parse({"max_pending": 5, "grace": "5m"}) == QualitySettings()  # join-owned keys
    with pytest.raises(ValueError, match=r"quality\.models\.churn"):
        QualityAnalyser(config(models={"churn": {"bins": 3}}))
    with pytest.raises(ValueError, match=r"quality\.cbpe\.churn\.v1"):
        load_cbpe_references(config(cbpe={"churn": {"v1": str(tmp_path / "missing.json")}}))
    rng = np.random.default_rng(0)
    x = rng.random(200)
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(CBPEReference.fit(x, rng.random(200) < x).to_dict()))
    refs = load_cbpe_references(config(cbpe={"churn": {"v1": str(path)}}))
    assert list(refs) == [("churn", "v1")] and refs[("churn", "v1")].n_reference == 200
    spec = model_spec(config().models["churn"])
    assert (spec.task, spec.positive_label, spec.negative_label) == ("classification", "churn", "stay")
    qa = QualityAnalyser(config())
    good = {"type": "quality_partial", "source": "j:0", "seq": 1, "model": "churn", "version": "v1",
            "segment": ALL, "window_start": 0, "window_end": 3600, "state": {}}
    for field, value, pattern in (("seq", "1", r"quality_partial\.seq"), ("model", "nope", r"quality_partial\.model"),
                                  ("window_end", 0, r"quality_partial\.window_end"),
                                  ("state", {}, r"quality_partial\.state")):
        with pytest.raises(ValueError, match=pattern):
            qa.update(b"churn", dict(good, **{field: value}), 0.0)


def test_schema_example_is_valid_and_schema_rejects_bad_records():
    example = json.loads((ROOT / "schemas" / "examples" / "records" / "quality_summary.json").read_text())
    SCHEMA(example)
    bad = json.loads(json.dumps(example))
    del bad["metrics"]["label_coverage"]["n"]
    with pytest.raises(fastjsonschema.JsonSchemaException):
        SCHEMA(bad)


def _join_partials(processors, pred, fb):
    """Feed joins-topic records (as ingest writes them) to JoinProcessors, return their quality partials."""
    seg = [f"country={s['country']}" for s in pred["segment"]]
    rows = dict(pred, segment=seg, role=[None] * len(seg))
    offsets = [0] * len(processors)
    for lo in range(0, len(seg), 1000):
        chunk = {k: v[lo:lo + 1000] for k, v in rows.items() if k != "output"}
        chunk["output"] = {"score": [o["score"] for o in pred["output"][lo:lo + 1000]]}
        for p, part in enumerate(route_nested(chunk, len(processors))):
            if part["prediction_id"]:
                processors[p].process(orjson.dumps({"kind": "prediction", "source": "prodlens.predictions:0",
                                                    "seq": lo, "columns": part}), offsets[p])
                offsets[p] += 1
    for p, part in enumerate(route(fb, len(processors))):
        processors[p].process(orjson.dumps({"kind": "feedback", "source": "prodlens.feedback:0", "seq": 1,
                                            "columns": part}), offsets[p])
    return [orjson.loads(orjson.dumps(r)) for proc in processors for _, _, r in proc.tick(0.0).messages
            if r["type"] == "quality_partial"]


def route_nested(cols, parts):
    flat = {k: v for k, v in cols.items() if k != "output"}
    flat["score"] = cols["output"]["score"]
    out = route(flat, parts)
    return [dict({k: v for k, v in o.items() if k != "score"}, output={"score": o["score"]}) for o in out]


def test_partials_from_real_join_processors_with_spec_and_reference_riding_along():
    from prodlens.joins import JoinProcessor

    cfg = config(horizon="1d")
    pred, fb, _ = simulate(np.random.default_rng(11), 3000, hours=5, label_share=0.7,
                           truth_of=lambda v, score, r: r.random() < score)
    two = _join_partials([JoinProcessor(cfg, "prodlens.joins", p) for p in range(2)], pred, fb)
    one = _join_partials([JoinProcessor(cfg, "prodlens.joins", 0)], pred, fb)
    assert two and {"spec", "cbpe_reference"} <= set(two[0])
    a, b = QualityAnalyser(cfg), QualityAnalyser(cfg)
    for rec in two:
        a.update(b"churn", rec, 0.0)
    for rec in one:
        b.update(b"churn", rec, 0.0)
    ea, eb = a.tick(5.0), b.tick(5.0)
    assert len(ea) == len(eb) == 2 * 5 * 3
    assert_same_exports(a, b)
    ex = a.exported()
    assert ex[("prodlens_quality_estimate_trusted", ("churn", "v1"))] == 1.0  # calibrated scores
    assert ex[("prodlens_quality_estimated_n", ("churn", "v1", ALL, "accuracy", "24h"))] == \
        sum(1 for v, t in zip(pred["version"], pred["timestamp"]) if v == "v1" and t < 4 * HOUR)
    snap = orjson.loads(orjson.dumps(a.to_dict()))
    assert len(snap["references"]) == 1  # one shared reference, not one per partial
    back = QualityAnalyser(cfg)
    back.restore(snap)
    assert back.to_dict() == snap
    assert_same_exports(back, a)


def test_partials_of_another_spec_are_left_out_not_mixed(data):
    qa = QualityAnalyser(config())
    src = Source("prodlens.joins:0", qa)
    feed_sources(qa, [src], *data)
    before = qa.exported()
    rec = next(r for r in src.partials() if r["window_start"] == 20 * HOUR and r["version"] == "v1")
    odd = dict(rec, source="prodlens.joins:9", seq=0, spec={"task": "classification", "positive_label": None})
    qa.update(b"churn", odd, 50.0)  # older seq than the other source's partial: the newest spec wins
    qa.tick(60.0)
    assert_same_exports(qa, before)
