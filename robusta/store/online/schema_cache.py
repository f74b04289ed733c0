"""A cache for functions of an Arrow schema, looked up by the schema object's identity.

Hashing a ``pa.Schema`` costs about as much as a whole one-key lookup (tens of
microseconds for a few dozen fields), and ``functools.lru_cache`` hashes it on every call.
The schemas that reach the record codecs are the plan's own objects, the same on every
call: found by identity, a hit costs a dict lookup. A schema seen for the first time goes
through the equality-keyed cache behind, so equal schemas still share one entry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import pyarrow as pa

T = TypeVar("T")
_MAX_IDENTITIES = 1024


def by_schema_identity(compute: Callable[..., T]) -> Callable[..., T]:
    """``compute(schema, *more)`` cached by equality, with a front keyed by the schema's
    identity (and ``more``, hashable values)."""
    by_equality = functools.lru_cache(maxsize=256)(compute)
    # The entry holds the schema itself, so its id cannot be reused while it is cached.
    seen: dict[tuple[Any, ...], tuple[pa.Schema, T]] = {}

    @functools.wraps(compute)
    def cached(schema: pa.Schema, *more: Hashable) -> T:
        key = (id(schema), *more)
        hit = seen.get(key)
        if hit is not None and hit[0] is schema:
            return hit[1]
        value = by_equality(schema, *more)
        if len(seen) >= _MAX_IDENTITIES:
            seen.clear()
        seen[key] = (schema, value)
        return value

    return cached
