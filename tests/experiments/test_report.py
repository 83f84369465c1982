"""Reports: text and self-contained HTML from result objects."""

from html.parser import HTMLParser

import numpy as np
import pytest

from prodlens.experiments.canary import CanaryConfig, CanaryLadder, CanaryMetric, CanaryStep
from prodlens.experiments.report import (
    canary_text, experiment_html, experiment_text, render_html, render_text, shadow_text)
from prodlens.experiments.shadow import ShadowMonitor
from prodlens.experiments.stats import (
    AnalysisConfig, ExperimentStats, MetricConfig, Moments, Sequential, analyze_experiment)


@pytest.fixture
def result():
    s = ExperimentStats()
    s.add_exposure("control", 3407)
    s.add_exposure("<b>treat</b>", 3461)
    s.moments("revenue", "control").merge(Moments.from_sums(3407, 1396.87, 52377.9767))
    s.moments("revenue", "<b>treat</b>").merge(Moments.from_sums(3461, 2422.7, 134698.29))
    s.moments("conversion", "control").merge(Moments.from_counts(300, 3407))
    s.moments("conversion", "<b>treat</b>").merge(Moments.from_counts(420, 3461))
    cfg = AnalysisConfig("pricing", ("control", "<b>treat</b>"),
                         (MetricConfig("conversion", "proportion"), MetricConfig("revenue")), sequential=None)
    return analyze_experiment(s, cfg)


def test_experiment_text_shows_the_dashboard_figures(result):
    text = experiment_text(result)
    for needle in ("Experiment pricing", "baseline control", "fixed horizon", "SRM: ok", "3,407", "3,461",
                   "conversion", "revenue", "+0.29 [+0.04538, +0.5346]", "+70.7% [-3.5%, +145.0%]",
                   "Decision: significant_win", "better", "chance to beat", "p (adjusted)"):
        assert needle in text, needle
    assert "8.81% [" in text  # 300 / 3407 with its Wilson interval


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text, self.attrs = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data):
        self.text.append(data)


def test_experiment_html_is_self_contained_and_escaped(result):
    page = experiment_html(result)
    p = _Collector()
    p.feed(page)
    assert page.startswith("<!DOCTYPE html>") and "table" in p.tags and "style" in p.tags
    assert "script" not in p.tags and "link" not in p.tags and "img" not in p.tags
    assert not any(v and ("http://" in v or "https://" in v) for _, v in p.attrs)
    assert "<b>treat</b>" not in page and "&lt;b&gt;treat&lt;/b&gt;" in page
    text = "".join(p.text)
    assert "significant_win" in text and "+70.7% [-3.5%, +145.0%]" in text and "SRM" in text


def test_sequential_and_srm_alarm_are_stated():
    s = ExperimentStats()
    s.add_exposure("a", 5400)
    s.add_exposure("b", 4600)
    s.moments("m", "a").merge(Moments.from_counts(500, 5400))
    s.moments("m", "b").merge(Moments.from_counts(460, 4600))
    r = analyze_experiment(s, AnalysisConfig("e", ("a", "b"), (MetricConfig("m", "proportion"),),
                                             sequential=Sequential(20000)))
    text = render_text(experiment=r)
    assert "sequential (anytime-valid, tuned for n = 20,000)" in text
    assert "SRM: mismatch" in text and "Decision: srm_alarm" in text
    assert "badge bad" in render_html(experiment=r)


def test_canary_and_shadow_sections():
    cfg = CanaryConfig("ranker", "v1", "v2", (CanaryStep(0.05), CanaryStep(1.0)),
                       (CanaryMetric("conversion", tolerance=0.1),), latency_tolerance=None)
    ladder = CanaryLadder(cfg)
    d = ladder.evaluate(10.0, {"conversion": Moments.from_counts(1000, 10000)},
                        {"conversion": Moments.from_counts(700, 10000)})
    text = canary_text(d)
    assert "ROLLBACK" in text and "conversion" in text and "worse" in text and "10.00%" in text
    m = ShadowMonitor("classification")
    rng = np.random.default_rng(0)
    for i in range(500):
        m.add_primary(f"p{i}", "churn", {"label": 1}, float(i), latency_ms=float(rng.exponential(10)))
        m.add_shadow(f"p{i}", "churn", {"label": int(rng.random() < 0.9)}, float(i), latency_ms=12.0)
    st = shadow_text(m.results())
    assert "churn" in st and "500" in st and "Shadow comparison" in st
    page = render_html(canary=d, shadow=m.results())
    p = _Collector()
    p.feed(page)
    text = "".join(p.text)
    assert "Canary ranker" in text and "Shadow comparison" in text and "rollback" in text


def _register(samples):
    """Set every sample on real prometheus_client gauges; label names must be consistent per metric."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    gauges = {}
    for s in samples:
        keys = tuple(sorted(s.labels))
        g = gauges.get(s.name)
        if g is None:
            g = gauges[s.name] = (Gauge(s.name, s.name, keys, registry=registry), keys)
        assert g[1] == keys, s.name
        g[0].labels(**s.labels).set(s.value)
    return generate_latest(registry).decode()


def test_prometheus_samples(result):
    from prodlens.experiments.report import canary_samples, experiment_samples, shadow_samples

    text = _register(experiment_samples(result))
    assert 'prodlens_experiment_exposures{experiment="pricing",variant="control"} 3407.0' in text
    assert 'prodlens_experiment_decision{decision="significant_win",experiment="pricing"} 1.0' in text
    assert 'prodlens_experiment_decision{decision="srm_alarm",experiment="pricing"} 0.0' in text
    rel = [s for s in experiment_samples(result) if s.name == "prodlens_experiment_lift_relative"
           and s.labels["metric"] == "revenue"]
    assert len(rel) == 1 and round(rel[0].value, 5) == 0.70732

    cfg = CanaryConfig("ranker", "v1", "v2", (CanaryStep(0.05), CanaryStep(1.0)),
                       (CanaryMetric("conversion", tolerance=0.1),), latency_tolerance=None)
    d = CanaryLadder(cfg).evaluate(10.0, {"conversion": Moments.from_counts(1000, 10000)},
                                   {"conversion": Moments.from_counts(700, 10000)})
    text = _register(canary_samples(d))
    assert 'prodlens_canary_traffic{baseline="v1",canary="v2",ladder="ranker"} 0.0' in text
    assert 'action="rollback"' in text and 'prodlens_canary_harm{' in text

    for task in ("classification", "regression"):
        m = ShadowMonitor(task)
        for i in range(50):
            out = {"label": i % 2} if task == "classification" else {"value": float(i)}
            m.add_primary(f"p{i}", "churn|country=US", out, float(i), latency_ms=10.0)
            m.add_shadow(f"p{i}", "churn|country=US", out, float(i), latency_ms=11.0)
        text = _register(shadow_samples(m.results()))
        assert 'model="churn"' in text and 'segment="country=US"' in text
        assert "prodlens_shadow_pairs" in text
