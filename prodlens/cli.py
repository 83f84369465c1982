"""The ``prodlens`` command."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from .config import ConfigError, default_config_path, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="prodlens: streaming monitoring for ML models in production.")

ConfigOpt = typer.Option(None, "--config", "-c", help="prodlens.yaml (default: ./prodlens.yaml, "
                         "else the shipped example)")
BrokerOpt = typer.Option(None, "--broker", "-b", help="HOST:PORT[,HOST:PORT] of an existing Kafka "
                         "cluster (default: the config's broker; 'embedded' starts tansu)")


def _config(path: Optional[Path]):
    from .validation import validate_sections

    path = path or default_config_path()
    try:
        config = load_config(path)
        validate_sections(config)
        return config
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _serve(config_path, broker, metrics_port, metrics_host, simulate, rate, batch, malformed,
           duplicates, loglevel, broker_port, stages: str = "ingest,join,analysis"):
    from .streams.app import parse_stages
    from .streams.worker import RunOptions, serve

    try:
        chosen = parse_stages(stages.split(","))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--stages") from None
    config = _config(config_path)
    options = RunOptions(bootstrap=broker, metrics_port=metrics_port, metrics_host=metrics_host,
                         simulate=simulate, rate=rate, batch=batch, malformed_share=malformed,
                         duplicate_share=duplicates, loglevel=loglevel, broker_port=broker_port,
                         stages=chosen)
    try:
        raise typer.Exit(serve(config, options))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def run(config: Optional[Path] = ConfigOpt, broker: Optional[str] = BrokerOpt,
        metrics_port: Optional[int] = typer.Option(None, help="metrics port (default: config, 9108)"),
        metrics_host: Optional[str] = typer.Option(None, help="metrics bind address"),
        simulate: bool = typer.Option(False, "--simulate", help="also run the simulated app"),
        rate: float = typer.Option(200.0, help="simulated predictions per second"),
        batch: int = typer.Option(50, help="simulated events per envelope (1 = single events)"),
        malformed: float = typer.Option(0.01, help="share of malformed simulated messages"),
        duplicates: float = typer.Option(0.01, help="share of duplicated simulated events"),
        loglevel: str = typer.Option("warn", help="crit | error | warn | info | debug"),
        broker_port: int = typer.Option(0, help="port of the embedded broker (0: any free port)"),
        stages: str = typer.Option("ingest,join,analysis",
                                   help="stages this worker runs, comma-separated; each set of stages is "
                                        "its own consumer group, so e.g. `--stages ingest` and "
                                        "`--stages join,analysis` scale in separate processes")):
    """Run the pipeline: broker (embedded unless --broker), workers, metrics endpoint."""
    _serve(config, broker, metrics_port, metrics_host, simulate, rate, batch, malformed, duplicates,
           loglevel, broker_port, stages)


@app.command()
def demo(config: Optional[Path] = ConfigOpt, broker: Optional[str] = BrokerOpt,
         metrics_port: Optional[int] = typer.Option(None, help="metrics port (default: config, 9108)"),
         rate: float = typer.Option(200.0, help="simulated predictions per second"),
         batch: int = typer.Option(50, help="simulated events per envelope"),
         loglevel: str = typer.Option("warn", help="crit | error | warn | info | debug")):
    """`run` plus a simulated application producing realistic traffic."""
    _serve(config, broker, metrics_port, None, True, rate, batch, 0.01, 0.01, loglevel, 0)


@app.command()
def simulate(config: Optional[Path] = ConfigOpt,
             broker: str = typer.Option(..., "--broker", "-b", help="HOST:PORT of the Kafka to write to"),
             rate: float = typer.Option(200.0, help="predictions per second"),
             batch: int = typer.Option(50, help="events per envelope (1 = single events)"),
             malformed: float = typer.Option(0.01, help="share of malformed messages"),
             duplicates: float = typer.Option(0.01, help="share of duplicated events"),
             duration: Optional[float] = typer.Option(None, help="seconds to run (default: until Ctrl-C)"),
             seed: int = typer.Option(0, help="random seed")):
    """Produce realistic simulated app traffic into any Kafka."""
    from .streams.producer import SimulatorRunner

    cfg = _config(config)
    runner = SimulatorRunner(cfg, broker, rate=rate, batch=batch, malformed_share=malformed,
                             duplicate_share=duplicates, seed=seed, duration=duration)
    typer.echo(f"simulating {rate:g} predictions/s into {broker} "
               f"({cfg.topics.predictions}, {cfg.topics.feedback}, {cfg.topics.outcomes}); Ctrl-C to stop")
    started = time.time()
    try:
        asyncio.run(runner.run())
    except KeyboardInterrupt:
        pass
    typer.echo(f"sent {runner.sent:,} messages in {time.time() - started:.0f}s")


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="JSON files: one event, a batch "
                                                 "envelope, or JSON Lines (one message per line)"),
             kind: str = typer.Option("auto", help="prediction | feedback | outcome: the topic the "
                                      "messages are for; auto guesses from each message's fields"),
             config: Optional[Path] = typer.Option(None, "--config", "-c",
                                                   help="also reject models not in this prodlens.yaml")):
    """Check events against the schemas; exit 1 if anything is rejected."""
    from .contract import Decoder

    known = _config(config).models if config else None
    decoder = Decoder(known)
    bad = good = 0
    for path in files:
        raw = path.read_bytes()
        lines = raw.splitlines() if path.suffix in (".jsonl", ".ndjson") else [raw]
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            decoded = decoder.decode(line, _guess_kind(line) if kind == "auto" else kind)
            good += decoded.count
            where = f"{path}:{number}" if len(lines) > 1 else str(path)
            for rejection in decoded.rejections:
                bad += 1
                index = f" [event {rejection.index}]" if rejection.index is not None else ""
                typer.echo(f"{where}{index}: {rejection.reason}: {rejection.error}")
    typer.echo(f"{good} valid, {bad} rejected")
    raise typer.Exit(1 if bad else 0)


def _guess_kind(raw: bytes) -> str:
    """The kind a message most likely has: its 'type'/'kind', else the fields it carries."""
    import orjson

    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "prediction"
    if isinstance(doc, dict):
        if doc.get("type") == "batch":
            return doc.get("kind", "prediction")
        if doc.get("type") in ("prediction", "feedback", "outcome"):
            return doc["type"]
        if "metric" in doc and "prediction_id" not in doc:
            return "outcome"
        if "kind" in doc and "output" not in doc:
            return "feedback"
    return "prediction"


# -- prodlens alerts ... -------------------------------------------------------------------------
alerts_app = typer.Typer(no_args_is_help=True, help="Alert rules: export them as Prometheus rules.")
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("export")
def alerts_export(config: Optional[Path] = ConfigOpt,
                  out: Path = typer.Option(Path("alerts"), "--out", "-o", help="directory to write to"),
                  file: str = typer.Option("prodlens.rules.yml", "--file", help="rule file name")):
    """Write the config's alerts: section as Prometheus alerting rules."""
    from .alerts.promrules import write_rules
    from .alerts.rules import parse_alerts
    from .validation import metric_catalogue

    cfg = _config(config)  # checks every section; a bad rule exits 2 naming it
    try:
        spec = parse_alerts(cfg.alerts or None, catalogue=metric_catalogue())
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if not spec.rules:
        typer.echo("note: the config has no alert rules; writing an empty rule group", err=True)
    try:
        path = write_rules(spec, out, file)
    except OSError as exc:
        typer.echo(f"--out: cannot write {Path(out) / file}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}: {len(spec.rules)} rule{'s' if len(spec.rules) != 1 else ''}")


