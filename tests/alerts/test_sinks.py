"""Sinks and the dispatcher, against real local HTTP receivers (and a real Alertmanager when installed)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import shutil
import socket
import subprocess
import time
import urllib.request
from contextlib import asynccontextmanager

import fastjsonschema
import httpx
import pytest
from aiohttp import web

from prodlens.alerts.rules import Sample, parse_alerts
from prodlens.alerts.sinks import (SIGNATURE_HEADER, AlertmanagerSink, Dispatcher, LogSink, Sink, SinkConfigError,
                                   SlackSink, TopicSink, WebhookSink, alert_json, build_sinks, verify_signature)
from prodlens.alerts.state import AlertEngine, AlertEvent
from prodlens.contract import load_schema

SECRET = "s3cret-key"
RULE = {"name": "AccuracyLow", "metric": "prodlens_quality", "match": {"metric": "accuracy"},
        "condition": "below", "threshold": 0.8, "resolve_threshold": 0.85, "severity": "critical",
        "summary": "accuracy of {model} {version} in {segment} is low",
        "description": "accuracy {$value:.3f} is below {$threshold}", "runbook_url": "https://runbooks.example.com/a"}
LABELS = {"model": "churn", "version": "v7", "segment": "country=US", "metric": "accuracy"}


def lifecycle() -> tuple[AlertEvent, AlertEvent]:
    """A real firing and resolved event from the engine."""
    eng = AlertEngine(parse_alerts([RULE]))
    (fire,) = eng.evaluate(time.time() - 60, [Sample("prodlens_quality", LABELS, 0.71)])
    (res,) = eng.evaluate(time.time(), [Sample("prodlens_quality", LABELS, 0.9)])
    return fire, res


class Receiver:
    """A real HTTP server on 127.0.0.1 recording requests; ``fail`` answers the first requests with an error."""

    def __init__(self, fail: int = 0, status: int = 503):
        self.requests: list[tuple[dict, bytes]] = []
        self.fail, self.status = fail, status
        self.got = asyncio.Event()
        self.want = 1

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=self.status, text="try later")
        self.requests.append((dict(request.headers), body))
        if len(self.requests) >= self.want:
            self.got.set()
        return web.Response(status=200, text="ok")


@asynccontextmanager
async def serve(receiver: Receiver):
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class BlockedSink(Sink):
    """Stands for a sink whose receiver hangs: deliver waits until released."""

    def __init__(self, name="blocked"):
        self.name, self.release, self.delivered = name, asyncio.Event(), []
        self.timeout = 60.0

    async def deliver(self, event, client):
        await self.release.wait()
        self.delivered.append(event)


def test_webhook_posts_the_schema_payload_signed_with_hmac():
    fire, res = lifecycle()
    validate = fastjsonschema.compile(load_schema("alert.v1.json"))

    async def main():
        rx = Receiver()
        rx.want = 2
        async with serve(rx) as url:
            async with Dispatcher([WebhookSink(url + "/hook", SECRET, headers={"X-Team": "ml"})]) as d:
                d.submit([fire, res])
                assert await d.drain(30)
                return rx, d.stats()

    rx, stats = asyncio.run(main())
    assert stats["webhook"]["delivered"] == 2 and stats["webhook"]["failed_attempts"] == 0
    statuses = []
    for headers, body in rx.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE_HEADER] == expected
        assert verify_signature(body, headers[SIGNATURE_HEADER], SECRET)
        assert not verify_signature(body + b" ", headers[SIGNATURE_HEADER], SECRET)
        assert headers["Content-Type"] == "application/json" and headers["X-Team"] == "ml"
        payload = json.loads(body)
        validate(payload)
        assert headers["X-Prodlens-Event-Id"] == payload["event_id"]
        assert payload["labels"]["model"] == "churn" and payload["labels"]["version"] == "v7"
        assert payload["labels"]["segment"] == "country=US" and payload["metric"] == "prodlens_quality"
        statuses.append((payload["status"], payload["value"], payload["threshold"]))
    assert statuses == [("firing", 0.71, 0.8), ("resolved", 0.9, 0.85)]  # in order


def test_retries_with_backoff_then_delivers():
    fire, _ = lifecycle()

    async def main():
        rx = Receiver(fail=2, status=503)
        async with serve(rx) as url:
            async with Dispatcher([WebhookSink(url, SECRET)], backoff=0.01, retries=3) as d:
                d.submit(fire)
                assert await d.drain(30)
                return rx, d.stats()["webhook"]

    rx, stats = asyncio.run(main())
    assert (stats["delivered"], stats["failed_attempts"], stats["retried"], stats["undelivered"]) == (1, 2, 2, 0)
    assert "HTTP 503" in stats["last_error"]
    assert len(rx.requests) == 1


def test_client_errors_are_not_retried_and_count_as_undelivered():
    fire, _ = lifecycle()

    async def main():
        rx = Receiver(fail=10, status=400)
        async with serve(rx) as url:
            async with Dispatcher([WebhookSink(url, SECRET)], backoff=0.01, retries=5) as d:
                d.submit(fire)
                assert await d.drain(30)
                return d.stats()["webhook"]

    stats = asyncio.run(main())
    assert (stats["delivered"], stats["failed_attempts"], stats["undelivered"]) == (0, 1, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failing_and_a_hanging_sink_never_block_the_others_or_the_caller():
    fire, res = lifecycle()

    async def main():
        rx = Receiver()
        rx.want = 2
        blocked = BlockedSink()
        dead = WebhookSink(f"http://127.0.0.1:{free_port()}/nobody-listens", SECRET, name="dead")
        async with serve(rx) as url:
            d = Dispatcher([blocked, dead, WebhookSink(url, SECRET, name="good")], backoff=0.01, retries=2)
            await d.start()
            d.submit([fire, res])            # returns at once: submit is not a coroutine
            await asyncio.wait_for(rx.got.wait(), 30)
            await asyncio.wait_for(_until(lambda: d.stats()["dead"]["undelivered"] == 2), 30)
            during = d.stats()
            assert blocked.delivered == []   # still hanging, yet the others are done
            blocked.release.set()
            assert await d.drain(30)
            after = d.stats()
            await d.close()
            return during, after, blocked

    during, after, blocked = asyncio.run(main())
    assert during["good"]["delivered"] == 2
    assert during["blocked"]["delivered"] == 0 and during["blocked"]["queued"] == 1  # one in hand, one waiting
    assert during["dead"] == {**during["dead"], "delivered": 0, "failed_attempts": 6, "retried": 4, "undelivered": 2}
    assert "ConnectError" in during["dead"]["last_error"]
    assert after["blocked"]["delivered"] == 2 and [e.status for e in blocked.delivered] == ["firing", "resolved"]


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.01)


def test_full_queues_drop_and_close_counts_what_was_left():
    fire, _ = lifecycle()

    async def main():
        blocked = BlockedSink()
        blocked.queue_size = 2
        d = Dispatcher([blocked])
        await d.start()
        d.submit([fire] * 5)                 # the worker has not run yet: 2 fit, 3 are dropped
        dropped = d.stats()["blocked"]["dropped"]
        await d.close(timeout=0.05)          # the hanging delivery is abandoned
        return dropped, d.stats()["blocked"]

    dropped, stats = asyncio.run(main())
    assert dropped == 3
    assert (stats["dropped"], stats["delivered"], stats["undelivered"]) == (3, 0, 2)


def test_slack_payload():
    fire, res = lifecycle()

    async def main():
        rx = Receiver()
        rx.want = 2
        async with serve(rx) as url:
            async with Dispatcher([SlackSink(url + "/services/T/B/X", channel="#ml-alerts")]) as d:
                d.submit([fire, res])
                assert await d.drain(30)
        return [json.loads(body) for _, body in rx.requests]

    fired, resolved = asyncio.run(main())
    assert fired["text"].startswith("[FIRING] AccuracyLow model=churn version=v7 segment=country=US")
    assert "accuracy 0.710 is below 0.8" in fired["text"] and fired["channel"] == "#ml-alerts"
    att = fired["attachments"][0]
    assert att["title"] == "accuracy of churn v7 in country=US is low"
    assert att["title_link"] == "https://runbooks.example.com/a" and att["color"] == "#e01e5a"
    assert {"title": "value", "value": "0.71", "short": True} in att["fields"]
    assert resolved["text"].startswith("[RESOLVED]") and resolved["attachments"][0]["color"] == "#2eb67d"


def test_log_and_topic_sinks(caplog):
    fire, res = lifecycle()
    sent = []

    async def send(key, value):
        sent.append((key, value))

    async def main():
        async with Dispatcher([LogSink(), TopicSink(send)]) as d:
            d.submit([fire, res])
            assert await d.drain(30)

    with caplog.at_level(logging.INFO, logger="prodlens.alerts"):
        asyncio.run(main())
    records = [r for r in caplog.records if r.name == "prodlens.alerts"]
    assert [r.levelno for r in records] == [logging.ERROR, logging.INFO]  # critical firing, then resolved
    assert "alert firing AccuracyLow" in records[0].getMessage() and records[0].alert["status"] == "firing"
    assert [k for k, _ in sent] == [fire.fingerprint.encode()] * 2
    assert sent[0][1] == alert_json(fire)
    assert AlertEvent.from_dict(json.loads(sent[1][1])) == res


def test_build_sinks_from_config():
    env = {"HOOK_SECRET": "abc", "SLACK_URL": "https://hooks.slack.com/services/x"}
    sinks = build_sinks([
        {"kind": "webhook", "url": "https://example.com/h", "secret_env": "HOOK_SECRET", "timeout": "2s", "retries": 1},
        {"kind": "alertmanager", "url": "http://am:9093/", "alive_for": "10m"},
        {"kind": "slack", "url_env": "SLACK_URL"},
        {"kind": "log"},
        {"kind": "topic"},
    ], env=env, topic_send=lambda k, v: None)
    hook, am, slack, logsink, topic = sinks
    assert hook.secret == "abc" and hook.timeout == 2 and hook.retries == 1
    assert am.url == "http://am:9093/api/v2/alerts" and am.alive_for == 600 and am.resend
    assert slack.url == env["SLACK_URL"]
    for spec, needle in [
        ({"kind": "pager"}, "alerts.sinks[0].kind: unknown sink 'pager'"),
        ({"kind": "webhook"}, "alerts.sinks[0] (webhook).url: required"),
        ({"kind": "webhook", "url": "ftp://x"}, "(webhook).url: must be an http(s) URL"),
        ({"kind": "webhook", "url": "http://x", "secret_env": "NOPE"}, "(webhook).secret_env: environment variable NOPE is not set"),
        ({"kind": "webhook", "url": "http://x", "timeout": "-1s"}, "(webhook).timeout: must not be negative"),
        ({"kind": "slack", "url": "http://x", "colour": "red"}, "(slack): unknown field(s) ['colour']"),
        ({"kind": "topic"}, "the topic sink needs the stream layer's producer"),
        ({"kind": "log", "retries": -1}, "(log).retries: must be an integer >= 0"),
    ]:
        with pytest.raises(SinkConfigError) as info:
            build_sinks([spec], env=env)
        assert needle in str(info.value)
    with pytest.raises(SinkConfigError, match="duplicate sink name"):
        build_sinks([{"kind": "log"}, {"kind": "log"}])


def test_alertmanager_payload_shape():
    fire, res = lifecycle()
    sink = AlertmanagerSink("http://am:9093", generator_url="http://prodlens/alerts", alive_for=300,
                            clock=lambda: 2_000_000_000.0)
    (f,), (r,) = sink.payload([fire]), sink.payload([res])
    assert f["labels"]["alertname"] == "AccuracyLow" and f["annotations"]["value"] == "0.71"
    assert f["endsAt"] == "2033-05-18T03:38:20.000Z" and f["generatorURL"] == "http://prodlens/alerts"
    assert r["endsAt"] < f["endsAt"] and r["startsAt"] == f["startsAt"]


# ----------------------------------------------------------------------------- a real Alertmanager
AM_BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@pytest.fixture
def alertmanager(tmp_path):
    if AM_BINARY is None:
        pytest.skip("Alertmanager is not installed (Debian: apt-get install prometheus-alertmanager)")
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
    port = free_port()
    log_file = open(tmp_path / "am.log", "wb")
    proc = subprocess.Popen([AM_BINARY, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=subprocess.DEVNULL, stderr=log_file)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("Alertmanager did not start: " + (tmp_path / "am.log").read_text()[-2000:])
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


def test_a_real_alertmanager_receives_and_lists_the_alert(alertmanager):
    fire, res = lifecycle()

    async def main():
        async with Dispatcher([AlertmanagerSink(alertmanager, generator_url="http://prodlens.local/alerts")]) as d:
            d.submit(fire)
            assert await d.drain(30)
            stats = d.stats()["alertmanager"]
            async with httpx.AsyncClient() as client:
                listed = (await client.get(alertmanager + "/api/v2/alerts")).json()
                d.refresh([fire])             # the periodic re-send is accepted (deduplicated by labels)
                assert await d.drain(30)
                relisted = (await client.get(alertmanager + "/api/v2/alerts")).json()
                d.submit(res)
                assert await d.drain(30)
                after = (await client.get(alertmanager + "/api/v2/alerts", params={"active": "true"})).json()
            return stats, listed, relisted, after, d.stats()["alertmanager"]

    stats, listed, relisted, after, final = asyncio.run(main())
    assert stats["delivered"] == 1 and stats["failed_attempts"] == 0
    (alert,) = listed
    assert alert["labels"] == {**LABELS, "alertname": "AccuracyLow", "severity": "critical"}
    assert alert["annotations"]["description"] == "accuracy 0.710 is below 0.8"
    assert alert["annotations"]["value"] == "0.71" and alert["annotations"]["threshold"] == "0.8"
    assert alert["annotations"]["runbook_url"] == "https://runbooks.example.com/a"
    assert alert["status"]["state"] == "active" and alert["generatorURL"] == "http://prodlens.local/alerts"
    assert len(relisted) == 1 and relisted[0]["fingerprint"] == alert["fingerprint"]
    assert after == [] and final["delivered"] == 3
