from pathlib import Path

import pytest

from prodlens.config import ConfigError, load_config, parse_duration

REPO = Path(__file__).resolve().parents[2]


def test_shipped_example_loads():
    config = load_config(REPO / "prodlens" / "prodlens.example.yaml")
    assert set(config.models) == {"churn", "intent", "eta"}
    assert config.models["churn"].segments["device"].values == ["ios", "android", "web"]


def test_errors_name_every_bad_field(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("models:\n  churn:\n    output: binray\n    segmnts: [country]\nwindow:\n  length: 5x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "models.churn.output" in text and "models.churn.segmnts: unknown field" in text
    assert "window.length" in text


@pytest.mark.parametrize("data, fragment", [
    ({"models": {}}, "at least one model"),
    ({"models": {"m": {"output": "binary", "classes": ["a", "b", "c"]}}}, "exactly two classes"),
    ({"models": {"m": {"output": "binary", "classes": ["a", "b"], "positive_class": "c"}}}, "positive_class"),
    ({"models": {"bad name": {"output": "regression"}}}, "model names"),
    ({"models": {"m": {"output": "regression"}}, "window": {"length": 0}}, "window.length must be positive"),
])
def test_bad_configs_fail_with_reason(data, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(data=data)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("models: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_durations():
    assert [parse_duration(v) for v in ("250ms", "30s", "5m", "2h", "7d", 12)] == [0.25, 30, 300, 7200, 604800, 12]
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_bad_alert_and_invariant_sections_fail_at_start():
    from prodlens.validation import validate_sections

    base = {"models": {"churn": {"output": "binary", "features": {"age": "numeric"}}}}
    validate_sections(load_config(data=base))  # empty sections are fine
    good_alert = dict(base, alerts=[{"name": "LatencyHigh", "metric": "prodlens_window_latency_ms",
                                     "match": {"quantile": "0.99"}, "condition": "above", "threshold": 250}])
    validate_sections(load_config(data=good_alert))
    bad_alert = dict(base, alerts=[{"name": "TooSlow", "metric": "prodlens_no_such_metric",
                                    "condition": "above", "threshold": 1}])
    with pytest.raises(ConfigError, match="TooSlow.*prodlens_no_such_metric|prodlens_no_such_metric"):
        validate_sections(load_config(data=bad_alert))
    bad_invariant = dict(base, invariants={"nope": [{"name": "age-range", "kind": "range",
                                                     "field": "features.age", "min": 0}]})
    with pytest.raises(ConfigError, match="nope"):
        validate_sections(load_config(data=bad_invariant))
