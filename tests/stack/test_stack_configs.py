"""deploy/: the Prometheus config and rules pass promtool (and their unit tests), the
Alertmanager config passes amtool, and a real Alertmanager delivers an alert to the
log receiver (deploy/alert_log.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import wait_for
from prodlens.broker import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = sorted((DEPLOY / "rules").glob("*.rules.yml"))
RULE_TESTS = sorted((DEPLOY / "rules").glob("*.test.yml"))


def needs(binary: str, package: str):
    return pytest.mark.skipif(shutil.which(binary) is None,
                              reason=f"needs the {binary} binary (Debian package '{package}'; "
                                     ".ci/run installs it)")


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@needs("promtool", "prometheus")
def test_prometheus_config_passes_promtool():
    out = run("promtool", "check", "config", str(DEPLOY / "prometheus.yml"))
    # the rules glob must find the shipped rule files, not silently match nothing
    assert f"SUCCESS: {len(RULES)} rule files found" in out


@needs("promtool", "prometheus")
def test_rules_pass_promtool_and_their_unit_tests():
    assert RULES and RULE_TESTS
    run("promtool", "check", "rules", *map(str, RULES))
    covered = set()
    for path in RULE_TESTS:
        run("promtool", "test", "rules", str(path))
        spec = yaml.safe_load(path.read_text())
        covered |= {t["alertname"] for case in spec["tests"] for t in case.get("alert_rule_test", [])}
    alerts = {r["alert"] for path in RULES for g in yaml.safe_load(path.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    assert alerts <= covered, f"alerts without a promtool unit test: {alerts - covered}"


@needs("amtool", "prometheus-alertmanager")
def test_alertmanager_config_passes_amtool():
    run("amtool", "check-config", str(DEPLOY / "alertmanager.yml"))


def load_alert_log():
    spec = importlib.util.spec_from_file_location("alert_log", DEPLOY / "alert_log.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_alert_log_formats_one_line_per_alert():
    alert_log = load_alert_log()
    payload = {"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": "ProdlensDeadLettersHigh", "topic": "p", "severity": "warning"},
         "annotations": {"summary": "p: 5% of events dead-lettered"}},
        {"status": "resolved", "labels": {"alertname": "ProdlensWorkersDown"}, "annotations": {}}]}
    alerts = alert_log.alerts_of(json.dumps(payload).encode())
    lines = [alert_log.format_alert(a, 1_800_000_000) for a in alerts]
    assert lines == [
        '2027-01-15T08:00:00Z FIRING ProdlensDeadLettersHigh {severity="warning", topic="p"} '
        'p: 5% of events dead-lettered',
        "2027-01-15T08:00:00Z RESOLVED ProdlensWorkersDown {}"]
    for bad, why in ((b"{", "not JSON"), (b'{"status": "firing"}', "no 'alerts' list")):
        with pytest.raises(ValueError, match=why):
            alert_log.alerts_of(bad)


@pytest.fixture
def alert_log_server(tmp_path):
    port = free_port()
    out = tmp_path / "alert-log.out"
    process = subprocess.Popen([sys.executable, str(DEPLOY / "alert_log.py"), "--host", "127.0.0.1",
                                "--port", str(port)], stdout=open(out, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "listening" in out.read_text(), timeout=15, what="alert-log to listen")
        yield port, out
    finally:
        process.terminate()
        process.wait(10)


def test_alert_log_rejects_a_payload_that_is_not_a_webhook(alert_log_server):
    port, out = alert_log_server
    request = urllib.request.Request(f"http://127.0.0.1:{port}/alerts", data=b'{"x": 1}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    assert error.value.code == 400 and b"no 'alerts' list" in error.value.read()


@needs("prometheus-alertmanager", "prometheus-alertmanager")
def test_alertmanager_delivers_to_the_log_receiver(alert_log_server, tmp_path):
    """deploy/alertmanager.yml as shipped, except the receiver's address (the compose service
    name) and the grouping waits (so the test does not sit out group_wait)."""
    log_port, out = alert_log_server
    config = yaml.safe_load((DEPLOY / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"http://127.0.0.1:{log_port}/alerts"
    for route in [config["route"], *config["route"].get("routes", [])]:
        route["group_wait"] = "0s"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [shutil.which("prometheus-alertmanager"), f"--config.file={path}",
         f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{port}",
         "--cluster.listen-address="],
        stdout=open(tmp_path / "alertmanager.log", "wb"), stderr=subprocess.STDOUT)
    try:
        def ready():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(ready, timeout=30, what="alertmanager ready")
        # one alert through the default route, then a critical one through its own route
        for alert, line in (
                ({"labels": {"alertname": "ProdlensDeadLettersHigh", "severity": "warning",
                             "topic": "prodlens.predictions"},
                  "annotations": {"summary": "prodlens.predictions: 5% of events dead-lettered"}},
                 'FIRING ProdlensDeadLettersHigh {severity="warning", topic="prodlens.predictions"} '
                 'prodlens.predictions: 5% of events dead-lettered'),
                ({"labels": {"alertname": "ProdlensWorkersDown", "severity": "critical"},
                  "annotations": {"summary": "no prodlens worker is up"}},
                 'FIRING ProdlensWorkersDown {severity="critical"} no prodlens worker is up')):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v2/alerts",
                                             data=json.dumps([alert]).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=5).close()
            wait_for(lambda: any(l.endswith(line) for l in out.read_text().splitlines()),
                     timeout=30, what=f"the log receiver to print {alert['labels']['alertname']}")
    finally:
        process.terminate()
        process.wait(20)
