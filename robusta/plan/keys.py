"""Key bucketing shared by tile tables, the PIT join and online stores.

``key_bucket = crc32(UTF-8 bytes of the key as a string) mod buckets``, on the primary selector.
CRC-32 is in Python's zlib and native in Spark (``pmod(crc32(CAST(k AS STRING)), buckets)``), so
every engine computes the same bucket without a UDF. Integer keys hash their decimal text.
"""

from __future__ import annotations

import zlib

DEFAULT_KEY_BUCKETS = 32


def key_bucket(key: object, buckets: int = DEFAULT_KEY_BUCKETS) -> int:
    return zlib.crc32(_key_text(key).encode("utf-8")) % buckets


def spark_key_bucket(column_sql: str, buckets: int = DEFAULT_KEY_BUCKETS) -> str:
    """The same bucket as a Spark SQL expression."""
    return f"CAST(pmod(crc32(CAST({column_sql} AS STRING)), {buckets}) AS INT)"


def _key_text(key: object) -> str:
    # Entity keys are strings or integers (spec.types.ENTITY_TYPES), whose text Spark and
    # Python write alike; booleans get Spark's spelling.
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)
