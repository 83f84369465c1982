"""Alert rule specs: parsing, validation at start (naming the rule), matchers, templates."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from prodlens.alerts import rules as rules_mod
from prodlens.alerts.durations import format_duration, parse_duration
from prodlens.validation import metric_catalogue
from prodlens.alerts.rules import (AlertConfigError, Matcher, Sample, catalogue_from_registry,
                                   parse_alerts, render_template, samples_from_registry)

BASE = {"name": "AccuracyLow", "metric": "prodlens_quality", "condition": "below", "threshold": 0.8}


def bad(**changes):
    rule = {**BASE, **changes}
    rule = {k: v for k, v in rule.items() if v is not None}
    with pytest.raises(AlertConfigError) as info:
        parse_alerts({"rules": [rule]})
    return str(info.value)


def test_documented_example_parses_against_the_default_catalogue():
    text = rules_mod.__doc__.split(".. code-block:: yaml")[1].split("Templates")[0]
    spec = parse_alerts(yaml.safe_load(textwrap.dedent(text))["alerts"])
    assert [r.name for r in spec.rules] == ["AccuracyDrop", "ErrorRateJumpAfterRelease", "LatencyOutsideBand",
                                            "NoTraffic"]
    assert spec.evaluation_interval == 30 and spec.window == 60
    first = spec.rules[0]
    assert (first.for_seconds, first.for_evaluations, first.keep_firing_for) == (600, 3, 300)
    assert first.companion() == "prodlens_quality_n" and first.min_samples == 200


@pytest.mark.parametrize("changes, needle", [
    ({"condition": "around"}, "('AccuracyLow').condition: unknown condition 'around'"),
    ({"metric": "prodlens_qualty"}, "('AccuracyLow').metric: unknown metric 'prodlens_qualty'; did you mean 'prodlens_quality'?"),
    ({"metric": "quality"}, "did you mean 'prodlens_quality'?"),
    ({"resolve_threshold": 0.7}, "('AccuracyLow').resolve_threshold: 0.7 is below the fire threshold 0.8"),
    ({"condition": "above", "threshold": 5, "resolve_threshold": 6}, "resolve_threshold: 6 is above the fire threshold 5"),
    ({"condition": "outside", "threshold": None, "band": {"low": 5, "high": 1}}, "('AccuracyLow').band: low 5 is above high 1"),
    ({"condition": "outside", "threshold": None, "band": [0, 10], "resolve_band": [-1, 5]}, "resolve_band: [-1, 5] must lie inside"),
    ({"condition": "outside"}, "('AccuracyLow').band: required"),
    ({"for": "-5m"}, "('AccuracyLow').for: must not be negative"),
    ({"for": "soon"}, "('AccuracyLow').for: 'soon' is not a duration"),
    ({"for_evaluations": 0}, "('AccuracyLow').for_evaluations: must be an integer >= 1"),
    ({"threshold": None}, "('AccuracyLow').threshold: required for condition below"),
    ({"threshold": "0.8"}, "('AccuracyLow').threshold: must be a finite number"),
    ({"threshold": float("nan")}, "must be a finite number"),
    ({"min_samples": -1}, "('AccuracyLow').min_samples: must not be negative"),
    ({"min_samples": 10, "samples_metric": "prodlens_quality_count"}, "samples_metric (the sample-size series for min_samples): unknown metric"),
    ({"match": {"modle": "churn"}}, "('AccuracyLow').match: prodlens_quality has no label 'modle'"),
    ({"match": {"model": {"regex": "("}}}, "('AccuracyLow').match.model: invalid regex"),
    ({"change": {"vs": {"verison": "v1"}}}, "change.vs: prodlens_quality has no label 'verison'"),
    ({"change": {"vs": "yesterday"}}, "change.vs: must be 'previous' or a mapping"),
    ({"change": {"vs": "previous", "mode": "percent"}}, "change.mode: must be one of relative, absolute, ratio"),
    ({"condition": "no_data", "threshold": 1}, "('AccuracyLow').threshold: not used by condition no_data"),
    ({"condition": "no_data", "threshold": None, "min_samples": 5}, "min_samples: not used by condition no_data"),
    ({"condition": "no_data", "threshold": None, "for": "10m", "forget_after": "5m"}, "forget_after: 300s must be longer than for"),
    ({"function": {"sum": "5m"}}, "function: must be {increase: <range>} or {rate: <range>}"),
    ({"function": {"rate": "0s"}}, "function.rate: the range must be positive"),
    ({"labels": {"severity": "x"}}, "labels.severity: set by prodlens"),
    ({"labels": {"bad-name": "x"}}, "labels: 'bad-name' is not a valid label name"),
    ({"description": "{value.__class__}"}, "description: placeholder {value.__class__}"),
    ({"description": "{$valu}"}, "description: placeholder {$valu}: unknown"),
    ({"description": "{$value!r}"}, "conversions are not allowed"),
    ({"description": "{$value:.3q}"}, "format spec '.3q'"),
    ({"runbook_url": "runbook"}, "runbook_url: must be an http(s) URL"),
    ({"thresold": 1}, "unknown field(s) 'thresold' (did you mean 'threshold'?)"),
    ({"name": "accuracy low"}, "alerts.rules[0].name"),
])
def test_bad_configuration_fails_at_start_naming_the_rule(changes, needle):
    message = bad(**changes)
    assert needle in message
    if "name" not in changes:
        assert message.startswith("alerts.rules[0] ('AccuracyLow')")


def test_duplicate_rule_names_and_unknown_sections():
    with pytest.raises(AlertConfigError, match=r"rules\[1\] \('AccuracyLow'\).name: duplicate"):
        parse_alerts([BASE, BASE])
    with pytest.raises(AlertConfigError, match="unknown field"):
        parse_alerts({"rules": [], "recievers": []})


def test_engine_is_independent_of_the_catalogue():
    spec = parse_alerts([{**BASE, "metric": "my_custom_metric"}], catalogue=None)
    assert spec.rules[0].metric == "my_custom_metric"
    spec = parse_alerts([{**BASE, "metric": "my_custom_metric"}], catalogue={"my_custom_metric": ["x"]})
    with pytest.raises(AlertConfigError, match="unknown metric"):
        parse_alerts([BASE], catalogue=["my_custom_metric"])
    assert "prodlens_invariant_violations_total" in metric_catalogue()


def test_matchers_follow_prometheus_semantics():
    spec = parse_alerts([{**BASE, "match": {"model": ["churn", "fraud.v2"], "segment": {"regex": "country=(US|DE)"},
                                            "version": {"not": "v1"}, "feature": {"not_regex": "age.*"}}}],
                        catalogue=None)
    rule = spec.rules[0]
    assert rule.selects({"model": "fraud.v2", "segment": "country=US", "version": "v2", "feature": "income"})
    assert not rule.selects({"model": "fraudXv2", "segment": "country=US", "version": "v2"})  # dot escaped
    assert not rule.selects({"model": "churn", "segment": "country=USA", "version": "v2"})    # anchored
    assert not rule.selects({"model": "churn", "segment": "country=US", "version": "v1"})
    assert not rule.selects({"model": "churn", "segment": "country=US", "version": "v2", "feature": "age_bucket"})
    assert rule.selects({"model": "churn", "segment": "country=DE"})  # a missing label is ""
    assert Matcher("a", "=", 'x"y').promql() == 'a="x\\"y"'


def test_templates_render_values_labels_and_reject_everything_else():
    out = render_template("{model}/{version}: {$value:.3f} < {$threshold} ({missing}) {{literal}}",
                          {"model": "churn", "version": "v7"}, {"value": 0.71234, "threshold": 0.8})
    assert out == "churn/v7: 0.712 < 0.8 () {literal}"
    assert render_template("{$threshold:.1f}", {}, {"threshold": [0.1, 0.25]}) == "[0.1, 0.2]"
    assert render_template("{$value}", {}, {"value": None}) == "n/a"


def test_durations():
    assert parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25 and parse_duration(7) == 7
    assert parse_duration("2d") == 172800 and parse_duration("1.5m") == 90
    for text in ("-1s", "5 parsecs", "", True):
        with pytest.raises(ValueError):
            parse_duration(text)
    assert [format_duration(s) for s in (0, 0.25, 90, 5400, 86400 + 61)] == ["0s", "250ms", "1m30s", "1h30m", "1d1m1s"]


def test_samples_from_a_prometheus_client_registry():
    from prometheus_client import CollectorRegistry, Counter, Gauge
    reg = CollectorRegistry()
    g = Gauge("prodlens_quality", "q", ["model", "metric"], registry=reg)
    c = Counter("prodlens_invariant_violations", "v", ["invariant"], registry=reg)
    g.labels("churn", "accuracy").set(0.7)
    c.labels("flag").inc(3)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples_from_registry(reg)}
    assert samples[("prodlens_quality", (("metric", "accuracy"), ("model", "churn")))] == 0.7
    assert samples[("prodlens_invariant_violations_total", (("invariant", "flag"),))] == 3
    assert isinstance(samples_from_registry(reg)[0], Sample)


def test_catalogue_from_a_registry_validates_rules_on_everything_exported():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    reg = CollectorRegistry()
    Gauge("prodlens_window_class_ratio", "r", ["model", "class"], registry=reg).labels("churn", "yes").set(0.3)
    Counter("prodlens_events_valid", "v", ["topic"], registry=reg)
    Histogram("prodlens_processing_delay_seconds", "d", registry=reg)
    cat = {**metric_catalogue(), **catalogue_from_registry(reg)}
    assert cat["prodlens_window_class_ratio"] == ("class", "model")
    assert cat["prodlens_events_valid_total"] is None  # no samples yet: labels unknown
    assert "prodlens_processing_delay_seconds_bucket" in cat
    parse_alerts([{"name": "ClassShare", "metric": "prodlens_window_class_ratio", "match": {"class": "yes"},
                   "condition": "above", "threshold": 0.5}], catalogue=cat)
    with pytest.raises(AlertConfigError, match="has no label 'klass'"):
        parse_alerts([{"name": "ClassShare", "metric": "prodlens_window_class_ratio", "match": {"klass": "yes"},
                       "condition": "above", "threshold": 0.5}], catalogue=cat)


@pytest.mark.parametrize("changes, needle", [
    ({"match": {"metric": "accuracy"}, "condition": "above", "threshold": 1.5},
     "('AccuracyLow').threshold: prodlens_quality is [0, 1], so 'above 1.5' can never fire"),
    ({"match": {"metric": "accuracy"}, "condition": "above", "threshold": 1},
     "so 'above 1' can never fire"),
    ({"match": {"metric": "error_rate"}, "threshold": 0}, "so 'below 0' can never fire"),
    ({"metric": "prodlens_invariant_violations_total", "threshold": 0},
     "prodlens_invariant_violations_total is >= 0, so 'below 0' can never fire"),
    ({"metric": "prodlens_invariant_violations_total", "function": {"increase": "5m"}, "threshold": -1},
     "prodlens_invariant_violations_total (increase) is >= 0"),
    ({"metric": "prodlens_invariant_violation_ratio", "condition": "above", "threshold": 1.0}, "can never fire"),
    ({"metric": "prodlens_drift_verdict", "condition": "outside", "threshold": None, "band": [0, 2]},
     "('AccuracyLow').band: prodlens_drift_verdict is [0, 2], so outside [0, 2] can never fire"),
])
def test_thresholds_the_metric_can_never_cross_fail_at_start(changes, needle):
    assert needle in bad(**changes)


@pytest.mark.parametrize("changes", [
    {"match": {"metric": "accuracy"}, "condition": "above", "threshold": 0.99},   # possible, if odd
    {"match": {"metric": "mean_error"}, "threshold": -5},                          # unbounded metric
    {"match": {"metric": "accuracy"}, "threshold": 0.0001},
    {"threshold": -1},                                     # which quality metric is not known: not checked
    {"metric": "prodlens_invariant_violations_total", "condition": "above", "threshold": 0},
    {"match": {"metric": "accuracy"}, "change": {"vs": "previous", "mode": "relative"}, "threshold": -0.2},
    {"metric": "prodlens_drift_verdict", "condition": "outside", "threshold": None, "band": [0, 1.5]},
])
def test_possible_thresholds_are_accepted(changes):
    rule = {**BASE, **changes}
    parse_alerts({"rules": [{k: v for k, v in rule.items() if v is not None}]})


def test_impossible_thresholds_are_only_checked_against_the_catalogue():
    rule = {**BASE, "match": {"metric": "accuracy"}, "condition": "above", "threshold": 2}
    assert parse_alerts([rule], catalogue=None).rules[0].threshold == 2
