"""Re-keying for the join stage: slim records on the joins topic, co-partitioned by join key.

Feedback names only its prediction_id and outcomes only their unit_id, so the
join stage needs predictions and feedback on the same partition by
prediction_id, and exposures and outcomes on the same partition by unit_id.
Ingest writes them to one internal topic with an explicit partition computed
by the same function everywhere (:func:`partition_of`), so every record of a
join key lands on one partition, owned by one worker, in offset order.

One input message becomes at most one joins message per target partition: the
rows routed there, as canonical columns (``prodlens.contract``) projected to
what the join needs.

>>> router = JoinRouter("prodlens.joins", 4, "prodlens.feedback:0")
>>> cols = {"prediction_id": ["p1", "p1"], "timestamp": [1.0, 2.0], "kind": ["label", "rating"],
...         "value": [1, 4], "size": [None, None], "corrected": [None, None], "model": [None, None]}
>>> router.feedback(cols, [0, 1], seq=7)   # buffered until flush_rows rows or the next flush
[]
>>> [(topic, partition == partition_of("p1", 4), record["columns"]["kind"], record["columns"]["offset"])
...  for topic, key, record, partition in router.flush()]
[('prodlens.joins', True, ['label', 'rating'], [7, 7])]
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence

from .contract import take

PREDICTION_FIELDS = ("prediction_id", "timestamp", "model", "role", "experiment", "variant", "unit_id",
                     "latency_ms")
OUTPUT_FIELDS = ("label", "score", "probabilities", "value")
FEEDBACK_FIELDS = ("prediction_id", "timestamp", "kind", "value", "size", "corrected", "model")
OUTCOME_FIELDS = ("unit_id", "timestamp", "metric", "value", "experiment", "model")

JoinEmit = tuple[str, bytes, dict, int]   # (topic, key, record, partition)


def partition_of(key: str, partitions: int) -> int:
    """The joins-topic partition of a prediction_id or unit_id (CRC-32, stable across processes)."""
    return zlib.crc32(key.encode()) % partitions


class JoinRouter:
    """Builds the joins-topic messages of one input partition (``source``).

    Rows are buffered per (kind, target partition) and sent ``flush_rows`` at a time, or by
    :meth:`flush` (the stage's one-second tick): single-event input would otherwise cost one
    joins message per event, halving what faust can carry. Each row carries its input
    ``offset``, so the join skips exactly the rows a restarted ingest sends again, whatever
    the batching. The buffers are state: :meth:`to_dict` / :meth:`restore`.
    """

    def __init__(self, topic: str, partitions: int, source: str, flush_rows: int = 500):
        self.topic = topic
        self.partitions = partitions
        self.source = source
        self.flush_rows = flush_rows
        self.buffers: dict[tuple[str, int], dict[str, Any]] = {}

    def _split(self, keys: Sequence[Any], rows: Sequence[int]) -> dict[int, list[int]]:
        by_partition: dict[int, list[int]] = {}
        n = self.partitions
        for i in rows:
            key = keys[i]
            if key is None:
                continue
            p = zlib.crc32(str(key).encode()) % n
            group = by_partition.get(p)
            if group is None:
                by_partition[p] = [i]
            else:
                group.append(i)
        return by_partition

    def _add(self, kind: str, columns: dict[str, Any], by_partition: dict[int, list[int]], offset: int | list[int],
             extra: dict[str, list] | None = None, positions: dict[int, int] | None = None) -> list[JoinEmit]:
        out: list[JoinEmit] = []
        for partition, rows in sorted(by_partition.items()):
            buffer = self.buffers.get((kind, partition))
            if buffer is None:
                buffer = self.buffers[(kind, partition)] = take(columns, rows)
                buffer["offset"] = []
            else:
                _append_rows(buffer, columns, rows)
            if extra:
                for name, values in extra.items():
                    buffer.setdefault(name, []).extend([values[positions[i]] for i in rows])
            buffer["offset"].extend([offset] * len(rows) if type(offset) is int else [offset[i] for i in rows])
            if len(buffer["offset"]) >= self.flush_rows:
                out.append(self._record(kind, partition))
        return out

    def _record(self, kind: str, partition: int) -> JoinEmit:
        cols = self.buffers.pop((kind, partition))
        record = {"kind": kind, "source": self.source, "seq": cols["offset"][-1], "columns": cols}
        return (self.topic, f"{kind}:{partition}".encode(), record, partition)

    def flush(self) -> list[JoinEmit]:
        """Everything buffered, one message per (kind, partition)."""
        return [self._record(kind, partition) for kind, partition in sorted(self.buffers)]

    def predictions(self, columns: dict[str, Any], rows: Sequence[int], versions: Sequence[str],
                    segments: Sequence[str], seq: int | list[int]) -> list[JoinEmit]:
        """Accepted predictions ``rows`` with their folded version and segment label (one per row):
        by prediction_id, plus exposures by unit_id for rows that carry an experiment. ``seq`` is
        the input offset of every row, or a list of them indexed like ``columns``."""
        projected = {name: columns[name] for name in PREDICTION_FIELDS}
        output = columns["output"]
        projected["output"] = {name: output[name] for name in OUTPUT_FIELDS if name in output}
        positions = {i: j for j, i in enumerate(rows)}
        extra = {"version": list(versions), "segment": list(segments)}
        out = self._add("prediction", projected, self._split(columns["prediction_id"], rows), seq, extra, positions)
        experiments = columns["experiment"]
        exposed = [i for i in rows if experiments[i] is not None and columns["unit_id"][i] is not None]
        if exposed:
            exposure = {name: columns[name] for name in ("unit_id", "timestamp", "experiment", "variant", "model")}
            out += self._add("exposure", exposure, self._split(columns["unit_id"], exposed), seq,
                             {"version": list(versions)}, positions)
        return out

    def feedback(self, columns: dict[str, Any], rows: Sequence[int], seq: int) -> list[JoinEmit]:
        projected = {name: columns[name] for name in FEEDBACK_FIELDS}
        return self._add("feedback", projected, self._split(columns["prediction_id"], rows), seq)

    def outcomes(self, columns: dict[str, Any], rows: Sequence[int], seq: int) -> list[JoinEmit]:
        projected = {name: columns[name] for name in OUTCOME_FIELDS}
        return self._add("outcome", projected, self._split(columns["unit_id"], rows), seq)

    def to_dict(self) -> list:
        return [[kind, partition, cols] for (kind, partition), cols in self.buffers.items()]

    def restore(self, state: list) -> None:
        self.buffers = {(kind, partition): cols for kind, partition, cols in state}


def _append_rows(buffer: dict[str, Any], columns: dict[str, Any], rows: Sequence[int]) -> None:
    """Append ``rows`` of ``columns`` to ``buffer`` (canonical columns, same plain fields; nested
    members absent on one side are None). ``buffer["offset"]`` still has the old length."""
    n, m = len(buffer["offset"]), len(rows)
    for name, col in columns.items():
        if type(col) is dict:
            nested = buffer.setdefault(name, {})
            for key, values in col.items():
                target = nested.get(key)
                if target is None:
                    target = nested[key] = [None] * n
                target.extend([values[i] for i in rows])
            for values in nested.values():
                if len(values) < n + m:
                    values.extend([None] * (n + m - len(values)))
        else:
            buffer[name].extend([col[i] for i in rows])