# -- prodlens reference ... ----------------------------------------------------------------------
reference_app = typer.Typer(no_args_is_help=True, help="Drift references: build them from training data.")
app.add_typer(reference_app, name="reference")


def _reference_model_config(name: str, model, segments: bool, label: Optional[str]) -> dict:
    """A model of prodlens.yaml in the shape ``build_reference`` reads (booleans are categorical)."""
    out: dict = {"name": name}
    if model.features:  # none declared: every column not used otherwise, kind from its type
        out["features"] = {f: "categorical" if kind == "boolean" else kind
                           for f, kind in model.features.items()}
    if segments and model.segments:
        # a fixed value list keeps every value here; _segment_key_fn folds the rest
        out["segments"] = {k: {"top_k": 1000 if s.values is not None else s.top_k}
                           for k, s in model.segments.items()}
    if label:
        out["label"] = {"column": label}
    return out


def _segment_key_fn(model):
    """Segment keys as the pipeline names them: fixed value lists fold the rest into __other__,
    an absent attribute is __missing__."""
    from .segments import ALL, MISSING, OTHER

    fixed = {k: set(s.values) for k, s in model.segments.items() if s.values is not None}

    def key(attributes) -> str:
        parts = []
        for k in sorted(attributes):
            v = attributes[k]
            if v is None:
                v = MISSING
            elif k in fixed and v != OTHER and v not in fixed[k]:
                v = OTHER
            parts.append(f"{k}={v}")
        return ",".join(parts) or ALL

    return key


