"""A rotating Bloom filter: bounded memory of "recently seen" string ids.

The join uses it to remember prediction ids it expired or evicted, so late feedback
for them is reported as ``expired_prediction`` rather than ``unknown_prediction``
without keeping the ids themselves.

Two generations of ``capacity`` ids each: adds go to the current generation; when it
holds ``capacity`` ids it becomes the old one and the previous old one is dropped.
So every id added within the last ``capacity`` adds is remembered (no false
negatives); older ones are forgotten. **Error bound**: a never-added id tests
positive with probability at most about 2·fp_rate (either generation, each sized
for ``fp_rate`` at ``capacity`` ids: m = -capacity·ln(fp_rate)/ln(2)² bits,
k = m/capacity·ln 2 hashes). Memory: 2·m/8 bytes (about 240 KB for the defaults).

Hashes are blake2b digests (stable across processes, unlike Python's ``hash``), so
the state survives a restart.
"""

from __future__ import annotations

import base64
import hashlib
import math
import zlib
from typing import Iterable

import numpy as np

_U64 = (1 << 64) - 1


class RotatingBloom:
    def __init__(self, capacity: int = 100_000, fp_rate: float = 0.01):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not 0 < fp_rate < 1:
            raise ValueError(f"fp_rate must be in (0, 1), got {fp_rate}")
        self.capacity = capacity
        self.fp_rate = fp_rate
        self.bits = max(64, math.ceil(-capacity * math.log(fp_rate) / math.log(2) ** 2))
        self.hashes = max(1, round(self.bits / capacity * math.log(2)))
        self.current = np.zeros((self.bits + 7) // 8, dtype=np.uint8)
        self.old = np.zeros_like(self.current)
        self.current_count = 0

    def _positions(self, ids: Iterable[str]) -> np.ndarray:
        hs = []
        for i in ids:
            d = hashlib.blake2b(i.encode(), digest_size=16).digest()
            hs.append((int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little") | 1))
        if not hs:
            return np.zeros((0, self.hashes), dtype=np.uint64)
        h = np.array(hs, dtype=np.uint64)
        k = np.arange(self.hashes, dtype=np.uint64)
        with np.errstate(over="ignore"):  # double hashing modulo 2**64, then modulo m
            return (h[:, :1] + k[None, :] * h[:, 1:]) % np.uint64(self.bits)

    def add_many(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        while ids:
            room = self.capacity - self.current_count
            if room <= 0:
                self.old, self.current = self.current, np.zeros_like(self.current)
                self.current_count = 0
                continue
            chunk, ids = ids[:room], ids[room:]
            pos = self._positions(chunk).ravel()
            np.bitwise_or.at(self.current, (pos >> np.uint64(3)).astype(np.int64),
                             (np.uint8(1) << (pos & np.uint64(7)).astype(np.uint8)))
            self.current_count += len(chunk)

    def add(self, id_: str) -> None:
        self.add_many([id_])

    def contains_many(self, ids: Iterable[str]) -> np.ndarray:
        pos = self._positions(ids)
        byte = (pos >> np.uint64(3)).astype(np.int64)
        bit = (np.uint8(1) << (pos & np.uint64(7)).astype(np.uint8))
        return ((self.current[byte] & bit) != 0).all(axis=1) | ((self.old[byte] & bit) != 0).all(axis=1)

    def __contains__(self, id_: str) -> bool:
        return bool(self.contains_many([id_])[0])

    @property
    def nbytes(self) -> int:
        return int(self.current.nbytes + self.old.nbytes)

    def to_dict(self) -> dict:
        def enc(a: np.ndarray) -> str:
            return base64.b64encode(zlib.compress(a.tobytes(), 1)).decode()
        return {"capacity": self.capacity, "fp_rate": self.fp_rate, "current": enc(self.current),
                "old": enc(self.old), "current_count": self.current_count}

    @classmethod
    def from_dict(cls, d: dict) -> "RotatingBloom":
        b = cls(d["capacity"], d["fp_rate"])
        def dec(s: str) -> np.ndarray:
            return np.frombuffer(zlib.decompress(base64.b64decode(s)), dtype=np.uint8).copy()
        b.current, b.old = dec(d["current"]), dec(d["old"])
        b.current_count = int(d["current_count"])
        return b
