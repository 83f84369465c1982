"""Alerting: rules over any pipeline metric, their lifecycle, sinks, and the Prometheus rule export.

* :mod:`prodlens.alerts.rules` — the ``alerts:`` spec, validated at start (:func:`parse_alerts`).
* :mod:`prodlens.alerts.state` — :class:`AlertEngine`, one state machine per rule × label set.
* :mod:`prodlens.alerts.sinks` — alerts topic, webhook (HMAC), Alertmanager, Slack, log; the
  non-blocking :class:`~prodlens.alerts.sinks.Dispatcher` (asyncio, httpx).
* :mod:`prodlens.alerts.promrules` — the same rules as Prometheus alerting rules.
"""

from .rules import (DEFAULT_CATALOGUE, AlertConfigError, AlertRule, AlertsSpec, Sample, catalogue_from_registry,
                    parse_alerts, samples_from_families, samples_from_registry)
from .state import AlertEngine, AlertEvent

__all__ = ["DEFAULT_CATALOGUE", "AlertConfigError", "AlertRule", "AlertsSpec", "Sample", "catalogue_from_registry",
           "parse_alerts", "samples_from_families", "samples_from_registry", "AlertEngine", "AlertEvent"]
