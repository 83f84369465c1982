"""A real Prometheus scrapes the worker's endpoint; metrics come back through its HTTP API."""

import asyncio
import shutil
import time

import pytest

from harness import PrometheusServer, Worker, load, make_config, metric, wait_for
from prodlens.simulate import Scenario
from prodlens.streams.kafka import ensure_topics
from prodlens.streams.producer import simulate_burst

pytestmark = [pytest.mark.broker, pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="needs the prometheus binary (Debian package 'prometheus'; .ci/run installs it)")]


def test_real_prometheus_reads_pipeline_metrics(kafka_bootstrap, unique_name, tmp_path):
    path = make_config(tmp_path, unique_name)
    config = load(path)
    asyncio.run(ensure_topics(kafka_bootstrap, config))
    worker = Worker(path, kafka_bootstrap, tmp_path / "worker.log").start()
    prometheus = PrometheusServer([f"127.0.0.1:{worker.port}"], tmp_path).start()
    try:
        tally = asyncio.run(simulate_burst(kafka_bootstrap, config, 600, start=time.time() - 30,
                                           rate=20, scenario=Scenario(batch=10), seed=5))
        expected = sum(tally.predictions.values())
        wait_for(lambda: metric(worker.metrics(), "prodlens_predictions_total") == expected)

        def scraped():
            result = prometheus.query('sum(prodlens_predictions_total{job="prodlens"})')
            return result and float(result[0]["value"][1]) == expected
        wait_for(scraped, timeout=30, what="prometheus to scrape the final count")
        by_version = prometheus.query('sum by (model, version) (prodlens_predictions_total)')
        assert {(r["metric"]["model"], r["metric"]["version"]) for r in by_version} == \
            {(m, v) for (m, v, _) in tally.predictions}
        targets = prometheus.api("/api/v1/targets")["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"]
    finally:
        prometheus.stop()
        worker.stop()
