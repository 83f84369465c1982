"""Start-time checks of the config sections other stages own (alerts, invariants), so a bad
rule stops ``prodlens run`` with a message naming it instead of failing later."""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry

from .config import Config, ConfigError


@functools.cache
def metric_catalogue() -> dict[str, tuple[str, ...] | None]:
    """Every metric name the pipeline exports, for validating alert rules."""
    from .alerts.rules import DEFAULT_CATALOGUE, catalogue_from_registry
    from .analysis.processor import metric_catalogue as analysis_catalogue
    from .joins import METRICS as join_metrics
    from .metrics import PipelineCollector

    registry = CollectorRegistry()
    registry.register(PipelineCollector(list))
    return {**catalogue_from_registry(registry), **DEFAULT_CATALOGUE, **join_metrics, **analysis_catalogue()}


def validate_sections(config: Config) -> None:
    """Parse ``invariants:`` and ``alerts:``; raise ConfigError naming the bad rule."""
    from .alerts.rules import parse_alerts
    from .invariants import parse_invariants_section

    errors = []
    try:
        parse_invariants_section(config.invariants, config.models)
    except ValueError as exc:
        errors.append(str(exc))
    try:
        parse_alerts(config.alerts or None, catalogue=metric_catalogue())
    except ValueError as exc:
        errors.append(str(exc))
    if errors:
        raise ConfigError("configuration is invalid:\n  - " + "\n  - ".join(errors))
