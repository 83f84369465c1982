"""The sender: one asyncio task that turns queued rows into envelopes and delivers them.

It drains the callers' queue into a :class:`~prodlens.sdk.batching.Batcher`,
sends sealed envelopes with an aiokafka producer (at most ``max_in_flight`` at a
time), writes whatever the broker cannot take to the :class:`~prodlens.sdk.spool.Spool`,
and resends the spool once the broker answers again. The broker being down
never reaches the callers: they only append to a bounded queue.

States: *disconnected* (no producer; envelopes go to the spool; a connection is
retried with exponential backoff) and *connected*. Any failed send marks the
producer broken: it is torn down, its unacknowledged envelopes are spooled, and
the engine reconnects. Delivery is at-least-once: an envelope whose
acknowledgement was lost may be spooled and sent again (ingest drops duplicates
by event_id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Iterator

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from prodlens.sdk.batching import Batcher, Envelope
from prodlens.sdk.settings import Settings
from prodlens.sdk.spool import Record, Segment, Spool
from prodlens.sdk.stats import Stats

log = logging.getLogger("prodlens.sdk")
IDLE_WAKE = 1.0  # seconds between housekeeping passes when nothing is due


class Engine:
    """Owns the batcher, the producer and the resend loop; lives in one event loop."""

    def __init__(self, settings: Settings, queue: deque, stats: Stats, spool: Spool):
        self.settings = settings
        self.queue = queue
        self.stats = stats
        self.spool = spool
        self.batcher = Batcher(settings.batch_size, settings.linger, settings.max_message_bytes)
        self.producer: AIOKafkaProducer | None = None
        self.last_error: str | None = None
        self.task: asyncio.Task | None = None
        # True while the sender sleeps with nothing batching: the next caller must wake it.
        # While groups are batching it wakes by itself within ``linger``, so callers need
        # not pay for a cross-thread wake-up per event.
        self.idle = False
        self._broken = False
        self._next_connect = 0.0
        self._backoff = settings.reconnect_backoff
        self._outbox: deque[Envelope] = deque()
        self._outbox_events = 0  # kept as a number: stats() reads it from other threads
        # delivery future -> (envelope or spooled record, topic, origin); origin None = fresh
        self._inflight: dict[asyncio.Future, tuple[Any, str, tuple[Segment, int] | None]] = {}
        self._inflight_events = 0
        self._resending: set[tuple[int, int]] = set()
        self._resend_iter: Iterator[tuple[Segment, int, Record]] | None = None
        self._flush_waiters: list[asyncio.Future] = []
        self._forced_connect = False
        self._outage_logged = False
        self._drop_logged_at = -1e9
        self._wake: asyncio.Event | None = None
        self._sem: asyncio.Semaphore | None = None

    # -- public ------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.producer is not None and not self._broken

    @property
    def pending(self) -> int:
        """Events in memory: queued, batching, waiting to be sent, or awaiting an ack."""
        return len(self.queue) + self.batcher.pending + self._outbox_events + self._inflight_events

    def wake(self) -> None:
        """Ask the sender to look at the queue now (call from the engine's loop)."""
        if self._wake is not None:
            self._wake.set()

    def start(self) -> asyncio.Task:
        self.task = asyncio.get_running_loop().create_task(self.run(), name="prodlens-sdk-sender")
        self.task.add_done_callback(self._task_done)
        return self.task

    async def flush(self) -> bool:
        """Send everything logged so far; also resend the spool if the broker answers.

        True when nothing is left undelivered (in memory or in the spool).
        """
        waiter = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(waiter)
        self.wake()
        return await waiter

    async def close(self, timeout: float) -> bool:
        """Flush for at most ``timeout`` seconds, then stop; leftovers are spooled."""
        ok = False
        if self.task is not None and not self.task.done():
            try:
                ok = await asyncio.wait_for(self.flush(), timeout)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                ok = False
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        else:
            self.spool_leftovers()
        return ok

    def spool_leftovers(self) -> None:
        """Write everything still in memory to the spool (shutdown; no broker needed)."""
        self._to_outbox(self.batcher.seal_all())
        items = _drain(self.queue)
        if items:
            self._to_outbox(self.batcher.add_many(items, time.monotonic()))
            self._to_outbox(self.batcher.seal_all())
        self._count_oversized()
        while self._outbox:
            env = self._outbox.popleft()
            self._outbox_events -= env.count
            self._spool_fresh(env, self.settings.topics[env.kind])
        for fut in [f for f in self._inflight if f.done()]:
            self._delivered(fut)  # answered, but its callback has not run yet
        for fut, (item, topic, origin) in list(self._inflight.items()):
            self._forget(fut, item, origin)
            if origin is None:  # no answer: keep it (at-least-once)
                self._spool_fresh(item, topic)

    # -- the loop ---------------------------------------------------------------
    async def run(self) -> None:
        self._wake = asyncio.Event()
        self._sem = asyncio.Semaphore(self.settings.max_in_flight)
        adopted = self.spool.adopt()
        if adopted:
            self.stats.add("adopted", adopted)
        try:
            while True:
                await self._step()
        finally:
            self.spool_leftovers()
            self._fail_waiters()
            producer, self.producer = self.producer, None
            await _stop_quietly(producer)

    async def _step(self) -> None:
        self._wake.clear()
        flushing = bool(self._flush_waiters)
        if self._broken:
            await self._teardown()
        if self.producer is None and (time.monotonic() >= self._next_connect
                                      or (flushing and not self._forced_connect)):
            self._forced_connect = flushing
            await self._connect()
        now = time.monotonic()
        items = _drain(self.queue)
        if items:
            self._to_outbox(self.batcher.add_many(items, now))
        self._to_outbox(self.batcher.seal_all() if flushing else self.batcher.due(now))
        self._count_oversized()
        while self._outbox:
            env = self._outbox[0]
            await self._send(env)
            self._outbox.popleft()
            self._outbox_events -= env.count
        more = False
        if self.connected and self.spool.has_pending():
            more = await self._resend_some()
        if flushing:
            if self._inflight:
                await asyncio.wait(list(self._inflight))
                return
            if self._broken:
                return
            if not self.queue and not self.batcher.pending and \
                    (self.producer is None or not self.spool.has_pending()):
                ok = not self.spool.has_pending()
                for waiter in self._flush_waiters:
                    if not waiter.done():
                        waiter.set_result(ok)
                self._flush_waiters.clear()
                self._forced_connect = False
                return
            more = True
        if more:
            await asyncio.sleep(0)
            return
        timeout = IDLE_WAKE
        due = self.batcher.next_due()
        if due is not None:
            timeout = min(timeout, max(0.0, due - now))
        else:
            # Nothing batching: ask callers to wake us for their next event. Set the flag,
            # then look at the queue once more, so an event queued meanwhile is not missed.
            self.idle = True
            if self.queue:
                self.idle = False
                return
        if self.producer is None:
            timeout = min(timeout, max(0.0, self._next_connect - now))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self.idle = False

    def _to_outbox(self, envelopes: list[Envelope]) -> None:
        if envelopes:
            self._outbox.extend(envelopes)
            self._outbox_events += sum(e.count for e in envelopes)

    # -- connection ---------------------------------------------------------------
    async def _connect(self) -> None:
        s = self.settings
        options = dict(client_id=s.client_id, acks=s.acks, linger_ms=0,
                       max_request_size=max(s.max_message_bytes + 65536, 1 << 20),
                       request_timeout_ms=int(s.request_timeout * 1000))
        options.update(s.producer_options)
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, **options)
        try:
            await asyncio.wait_for(producer.start(), s.connect_timeout)
        except asyncio.CancelledError:
            await _stop_quietly(producer)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
            await _stop_quietly(producer)
            self.last_error = describe(exc)
            self._next_connect = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, s.reconnect_backoff_max)
            if not self._outage_logged:
                self._outage_logged = True
                log.warning("prodlens: broker %s is not reachable (%s); events go to the spool "
                            "in %s and are resent when it answers", s.bootstrap_servers,
                            self.last_error, self.spool.directory)
            return
        self.producer = producer
        self._broken = False
        self._backoff = s.reconnect_backoff
        if self._outage_logged:
            log.warning("prodlens: broker %s is reachable again; resending the spool",
                        s.bootstrap_servers)
        self._outage_logged = False

    async def _teardown(self) -> None:
        producer, self.producer = self.producer, None
        self._broken = False
        self._close_resend()
        await _stop_quietly(producer)
        # Whatever the dead producer never confirmed goes back to the spool.
        for fut, (item, topic, origin) in list(self._inflight.items()):
            if not fut.done():
                self._forget(fut, item, origin)
                self.stats.add("failed", item.count)
                if origin is None:
                    self._spool_fresh(item, topic)
        self._next_connect = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.settings.reconnect_backoff_max)

    # -- sending --------------------------------------------------------------------
    async def _send(self, env: Envelope) -> None:
        topic = self.settings.topics[env.kind]
        if not self.connected:
            self._spool_fresh(env, topic)
            return
        await self._sem.acquire()
        if not self.connected:
            self._sem.release()
            self._spool_fresh(env, topic)
            return
        try:
            fut = await self.producer.send(topic, env.payload, key=env.key)
        except Exception as exc:  # noqa: BLE001
            self._sem.release()
            self._on_error(env, topic, None, exc)
            return
        self._track(fut, env, topic, None)

    async def _resend_some(self) -> bool:
        """Resend a slice of the spool; True while more is waiting to be read."""
        if self._resend_iter is None:
            if self._resending:
                return False  # the previous pass is still being acknowledged
            self._resend_iter = self._spooled()
        for _ in range(self.settings.max_in_flight * 2):
            try:
                seg, index, record = next(self._resend_iter)
            except StopIteration:
                self._close_resend()
                return False
            await self._sem.acquire()
            if not self.connected:
                self._sem.release()
                return False
            try:
                fut = await self.producer.send(record.topic, record.payload, key=record.key)
            except Exception as exc:  # noqa: BLE001
                self._sem.release()
                self._on_error(record, record.topic, (seg, index), exc)
                return False
            self._resending.add((id(seg), index))
            self._track(fut, record, record.topic, (seg, index))
        return True

    def _spooled(self) -> Iterator[tuple[Segment, int, Record]]:
        for seg in self.spool.ready():
            for index, record in self.spool.records(seg):
                if (id(seg), index) not in self._resending:
                    yield seg, index, record

    def _close_resend(self) -> None:
        if self._resend_iter is not None:
            self._resend_iter.close()
            self._resend_iter = None

    def _track(self, fut: asyncio.Future, item: Any, topic: str, origin) -> None:
        self._inflight[fut] = (item, topic, origin)
        if origin is None:
            self._inflight_events += item.count
        fut.add_done_callback(self._delivered)

    def _forget(self, fut: asyncio.Future, item: Any, origin) -> None:
        del self._inflight[fut]
        self._sem.release()
        if origin is None:
            self._inflight_events -= item.count
        else:
            self._resending.discard((id(origin[0]), origin[1]))

    def _delivered(self, fut: asyncio.Future) -> None:
        entry = self._inflight.get(fut)
        if entry is None:
            return  # already given up on (teardown / shutdown) and spooled
        item, topic, origin = entry
        self._forget(fut, item, origin)
        exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        if exc is not None:
            self._on_error(item, topic, origin, exc)
            return
        self.stats.add("envelopes")
        if origin is None:
            self.stats.add("sent", item.count)
        else:
            self.spool.ack(origin[0], origin[1], item.count)
            self.stats.add("resent", item.count)

    def _on_error(self, item: Any, topic: str, origin, exc: BaseException) -> None:
        self.last_error = describe(exc)
        if isinstance(exc, MessageSizeTooLargeError):
            # The broker will never take it; retrying would block the spool forever.
            log.error("prodlens: dropping an envelope of %d events: %s", item.count, self.last_error)
            self.stats.add("oversized", item.count)
            if origin is not None:
                self.spool.ack(origin[0], origin[1], item.count)
            return
        self.stats.add("failed", item.count)
        if origin is None:
            self._spool_fresh(item, topic)
        if not self._broken and self.producer is not None:
            self._broken = True
            log.warning("prodlens: send to %s failed (%s); spooling until the broker answers",
                        topic, self.last_error)
            self._outage_logged = True
        self.wake()

    def _spool_fresh(self, env: Envelope, topic: str) -> None:
        if self.spool.write(Record(topic, env.key, env.kind, env.count, env.payload)):
            self.stats.add("spooled", env.count)
        else:
            self.stats.add("dropped", env.count)
            now = time.monotonic()
            if now - self._drop_logged_at >= 30.0:  # at most one line per 30 s, with the total
                self._drop_logged_at = now
                log.error("prodlens: spool %s is full (spool_max_bytes=%d); %d events dropped so far",
                          self.spool.directory, self.spool.max_bytes, self.stats.get("dropped"))

    def _count_oversized(self) -> None:
        if self.batcher.oversized:
            n = len(self.batcher.oversized)
            self.batcher.oversized.clear()
            self.stats.add("oversized", n)
            log.error("prodlens: dropped %d events larger than max_message_bytes=%d on their own",
                      n, self.settings.max_message_bytes)

    def _fail_waiters(self) -> None:
        for waiter in self._flush_waiters:
            if not waiter.done():
                waiter.set_result(False)
        self._flush_waiters.clear()

    def _task_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("prodlens: the SDK sender stopped unexpectedly", exc_info=task.exception())


def describe(exc: BaseException) -> str:
    """``Type: message`` without the type twice (aiokafka errors repeat it in str())."""
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def _drain(queue: deque) -> list:
    """Pop everything queued now (other threads may append meanwhile; popleft is atomic)."""
    items = []
    pop = queue.popleft
    try:
        for _ in range(len(queue)):
            items.append(pop())
    except IndexError:
        pass
    return items


async def _stop_quietly(producer: AIOKafkaProducer | None, timeout: float = 2.0) -> None:
    if producer is None:
        return
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - a dead broker makes stop() fail; nothing to do
        pass
