"""Experiments end to end (issue 6): canary ladders, shadow comparison, A/B and A/A tests through a
real broker and a real ``prodlens run`` worker, with the simulator as the application.

The canary tests close the loop a real deployment has: the app (the simulator) routes the canary's
share of units, the pipeline decides on the decisions topic, and the app follows those decisions with
:class:`CanaryTraffic` between send phases — traffic shifts without a deploy. The ladder runs on
event time, so short step durations make it quick.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time

import orjson
import pytest

from harness import REPO, Worker, load, make_config, metric, read_topic_sync, wait_for
from prodlens.contract import validator
from prodlens.experiments.assignment import CanaryTraffic
from prodlens.simulate import CanarySpec, ExperimentSpec, FeedbackSpec, Scenario, ShadowSpec, SimulatedApp
from prodlens.streams.kafka import ensure_topics
from prodlens.streams.producer import send_messages

pytestmark = [pytest.mark.broker, pytest.mark.slow]

WINDOW = 10.0
CHURN = {"output": "binary", "classes": ["stay", "churn"], "positive_class": "churn",
         "features": {"tenure_months": "numeric", "monthly_spend": "numeric", "plan": "categorical",
                      "autopay": "boolean"},
         "segments": {"device": {"values": ["ios", "android", "web"]}}}
INTENT = {"output": "multiclass", "classes": ["billing", "tech", "sales", "other"],
          "features": {"length": "numeric", "language": "categorical"},
          "segments": {"locale": {"top_k": 4}}}
# Event time here runs ~20x faster than wall time, and ingest hands the join its records in batches
# (<= 500 rows or the 1 s tick): a second of wall time is ~20 s of event time, so the grace for
# feedback that overtakes its prediction must cover it (real deployments: minutes, the default 10m).
QUALITY = {"window": f"{WINDOW:g}s", "horizon": "5m", "grace": "2m"}
STEPS = [0.05, 0.1, 0.2, 0.5, 1.0]
PHASE_S = 20.0          # event time per send phase: two windows, and each step's min_duration
PER_PHASE = 3000        # predictions per phase (all labelled ~1 s later)
LADDER = {"model": "churn", "baseline": "v1", "canary": "v2", "steps": STEPS,
          "min_duration": f"{PHASE_S:g}s",
          "metrics": [{"name": "accuracy", "tolerance": 0.1}],         # 10 % relative margin
          "latency": {"quantile": 0.95, "tolerance": 1.5, "min_samples": 100},
          "max_invariant_violations": None, "alpha": 0.05, "tuning_n": 4000,
          "min_samples_for_rollback": 50, "evaluate_every": "1s"}


def start_time() -> float:
    """A window-aligned event time in the recent past."""
    return math.floor((time.time() - 900) / WINDOW) * WINDOW


def setup(tmp_path, prefix, bootstrap, models, experiments):
    path = make_config(tmp_path, prefix, models=models, quality=QUALITY, experiments=experiments)
    config = load(path)
    asyncio.run(ensure_topics(bootstrap, config))
    worker = Worker(path, bootstrap, tmp_path / "worker.log").start()
    return path, config, worker


def send(bootstrap, config, messages) -> None:
    asyncio.run(send_messages(bootstrap, config, messages))


def records(bootstrap, topic, rtype=None) -> list[dict]:
    """Records of ``topic`` (of type ``rtype``) in offset order per partition."""
    rows = sorted(read_topic_sync(bootstrap, topic), key=lambda m: (m[0], m[1]))
    out = [orjson.loads(v) for _, _, _, v in rows]
    return [r for r in out if rtype is None or r.get("type") == rtype]


def worker_log(tmp_path) -> str:
    return (tmp_path / "worker.log").read_text()[-3000:]


# ------------------------------------------------------------------------------------ canary
def run_ladder(tmp_path, prefix, bootstrap, canary_accuracy: float, max_phases: int, seed: int):
    """Send phases of traffic whose canary share follows the decisions topic until the ladder ends.

    Returns (decisions with the share in force when each was taken, shares sent per phase,
    predictions sent per version, the worker's metrics, the config path)."""
    path, config, worker = setup(tmp_path, prefix, bootstrap, {"churn": CHURN},
                                 {"canaries": {"churn_v2": LADDER}})
    validate = validator("decision.v1.json")
    traffic = CanaryTraffic("churn_v2", "v1", "v2", initial=STEPS[0])
    canary = CanarySpec(baseline="v1", canary="v2", share=traffic.share, accuracy=canary_accuracy)
    app = SimulatedApp(config, seed, Scenario.stationary(
        models=("churn",), canaries={"churn": canary}, accuracy={"churn": 0.9},
        feedback={"churn": FeedbackSpec(label_share=1.0, delay_median=1.0, delay_sigma=0.2, max_delay=3.0)}))
    t = start_time()
    applied: list[tuple[float, dict]] = []     # (share before the decision, decision record)
    shares_sent: list[float] = []
    try:
        for _ in range(max_phases):
            canary.share = traffic.share
            shares_sent.append(canary.share)
            send(bootstrap, config, [*app.messages(PER_PHASE, start=t, rate=PER_PHASE / PHASE_S),
                                     *app.drain_feedback()])
            t += PHASE_S
            sent = app.tally.predictions_by("churn", "v1") + app.tally.predictions_by("churn", "v2")

            def settled():
                # the ladder has evaluated every label sent so far (each prediction is labelled once,
                # so baseline n + canary n counts them all), or it has ended
                recs = records(bootstrap, config.topics.decisions)
                if recs and recs[-1]["status"] in ("rolled_back", "promoted"):
                    return recs
                for r in reversed(recs):
                    for m in r["metrics"]:
                        if m["baseline_n"] + m["canary_n"] >= sent:
                            return recs
                return None

            recs = wait_for(settled, timeout=120, interval=0.5, what=f"a decision over {sent} labels")
            for r in recs[len(applied):]:
                validate(r)                       # the published contract holds
                applied.append((traffic.share, r))
                traffic.apply(r)
            if traffic.status in ("rolled_back", "promoted"):
                break
        samples = worker.metrics()
    finally:
        assert worker.stop() == 0, worker_log(tmp_path)
    sent_by = {v: app.tally.predictions_by("churn", v) for v in ("v1", "v2")}
    return applied, shares_sent, sent_by, samples, path


def test_worse_canary_rolled_back_before_twenty_percent(kafka_bootstrap, unique_name, tmp_path):
    applied, shares, sent_by, samples, path = run_ladder(tmp_path, unique_name, kafka_bootstrap,
                                                         canary_accuracy=0.65, max_phases=6, seed=11)
    rollbacks = [(share, r) for share, r in applied if r["action"] == "rollback"]
    assert rollbacks, [(s, r["action"], r["reasons"]) for s, r in applied]
    share, rollback = rollbacks[0]
    assert share < 0.2 and max(shares) < 0.2              # rolled back before it reached 20 %
    assert all(r["traffic"] < 0.2 for _, r in applied)
    assert rollback["status"] == "rolled_back" and rollback["traffic"] == 0.0
    (acc,) = rollback["metrics"]
    assert acc["metric"] == "accuracy" and acc["verdict"] == "worse"
    lo, hi = acc["harm_ci"]
    assert lo > 0 and hi >= 0.1 and lo <= acc["harm"] <= hi   # confidently worse by more than the margin
    assert acc["canary_mean"] < acc["baseline_mean"]
    assert acc["canary_n"] <= sent_by["v2"] and acc["baseline_n"] <= sent_by["v1"]
    assert any("accuracy: canary worse" in reason for reason in rollback["reasons"])
    # the canary gauges show the terminal decision
    lad = {"ladder": "churn_v2", "model": "churn", "baseline": "v1", "canary": "v2"}
    assert metric(samples, "prodlens_canary_traffic", **lad) == 0.0
    assert metric(samples, "prodlens_canary_status", status="rolled_back", **lad) == 1.0
    assert metric(samples, "prodlens_canary_status", status="running", **lad) == 0.0
    assert metric(samples, "prodlens_canary_decision", action="rollback", **lad) == 1.0
    assert metric(samples, "prodlens_canary_harm", metric="accuracy", **lad) == pytest.approx(acc["harm"])
    assert metric(samples, "prodlens_canary_harm_ci_low", metric="accuracy", **lad) > 0
    assert metric(samples, "prodlens_canary_tolerance", metric="accuracy", **lad) == 0.1
    assert metric(samples, "prodlens_canary_decision_timestamp_seconds", **lad) == rollback["timestamp"]


def test_equal_canary_promoted_to_full_traffic(kafka_bootstrap, unique_name, tmp_path):
    applied, shares, sent_by, samples, path = run_ladder(tmp_path, unique_name, kafka_bootstrap,
                                                         canary_accuracy=0.9, max_phases=14, seed=12)
    actions = [r["action"] for _, r in applied]
    assert "rollback" not in actions, [(s, r["reasons"]) for s, r in applied]
    promotions = [(share, r) for share, r in applied if r["action"] == "promote"]
    # one promotion per step, in order, each to the next share; the last one to 100 %
    assert [s for s, _ in promotions] == STEPS
    assert [r["traffic"] for _, r in promotions] == STEPS[1:] + [1.0]
    final = promotions[-1][1]
    assert final["status"] == "promoted" and final["traffic"] == 1.0
    assert all(m["verdict"] == "non_inferior" and m["harm_ci"][1] < 0.1 for m in final["metrics"])
    # the app really shifted traffic up the ladder: shares sent never decreased and walked every step
    assert shares == sorted(shares) and set(shares) == set(STEPS)
    lad = {"ladder": "churn_v2", "model": "churn", "baseline": "v1", "canary": "v2"}
    assert metric(samples, "prodlens_canary_traffic", **lad) == 1.0
    assert metric(samples, "prodlens_canary_status", status="promoted", **lad) == 1.0
    assert metric(samples, "prodlens_canary_step", **lad) == len(STEPS) - 1
    # latency (p95 over the windows of each step): the same law for both versions, never blocking;
    # the 100 % step has no baseline traffic left to compare with, so it may have no latency check
    latencies = [r["latency"] for _, r in promotions[:-1]
                 if r["latency"] and r["latency"]["verdict"] != "insufficient_data"]
    assert latencies and all(lat["verdict"] == "non_inferior" and 0.67 < lat["ratio"] < 1.5
                             for lat in latencies)
    if final["latency"] and final["latency"].get("ratio") is not None:
        assert metric(samples, "prodlens_canary_latency_ratio", **lad) == final["latency"]["ratio"]


# ------------------------------------------------------------------------------------ shadow
def test_shadow_disagreement_within_its_interval(kafka_bootstrap, unique_name, tmp_path):
    path, config, worker = setup(tmp_path, unique_name, kafka_bootstrap, {"churn": CHURN},
                                 {"shadows": {"churn_v3": {"model": "churn", "primary": "v1", "shadow": "v3",
                                                           "pair_horizon": "10s", "label_horizon": "30s",
                                                           "evaluate_every": "1s"}}})
    app = SimulatedApp(config, 21, Scenario.stationary(
        models=("churn",), versions=(("v1", "primary", 1.0),),
        shadows=[ShadowSpec("churn", primary="v1", shadow="v3", disagreement=0.05)],
        feedback={"churn": FeedbackSpec(label_share=0.5, delay_median=1.0, delay_sigma=0.2, max_delay=3.0)}))
    try:
        send(kafka_bootstrap, config, [*app.messages(4000, start=start_time(), rate=100.0),
                                       *app.drain_feedback()])
        pairs, disagreements = app.tally.shadow_pairs("churn")
        assert pairs == 4000 and disagreements == 200          # exactly 5 % injected
        lab = {"model": "churn", "version": "v3", "primary_version": "v1", "segment": "__all__"}
        samples = wait_for(lambda: (s := worker.metrics()) and
                           metric(s, "prodlens_shadow_pairs", **lab) == pairs and s,
                           timeout=60, what="every shadow pair analysed")
    finally:
        assert worker.stop() == 0, worker_log(tmp_path)
    rate = metric(samples, "prodlens_shadow_disagreement_rate", **lab)
    low = metric(samples, "prodlens_shadow_disagreement_rate_ci_low", **lab)
    high = metric(samples, "prodlens_shadow_disagreement_rate_ci_high", **lab)
    assert rate == pytest.approx(disagreements / pairs)       # every pair counted once
    assert low < 0.05 < high and high - low < 0.03
    # per segment too: the segments' pairs add up to the whole, each interval holds its own rate
    by_segment = {dict(ls)["segment"]: v for (n, ls), v in samples.items()
                  if n == "prodlens_shadow_pairs" and dict(ls)["segment"] != "__all__"}
    assert sum(by_segment.values()) == pairs and set(by_segment) == {
        f"device={d}" for d in ("ios", "android", "web")}
    for segment in by_segment:
        seg = dict(lab, segment=segment)
        r = metric(samples, "prodlens_shadow_disagreement_rate", **seg)
        assert metric(samples, "prodlens_shadow_disagreement_rate_ci_low", **seg) <= r <= \
            metric(samples, "prodlens_shadow_disagreement_rate_ci_high", **seg)
    # labelled pairs: both sides' accuracy is reported
    assert metric(samples, "prodlens_shadow_labelled", **lab) > 0
    for side in ("primary", "shadow"):
        assert 0.5 < metric(samples, "prodlens_shadow_accuracy", side=side, **lab) <= 1.0
    shadow_records = records(kafka_bootstrap, config.topics.summaries, "shadow_result")
    assert shadow_records and shadow_records[-1]["model"] == "churn"


# ------------------------------------------------------------------------------------ A/B and A/A
AB_METRICS = [{"name": "conversion", "aggregation": "any"}, {"name": "revenue", "aggregation": "sum"}]


def test_ab_lift_significant_aa_not_and_report(kafka_bootstrap, unique_name, tmp_path):
    """A true 50 % conversion lift (churn's "checkout") is found significant; an A/A test on the
    other model's traffic (intent's "aa") is not. That an A/A test's false-positive rate stays
    near alpha over repeated runs is checked by the pure tests
    (tests/experiments/test_stats.py::test_aa_false_positives_near_alpha_and_true_lift_found and
    tests/analysis/test_experiments_analyser.py::test_aa_false_positives_near_alpha)."""
    experiments = {"attribution": {"horizon": "1h"},
                   "ab": {"checkout": {"model": "churn", "variants": {"control": 0.5, "treatment": 0.5},
                                       "metrics": AB_METRICS, "tuning_n": 6000, "evaluate_every": "1s"},
                          "aa": {"model": "intent", "variants": {"a": 0.5, "b": 0.5},
                                 "metrics": AB_METRICS, "tuning_n": 6000, "evaluate_every": "1s"}}}
    path, config, worker = setup(tmp_path, unique_name, kafka_bootstrap, {"churn": CHURN, "intent": INTENT},
                                 experiments)
    app = SimulatedApp(config, 31, Scenario.stationary(
        models=("churn", "intent"), versions=(("v1", "primary", 1.0),), label_share=0.0,
        experiments=[ExperimentSpec("checkout", "churn", variants=("control", "treatment"),
                                    lift={"treatment": 0.5}, outcome_delay_median=2.0, outcome_max_delay=10.0),
                     ExperimentSpec("aa", "intent", variants=("a", "b"),
                                    outcome_delay_median=2.0, outcome_max_delay=10.0)]))
    messages = [*app.messages(12000, start=start_time(), rate=200.0), *app.drain_feedback()]
    tally = app.tally
    arms = {(e, v): tally.experiments[(e, v)] for e, v in
            [("checkout", "control"), ("checkout", "treatment"), ("aa", "a"), ("aa", "b")]}
    try:
        # Predictions (exposures) and outcomes interleaved as the app emits them: they travel
        # through different topics, so an outcome often reaches the join stage before its unit's
        # exposure; it must wait for it, not be lost.
        send(kafka_bootstrap, config, messages)

        def units_in(s) -> bool:
            return all(metric(s, "prodlens_experiment_units", experiment=e, variant=v, metric="conversion")
                       == arm.units for (e, v), arm in arms.items())

        wait_for(lambda: units_in(worker.metrics()), timeout=60, what="every exposed unit counted")

        def converted(s) -> bool:
            return units_in(s) and all(
                metric(s, "prodlens_experiment_mean", experiment=e, variant=v, metric="conversion")
                == pytest.approx(arm.conversions / arm.units) for (e, v), arm in arms.items())

        samples = wait_for(lambda: (s := worker.metrics()) and converted(s) and s, timeout=60,
                           what="every outcome joined")
    finally:
        assert worker.stop() == 0, worker_log(tmp_path)
    for (e, v), arm in arms.items():      # per-unit revenue = Σ revenue sent / units exposed
        assert metric(samples, "prodlens_experiment_mean", experiment=e, variant=v, metric="revenue") == \
            pytest.approx(arm.revenue / arm.units, rel=1e-9)
        assert metric(samples, "prodlens_experiment_exposures", experiment=e, variant=v) == arm.exposures
    ab = {"experiment": "checkout", "variant": "treatment", "metric": "conversion"}
    assert metric(samples, "prodlens_experiment_significant", **ab) == 1.0
    assert metric(samples, "prodlens_experiment_lift_relative_ci_low", **ab) > 0
    assert metric(samples, "prodlens_experiment_lift_relative_ci_low", **ab) < 0.5 < \
        metric(samples, "prodlens_experiment_lift_relative_ci_high", **ab)     # the true lift is inside
    assert metric(samples, "prodlens_experiment_decision", experiment="checkout", decision="significant_win") == 1
    assert metric(samples, "prodlens_experiment_srm_alarm", experiment="checkout") == 0
    for m in ("conversion", "revenue"):
        assert metric(samples, "prodlens_experiment_significant", experiment="aa", variant="b", metric=m) == 0.0
    assert metric(samples, "prodlens_experiment_decision", experiment="aa",
                  decision="no_significant_difference") == 1
    assert metric(samples, "prodlens_experiment_srm_alarm", experiment="aa") == 0

    # the report a person runs against the broker: the table on stdout, the HTML page on disk
    html = tmp_path / "out.html"
    run = subprocess.run([sys.executable, "-m", "prodlens.cli", "report", "experiment", "checkout",
                          "--config", str(path), "--broker", kafka_bootstrap, "--html", str(html)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "Experiment checkout" in out and "Decision: significant_win" in out
    assert "treatment" in out and "control (baseline)" in out
    units = arms[("checkout", "treatment")].units
    assert f"{units:,}" in out                            # n per variant, as the metrics show it
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table" in page and "checkout" in page
    assert "significant_win" in page and f"{units:,}" in page
    aa = subprocess.run([sys.executable, "-m", "prodlens.cli", "report", "experiment", "aa",
                         "--config", str(path), "--broker", kafka_bootstrap],
                        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert aa.returncode == 0 and "Decision: no_significant_difference" in aa.stdout, aa.stdout + aa.stderr
