"""ExperimentAnalyser: canary ladders fed simulated per-window partials, A/B (SRM, A/A), shadows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import fastjsonschema
import numpy as np
import orjson
import pytest

from prodlens.analysis.experiments import (METRICS, ExperimentAnalyser, decision_from_record, quality_moments,
                                           result_from_record, shadow_result_from_record)
from prodlens.config import load_config
from prodlens.experiments.assignment import CanaryTraffic
from prodlens.experiments.report import canary_text, experiment_html, experiment_text, shadow_text
from prodlens.experiments.shadow import ShadowStats
from prodlens.experiments.stats import ExperimentStats, Moments
from prodlens.quality.classification import confusion_from_counts
from prodlens.quality.windows import ModelSpec, WindowQuality
from prodlens.sketches.ddsketch import DDSketch
from prodlens.summary import WindowSummary

ROOT = Path(__file__).resolve().parents[2]
VALIDATE_DECISION = fastjsonschema.compile(json.loads((ROOT / "schemas" / "decision.v1.json").read_text()))
SPEC = ModelSpec(positive_label="leave", negative_label="stay")
T0 = 1_700_000_000.0
STEPS = [0.01, 0.05, 0.2, 0.5, 1.0]


def make_config(canary: dict | None = None, ab: dict | None = None, shadows: dict | None = None):
    experiments = {}
    if canary is not None:
        experiments["canaries"] = {"churn_v2": {
            "model": "churn", "baseline": "v1", "canary": "v2",
            "steps": [{"traffic": s, "min_duration": "5m"} for s in STEPS],
            "metrics": [{"name": "error_rate", "tolerance": 0.1}],
            "latency": {"quantile": 0.95, "tolerance": 1.2, "min_samples": 200},
            "tuning_n": 100_000, "evaluate_every": 0, **canary}}
    if ab is not None:
        experiments["ab"] = ab
    if shadows is not None:
        experiments["shadows"] = shadows
    return load_config(data={
        "models": {"churn": {"output": "binary", "classes": ["stay", "leave"], "positive_class": "leave",
                             "segments": ["country"]}},
        "window": {"length": 60, "allowed_lateness": 30},
        "quality": {"window": "60s", "horizon": "10m", "grace": "1m"},
        "experiments": experiments})


def quality_state(n: int, errors: int, predictions: int | None = None) -> dict:
    wq = WindowQuality(SPEC)
    wq.classification = confusion_from_counts(["stay", "leave"], [[n - errors, errors], [0, 0]])
    wq.feedback.add_predictions(predictions if predictions is not None else n)
    return wq.to_dict()


class LadderSim:
    """Feeds the analyser one minute of traffic per window: quality partials (binomial errors) and
    window summaries (lognormal latency) from two join/ingest partitions and two segments; the
    canary's share follows the decisions through CanaryTraffic."""

    def __init__(self, analyser, p_base, p_can, latency_factor=1.0, per_window=20_000, seed=0,
                 violations_at: int | None = None):
        self.a = analyser
        self.p = {"v1": p_base, "v2": p_can}
        self.lat = {"v1": 1.0, "v2": latency_factor}
        self.per_window = per_window
        self.rng = np.random.default_rng(seed)
        self.traffic = CanaryTraffic("churn_v2", "v1", "v2", initial=STEPS[0])
        self.decisions: list[dict] = []
        self.shares: list[float] = []
        self.w = 0
        self.violations_at = violations_at

    def window(self) -> None:
        ws = T0 + 60 * self.w
        now = ws + 95
        share = self.traffic.share
        self.shares.append(share)
        n_can = int(self.rng.binomial(self.per_window, share))
        for version, n in (("v1", self.per_window - n_can), ("v2", n_can)):
            for part in range(4):
                n_s = n // 4 + (part < n % 4)
                source, segment = f"prodlens.joins:{part % 2}", f"country={'US' if part < 2 else 'DE'}"
                errors = int(self.rng.binomial(n_s, self.p[version]))
                self.a.update(b"churn", {"type": "quality_partial", "source": source, "seq": self.w,
                                         "model": "churn", "version": version, "segment": segment,
                                         "window_start": ws, "window_end": ws + 60,
                                         "state": quality_state(n_s, errors)}, now)
                if n_s:
                    sketch = DDSketch()
                    sketch.update_many(self.lat[version] * self.rng.lognormal(3.0, 0.4, min(n_s, 150)))
                    summary = WindowSummary(count=n_s, latency=sketch).to_dict()
                    self.a.update(b"churn", {"type": "window_summary", "schema_version": 1,
                                             "source": f"prodlens.predictions:{part % 2}", "seq": self.w,
                                             "model": "churn", "version": version, "segment": segment,
                                             "window_start": ws, "window_end": ws + 60, "summary": summary,
                                             "fields": None}, now)
        if self.violations_at is not None and self.w >= self.violations_at:
            self.a.update(b"churn", {"type": "invariant_window", "source": "prodlens.predictions:0",
                                     "seq": self.w, "model": "churn", "version": "v2", "segment": "country=US",
                                     "invariant": "score_in_range", "window_start": ws, "window_end": ws + 60,
                                     "violations": 3, "checked": 100, "failed": 3}, now)
        for topic, key, record in self.a.tick(now + 3):
            if topic == self.a.config.topics.decisions:
                assert key == b"churn"
                VALIDATE_DECISION(orjson.loads(orjson.dumps(record)))
                self.decisions.append(record)
                self.traffic.apply(record)
        self.w += 1

    def run(self, max_windows: int = 400) -> "LadderSim":
        while self.w < max_windows and self.traffic.status not in ("rolled_back", "promoted"):
            self.window()
        return self


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_canary_worse_by_the_margin_is_rolled_back_before_20_percent(seed):
    a = ExperimentAnalyser(make_config(canary={}))
    sim = LadderSim(a, p_base=0.10, p_can=0.11, seed=seed).run()   # relative harm = tolerance 0.1
    last = sim.decisions[-1]
    assert last["action"] == "rollback" and last["status"] == "rolled_back" and last["traffic"] == 0.0
    assert max(sim.shares) < 0.2
    assert any("error_rate: canary worse" in r for r in last["reasons"])
    assert sim.traffic.share == 0.0
    # before the first verdict the ladder said explicitly that it had not enough data
    assert sim.decisions[0]["action"] == "insufficient_data"


