"""A cache for functions of an Arrow schema, looked up by the schema object's identity.

Hashing a ``pa.Schema`` costs about as much as a whole one-key lookup (tens of
microseconds for a few dozen fields), and ``functools.lru_cache`` hashes it on every call.
The schemas that reach the record codecs are the plan's own objects, the same on every
call: found by identity, a hit costs a dict lookup. A schema seen for the first time goes
through the equality-keyed cache behind, so equal schemas still share one entry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import pyarrow as pa

T = TypeVar("T")
_MAX_IDENTITIES = 1024


def by_schema_identity(
    compute: Callable[[pa.Schema, bytes], T],
) -> Callable[[pa.Schema, bytes], T]:
    """``compute(schema, tag)`` cached by equality, with an identity-keyed front."""
    by_equality = functools.lru_cache(maxsize=256)(compute)
    # The entry holds the schema itself, so its id cannot be reused while it is cached.
    seen: dict[tuple[int, bytes], tuple[pa.Schema, T]] = {}

    @functools.wraps(compute)
    def cached(schema: pa.Schema, tag: bytes) -> T:
        hit = seen.get((id(schema), tag))
        if hit is not None and hit[0] is schema:
            return hit[1]
        value = by_equality(schema, tag)
        if len(seen) >= _MAX_IDENTITIES:
            seen.clear()
        seen[(id(schema), tag)] = (schema, value)
        return value

    return cached
