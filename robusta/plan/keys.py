"""Key bucketing shared by tile tables, the PIT join and online stores.

``key_bucket = crc32(UTF-8 bytes of the key as a string) mod buckets``, on the primary selector.
CRC-32 is in Python's zlib and native in Spark (``pmod(crc32(CAST(k AS STRING)), buckets)``), so
every engine computes the same bucket without a UDF. Integer keys hash their decimal text.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def key_bucket(key: object, buckets: int) -> int:
    return zlib.crc32(_key_text(key).encode("utf-8")) % buckets


def key_hashes(keys: pa.Array) -> np.ndarray:
    """The CRC-32 of every key of an Arrow column (-1 for a null key): once per distinct key."""
    text = record_keys([keys])
    distinct = pc.unique(text).drop_null()
    per_key = np.fromiter(
        (zlib.crc32(t.encode("utf-8")) for t in distinct.to_pylist()),
        np.int64,
        count=len(distinct),
    )
    index = pc.index_in(text, value_set=distinct)
    out = np.full(len(keys), -1, np.int64)
    valid = np.asarray(pc.is_valid(index).to_numpy(zero_copy_only=False), np.bool_)
    positions = np.asarray(index.fill_null(0).to_numpy(zero_copy_only=False), np.int64)
    out[valid] = per_key[positions[valid]]
    return out


def key_buckets(keys: pa.Array, buckets: int) -> np.ndarray:
    """:func:`key_bucket` of every key of an Arrow column (-1 for a null key, as Spark's
    join has it)."""
    hashes = key_hashes(keys)
    return np.where(hashes < 0, -1, hashes % buckets)


def key_parts(hashes: np.ndarray, buckets: int, parts: int) -> np.ndarray:
    """Which of ``parts`` slices of its key bucket each key (by :func:`key_hashes`) falls in:
    ``(crc32 div buckets) mod parts``, independent of the bucket itself (0 for a null key)."""
    return np.where(hashes < 0, 0, (hashes // buckets) % parts)


def spark_key_bucket(column_sql: str, buckets: int) -> str:
    """The same bucket as a Spark SQL expression."""
    return f"CAST(pmod(crc32(CAST({column_sql} AS STRING)), {buckets}) AS INT)"


def spark_key_part(column_sql: str, buckets: int, parts: int) -> str:
    """:func:`key_parts` as a Spark SQL expression."""
    return f"CAST(pmod(crc32(CAST({column_sql} AS STRING)) DIV {buckets}, {parts}) AS INT)"


def _key_text(key: object) -> str:
    # Entity keys are strings or integers (spec.types.ENTITY_TYPES), whose text Spark and
    # Python write alike; booleans get Spark's spelling.
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def record_keys(columns: list[pa.Array]) -> pa.Array:
    """:func:`record_key` of every row of the key ``columns`` (strings or integers)."""
    texts = [_arrow_text(c) for c in columns]
    if len(texts) == 1:
        return texts[0]
    pieces: list[pa.Array | str] = []
    for text in texts:
        pieces += [pc.cast(pc.utf8_length(text), pa.string()), ":", text, "|"]
    joined: pa.Array = pc.binary_join_element_wise(*pieces, "")
    return joined


def _arrow_text(column: pa.Array) -> pa.Array:
    if pa.types.is_boolean(column.type):
        return pc.if_else(column, "true", "false")
    return pc.cast(column, pa.string())


def record_key(parts: list[object]) -> str:
    """The online-store text of one (composite) key: one part as its text, several parts
    length-prefixed (``3:abc|2:42|``) so no two keys share a text. :func:`record_keys` is the
    vectorized twin used when tiles are uploaded."""
    texts = [_key_text(p) for p in parts]
    if len(texts) == 1:
        return texts[0]
    return "".join(f"{len(t)}:{t}|" for t in texts)


@dataclass(frozen=True, slots=True)
class KeyPart:
    """Slice ``index`` of ``count`` of a key bucket (of ``buckets``): the keys of the
    ``column`` whose :func:`key_parts` is ``index``. The point-in-time join splits a bucket
    whose tiles exceed its memory budget this way, rows and tiles alike."""

    column: str
    index: int
    count: int
    buckets: int

    def holds(self, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Which of ``keys`` fall in this slice."""
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        return np.asarray(key_parts(key_hashes(keys), self.buckets, self.count) == self.index)
