"""Issue 3 end to end: quality from feedback, through a real broker and real worker processes.

The truth is the simulator's :class:`~prodlens.simulate.Tally` (``Tally.quality``: per
(model, version, segment, 10 s window of PREDICTION time) the predictions, their correct
answers and which labels were sent). The worker is seen only as a user sees it: its
``/metrics`` and the ``quality_summary`` records on the summaries topic (validated against
``schemas/quality_summary.v1.json``).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

import orjson
import pytest

from harness import Worker, load, make_config, metric, read_topic_sync, wait_for
from prodlens.contract import validator
from prodlens.simulate import FeedbackSpec, Scenario, SimulatedApp
from prodlens.streams.kafka import ensure_topics
from prodlens.streams.producer import send_messages

pytestmark = [pytest.mark.broker, pytest.mark.slow]

START = 1_800_000_000.0      # window-aligned event time
WINDOW = 10.0                # window.length == quality.window == Scenario.truth_window
DAY = 86400.0
SEGMENTS = ("device=android", "device=ios", "device=web")
CHURN = {"output": "binary", "classes": ["stay", "churn"], "positive_class": "churn",
         "features": {"tenure_months": "numeric", "monthly_spend": "numeric", "plan": "categorical"},
         "segments": {"device": {"values": ["ios", "android", "web"]}}}


def quality_config(bootstrap: str, tmp_path, prefix: str, **quality):
    """One binary model, three segments, 10 s windows, nothing else configured."""
    section = {"window": "10s", "horizon": "7d", "grace": "10m", "views": ["1h", "24h"], "settle": "1s"}
    section.update(quality)
    path = make_config(tmp_path, prefix, models={"churn": CHURN}, quality=section, drift={}, invariants={},
                       experiments={}, alerts={"evaluation_interval": "1s", "rules": [], "sinks": []})
    config = load(path)
    asyncio.run(ensure_topics(bootstrap, config))
    return path, config


def send(bootstrap: str, config, messages) -> int:
    return asyncio.run(send_messages(bootstrap, config, list(messages)))


def seg_label(segment: tuple) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(segment))


def truth_by_window(tally) -> dict[tuple[str, str, float], object]:
    """(version, segment label, window start) -> QualityTruth."""
    return {(v, seg_label(s), start): q for (m, v, s, start), q in tally.quality.items() if m == "churn"}


def quality_summaries(bootstrap: str, config) -> dict[tuple, dict]:
    """The newest quality_summary (by offset) per (version, segment, window_start), schema-checked."""
    check = validator("quality_summary.v1.json")  # contract.SCHEMA_FILES has no "quality_summary" kind
    latest: dict[tuple, tuple[int, dict]] = {}
    for partition, offset, _, value in read_topic_sync(bootstrap, config.topics.summaries):
        r = orjson.loads(value)
        if r.get("type") != "quality_summary":
            continue
        check(r)
        key = (r["version"], r["segment"], r["window_start"])
        if key not in latest or offset > latest[key][0]:
            latest[key] = (offset, r)
    return {k: r for k, (_, r) in latest.items()}


def quality(samples: dict, name: str, **labels) -> float | None:
    """One gauge's value, None when the series is absent."""
    hits = [v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items())]
    assert len(hits) <= 1, (name, labels, hits)
    return hits[0] if hits else None


def view_cut(samples: dict, version: str, segment: str) -> float:
    """End of the latest complete quality window the gauges of (version, segment) describe."""
    end = quality(samples, "prodlens_quality_window_end_timestamp_seconds", model="churn", version=version,
                  segment=segment)
    assert end is not None, (version, segment)
    return end


def truth_in_view(tally, version: str, segment: str, cut: float, span: float):
    """Merged truth of the windows whose end lies in (cut - span, cut] (segment "__all__": every segment)."""
    return tally.truth("churn", version, None if segment == "__all__" else {"device": segment.split("=")[1]},
                       since=cut - max(span, WINDOW) - WINDOW + 1e-6, until=cut - WINDOW + 1e-6)


def keys_of(tally) -> list[tuple[str, str]]:
    versions = sorted({v for (m, v, _) in tally.predictions if m == "churn"})
    return [(v, s) for v in versions for s in (*SEGMENTS, "__all__")]


