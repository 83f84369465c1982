"""Invariants and alerting end to end: real broker, real ``prodlens run`` worker, real Alertmanager.

What a user sees is asserted: the alerts topic (schemas/alert.v1.json), the worker's /metrics,
a webhook receiver checking the HMAC signature, and Alertmanager's own API.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import fastjsonschema
import orjson
import pytest
import yaml

from harness import REPO, Worker, load, make_config, metric, read_topic_sync, wait_for
from prodlens.alerts.sinks import SIGNATURE_HEADER, verify_signature
from prodlens.broker import free_port
from prodlens.simulate import BoolAsString, FeedbackSpec, Flicker, Scenario, ShadowSpec, SimulatedApp
from prodlens.streams.kafka import ensure_topics
from prodlens.streams.producer import send_messages

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ALERT_SCHEMA = fastjsonschema.compile(json.loads((REPO / "schemas" / "alert.v1.json").read_text()))
WINDOW = 10.0

# One small binary model with one segment attribute: few series, each with enough labels per window.
MODELS = {"churn": {
    "output": "binary", "classes": ["stay", "churn"], "positive_class": "churn",
    "features": {"tenure_months": "numeric", "monthly_spend": "numeric", "plan": "categorical",
                 "autopay": "boolean"},
    "segments": {"device": {"values": ["ios", "android", "web"]}}}}

# Labels arrive 1-3 s of event time after their prediction: a quality window is complete
# (all its labels in) before the next one closes.
FAST_LABELS = {"churn": FeedbackSpec(kinds=("label",), label_share=1.0, delay_median=1.0, delay_sigma=0.2,
                                     max_delay=3.0)}


def config_for(tmp_path: Path, prefix: str, *, alerts: dict, invariants: dict | None = None) -> Path:
    overrides = dict(models=MODELS, alerts=alerts,
                     quality={"window": f"{WINDOW:g}s", "horizon": "60s", "settle": "1s"})
    if invariants is not None:
        overrides["invariants"] = invariants
    return make_config(tmp_path, prefix, **overrides)


def aligned_start(back: float = 3600.0) -> float:
    return (int(time.time() - back) // int(WINDOW)) * WINDOW


def send(bootstrap: str, config, messages) -> None:
    asyncio.run(send_messages(bootstrap, config, list(messages)))


def alert_events(bootstrap: str, config) -> list[dict]:
    """Every record of the alerts topic, each validated against schemas/alert.v1.json."""
    out = []
    for _, _, key, value in read_topic_sync(bootstrap, config.topics.alerts):
        record = ALERT_SCHEMA(orjson.loads(value))
        assert key == record["fingerprint"].encode()
        out.append(record)
    return out


def distinct(events: list[dict]) -> list[dict]:
    """One per event_id (at-least-once delivery may repeat a transition with the same id)."""
    seen, out = set(), []
    for e in events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out.append(e)
    return out


def of_rule(events: list[dict], rule: str, status: str | None = None, **labels) -> list[dict]:
    return [e for e in distinct(events) if e["rule"] == rule and (status is None or e["status"] == status)
            and all(e["labels"].get(k) == v for k, v in labels.items())]


# ---------------------------------------------------------------------------------- 2. degrade
ACCURACY_RULE = {
    "name": "AccuracyLow", "metric": "prodlens_quality",
    "match": {"model": "churn", "metric": "accuracy", "view": "window", "segment": {"not": "__all__"}},
    "condition": "below", "threshold": 0.75, "resolve_threshold": 0.85, "min_samples": 40,
    "severity": "critical",
    "summary": "accuracy of {model} {version} in {segment} is {$value:.3f}",
    "description": "{$metric} {metric} {$value:.3f} < {$threshold} (n={$n:.0f})"}


def test_degraded_segment_fires_once_resolves_once_and_does_not_flap(kafka_bootstrap, unique_name, tmp_path):
    path = config_for(tmp_path, unique_name, alerts={"evaluation_interval": "1s", "window": f"{WINDOW:g}s",
                                                     "rules": [ACCURACY_RULE]})
    config = load(path)
    asyncio.run(ensure_topics(kafka_bootstrap, config))
    t0 = aligned_start()
    per_phase = 3  # windows
    rate = 60.0    # predictions per second of event time: ~100 labelled predictions per version x segment x window
    scenario = Scenario(
        versions=(("v1", "primary", 0.5), ("v2", "challenger", 0.5)), batch=50, units=1 << 60,
        missing_share=0.0, outcome_share=0.0, feedback=FAST_LABELS,
        # v1 is good (0.95); v2 sits on the fire threshold for the whole test: its window accuracy
        # oscillates around 0.75 and never reaches the resolve threshold 0.85 (hysteresis).
        accuracy={"churn/v1": 0.95, "churn/v2": 0.75},
        degrade={"model": "churn", "version": "v1", "segment": {"device": "ios"}, "accuracy": 0.4,
                 "after": t0 + per_phase * WINDOW, "recover_after": t0 + 2 * per_phase * WINDOW})
    app = SimulatedApp(config, seed=5, scenario=scenario)
    n = int(per_phase * WINDOW * rate)
    worker = Worker(path, kafka_bootstrap, tmp_path / "worker.log").start()
    try:
        def v1_ios(status):
            return lambda: of_rule(alert_events(kafka_bootstrap, config), "AccuracyLow", status,
                                   version="v1", segment="device=ios")

        # Phase 1: healthy. Phase 2: v1 on ios degrades -> it fires.
        send(kafka_bootstrap, config, app.messages(n, start=t0, rate=rate))
        send(kafka_bootstrap, config, app.messages(n, start=t0 + per_phase * WINDOW, rate=rate))
        fired = wait_for(v1_ios("firing"), timeout=90, what="AccuracyLow firing for v1 device=ios")
        # Phase 3: it recovers -> it resolves.
        send(kafka_bootstrap, config, app.messages(n, start=t0 + 2 * per_phase * WINDOW, rate=rate))
        send(kafka_bootstrap, config, app.drain_feedback())
        resolved = wait_for(v1_ios("resolved"), timeout=90, what="AccuracyLow resolved for v1 device=ios")
        samples = worker.metrics()
        time.sleep(3)  # a few more evaluations: nothing else may happen to v1/ios
        events = alert_events(kafka_bootstrap, config)
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]

    # Exactly one firing, then exactly one resolved event for the degraded key.
    assert len(of_rule(events, "AccuracyLow", "firing", version="v1", segment="device=ios")) == 1
    assert len(of_rule(events, "AccuracyLow", "resolved", version="v1", segment="device=ios")) == 1
    f, r = fired[0], resolved[0]
    assert f["fingerprint"] == r["fingerprint"]
    assert f["labels"]["model"] == "churn" and f["labels"]["metric"] == "accuracy"
    assert f["labels"]["alertname"] == "AccuracyLow" and f["severity"] == "critical"
    assert f["metric"] == "prodlens_quality" and f["threshold"] == 0.75
    assert f["value"] < 0.6  # observed accuracy of the degraded window (truth 0.4)
    assert f["annotations"]["summary"] == f"accuracy of churn v1 in device=ios is {f['value']:.3f}"
    assert "< 0.75" in f["annotations"]["description"]
    assert r["threshold"] == 0.85 and r["value"] >= 0.85 and r["ends_at"] >= r["starts_at"] == f["starts_at"]
    # The healthy v1 segments never fire.
    assert {e["labels"]["segment"] for e in of_rule(events, "AccuracyLow", version="v1")} == {"device=ios"}
    # v2 oscillates around the threshold: at most one firing per series, never resolved (no flapping).
    v2 = of_rule(events, "AccuracyLow", version="v2")
    for segment in {e["labels"]["segment"] for e in v2}:
        assert len(of_rule(v2, "AccuracyLow", "firing", segment=segment)) == 1, segment
    assert of_rule(v2, "AccuracyLow", "resolved") == []
    # ...and it did oscillate: the quality summaries hold v2 windows on both sides of 0.75.
    accuracies = v2_window_accuracies(kafka_bootstrap, config)
    assert min(accuracies) < 0.75 < max(accuracies) < 0.85, accuracies
    assert v2, "v2 below the threshold should have fired once"
    assert metric(samples, "prodlens_alert_transitions_total", alertname="AccuracyLow", state="resolved") >= 1


def v2_window_accuracies(bootstrap: str, config) -> list[float]:
    """Accuracy of v2's complete windows per segment, from the quality summaries (highest revision)."""
    latest: dict[tuple, tuple[int, float]] = {}
    for _, _, _, value in read_topic_sync(bootstrap, config.topics.summaries):
        r = orjson.loads(value)
        if r.get("type") != "quality_summary" or r.get("version") != "v2" or r.get("segment") == "__all__":
            continue
        acc = (r.get("metrics") or {}).get("accuracy")
        if not isinstance(acc, dict) or (acc.get("n") or 0) < 40:
            continue
        key = (r["segment"], r["window_start"])
        if key not in latest or r.get("revision", 0) >= latest[key][0]:
            latest[key] = (r.get("revision", 0), acc["value"])
    return [v for _, v in latest.values()]


