"""A simulated application: realistic prediction, feedback and outcome traffic.

The generator is pure and deterministic for a seed: several models and
versions, skewed segments, plausible features and outputs, log-normal latencies
with a heavy tail, feedback that arrives minutes to days after its prediction in
event time, business outcomes, and a configurable share of malformed and
duplicate messages. It keeps a :class:`Tally` of exactly what it sent, so tests
can compare the pipeline's numbers with the truth::

    app = SimulatedApp(load_config("prodlens.yaml"), seed=1)
    for message in app.messages(1000, start=1_800_000_000.0):
        producer.send(topic_for(message.topic_kind), message.value, key=message.key)

Ground truth. Every prediction has a true answer drawn by the simulator:

* binary: the score is CALIBRATED by construction: the confidence ``c`` =
  max(score, 1 - score) is drawn with mean equal to the configured accuracy, the
  side (which label is predicted) depends on the features, and the true class is
  positive with probability exactly ``score`` (the rounded score that is sent). So
  P(true = positive | score) = score and the expected accuracy is the configured
  one; confidence-based estimation (CBPE) is unbiased without concept drift;
* multiclass: the same with class probabilities (truth ~ Categorical(probs), the
  label is the top class, expected accuracy = E[top prob] = configured accuracy);
* regression: truth = value + N(0, error_sd).

``degrade`` is concept drift: while active, the truth of the affected
(model, version, segment) equals the predicted label with probability ``accuracy``
(else another class), whatever the score said, so realised accuracy drops to that
value for exactly that key while the scores (and CBPE) stay as they were.

Scenarios (all event-time based; see :class:`Scenario` for every field)::

    Scenario(drift={"model": "churn", "feature": "tenure_months", "shift": 8.0,
                    "segment": {"country": "DE"}, "after": t0 + 600})
    Scenario(degrade={"model": "churn", "version": "v1", "segment": {"device": "ios"},
                      "accuracy": 0.55, "after": t0 + 600, "recover_after": t0 + 1800})
    Scenario(shadows=[ShadowSpec("churn", primary="v1", shadow="v3", disagreement=0.05)])
    Scenario(canaries={"churn": CanarySpec(baseline="v1", canary="v2", share=0.05, accuracy=0.7)})
    Scenario(experiments=[ExperimentSpec("checkout", "churn", lift={"treatment": 0.1})])  # A/B
    Scenario(experiments=[ExperimentSpec("aa", "churn")])                                 # A/A
    Scenario(violations=[BoolAsString("churn", "autopay", share=0.01),
                         Flicker("churn", "v1", every=120, flips=3, within=5)])
    Scenario.stationary()   # + SimulatedApp.windows(n) for false-alarm tests

:meth:`SimulatedApp.records` (and :func:`generate`) return ready-to-send
``(kind, key, value)`` triples in event-time order.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterator

import orjson

from .config import Config, ModelConfig
from .experiments.assignment import Assigner, Experiment, canary_experiment

# Skewed segment values per attribute (weights roughly Zipf); unknown attributes get v0..v5.
SEGMENT_VALUES: dict[str, list[tuple[str, float]]] = {
    "country": [("US", 40), ("DE", 15), ("GB", 12), ("FR", 10), ("IN", 9), ("BR", 6), ("JP", 5), ("NG", 3)],
    "device": [("ios", 45), ("android", 40), ("web", 15)],
    "locale": [("en", 55), ("de", 20), ("fr", 15), ("es", 10)],
    "city": [("berlin", 30), ("paris", 25), ("london", 20), ("madrid", 15), ("rome", 10)],
}
CATEGORY_VALUES = ["alpha", "beta", "gamma", "delta"]
PLANS = {"plan": ["basic", "pro", "team"], "language": ["en", "de", "fr"], "traffic": ["low", "mid", "high"]}

MALFORMED_KINDS = ("malformed_json", "schema_violation", "non_finite_value", "unknown_model")
FEEDBACK_KINDS = ("label", "correction", "complaint", "rating", "implicit")
# Rating 1..5 weights for a right and a wrong prediction (mean 4.3 vs 2.2).
RATING_RIGHT = (0.02, 0.03, 0.10, 0.35, 0.50)
RATING_WRONG = (0.35, 0.30, 0.20, 0.10, 0.05)
DEFAULT_ACCURACY = {"binary": 0.85, "multiclass": 0.75}
DEFAULT_ERROR_SD = 1.5
_CONFIDENCE_CONCENTRATION = 6.0   # alpha + beta of the Beta law of the confidence


class ScenarioError(ValueError):
    """A bad scenario; the message names the field."""


@dataclass
class Message:
    topic_kind: str       # prediction | feedback | outcome
    key: bytes | None
    value: bytes
    timestamp: float      # event time of (the last event in) the message


@dataclass
class QualityTruth:
    """True quality of one (model, version, segment, truth window) over the predictions SENT.

    ``n``/``correct`` cover every prediction (the simulator knows every truth);
    ``labelled``/``labelled_correct``/``abs_error``/``sq_error`` only those whose label or
    correction feedback was sent; ``confidence`` is Σ max-probability (binary/multiclass):
    ``confidence / n`` is what CBPE should estimate.
    """

    n: int = 0
    correct: int = 0
    confidence: float = 0.0
    labelled: int = 0
    labelled_correct: int = 0
    abs_error: float = 0.0      # regression, over labelled
    sq_error: float = 0.0       # regression, over labelled

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class ArmTruth:
    """One experiment variant: units exposed and their true outcomes (sent events)."""

    units: int = 0              # distinct units exposed (first exposure)
    exposures: int = 0          # predictions carrying the experiment and this variant
    conversions: int = 0        # units whose conversion event was sent
    revenue: float = 0.0        # Σ revenue per unit (sent)
    revenue_sq: float = 0.0     # Σ revenue² per unit (sent)

    def to_dict(self) -> dict:
        return dict(vars(self))


SegmentKey = tuple  # tuple(sorted(segment.items()))


@dataclass
class Tally:
    """What the simulator sent: the ground truth for end-to-end checks."""

    predictions: dict[tuple[str, str, SegmentKey], int] = field(default_factory=dict)  # (model, version, segment)
    feedback: int = 0
    outcomes: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)   # by kind
    messages: dict[str, int] = field(default_factory=dict)     # by kind
    # (model, version, segment, kind) -> feedback events sent of that kind
    feedback_by: dict[tuple[str, str, SegmentKey, str], int] = field(default_factory=dict)
    # (model, version, segment, window_start) -> QualityTruth, window = Scenario.truth_window of PREDICTION time
    quality: dict[tuple[str, str, SegmentKey, float], QualityTruth] = field(default_factory=dict)
    # (model, primary version, shadow model, shadow version, segment) -> [pairs, disagreements]
    shadow: dict[tuple[str, str, str, str, SegmentKey], list[int]] = field(default_factory=dict)
    # (experiment, variant) -> ArmTruth
    experiments: dict[tuple[str, str], ArmTruth] = field(default_factory=dict)
    # (experiment, variant, metric) -> outcome events sent
    outcomes_by: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # (violation kind, model, version, segment) -> injected violating events (boolean_as_string, flicker bursts)
    injected: dict[tuple[str, str, str, SegmentKey], int] = field(default_factory=dict)
    # one entry per flicker burst: (model, version, unit_id, flips, first timestamp)
    flickers: list[tuple[str, str, str, int, float]] = field(default_factory=list)

    def predictions_by(self, model: str, version: str) -> int:
        return sum(n for (m, v, _), n in self.predictions.items() if m == model and v == version)

    def truth(self, model: str, version: str | None = None, segment: dict | None = None,
              since: float = -math.inf, until: float = math.inf) -> QualityTruth:
        """Merged :class:`QualityTruth` of the matching keys; ``segment`` matches on the given attributes,
        ``since``/``until`` on truth-window starts (``since <= start < until``)."""
        out = QualityTruth()
        for (m, v, seg, start), q in self.quality.items():
            if m != model or (version is not None and v != version) or not since <= start < until:
                continue
            if segment and not all(dict(seg).get(k) == val for k, val in segment.items()):
                continue
            for name in vars(out):
                setattr(out, name, getattr(out, name) + getattr(q, name))
        return out

    def shadow_pairs(self, model: str | None = None) -> tuple[int, int]:
        """(pairs, disagreements) over every segment (of ``model``)."""
        pairs = dis = 0
        for key, (p, d) in self.shadow.items():
            if model is None or key[0] == model:
                pairs, dis = pairs + p, dis + d
        return pairs, dis


@dataclass
class FeedbackSpec:
    """Feedback one model receives (kinds from :data:`FEEDBACK_KINDS`), at most one event per kind per prediction.

    Delays are log-normal in event time: ``median * exp(sigma * N(0, 1))`` capped at ``max_delay``
    (labels and corrections use ``delay_median``; complaints, ratings and clicks ``signal_delay_median``).
    A prediction is *right* when its label equals the truth (regression: ``|error| <= tolerance``).
    """

    kinds: tuple[str, ...] = ("label",)
    label_share: float = 0.3            # share of predictions labelled (independent of everything: unbiased sample)
    delay_median: float = 3600.0        # seconds; with sigma 1.5, 95 % between ~3 min and ~19 h, tail to days
    delay_sigma: float = 1.5
    max_delay: float = 7 * 86400.0
    signal_delay_median: float = 120.0
    signal_delay_sigma: float = 1.0
    complaint_prob: float = 0.2         # P(complaint | wrong); never for right predictions
    correction_prob: float = 0.3        # classification: P(correction | wrong); regression: P(correction)
    rating_share: float = 0.1           # share of predictions rated 1..5 (RATING_RIGHT / RATING_WRONG)
    implicit_prob: float = 0.4          # P(click | right)
    implicit_false_prob: float = 0.05   # P(click | wrong)
    tolerance: float = 2.0              # regression: |error| at most this is "right"


@dataclass
class ShadowSpec:
    """A shadow version answering the same prediction_id as every ``primary`` prediction of ``model``.

    Exactly ``floor(n * disagreement)`` of the first ``n`` pairs disagree (on the label; regression:
    ``|shadow - primary| > tolerance``). ``shadow_model`` (same output kind and classes) makes it two
    MODELS answering one prediction_id, for agreement invariants across models.
    """

    model: str
    primary: str = "v1"
    shadow: str = "v3"
    disagreement: float = 0.05
    shadow_model: str | None = None
    tolerance: float = 0.0
    role: str = "shadow"


@dataclass
class CanarySpec:
    """A canary version of one model: ``share`` of UNITS (GrowthBook hashing, monotone in share) go to it.

    ``share`` is a float you may change between :meth:`SimulatedApp.messages` calls (follow the decisions
    topic) or a callable ``share(event_time) -> float``. ``accuracy`` None = the baseline's.
    ``experiment`` set: canary traffic also carries experiment/variant (variants = baseline, canary).
    """

    baseline: str = "v1"
    canary: str = "v2"
    share: float | Callable[[float], float] = 0.05
    accuracy: float | None = None
    experiment: str | None = None


@dataclass
class ExperimentSpec:
    """An A/B test of ``model``: units hashed to variants, outcomes per unit with a true lift per variant.

    A unit converts (one ``conversion`` outcome, value 1) with probability
    ``conversion_rate * (1 + lift[variant])``, decided at its first exposure; a converting unit
    also sends one ``revenue`` outcome, log-normal with median ``revenue_median * (1 + revenue_lift[variant])``
    (so revenue per converter has relative lift ``revenue_lift`` exactly in expectation). Outcomes come
    ``outcome_delay_median * exp(N(0,1))`` seconds after the first exposure, capped at ``outcome_max_delay``.
    ``versions`` maps variant -> model version serving it (first variant role "primary", others
    "challenger"); unmapped variants keep the normal version routing. Empty ``lift``: an A/A test.
    """

    name: str
    model: str
    variants: tuple[str, ...] = ("control", "treatment")
    weights: tuple[float, ...] | None = None
    coverage: float = 1.0
    lift: dict[str, float] = field(default_factory=dict)
    revenue_lift: dict[str, float] = field(default_factory=dict)
    conversion_rate: float = 0.1
    revenue_median: float = 20.0
    revenue_sigma: float = 0.8
    outcome_delay_median: float = 120.0
    outcome_max_delay: float = 1800.0
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class BoolAsString:
    """Send a boolean feature as the string "true"/"false" in exactly ``floor(n * share)`` of the ``n``
    eligible predictions (model, optional version, feature present, ``after <= t < until``)."""

    model: str
    feature: str
    share: float = 0.01
    version: str | None = None
    after: float = 0.0
    until: float = math.inf


@dataclass
class Flicker:
    """Every ``every`` seconds of event time, a fresh unit gets ``flips + 1`` predictions of
    (model, version) spread over less than ``within`` seconds with alternating labels (``flips`` flips).
    A stability invariant with ``max_flips = m`` and the same ``within`` sees ``max(0, flips - m)``
    violations per burst (classification models only)."""

    model: str
    version: str = "v1"
    every: float = 120.0
    flips: int = 3
    within: float = 5.0
    after: float = 0.0
    until: float = math.inf


@dataclass
class Scenario:
    """Knobs of the simulated app. Shares are per generated prediction.

    ``versions`` routes every model without a canary (version, role, share). ``drift``:
    ``{"model", "feature", "segment": {...}, "after", "until"}`` plus ``"shift"`` (numeric: add),
    ``"scale"`` (numeric: multiply the deviation from the mean), ``"weights"`` (categorical:
    {value: weight}) or ``"rate"`` (boolean: P(true)). ``degrade``: ``{"model", "version",
    "segment", "accuracy" (classification) or "error_scale" (regression), "after",
    "recover_after"}``: active for ``after <= t < recover_after`` (absolute event times).
    """

    versions: tuple[tuple[str, str, float], ...] = (("v1", "primary", 0.9), ("v2", "canary", 0.1))
    label_share: float = 0.3           # predictions that later get a label (models without a FeedbackSpec)
    feedback_delay_mean: float = 600.  # seconds of event time, exponential (models without a FeedbackSpec)
    outcome_share: float = 0.05        # untargeted outcomes (random metric) per prediction
    malformed_share: float = 0.0
    duplicate_share: float = 0.0
    missing_share: float = 0.02        # each feature is null this often
    batch: int = 1                     # events per message (1 = single events; >1 = columnar envelopes)
    linger: float = 1.0                # an envelope is sent once its oldest event is this old (event time)
    drift: dict | None = None
    degrade: dict | None = None
    models: tuple[str, ...] | None = None                # models that get traffic (None: all configured)
    units: int = 50_000                                  # size of the unit_id pool of organic traffic
    accuracy: dict[str, float] = field(default_factory=dict)   # "model" or "model/version" -> accuracy
    error_sd: dict[str, float] = field(default_factory=dict)   # regression: "model[/version]" -> sd
    feedback: dict[str, FeedbackSpec] = field(default_factory=dict)  # model -> realistic feedback
    shadows: list[ShadowSpec] = field(default_factory=list)
    canaries: dict[str, CanarySpec] = field(default_factory=dict)    # model -> canary
    experiments: list[ExperimentSpec] = field(default_factory=list)
    violations: list[BoolAsString | Flicker] = field(default_factory=list)
    truth_window: float = 60.0                           # Tally.quality window of prediction time

    @classmethod
    def stationary(cls, **overrides) -> "Scenario":
        """No change at all: no drift, degrade, canary ramp, injected violation, malformed or duplicate
        message, and a unit pool so large that organic units practically never repeat (no accidental
        flicker). Use with :meth:`SimulatedApp.windows`."""
        base = dict(units=1 << 60, missing_share=0.0, outcome_share=0.0, malformed_share=0.0,
                    duplicate_share=0.0, batch=100)
        base.update(overrides)
        return cls(**base)


def _weighted(rng: random.Random, values: list[tuple[str, float]]) -> str:
    total = sum(w for _, w in values)
    x = rng.random() * total
    for value, weight in values:
        x -= weight
        if x <= 0:
            return value
    return values[-1][0]


def _exact_share(share: float) -> tuple[int, int]:
    f = Fraction(share).limit_denominator(1_000_000)
    return f.numerator, f.denominator


def _take_exact(counter: list[int], share: tuple[int, int]) -> bool:
    """The k-th call returns True iff floor((k+1) p/q) > floor(k p/q): exactly floor(n p/q) of n."""
    p, q = share
    k = counter[0]
    counter[0] += 1
    return (k + 1) * p // q > k * p // q


def _seg_key(segment: dict) -> SegmentKey:
    return tuple(sorted(segment.items()))


def _matches(segment: dict, wanted: dict | None) -> bool:
    return all(segment.get(k) == v for k, v in (wanted or {}).items())


class SimulatedApp:
    """Deterministic generator of the messages a real app would produce."""

    def __init__(self, config: Config, seed: int = 0, scenario: Scenario | None = None):
        self.config = config
        self.rng = random.Random(seed)
        self.scenario = scenario or Scenario()
        self.tally = Tally()
        self._pending_feedback: list[tuple[float, int, str, dict, object]] = []  # heap by due event time
        self._pending_predictions: list[tuple[float, int, dict]] = []
        self._batch: dict[tuple[str, str], list[dict]] = {}
        self._seq = 0
        self._hseq = 0
        self._validate()
        sc = self.scenario
        self._models = list(sc.models) if sc.models else list(config.models)
        self._shadow_counters = [[0] for _ in sc.shadows]
        self._shadow_shares = [_exact_share(s.disagreement) for s in sc.shadows]
        self._bool_counters = [[0] for _ in sc.violations]
        self._bool_shares = [_exact_share(v.share) if isinstance(v, BoolAsString) else (0, 1)
                             for v in sc.violations]
        self._next_flicker = [None for _ in sc.violations]
        self._flicker_units = 0
        self._assigner = Assigner([Experiment(e.name, tuple(e.variants), e.weights, e.coverage)
                                   for e in sc.experiments])
        self._exposed: dict[str, set[str]] = {e.name: set() for e in sc.experiments}
        self._canary_assigners: dict[tuple[str, float], Assigner] = {}

    # -- validation -----------------------------------------------------------------------------------
    def _validate(self) -> None:
        sc, models = self.scenario, self.config.models

        def fail(where: str, message: str) -> None:
            raise ScenarioError(f"Scenario.{where}: {message}")

        def share(where: str, value: float) -> None:
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                fail(where, f"must be a number in [0, 1], got {value!r}")

        def model(where: str, name: str) -> ModelConfig:
            if name not in models:
                fail(where, f"model {name!r} is not configured (known: {', '.join(models)})")
            return models[name]

        for name in sc.models or ():
            model("models", name)
        if sc.models is not None and not sc.models:
            fail("models", "must name at least one model (or be None for all)")
        for name in ("label_share", "outcome_share", "malformed_share", "duplicate_share", "missing_share"):
            share(name, getattr(sc, name))
        if not isinstance(sc.units, int) or sc.units < 1:
            fail("units", f"must be an integer >= 1, got {sc.units!r}")
        if sc.truth_window <= 0:
            fail("truth_window", f"must be > 0, got {sc.truth_window!r}")
        for key, acc in sc.accuracy.items():
            m = model(f"accuracy[{key!r}]", key.split("/")[0])
            self._check_accuracy(f"accuracy[{key!r}]", m, acc, fail)
        for key, sd in sc.error_sd.items():
            model(f"error_sd[{key!r}]", key.split("/")[0])
            if not isinstance(sd, (int, float)) or not sd >= 0:
                fail(f"error_sd[{key!r}]", f"must be a number >= 0, got {sd!r}")
        for name, spec in sc.feedback.items():
            model(f"feedback[{name!r}]", name)
            bad = [k for k in spec.kinds if k not in FEEDBACK_KINDS]
            if bad:
                fail(f"feedback[{name!r}].kinds", f"unknown kinds {bad} (known: {', '.join(FEEDBACK_KINDS)})")
            for f in ("label_share", "complaint_prob", "correction_prob", "rating_share", "implicit_prob",
                      "implicit_false_prob"):
                share(f"feedback[{name!r}].{f}", getattr(spec, f))
            for f in ("delay_median", "signal_delay_median", "max_delay"):
                if not getattr(spec, f) > 0:
                    fail(f"feedback[{name!r}].{f}", f"must be > 0, got {getattr(spec, f)!r}")
        for i, s in enumerate(sc.shadows):
            m = model(f"shadows[{i}].model", s.model)
            share(f"shadows[{i}].disagreement", s.disagreement)
            if s.shadow_model is not None:
                other = model(f"shadows[{i}].shadow_model", s.shadow_model)
                if other.output != m.output or (other.classes or None) != (m.classes or None):
                    fail(f"shadows[{i}].shadow_model", f"{s.shadow_model!r} must have the output kind and classes "
                                                       f"of {s.model!r}")
            if (s.shadow_model or s.model) == s.model and s.shadow == s.primary:
                fail(f"shadows[{i}].shadow", "must differ from primary (same model)")
        for name, c in sc.canaries.items():
            m = model(f"canaries[{name!r}]", name)
            if not callable(c.share):
                share(f"canaries[{name!r}].share", c.share)
            if c.accuracy is not None:
                self._check_accuracy(f"canaries[{name!r}].accuracy", m, c.accuracy, fail)
            if c.baseline == c.canary:
                fail(f"canaries[{name!r}].canary", "must differ from baseline")
        names = set()
        for i, e in enumerate(sc.experiments):
            model(f"experiments[{i}].model", e.model)
            if e.name in names:
                fail(f"experiments[{i}].name", f"duplicate experiment {e.name!r}")
            names.add(e.name)
            try:
                Experiment(e.name, tuple(e.variants), e.weights, e.coverage)
            except ValueError as exc:
                fail(f"experiments[{i}]", str(exc))
            share(f"experiments[{i}].conversion_rate", e.conversion_rate)
            for attr in ("lift", "revenue_lift", "versions"):
                bad = [v for v in getattr(e, attr) if v not in e.variants]
                if bad:
                    fail(f"experiments[{i}].{attr}", f"unknown variants {bad} (variants: {list(e.variants)})")
            for v, lift in e.lift.items():
                if not 0.0 <= e.conversion_rate * (1 + lift) <= 1.0:
                    fail(f"experiments[{i}].lift[{v!r}]", "conversion_rate * (1 + lift) must be in [0, 1]")
            for v, lift in e.revenue_lift.items():
                if not lift > -1:
                    fail(f"experiments[{i}].revenue_lift[{v!r}]", f"must be > -1, got {lift!r}")
        for i, v in enumerate(sc.violations):
            m = model(f"violations[{i}].model", v.model)
            if isinstance(v, BoolAsString):
                if m.features.get(v.feature) != "boolean":
                    fail(f"violations[{i}].feature", f"{v.feature!r} is not a boolean feature of {v.model!r}")
                share(f"violations[{i}].share", v.share)
            elif isinstance(v, Flicker):
                if m.output == "regression":
                    fail(f"violations[{i}].model", f"flicker needs a classification model, {v.model!r} is regression")
                if not isinstance(v.flips, int) or v.flips < 1:
                    fail(f"violations[{i}].flips", f"must be an integer >= 1, got {v.flips!r}")
                if not v.every > 0 or not v.within > 0:
                    fail(f"violations[{i}].every", "every and within must be > 0")
            else:
                fail(f"violations[{i}]", f"must be BoolAsString or Flicker, got {type(v).__name__}")
        d = sc.degrade
        if d:
            m = model("degrade.model", d.get("model"))
            if m.output == "regression":
                if not d.get("error_scale", 0) > 0:
                    fail("degrade.error_scale", "regression degrade needs error_scale > 0")
            else:
                share("degrade.accuracy", d.get("accuracy"))
        if sc.drift:
            m = model("drift.model", sc.drift.get("model"))
            if sc.drift.get("feature") not in m.features:
                fail("drift.feature", f"{sc.drift.get('feature')!r} is not a feature of {sc.drift['model']!r}")

    @staticmethod
    def _check_accuracy(where: str, m: ModelConfig, acc: float, fail) -> None:
        if m.output == "regression":
            fail(where, "regression models take error_sd, not accuracy")
        k = 2 if m.output == "binary" else len(m.classes or "abc")
        if not isinstance(acc, (int, float)) or not 1.0 / k <= acc <= 1.0:
            fail(where, f"must be in [1/{k}, 1] for a {m.output} model, got {acc!r}")

    # -- events ---------------------------------------------------------------------------------------
    def _segment(self, model: ModelConfig) -> dict:
        segment = {}
        for key, spec in model.segments.items():
            if spec.values:
                segment[key] = self.rng.choice(spec.values)
            else:
                segment[key] = _weighted(self.rng, SEGMENT_VALUES.get(key, [(f"v{i}", 6 - i) for i in range(6)]))
        return segment

    def _features(self, model_name: str, model: ModelConfig, segment: dict, ts: float) -> dict:
        features = {}
        drift = self.scenario.drift
        for i, (name, kind) in enumerate(model.features.items()):
            if self.rng.random() < self.scenario.missing_share:
                features[name] = None
                continue
            active = bool(drift) and drift["model"] == model_name and drift["feature"] == name \
                and drift.get("after", 0) <= ts < drift.get("until", math.inf) \
                and _matches(segment, drift.get("segment"))
            if kind == "numeric":
                mean = 10 + 5 * i
                value = self.rng.gauss(mean, 3 + i)
                if active:
                    value = mean + (value - mean) * drift.get("scale", 1.0) + drift.get("shift", 0.0)
                features[name] = round(value, 4)
            elif kind == "boolean":
                features[name] = self.rng.random() < (drift.get("rate", 0.3) if active else 0.3)
            else:
                values = PLANS.get(name, CATEGORY_VALUES)
                if active and drift.get("weights"):
                    features[name] = _weighted(self.rng, list(drift["weights"].items()))
                else:
                    features[name] = self.rng.choice(values)
        return features

    def _lookup(self, table: dict, model: str, version: str, default):
        return table.get(f"{model}/{version}", table.get(model, default))

    def _accuracy(self, model_name: str, model: ModelConfig, version: str) -> float:
        canary = self.scenario.canaries.get(model_name)
        if canary is not None and version == canary.canary and canary.accuracy is not None:
            return canary.accuracy
        return self._lookup(self.scenario.accuracy, model_name, version, DEFAULT_ACCURACY[model.output])

    def _confidence(self, accuracy: float, floor: float) -> float:
        """A top-class probability in [floor, 1] with mean ``accuracy`` (scaled Beta law)."""
        if accuracy >= 1.0:
            return 1.0
        m = (accuracy - floor) / (1.0 - floor)
        if m <= 0.0:
            return floor
        b = self.rng.betavariate(m * _CONFIDENCE_CONCENTRATION, (1 - m) * _CONFIDENCE_CONCENTRATION)
        return floor + (1.0 - floor) * b

    def _output(self, model_name: str, model: ModelConfig, version: str, features: dict,
                force_top: int | None = None) -> tuple[dict, object, float]:
        """The model's answer, the true answer and the top-class probability (NaN for regression)."""
        numeric = [v for v in features.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        signal = (sum(numeric) / len(numeric) - 12.5) / 4 if numeric else 0.0
        if model.output == "binary":
            classes = model.classes or ["negative", "positive"]
            positive = model.positive_class or classes[-1]
            negative = [c for c in classes if c != positive][0]
            c = self._confidence(self._accuracy(model_name, model, version), 0.5)
            says_positive = self.rng.random() < 1 / (1 + math.exp(-signal)) if force_top is None else force_top == 1
            score = round(c if says_positive else 1.0 - c, 5)
            if score == 0.5:        # a tie would make the label ambiguous; keep the side that was chosen
                score = 0.50001 if says_positive else 0.49999
            truth = positive if self.rng.random() < score else negative  # calibrated: P(positive | score) = score
            return {"label": positive if score >= 0.5 else negative, "score": score}, truth, max(score, 1 - score)
        if model.output == "multiclass":
            classes = model.classes or ["a", "b", "c"]
            k = len(classes)
            c = self._confidence(self._accuracy(model_name, model, version), 1.0 / k)
            if force_top is None:
                weights = [math.exp(signal if j == 0 else 0.0) for j in range(k)]
                top = self.rng.choices(range(k), weights)[0]
            else:
                top = force_top
            base = (1.0 - c) / (k - 1)
            bound = min(base, c - base) / 2
            u = [self.rng.uniform(-1, 1) for _ in range(k - 1)]
            mean_u = sum(u) / len(u)
            others = iter(base + bound * (x - mean_u) for x in u)   # zero-sum tilt keeps every p <= c
            probs = [round(c if j == top else next(others), 6) for j in range(k)]
            x = self.rng.random() * sum(probs)
            truth = classes[-1]
            for j, p in enumerate(probs):
                x -= p
                if x < 0:
                    truth = classes[j]
                    break
            return ({"label": classes[top], "probabilities": dict(zip(classes, probs))}, truth, probs[top])
        value = max(0.5, 12 + 3 * signal + self.rng.gauss(0, 2))
        sd = self._lookup(self.scenario.error_sd, model_name, version, DEFAULT_ERROR_SD)
        return {"value": round(value, 3)}, round(value + self.rng.gauss(0, sd), 3), math.nan

    def _degraded(self, model_name: str, version: str, segment: dict, ts: float) -> dict | None:
        d = self.scenario.degrade
        if d and d["model"] == model_name and d["version"] == version \
                and d.get("after", 0) <= ts < d.get("recover_after", math.inf) and _matches(segment, d.get("segment")):
            return d
        return None

    def _route(self, model_name: str, unit: str, ts: float) -> tuple[str, str, str | None, str | None]:
        """(version, role, experiment, variant) of one organic prediction."""
        sc = self.scenario
        for e in sc.experiments:
            if e.model == model_name:
                a = self._assigner.assign(e.name, unit)
                if a.in_experiment:
                    version = e.versions.get(a.variant)
                    if version is not None:
                        role = "primary" if a.variant_index == 0 else "challenger"
                        return version, role, e.name, a.variant
                    version, role, _, _ = self._route_version(model_name, unit, ts)
                    return version, role, e.name, a.variant
        return self._route_version(model_name, unit, ts)

    def _route_version(self, model_name: str, unit: str, ts: float) -> tuple[str, str, str | None, str | None]:
        canary = self.scenario.canaries.get(model_name)
        if canary is not None:
            share = float(canary.share(ts) if callable(canary.share) else canary.share)
            if not 0.0 <= share <= 1.0:
                raise ScenarioError(f"Scenario.canaries[{model_name!r}].share: must be in [0, 1], got {share!r}")
            name = canary.experiment or f"{model_name}-canary"
            assigner = self._canary_assigners.get((name, share))
            if assigner is None:
                if len(self._canary_assigners) > 64:
                    self._canary_assigners.clear()
                assigner = Assigner([canary_experiment(name, canary.baseline, canary.canary, share)])
                self._canary_assigners[(name, share)] = assigner
            on_canary = assigner.assign(name, unit).variant_index == 1
            version, role = (canary.canary, "canary") if on_canary else (canary.baseline, "primary")
            if canary.experiment:
                return version, role, canary.experiment, version
            return version, role, None, None
        x = self.rng.random()
        version, role = self.scenario.versions[-1][:2]
        for v, r, share in self.scenario.versions:
            x -= share
            if x <= 0:
                version, role = v, r
                break
        return version, role, None, None

    def _new_id(self) -> str:
        return uuid.UUID(int=self.rng.getrandbits(128)).hex

    def _record_prediction(self, event: dict, correct: bool, confidence: float) -> tuple:
        seg = _seg_key(event["segment"])
        tkey = (event["model"], event["version"], seg)
        self.tally.predictions[tkey] = self.tally.predictions.get(tkey, 0) + 1
        w = self.scenario.truth_window
        qkey = (*tkey, math.floor(event["timestamp"] / w) * w)
        q = self.tally.quality.get(qkey)
        if q is None:
            q = self.tally.quality[qkey] = QualityTruth()
        q.n += 1
        q.correct += int(correct)
        if confidence == confidence:
            q.confidence += confidence
        return qkey

    def _prediction(self, ts: float, model_name: str | None = None, unit: str | None = None,
                    route: tuple | None = None, force_top: int | None = None) -> tuple[dict, list[dict]]:
        """One prediction (and the extra predictions sharing its id: shadows). Schedules its feedback."""
        sc = self.scenario
        if model_name is None:
            model_name = self.rng.choice(self._models)
        model = self.config.models[model_name]
        if unit is None:
            unit = f"u{self.rng.randrange(sc.units)}"
        version, role, experiment, variant = route or self._route(model_name, unit, ts)
        segment = self._segment(model)
        features = self._features(model_name, model, segment, ts)
        output, truth, confidence = self._output(model_name, model, version, features, force_top)
        degrade = self._degraded(model_name, version, segment, ts)
        if degrade is not None:
            if model.output == "regression":
                sd = self._lookup(sc.error_sd, model_name, version, DEFAULT_ERROR_SD)
                truth = round(output["value"] + self.rng.gauss(0, sd * degrade["error_scale"]), 3)
            elif self.rng.random() < degrade["accuracy"]:
                truth = output["label"]
            else:
                truth = self.rng.choice([c for c in self._classes(model) if c != output["label"]])
        self._seq += 1
        event = {"event_id": self._new_id(), "prediction_id": f"p{self._seq}", "timestamp": round(ts, 3),
                 "model": model_name, "version": version, "role": role, "unit_id": unit,
                 "segment": segment, "features": features, "output": output,
                 "latency_ms": round(self.rng.lognormvariate(math.log(12), 0.6), 3)}
        if experiment is not None:
            event["experiment"], event["variant"] = experiment, variant
        injected = 0
        for i, v in enumerate(sc.violations):
            if isinstance(v, BoolAsString) and v.model == model_name and v.version in (None, version) \
                    and v.after <= ts < v.until and isinstance(features.get(v.feature), bool) \
                    and _take_exact(self._bool_counters[i], self._bool_shares[i]):
                features[v.feature] = "true" if features[v.feature] else "false"
                injected += 1
        correct = self._correct(model, output, truth, model_name)
        keys = [(self._record_prediction(event, correct, confidence), correct, output, truth)]
        extra = []
        for i, s in enumerate(sc.shadows):
            if s.model == model_name and s.primary == version and role != "shadow":
                shadow = self._shadow_of(event, s, i, model, truth)
                extra.append(shadow)
                ok = self._correct(model, shadow["output"], truth, model_name)
                keys.append((self._record_prediction(shadow, ok, self._top(shadow["output"])), ok,
                             shadow["output"], truth))
        if injected:   # shadows answer the same request, so they carry the same bad feature
            for e in (event, *extra):
                key = ("boolean_as_string", e["model"], e["version"], _seg_key(segment))
                self.tally.injected[key] = self.tally.injected.get(key, 0) + 1
        self._schedule_feedback(event, model, truth, keys)
        return event, extra

    @staticmethod
    def _classes(model: ModelConfig) -> list[str]:
        if model.output == "binary":
            return list(model.classes or ["negative", "positive"])
        return list(model.classes or ["a", "b", "c"])

    def _correct(self, model: ModelConfig, output: dict, truth, model_name: str) -> bool:
        if model.output == "regression":
            spec = self.scenario.feedback.get(model_name)
            return abs(truth - output["value"]) <= (spec.tolerance if spec else FeedbackSpec.tolerance)
        return output["label"] == truth

    @staticmethod
    def _top(output: dict) -> float:
        if "score" in output:
            return max(output["score"], 1 - output["score"])
        if "probabilities" in output:
            return output["probabilities"][output["label"]]
        return math.nan

    def _shadow_of(self, event: dict, spec: ShadowSpec, i: int, model: ModelConfig, truth) -> dict:
        disagree = _take_exact(self._shadow_counters[i], self._shadow_shares[i])
        out = dict(event["output"])
        if model.output == "binary":
            classes = self._classes(model)
            positive = model.positive_class or classes[-1]
            s = out["score"]
            if disagree:
                s = 1.0 - s
                s = max(s, 0.5) if out["label"] != positive else min(s, 0.49999)
                out["label"] = [c for c in classes if c != out["label"]][0]
            else:   # a slightly different score on the same side of 0.5
                s = min(max(s + self.rng.uniform(-0.02, 0.02), 0.5 if s >= 0.5 else 0.0), 1.0 if s >= 0.5 else 0.49999)
            out["score"] = round(s, 5)
            if out["score"] == 0.5 and out["label"] != positive:
                out["score"] = 0.49999
        elif model.output == "multiclass":
            if disagree:
                probs = dict(out["probabilities"])
                others = sorted((c for c in probs if c != out["label"]), key=lambda c: -probs[c])
                alt = others[0]
                probs[alt], probs[out["label"]] = probs[out["label"]], probs[alt]
                if probs[alt] == probs[out["label"]]:
                    probs[alt] = round(probs[alt] + 1e-6, 6)
                out["probabilities"], out["label"] = probs, alt
        else:
            tol = spec.tolerance
            if disagree:
                gap = tol + max(1.0, 0.2 * abs(out["value"]))
                out["value"] = round(out["value"] + self.rng.choice((-1, 1)) * gap, 3)
            elif tol > 0:
                out["value"] = round(out["value"] + self.rng.uniform(-tol, tol) * 0.9, 3)
        shadow = dict(event, event_id=self._new_id(), model=spec.shadow_model or event["model"],
                      version=spec.shadow, role=spec.role, output=out,
                      latency_ms=round(event["latency_ms"] * self.rng.lognormvariate(0.1, 0.3), 3))
        shadow.pop("experiment", None)
        shadow.pop("variant", None)
        key = (event["model"], event["version"], shadow["model"], spec.shadow, _seg_key(event["segment"]))
        pair = self.tally.shadow.setdefault(key, [0, 0])
        pair[0] += 1
        pair[1] += int(disagree)
        return shadow

    # -- feedback ---------------------------------------------------------------------------------------
    def _push(self, due: float, kind: str, event: dict, meta: object) -> None:
        self._hseq += 1
        heapq.heappush(self._pending_feedback, (due, self._hseq, kind, event, meta))

    def _feedback_event(self, event: dict, kind: str, due: float, value=None, **extra) -> dict:
        fb = {"event_id": self._new_id(), "prediction_id": event["prediction_id"], "timestamp": round(due, 3),
              "kind": kind, "model": event["model"]}
        if value is not None:
            fb["value"] = value
        fb.update(extra)
        return fb

    def _delay(self, median: float, sigma: float, cap: float) -> float:
        return min(cap, median * math.exp(sigma * self.rng.gauss(0, 1)))

    def _schedule_feedback(self, event: dict, model: ModelConfig, truth, keys: list) -> None:
        ts = event["timestamp"]
        spec = self.scenario.feedback.get(event["model"])
        if spec is None:   # the original behaviour: a share of labels, exponential delays
            if self.rng.random() < self.scenario.label_share:
                due = ts + self.rng.expovariate(1 / self.scenario.feedback_delay_mean)
                self._push(due, "feedback", self._feedback_event(event, "label", due, truth), (keys, [False]))
            return
        correct = keys[0][1]
        truth_sent = [False]   # label and correction are both ground truth: the first one counts
        regression = model.output == "regression"
        kinds = spec.kinds

        def later(signal: bool) -> float:
            if signal:
                return ts + self._delay(spec.signal_delay_median, spec.signal_delay_sigma, spec.max_delay)
            return ts + self._delay(spec.delay_median, spec.delay_sigma, spec.max_delay)

        if "label" in kinds and self.rng.random() < spec.label_share:
            due = later(False)
            self._push(due, "feedback", self._feedback_event(event, "label", due, truth), (keys, truth_sent))
        if "correction" in kinds:
            if regression and self.rng.random() < spec.correction_prob:
                due = later(False)
                pred = event["output"]["value"]
                self._push(due, "feedback", self._feedback_event(
                    event, "correction", due, truth, size=round(abs(pred), 3),
                    corrected=round(abs(truth - pred), 3)), (keys, truth_sent))
            elif not regression and not correct and self.rng.random() < spec.correction_prob:
                due = later(False)
                self._push(due, "feedback", self._feedback_event(event, "correction", due, truth,
                                                                 size=1, corrected=1), (keys, truth_sent))
        if "complaint" in kinds and not correct and self.rng.random() < spec.complaint_prob:
            due = later(True)
            self._push(due, "feedback", self._feedback_event(event, "complaint", due, "wrong_answer"), (keys, None))
        if "rating" in kinds and self.rng.random() < spec.rating_share:
            due = later(True)
            rating = self.rng.choices((1, 2, 3, 4, 5), RATING_RIGHT if correct else RATING_WRONG)[0]
            self._push(due, "feedback", self._feedback_event(event, "rating", due, rating), (keys, None))
        if "implicit" in kinds and self.rng.random() < (spec.implicit_prob if correct else spec.implicit_false_prob):
            due = later(True)
            self._push(due, "feedback", self._feedback_event(event, "implicit", due, "click"), (keys, None))

    def _expose(self, event: dict) -> None:
        """Count an exposure; at a unit's first exposure decide and schedule its outcomes."""
        name, variant, unit = event["experiment"], event["variant"], event["unit_id"]
        spec = next((e for e in self.scenario.experiments if e.name == name), None)
        arm = self.tally.experiments.setdefault((name, variant), ArmTruth())
        arm.exposures += 1
        if spec is None or unit in self._exposed[name]:
            return
        self._exposed[name].add(unit)
        arm.units += 1
        ts = event["timestamp"]
        if self.rng.random() < spec.conversion_rate * (1 + spec.lift.get(variant, 0.0)):
            due = ts + self._delay(spec.outcome_delay_median, 1.0, spec.outcome_max_delay)
            revenue = round(self.rng.lognormvariate(
                math.log(spec.revenue_median * (1 + spec.revenue_lift.get(variant, 0.0))), spec.revenue_sigma), 2)
            base = {"unit_id": unit, "model": event["model"], "experiment": name}
            self._push(due, "outcome", {"event_id": self._new_id(), "timestamp": round(due, 3),
                                        "metric": "conversion", "value": 1.0, **base}, (name, variant, None))
            self._push(due + 0.5, "outcome", {"event_id": self._new_id(), "timestamp": round(due + 0.5, 3),
                                              "metric": "revenue", "value": revenue, **base},
                       (name, variant, revenue))

    def _outcome(self, prediction: dict) -> dict:
        metric = self.rng.choice(["conversion", "revenue"])
        value = 1.0 if metric == "conversion" else round(self.rng.lognormvariate(3, 1), 2)
        return {"event_id": self._new_id(), "unit_id": prediction["unit_id"],
                "timestamp": prediction["timestamp"], "metric": metric, "value": value,
                "model": prediction["model"]}

    def _malformed(self, ts: float) -> bytes:
        kind = self.rng.choice(MALFORMED_KINDS)
        self.tally.malformed[kind] = self.tally.malformed.get(kind, 0) + 1
        base = self._malformed_base(ts)
        if kind == "malformed_json":
            return orjson.dumps(base)[: self.rng.randrange(5, 40)]
        if kind == "schema_violation":
            base.pop("model")
            return orjson.dumps(base)
        if kind == "non_finite_value":
            base["features"] = {"x": float("nan")}
            return json.dumps(base).encode()   # Python's json writes NaN, as careless apps do
        base["model"] = "no-such-model"
        return orjson.dumps(base)

    def _malformed_base(self, ts: float) -> dict:
        """A prediction-shaped event that is never counted as a prediction nor gets feedback."""
        model_name = self.rng.choice(self._models)
        self._seq += 1
        return {"event_id": self._new_id(), "prediction_id": f"p{self._seq}", "timestamp": round(ts, 3),
                "model": model_name, "version": "v1", "output": {"label": "x"}}

    # -- messages -------------------------------------------------------------------------------------------
    def messages(self, count: int, start: float, rate: float = 100.0) -> Iterator[Message]:
        """``count`` organic predictions (plus their shadows, feedback, outcomes, injected violations,
        malformed and duplicate messages) with event times from ``start`` at ``rate`` per second."""
        sc = self.scenario
        for i in range(count):
            ts = start + i / rate
            yield from self._due_feedback(ts)
            yield from self._due_predictions(ts)
            for key in [k for k, g in self._batch.items() if ts - g[0]["timestamp"] >= sc.linger]:
                yield self._envelope(key, self._batch.pop(key))
            self._schedule_flickers(ts)
            yield from self._due_predictions(ts)
            if sc.malformed_share and self.rng.random() < sc.malformed_share:
                self._count_message("prediction")
                yield Message("prediction", None, self._malformed(ts), ts)
                continue
            event, extra = self._prediction(ts)
            if sc.outcome_share and self.rng.random() < sc.outcome_share:
                self.tally.outcomes += 1
                self._count_message("outcome")
                outcome = self._outcome(event)
                yield Message("outcome", outcome["unit_id"].encode(), orjson.dumps(outcome), ts)
            yield from self._send(event, duplicates=True)
            for shadow in extra:
                yield from self._send(shadow, duplicates=False)
        yield from self._due_predictions(math.inf)
        for key in list(self._batch):
            yield self._envelope(key, self._batch.pop(key))

    def windows(self, n: int, per_window: int = 300, length: float | None = None,
                start: float = 1_800_000_000.0, drain: bool = True) -> Iterator[Message]:
        """``n`` windows of ``length`` seconds (default ``config.window.length``) with ``per_window``
        organic predictions each, evenly spaced; ``start`` should be window-aligned."""
        length = float(length or self.config.window.length)
        yield from self.messages(n * per_window, start=start, rate=per_window / length)
        if drain:
            yield from self.drain_feedback()

    def records(self, count: int, start: float, rate: float = 100.0,
                drain: bool = True) -> list[tuple[str, bytes | None, bytes]]:
        """Ready-to-send ``(kind, key, value)`` triples in event-time order (stable for equal times):
        kind is prediction | feedback | outcome; ``drain`` also sends all feedback still pending."""
        msgs = list(self.messages(count, start, rate))
        if drain:
            msgs += list(self.drain_feedback())
        msgs.sort(key=lambda m: m.timestamp)
        return [(m.topic_kind, m.key, m.value) for m in msgs]

    def drain_feedback(self) -> Iterator[Message]:
        """Every feedback (and delayed experiment outcome) still waiting, whatever its due time."""
        yield from self._due_feedback(math.inf)

    def _send(self, event: dict, duplicates: bool) -> Iterator[Message]:
        sc = self.scenario
        if "experiment" in event:
            self._expose(event)
        key = (event["model"], event["version"])
        dup = duplicates and sc.duplicate_share and self.rng.random() < sc.duplicate_share
        if dup:
            self.tally.duplicates["prediction"] = self.tally.duplicates.get("prediction", 0) + 1
        if sc.batch <= 1:
            self._count_message("prediction")
            body = orjson.dumps(event)
            yield Message("prediction", f"{key[0]}/{key[1]}".encode(), body, event["timestamp"])
            if dup:
                self._count_message("prediction")
                yield Message("prediction", f"{key[0]}/{key[1]}".encode(), body, event["timestamp"])
        else:
            group = self._batch.setdefault(key, [])
            group.append(event)
            if dup:
                group.append(event)
            if len(group) >= sc.batch:
                yield self._envelope(key, self._batch.pop(key))

    def _schedule_flickers(self, ts: float) -> None:
        for i, v in enumerate(self.scenario.violations):
            if not isinstance(v, Flicker) or not v.after <= ts < v.until:
                continue
            nxt = self._next_flicker[i]
            if nxt is None:
                nxt = self._next_flicker[i] = max(ts, v.after)
            if ts < nxt:
                continue
            nxt += v.every
            while nxt <= ts:
                nxt += v.every
            self._next_flicker[i] = nxt
            self._flicker_units += 1
            unit = f"flicker-{self._flicker_units}"
            model = self.config.models[v.model]
            k = 2 if model.output == "binary" else len(self._classes(model))
            first = self.rng.randrange(k)
            second = (first + 1 + self.rng.randrange(k - 1)) % k
            step = v.within / (v.flips + 1)
            for j in range(v.flips + 1):
                self._hseq += 1
                heapq.heappush(self._pending_predictions,
                               (ts + j * step, self._hseq, {"model": v.model, "version": v.version, "unit": unit,
                                                             "top": first if j % 2 == 0 else second}))
            self.tally.flickers.append((v.model, v.version, unit, v.flips, round(ts, 3)))

    def _due_predictions(self, now: float) -> Iterator[Message]:
        while self._pending_predictions and self._pending_predictions[0][0] <= now:
            due, _, spec = heapq.heappop(self._pending_predictions)
            route = (spec["version"], "primary", None, None)
            event, extra = self._prediction(due, spec["model"], spec["unit"], route, spec["top"])
            key = ("flicker", event["model"], event["version"], _seg_key(event["segment"]))
            self.tally.injected[key] = self.tally.injected.get(key, 0) + 1
            yield from self._send(event, duplicates=False)
            for shadow in extra:
                yield from self._send(shadow, duplicates=False)

    def _due_feedback(self, now: float) -> Iterator[Message]:
        while self._pending_feedback and self._pending_feedback[0][0] <= now:
            due, _, kind, event, meta = heapq.heappop(self._pending_feedback)
            if kind == "outcome":
                name, variant, revenue = meta
                self.tally.outcomes += 1
                mkey = (name, variant, event["metric"])
                self.tally.outcomes_by[mkey] = self.tally.outcomes_by.get(mkey, 0) + 1
                arm = self.tally.experiments[(name, variant)]
                if revenue is None:
                    arm.conversions += 1
                else:
                    arm.revenue += revenue
                    arm.revenue_sq += revenue * revenue
                self._count_message("outcome")
                yield Message("outcome", event["unit_id"].encode(), orjson.dumps(event), due)
                continue
            keys, truth_sent = meta
            self.tally.feedback += 1
            first_truth = truth_sent is not None and not truth_sent[0]
            if first_truth:
                truth_sent[0] = True
            for qkey, correct, output, truth in keys:
                fkey = (*qkey[:3], event["kind"])
                self.tally.feedback_by[fkey] = self.tally.feedback_by.get(fkey, 0) + 1
                if first_truth:
                    q = self.tally.quality[qkey]
                    q.labelled += 1
                    q.labelled_correct += int(correct)
                    if "value" in output:
                        err = truth - output["value"]
                        q.abs_error += abs(err)
                        q.sq_error += err * err
            self._count_message("feedback")
            yield Message("feedback", event["prediction_id"].encode(), orjson.dumps(event), due)

    def _count_message(self, kind: str) -> None:
        self.tally.messages[kind] = self.tally.messages.get(kind, 0) + 1

    def _envelope(self, key: tuple[str, str], events: list[dict]) -> Message:
        self._count_message("prediction")
        return Message("prediction", f"{key[0]}/{key[1]}".encode(),
                       orjson.dumps(columnar_envelope("prediction", events)), events[-1]["timestamp"])


def generate(config: Config, count: int, start: float, rate: float = 100.0, scenario: Scenario | None = None,
             seed: int = 0, drain: bool = True) -> tuple[list[tuple[str, bytes | None, bytes]], Tally]:
    """Ready-to-send ``(kind, key, value)`` messages in event-time order and the truth of what they hold.

    >>> from prodlens.config import load_config
    >>> cfg = load_config(data={"models": {"m": {"output": "binary", "classes": ["no", "yes"]}}})
    >>> msgs, tally = generate(cfg, 10, start=1000.0, scenario=Scenario(batch=5, outcome_share=0))
    >>> sum(tally.predictions.values()), msgs[0][0]
    (10, 'prediction')
    """
    app = SimulatedApp(config, seed=seed, scenario=scenario)
    return app.records(count, start, rate, drain=drain), app.tally


def columnar_envelope(kind: str, events: list[dict]) -> dict:
    """A columnar batch envelope (schemas/batch.v1.json) from row events of one kind."""
    names: dict[str, None] = {}
    nested: dict[str, dict[str, None]] = {}
    for event in events:
        for name, value in event.items():
            if isinstance(value, dict):
                nested.setdefault(name, {}).update(dict.fromkeys(value))
            else:
                names[name] = None
    columns: dict[str, object] = {}
    for name in names:
        values = [event.get(name) for event in events]
        columns[name] = values[0] if all(v == values[0] for v in values) and values[0] is not None else values
    for name, keys in nested.items():
        columns[name] = {k: [(event.get(name) or {}).get(k) for event in events] for k in keys}
    return {"type": "batch", "schema_version": 1, "kind": kind, "count": len(events), "columns": columns}