# ---------------------------------------------------------------------------------------------------
def test_late_labels_update_their_window_and_survive_a_kill(kafka_bootstrap, unique_name, tmp_path):
    """Labels 1-6 days late in event time land in their prediction's 10 s window; a SIGKILL in the
    middle of the feedback stream loses nothing and counts nothing twice."""
    path, config = quality_config(kafka_bootstrap, tmp_path, unique_name)
    log = tmp_path / "worker.log"
    worker = Worker(path, kafka_bootstrap, log).start()
    scenario = Scenario(models=("churn",), batch=50, outcome_share=0.0, missing_share=0.0, truth_window=WINDOW,
                        feedback={"churn": FeedbackSpec(kinds=("label",), label_share=0.5, delay_median=2 * DAY,
                                                        delay_sigma=0.5, max_delay=6 * DAY)})
    app = SimulatedApp(config, seed=31, scenario=scenario)
    n_predictions = 3000
    send(kafka_bootstrap, config, app.messages(n_predictions, start=START, rate=75))   # 40 s: 4 windows
    tally = app.tally
    truth = truth_by_window(tally)
    assert sum(q.n for q in truth.values()) == n_predictions and all(q.labelled == 0 for q in truth.values())

    # Phase 1, predictions only: every window is known, nothing is labelled yet.
    def unlabelled_windows():
        got = quality_summaries(kafka_bootstrap, config)
        return all(k in got for k in truth) and got
    before = wait_for(unlabelled_windows, timeout=60, what="a quality_summary per window before labels")
    for key, q in truth.items():
        assert before[key]["predictions"] == q.n, key
        assert before[key]["labelled"] == 0, key
    samples = worker.metrics()
    for version, segment in keys_of(tally):
        assert quality(samples, "prodlens_label_coverage_ratio", model="churn", version=version,
                       segment=segment, view="24h") == 0.0
    assert metric(samples, "prodlens_feedback_joined_total", model="churn") == 0

    # Phase 2, the labels (event time 1-6 days after their predictions), as single-event messages.
    feedback = list(app.drain_feedback())
    assert feedback and all(m.topic_kind == "feedback" for m in feedback)
    first, rest = feedback[: len(feedback) // 3], feedback[len(feedback) // 3:]
    assert min(m.timestamp for m in feedback) > START + 40 + 3600   # really late: hours to days
    send(kafka_bootstrap, config, first)
    wait_for(lambda: metric(worker.metrics(), "prodlens_feedback_joined_total", model="churn") >= len(first),
             what="first labels joined")
    time.sleep(2.5)  # a checkpoint of every stage covers the first third
    # Paced in small batches (one producer each) so the kill lands while labels are still arriving.
    paced = lambda: [send(kafka_bootstrap, config, rest[i:i + 20]) for i in range(0, len(rest), 20)]  # noqa: E731
    producer = threading.Thread(target=paced)
    producer.start()
    at_kill = wait_for(lambda: (c := metric(worker.metrics(), "prodlens_feedback_joined_total", model="churn"))
                       > len(first) and c, interval=0.02, what="the rest of the labels flowing")
    worker.kill()  # SIGKILL: in-flight state and outputs since the last checkpoint are lost from memory
    producer.join()
    assert at_kill < len(feedback), "the worker joined everything before the kill: not a mid-stream kill"

    restarted = Worker(path, kafka_bootstrap, log).start()
    try:
        wait_for(lambda: metric(restarted.metrics(), "prodlens_feedback_joined_total", model="churn")
                 >= len(feedback), timeout=90, what="restarted worker joined every label")
        assert "restored" in log.read_text()

        def labelled_windows():
            got = quality_summaries(kafka_bootstrap, config)
            return all(got.get(k, {}).get("labelled") == q.labelled for k, q in truth.items()) and got
        after = wait_for(labelled_windows, timeout=60, what="every window's labelled n equal to the truth")
        time.sleep(3)  # anything still in flight (a replayed duplicate) would show up by now
        after = quality_summaries(kafka_bootstrap, config)
        samples = restarted.metrics()
        # Exactly the truth: every label joined once, every window's n and accuracy as sent.
        # The feedback topic holds each label once (no producer retry duplicated one), so any
        # excess below is the pipeline counting twice.
        assert len(read_topic_sync(kafka_bootstrap, config.topics.feedback)) == len(feedback)
        assert metric(samples, "prodlens_feedback_joined_total", model="churn") == tally.feedback == len(feedback)
        assert metric(samples, "prodlens_feedback_orphaned_total") == 0
        for key, q in truth.items():
            r = after[key]
            assert (r["predictions"], r["labelled"]) == (q.n, q.labelled), key
            acc = r["metrics"]["accuracy"]
            assert acc["n"] == q.labelled and acc["value"] == pytest.approx(q.labelled_correct / q.labelled), key
            assert r["metrics"]["label_coverage"]["value"] == pytest.approx(q.labelled / q.n), key
            assert r["revision"] > before[key]["revision"]  # the same window, re-evaluated when its labels came
        for version, segment in keys_of(tally):
            cut = view_cut(samples, version, segment)
            for view, span in (("window", WINDOW), ("24h", DAY)):
                t = truth_in_view(tally, version, segment, cut, span)
                labels = dict(model="churn", version=version, segment=segment, view=view)
                assert quality(samples, "prodlens_quality_n", metric="accuracy", **{"class": ""}, **labels) \
                    == t.labelled, labels
                assert quality(samples, "prodlens_quality", metric="accuracy", **{"class": ""}, **labels) \
                    == pytest.approx(t.labelled_correct / t.labelled), labels
                assert quality(samples, "prodlens_label_coverage_ratio", **labels) == pytest.approx(t.labelled / t.n)
    finally:
        assert restarted.stop() == 0, log.read_text()[-3000:]


# ---------------------------------------------------------------------------------------------------
def test_degraded_segment_is_flagged_by_its_interval(kafka_bootstrap, unique_name, tmp_path):
    """v1 on device=ios answers right only 55 % of the time (concept drift: scores unchanged); its
    accuracy interval lies wholly below the others', which all cover the true 0.85.

    confidence 0.999: about 8 (version, segment) intervals are checked to cover their true accuracy
    (the simulator's 0.85, or the label-weighted mix for v1/__all__); at 0.999 each misses with
    probability 1e-3, so all cover with probability ≈ 0.99 for an arbitrary seed (the seed is fixed,
    so the test is deterministic either way)."""
    path, config = quality_config(kafka_bootstrap, tmp_path, unique_name, confidence=0.999)
    worker = Worker(path, kafka_bootstrap, tmp_path / "worker.log").start()
    try:
        degraded, healthy = 0.55, 0.85
        scenario = Scenario(models=("churn",), batch=50, outcome_share=0.0, missing_share=0.0,
                            versions=(("v1", "primary", 0.6), ("v2", "canary", 0.4)), truth_window=WINDOW,
                            label_share=1.0, feedback_delay_mean=30.0, accuracy={"churn": healthy},
                            degrade={"model": "churn", "version": "v1", "segment": {"device": "ios"},
                                     "accuracy": degraded, "after": START})
        app = SimulatedApp(config, seed=32, scenario=scenario)
        messages = list(app.messages(5000, start=START, rate=100)) + list(app.drain_feedback())  # 5 windows
        send(kafka_bootstrap, config, sorted(messages, key=lambda m: m.timestamp))
        tally = app.tally
        wait_for(lambda: metric(worker.metrics(), "prodlens_feedback_joined_total", model="churn") >= tally.feedback,
                 what="every label joined")

        def settled():
            s = worker.metrics()
            for version, segment in keys_of(tally):
                cut = quality(s, "prodlens_quality_window_end_timestamp_seconds", model="churn", version=version,
                              segment=segment)
                n = quality(s, "prodlens_quality_n", model="churn", version=version, segment=segment,
                            metric="accuracy", view="24h", **{"class": ""})
                if cut is None or n is None or n != truth_in_view(tally, version, segment, cut, DAY).labelled:
                    return None
            return s
        samples = wait_for(settled, timeout=60, what="the 24h views holding every label")

        def interval(version, segment):
            labels = dict(model="churn", version=version, segment=segment, metric="accuracy", view="24h",
                          **{"class": ""})
            return tuple(quality(samples, name, **labels) for name in
                         ("prodlens_quality_lower", "prodlens_quality", "prodlens_quality_upper"))

        bad_lo, bad_value, bad_hi = interval("v1", "device=ios")
        assert bad_lo <= degraded <= bad_hi
        assert bad_hi < healthy
        others = [(v, s) for v, s in keys_of(tally) if (v, s) not in {("v1", "device=ios"), ("v1", "__all__")}]
        assert len(others) == 6
        for version, segment in others:
            lo, value, hi = interval(version, segment)
            assert lo <= healthy <= hi, (version, segment, lo, hi)
            assert bad_hi < lo, (version, segment)       # the degraded interval is wholly below every other
        # v1/__all__ mixes the degraded segment in: it covers the label-weighted mix of true accuracies
        cut = view_cut(samples, "v1", "__all__")
        ios = truth_in_view(tally, "v1", "device=ios", cut, DAY).labelled
        total = truth_in_view(tally, "v1", "__all__", cut, DAY).labelled
        mix = (degraded * ios + healthy * (total - ios)) / total
        lo, _, hi = interval("v1", "__all__")
        assert lo <= mix <= hi
        # the error-rate view is the same interval mirrored
        err = quality(samples, "prodlens_quality_lower", model="churn", version="v1", segment="device=ios",
                      metric="error_rate", view="24h", **{"class": ""})
        assert err == pytest.approx(1 - bad_hi)
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]