def test_equal_canary_is_promoted_to_100_percent():
    a = ExperimentAnalyser(make_config(canary={}))
    sim = LadderSim(a, p_base=0.10, p_can=0.10, seed=7).run()
    last = sim.decisions[-1]
    assert last["status"] == "promoted" and last["traffic"] == 1.0, last["reasons"]
    promotes = [d for d in sim.decisions if d["action"] == "promote"]
    assert [d["traffic"] for d in promotes] == [0.05, 0.2, 0.5, 1.0, 1.0]
    assert not any(d["action"] == "rollback" for d in sim.decisions)
    assert sim.traffic.share == 1.0 and sim.traffic.version_for("any-user") == "v2"
    # each step lasted at least its min_duration in event time
    times = [d["timestamp"] for d in promotes]
    assert all(b - a_ >= 300 for a_, b in zip(times, times[1:]))
    # the gauges show the final state
    fams = {f.name: f for f in a.collect()}
    status = {s.labels["status"]: s.value for s in fams["prodlens_canary_status"].samples}
    assert status["promoted"] == 1.0 and status["rolled_back"] == 0.0
    assert canary_text(decision_from_record(last)).count("PROMOTE") == 1


def test_latency_regression_rolls_back():
    a = ExperimentAnalyser(make_config(canary={}))
    sim = LadderSim(a, p_base=0.10, p_can=0.10, latency_factor=2.0, seed=3).run()
    last = sim.decisions[-1]
    assert last["action"] == "rollback"
    assert any("latency p95 regression" in r for r in last["reasons"])
    assert last["latency"]["ratio"] == pytest.approx(2.0, rel=0.15)


