"""docker-compose.yml, the Dockerfile and the files they mount agree with each other.

No Docker engine is needed: `docker-compose config` (Debian package docker-compose)
validates and resolves the file; the rest reads the files themselves.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
EXTERNAL_IMAGES = {"kafka": "apache/kafka", "prometheus": "prom/prometheus",
                   "alertmanager": "prom/alertmanager", "grafana": "grafana/grafana"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the x-prodlens merge keys


def option(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def mounts(service: dict) -> dict[str, str]:
    """container path -> host path (relative to the repo) of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = source[2:]
    return out


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="needs the docker-compose binary (Debian package 'docker-compose') to "
                           "validate docker-compose.yml")
@pytest.mark.parametrize("profile", [None, "demo"])
def test_docker_compose_config_validates(profile):
    args = ["docker-compose", "--project-directory", str(REPO), "-f", str(COMPOSE)]
    if profile:
        args += ["--profile", profile]
    done = subprocess.run(args + ["config"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) == {"kafka", "worker", "prometheus", "alertmanager",
                                         "alert-log", "grafana", "simulator"}
    assert resolved["services"]["simulator"]["profiles"] == ["demo"]
    worker = resolved["services"]["worker"]
    assert worker["build"]["context"] == str(REPO)
    for volume in (v for s in resolved["services"].values() for v in s.get("volumes", [])):
        if isinstance(volume, str) and volume.startswith("/"):  # 1.29 prints bind mounts as strings
            assert Path(volume.split(":")[0]).exists(), volume


def test_images_are_pinned():
    services = compose()["services"]
    for name, repository in EXTERNAL_IMAGES.items():
        image = services[name]["image"]
        assert re.fullmatch(rf"{re.escape(repository)}:v?\d+\.\d+\.\d+", image), f"{name}: {image}"
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"
    dockerfile = (REPO / "Dockerfile").read_text()
    for base in re.findall(r"^FROM\s+(\S+)", dockerfile, re.M):
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base


def test_kafka_runs_in_kraft_mode():
    env = compose()["services"]["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in key for key in env)
    listeners = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert listeners["PLAINTEXT"] == "kafka:9092"   # what the workers and the simulator use
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"


def test_workers_and_simulator_use_the_compose_kafka():
    services = compose()["services"]
    worker, simulator = services["worker"], services["simulator"]
    assert worker["command"][0] == "run" and simulator["command"][0] == "simulate"
    for service in (worker, simulator):
        assert option(service["command"], "--broker") == "kafka:9092"
        config = option(service["command"], "--config")
        assert mounts(service)[config] == "prodlens.yaml"
    assert option(worker["command"], "--metrics-host") == "0.0.0.0"
    # scalable with --scale worker=N: no fixed container name, no host port to collide on
    assert "container_name" not in worker and "ports" not in worker
    assert simulator["profiles"] == ["demo"] and "profiles" not in worker


def test_prometheus_finds_the_workers_and_alertmanager():
    services = compose()["services"]
    prometheus = services["prometheus"]
    config_path = option_value(prometheus["command"], "--config.file")
    assert mounts(prometheus)[config_path] == "deploy/prometheus.yml"
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    # rule files are relative to the config file: the rules directory must be mounted next to it
    rules_dir = str(Path(config_path).parent / "rules")
    assert mounts(prometheus)[rules_dir] == "deploy/rules"
    assert config["rule_files"] == ["rules/*.rules.yml"]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "prodlens")
    port = option(services["worker"]["command"], "--metrics-port")
    assert job["dns_sd_configs"] == [{"names": ["worker"], "type": "A", "port": int(port),
                                      "refresh_interval": "15s"}]
    assert "127.0.0.1:9108" in job["static_configs"][0]["targets"]   # `prodlens run` outside compose
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert "alertmanager:9093" in targets and "alertmanager" in services


def test_alertmanager_routes_to_the_log_receiver():
    services = compose()["services"]
    alertmanager = services["alertmanager"]
    config_path = option_value(alertmanager["command"], "--config.file")
    assert mounts(alertmanager)[config_path] == "deploy/alertmanager.yml"
    config = yaml.safe_load((REPO / "deploy" / "alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    url = urlsplit(receivers[config["route"]["receiver"]]["webhook_configs"][0]["url"])
    log = services[url.hostname]
    assert int(option(log["command"], "--port")) == url.port
    script = log["command"][1]
    assert mounts(log)[script] == "deploy/alert_log.py"


def test_grafana_is_provisioned_and_open_to_viewers():
    grafana = compose()["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    m = mounts(grafana)
    assert m["/etc/grafana/provisioning"] == "grafana/provisioning"
    provider = yaml.safe_load((REPO / "grafana" / "provisioning" / "dashboards" / "prodlens.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert m[dashboards_dir] == "grafana/dashboards"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/") and \
        (REPO / "grafana" / "dashboards" / Path(home).name).is_file()
    datasources = yaml.safe_load((REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    url = urlsplit(next(d["url"] for d in datasources["datasources"] if d["type"] == "prometheus"))
    assert url.hostname == "prometheus" and url.port == 9090


def test_dockerfile_copies_every_package_directory():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = {src.rstrip("/") for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M)
              for src in line.split()[:-1]}
    assert package_dirs | {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    included = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.startswith("!")}
    assert copied <= included, f"excluded by .dockerignore: {copied - included}"
    for source in copied:
        assert (REPO / source).exists(), source


def option_value(command: list[str], name: str) -> str:
    """The value of a ``--name=value`` argument."""
    for arg in command:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name}= missing from {command}")
