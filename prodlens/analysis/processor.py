"""The analysis stage's pure core: one summaries-topic partition.

Upstream stages publish partial states (closed ingest windows, join-partition
quality, experiment and shadow state, invariant windows) to the summaries
topic, keyed by model (or ``experiment/<name>``), so everything about a model
meets in one partition and is analysed by exactly one worker. An
:class:`AnalysisProcessor` routes each record to the analysers that consume its
``type``, ticks them (they evaluate what is due and return records for the
drift, decisions and summaries topics), then evaluates the alert rules over
the metrics those analysers export.

It follows the stage contract of ``streams/app.py`` (``process`` in offset
order, ``tick``, ``to_dict`` / ``restore`` / ``replay_from``, ``collect``), so a
restarted worker restores it from the state topic and replays exactly.

>>> from prodlens.config import load_config
>>> cfg = load_config(data={"models": {"m": {"output": "binary"}}})
>>> p = AnalysisProcessor(cfg, "prodlens.summaries", 0)
>>> _ = p.process(b'{"type": "nothing_we_know"}', 0, now=1.0)
>>> p.counters["unknown_type"], p.next_offset
(1, 1)
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

import orjson
from prometheus_client.core import CounterMetricFamily

from ..config import Config
from ..pipeline import Outputs, message_deadletter
from .alerting import AlertingAnalyser
from .drift import DriftAnalyser
from .experiments import ExperimentAnalyser
from .invariants import InvariantAnalyser
from .quality import QualityAnalyser

log = logging.getLogger("prodlens.analysis")

ANALYSERS = {"quality": QualityAnalyser, "drift": DriftAnalyser, "experiments": ExperimentAnalyser,
             "invariants": InvariantAnalyser}


# Records this stage itself publishes on the summaries topic, for people and tools (the report
# command); they come back to it as input and are skipped.
OWN_OUTPUTS = frozenset({"quality_summary", "experiment_result", "shadow_result"})


def metric_catalogue() -> dict[str, tuple[str, ...]]:
    """Metric name -> label names of everything the analysis stage exports."""
    from . import alerting, drift, experiments, invariants, quality

    catalogue: dict[str, tuple[str, ...]] = {}
    for module in (quality, drift, experiments, invariants, alerting):
        catalogue.update(module.METRICS)
    catalogue["prodlens_analysis_errors_total"] = ("analyser",)
    return catalogue


class AnalysisProcessor:
    """State and processing of one summaries-topic partition (pure: no Kafka, no asyncio)."""

    kind = "analysis"

    def __init__(self, config: Config, topic: str, partition: int):
        self.config = config
        self.topic = topic
        self.partition = partition
        self.analysers = {name: cls(config) for name, cls in ANALYSERS.items()}
        self.alerting = AlertingAnalyser(config)
        self._routes: dict[str, list] = {}
        for analyser in self.analysers.values():
            for record_type in analyser.types:
                self._routes.setdefault(record_type, []).append(analyser)
        self.next_offset = 0
        self.counters = {"records": 0, "malformed": 0, "unknown_type": 0}
        self.last_event_at: float | None = None

    def process(self, raw: bytes | None, offset: int, now: float | None = None,
                key: bytes | None = None) -> Outputs:
        out = Outputs()
        if offset < self.next_offset:
            return out
        now = time.time() if now is None else now
        self.next_offset = offset + 1
        self.last_event_at = now
        self.counters["records"] += 1
        try:
            record = orjson.loads(raw) if raw else None
            record_type = record.get("type") if isinstance(record, dict) else None
        except orjson.JSONDecodeError as exc:
            record, record_type = None, None
            self._reject(out, raw, offset, "malformed_json", f"not JSON: {exc}")
            return out
        analysers = self._routes.get(record_type)
        if not analysers and record_type in OWN_OUTPUTS:
            return out
        if not analysers:
            self.counters["unknown_type"] += 1
            return out
        for analyser in analysers:
            try:
                analyser.update(key or b"", record, now)
            except (ValueError, KeyError, TypeError) as exc:
                # A record this stage cannot use (a foreign producer on the topic, a format from
                # another release): dead-letter it with the reason and keep going.
                self._reject(out, raw, offset, "schema_violation", f"{type(analyser).__name__}: {exc}")
        return out

    def tick(self, now: float) -> Outputs:
        """Evaluate what is due, then the alert rules over the resulting metrics."""
        out = Outputs()
        for name, analyser in self.analysers.items():
            try:
                out.messages.extend(analyser.tick(now))
            except Exception:
                # One analyser's bug must not stop the others (nor the worker): count it, log it
                # with its traceback, and carry on; its state is unchanged for the next tick.
                self.counters[f"tick_errors_{name}"] = self.counters.get(f"tick_errors_{name}", 0) + 1
                log.exception("analysis %s of %s:%s failed this tick", name, self.topic, self.partition)
        emits, events = self.alerting.evaluate(now, list(self._analyser_metrics()))
        out.messages.extend(emits)
        out.alert_events.extend(events)
        return out

    def _reject(self, out: Outputs, raw: bytes | None, offset: int, reason: str, error: str) -> None:
        self.counters["malformed"] += 1
        out.deadletters.append(message_deadletter(self.topic, self.partition, offset, reason, error, raw))

    # -- metrics ---------------------------------------------------------------------------------
    def _analyser_metrics(self) -> Iterable:
        for analyser in self.analysers.values():
            yield from analyser.collect()

    def collect(self) -> Iterable:
        yield from self._analyser_metrics()
        yield from self.alerting.collect()
        errors = CounterMetricFamily("prodlens_analysis_errors", "Ticks in which an analyser failed "
                                     "(see the worker log)", labels=["analyser"])
        for name in self.analysers:
            errors.add_metric([name], self.counters.get(f"tick_errors_{name}", 0))
        yield errors

    # -- snapshots -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": "prodlens.analysis_state.v1", "topic": self.topic, "partition": self.partition,
                "next_offset": self.next_offset, "counters": self.counters,
                "analysers": {name: a.to_dict() for name, a in self.analysers.items()},
                "alerting": self.alerting.to_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        self.next_offset = state["next_offset"]
        self.counters.update(state["counters"])
        for name, analyser_state in state["analysers"].items():
            if name in self.analysers:
                self.analysers[name].restore(analyser_state)
        self.alerting.restore(state["alerting"])

    @property
    def replay_from(self) -> int:
        return self.next_offset
