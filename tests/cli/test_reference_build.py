"""`prodlens reference build`: the real command (typer's CliRunner) on CSV and Parquet files with
the churn model's features from prodlens/prodlens.example.yaml; results checked against numpy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prodlens.cli import app
from prodlens.reference import load_reference

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "prodlens" / "prodlens.example.yaml"
NUMERIC = ("tenure_months", "monthly_spend", "support_tickets")
N = 600

runner = CliRunner()


def training_columns(seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tenure = rng.normal(24, 6, N)
    tenure[rng.choice(N, 17, replace=False)] = np.nan
    plan = rng.choice(["basic", "pro", "team"], N, p=[0.5, 0.3, 0.2])
    return {"tenure_months": tenure,
            "monthly_spend": rng.lognormal(3, 0.5, N),
            "support_tickets": rng.poisson(2, N).astype(np.int64),
            "plan": plan,
            "autopay": rng.random(N) < 0.3,
            "country": rng.choice(["US", "DE", "FR"], N),
            "device": rng.choice(["ios", "android", "web", "tv"], N),  # tv is not in the fixed list
            "output.score": rng.random(N),
            "churned": rng.choice(["stay", "churn"], N, p=[0.8, 0.2])}


def arrow_table(cols) -> pa.Table:
    return pa.table({k: pa.array(v, from_pandas=True) if v.dtype.kind == "f" else pa.array(v.tolist())
                     for k, v in cols.items()})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    where = tmp_path_factory.mktemp("train")
    cols = training_columns()
    table = arrow_table(cols)
    pacsv.write_csv(table, where / "train.csv")
    pq.write_table(table, where / "train.parquet")
    return where, cols


def build(*args: str):
    return runner.invoke(app, ["reference", "build", *args])


@pytest.mark.parametrize("name", ["train.csv", "train.parquet"])
def test_build_matches_numpy_on_the_same_data(data, tmp_path, name):
    where, cols = data
    out = tmp_path / "refs" / "churn.json"
    result = build(str(where / name), "--model", "churn", "--config", str(EXAMPLE), "--out", str(out),
                   "--label", "churned")
    assert result.exit_code == 0, result.output
    ref = load_reference(out)
    assert ref.model == "churn" and ref.all.count == N
    assert ref.source["rows"] == N and ref.source["format"] == name.rsplit(".", 1)[1]
    fields = ref.all.fields
    assert set(fields) == {f"features.{f}" for f in (*NUMERIC, "plan", "autopay")} | {"output.score", "label"}
    for f in NUMERIC:
        values = cols[f].astype(float)
        ok = ~np.isnan(values)
        summary = fields[f"features.{f}"]
        assert summary.kind == "numeric"
        assert summary.count == int(ok.sum()) and summary.missing == int((~ok).sum())
        assert summary.mean == pytest.approx(values[ok].mean(), rel=1e-12)
        assert summary.std == pytest.approx(values[ok].std(ddof=1), rel=1e-9)
    assert fields["features.tenure_months"].missing == 17
    plan = fields["features.plan"]
    assert plan.kind == "categorical" and plan.missing == 0
    cats, counts = np.unique(cols["plan"], return_counts=True)
    assert plan.counts() == dict(zip(cats.tolist(), counts.tolist()))
    autopay = fields["features.autopay"]  # boolean in the config: summarised as categories
    assert autopay.kind == "categorical"
    assert autopay.counts() == {"true": int(cols["autopay"].sum()), "false": int((~cols["autopay"]).sum())}
    assert fields["output.score"].mean == pytest.approx(cols["output.score"].mean(), rel=1e-12)
    assert fields["label"].counts()["churn"] == int((cols["churned"] == "churn").sum())

    # segments named as the pipeline names them; device's fixed list folds tv into __other__
    device = np.where(np.isin(cols["device"], ["ios", "android", "web"]), cols["device"], "__other__")
    expected = {}
    for c, d in zip(cols["country"], device):
        key = f"country={c},device={d}"
        expected[key] = expected.get(key, 0) + 1
    assert {k: s.count for k, s in ref.segments.items() if k != "__all__"} == expected
    us_ios = (cols["country"] == "US") & (device == "ios")
    seg = ref.segments["country=US,device=ios"].fields["features.monthly_spend"]
    assert seg.mean == pytest.approx(cols["monthly_spend"][us_ios].mean(), rel=1e-12)

    lines = result.stdout.splitlines()
    assert lines[0] == f"wrote {out}: model churn, {N} rows, {len(expected)} segments"
    assert len(lines) == 1 + len(fields)
    tenure_line = next(line for line in lines if "features.tenure_months" in line)
    assert f"count={N - 17} missing=17" in tenure_line
    assert f"mean={np.nanmean(cols['tenure_months']):.6g}" in tenure_line
    plan_line = next(line for line in lines if "features.plan" in line)
    top = cats[np.argmax(counts)]
    assert f"count={N} missing=0 3 categories, top: {top} {counts.max() / N:.1%}" in plan_line


def test_missing_categories_in_parquet_are_counted_as_missing(data, tmp_path):
    where, cols = data
    plan = cols["plan"].astype(object)
    plan[np.random.default_rng(1).choice(N, 9, replace=False)] = None
    path = tmp_path / "gaps.parquet"
    pq.write_table(arrow_table({**cols, "plan": plan}), path)
    result = build(str(path), "-m", "churn", "-c", str(EXAMPLE), "-o", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    summary = load_reference(tmp_path / "r.json").all.fields["features.plan"]
    assert (summary.count, summary.missing) == (N - 9, 9)
    assert "features.plan" in result.stdout and f"count={N - 9} missing=9" in result.stdout


def test_csv_and_parquet_give_the_same_summaries(data, tmp_path):
    where, _ = data
    for name in ("train.csv", "train.parquet"):
        result = build(str(where / name), "-m", "churn", "-c", str(EXAMPLE), "-o", str(tmp_path / f"{name}.json"))
        assert result.exit_code == 0, result.output
    a, b = (load_reference(tmp_path / f"{n}.json") for n in ("train.csv", "train.parquet"))
    for path, summary in a.all.fields.items():
        other = b.all.fields[path]
        assert (summary.count, summary.missing) == (other.count, other.missing), path
        if summary.kind == "numeric":
            assert summary.mean == pytest.approx(other.mean, rel=1e-12), path
        else:
            assert summary.counts() == other.counts(), path


def test_default_out_is_model_reference_json_in_the_working_directory(data, tmp_path, monkeypatch):
    where, _ = data
    shutil.copy(EXAMPLE, tmp_path / "prodlens.yaml")
    monkeypatch.chdir(tmp_path)
    result = build(str(where / "train.parquet"), "--model", "churn")  # --config: ./prodlens.yaml
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("wrote churn.reference.json: ")
    assert load_reference(tmp_path / "churn.reference.json").all.count == N


def test_missing_feature_column_exits_2_naming_it(data, tmp_path):
    where, cols = data
    path = tmp_path / "noplan.parquet"
    pq.write_table(arrow_table({k: v for k, v in cols.items() if k != "plan"}), path)
    result = build(str(path), "--model", "churn", "--config", str(EXAMPLE), "--out", str(tmp_path / "r.json"))
    assert result.exit_code == 2
    assert "features.plan" in result.stderr and "'plan'" in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_missing_segment_column_exits_2_unless_no_segments(data, tmp_path):
    where, cols = data
    path = tmp_path / "nodevice.csv"
    pacsv.write_csv(arrow_table({k: v for k, v in cols.items() if k != "device"}), path)
    out = tmp_path / "r.json"
    result = build(str(path), "-m", "churn", "-c", str(EXAMPLE), "-o", str(out))
    assert result.exit_code == 2
    assert "segments.device" in result.stderr and "--no-segments" in result.stderr
    assert not out.exists()


def test_no_segments_builds_the_overall_reference_only(data, tmp_path):
    where, cols = data
    path = tmp_path / "nodevice.csv"
    pacsv.write_csv(arrow_table({k: v for k, v in cols.items() if k != "device"}), path)
    out = tmp_path / "r.json"
    result = build(str(path), "-m", "churn", "-c", str(EXAMPLE), "-o", str(out), "--no-segments")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    assert "0 segments" in result.stdout and list(load_reference(out).segments) == ["__all__"]


def test_unknown_model_exits_2_listing_the_models(data, tmp_path):
    where, _ = data
    result = build(str(where / "train.csv"), "--model", "chrun", "--config", str(EXAMPLE),
                   "--out", str(tmp_path / "r.json"))
    assert result.exit_code == 2
    assert "'chrun'" in result.stderr and "churn, eta, intent" in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_unreadable_inputs_exit_2(data, tmp_path):
    where, _ = data
    args = ["--model", "churn", "--config", str(EXAMPLE), "--out", str(tmp_path / "r.json")]
    text = tmp_path / "train.txt"
    text.write_text("a,b\n1,2\n")
    result = build(str(text), *args)
    assert result.exit_code == 2 and "neither CSV" in result.stderr
    result = build(str(tmp_path / "absent.parquet"), *args)
    assert result.exit_code == 2 and "absent.parquet" in result.stderr
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    result = build(str(broken), *args)
    assert result.exit_code == 2 and "broken.parquet" in result.stderr
    result = build(str(where / "train.csv"), *args, "--label", "nope")
    assert result.exit_code == 2 and "'nope'" in result.stderr
