"""The streaming tile job: one micro-batch of a spec's rows -> full values of its open tiles.

Exactly-once rests on *full values*, never deltas. The job keeps, per tile group, every tile
(all granularities) of the largest-granularity buckets that are still open, as Parquet in the
checkpoint folder, one version per micro-batch (``state/<batch id>``). Batch ``N`` reads the
latest version before ``N``, merges its rows into it and writes version ``N``:

1. the micro-batch's rows (the spec query's output) are tiled at the finest granularity with
   the batch job's own aggregation (:class:`~robusta.engine.spark.tiles.TileJob`, each op's
   ``spark_build``);
2. each touched finest tile is merged with its stored value with the op's ``spark_merge``
   (stored value first, so float folds run in time order of arrival);
3. every coarser tile containing a touched tile is rolled up again from its children with
   ``spark_merge`` in bucket order, exactly like the batch job's rollups; untouched tiles are
   carried over byte for byte.

Replaying batch ``N`` (Spark replays the last uncommitted batch with the same id and input)
reads the same version ``N - 1`` and writes the same version ``N``, so nothing is counted
twice; once version ``N`` is complete it is reused as is (sketch merges may compact with a
random bit, so recomputing could give other, equally valid, bytes).

Rows whose time is before the version pointer (the end of the last complete finest bucket)
are late: they are not tiled here (buckets before the pointer never change once served) but
written to the late-events table; a batch ``robusta materialize`` over their range repairs
the tiles. Only native Spark SQL runs on rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from robusta.engine.spark.tiles import BUCKET, Range, TileJob, q
from robusta.plan.keys import spark_key_bucket
from robusta.plan.model import SpecPlan, TileGroup
from robusta.spec.durations import Duration

CHANGED = "__changed"  # state column: the tile was (re)computed by this micro-batch


@dataclass(frozen=True)
class BatchStats:
    """What one micro-batch held (counted on the spec query's rows)."""

    rows: int
    late: int
    null_keys: int  # rows without a key (any tile group), not tiled
    null_timestamps: int
    max_ts: int | None  # newest event time (epoch micros), late rows included


def batch_stats(spark: Any, plan: SpecPlan, view: str, pointer: int | None) -> BatchStats:
    """Counts and the newest event time of a micro-batch's rows (one small Spark job)."""
    ts = f"unix_micros(CAST({q(plan.spec.timestamp)} AS TIMESTAMP))"
    keys = sorted({k.column for g in plan.groups for k in g.layout.keys})
    null_key = " OR ".join(f"{q(k)} IS NULL" for k in keys) or "false"
    late = f"{ts} < {pointer}" if pointer is not None else "false"
    row = spark.sql(
        f"""SELECT count(1) AS rows,
                   coalesce(sum(CASE WHEN {late} THEN 1 ELSE 0 END), 0) AS late,
                   coalesce(sum(CASE WHEN {null_key} THEN 1 ELSE 0 END), 0) AS null_keys,
                   coalesce(sum(CASE WHEN {ts} IS NULL THEN 1 ELSE 0 END), 0) AS null_ts,
                   max({ts}) AS max_ts
            FROM {view}"""
    ).collect()[0]
    max_ts = row["max_ts"]
    return BatchStats(
        int(row["rows"]),
        int(row["late"]),
        int(row["null_keys"]),
        int(row["null_ts"]),
        None if max_ts is None else int(max_ts),
    )


def split_late(spark: Any, plan: SpecPlan, view: str, pointer: int | None) -> tuple[str, Any]:
    """(view of the on-time rows, DataFrame of the late rows) of a micro-batch.

    On time: a time at or after ``pointer`` (or a null time, which the tile job counts as
    dropped). Late: before it, so its finest bucket is already final online.
    """
    ts = f"unix_micros(CAST({q(plan.spec.timestamp)} AS TIMESTAMP))"
    on_time = f"__robusta_ontime_{plan.name}"
    if pointer is None:
        spark.sql(f"SELECT * FROM {view}").createOrReplaceTempView(on_time)
        return on_time, spark.sql(f"SELECT * FROM {view} WHERE false")
    spark.sql(
        f"SELECT * FROM {view} WHERE {ts} IS NULL OR {ts} >= {pointer}"
    ).createOrReplaceTempView(on_time)
    return on_time, spark.sql(f"SELECT * FROM {view} WHERE {ts} < {pointer}")


class StreamTileJob:
    """New state (every open tile of one tile group) from the previous state and a batch."""

    def __init__(self, spark: Any, plan: SpecPlan, group: TileGroup) -> None:
        self.spark = spark
        self.plan = plan
        self.group = group
        self.keys = [k.column for k in group.layout.keys]
        self.sizes = sorted(group.layout.granularities, key=lambda g: g.micros)  # finest first
        self._views: list[str] = []
        self._cached: list[Any] = []
        self._job: TileJob | None = None

    def open_tiles(self, state: Any | None, pointer: int | None) -> Any | None:
        """The stored tiles still needed: those whose largest-granularity bucket is open."""
        if state is None:
            return None
        if pointer is None:
            return state
        largest = self.group.layout.granularities[0].micros
        day_end = (
            f"unix_micros(bucket_start) - pmod(unix_micros(bucket_start), {largest}) + {largest}"
        )
        return state.where(f"{day_end} > {pointer}")

    def step(self, on_time_view: str, previous: Any | None) -> Any:
        """Every open tile after this batch, in the tile table's columns plus ``__changed``."""
        self._job = TileJob(self.spark, self.plan, self.group, Range(), events=on_time_view)
        valid = " AND ".join([f"{q(k)} IS NOT NULL" for k in self.keys] + [f"{BUCKET} IS NOT NULL"])
        partial = self._job.finest_all().where(valid)
        # Each level feeds the next one and the output: cached, so it is computed once.
        finest = self._keep(self._merge_finest(partial, previous))
        levels = [(self.sizes[0], finest)]
        for size in self.sizes[1:]:
            levels.append((size, self._keep(self._rollup(levels[-1][1], previous, size))))
        frames = [self._finish(frame, size) for size, frame in levels]
        union = frames[0]
        for frame in frames[1:]:
            union = union.unionByName(frame)
        return union

    def _keep(self, frame: Any) -> Any:
        kept = frame.persist()
        self._cached.append(kept)
        return kept

    def release(self) -> None:
        if self._job is not None:
            self._job.release()
        for frame in self._cached:
            frame.unpersist()
        self._cached.clear()
        for view in self._views:
            self.spark.catalog.dropTempView(view)
        self._views.clear()

    # ---- steps ----------------------------------------------------------------------------
    def _view(self, frame: Any, what: str) -> str:
        name = f"__robusta_stream_{self.plan.name}_{self.group.layout.table}_{what}"
        frame.createOrReplaceTempView(name)
        self._views.append(name)
        return name

    def _stored(self, previous: Any, size: Duration) -> str:
        """The stored tiles of one granularity as (keys, __bucket, events, IRs)."""
        columns = ", ".join(
            [*(q(k) for k in self.keys), f"unix_micros(bucket_start) AS {BUCKET}", "events"]
            + [q(f.ir_column) for f in self.group.features]
        )
        view = self._view(previous, "previous")
        return f"(SELECT {columns} FROM {view} WHERE granularity = '{size.name}')"

    def _merge_finest(self, partial: Any, previous: Any | None) -> Any:
        keys = ", ".join(q(k) for k in self.keys)
        irs = [q(f.ir_column) for f in self.group.features]
        part = self._view(partial, "partial")
        columns = f"{keys}, {BUCKET}, events, {', '.join(irs)}"
        both = f"SELECT {columns}, 1 AS __ord FROM {part}"
        if previous is not None:
            stored = self._stored(previous, self.sizes[0])
            both = f"SELECT {columns}, 0 AS __ord FROM {stored} AS s UNION ALL {both}"
        # A tile seen once keeps its bytes (first); a tile in both is merged, stored first.
        merged = ", ".join(
            f"CASE WHEN count(1) = 1 THEN first({q(f.ir_column)}) "
            f"ELSE {f.op.spark_merge(q(f.ir_column), '__ord')} END AS {q(f.ir_column)}"
            for f in self.group.features
        )
        return self.spark.sql(
            f"SELECT {keys}, {BUCKET}, sum(events) AS events, {merged}, "
            f"max(__ord) = 1 AS {CHANGED} FROM ({both}) AS u GROUP BY {keys}, {BUCKET}"
        )

    def _rollup(self, child: Any, previous: Any | None, size: Duration) -> Any:
        """Tiles of ``size`` containing a changed child, rolled up again from all their
        children (bucket order, as the batch rollup); the other stored tiles unchanged."""
        keys = ", ".join(q(k) for k in self.keys)
        parent = f"{BUCKET} - pmod({BUCKET}, {size.micros})"
        children = self._view(child, f"child_{size.name}")
        touched = self._view(
            self.spark.sql(
                f"SELECT DISTINCT {keys}, {parent} AS __parent FROM {children} WHERE {CHANGED}"
            ),
            f"touched_{size.name}",
        )
        on = " AND ".join([f"c.{q(k)} = t.{q(k)}" for k in self.keys])
        irs = ", ".join(
            f"{f.op.spark_merge(q(f.ir_column), BUCKET)} AS {q(f.ir_column)}"
            for f in self.group.features
        )
        redone = self.spark.sql(
            f"SELECT {keys}, {parent} AS {BUCKET}, sum(events) AS events, {irs}, "
            f"true AS {CHANGED} "
            f"FROM (SELECT c.* FROM {children} c LEFT SEMI JOIN {touched} t "
            f"ON {on} AND c.{BUCKET} - pmod(c.{BUCKET}, {size.micros}) = t.__parent) AS c "
            f"GROUP BY {keys}, {parent}"
        )
        if previous is None:
            return redone
        on_kept = " AND ".join([f"s.{q(k)} = t.{q(k)}" for k in self.keys])
        kept = self.spark.sql(
            f"SELECT s.*, false AS {CHANGED} FROM {self._stored(previous, size)} AS s "
            f"LEFT ANTI JOIN {touched} t ON {on_kept} AND s.{BUCKET} = t.__parent"
        )
        return redone.unionByName(kept)

    def _finish(self, frame: Any, size: Duration) -> Any:
        from pyspark.sql import functions as F

        layout = self.group.layout
        return frame.select(
            *[F.col(q(k)) for k in self.keys],
            F.expr(spark_key_bucket(q(layout.primary), layout.key_buckets)).alias("key_bucket"),
            F.lit(size.name).alias("granularity"),
            F.expr(f"timestamp_micros({BUCKET})").alias("bucket_start"),
            F.col("events"),
            *[F.col(q(f.ir_column)) for f in self.group.features],
            F.lit(self.plan.hash).alias("spec_version"),
            F.col(CHANGED),
        )