# ---------------------------------------------------------------------------------------------------
def test_estimated_accuracy_matches_realized_once_labels_are_in(kafka_bootstrap, unique_name, tmp_path):
    """Calibrated scores, no concept drift, labels minutes to hours late: the CBPE estimate is there
    before any label, and once every label is in the realized accuracy of the same windows lies
    within the estimate's stated interval.

    Criterion: realized accuracy (the simulator's truth over ALL predictions of the view, which the
    pipeline's labelled accuracy equals exactly since every prediction is labelled) lies in
    [estimated_lower, estimated_upper]. The CBPE interval is a prediction interval for exactly that
    quantity (a Poisson-binomial sum of the calibrated confidences) at quality.confidence = 0.99; 8
    (version, segment) keys are checked in each of two views."""
    path, config = quality_config(kafka_bootstrap, tmp_path, unique_name, confidence=0.99)
    worker = Worker(path, kafka_bootstrap, tmp_path / "worker.log").start()
    try:
        scenario = Scenario.stationary(models=("churn",), truth_window=WINDOW, batch=50,
                                       versions=(("v1", "primary", 0.6), ("v2", "canary", 0.4)),
                                       accuracy={"churn/v1": 0.85, "churn/v2": 0.78},
                                       feedback={"churn": FeedbackSpec(kinds=("label",), label_share=1.0,
                                                                       delay_median=3600.0, delay_sigma=0.5,
                                                                       max_delay=DAY)})
        app = SimulatedApp(config, seed=33, scenario=scenario)
        predictions = list(app.messages(4000, start=START, rate=100))   # 4 windows, 40 s
        assert all(m.topic_kind == "prediction" for m in predictions)   # every label comes later
        send(kafka_bootstrap, config, predictions)
        tally = app.tally

        def estimated():
            s = worker.metrics()
            return all(quality(s, "prodlens_quality_estimated", model="churn", version=v, segment=seg,
                               metric="accuracy", view="24h") is not None for v, seg in keys_of(tally)) and s
        before = wait_for(estimated, timeout=60, what="CBPE estimates before any label")
        for version, segment in keys_of(tally):
            labels = dict(model="churn", version=version, segment=segment, view="24h")
            assert quality(before, "prodlens_label_coverage_ratio", **labels) == 0.0
            cut = view_cut(before, version, segment)
            assert quality(before, "prodlens_quality_estimated_n", metric="accuracy", **labels) == \
                truth_in_view(tally, version, segment, cut, DAY).n
        feedback = list(app.drain_feedback())
        send(kafka_bootstrap, config, feedback)
        wait_for(lambda: metric(worker.metrics(), "prodlens_feedback_joined_total", model="churn") >= len(feedback),
                 what="every label joined")

        def settled():
            s = worker.metrics()
            for version, segment in keys_of(tally):
                cut = view_cut(s, version, segment)
                for view, span in (("window", WINDOW), ("24h", DAY)):
                    t = truth_in_view(tally, version, segment, cut, span)
                    if quality(s, "prodlens_quality_n", model="churn", version=version, segment=segment,
                               metric="accuracy", view=view, **{"class": ""}) != t.labelled or t.labelled != t.n:
                        return None
            return s
        samples = wait_for(settled, timeout=60, what="every label in the quality views")
        checked = 0
        for version, segment in keys_of(tally):
            cut = view_cut(samples, version, segment)
            for view, span in (("window", WINDOW), ("24h", DAY)):
                t = truth_in_view(tally, version, segment, cut, span)
                realized = t.correct / t.n
                labels = dict(model="churn", version=version, segment=segment, metric="accuracy", view=view)
                assert quality(samples, "prodlens_quality", **{"class": ""}, **labels) == pytest.approx(realized)
                est = quality(samples, "prodlens_quality_estimated", **labels)
                lo = quality(samples, "prodlens_quality_estimated_lower", **labels)
                hi = quality(samples, "prodlens_quality_estimated_upper", **labels)
                assert est == pytest.approx(t.confidence / t.n, rel=1e-3), labels   # Σ max-probability / n
                assert lo <= realized <= hi, (labels, lo, realized, hi)
                assert hi - lo < 0.2 and math.isfinite(est)
                checked += 1
        assert checked == 16
        for version in ("v1", "v2"):   # calibrated, no drift: the estimate is trusted
            assert quality(samples, "prodlens_quality_estimate_trusted", model="churn", version=version) == 1.0
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]


