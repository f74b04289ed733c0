"""Assembled values of recent lookups, keyed by what decides them.

A key's values for one request are a pure function of its record's bytes and the window end
(``min(floor(t, gmin), pointer)``): the same record read again at the same end assembles to
the same values, bit for bit. Live traffic asks for the same keys over and over (hot users,
popular items) within one finest bucket, so the client keeps the last values per (end, record
fingerprint) and skips the decode and the assembly on a repeat. The fingerprint is the
record's length and Python's 64-bit hash of its bytes, so a record rewritten by a stream or a
new upload misses by construction; no invalidation is needed.

Values handed out are fresh copies (lists and maps included): callers may change them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from robusta.spec.model import DEFAULT_CACHE_SIZE

__all__ = ["DEFAULT_CACHE_SIZE", "ValueCache", "fresh"]

Values = dict[str, Any]


class ValueCache:
    """A bounded least-recently-used map of (end, record fingerprint) to values."""

    def __init__(self, size: int = DEFAULT_CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, int, int], Values] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(raw: bytes | None, end: int) -> tuple[int, int, int]:
        data = raw or b""
        return (end, len(data), hash(data))

    def get(self, key: tuple[int, int, int]) -> Values | None:
        """A fresh copy of the values under ``key``, or None."""
        found = self._items.get(key)
        if found is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return {name: fresh(value) for name, value in found.items()}

    def put(self, key: tuple[int, int, int], values: Values) -> None:
        """Keep a copy of ``values`` (the caller keeps its own)."""
        if self.size <= 0:
            return
        self._items[key] = {name: fresh(value) for name, value in values.items()}
        if len(self._items) > self.size:
            self._items.popitem(last=False)


def fresh(value: Any) -> Any:
    """A copy of a value that shares nothing mutable with it (lists, dicts, nested)."""
    if isinstance(value, list):
        return [fresh(v) for v in value]
    if isinstance(value, dict):
        return {k: fresh(v) for k, v in value.items()}
    return value
