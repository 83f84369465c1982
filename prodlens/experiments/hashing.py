"""GrowthBook-compatible hashing: unit id -> a number in [0, 1).

prodlens hashes exactly as GrowthBook's SDKs do, so a team can assign units with
any GrowthBook SDK (or another language) and analyse them with prodlens:

* FNV-1a 32-bit: start at ``0x811C9DC5``; for each character, XOR its code then
  multiply by ``0x01000193`` modulo 2**32.
* v2 (the default): ``fnv1a32(str(fnv1a32(seed + value))) % 10000 / 10000``
  (the inner hash is written in decimal, so the outer hash sees ASCII only).
* v1 (legacy, still used by GrowthBook namespaces): ``fnv1a32(value + seed) % 1000 / 1000``.

Characters outside the Basic Multilingual Plane (emoji, rare CJK, U+10000 and up)
are where GrowthBook's SDKs disagree: the JavaScript SDK iterates ``charCodeAt``
(UTF-16 code units, so one such character is hashed as its two surrogates) while
the Python SDK iterates ``ord(c)`` (one code point). prodlens follows the
JavaScript SDK by default (``code_units="utf16"``): it is GrowthBook's reference
implementation, it is the one running in browsers and Node, and the JVM, .NET and
Swift string APIs iterate UTF-16 units too. ``code_units="codepoint"`` reproduces
GrowthBook's Python SDK. Both agree on every string made only of BMP characters.
A lone surrogate (possible in Python strings) hashes as one code unit, as in JS.

>>> gb_hash("seed", "a")
0.0505
>>> gb_hash("seed", "\\U0001F600")            # 😀, UTF-16 units D83D DE00 (JS SDK)
0.4346
>>> gb_hash("seed", "\\U0001F600", code_units="codepoint")   # GrowthBook Python SDK
0.7092
"""

from __future__ import annotations

FNV32_OFFSET = 0x811C9DC5
FNV32_PRIME = 0x01000193
_MASK32 = 0xFFFFFFFF
CODE_UNITS = ("utf16", "codepoint")


def _codes(text: str, code_units: str):
    if code_units == "utf16":
        if text.isascii():
            return text.encode("ascii")
        # surrogatepass keeps lone surrogates as single units, as JavaScript strings do
        return memoryview(text.encode("utf-16-le", "surrogatepass")).cast("H")
    if code_units == "codepoint":
        return map(ord, text)
    raise ValueError(f"code_units must be one of {CODE_UNITS}, got {code_units!r}")


def fnv1a32(text: str, code_units: str = "utf16") -> int:
    """FNV-1a 32-bit hash of ``text`` iterated per UTF-16 code unit (default) or per code point.

    >>> fnv1a32("foo")
    2851307223
    """
    h = FNV32_OFFSET
    for c in _codes(text, code_units):
        h = ((h ^ c) * FNV32_PRIME) & _MASK32
    return h


def gb_hash(seed: str, value: str, version: int = 2, code_units: str = "utf16") -> float:
    """GrowthBook's hash of ``value`` under ``seed``: a float in [0, 1).

    Resolution is 1/10000 for v2 and 1/1000 for v1. Raises ValueError for other versions.
    """
    if not isinstance(seed, str) or not isinstance(value, str):
        raise TypeError("seed and value must be strings")
    if version == 2:
        return (fnv1a32(str(fnv1a32(seed + value, code_units))) % 10000) / 10000
    if version == 1:
        return (fnv1a32(value + seed, code_units) % 1000) / 1000
    raise ValueError(f"hash_version must be 1 or 2, got {version!r}")
