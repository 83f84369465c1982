"""Alert sinks and the dispatcher that delivers to all of them without ever blocking the pipeline.

Sinks (each receives every :class:`~prodlens.alerts.state.AlertEvent`):

* :class:`TopicSink` — the alerts topic: JSON per ``schemas/alert.v1.json``, keyed by fingerprint;
  the stream layer passes an async ``send(key, value)``.
* :class:`WebhookSink` — a generic webhook: one JSON POST per event (the same payload),
  ``X-Prodlens-Signature: sha256=<hex HMAC-SHA256 of the body>`` when a secret is set.
* :class:`AlertmanagerSink` — Alertmanager's v2 API (``POST /api/v2/alerts``); firing
  alerts must be re-sent periodically (:meth:`Dispatcher.refresh`), as Prometheus does,
  or Alertmanager resolves them after their ``endsAt``.
* :class:`SlackSink` — a Slack-compatible incoming webhook (also Mattermost, Rocket.Chat).
* :class:`LogSink` — Python logging.

:class:`Dispatcher` runs one worker task with a bounded queue per sink.
:meth:`~Dispatcher.submit` never blocks and never waits for a sink: a full queue
drops the event (counted); each worker retries with exponential backoff and jitter,
so a failing or slow sink delays only itself. Counters per sink: delivered,
failed attempts, retried, undelivered (gave up), dropped (queue full).

``sinks:`` in the ``alerts:`` section of prodlens.yaml (see :func:`build_sinks`)::

    sinks:
      - kind: webhook
        url: https://hooks.example.com/prodlens
        secret_env: PRODLENS_WEBHOOK_SECRET   # or secret: "..." (not recommended)
        timeout: 5s
        headers: {X-Team: ml}
      - kind: alertmanager
        url: http://alertmanager:9093
        generator_url: http://grafana:3000/d/prodlens
      - kind: slack
        url_env: SLACK_WEBHOOK_URL
      - kind: log
      - kind: topic                           # the alerts topic; wired by the stream layer
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable, Mapping

import httpx
import orjson

from .durations import parse_duration
from .state import AlertEvent

log = logging.getLogger("prodlens.alerts")
SIGNATURE_HEADER = "X-Prodlens-Signature"
USER_AGENT = "prodlens-alerts/1"


class DeliveryError(Exception):
    """A failed delivery; ``retryable`` False means retrying cannot help (e.g. HTTP 400)."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


def alert_payload(event: AlertEvent) -> dict:
    """The alert as JSON-ready dict (schemas/alert.v1.json)."""
    return event.to_dict()


def alert_json(event: AlertEvent) -> bytes:
    return orjson.dumps(alert_payload(event), option=orjson.OPT_SORT_KEYS)


def sign(body: bytes, secret: str | bytes) -> str:
    """The signature header value: ``sha256=<hex HMAC-SHA256 of body>``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: str | bytes) -> bool:
    """Check a received ``X-Prodlens-Signature`` header (constant-time)."""
    return header is not None and hmac.compare_digest(sign(body, secret), header)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _raise_for_status(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    code = response.status_code
    retryable = code >= 500 or code in (408, 425, 429)
    raise DeliveryError(f"{what}: HTTP {code}: {response.text[:200]}", retryable=retryable)


async def _post(client: httpx.AsyncClient, url: str, what: str, timeout: float, **kwargs: Any) -> None:
    try:
        response = await client.post(url, timeout=timeout, **kwargs)
    except httpx.TimeoutException as exc:
        raise DeliveryError(f"{what}: timed out after {timeout:g}s ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{what}: {type(exc).__name__}: {exc}") from None
    _raise_for_status(response, what)


# ----------------------------------------------------------------------------------- sinks
class Sink:
    """Base class: ``deliver`` one event or raise (DeliveryError or anything: retried)."""

    name: str = "sink"
    resend: bool = False  # wants periodic re-sends of firing alerts (Alertmanager)
    timeout: float = 10.0
    retries: int | None = None  # None: the dispatcher's default
    queue_size: int | None = None

    async def deliver(self, event: AlertEvent, client: httpx.AsyncClient) -> None:  # pragma: no cover
        raise NotImplementedError


class TopicSink(Sink):
    """The alerts topic: ``send(key, value)`` is the stream layer's async producer call."""

    def __init__(self, send: Callable[[bytes, bytes], Awaitable[Any]], name: str = "topic"):
        self.send, self.name = send, name

    async def deliver(self, event: AlertEvent, client: httpx.AsyncClient) -> None:
        await self.send(event.fingerprint.encode(), alert_json(event))