# ---------------------------------------------------------------------------------- 3. invariants
INVARIANTS = {"churn": [
    {"name": "autopay_is_boolean", "kind": "type", "field": "features.autopay", "type": "boolean"},
    {"name": "shadow_agrees", "kind": "agreement", "reference": {"version": "v1"}, "candidate": {"role": "shadow"},
     "field": "output.label", "min_agreement": 0.95, "min_pairs": 20, "pair_timeout": "5s"},
    {"name": "no_flicker", "kind": "stability", "unit": "unit_id", "field": "output.label", "max_flips": 1,
     "within": "5s", "where": 'role == "primary"'},  # shadows echo the flicker: judge the primary
    # Controls: never violated by this traffic.
    {"name": "plan_known", "kind": "enum", "field": "features.plan", "values": ["basic", "pro", "team"]},
    {"name": "label_present", "kind": "not_null", "fields": ["output.label"]},
]}
VIOLATED = {"autopay_is_boolean", "shadow_agrees", "no_flicker"}
INVARIANT_RULE = {
    "name": "InvariantViolated", "metric": "prodlens_invariant_violations_total", "condition": "above",
    "threshold": 0, "severity": "warning",
    "summary": "{invariant} violated by {model} {version} in {segment}",
    "description": "{$value:.0f} violations of {invariant}"}


