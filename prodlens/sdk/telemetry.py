"""The app-facing producers: :class:`Telemetry` (threads) and :class:`AsyncTelemetry` (asyncio).

>>> tel = Telemetry("localhost:9092", salt="from-your-secret-store")    # doctest: +SKIP
>>> pid = tel.log_prediction("churn", "v7", label="stay", score=0.18,   # doctest: +SKIP
...                          features={"tenure_months": 14}, segment={"country": "US"},
...                          unit_id=user.id, latency_ms=12.4)
>>> tel.log_feedback(pid, "label", "churn")                             # doctest: +SKIP
>>> tel.log_outcome(user.id, "revenue", 19.99)                          # doctest: +SKIP
>>> tel.close()                                                         # doctest: +SKIP

``log_*`` only validates, hashes and appends to an in-memory queue: it never waits
for the network. A background sender batches events into columnar envelopes,
sends them, and spools to a local file whatever the broker cannot take right now.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread  # noqa: F401 - register its exit hook before ours (see the end)
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any

from prodlens.sdk.batching import Batcher
from prodlens.sdk.engine import Engine
from prodlens.sdk.events import EventBuilder
from prodlens.sdk.privacy import Privacy
from prodlens.sdk.settings import Settings, default_bootstrap, from_config_file
from prodlens.sdk.spool import Record, Spool, default_spool_dir
from prodlens.sdk.stats import Stats

log = logging.getLogger("prodlens.sdk")
_LIVE: "weakref.WeakSet[_Base]" = weakref.WeakSet()


class _Base:
    """Configuration, validation, the bounded queue, the spool and the counters."""

    def __init__(self, bootstrap_servers: str | None = None, *, config: str | os.PathLike | None = None,
                 topics: Mapping[str, str] | None = None, salt: str | bytes | None = None,
                 hash_length: int = 32, hash_unit_ids: bool = True,
                 allow_features: Collection[str] | None = None, redact_features: Collection[str] = (),
                 allow_segment: Collection[str] | None = None, redact_segment: Collection[str] = (),
                 batch_size: int = 500, linger: float = 0.1, max_queue: int = 100_000,
                 spool_dir: str | os.PathLike | None = None, spool_max_bytes: int = 256 << 20,
                 producer_options: Mapping[str, Any] | None = None, **options: Any):
        values: dict[str, Any] = from_config_file(config) if config is not None else {}
        if bootstrap_servers is not None:
            values["bootstrap_servers"] = bootstrap_servers
        values.setdefault("bootstrap_servers", default_bootstrap())
        if topics is not None:
            values["topics"] = {**values.get("topics", {}), **topics}
        values["producer_options"] = {**values.get("producer_options", {}), **(producer_options or {})}
        values.update(batch_size=batch_size, linger=linger, max_queue=max_queue, spool_dir=spool_dir,
                      spool_max_bytes=spool_max_bytes)
        unknown = set(options) - set(Settings.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; see prodlens.sdk.Settings")
        values.update(options)
        self.settings = Settings(**values)
        self.privacy = Privacy(salt, hash_length=hash_length, hash_unit_ids=hash_unit_ids,
                               allow_features=allow_features, redact_features=redact_features,
                               allow_segment=allow_segment, redact_segment=redact_segment)
        self._stats = Stats()
        self._builder = EventBuilder(self.privacy, self._stats)
        self._queue: deque = deque()
        self._spool_dir = self.settings.spool_dir or default_spool_dir(self.settings.bootstrap_servers)
        self._spool = Spool(self._spool_dir, self.settings.spool_max_bytes,
                            self.settings.spool_segment_bytes, self.settings.spool_fsync)
        self._engine = Engine(self.settings, self._queue, self._stats, self._spool)
        self._closed = False
        self._close_result: bool | None = None
        self._batch = self.settings.batch_size
        self._max_queue = self.settings.max_queue
        self._overflow_logged_at = -1e9
        self._stats_lock = self._stats._lock
        self._stats_values = self._stats._values
        atexit.register(self._at_exit)
        _LIVE.add(self)

    # -- queueing ------------------------------------------------------------------
    def _put(self, item: tuple) -> None:
        if self._closed:
            raise RuntimeError("this Telemetry is closed; create a new one to log more events")
        queue = self._queue
        with self._stats_lock:
            queue.append(item)
            self._stats_values["logged"] += 1
            n = len(queue)
        if n % self._batch == 0 or (n == 1 and self._engine.idle):
            self._wake()
        if n >= self._max_queue:
            self._overflow(limit=self._batch)

    def _wake(self) -> None:
        raise NotImplementedError

    def _overflow(self, quiet: bool = False, limit: int | None = None) -> None:
        """Move queued events to the spool (local disk, no network): the oldest ``limit``
        when the queue is full (the sender is not keeping up), or all of them at close.

        Spilling one batch per call keeps the cost per log call small and bounded."""
        queue = self._queue
        items = []
        try:
            for _ in range(len(queue) if limit is None else min(limit, len(queue))):
                items.append(queue.popleft())
        except IndexError:
            pass
        if not items:
            return
        batcher = Batcher(self.settings.batch_size, 0.0, self.settings.max_message_bytes)
        envelopes = batcher.add_many(items, 0.0) + batcher.seal_all()
        if batcher.oversized:
            self._stats.add("oversized", len(batcher.oversized))
        for env in envelopes:
            if self._spool.write(Record(self.settings.topics[env.kind], env.key, env.kind,
                                        env.count, env.payload)):
                self._stats.add("spooled", env.count)
            else:
                self._stats.add("dropped", env.count)
        now = time.monotonic()
        if not quiet and now - self._overflow_logged_at >= 30.0:
            self._overflow_logged_at = now
            log.warning("prodlens: the send queue is full (max_queue=%d): events go to the spool "
                        "(%d so far)", self._max_queue, self._stats.get("spooled"))

    # -- counters --------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters (events) and state: logged, sent, spooled, resent, dropped, failed,
        oversized, non_finite, adopted, envelopes, pending (in memory), spool_events,
        spool_bytes, connected, last_error."""
        out: dict[str, Any] = self._stats.snapshot()
        out.update(pending=self._engine.pending, spool_events=self._spool.events,
                   spool_bytes=self._spool.bytes, connected=self._engine.connected,
                   last_error=self._engine.last_error)
        return out

    @property
    def sent(self) -> int:
        return self._stats.get("sent")

    @property
    def spooled(self) -> int:
        return self._stats.get("spooled")

    @property
    def resent(self) -> int:
        return self._stats.get("resent")

    @property
    def dropped(self) -> int:
        return self._stats.get("dropped")

    @property
    def failed(self) -> int:
        return self._stats.get("failed")

    @property
    def closed(self) -> bool:
        return self._closed

    def _at_exit(self) -> None:
        raise NotImplementedError

    def _after_fork(self) -> None:
        raise NotImplementedError


