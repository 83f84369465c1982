"""A simulated application: realistic prediction, feedback and outcome traffic.

The generator is pure and deterministic for a seed: several models and
versions (a primary and a canary per model), skewed segments, plausible
features and outputs, log-normal latencies with a heavy tail, feedback that
arrives minutes to hours after its prediction in event time, business
outcomes, and a configurable share of malformed and duplicate messages. It
keeps a :class:`Tally` of exactly what it sent, so tests can compare the
pipeline's numbers with the truth::

    app = SimulatedApp(load_config("prodlens.yaml"), seed=1)
    for message in app.messages(1000, start=1_800_000_000.0):
        producer.send(topic_for(message.topic_kind), message.value, key=message.key)
"""

from __future__ import annotations

import heapq
import json
import math
import random
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import orjson

from .config import Config, ModelConfig

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


@dataclass
class Message:
    topic_kind: str       # prediction | feedback | outcome
    key: bytes | None
    value: bytes
    timestamp: float      # event time of (the last event in) the message


@dataclass
class Tally:
    """What the simulator sent: the ground truth for end-to-end checks."""

    predictions: dict[tuple[str, str, dict], int] = field(default_factory=dict)  # (model, version, segment tuple)
    feedback: int = 0
    outcomes: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)   # by kind
    messages: dict[str, int] = field(default_factory=dict)     # by kind

    def predictions_by(self, model: str, version: str) -> int:
        return sum(n for (m, v, _), n in self.predictions.items() if m == model and v == version)


@dataclass
class Scenario:
    """Knobs of the simulated app. Shares are per generated prediction."""

    versions: tuple[tuple[str, str, float], ...] = (("v1", "primary", 0.9), ("v2", "canary", 0.1))
    label_share: float = 0.3           # predictions that later get a label
    feedback_delay_mean: float = 600.  # seconds of event time
    outcome_share: float = 0.05
    malformed_share: float = 0.0
    duplicate_share: float = 0.0
    missing_share: float = 0.02        # each feature is null this often
    batch: int = 1                     # events per message (1 = single events; >1 = columnar envelopes)
    linger: float = 1.0                # an envelope is sent once its oldest event is this old (event time)
    drift: dict | None = None          # {"model", "feature", "segment": {"country": "DE"}, "shift", "after"}
    degrade: dict | None = None        # {"model", "version", "segment", "accuracy", "after"}


def _weighted(rng: random.Random, values: list[tuple[str, float]]) -> str:
    total = sum(w for _, w in values)
    x = rng.random() * total
    for value, weight in values:
        x -= weight
        if x <= 0:
            return value
    return values[-1][0]