def test_invariant_violations_roll_back():
    a = ExperimentAnalyser(make_config(canary={}))
    sim = LadderSim(a, p_base=0.10, p_can=0.10, seed=4, violations_at=2).run()
    last = sim.decisions[-1]
    assert last["action"] == "rollback" and max(sim.shares) == 0.01
    assert any("invariant violations on v2" in r for r in last["reasons"])


def test_blue_green_is_one_full_step():
    cfg = load_config(data={
        "models": {"churn": {"output": "binary", "classes": ["stay", "leave"]}},
        "experiments": {"canaries": {"bg": {"model": "churn", "strategy": "blue_green", "baseline": "v1",
                                            "canary": "v2", "metrics": ["error_rate"]}}}})
    run = ExperimentAnalyser(cfg).ladders["bg"]
    assert [s.traffic for s in run.spec.ladder.steps] == [1.0]
    assert run.placeholder().action == "insufficient_data" and run.placeholder().status == "pending"


def test_snapshot_restore_mid_ladder_decides_identically():
    cfg = make_config(canary={})
    straight = LadderSim(ExperimentAnalyser(cfg), 0.10, 0.10, seed=11).run()
    a = ExperimentAnalyser(cfg)
    sim = LadderSim(a, 0.10, 0.10, seed=11)
    for _ in range(30):
        sim.window()
    state = orjson.loads(orjson.dumps(a.to_dict()))
    b = ExperimentAnalyser(cfg)
    b.restore(state)
    assert orjson.dumps(b.to_dict()) == orjson.dumps(a.to_dict())
    sim.a = b
    sim.run()
    assert sim.decisions == straight.decisions


def test_partials_are_idempotent_and_merge_over_sources():
    cfg = make_config(canary={})
    a = ExperimentAnalyser(cfg)
    run = a.ladders["churn_v2"]
    rec = {"type": "quality_partial", "source": "prodlens.joins:0", "seq": 5, "model": "churn", "version": "v2",
           "segment": "country=US", "window_start": T0, "window_end": T0 + 60, "state": quality_state(100, 7)}
    a.update(b"churn", rec, 1.0)
    a.update(b"churn", rec, 1.0)                                   # re-delivered
    a.update(b"churn", {**rec, "seq": 4, "state": quality_state(500, 1)}, 1.0)   # older: ignored
    a.update(b"churn", {**rec, "source": "prodlens.joins:1", "state": quality_state(50, 3)}, 1.0)
    total = run.quality.total("v2", run.start_window)["error_rate"]
    assert (total.n, total.sum) == (150, 10.0)


def test_quality_moments_match_the_accumulators():
    wq = WindowQuality(SPEC)
    wq.add_rows([("label", "leave", None, None, None, 0.8, None, None, True, True, True, 5.0),
                 ("label", "stay", None, None, None, 0.7, None, None, True, True, True, 9.0),
                 ("label", "stay", None, None, None, 0.2, None, None, True, True, True, 1.0)])
    wq.record_predictions([{"score": 0.8}, {"score": 0.7}, {"score": 0.2}])
    m = quality_moments(wq.to_dict(), SPEC, ["error_rate", "accuracy", "brier", "log_loss", "complaint_rate"])
    assert (m["error_rate"].n, m["error_rate"].sum) == (3, 1.0)     # the buffered rows were flushed
    assert m["accuracy"].mean == pytest.approx(2 / 3)
    expected = [(1 - 0.8) ** 2, 0.7 ** 2, 0.2 ** 2]
    assert m["brier"].mean == pytest.approx(np.mean(expected)) and m["brier"].variance == pytest.approx(
        np.var(expected, ddof=1))
    assert (m["complaint_rate"].n, m["complaint_rate"].sum) == (3, 0.0)


