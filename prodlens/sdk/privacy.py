"""What the SDK does to personal data before an event leaves the app.

* Unit ids (user or session ids) are replaced by ``HMAC-SHA256(salt, unit_id)``
  in hex, truncated to ``hash_length`` characters. The same salt gives the same
  hash in every process and service, so predictions and outcomes still join on
  the unit; without the salt the hash cannot be reversed by trying known ids.
* Features and segment attributes can be restricted to an allowlist and/or have
  named fields removed (redaction) before anything is queued.

>>> p = Privacy(salt="s3cret", hash_length=16)
>>> p.hash_unit("user-42") == p.hash_unit("user-42"), len(p.hash_unit("user-42"))
(True, 16)
>>> Privacy(redact_features=["email"]).features({"age": 31, "email": "a@b.c"})
{'age': 31}
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import uuid
from collections.abc import Collection, Mapping
from functools import lru_cache
from typing import Any

log = logging.getLogger("prodlens.sdk")

SALT_ENV = "PRODLENS_UNIT_SALT"


class Privacy:
    """Unit-id hashing and field allowlists / redaction for features and segments.

    ``salt`` defaults to ``$PRODLENS_UNIT_SALT``; with neither, ids are still hashed
    (HMAC with an empty key) and a warning is logged once, because an unsalted hash
    of a guessable id can be reversed by hashing candidates.
    ``hash_length`` is in hex characters (4 bits each; 32 = 128 bits, the default:
    collision probability ~n²/2¹²⁹, negligible for any realistic number of units).
    ``hash_unit_ids=False`` sends unit ids as given (for ids that are already opaque).
    An allowlist of ``None`` keeps every field; redaction applies after the allowlist.
    """

    def __init__(self, salt: str | bytes | None = None, *, hash_length: int = 32,
                 hash_unit_ids: bool = True,
                 allow_features: Collection[str] | None = None,
                 redact_features: Collection[str] = (),
                 allow_segment: Collection[str] | None = None,
                 redact_segment: Collection[str] = ()):
        if not 8 <= hash_length <= 64:
            raise ValueError(f"hash_length: must be between 8 and 64 hex characters, got {hash_length}")
        for name, value in (("allow_features", allow_features), ("redact_features", redact_features),
                            ("allow_segment", allow_segment), ("redact_segment", redact_segment)):
            if isinstance(value, (str, bytes)):
                raise TypeError(f"{name}: give a list of field names, not one string {value!r}")
        if salt is None:
            salt = os.environ.get(SALT_ENV)
        self.salted = bool(salt)
        key = salt.encode() if isinstance(salt, str) else (salt or b"")
        self.hash_length = hash_length
        self.hash_unit_ids = hash_unit_ids
        self._base = hmac.new(key, digestmod=hashlib.sha256)
        self._warned = False
        self.allow_features = frozenset(allow_features) if allow_features is not None else None
        self.redact_features = frozenset(redact_features)
        self.allow_segment = frozenset(allow_segment) if allow_segment is not None else None
        self.redact_segment = frozenset(redact_segment)
        # Units repeat (a user makes many requests): a small cache halves the hashing cost.
        self._cached_hash = lru_cache(maxsize=8192)(self._hash)

    def _hash(self, unit: str) -> str:
        h = self._base.copy()
        h.update(unit.encode())
        return h.hexdigest()[:self.hash_length]

    def hash_unit(self, unit_id: Any) -> str | None:
        """The id as it leaves the app (``None`` stays ``None``)."""
        if unit_id is None:
            return None
        if not isinstance(unit_id, str):
            if isinstance(unit_id, bool) or not isinstance(unit_id, (int, uuid.UUID)):
                raise TypeError(f"unit_id: must be a string, an integer or a UUID, "
                                f"got {type(unit_id).__name__}")
            unit_id = str(unit_id)
        if not self.hash_unit_ids:
            if not 1 <= len(unit_id) <= 256:
                raise ValueError("unit_id: must be 1 to 256 characters when hash_unit_ids=False")
            return unit_id
        if not self.salted and not self._warned:
            self._warned = True
            log.warning("prodlens: unit ids are hashed without a salt; pass salt=... or set %s "
                        "so they cannot be recovered by hashing guesses", SALT_ENV)
        return self._cached_hash(unit_id)

    @staticmethod
    def _filter(values: Mapping[str, Any], allow: frozenset | None, redact: frozenset) -> dict:
        if allow is not None:
            out = {k: v for k, v in values.items() if k in allow}
        else:
            out = dict(values)
        for name in redact:
            out.pop(name, None)
        return out

    def features(self, features: Mapping[str, Any]) -> dict:
        """A copy of ``features`` with only allowed, unredacted fields."""
        return self._filter(features, self.allow_features, self.redact_features)

    def segment(self, segment: Mapping[str, Any]) -> dict:
        """A copy of ``segment`` with only allowed, unredacted attributes."""
        return self._filter(segment, self.allow_segment, self.redact_segment)