# ---------------------------------------------------------------------------------------------------
def test_ingest_and_join_analysis_in_separate_workers(kafka_bootstrap, unique_name, tmp_path):
    """`prodlens run --stages ingest` and `--stages join,analysis`: two consumer groups, each
    stage in its own process; the quality results are the same exact truth as with one worker."""
    path, config = quality_config(kafka_bootstrap, tmp_path, unique_name)
    ingest = Worker(path, kafka_bootstrap, tmp_path / "ingest.log", args=("--stages", "ingest")).start()
    downstream = Worker(path, kafka_bootstrap, tmp_path / "downstream.log", args=("--stages", "join,analysis"))
    try:
        downstream.start()
        scenario = Scenario(models=("churn",), batch=1, outcome_share=0.0, missing_share=0.0, truth_window=WINDOW,
                            label_share=0.5, feedback_delay_mean=20.0)
        app = SimulatedApp(config, seed=33, scenario=scenario)
        messages = list(app.messages(1500, start=START, rate=75)) + list(app.drain_feedback())
        send(kafka_bootstrap, config, sorted(messages, key=lambda m: m.timestamp))
        tally = app.tally
        truth = truth_by_window(tally)
        wait_for(lambda: metric(downstream.metrics(), "prodlens_feedback_joined_total", model="churn")
                 >= tally.feedback, what="every label joined by the join worker")

        def labelled_windows():
            got = quality_summaries(kafka_bootstrap, config)
            return all(got.get(k, {}).get("labelled") == q.labelled for k, q in truth.items()) and got
        got = wait_for(labelled_windows, timeout=60, what="every window's labelled n equal to the truth")
        for key, q in truth.items():
            assert (got[key]["predictions"], got[key]["labelled"]) == (q.n, q.labelled), key
        ingest_samples, downstream_samples = ingest.metrics(), downstream.metrics()
        # each process did its own stages only
        assert metric(ingest_samples, "prodlens_events_consumed_total", topic=config.topics.predictions) == 1500
        assert not any(name.startswith(("prodlens_feedback_joined", "prodlens_quality"))
                       for name, _ in ingest_samples)
        assert not any(name == "prodlens_events_consumed_total" and v for (name, _), v in downstream_samples.items())
        assert metric(downstream_samples, "prodlens_feedback_joined_total", model="churn") == tally.feedback
        assert "consumer group " + config.ingest.group_id + ".ingest" in (tmp_path / "ingest.log").read_text()
    finally:
        assert downstream.stop() == 0, (tmp_path / "downstream.log").read_text()[-3000:]
        assert ingest.stop() == 0, (tmp_path / "ingest.log").read_text()[-3000:]
