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
    path = path or default_config_path()
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _serve(config_path, broker, metrics_port, metrics_host, simulate, rate, batch, malformed,
           duplicates, loglevel, broker_port):
    from .streams.worker import RunOptions, serve

    config = _config(config_path)
    options = RunOptions(bootstrap=broker, metrics_port=metrics_port, metrics_host=metrics_host,
                         simulate=simulate, rate=rate, batch=batch, malformed_share=malformed,
                         duplicate_share=duplicates, loglevel=loglevel, broker_port=broker_port)
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
        broker_port: int = typer.Option(0, help="port of the embedded broker (0: any free port)")):
    """Run the pipeline: broker (embedded unless --broker), workers, metrics endpoint."""
    _serve(config, broker, metrics_port, metrics_host, simulate, rate, batch, malformed, duplicates,
           loglevel, broker_port)


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


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
