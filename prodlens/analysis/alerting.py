"""The alerting analyser: alert rules over the metrics of one analysis partition.

:class:`AlertingAnalyser` owns a :class:`~prodlens.alerts.state.AlertEngine` built from
the ``alerts:`` section of prodlens.yaml. It consumes no records: each tick the
:class:`~prodlens.analysis.processor.AnalysisProcessor` passes the metric families its
other analysers collected to :meth:`AlertingAnalyser.evaluate`, which returns the
records for the alerts topic (``schemas/alert.v1.json``, key = fingerprint) and the
:class:`~prodlens.alerts.state.AlertEvent` objects for the app's sink
:class:`~prodlens.alerts.sinks.Dispatcher`.

Lifecycle (see :mod:`prodlens.alerts.state`): inactive → pending → firing → resolved,
one event per transition; ``for`` / ``for_evaluations`` delay firing, a
``resolve_threshold`` / ``resolve_band`` gives hysteresis so a value oscillating around
the fire threshold fires once and does not flap, ``keep_firing_for`` delays resolving.
Rules are evaluated every ``alerts.evaluation_interval`` (default 30s) of processing
time, like Prometheus does, so ``for_evaluations: 3`` means three intervals.

Partitions: an analysis partition only sees the metrics of the models keyed to it.
The engine therefore judges only the series it has: an ``above``/``below``/``outside``
rule acts on the series present here; a ``no_data`` rule only fires for a series this
partition has seen before and that then vanished (or dropped to zero) — never for a
rule whose selector matched nothing here, since that model may simply live on another
partition. A rule on a metric the analysis stage does not export (ingest metrics such
as ``prodlens_predictions_total``) never fires here; the Prometheus rule export
(``prodlens alerts export``) covers those.

Restarts: the engine state (pending/firing alerts, series history) is part of
:meth:`to_dict`, so a restored partition neither loses a firing alert nor fires it
again; the resolved event of an alert that fired before the restart is still sent
once. The app publishes a tick's outputs before it snapshots the state, so events are
acknowledged as soon as they are returned; a crash between publishing and the next
snapshot can repeat a transition after the restart (at-least-once).

YAML (``alerts:`` in prodlens.yaml; rules in :mod:`prodlens.alerts.rules`, sinks in
:mod:`prodlens.alerts.sinks`)::

    alerts:
      evaluation_interval: 30s
      window: 1m
      rules:
        - name: AccuracyLow
          metric: prodlens_quality
          match: {metric: accuracy, view: window}
          condition: below
          threshold: 0.80
          resolve_threshold: 0.83
          for: 5m
          min_samples: 200              # needs prodlens_quality_n >= 200
          severity: critical
          summary: "Accuracy of {model} {version} in {segment} is {$value:.3f}"
        - name: InvariantViolated
          metric: prodlens_invariant_violations_total
          function: {increase: 10m}
          condition: above
          threshold: 0
          severity: warning
          description: "{invariant} violated by {model} {version} in {segment}: {$value:.0f} in 10m"
        - name: FeatureDrift
          metric: prodlens_drift_verdict
          condition: above
          threshold: 1.5                # 2 = alert
          resolve_threshold: 0.5        # back to 0 = ok
          for_evaluations: 2
      sinks:
        - kind: log
        - kind: webhook
          url_env: PRODLENS_WEBHOOK_URL
          secret_env: PRODLENS_WEBHOOK_SECRET
        - kind: alertmanager
          url: http://alertmanager:9093

The alerts topic (``topics.alerts``) always receives every event through this
analyser's emits; a ``kind: topic`` sink is accepted and left out by
:func:`sinks_from_config` (it would publish each event twice).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..alerts.rules import AlertsSpec, parse_alerts, samples_from_families
from ..alerts.sinks import Sink, TopicSink, build_sinks
from ..alerts.state import AlertEngine, AlertEvent

log = logging.getLogger("prodlens.analysis.alerting")

STATE_VERSION = 1
METRICS: dict[str, tuple[str, ...]] = {
    "prodlens_alerts_firing": ("alertname", "severity"),
    "prodlens_alert_transitions_total": ("alertname", "state"),
}
Emit = tuple[str, bytes, dict]


def _alerts_section(config: Any) -> Any:
    section = getattr(config, "alerts", None)
    return section or None


def sinks_from_config(config: Any, *, env: Mapping[str, str] | None = None) -> list[Sink]:
    """The sinks of ``alerts.sinks`` for the app's :class:`~prodlens.alerts.sinks.Dispatcher`.

    Validated like the rest of the section (errors name ``alerts.sinks[i].field``); URLs and
    secrets may come from environment variables (``url_env``, ``secret_env``). ``kind: topic``
    is left out: the analysis stage publishes every alert event to the alerts topic itself.
    """
    spec = parse_alerts(_alerts_section(config), catalogue=None)

    async def _unused(key: bytes, value: bytes) -> None:  # pragma: no cover - never delivered
        raise RuntimeError("the alerts topic is written by the analysis stage")

    sinks = build_sinks(spec.sinks, env=env, topic_send=_unused)
    return [s for s in sinks if not isinstance(s, TopicSink)]


class AlertingAnalyser:
    """Alert rules evaluated on the metric families of one analysis partition.

    >>> from prodlens.config import load_config
    >>> from prometheus_client.core import GaugeMetricFamily
    >>> cfg = load_config(data={"models": {"m": {"output": "binary"}}, "alerts": {
    ...     "evaluation_interval": "10s", "rules": [{"name": "Low", "metric": "prodlens_quality",
    ...     "condition": "below", "threshold": 0.8, "resolve_threshold": 0.85}]}})
    >>> a = AlertingAnalyser(cfg)
    >>> def fam(v):
    ...     f = GaugeMetricFamily("prodlens_quality", "", labels=["model", "metric"])
    ...     f.add_metric(["m", "accuracy"], v)
    ...     return [f]
    >>> emits, events = a.evaluate(0.0, fam(0.7))
    >>> [e.status for e in events], emits[0][0], emits[0][1] == events[0].fingerprint.encode()
    (['firing'], 'prodlens.alerts', True)
    >>> a.evaluate(10.0, fam(0.82))[1]          # between the thresholds: still firing, no event
    []
    >>> [e.status for e in a.evaluate(20.0, fam(0.9))[1]]
    ['resolved']
    """

    types: frozenset[str] = frozenset()

    def __init__(self, config: Any, *, catalogue: Mapping[str, Any] | None = None):
        """``catalogue``: metric names the analysis stage exports (e.g. ``metric_catalogue()`` of
        the processor); rules watching anything else are logged once as never evaluated here."""
        self.spec: AlertsSpec = parse_alerts(_alerts_section(config), catalogue=None)
        self.topic: str = config.topics.alerts
        self.interval = self.spec.evaluation_interval
        self.engine = AlertEngine(self.spec, absent_selector=False)
        self.transitions: dict[tuple[str, str], int] = {}
        self.unevaluated: list[str] = []
        if catalogue is not None:
            for rule in self.spec.rules:
                needed = [rule.metric] + ([rule.companion()] if rule.min_samples is not None else [])
                missing = [m for m in needed if m not in catalogue]
                if missing:
                    self.unevaluated.append(rule.name)
                    log.warning("alert rule %s watches %s, which the analysis stage does not export: the "
                                "pipeline never evaluates it (the Prometheus rule export does)",
                                rule.name, ", ".join(missing))

    # ------------------------------------------------------------------ protocol
    def update(self, key: bytes, record: dict, now: float) -> None:
        """Consumes no records (``types`` is empty)."""

    def tick(self, now: float) -> list[Emit]:
        """Nothing on its own: the processor calls :meth:`evaluate` with the other analysers' metrics."""
        return []

    def due(self, now: float) -> bool:
        """Whether :meth:`evaluate` would evaluate the rules at ``now``."""
        last = self.engine.last_evaluation
        return not self.engine.idle() and (last is None or now - last >= self.interval)

    def evaluate(self, now: float, families: Iterable[Any]) -> tuple[list[Emit], list[AlertEvent]]:
        """Evaluate the rules on the metric families (once per ``evaluation_interval``).

        Returns the alerts-topic emits ``(topic, fingerprint, alert record)`` and the events
        for the sink dispatcher, one per pending→firing and firing→resolved transition.
        """
        if not self.due(now):
            return [], []
        events = self.engine.evaluate(now, samples_from_families(families))
        self.engine.acknowledge(events)  # published with this tick's outputs, before the next snapshot
        for e in events:
            key = (e.rule, e.status)
            self.transitions[key] = self.transitions.get(key, 0) + 1
        return [(self.topic, e.fingerprint.encode(), e.to_dict()) for e in events], events

    def firing(self) -> list[AlertEvent]:
        """The firing alerts' events, for :meth:`Dispatcher.refresh` (Alertmanager re-sends)."""
        return self.engine.firing()

    def states(self) -> list[dict]:
        """Pending and firing alerts: rule, labels, state, since, value."""
        return self.engine.states()

    # ------------------------------------------------------------------ metrics
    def collect(self) -> Iterable[Any]:
        firing = GaugeMetricFamily("prodlens_alerts_firing", "Alerts firing now (this analysis partition)",
                                   labels=("alertname", "severity"))
        counts: dict[tuple[str, str], int] = {(r.name, r.severity): 0 for r in self.spec.rules}
        for state in self.engine.states():
            if state["state"] == "firing":
                rule = self.engine.rules.get(state["rule"])
                key = (state["rule"], rule.severity if rule is not None else "")
                counts[key] = counts.get(key, 0) + 1
        for key, n in sorted(counts.items()):
            firing.add_metric(list(key), n)
        transitions = CounterMetricFamily("prodlens_alert_transitions", "Alert transitions (firing, resolved)",
                                          labels=("alertname", "state"))
        keys = {(r.name, s) for r in self.spec.rules for s in ("firing", "resolved")} | set(self.transitions)
        for key in sorted(keys):
            transitions.add_metric(list(key), self.transitions.get(key, 0))
        return [firing, transitions]

    # ------------------------------------------------------------------ snapshots
    def to_dict(self) -> dict:
        return {"state_version": STATE_VERSION, "engine": self.engine.to_dict(),
                "transitions": [[rule, status, n] for (rule, status), n in sorted(self.transitions.items())]}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Restore; alerts of rules removed from the config resolve at the next evaluation."""
        if state.get("state_version") != STATE_VERSION:
            raise ValueError(f"alerting analyser state_version: expected {STATE_VERSION}, "
                             f"got {state.get('state_version')!r}")
        self.engine = AlertEngine.from_dict(state["engine"], self.spec, absent_selector=False)
        self.transitions = {(rule, status): n for rule, status, n in state["transitions"]}