class Telemetry(_Base):
    """Log predictions, feedback and outcomes from synchronous code (web handlers, workers).

    Every ``log_*`` call validates, hashes the unit id, applies the feature /
    segment allowlist and redaction, appends to a bounded in-memory queue and
    returns: it never waits for the network. A daemon thread with its own asyncio
    loop batches events into columnar envelopes (``batch_size`` events per envelope;
    an event waits in memory at most about ``2 * linger`` seconds before its
    envelope is sent) and sends them with aiokafka; prediction envelopes
    are keyed ``b"<model>/<version>"``, feedback ``b"<model>"`` (when given),
    outcomes unkeyed.

    When the broker is unreachable, or the queue reaches ``max_queue`` events,
    envelopes go to an append-only spool in ``spool_dir`` (default: ``$PRODLENS_SPOOL_DIR``
    or ``~/.cache/prodlens/spool``, one sub-directory per cluster; at most
    ``spool_max_bytes``; beyond that envelopes are dropped and counted), and are
    resent when the broker answers - also by the next process that starts with
    the same ``spool_dir``. ``close()`` (also via ``with`` and at interpreter
    exit) flushes for up to ``timeout`` seconds and spools what is left.

    Arguments: ``bootstrap_servers`` (else ``config``'s ``broker.bootstrap``, else
    ``$PRODLENS_BOOTSTRAP``, else ``localhost:9092``); ``config``: a ``prodlens.yaml``
    whose ``topics`` and ``broker`` sections are used; ``topics``: kind -> topic
    (``predictions`` / ``feedback`` / ``outcomes``); ``salt``, ``hash_length``,
    ``hash_unit_ids``, ``allow_features``, ``redact_features``, ``allow_segment``,
    ``redact_segment``: see :class:`~prodlens.sdk.privacy.Privacy`;
    ``producer_options``: passed to ``AIOKafkaProducer`` (SASL / TLS, compression);
    further options (``max_message_bytes``, ``max_in_flight``, ``acks``,
    ``request_timeout``, ``connect_timeout``, ``reconnect_backoff``, ...): see
    :class:`~prodlens.sdk.settings.Settings`.
    """

    def __init__(self, bootstrap_servers: str | None = None, **kwargs: Any):
        super().__init__(bootstrap_servers, **kwargs)
        self._start_thread()

    def _start_thread(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop_requested: asyncio.Event | None = None
        self._close_timeout = 10.0
        started = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(started,),
                                        name="prodlens-sdk-sender", daemon=True)
        self._thread.start()
        started.wait()

    def _thread_main(self, started: threading.Event) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)

        async def body() -> None:
            self._stop_requested = asyncio.Event()
            self._engine.start()
            started.set()
            await self._stop_requested.wait()
            self._close_result = await self._engine.close(self._close_timeout)

        try:
            loop.run_until_complete(body())
        except Exception:  # noqa: BLE001
            log.exception("prodlens: the SDK sender thread failed")
        finally:
            started.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._engine.wake)
        except RuntimeError:
            pass  # loop closed (shutting down): the queue is swept into the spool on close

    # -- logging -------------------------------------------------------------------------
    def log_prediction(self, model: str, version: str, output: Mapping[str, Any] | None = None, *,
                       label: Any = None, score: float | None = None,
                       probabilities: Mapping[str, float] | None = None, value: float | None = None,
                       features: Mapping[str, Any] | None = None, segment: Mapping[str, Any] | None = None,
                       latency_ms: float | None = None, unit_id: Any = None,
                       prediction_id: str | None = None, event_id: str | None = None,
                       timestamp: Any = None, role: str = "primary", experiment: str | None = None,
                       variant: str | None = None) -> str:
        """Log one prediction; returns its prediction_id (a new uuid4 hex unless given).

        ``output`` (or ``label`` / ``score`` / ``probabilities`` / ``value``) is what the
        model answered. ``timestamp``: epoch seconds, an aware datetime or RFC 3339
        (default: now). Raises ValueError / TypeError naming a bad field.
        """
        item = self._builder.prediction(
            model, version, output, label=label, score=score, probabilities=probabilities,
            value=value, features=features, segment=segment, latency_ms=latency_ms, unit_id=unit_id,
            prediction_id=prediction_id, event_id=event_id, timestamp=timestamp, role=role,
            experiment=experiment, variant=variant)
        self._put(item)
        return item[2][1]

    def log_feedback(self, prediction_id: str, kind: str, value: Any = None, *, model: str | None = None,
                     size: float | None = None, corrected: float | None = None,
                     event_id: str | None = None, timestamp: Any = None) -> str:
        """Log feedback on a prediction (kind: label, correction, complaint, rating, implicit);
        returns the event_id."""
        item = self._builder.feedback(prediction_id, kind, value, model=model, size=size,
                                      corrected=corrected, event_id=event_id, timestamp=timestamp)
        self._put(item)
        return item[2][0]

    def log_outcome(self, unit_id: Any, metric: str, value: float, *, model: str | None = None,
                    experiment: str | None = None, segment: Mapping[str, Any] | None = None,
                    event_id: str | None = None, timestamp: Any = None) -> str:
        """Log a business outcome (conversion, revenue, ...) for a unit; returns the event_id."""
        item = self._builder.outcome(unit_id, metric, value, model=model, experiment=experiment,
                                     segment=segment, event_id=event_id, timestamp=timestamp)
        self._put(item)
        return item[2][0]

    # -- lifecycle -----------------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything logged so far (and resend the spool if the broker answers).

        Returns True when nothing is left undelivered, False if some of it waits in
        the spool (broker unreachable) or ``timeout`` passed.
        """
        if self._closed:
            return bool(self._close_result)
        try:
            fut = asyncio.run_coroutine_threadsafe(self._engine.flush(), self._loop)
        except RuntimeError:
            return False
        try:
            return fut.result(timeout)
        except Exception:  # noqa: BLE001 - timeout or the loop went away
            fut.cancel()
            return False

    def close(self, timeout: float = 10.0) -> bool:
        """Flush for up to ``timeout`` seconds, stop the sender, spool whatever is left.

        Returns True when everything logged was delivered. Idempotent.
        """
        if self._closed:
            return bool(self._close_result)
        self._closed = True
        atexit.unregister(self._at_exit)
        self._close_timeout = timeout
        if self._thread.is_alive() and self._stop_requested is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop_requested.set)
            except RuntimeError:
                pass
            self._thread.join(timeout + 5.0)
        if self._thread.is_alive():
            log.error("prodlens: the SDK sender did not stop within %.0fs", timeout + 5.0)
        else:
            # The sender is gone: whatever it left in memory (or callers added meanwhile)
            # goes to the spool so the next process resends it.
            self._engine.spool_leftovers()
        self._overflow(quiet=True)
        self._spool.close()
        return bool(self._close_result)

    def _at_exit(self) -> None:
        self.close(self._close_timeout)

    def _after_fork(self) -> None:
        # In a forked child (gunicorn, multiprocessing) the sender thread does not exist
        # and the queue holds the parent's events: start clean with our own sender.
        self._queue.clear()
        # The parent's spool files stay the parent's (its flocks are shared with us):
        # drop our copy without closing it, which could delete the parent's segment.
        self._spool = Spool(self._spool_dir, self.settings.spool_max_bytes,
                            self.settings.spool_segment_bytes, self.settings.spool_fsync)
        self._stats = Stats()
        self._builder.stats = self._stats
        self._stats_lock = self._stats._lock
        self._stats_values = self._stats._values
        self._engine = Engine(self.settings, self._queue, self._stats, self._spool)
        if not self._closed:
            self._start_thread()

    def __enter__(self) -> "Telemetry":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncTelemetry(_Base):
    """The same producer for asyncio apps: ``await tel.log_prediction(...)``.

    The sender runs as a task in the app's event loop (started on the first log
    or by ``await tel.start()`` / ``async with``); ``log_*`` coroutines only
    validate and queue, so they never wait for the network. Same arguments as
    :class:`Telemetry`. Close with ``await tel.close()``; at interpreter exit
    without a close, events still in memory are written to the spool.
    """

    def __init__(self, bootstrap_servers: str | None = None, **kwargs: Any):
        super().__init__(bootstrap_servers, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> "AsyncTelemetry":
        if self._engine.task is None:
            self._loop = asyncio.get_running_loop()
            self._engine.start()
        return self

    def _wake(self) -> None:
        self._engine.wake()

    async def _aput(self, item: tuple) -> None:
        if self._engine.task is None:
            await self.start()
        self._put(item)
        if len(self._queue) % self._batch == 0:
            await asyncio.sleep(0)  # let the sender take a full batch before the queue grows

    async def log_prediction(self, model: str, version: str, output: Mapping[str, Any] | None = None, *,
                             label: Any = None, score: float | None = None,
                             probabilities: Mapping[str, float] | None = None, value: float | None = None,
                             features: Mapping[str, Any] | None = None,
                             segment: Mapping[str, Any] | None = None, latency_ms: float | None = None,
                             unit_id: Any = None, prediction_id: str | None = None,
                             event_id: str | None = None, timestamp: Any = None, role: str = "primary",
                             experiment: str | None = None, variant: str | None = None) -> str:
        """Log one prediction; returns its prediction_id. See :meth:`Telemetry.log_prediction`."""
        item = self._builder.prediction(
            model, version, output, label=label, score=score, probabilities=probabilities,
            value=value, features=features, segment=segment, latency_ms=latency_ms, unit_id=unit_id,
            prediction_id=prediction_id, event_id=event_id, timestamp=timestamp, role=role,
            experiment=experiment, variant=variant)
        await self._aput(item)
        return item[2][1]

    async def log_feedback(self, prediction_id: str, kind: str, value: Any = None, *,
                           model: str | None = None, size: float | None = None,
                           corrected: float | None = None, event_id: str | None = None,
                           timestamp: Any = None) -> str:
        """Log feedback on a prediction; returns the event_id."""
        item = self._builder.feedback(prediction_id, kind, value, model=model, size=size,
                                      corrected=corrected, event_id=event_id, timestamp=timestamp)
        await self._aput(item)
        return item[2][0]

    async def log_outcome(self, unit_id: Any, metric: str, value: float, *, model: str | None = None,
                          experiment: str | None = None, segment: Mapping[str, Any] | None = None,
                          event_id: str | None = None, timestamp: Any = None) -> str:
        """Log a business outcome for a unit; returns the event_id."""
        item = self._builder.outcome(unit_id, metric, value, model=model, experiment=experiment,
                                     segment=segment, event_id=event_id, timestamp=timestamp)
        await self._aput(item)
        return item[2][0]

    async def flush(self) -> bool:
        """Send everything logged so far; True when nothing is left undelivered."""
        if self._closed:
            return bool(self._close_result)
        await self.start()
        return await self._engine.flush()

    async def close(self, timeout: float = 10.0) -> bool:
        """Flush for up to ``timeout`` seconds, stop the sender, spool whatever is left."""
        if self._closed:
            return bool(self._close_result)
        self._closed = True
        atexit.unregister(self._at_exit)
        self._close_result = await self._engine.close(timeout)
        self._overflow(quiet=True)
        self._spool.close()
        return self._close_result

    def _at_exit(self) -> None:
        # The event loop is gone by now: keep what is in memory on disk for the next start.
        if not self._closed:
            self._closed = True
            self._engine.spool_leftovers()
            self._overflow(quiet=True)
            self._spool.close()

    def _after_fork(self) -> None:
        self._queue.clear()
        self._closed = True  # an asyncio app re-creates its clients after a fork

    async def __aenter__(self) -> "AsyncTelemetry":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


def _reset_after_fork() -> None:
    for tel in list(_LIVE):
        try:
            tel._after_fork()
        except Exception:  # noqa: BLE001
            log.exception("prodlens: could not restart the SDK after fork")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _flush_before_thread_pools_stop() -> None:
    # Interpreter exit, step 1: thread pools (which asyncio uses to resolve host names)
    # are still alive, so send now; close() at the regular atexit step then only has to
    # deal with what app threads log while they are being joined.
    for tel in list(_LIVE):
        if isinstance(tel, Telemetry) and not tel.closed:
            tel.flush(tel._close_timeout)


_register_early = getattr(threading, "_register_atexit", None)  # what concurrent.futures uses
if _register_early is not None:
    try:
        _register_early(_flush_before_thread_pools_stop)  # runs before the pools' own hook
    except RuntimeError:  # already shutting down
        pass
