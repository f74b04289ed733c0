"""The point-in-time join on one machine: Arrow rows in, Arrow rows plus features out.

The same join as the Spark engine's (``engine.pit_join.GroupJoin``: the same tile files, the
same assembler, so the same bits), without a JVM: rows are keyed and bucketed with numpy and
pyarrow, stably sorted by key bucket (and key part, where the memory budget splits a bucket), fed to
the join in bounded batches, and put back in input order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.engine.embedded.tiles import utc_micros
from robusta.engine.pit_join import KEY_BUCKET, KEY_PART, POINTER, TS, GroupJoin, key_column
from robusta.plan.keys import key_hashes, key_parts, record_keys

BATCH_ROWS = 65_536  # rows per batch handed to the assembler: bounds memory, not results


def join_group(
    rows: pa.Table,
    join: GroupJoin,
    key_columns: Sequence[str],
    timestamp_column: str,
    version_column: str | None = None,
) -> pa.Table:
    """``rows`` with ``join``'s feature columns appended, in input order. Time columns must be
    ``timestamp[us, UTC]`` (``training_rows.normalize_times``); key columns strings or
    integers, cast to the entity types as Spark's join casts them."""
    features = group_features(rows, join, key_columns, timestamp_column, version_column)
    for name in features.column_names:
        rows = rows.append_column(name, features.column(name))
    return rows


def group_features(
    rows: pa.Table,
    join: GroupJoin,
    key_columns: Sequence[str],
    timestamp_column: str,
    version_column: str | None = None,
) -> pa.Table:
    """Only ``join``'s feature columns of ``rows`` (:func:`join_group`), in input order."""
    layout = join.group.layout
    keyed: dict[str, pa.Array] = {}
    for i, (key, column) in enumerate(zip(layout.keys, key_columns, strict=True)):
        target = pa.int64() if key.type.is_integer else pa.string()
        keyed[key_column(i)] = _cast_key(rows.column(column).combine_chunks(), target)
    primary = next(i for i, k in enumerate(layout.keys) if k.column == layout.primary)
    hashes = key_hashes(keyed[key_column(primary)])
    buckets = np.where(hashes < 0, -1, hashes % layout.key_buckets)
    keyed[KEY_BUCKET] = pa.array(buckets, pa.int32())
    slices = _key_parts(hashes, buckets, layout.key_buckets, join.parts)
    keyed[KEY_PART] = pa.array(slices, pa.int32())
    keyed[TS] = utc_micros(rows.column(timestamp_column))
    if version_column is not None:
        keyed[POINTER] = utc_micros(rows.column(version_column))
    order = np.lexsort((slices, buckets))  # stable: each part's tiles are read once
    batches = pa.table(keyed).take(pa.array(order)).to_batches(max_chunksize=BATCH_ROWS)
    names = [o.name for o in join.outputs]
    parts = [b.select(names) for b in join.add_features(iter(batches)) if b.num_rows]
    if parts:
        features = pa.Table.from_batches(parts).combine_chunks()
    else:
        features = pa.table({o.name: pa.array([], o.type) for o in join.outputs})
    back = np.empty(len(order), np.int64)
    back[order] = np.arange(len(order))
    return features.take(pa.array(back))


def _key_parts(
    hashes: np.ndarray, buckets: np.ndarray, count: int, parts: Mapping[int, int]
) -> np.ndarray:
    """Each row's slice of its key bucket (0 in buckets that are not split)."""
    out = np.zeros(len(hashes), np.int64)
    for bucket, n in parts.items():
        where = buckets == bucket
        out[where] = key_parts(hashes[where], count, n)
    return out


def _cast_key(column: pa.Array, target: pa.DataType) -> pa.Array:
    if column.type == target:
        return column
    if pa.types.is_string(target):
        return record_keys([column])
    return pc.cast(column, target)
