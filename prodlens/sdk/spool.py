"""A local, append-only, size-capped spool for envelopes the broker did not take.

Layout: ``<directory>/<time_ns>-<pid>-<random>.spool`` segment files, one record
per line::

    {"topic": "...", "key": "churn/v7" | null, "kind": "prediction", "count": 500}<TAB><envelope JSON>

orjson never writes a raw tab or newline inside JSON, so the first tab splits a
record and a newline ends it; a torn last line (a crash mid-write) is skipped and
counted as ``corrupt``. Writes go to the active segment, which is flushed to the
OS on every record (``fsync=True`` also forces it to disk). Resending rotates the
active segment and reads the closed ones oldest first; a segment is deleted once
every record in it has been acknowledged, so a crash during a resend can repeat
events (at-least-once; ingest drops duplicates by event_id) but never lose them.

Several processes may share a directory: each holds an exclusive ``flock`` on the
segments it owns; segments nobody holds (their process died) are adopted and
resent by whichever process looks next.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import orjson

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process adoption of live segments
    fcntl = None

log = logging.getLogger("prodlens.sdk")
SUFFIX = ".spool"


@dataclass(slots=True)
class Record:
    topic: str
    key: bytes | None
    kind: str
    count: int
    payload: bytes


@dataclass(eq=False)
class Segment:
    path: Path
    handle: IO[bytes] | None  # holds the flock while we own the segment
    size: int = 0
    events: int = 0
    records: int = 0
    acked: set[int] = field(default_factory=set)  # record indexes already resent
    acked_events: int = 0


def default_spool_dir(bootstrap_servers: str = "") -> Path:
    """``$PRODLENS_SPOOL_DIR``, else ``$XDG_CACHE_HOME/prodlens/spool`` (``~/.cache/...``),
    with one sub-directory per cluster: a spool is only ever resent to the cluster it was
    meant for, even when apps on one host talk to different clusters."""
    env = os.environ.get("PRODLENS_SPOOL_DIR")
    if env:
        base = Path(env)
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = Path(cache) / "prodlens" / "spool"
    if not bootstrap_servers:
        return base
    servers = ",".join(sorted(s.strip() for s in bootstrap_servers.split(",")))
    return base / hashlib.sha256(servers.encode()).hexdigest()[:16]


def _lock(handle: IO[bytes]) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _parse(line: bytes) -> Record | None:
    if not line.endswith(b"\n"):
        return None
    head, sep, payload = line[:-1].partition(b"\t")
    if not sep or not payload:
        return None
    try:
        meta = orjson.loads(head)
        key = meta["key"]
        return Record(meta["topic"], key.encode() if key is not None else None, meta["kind"],
                      int(meta["count"]), payload)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


class Spool:
    """Append-only spool files in ``directory``, at most ``max_bytes`` in total.

    Thread-safe: the app's threads (queue overflow) and the sender may write at once.
    """

    def __init__(self, directory: str | os.PathLike | None = None, max_bytes: int = 256 << 20,
                 segment_bytes: int = 16 << 20, fsync: bool = False):
        if max_bytes < 0:
            raise ValueError(f"spool_max_bytes: must not be negative, got {max_bytes}")
        self.directory = Path(directory) if directory is not None else default_spool_dir()
        self.max_bytes = max_bytes
        self.segment_bytes = max(segment_bytes, 1)
        self.fsync = fsync
        self.corrupt = 0
        self._lock = threading.Lock()
        self._closed: list[Segment] = []   # ready to resend, oldest first
        self._active: Segment | None = None
        self._known: set[str] = set()
        self._bytes = 0
        self._events = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"spool_dir: cannot create {self.directory}: {exc}") from exc

    # -- accounting ------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def events(self) -> int:
        """Events waiting in the spool (not yet acknowledged after a resend)."""
        return self._events

    def has_pending(self) -> bool:
        return self._events > 0

    # -- writing ----------------------------------------------------------------------
    def write(self, record: Record) -> bool:
        """Append one envelope; ``False`` when the size cap (or the disk) refuses it."""
        key = record.key.decode("latin-1") if record.key is not None else None
        head = orjson.dumps({"topic": record.topic, "key": key, "kind": record.kind,
                             "count": record.count})
        line = head + b"\t" + record.payload + b"\n"
        with self._lock:
            if self._bytes + len(line) > self.max_bytes:
                return False
            try:
                seg = self._active
                if seg is None or seg.size >= self.segment_bytes:
                    seg = self._rotate_locked(open_new=True)
                seg.handle.write(line)
                seg.handle.flush()
                if self.fsync:
                    os.fsync(seg.handle.fileno())
            except OSError as exc:
                log.error("prodlens: cannot write to the spool %s: %s", self.directory, exc)
                return False
            seg.size += len(line)
            seg.events += record.count
            seg.records += 1
            self._bytes += len(line)
            self._events += record.count
            return True

    def _rotate_locked(self, open_new: bool) -> Segment | None:
        if self._active is not None:
            if self._active.records:
                self._closed.append(self._active)
            else:
                self._discard(self._active)
            self._active = None
        if not open_new:
            return None
        name = f"{time.time_ns():020d}-{os.getpid()}-{os.urandom(3).hex()}{SUFFIX}"
        path = self.directory / name
        handle = open(path, "ab")
        _lock(handle)
        self._known.add(name)
        self._active = Segment(path, handle)
        return self._active

    # -- resending ----------------------------------------------------------------------
    def adopt(self) -> int:
        """Take over segments that no live process holds; returns the events found."""
        found = 0
        try:
            names = sorted(p.name for p in self.directory.iterdir() if p.name.endswith(SUFFIX))
        except OSError:
            return 0
        for name in names:
            with self._lock:
                if name in self._known:
                    continue
            path = self.directory / name
            try:
                handle = open(path, "rb")
            except OSError:
                continue
            if not _lock(handle) or os.fstat(handle.fileno()).st_nlink == 0:
                handle.close()  # alive elsewhere, or deleted while we looked
                continue
            seg = Segment(path, handle)
            for line in handle:
                record = _parse(line)
                if record is None:
                    self.corrupt += 1
                    continue
                seg.records += 1
                seg.events += record.count
            seg.size = handle.tell()
            handle.seek(0)
            with self._lock:
                self._known.add(name)
                self._closed.append(seg)
                self._closed.sort(key=lambda s: s.path.name)
                self._bytes += seg.size
                self._events += seg.events
            found += seg.events
        if found:
            log.info("prodlens: adopted %d spooled events from %s", found, self.directory)
        return found

    def ready(self) -> list[Segment]:
        """Close the active segment and list every segment to resend, oldest first."""
        with self._lock:
            if self._active is not None and self._active.records:
                self._rotate_locked(open_new=False)
            return list(self._closed)

    def records(self, seg: Segment) -> Iterator[tuple[int, Record]]:
        """The not-yet-acknowledged records of a closed segment, with their index."""
        index = 0
        with open(seg.path, "rb") as f:
            for line in f:
                record = _parse(line)
                if record is None:
                    continue
                if index not in seg.acked:
                    yield index, record
                index += 1

    def ack(self, seg: Segment, index: int, count: int) -> None:
        """Mark one record resent; the segment is deleted once all its records are."""
        with self._lock:
            if index in seg.acked:
                return
            seg.acked.add(index)
            seg.acked_events += count
            self._events -= count
            if len(seg.acked) >= seg.records and seg in self._closed:
                self._closed.remove(seg)
                self._bytes -= seg.size
                self._events -= seg.events - seg.acked_events
                self._discard(seg)

    def _discard(self, seg: Segment) -> None:
        try:
            seg.path.unlink()
        except FileNotFoundError:
            pass
        self._known.discard(seg.path.name)
        if seg.handle is not None:
            seg.handle.close()  # releases the flock only after the file is gone
            seg.handle = None

    def close(self) -> None:
        """Close files (and release locks); unsent records stay on disk for the next start."""
        with self._lock:
            self._rotate_locked(open_new=False)
            for seg in self._closed:
                if seg.handle is not None:
                    seg.handle.close()
                    seg.handle = None
            self._closed.clear()
            self._known.clear()
