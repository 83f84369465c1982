"""`python -m prodlens.cli` as a user runs it: the command list and exit codes through the module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def prodlens(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run([sys.executable, "-m", "prodlens.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_help_lists_the_commands_and_groups(tmp_path):
    result = prodlens("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[1] for line in result.stdout.splitlines()
              if line.startswith("│ ") and len(line.split()) > 2 and not line.split()[1].startswith("-")]
    assert listed == ["run", "demo", "simulate", "validate", "alerts", "reference", "report", "samples"]
    for group, command in (("alerts", "export"), ("reference", "build"), ("report", "experiment"),
                           ("samples", "export")):
        sub = prodlens(group, "--help", cwd=tmp_path)
        assert sub.returncode == 0 and f"│ {command} " in sub.stdout


def test_exit_codes_pass_through_the_module(tmp_path):
    models = yaml.safe_load((ROOT / "prodlens" / "prodlens.example.yaml").read_text())["models"]
    rule = {"name": "Typo", "metric": "prodlens_nope", "condition": "above", "threshold": 1}
    (tmp_path / "prodlens.yaml").write_text(yaml.safe_dump({"models": models, "alerts": [rule]}))
    result = prodlens("alerts", "export", cwd=tmp_path)
    assert result.returncode == 2 and "'Typo'" in result.stderr and "prodlens_nope" in result.stderr
    rule["metric"] = "prodlens_quality"
    (tmp_path / "prodlens.yaml").write_text(yaml.safe_dump({"models": models, "alerts": [rule]}))
    result = prodlens("alerts", "export", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "wrote alerts/prodlens.rules.yml: 1 rule"
    assert (tmp_path / "alerts" / "prodlens.rules.yml").is_file()