class WebhookSink(Sink):
    """JSON POST of the alert payload, HMAC-SHA256 signed when ``secret`` is set."""

    def __init__(self, url: str, secret: str | bytes | None = None, *, timeout: float = 5.0,
                 headers: Mapping[str, str] | None = None, name: str = "webhook"):
        self.url, self.secret, self.timeout, self.name = url, secret, timeout, name
        self.headers = dict(headers or {})

    def request(self, event: AlertEvent) -> tuple[bytes, dict[str, str]]:
        body = alert_json(event)
        headers = {**self.headers, "Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "X-Prodlens-Event-Id": event.event_id}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(body, self.secret)
        return body, headers

    async def deliver(self, event: AlertEvent, client: httpx.AsyncClient) -> None:
        body, headers = self.request(event)
        await _post(client, self.url, f"webhook {self.url}", self.timeout, content=body, headers=headers)


class AlertmanagerSink(Sink):
    """Alertmanager v2: ``POST {url}/api/v2/alerts``.

    Firing alerts carry ``endsAt`` = now + ``alive_for`` (wall clock), so Alertmanager
    resolves them by itself if prodlens stops re-sending (call :meth:`Dispatcher.refresh`
    more often than ``alive_for``); resolved alerts carry their end time.
    """

    resend = True

    def __init__(self, url: str, *, generator_url: str | None = None, alive_for: float = 300.0,
                 timeout: float = 5.0, name: str = "alertmanager", clock: Callable[[], float] = time.time):
        self.base = url.rstrip("/")
        self.url = self.base + "/api/v2/alerts"
        self.generator_url, self.alive_for, self.timeout, self.name = generator_url, alive_for, timeout, name
        self.clock = clock

    def payload(self, events: Iterable[AlertEvent]) -> list[dict]:
        now = self.clock()
        out = []
        for e in events:
            if e.status == "firing":
                ends = max(now, e.starts_at) + self.alive_for
            else:
                ends = max(e.starts_at, min(e.ends_at if e.ends_at is not None else now, now))
            item = {"labels": {k: v for k, v in e.labels.items() if v != ""},
                    "annotations": dict(e.annotations), "startsAt": rfc3339(e.starts_at), "endsAt": rfc3339(ends)}
            if self.generator_url:
                item["generatorURL"] = self.generator_url
            out.append(item)
        return out

    async def deliver(self, event: AlertEvent, client: httpx.AsyncClient) -> None:
        await _post(client, self.url, f"alertmanager {self.base}", self.timeout, json=self.payload([event]))


_COLORS = {"resolved": "#2eb67d", "critical": "#e01e5a", "page": "#e01e5a", "warning": "#ecb22e"}


class SlackSink(Sink):
    """A Slack-compatible incoming webhook: ``text`` plus one attachment with the labels as fields."""

    def __init__(self, url: str, *, timeout: float = 5.0, name: str = "slack", channel: str | None = None):
        self.url, self.timeout, self.name, self.channel = url, timeout, name, channel

    def payload(self, event: AlertEvent) -> dict:
        a = event.annotations
        head = f"[{event.status.upper()}] {event.rule}"
        where = " ".join(f"{k}={event.labels[k]}" for k in ("model", "version", "segment") if event.labels.get(k))
        text = f"{head} {where}: {a.get('description', '')}".strip()
        color = _COLORS["resolved"] if event.status == "resolved" else _COLORS.get(event.severity, "#439fe0")
        fields = [{"title": k, "value": v, "short": True}
                  for k, v in sorted(event.labels.items()) if k not in ("alertname",)]
        fields.append({"title": "value", "value": a.get("value", "n/a"), "short": True})
        fields.append({"title": "threshold", "value": a.get("threshold", "n/a"), "short": True})
        attachment = {"fallback": text, "color": color, "title": a.get("summary", head),
                      "text": a.get("description", ""), "fields": fields, "footer": "prodlens",
                      "ts": int(event.ends_at if event.ends_at is not None else event.starts_at)}
        if a.get("runbook_url"):
            attachment["title_link"] = a["runbook_url"]
        body: dict[str, Any] = {"text": text, "attachments": [attachment]}
        if self.channel:
            body["channel"] = self.channel
        return body

    async def deliver(self, event: AlertEvent, client: httpx.AsyncClient) -> None:
        await _post(client, self.url, "slack webhook", self.timeout, json=self.payload(event))


class LogSink(Sink):
    """Logs each event on ``prodlens.alerts``: firing at WARNING (ERROR for critical/page), resolved at INFO."""

    def __init__(self, logger: logging.Logger | None = None, name: str = "log"):
        self.logger, self.name = logger or log, name

    async def deliver(self, event: AlertEvent, client: httpx.AsyncClient) -> None:
        if event.status == "resolved":
            level = logging.INFO
        else:
            level = logging.ERROR if event.severity in ("critical", "page") else logging.WARNING
        self.logger.log(level, "alert %s %s %s: %s", event.status, event.rule,
                        ",".join(f"{k}={v}" for k, v in sorted(event.labels.items()) if k != "alertname"),
                        event.annotations.get("description", ""), extra={"alert": alert_payload(event)})


# ----------------------------------------------------------------------------------- configuration
class SinkConfigError(ValueError):
    pass


_SINK_KEYS = {
    "webhook": {"url", "url_env", "secret", "secret_env", "timeout", "headers"},
    "alertmanager": {"url", "url_env", "generator_url", "alive_for", "timeout"},
    "slack": {"url", "url_env", "timeout", "channel"},
    "log": {"logger"},
    "topic": set(),
}


def build_sinks(specs: Iterable[Mapping[str, Any]], *, env: Mapping[str, str] | None = None,
                topic_send: Callable[[bytes, bytes], Awaitable[Any]] | None = None) -> list[Sink]:
    """Sinks from the ``alerts.sinks`` list; secrets and URLs may come from environment variables."""
    env = os.environ if env is None else env
    out: list[Sink] = []
    names: set[str] = set()
    for i, spec in enumerate(specs):
        kind = spec.get("kind") if isinstance(spec, Mapping) else None
        at = f"alerts.sinks[{i}]"
        if kind not in _SINK_KEYS:
            raise SinkConfigError(f"{at}.kind: unknown sink {kind!r}; choose one of {', '.join(_SINK_KEYS)}")
        at = f"{at} ({kind})"
        unknown = set(spec) - _SINK_KEYS[kind] - {"kind", "name", "retries", "queue_size"}
        if unknown:
            raise SinkConfigError(f"{at}: unknown field(s) {sorted(unknown)}")
        name = spec.get("name", kind)
        if name in names:
            raise SinkConfigError(f"{at}.name: duplicate sink name {name!r} (set name: to tell them apart)")
        names.add(name)

        def value(key: str, required: bool = False) -> Any:
            v = spec.get(key)
            if v is None and spec.get(f"{key}_env") is not None:
                var = spec[f"{key}_env"]
                v = env.get(var)
                if v is None:
                    raise SinkConfigError(f"{at}.{key}_env: environment variable {var} is not set")
            if required and not v:
                raise SinkConfigError(f"{at}.{key}: required")
            return v

        def seconds(key: str, default: float) -> float:
            try:
                s = parse_duration(spec[key], f"{at}.{key}") if spec.get(key) is not None else default
            except ValueError as exc:
                raise SinkConfigError(str(exc)) from None
            if s <= 0:
                raise SinkConfigError(f"{at}.{key}: must be positive")
            return s

        def url(key: str = "url") -> str:
            u = value(key, required=True)
            if not isinstance(u, str) or not u.startswith(("http://", "https://")):
                raise SinkConfigError(f"{at}.{key}: must be an http(s) URL, got {u!r}")
            return u

        sink: Sink
        if kind == "webhook":
            headers = spec.get("headers") or {}
            if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
                raise SinkConfigError(f"{at}.headers: must be a mapping of header name to string")
            sink = WebhookSink(url(), value("secret"), timeout=seconds("timeout", 5.0), headers=headers, name=name)
        elif kind == "alertmanager":
            sink = AlertmanagerSink(url(), generator_url=spec.get("generator_url"),
                                    alive_for=seconds("alive_for", 300.0), timeout=seconds("timeout", 5.0), name=name)
        elif kind == "slack":
            sink = SlackSink(url(), timeout=seconds("timeout", 5.0), name=name, channel=spec.get("channel"))
        elif kind == "log":
            sink = LogSink(logging.getLogger(spec["logger"]) if spec.get("logger") else None, name=name)
        else:
            if topic_send is None:
                raise SinkConfigError(f"{at}: the topic sink needs the stream layer's producer (topic_send)")
            sink = TopicSink(topic_send, name=name)
        for key in ("retries", "queue_size"):
            if spec.get(key) is not None:
                v = spec[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "retries" else 1):
                    raise SinkConfigError(f"{at}.{key}: must be an integer >= {0 if key == 'retries' else 1}")
                setattr(sink, key, v)
        out.append(sink)
    return out


# ----------------------------------------------------------------------------------- dispatcher
@dataclass
class SinkStats:
    delivered: int = 0
    failed_attempts: int = 0
    retried: int = 0
    undelivered: int = 0
    dropped: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Lane:
    sink: Sink
    queue: asyncio.Queue
    stats: SinkStats = field(default_factory=SinkStats)
    task: asyncio.Task | None = None


class Dispatcher:
    """Delivers alert events to every sink concurrently; the caller never waits for a sink.

    Use inside a running event loop::

        async with Dispatcher(sinks) as dispatcher:
            dispatcher.submit(engine.evaluate(now, samples))
            ...
            dispatcher.refresh(engine.firing())   # every minute, for Alertmanager

    ``retries`` further attempts per event, sleeping ``backoff * 2**attempt``
    (capped at ``max_backoff``, ±``jitter`` share) between them; non-retryable
    errors (HTTP 4xx but 408/425/429) give up at once. Events of one sink are
    delivered in order, so a resolved event never overtakes its firing event.
    """

    def __init__(self, sinks: Iterable[Sink], *, queue_size: int = 1000, retries: int = 5, backoff: float = 0.5,
                 max_backoff: float = 30.0, jitter: float = 0.2, client: httpx.AsyncClient | None = None):
        self.retries, self.backoff, self.max_backoff, self.jitter = retries, backoff, max_backoff, jitter
        self._lanes: list[_Lane] = []
        self._queue_size = queue_size
        self._sinks = list(sinks)
        names = [s.name for s in self._sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sinks: names must be unique, got {names}")
        self._client = client
        self._own_client = client is None
        self._started = False
        self._stats = {s.name: SinkStats() for s in self._sinks}

    async def start(self) -> "Dispatcher":
        if self._started:
            return self
        if self._client is None:
            self._client = httpx.AsyncClient(headers={"User-Agent": USER_AGENT})
        for sink in self._sinks:
            lane = _Lane(sink, asyncio.Queue(maxsize=sink.queue_size or self._queue_size), self._stats[sink.name])
            lane.task = asyncio.get_running_loop().create_task(self._run(lane), name=f"prodlens-sink-{sink.name}")
            self._lanes.append(lane)
        self._started = True
        return self

    async def __aenter__(self) -> "Dispatcher":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def submit(self, events: Iterable[AlertEvent] | AlertEvent) -> None:
        """Queue events for every sink. Never blocks; full queues drop (counted). Call after :meth:`start`."""
        self._put(events, lambda lane: True)

    def refresh(self, firing: Iterable[AlertEvent]) -> None:
        """Re-send currently firing alerts to sinks that need it (Alertmanager)."""
        self._put(firing, lambda lane: lane.sink.resend)

    def _put(self, events: Iterable[AlertEvent] | AlertEvent, wanted: Callable[[_Lane], bool]) -> None:
        if isinstance(events, AlertEvent):
            events = [events]
        events = list(events)
        if not self._started:
            raise RuntimeError("Dispatcher.start() must be awaited before submitting")
        for lane in self._lanes:
            if not wanted(lane):
                continue
            for event in events:
                try:
                    lane.queue.put_nowait(event)
                except asyncio.QueueFull:
                    lane.stats.dropped += 1
                    log.warning("alert sink %s: queue full, dropped %s %s", lane.sink.name, event.status, event.rule)

    async def _run(self, lane: _Lane) -> None:
        retries = lane.sink.retries if lane.sink.retries is not None else self.retries
        while True:
            event = await lane.queue.get()
            try:
                await self._deliver(lane, event, retries)
            except asyncio.CancelledError:
                lane.stats.undelivered += 1  # stopped while delivering or backing off
                raise
            finally:
                lane.queue.task_done()

    async def _deliver(self, lane: _Lane, event: AlertEvent, retries: int) -> None:
        for attempt in range(retries + 1):
            try:
                await asyncio.wait_for(lane.sink.deliver(event, self._client), lane.sink.timeout + 1.0)
                lane.stats.delivered += 1
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of one sink stays in its lane
                lane.stats.failed_attempts += 1
                lane.stats.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if not getattr(exc, "retryable", True) or attempt == retries:
                    lane.stats.undelivered += 1
                    log.warning("alert sink %s: gave up on %s %s after %d attempt(s): %s", lane.sink.name,
                                event.status, event.rule, attempt + 1, lane.stats.last_error)
                    return
                lane.stats.retried += 1
                await asyncio.sleep(self._delay(attempt))

    def _delay(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * (2 ** attempt))
        return max(0.0, base * (1 + random.uniform(-self.jitter, self.jitter)))

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queue is empty and idle; False on timeout."""
        waits = [lane.queue.join() for lane in self._lanes]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then stop; the rest counts as undelivered."""
        if not self._started:
            return
        await self.drain(timeout)
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
        await asyncio.gather(*(lane.task for lane in self._lanes if lane.task), return_exceptions=True)
        for lane in self._lanes:
            lane.stats.undelivered += lane.queue.qsize()
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None
        self._lanes, self._started = [], False

    def stats(self) -> dict[str, dict]:
        """Counters per sink name (plus ``queued``); they survive :meth:`close`."""
        queued = {lane.sink.name: lane.queue.qsize() for lane in self._lanes}
        return {name: {**st.to_dict(), "queued": queued.get(name, 0)} for name, st in self._stats.items()}
