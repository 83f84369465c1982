"""Test harness: real worker processes against the real test broker, plus readers for topics
and the metrics endpoint. No mocks anywhere."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

from prodlens.broker import free_port
from prodlens.config import load_config
from prodlens.streams.kafka import read_topic

REPO = Path(__file__).resolve().parents[1]


def make_config(tmp_path: Path, prefix: str, **overrides) -> Path:
    """A prodlens.yaml with fresh topic names and group so tests never share state."""
    data = yaml.safe_load((REPO / "prodlens" / "prodlens.example.yaml").read_text())
    data["topics"] = {name: f"{prefix}.{name}" for name in
                      ("predictions", "feedback", "outcomes", "deadletter", "summaries", "samples",
                       "alerts", "decisions", "state", "drift", "joins")}
    data["ingest"] = {"group_id": f"{prefix}-group", "checkpoint_interval": "1s"}
    data["window"] = {"length": "10s", "allowed_lateness": "5s", "idle_close": "3s"}
    data["broker"]["partitions"] = 2
    # top_k above the simulator's distinct values: no folding, so labels are predictable
    data["models"]["churn"]["segments"]["country"] = {"top_k": 10}
    for key, value in overrides.items():
        data[key] = value
    path = tmp_path / f"{prefix}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Worker:
    """``prodlens run`` as a subprocess, killable like a real deployment."""

    def __init__(self, config_path: Path, bootstrap: str, log_path: Path, args: tuple[str, ...] = ()):
        self.config_path = config_path
        self.bootstrap = bootstrap
        self.args = tuple(args)
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "Worker":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prodlens.cli", "run", "--config", str(self.config_path),
             "--broker", self.bootstrap, "--metrics-port", str(self.port), "--loglevel", "warn", *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                    if orjson.loads(r.read())["ready"]:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def metrics(self) -> dict[tuple, float]:
        """Every sample as {(name, sorted label items): value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)

    def stop(self) -> int:
        self.kill(signal.SIGINT)
        return self.process.returncode if self.process else 0


def metric(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == v2 for k, v2 in labels.items()))


def wait_for(predicate, timeout: float = 60, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what} (last: {last!r})")


def read_topic_sync(bootstrap: str, topic: str) -> list[tuple[int, int, bytes, bytes]]:
    return asyncio.run(read_topic(bootstrap, topic, timeout=10.0))


def load(path: Path):
    return load_config(path)


class PrometheusServer:
    """A real Prometheus (Debian package ``prometheus``) scraping the given targets every second."""

    def __init__(self, targets: list[str], workdir: Path, rule_files: list[Path] = ()):
        import shutil

        self.binary = shutil.which("prometheus")
        self.port = free_port()
        self.workdir = workdir
        self.targets = targets
        self.rule_files = list(rule_files)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "PrometheusServer":
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(p) for p in self.rule_files],
                  "scrape_configs": [{"job_name": "prodlens", "static_configs": [{"targets": self.targets}]}]}
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={path}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(self.workdir / "prometheus.log", "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: self._get("/-/ready") is not None, timeout=timeout, what="prometheus ready")
        return self

    def _get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.read()
        except OSError:
            return None

    def query(self, promql: str) -> list[dict]:
        """Instant query through the HTTP API; the result vector (or matrix) list."""
        from urllib.parse import quote

        body = self._get(f"/api/v1/query?query={quote(promql)}")
        if body is None:
            raise OSError("prometheus query failed")
        data = orjson.loads(body)
        if data["status"] != "success":
            raise AssertionError(f"{promql}: {data}")
        return data["data"]["result"]

    def api(self, path: str) -> dict:
        return orjson.loads(self._get(path))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
