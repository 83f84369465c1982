"""`prodlens alerts export`: the real command (typer's CliRunner) on a prodlens.yaml holding
the example spec alerts/tests/alerts.yaml, checked with promtool where it is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from prodlens.alerts.promrules import export_yaml
from prodlens.alerts.rules import parse_alerts
from prodlens.cli import app
from prodlens.validation import metric_catalogue

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "alerts" / "tests" / "alerts.yaml").read_text())
EXAMPLE = yaml.safe_load((ROOT / "prodlens" / "prodlens.example.yaml").read_text())
PROMTOOL = shutil.which("promtool")

runner = CliRunner()


def write_config(tmp_path: Path, alerts) -> Path:
    path = tmp_path / "prodlens.yaml"
    path.write_text(yaml.safe_dump({"models": EXAMPLE["models"], "alerts": alerts}, sort_keys=False))
    return path


def export(*args: str):
    return runner.invoke(app, ["alerts", "export", *args])


def test_export_writes_the_specs_rules(tmp_path):
    config = write_config(tmp_path, SPEC)
    result = export("--config", str(config), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    path = tmp_path / "out" / "prodlens.rules.yml"
    assert result.stdout.strip() == f"wrote {path}: 8 rules"
    text = path.read_text()
    assert text == export_yaml(parse_alerts(SPEC, catalogue=metric_catalogue()))
    names = [r["alert"] for r in yaml.safe_load(text)["groups"][0]["rules"]]
    assert names == [r["name"] for r in SPEC["rules"]]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_exported_file_passes_promtool_check_rules(tmp_path):
    config = write_config(tmp_path, SPEC)
    result = export("-c", str(config), "-o", str(tmp_path), "--file", "custom.rules.yml")
    assert result.exit_code == 0, result.output
    check = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "custom.rules.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 8 rules found" in check.stdout


def test_defaults_write_alerts_prodlens_rules_yml_in_the_working_directory(tmp_path, monkeypatch):
    write_config(tmp_path, SPEC["rules"][:2])  # the list form of the section
    monkeypatch.chdir(tmp_path)
    result = export()  # --config defaults to ./prodlens.yaml
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {Path('alerts') / 'prodlens.rules.yml'}: 2 rules"
    rules = yaml.safe_load((tmp_path / "alerts" / "prodlens.rules.yml").read_text())["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == ["AccuracyLow", "LatencyP99High"]


def test_unknown_metric_exits_2_naming_the_rule_and_writes_nothing(tmp_path):
    spec = yaml.safe_load(yaml.safe_dump(SPEC))
    spec["rules"][3]["metric"] = "prodlens_qualty"
    config = write_config(tmp_path, spec)
    result = export("--config", str(config), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "ErrorRateJumpVsBaseline" in result.stderr and "prodlens_qualty" in result.stderr
    assert not (tmp_path / "out").exists()


def test_invalid_condition_exits_2_naming_the_rule(tmp_path):
    spec = yaml.safe_load(yaml.safe_dump(SPEC))
    spec["rules"][1]["condition"] = "sideways"
    result = export("--config", str(write_config(tmp_path, spec)), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "LatencyP99High" in result.stderr and "condition" in result.stderr


def test_missing_config_file_exits_2(tmp_path):
    result = export("--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path))
    assert result.exit_code == 2 and "nope.yaml" in result.stderr