# ------------------------------------------------------------------------------------ A/B

AB = {"checkout": {"variants": {"control": 0.5, "treatment": 0.5},
                   "metrics": [{"name": "conversion", "aggregation": "any"}], "evaluate_every": 0}}


def exp_partial(name, exposures, conversions, source="prodlens.joins:0", seq=1):
    st = ExperimentStats()
    for v, n in exposures.items():
        st.add_exposure(v, n)
        st.metrics.setdefault("conversion", {})[v] = Moments.from_counts(conversions[v], n)
    return {"type": "experiment_partial", "source": source, "seq": seq, "experiment": name, "state": st.to_dict()}


def test_srm_alarm_and_result_record_renders():
    a = ExperimentAnalyser(make_config(ab=AB))
    # two join partitions; together 10 000 vs 9 400 exposures on a 50/50 split: chi2 p ~ 1.6e-5
    a.update(b"experiment/checkout", exp_partial("checkout", {"control": 6000, "treatment": 5000},
                                                 {"control": 600, "treatment": 520}), 10.0)
    a.update(b"experiment/checkout", exp_partial("checkout", {"control": 4000, "treatment": 4400},
                                                 {"control": 400, "treatment": 450}, "prodlens.joins:1"), 10.0)
    assert a.tick(11.0) == []                                    # not settled yet
    out = a.tick(13.0)
    assert len(out) == 1
    topic, key, record = out[0]
    assert topic == a.config.topics.summaries and key == b"experiment/checkout"
    result = result_from_record(orjson.loads(orjson.dumps(record)))
    assert result.decision == "srm_alarm" and result.srm.alarm
    assert result.exposures == {"control": 10000, "treatment": 9400}
    assert "mismatch" in experiment_text(result) and "srm_alarm" in experiment_html(result)
    fams = {f.name: f for f in a.collect()}
    assert fams["prodlens_experiment_srm_alarm"].samples[0].value == 1.0
    # a balanced split does not alarm
    b = ExperimentAnalyser(make_config(ab=AB))
    b.update(b"", exp_partial("checkout", {"control": 10000, "treatment": 9900},
                              {"control": 1000, "treatment": 990}), 10.0)
    (_, _, rec), = b.tick(20.0)
    assert rec["result"]["srm"]["status"] == "ok" and rec["result"]["decision"] == "no_significant_difference"


