"""The embedded batch tile builder: a spec's events -> the tile-table rows Spark writes.

For one tile group, with the Spark tile job's rules (``engine.spark.tiles``):

1. rows with a null key or a null timestamp are dropped and counted (a null key first);
2. keys are cast to their entity type (integer entities BIGINT, else string) and every row
   gets its finest bucket ``floor(ts, gmin)``, epoch-aligned (before 1970 too);
3. rows are sorted by (keys, bucket, ts) and each base feature's IR is built per
   (keys, bucket) run with its operator's vectorized ``build`` (ties in time are broken by
   value inside the operators, so the row order within a run never decides an exact IR);
4. every coarser granularity is rolled up from the finest tiles with the operators' own merge
   (``plan.open_tiles.advance``, bit-identical to Spark's rollups of the same finest tiles).

Pure pyarrow and numpy: no JVM, no pyspark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.engine.counts import TileCounts
from robusta.plan.keys import key_buckets
from robusta.plan.model import SpecPlan, TileGroup, TileLayout
from robusta.plan.open_tiles import BUCKET, CHANGED, PART, advance, run_offsets
from robusta.spec.types import DataType
from robusta.store.tiles import tile_schema

TS_TYPE = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Finest:
    """A group's finest tiles of some events, before any rollup."""

    partial: pa.Table  # key columns, ``__bucket``, ``events``, IR columns
    null_keys: int
    null_timestamps: int
    last_bucket: int | None
    last_event: int | None  # the latest event time with a key


def finest_tiles(
    events: pa.Table, plan: SpecPlan, group: TileGroup, *, file_order: bool = False
) -> Finest:
    """The finest tiles of ``group`` over ``events`` (steps 1-3 of the module doc), in the
    columns ``plan.open_tiles.advance`` merges (the stream's micro-batch tiles too).

    ``file_order``: led by their file (key bucket, month: ``plan.open_tiles.PART``) when no
    granularity spans two months, so a batch build's rollups come out in the order the
    writer stores them and it need not gather a million nested rows again."""
    layout = group.layout
    keys = [_key_column(events.column(k.column), k.type) for k in layout.keys]
    ts = utc_micros(events.column(plan.spec.timestamp))
    null_key = np.zeros(events.num_rows, dtype=np.bool_)
    for key in keys:
        null_key |= _nulls(key)
    null_ts = _nulls(ts) & ~null_key
    kept = np.flatnonzero(~null_key & ~null_ts)

    micros = np.asarray(ts.take(kept).to_numpy(zero_copy_only=False), dtype=np.int64)
    size = layout.finest.micros
    buckets = micros - np.mod(micros, size)
    columns = {
        **{f"__k{i}": key.take(kept) for i, key in enumerate(keys)},
        BUCKET: pa.array(buckets, pa.int64()),
        "__ts": pa.array(micros, pa.int64()),
        "__row": pa.array(kept, pa.int64()),
    }
    grouped = [f"__k{i}" for i in range(len(keys))]
    lead = []
    if file_order and _within_months(layout):
        primary = keys[[k.column for k in layout.keys].index(layout.primary)].take(kept)
        columns[PART] = pa.array(_file_part(primary, buckets, layout.key_buckets), pa.int64())
        lead = [PART]
    rows = pa.table(columns)
    rows = rows.sort_by([(c, "ascending") for c in [*lead, *grouped, BUCKET, "__ts"]])
    offsets = run_offsets(rows, [*grouped, BUCKET])
    starts = offsets[:-1]
    order = rows.column("__row")
    sorted_ts = np.asarray(rows.column("__ts").to_numpy(), dtype=np.int64)

    partial: dict[str, pa.Array | pa.ChunkedArray] = {
        k.column: rows.column(g).take(starts) for k, g in zip(layout.keys, grouped, strict=True)
    }
    partial[BUCKET] = rows.column(BUCKET).take(starts)
    if lead:
        partial[PART] = rows.column(PART).take(starts)
    partial["events"] = pa.array(np.diff(offsets), pa.int64())
    for feature in group.features:
        values = feature.op_input(lambda name: events.column(name).take(order).combine_chunks())
        partial[feature.ir_column] = feature.op.build_arrow(sorted_ts, values, offsets).cast(
            feature.ir_type
        )
    return Finest(
        pa.table(partial),
        null_keys=int(null_key.sum()),
        null_timestamps=int(null_ts.sum()),
        last_bucket=int(buckets.max()) if len(buckets) else None,
        last_event=int(micros.max()) if len(micros) else None,
    )


def _within_months(layout: TileLayout) -> bool:
    """Whether every tile lies in one month: each granularity divides a day (UTC days,
    epoch-aligned, never straddle months)."""
    return all(_DAY % g.micros == 0 for g in layout.granularities)


_DAY = 86_400_000_000


def _file_part(primary: pa.Array, buckets: np.ndarray, key_buckets_: int) -> np.ndarray:
    """Per row, its tile file's (key bucket, month) as one sortable integer."""
    months = buckets.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)
    return (key_buckets(primary, key_buckets_) << 32) + (months + (1 << 31))


def build_tiles(events: pa.Table, plan: SpecPlan, group: TileGroup) -> tuple[pa.Table, TileCounts]:
    """Every tile of ``group`` over ``events`` (the spec query's rows), in the tile table's
    columns, and what the job reports (as the Spark job's ``TileJob.counts``)."""
    layout = group.layout
    finest = finest_tiles(events, plan, group, file_order=True)
    tiles = advance(group, plan.hash, None, finest.partial).drop_columns([CHANGED])
    schema = tile_schema(group)
    tiles = tiles.select(schema.names).cast(schema)  # the writer keeps an order it can use
    per = pc.value_counts(tiles.column("granularity")).to_pylist() if tiles.num_rows else []
    found = {str(p["values"]): int(p["counts"]) for p in per}
    counts = TileCounts(
        events=events.num_rows,
        null_keys=finest.null_keys,
        null_timestamps=finest.null_timestamps,
        tiles={g.name: found.get(g.name, 0) for g in layout.granularities},
        last_bucket=finest.last_bucket,
        last_event=finest.last_event,
    )
    return tiles, counts


def source_latest(events: pa.Table, ts: pa.Array, group: TileGroup) -> int | None:
    """The latest event time (``ts``, epoch micros) of the rows with every key of
    ``group``."""
    keyed = ts
    for key in group.layout.keys:
        keyed = pc.if_else(pc.is_null(events.column(key.column)), None, keyed)
    latest = pc.max(keyed).as_py()
    return None if latest is None else int(latest)


def _key_column(column: pa.ChunkedArray, dtype: DataType) -> pa.Array:
    """A key column as its entity type: BIGINT for integer entities, else string (Spark's
    ``CAST(k AS BIGINT | STRING)``)."""
    target = pa.int64() if dtype.is_integer else pa.string()
    values = column.combine_chunks()
    if pa.types.is_boolean(values.type) and not dtype.is_integer:
        return pc.if_else(values, "true", "false")  # Spark's spelling of booleans
    return values if values.type.equals(target) else values.cast(target)


def utc_micros(column: pa.ChunkedArray) -> pa.Array:
    """Event times as epoch microseconds (int64); a naive timestamp is UTC wall time."""
    values = column.combine_chunks()
    if not pa.types.is_timestamp(values.type) or values.type.unit != "us":
        values = values.cast(TS_TYPE)
    return values.cast(pa.int64())


def _nulls(values: pa.Array) -> np.ndarray:
    if not values.null_count:
        return np.zeros(len(values), dtype=np.bool_)
    return np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=np.bool_)