def invariant_scenario() -> Scenario:
    return Scenario(
        versions=(("v1", "primary", 1.0),), batch=50, units=1 << 60, missing_share=0.0, outcome_share=0.0,
        label_share=0.0,
        shadows=[ShadowSpec("churn", primary="v1", shadow="v3", disagreement=0.2)],
        violations=[BoolAsString("churn", "autopay", share=0.02, version="v1"),
                    Flicker("churn", "v1", every=10.0, flips=3, within=4.0)])


def test_injected_invariant_violations_are_counted_and_alerted(kafka_bootstrap, unique_name, tmp_path):
    path = config_for(tmp_path, unique_name, invariants=INVARIANTS,
                      alerts={"evaluation_interval": "1s", "rules": [INVARIANT_RULE]})
    config = load(path)
    asyncio.run(ensure_topics(kafka_bootstrap, config))
    app = SimulatedApp(config, seed=11, scenario=invariant_scenario())
    t0 = aligned_start()
    worker = Worker(path, kafka_bootstrap, tmp_path / "worker.log").start()
    try:
        send(kafka_bootstrap, config, app.messages(1500, start=t0, rate=30.0))

        def violated():
            s = worker.metrics()
            got = {dict(ls)["invariant"] for (name, ls), v in s.items()
                   if name == "prodlens_invariant_violations_total" and v > 0}
            return got >= VIOLATED and s

        samples = wait_for(violated, timeout=90, what="violations of the three injected invariants")
        events = wait_for(lambda: (e := alert_events(kafka_bootstrap, config)) and
                          {x["labels"]["invariant"] for x in of_rule(e, "InvariantViolated", "firing")} >= VIOLATED
                          and e, timeout=60, what="InvariantViolated firing for each violated invariant")
        # Every window closes once the partitions go quiet (idle_close): then every prediction
        # has been checked, by ingest (per-event kinds, stability) and by the join (agreement).
        sent = sum(app.tally.predictions.values())
        pairs, disagreements = app.tally.shadow_pairs("churn")

        def all_checked():
            s = worker.metrics()
            return (metric(s, "prodlens_invariant_checked_total", invariant="label_present") == sent and
                    metric(s, "prodlens_invariant_checked_total", invariant="shadow_agrees") == pairs and s)

        samples = wait_for(all_checked, timeout=60, what=f"{sent} predictions and {pairs} pairs checked")
        time.sleep(2)  # a few more alert evaluations on the final counts
        events = alert_events(kafka_bootstrap, config)
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]

    def total(name, invariant):
        return metric(samples, name, model="churn", invariant=invariant)

    violated = {inv["name"] for inv in INVARIANTS["churn"]
                if total("prodlens_invariant_violations_total", inv["name"]) > 0}
    assert violated == VIOLATED  # exactly the injected ones
    for inv in INVARIANTS["churn"]:  # every invariant did check events
        assert total("prodlens_invariant_checked_total", inv["name"]) > 0, inv["name"]
    tally = app.tally
    # The type check counts each string-valued boolean once.
    injected = sum(n for (kind, m, v, _), n in tally.injected.items() if kind == "boolean_as_string")
    assert injected > 0
    assert total("prodlens_invariant_violations_total", "autopay_is_boolean") == injected
    # Stability: max(0, flips - max_flips) per burst.
    assert total("prodlens_invariant_violations_total", "no_flicker") == \
        sum(max(0, flips - 1) for (_, _, _, flips, _) in tally.flickers)
    # Agreement: every v1/v3 pair checked; 20 % disagree -> each window with enough pairs is breached.
    assert total("prodlens_invariant_checked_total", "shadow_agrees") == pairs
    assert disagreements / pairs == pytest.approx(0.2, abs=0.01)
    # Alerts: one firing event per violated invariant series, none for the controls, schema-valid.
    firing = of_rule(events, "InvariantViolated", "firing")
    assert {e["labels"]["invariant"] for e in firing} == VIOLATED
    for e in firing:
        assert e["labels"]["model"] == "churn" and e["value"] > 0 and e["threshold"] == 0
        assert e["annotations"]["summary"].startswith(f"{e['labels']['invariant']} violated by churn ")
    assert len({e["fingerprint"] for e in firing}) == len(firing)  # no alert fired twice
    assert metric(samples, "prodlens_alerts_firing", alertname="InvariantViolated") == len(firing)