def _aa_false_positive(seed: int, sequential: bool, looks: int) -> bool:
    ab = {"aa": {**AB["checkout"], "sequential": sequential, "tuning_n": 20_000}}
    a = ExperimentAnalyser(make_config(ab=ab))
    rng = np.random.default_rng(seed)
    n = {"control": 0, "treatment": 0}
    c = {"control": 0, "treatment": 0}
    for look in range(looks):
        for v in n:
            k = int(rng.binomial(20_000 // looks, 0.5))   # exposures per arm this look, fair split
            n[v] += k
            c[v] += int(rng.binomial(k, 0.1))
        a.update(b"", exp_partial("aa", n, c, seq=look), float(look * 10))
        (_, _, rec), = a.tick(look * 10 + 5.0)
        if rec["result"]["decision"] in ("significant_win", "significant_loss"):
            return True
    return False


def test_aa_false_positives_near_alpha():
    seeds = range(300)
    fixed = np.mean([_aa_false_positive(s, sequential=False, looks=1) for s in seeds])
    se = math.sqrt(0.05 * 0.95 / len(seeds))
    assert abs(fixed - 0.05) < 3 * se, fixed            # one look, fixed horizon: alpha
    peeking = np.mean([_aa_false_positive(s, sequential=True, looks=8) for s in range(150)])
    assert peeking <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 150), peeking   # 8 looks, anytime-valid


# ------------------------------------------------------------------------------------ shadows


def shadow_partial(source, segment, pairs, disagreements, seq=1):
    st = ShadowStats("classification")
    st.pairs, st.disagreements = pairs, disagreements
    st.latency_primary.update_many([10.0, 12.0, 14.0])
    st.latency_shadow.update_many([11.0, 13.0, 30.0])
    return {"type": "shadow_partial", "source": source, "seq": seq, "model": "churn", "primary_version": "v1",
            "shadow_version": "v3", "segment": segment, "state": st.to_dict()}


def test_shadow_disagreement_reported_within_ci():
    covered = 0
    for seed in range(50):
        rng = np.random.default_rng(seed)
        a = ExperimentAnalyser(make_config(shadows={"s": {"model": "churn", "shadow": "v3", "evaluate_every": 0}}))
        total_d = total_n = 0
        for source in ("prodlens.joins:0", "prodlens.joins:1"):
            for segment in ("country=US", "country=DE"):
                d = int(rng.binomial(1000, 0.05))
                total_d, total_n = total_d + d, total_n + 1000
                a.update(b"churn", shadow_partial(source, segment, 1000, d), 1.0)
        out = a.tick(5.0)
        records = {r["segment"]: r for _, _, r in out}
        assert set(records) == {"country=US", "country=DE", "__all__"}
        key, result = shadow_result_from_record(orjson.loads(orjson.dumps(records["__all__"])))
        assert key == "churn|__all__" and result.pairs == 4000
        assert result.disagreement.value == total_d / total_n
        covered += result.disagreement.ci_low <= 0.05 <= result.disagreement.ci_high
        if seed == 0:
            fams = {f.name: f for f in a.collect()}
            rates = {s.labels["segment"]: s for s in fams["prodlens_shadow_disagreement_rate"].samples}
            assert rates["__all__"].value == total_d / total_n
            assert rates["__all__"].labels == {"model": "churn", "version": "v3", "primary_version": "v1",
                                               "segment": "__all__"}
            assert "churn|__all__" in shadow_text({key: result})
    assert covered >= 44   # nominal 95 %: about 47.5 of 50


def test_unconfigured_and_malformed_records_are_counted():
    a = ExperimentAnalyser(make_config(ab=AB, shadows={"s": {"model": "churn", "shadow": "v3"}}))
    a.update(b"", exp_partial("other", {"a": 1, "b": 1}, {"a": 0, "b": 0}), 1.0)
    a.update(b"", {"type": "experiment_partial", "experiment": "checkout"}, 1.0)
    a.update(b"", {**shadow_partial("j:0", "__all__", 10, 1), "shadow_version": "v9"}, 1.0)
    assert a.ignored == {"experiment_partial|unconfigured": 1, "experiment_partial|malformed": 1,
                         "shadow_partial|unconfigured": 1}
    fams = {f.name: f for f in a.collect()}
    assert sum(s.value for s in fams["prodlens_experiment_records_ignored"].samples
               if s.name.endswith("_total")) == 3


def test_metrics_catalogue_covers_every_sample():
    a = ExperimentAnalyser(make_config(canary={}, ab=AB, shadows={"s": {"model": "churn", "evaluate_every": 0}}))
    LadderSim(a, 0.1, 0.1, seed=5).run(max_windows=3)
    a.update(b"", exp_partial("checkout", {"control": 100, "treatment": 100}, {"control": 10, "treatment": 12}),
             1e10)
    a.update(b"", shadow_partial("j:0", "country=US", 100, 5), 1e10)
    st = ShadowStats("regression")
    st.update_pair(1.0, 1.5)
    a.update(b"", {**shadow_partial("j:0", "__all__", 0, 0), "model": "churn", "shadow_version": "v4",
                   "state": st.to_dict()}, 1e10)
    a.tick(1e10 + 100)
    names = set()
    for fam in a.collect():
        for s in fam.samples:
            base = fam.name if fam.type == "gauge" else fam.name + "_total"
            if s.name != base:
                continue
            names.add(base)
            assert tuple(s.labels) == METRICS[base], base
    assert {"prodlens_canary_status", "prodlens_experiment_mean", "prodlens_shadow_disagreement_rate",
            "prodlens_shadow_diff_mean"} <= names


def test_canary_traffic_follows_decisions_in_order():
    t = CanaryTraffic("churn_v2", "v1", "v2", initial=0.01)
    units = [f"u{i}" for i in range(2000)]
    on_canary = {u for u in units if t.version_for(u) == "v2"}
    assert t.apply({"type": "canary_decision", "ladder": "churn_v2", "action": "promote", "status": "running",
                    "step": 1, "traffic": 0.2, "timestamp": 10.0})
    now_canary = {u for u in units if t.version_for(u) == "v2"}
    assert on_canary <= now_canary and abs(len(now_canary) / 2000 - 0.2) < 0.03   # monotone
    assert not t.apply({"type": "canary_decision", "ladder": "churn_v2", "traffic": 0.01, "timestamp": 5.0})
    assert t.apply({"type": "canary_decision", "ladder": "churn_v2", "action": "rollback", "status": "rolled_back",
                    "step": 1, "traffic": 0.0, "timestamp": 20.0})
    assert {t.version_for(u) for u in units} == {"v1"}
    assert CanaryTraffic.from_dict(t.to_dict()).to_dict() == t.to_dict()
    with pytest.raises(ValueError, match="traffic"):
        t.apply({"type": "canary_decision", "ladder": "churn_v2", "traffic": 2.0, "timestamp": 30.0})


def test_ladder_gauges_only_from_the_partition_that_sees_the_model():
    """Every summaries partition builds every ladder; only the one owning the model's key (it gets
    the records) exports canary gauges, so two partitions never export the same series."""
    cfg = make_config(canary={})
    idle, owner = ExperimentAnalyser(cfg), ExperimentAnalyser(cfg)
    assert not [s for s in idle.samples() if s.name.startswith("prodlens_canary_")]
    owner.update(b"churn", {"type": "quality_partial", "source": "prodlens.joins:0", "seq": 1, "model": "churn",
                            "version": "v1", "segment": "country=US", "window_start": T0, "window_end": T0 + 60,
                            "state": quality_state(10, 1)}, T0 + 70)
    status = {s.labels["status"]: s.value for s in owner.samples() if s.name == "prodlens_canary_status"}
    assert status["pending"] == 1.0   # the placeholder: explicitly no decision yet
    assert not [s for s in idle.samples() if s.name.startswith("prodlens_canary_")]


def test_ladder_starts_at_the_earliest_canary_window_whatever_arrives_first():
    """Two join partitions publish their windows in any order: a canary window that arrives after a
    later one still counts, and so does the baseline's data of that window."""
    a = ExperimentAnalyser(make_config(canary={}))

    def put(version, w, n, errors, source="prodlens.joins:0"):
        a.update(b"churn", {"type": "quality_partial", "source": source, "seq": w, "model": "churn",
                            "version": version, "segment": "country=US", "window_start": T0 + 60 * w,
                            "window_end": T0 + 60 * w + 60, "state": quality_state(n, errors)}, T0)

    put("v2", 1, 200, 20, source="prodlens.joins:1")   # the later window first
    put("v1", 1, 2000, 200, source="prodlens.joins:1")
    put("v2", 0, 300, 30)
    put("v1", 0, 3000, 300)
    run = a.ladders["churn_v2"]
    assert run.start_window == T0 and run.step_window == T0 and run.ladder.step_started_at == T0
    (topic, key, decision), = [m for m in a.tick(T0 + 10) if m[0] == a.config.topics.decisions]
    (m,) = decision["metrics"]
    assert (m["baseline_n"], m["canary_n"]) == (5000, 500)
