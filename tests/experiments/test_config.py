"""parse_experiments: the experiments section, with errors naming the field."""

import pytest

from prodlens.config import load_config
from prodlens.experiments.config import ExperimentsConfigError, parse_experiments


MODELS = load_config(data={"models": {"churn": {"output": "binary"}, "price": {"output": "regression"}}}).models

FULL = {
    "attribution": {"horizon": "3d", "max_units": 1000, "skew": "5s"},
    "ab": {"checkout": {"model": "churn", "variants": {"control": 0.4, "treatment": 0.6},
                        "metrics": [{"name": "conversion", "aggregation": "any"}, "revenue",
                                    {"name": "complaints", "aggregation": "count", "direction": "lower"}],
                        "sequential": False, "correction": "bh"}},
    "canaries": {"c": {"model": "churn", "baseline": "v1", "canary": "v2", "min_duration": "10m",
                       "steps": [0.01, {"traffic": 0.2, "min_samples": 50, "max_duration": "1h"}, 1.0],
                       "metrics": [{"name": "error_rate", "tolerance": 0.1}, "log_loss"],
                       "latency": False, "max_invariant_violations": None}},
    "shadows": {"s": {"model": "price", "shadow": "v9", "label_horizon": None}},
}


def test_full_section():
    cfg = parse_experiments(FULL, MODELS)
    ab = cfg.ab["checkout"].analysis
    assert ab.weights == (0.4, 0.6) and ab.sequential is None and ab.correction == "bh"
    assert [(m.name, m.kind, m.higher_is_better) for m in ab.metrics] == [
        ("conversion", "proportion", True), ("revenue", "mean", True), ("complaints", "mean", False)]
    joiner = cfg.outcome_joiner()
    assert (joiner.horizon_s, joiner.max_units, joiner.skew_s) == (3 * 86400, 1000, 5.0)
    ladder = cfg.canaries["c"].ladder
    assert [(s.traffic, s.min_duration_s, s.min_samples, s.max_duration_s) for s in ladder.steps] == [
        (0.01, 600.0, 0, None), (0.2, 600.0, 50, 3600.0), (1.0, 600.0, 0, None)]
    assert [(m.name, m.higher_is_better) for m in ladder.metrics] == [("error_rate", False), ("log_loss", False)]
    assert ladder.latency_tolerance is None and ladder.max_invariant_violations is None
    s = cfg.shadows["s"]
    assert (s.task, s.label_horizon_s) == ("regression", None) and cfg.shadow_for("price", "v1", "v9") is s
    assert cfg.shadow_for("price", "v1", "v8") is None




@pytest.mark.parametrize("section, where", [
    ({"ab": {"x": {"variants": ["a"], "metrics": ["m"]}}}, "experiments.ab.x.variants"),
    ({"ab": {"x": {"variants": {"a": 0.5, "b": 0.6}, "metrics": ["m"]}}}, "experiments.ab.x.variants"),
    ({"ab": {"x": {"variants": ["a", "b"]}}}, "experiments.ab.x.metrics"),
    ({"ab": {"x": {"variants": ["a", "b"], "metrics": [{"name": "m", "aggregation": "avg"}]}}},
     "experiments.ab.x.metrics[0].aggregation"),
    ({"ab": {"x": {"variants": ["a", "b"], "baseline": "c", "metrics": ["m"]}}}, "experiments.ab.x.baseline"),
    ({"ab": {"x": {"variants": ["a", "b"], "metrics": ["m"], "alpha": 2}}}, "experiments.ab.x.alpha"),
    ({"ab": {"x": {"variants": ["a", "b"], "metrics": ["m"], "colour": 1}}}, "experiments.ab.x"),
    ({"canaries": {"c": {"model": "nope", "baseline": "v1", "canary": "v2", "steps": [1.0],
                         "metrics": ["error_rate"]}}}, "experiments.canaries.c.model"),
    ({"canaries": {"c": {"model": "churn", "baseline": "v1", "canary": "v1", "steps": [1.0],
                         "metrics": ["error_rate"]}}}, "experiments.canaries.c.canary"),
    ({"canaries": {"c": {"model": "churn", "baseline": "v1", "canary": "v2", "steps": [0.5, 0.2],
                         "metrics": ["error_rate"]}}}, "experiments.canaries.c.steps"),
    ({"canaries": {"c": {"model": "churn", "baseline": "v1", "canary": "v2", "steps": [0.1, 1.5],
                         "metrics": ["error_rate"]}}}, "experiments.canaries.c.steps[1].traffic"),
    ({"canaries": {"c": {"model": "churn", "baseline": "v1", "canary": "v2", "steps": [1.0],
                         "metrics": ["mae"]}}}, "experiments.canaries.c.metrics[0].name"),
    ({"canaries": {"c": {"model": "churn", "baseline": "v1", "canary": "v2", "steps": [1.0],
                         "metrics": [{"name": "error_rate", "tolerance": 0}]}}},
     "experiments.canaries.c.metrics[0].tolerance"),
    ({"canaries": {"c": {"model": "churn", "baseline": "v1", "canary": "v2", "steps": [{"traffic": 1.0,
                         "min_duration": "soon"}], "metrics": ["error_rate"]}}},
     "experiments.canaries.c.steps[0].min_duration"),
    ({"shadows": {"s": {"shadow": "v2"}}}, "experiments.shadows.s.model"),
    ({"oops": 3}, "experiments.oops"),
    ({"thing": {"kind": "rollout"}}, "experiments.thing.kind"),
])
def test_errors_name_the_field(section, where):
    with pytest.raises(ExperimentsConfigError) as exc:
        parse_experiments(section, MODELS)
    assert str(exc.value).startswith(where + ":"), str(exc.value)