class SimulatedApp:
    """Deterministic generator of the messages a real app would produce."""

    def __init__(self, config: Config, seed: int = 0, scenario: Scenario | None = None):
        self.config = config
        self.rng = random.Random(seed)
        self.scenario = scenario or Scenario()
        self.tally = Tally()
        self._pending_feedback: list[tuple[float, int, dict]] = []  # heap by due event time
        self._seq = 0

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
            if kind == "numeric":
                value = self.rng.gauss(10 + 5 * i, 3 + i)
                if drift and drift["model"] == model_name and drift["feature"] == name \
                        and ts >= drift.get("after", 0) \
                        and all(segment.get(k) == v for k, v in drift.get("segment", {}).items()):
                    value += drift["shift"]
                features[name] = round(value, 4)
            elif kind == "boolean":
                features[name] = self.rng.random() < 0.3
            else:
                features[name] = self.rng.choice(PLANS.get(name, CATEGORY_VALUES))
        return features

    def _output(self, model: ModelConfig, features: dict) -> tuple[dict, object]:
        """The model's answer and the true outcome it should have predicted."""
        numeric = [v for v in features.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        signal = (sum(numeric) / len(numeric) - 12.5) / 4 if numeric else 0.0
        if model.output == "binary":
            classes = model.classes or ["negative", "positive"]
            positive = model.positive_class or classes[-1]
            negative = [c for c in classes if c != positive][0]
            score = 1 / (1 + math.exp(-(signal + self.rng.gauss(0, 1.5))))
            truth = positive if self.rng.random() < score else negative  # calibrated
            return {"label": positive if score >= 0.5 else negative, "score": round(score, 5)}, truth
        if model.output == "multiclass":
            classes = model.classes or ["a", "b", "c"]
            logits = [self.rng.gauss(0, 1) + (signal if j == 0 else 0) for j in range(len(classes))]
            top = max(logits)
            exp = [math.exp(v - top) for v in logits]
            total = sum(exp)
            probs = {c: round(e / total, 5) for c, e in zip(classes, exp)}
            label = max(probs, key=probs.get)
            truth = label if self.rng.random() < 0.75 else self.rng.choice(classes)
            return {"label": label, "probabilities": probs}, truth
        value = max(0.5, 12 + 3 * signal + self.rng.gauss(0, 2))
        return {"value": round(value, 3)}, round(value + self.rng.gauss(0, 1.5), 3)

    def _prediction(self, ts: float) -> dict:
        model_name = self.rng.choice(list(self.config.models))
        model = self.config.models[model_name]
        x = self.rng.random()
        for version, role, share in self.scenario.versions:
            x -= share
            if x <= 0:
                break
        segment = self._segment(model)
        features = self._features(model_name, model, segment, ts)
        output, truth = self._output(model, features)
        self._seq += 1
        event = {"event_id": uuid.UUID(int=self.rng.getrandbits(128)).hex,
                 "prediction_id": f"p{self._seq}", "timestamp": round(ts, 3), "model": model_name,
                 "version": version, "role": role, "unit_id": f"u{self.rng.randrange(50_000)}",
                 "segment": segment, "features": features, "output": output,
                 "latency_ms": round(self.rng.lognormvariate(math.log(12), 0.6), 3)}
        degrade = self.scenario.degrade
        if degrade and degrade["model"] == model_name and degrade["version"] == version \
                and ts >= degrade.get("after", 0) \
                and all(segment.get(k) == v for k, v in degrade.get("segment", {}).items()) \
                and model.classes and self.rng.random() > degrade["accuracy"]:
            truth = self.rng.choice([c for c in model.classes if c != output.get("label")])
        if self.rng.random() < self.scenario.label_share:
            due = ts + self.rng.expovariate(1 / self.scenario.feedback_delay_mean)
            heapq.heappush(self._pending_feedback, (due, self._seq, {
                "event_id": uuid.UUID(int=self.rng.getrandbits(128)).hex, "prediction_id": event["prediction_id"],
                "timestamp": round(due, 3), "kind": "label", "value": truth, "model": model_name}))
        return event

    def _outcome(self, prediction: dict) -> dict:
        metric = self.rng.choice(["conversion", "revenue"])
        value = 1.0 if metric == "conversion" else round(self.rng.lognormvariate(3, 1), 2)
        return {"event_id": uuid.UUID(int=self.rng.getrandbits(128)).hex, "unit_id": prediction["unit_id"],
                "timestamp": prediction["timestamp"], "metric": metric, "value": value,
                "model": prediction["model"]}

    def _malformed(self, ts: float) -> bytes:
        kind = self.rng.choice(MALFORMED_KINDS)
        self.tally.malformed[kind] = self.tally.malformed.get(kind, 0) + 1
        base = self._prediction(ts)
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

    # -- messages -------------------------------------------------------------------------------------------
    def messages(self, count: int, start: float, rate: float = 100.0) -> Iterator[Message]:
        """``count`` predictions (plus their feedback, outcomes, malformed and duplicate
        messages) with event times from ``start`` at ``rate`` predictions per second."""
        sc = self.scenario
        batch: dict[tuple[str, str], list[dict]] = {}
        for i in range(count):
            ts = start + i / rate
            yield from self._due_feedback(ts)
            for key in [k for k, g in batch.items() if ts - g[0]["timestamp"] >= sc.linger]:
                yield self._envelope(key, batch.pop(key))
            if sc.malformed_share and self.rng.random() < sc.malformed_share:
                self._count_message("prediction")
                yield Message("prediction", None, self._malformed(ts), ts)
                continue
            event = self._prediction(ts)
            key = (event["model"], event["version"])
            seg = tuple(sorted(event["segment"].items()))
            tkey = (event["model"], event["version"], seg)
            self.tally.predictions[tkey] = self.tally.predictions.get(tkey, 0) + 1
            if sc.outcome_share and self.rng.random() < sc.outcome_share:
                self.tally.outcomes += 1
                self._count_message("outcome")
                yield Message("outcome", None, orjson.dumps(self._outcome(event)), ts)
            if sc.batch <= 1:
                self._count_message("prediction")
                body = orjson.dumps(event)
                yield Message("prediction", f"{key[0]}/{key[1]}".encode(), body, ts)
                if sc.duplicate_share and self.rng.random() < sc.duplicate_share:
                    self.tally.duplicates["prediction"] = self.tally.duplicates.get("prediction", 0) + 1
                    self._count_message("prediction")
                    yield Message("prediction", f"{key[0]}/{key[1]}".encode(), body, ts)
            else:
                group = batch.setdefault(key, [])
                group.append(event)
                if sc.duplicate_share and self.rng.random() < sc.duplicate_share:
                    self.tally.duplicates["prediction"] = self.tally.duplicates.get("prediction", 0) + 1
                    group.append(event)
                if len(group) >= sc.batch:
                    yield self._envelope(key, batch.pop(key))
        for key in list(batch):
            yield self._envelope(key, batch.pop(key))

    def drain_feedback(self) -> Iterator[Message]:
        """Every feedback event still waiting, whatever its due time."""
        yield from self._due_feedback(math.inf)

    def _due_feedback(self, now: float) -> Iterator[Message]:
        while self._pending_feedback and self._pending_feedback[0][0] <= now:
            due, _, event = heapq.heappop(self._pending_feedback)
            self.tally.feedback += 1
            self._count_message("feedback")
            yield Message("feedback", event["model"].encode(), orjson.dumps(event), due)

    def _count_message(self, kind: str) -> None:
        self.tally.messages[kind] = self.tally.messages.get(kind, 0) + 1

    def _envelope(self, key: tuple[str, str], events: list[dict]) -> Message:
        self._count_message("prediction")
        return Message("prediction", f"{key[0]}/{key[1]}".encode(),
                       orjson.dumps(columnar_envelope("prediction", events)), events[-1]["timestamp"])


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