# ---------------------------------------------------------------------------------- 1. sinks
class WebhookReceiver:
    """A local HTTP endpoint recording every POST (path, headers, body)."""

    def __init__(self):
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append((self.path, dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    """A real Alertmanager (Debian package prometheus-alertmanager) with a no-op receiver."""

    def __init__(self, workdir: Path):
        self.binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        self.port = free_port()
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self):
        config = self.workdir / "alertmanager.yml"
        config.write_text(yaml.safe_dump({"route": {"receiver": "null", "group_wait": "1s"},
                                          "receivers": [{"name": "null"}]}))
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.path={self.workdir / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=open(self.workdir / "alertmanager.log", "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.get("/-/ready") is not None, timeout=30, what="alertmanager ready")
        return self

    def get(self, path: str):
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return orjson.loads(r.read()) if path.startswith("/api/") else r.read()
        except OSError:
            return None

    def __exit__(self, *exc):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


SECRET = "s3cret-for-the-test"


@pytest.mark.skipif(not (shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")),
                    reason="Alertmanager not installed (Debian package prometheus-alertmanager; CI installs it)")
def test_alert_reaches_alertmanager_and_signed_webhook(kafka_bootstrap, unique_name, tmp_path):
    with WebhookReceiver() as hook, Alertmanager(tmp_path) as am:
        rule = {**INVARIANT_RULE, "match": {"invariant": "autopay_is_boolean", "segment": "device=ios",
                                            "version": "v1"}}
        path = config_for(tmp_path, unique_name, invariants={"churn": INVARIANTS["churn"][:1]},
                          alerts={"evaluation_interval": "1s", "rules": [rule],
                                  "sinks": [{"kind": "webhook", "url": hook.url, "secret": SECRET},
                                            {"kind": "alertmanager", "url": am.url}]})
        config = load(path)
        asyncio.run(ensure_topics(kafka_bootstrap, config))
        app = SimulatedApp(config, seed=3, scenario=Scenario(
            versions=(("v1", "primary", 1.0),), batch=50, units=1 << 60, missing_share=0.0,
            outcome_share=0.0, label_share=0.0, violations=[BoolAsString("churn", "autopay", share=0.05)]))
        worker = Worker(path, kafka_bootstrap, tmp_path / "worker.log").start()
        try:
            send(kafka_bootstrap, config, app.messages(600, start=aligned_start(), rate=30.0))
            listed = wait_for(lambda: [a for a in am.get("/api/v2/alerts") or []
                                       if a["labels"].get("alertname") == "InvariantViolated"],
                              timeout=90, what="the alert listed by Alertmanager")
            wait_for(lambda: hook.received, timeout=30, what="the webhook POST")
            events = alert_events(kafka_bootstrap, config)
            samples = worker.metrics()
        finally:
            assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]

    # Alertmanager holds it as an active alert with the pipeline's labels and annotations.
    (alert,) = listed
    assert alert["status"]["state"] == "active"
    assert {k: alert["labels"][k] for k in ("model", "version", "segment", "invariant", "severity")} == {
        "model": "churn", "version": "v1", "segment": "device=ios", "invariant": "autopay_is_boolean",
        "severity": "warning"}
    assert alert["annotations"]["summary"] == "autopay_is_boolean violated by churn v1 in device=ios"
    # The webhook got the same event as the alerts topic, signed with the shared secret.
    (firing,) = of_rule(events, "InvariantViolated", "firing")
    path_, headers, body = hook.received[0]
    assert path_ == "/hook" and headers["Content-Type"] == "application/json"
    payload = ALERT_SCHEMA(orjson.loads(body))
    assert payload == firing
    assert headers["X-Prodlens-Event-Id"] == firing["event_id"]
    signature = headers[SIGNATURE_HEADER]
    assert verify_signature(body, signature, SECRET)
    assert not verify_signature(body, signature, "another secret")
    assert not verify_signature(body + b" ", signature, SECRET)
    assert metric(samples, "prodlens_alerts_firing", alertname="InvariantViolated", severity="warning") == 1


# ---------------------------------------------------------------------------------- 4. bad config
@pytest.mark.parametrize("rule, expected", [
    ({"name": "TypoMetric", "metric": "prodlens_qualty", "condition": "below", "threshold": 0.8},
     ["alerts.rules[0] ('TypoMetric').metric", "unknown metric 'prodlens_qualty'", "prodlens_quality"]),
    ({"name": "AccuracyAboveOne", "metric": "prodlens_quality", "match": {"metric": "accuracy"},
      "condition": "above", "threshold": 1.5},
     ["alerts.rules[0] ('AccuracyAboveOne').threshold", "never"]),
    ({"name": "NegativeViolations", "metric": "prodlens_invariant_violations_total", "condition": "below",
      "threshold": 0},
     ["alerts.rules[0] ('NegativeViolations').threshold", "never"]),
    ({"name": "Backwards", "metric": "prodlens_quality", "condition": "below", "threshold": 0.8,
      "resolve_threshold": 0.7},
     ["alerts.rules[0] ('Backwards').resolve_threshold"]),
], ids=["unknown-metric", "above-max", "below-min", "resolve-wrong-side"])
def test_bad_alert_rule_fails_run_at_start(kafka_bootstrap, unique_name, tmp_path, rule, expected):
    path = config_for(tmp_path, unique_name, alerts={"rules": [rule]})
    done = subprocess.run([sys.executable, "-m", "prodlens.cli", "run", "--config", str(path),
                           "--broker", kafka_bootstrap, "--metrics-port", str(free_port())],
                          capture_output=True, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, (done.stdout, done.stderr)
    for text in expected:
        assert text in done.stderr, (text, done.stderr)
    assert "Traceback" not in done.stderr