def _field_line(path: str, summary) -> str:
    if summary.kind == "numeric":
        stats = (f"mean={summary.mean:.6g} sd={summary.std:.4g} min={summary.min:.6g} max={summary.max:.6g}"
                 if summary.count else "no values")
    else:
        total = summary.count
        top = ", ".join(f"{cat} {n / total:.1%}" for cat, n in summary.top(3)) if total else "none"
        distinct = f"{len(summary.counters)}" if summary.exact else f">={len(summary.counters)}"
        stats = f"{distinct} categories, top: {top}"
    return f"  {path:<28} {summary.kind:<11} count={summary.count} missing={summary.missing} {stats}"


@reference_app.command("build")
def reference_build(data: Path = typer.Argument(..., help="training data: CSV (.csv) or Parquet (.parquet)"),
                    model: str = typer.Option(..., "--model", "-m", help="model name in prodlens.yaml"),
                    config: Optional[Path] = ConfigOpt,
                    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where to write the "
                                                       "reference (default: the model's reference: path, "
                                                       "else ./<model>.reference.json)"),
                    label: Optional[str] = typer.Option(None, help="ground-truth label column, if any"),
                    segments: bool = typer.Option(True, "--segments/--no-segments",
                                                  help="also summarise each segment (needs the "
                                                  "model's segment columns)")):
    """Summarise a training data file into a reference for drift detection."""
    import pyarrow

    from .reference import build_reference, save_reference

    cfg = _config(config)
    if model not in cfg.models:
        typer.echo(f"--model: unknown model {model!r} (the config declares: {', '.join(sorted(cfg.models))})",
                   err=True)
        raise typer.Exit(2)
    spec = cfg.models[model]
    try:
        ref = build_reference(data, _reference_model_config(model, spec, segments, label),
                              segment_key_fn=_segment_key_fn(spec))
    except (ValueError, pyarrow.ArrowException) as exc:
        hint = (" (--no-segments builds the overall reference only)"
                if str(exc).startswith("segments") else "")
        typer.echo(f"{data}: {exc}{hint}", err=True)
        raise typer.Exit(2) from None
    path = out or Path(spec.reference or f"{model}.reference.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_reference(ref, path)
    except OSError as exc:
        typer.echo(f"--out: cannot write {path}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}: model {model}, {ref.all.count:,} rows, "
               f"{len(ref.segments) - 1} segments")
    for field_path in sorted(ref.all.fields):
        typer.echo(_field_line(field_path, ref.all.fields[field_path]))


report_app = typer.Typer(no_args_is_help=True, help="Experiment, canary and shadow reports.")
app.add_typer(report_app, name="report")


@report_app.command("experiment")
def report_experiment(name: str = typer.Argument(..., help="an A/B experiment, canary ladder or shadow model"),
                      config: Optional[Path] = ConfigOpt, broker: Optional[str] = BrokerOpt,
                      html: Optional[Path] = typer.Option(None, "--html", help="also write an HTML report here")):
    """Print the latest analysis of an experiment: per variant n, rate or mean ± CI, lift,
    chance to beat baseline, p-value, SRM status and decision (the same figures as the
    Prometheus metrics). Canary ladders show their latest decision; shadow models their
    disagreement and accuracy."""
    import orjson

    from .analysis.experiments import decision_from_record, result_from_record, shadow_result_from_record
    from .experiments.report import render_html, render_text
    from .streams.kafka import client_options, read_topic

    cfg = _config(config)
    bootstrap = broker or cfg.broker.bootstrap
    if bootstrap == "embedded":
        typer.echo("report reads a running broker: pass --broker HOST:PORT (prodlens run prints it)", err=True)
        raise typer.Exit(2)
    options = client_options(cfg.broker)
    experiment = canary = None
    shadows = {}
    for _, _, key, value in asyncio.run(read_topic(bootstrap, cfg.topics.summaries, options)):
        record = orjson.loads(value)
        if record.get("type") == "experiment_result" and record.get("experiment") == name:
            experiment = result_from_record(record)          # later records supersede earlier ones
        elif record.get("type") == "shadow_result" and record.get("model") == name:
            k, result = shadow_result_from_record(record)
            shadows[k] = result
    for _, _, key, value in asyncio.run(read_topic(bootstrap, cfg.topics.decisions, options)):
        record = orjson.loads(value)
        if record.get("ladder") == name:
            canary = decision_from_record(record)
    if experiment is None and canary is None and not shadows:
        typer.echo(f"no results for {name!r} yet on {cfg.topics.summaries} / {cfg.topics.decisions} "
                   f"(declared under experiments: in the config? traffic flowing?)", err=True)
        raise typer.Exit(1)
    typer.echo(render_text(experiment, canary, shadows or None))
    if html is not None:
        html.write_text(render_html(experiment, canary, shadows or None))
        typer.echo(f"wrote {html}")


samples_app = typer.Typer(no_args_is_help=True, help="Sampled raw events: export them for analysis.")
app.add_typer(samples_app, name="samples")


@samples_app.command("export")
def samples_export(out: Path = typer.Option(..., "--out", "-o", help="output file: .parquet or .jsonl"),
                   config: Optional[Path] = ConfigOpt, broker: Optional[str] = BrokerOpt,
                   model: Optional[str] = typer.Option(None, help="only this model"),
                   version: Optional[str] = typer.Option(None, help="only this version")):
    """Write the samples topic (reservoir and priority samples per window) to Parquet or JSON
    Lines: one row per sampled event with its window, segment, sampler and weight (1 / inclusion
    probability, for re-weighting estimates to traffic)."""
    import orjson

    from .streams.kafka import client_options, read_topic

    cfg = _config(config)
    bootstrap = broker or cfg.broker.bootstrap
    if bootstrap == "embedded":
        typer.echo("samples export reads a running broker: pass --broker HOST:PORT (prodlens run prints it)",
                   err=True)
        raise typer.Exit(2)
    if out.suffix not in (".parquet", ".jsonl"):
        typer.echo(f"--out: {out} must end in .parquet or .jsonl", err=True)
        raise typer.Exit(2)
    typer.echo(f"reading {cfg.topics.samples} from {bootstrap} ...", err=True)
    messages = asyncio.run(read_topic(bootstrap, cfg.topics.samples, client_options(cfg.broker)))
    rows = []
    for _, _, _, value in messages:
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if record.get("type") != "sample" or (model and record["model"] != model) \
                or (version and record["version"] != version):
            continue
        rows.append(record)
    rows.sort(key=lambda r: (r["model"], r["version"], r["window_start"], r["sampler"], str(r["segment"])))
    if out.suffix == ".jsonl":
        out.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = [{**{k: v for k, v in r.items() if k != "event"}, "event": orjson.dumps(r["event"]).decode(),
                 "event_id": r["event"].get("event_id"), "prediction_id": r["event"].get("prediction_id")}
                for r in rows]
        pq.write_table(pa.Table.from_pylist(flat), out)
    typer.echo(f"wrote {out}: {len(rows):,} sampled events")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
