"""Prometheus metrics, computed from the worker's partition state at scrape time.

Counters live in the checkpointed partition state, not in process memory, so
they survive a worker restart and follow a partition to whichever worker owns
it: ``sum`` over workers is always the fleet total. Window gauges describe the
most recent *closed* window of each (model, version, segment).

Naming follows Prometheus conventions: ``prodlens_`` prefix, base units in the
name, ``_total`` for counters.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, Metric,
                                    HistogramMetricFamily)
from prometheus_client.registry import Collector

from .contract import REASONS
from .pipeline import PartitionProcessor
from .summary import WindowSummary

WINDOW_LABELS = ["model", "version", "segment"]


class BulkHistogram:
    """A Prometheus-style cumulative histogram updated from numpy arrays (one call per batch)."""

    FLUSH_AT = 4096  # values buffered before one numpy update: single-event messages stay cheap

    def __init__(self, buckets: Iterable[float]):
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # last = +Inf overflow
        self.sum = 0.0
        self._pending: list[float] = []

    def observe_many(self, values: list[float]) -> None:
        self._pending.extend(values)
        if len(self._pending) >= self.FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        arr = np.asarray(self._pending, dtype=np.float64)
        self._pending = []
        if arr.size:
            self.counts += np.bincount(np.searchsorted(self.bounds, arr, side="left"),
                                       minlength=len(self.counts))
            self.sum += float(arr.sum())

    def buckets(self) -> list[tuple[str, int]]:
        self._flush()
        cumulative = np.cumsum(self.counts)
        edges = [f"{b:g}" for b in self.bounds] + ["+Inf"]
        return list(zip(edges, cumulative.tolist()))


DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400)


class PipelineCollector(Collector):
    """Exposes the state of the partitions this worker owns.

    ``processors`` returns the live processors; ``lag`` returns {(topic, partition): messages
    behind the high watermark} where the broker reported one; ``delays`` maps topic to a
    BulkHistogram of event-time-to-processed delay (process-local, as latency histograms are).
    """

    def __init__(self, processors: Callable[[], list[PartitionProcessor]],
                 lag: Callable[[], dict[tuple[str, int], int]] = dict,
                 delays: Callable[[], dict[str, BulkHistogram]] = dict,
                 extra: Callable[[], Iterable] = tuple):
        self._processors = processors
        self._lag = lag
        self._delays = delays
        self._extra = extra

    def collect(self):
        processors = list(self._processors())
        yield from self._health(processors)
        yield from self._windows(processors)
        yield from self._extra()

    def _health(self, processors: list[PartitionProcessor]):
        consumed = CounterMetricFamily("prodlens_events_consumed", "Events read from input topics "
                                       "(an envelope counts each event inside)", labels=["topic"])
        messages = CounterMetricFamily("prodlens_messages_consumed", "Kafka messages read", labels=["topic"])
        valid = CounterMetricFamily("prodlens_events_valid", "Events that passed validation and "
                                    "deduplication", labels=["topic"])
        rejected = CounterMetricFamily("prodlens_events_rejected", "Messages or events rejected to the "
                                       "dead-letter topic, by reason", labels=["topic", "reason"])
        duplicate = CounterMetricFamily("prodlens_events_duplicate", "Events dropped as duplicates "
                                        "of an event_id within the dedupe horizon", labels=["topic"])
        late = CounterMetricFamily("prodlens_events_late", "Events whose window had closed "
                                   "(beyond the allowed lateness)", labels=["topic"])
        closed = CounterMetricFamily("prodlens_windows_closed", "Windows closed and published",
                                     labels=["topic"])
        by_topic: dict[str, dict[str, int]] = {}
        rejected_by: dict[tuple[str, str], int] = {}
        for p in processors:
            agg = by_topic.setdefault(p.topic, {})
            for name, value in p.counters.items():
                agg[name] = agg.get(name, 0) + value
            for reason, value in p.rejected.items():
                rejected_by[(p.topic, reason)] = rejected_by.get((p.topic, reason), 0) + value
            # duplicates and late events are dead-lettered too; count them under their reason
            for reason, name in (("duplicate_event", "duplicate"), ("late_event", "late")):
                if p.counters[name]:
                    key = (p.topic, reason)
                    rejected_by[key] = rejected_by.get(key, 0) + p.counters[name]
        for topic, agg in sorted(by_topic.items()):
            consumed.add_metric([topic], agg["events"])
            messages.add_metric([topic], agg["messages"])
            valid.add_metric([topic], agg["valid"])
            duplicate.add_metric([topic], agg["duplicate"])
            late.add_metric([topic], agg["late"])
            closed.add_metric([topic], agg["windows_closed"])
        for topic in by_topic:  # every reason from 0, so rate() sees the first rejection too
            for reason in REASONS:
                rejected_by.setdefault((topic, reason), 0)
        for (topic, reason), value in sorted(rejected_by.items()):
            rejected.add_metric([topic, reason], value)
        yield from (consumed, messages, valid, rejected, duplicate, late, closed)

        lag = GaugeMetricFamily("prodlens_consumer_lag_messages", "Messages between the processed "
                                "offset and the high watermark of the last fetch",
                                labels=["topic", "partition"])
        for (topic, partition), value in sorted(self._lag().items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
        assigned = GaugeMetricFamily("prodlens_partitions_assigned", "Input partitions this worker owns",
                                     labels=["topic"])
        for topic in sorted(by_topic):
            assigned.add_metric([topic], sum(1 for p in processors if p.topic == topic))
        yield assigned
        delay = HistogramMetricFamily("prodlens_processing_delay_seconds", "Event time to processed "
                                      "time (includes the app's own delay in sending)", labels=["topic"])
        for topic, histogram in sorted(self._delays().items()):
            delay.add_metric([topic], histogram.buckets(), histogram.sum)
        yield delay

    def _windows(self, processors: list[PartitionProcessor]):
        total = CounterMetricFamily("prodlens_predictions", "Predictions accepted into windows",
                                    labels=WINDOW_LABELS)
        count = GaugeMetricFamily("prodlens_window_predictions", "Predictions in the last closed "
                                  "window", labels=WINDOW_LABELS)
        end = GaugeMetricFamily("prodlens_window_end_timestamp_seconds", "End (event time) of the "
                                "last closed window", labels=WINDOW_LABELS)
        latency = GaugeMetricFamily("prodlens_window_latency_ms", "Model latency quantiles in the last "
                                    "closed window (DDSketch, 1% relative error)",
                                    labels=WINDOW_LABELS + ["quantile"])
        latency_mean = GaugeMetricFamily("prodlens_window_latency_mean_ms", "Mean model latency in "
                                         "the last closed window", labels=WINDOW_LABELS)
        classes = GaugeMetricFamily("prodlens_window_class_ratio", "Share of each predicted class in "
                                    "the last closed window", labels=WINDOW_LABELS + ["class"])
        score = GaugeMetricFamily("prodlens_window_score_mean", "Mean positive-class score in the last "
                                  "closed window (from a 20-bin histogram: within 0.025)", labels=WINDOW_LABELS)
        value = GaugeMetricFamily("prodlens_window_output_mean", "Mean numeric output (regression) in "
                                  "the last closed window", labels=WINDOW_LABELS)
        missing = GaugeMetricFamily("prodlens_window_feature_missing_ratio", "Share of predictions "
                                    "with the feature null or absent, last closed window",
                                    labels=WINDOW_LABELS + ["feature"])
        totals: dict[tuple, int] = {}
        for p in processors:
            for key, n in p.totals.items():
                totals[key] = totals.get(key, 0) + n
        for key, n in sorted(totals.items()):
            total.add_metric(list(key), n)
        features = processors[0].features if processors else {}
        for key, (window_end, s, model) in sorted(_latest_windows(processors).items()):
            labels = list(key)
            count.add_metric(labels, s.count)
            end.add_metric(labels, window_end)
            if s.latency.count:
                for q, v in s.latency_quantiles().items():
                    latency.add_metric(labels + [f"{q:g}"], v)
                latency_mean.add_metric(labels, s.latency.mean)
            for cls, ratio in sorted(s.class_ratios().items()):
                classes.add_metric(labels + [cls], ratio)
            if s.score_hist.any():
                score.add_metric(labels, s.score_mean())
            if s.value_n:
                value.add_metric(labels, s.value_mean())
            for feature in features.get(model, ()):
                ratio = s.missing_ratio(feature)
                if not math.isnan(ratio):
                    missing.add_metric(labels + [feature], ratio)
        yield from (total, count, end, latency, latency_mean, classes, score, value, missing)
        rate = GaugeMetricFamily("prodlens_sample_inclusion_probability", "Share of the last closed "
                                 "window's predictions kept in the samples topic's reservoir (1/weight "
                                 "re-weights samples to traffic)", labels=WINDOW_LABELS)
        rates: dict[tuple, float] = {}
        for p in processors:
            rates.update(getattr(p, "sample_rates", {}))
        for key, value in sorted(rates.items()):
            rate.add_metric(list(key), value)
        yield rate



def _latest_windows(processors: list[PartitionProcessor]) -> dict[tuple, tuple[float, WindowSummary, str]]:
    """The last closed window per key, merged across partitions that closed the same window."""
    latest: dict[tuple, tuple[float, WindowSummary, str]] = {}
    for p in processors:
        for key, window in p.last_closed.items():
            current = latest.get(key)
            if current is None or window.end > current[0]:
                latest[key] = (window.end, WindowSummary().merge(window.summary), window.model)
            elif window.end == current[0]:
                current[1].merge(window.summary)
    return latest


class StageCollector(Collector):
    """Metrics of the join and analysis processors this worker owns, merged into one family
    per name. Series with identical labels from several partitions are summed (join
    counters); analysis series never collide, because each model is analysed by exactly
    one partition."""

    def __init__(self, processors: Callable[[], list]):
        self._processors = processors

    def collect(self):
        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple, float]] = {}
        for processor in self._processors():
            for family in processor.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type,
                                                            family.unit)
                    values[family.name] = {}
                acc = values[family.name]
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    acc[key] = acc.get(key, 0.0) + sample.value
        for name, family in families.items():
            for (sample_name, labels), value in values[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family


class DispatcherCollector(Collector):
    """Alert sink delivery counters of this worker (``Dispatcher.stats()``)."""

    def __init__(self, stats: Callable[[], dict[str, dict]]):
        self._stats = stats

    def collect(self):
        deliveries = CounterMetricFamily("prodlens_alert_deliveries", "Alert events handed to each sink, "
                                         "by result", labels=["sink", "result"])
        queued = GaugeMetricFamily("prodlens_alert_queue_length", "Alert events waiting for a sink",
                                   labels=["sink"])
        for sink, stats in sorted(self._stats().items()):
            for result in ("delivered", "failed_attempts", "retried", "undelivered", "dropped"):
                deliveries.add_metric([sink, result], stats.get(result, 0))
            queued.add_metric([sink], stats.get("queued", 0))
        yield deliveries
        yield queued
