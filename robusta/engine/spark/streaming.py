"""The streaming job's Spark side: one micro-batch's rows -> their finest tiles.

A micro-batch's rows (the spec query's output) are counted (:func:`batch_stats`), split into
on-time and late rows at the version pointer (:func:`split_late`), and the on-time ones are
tiled at the finest granularity with the batch job's own aggregation
(:func:`batch_tiles`); :class:`SparkMicroBatch` puts the three behind the engine-neutral
``engine.microbatch.MicroBatch``. Merging those tiles into the stream's open-tile state is
pure Arrow work (:mod:`robusta.plan.open_tiles`), done by the driver: a micro-batch touches
a few thousand tiles. Only native Spark SQL runs on rows.

Rows whose time is before the version pointer (the end of the last complete finest bucket)
are late: they are not tiled (buckets before the pointer never change once served) but
written to the late-events table; a batch ``robusta materialize`` over their range repairs
the tiles.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from robusta.engine.microbatch import BatchStats
from robusta.engine.spark.files import write_parts
from robusta.engine.spark.tiles import BUCKET, LAST_EVENT, Range, TileJob, q
from robusta.plan.model import SpecPlan, TileGroup
from robusta.store.files import Storage


class SparkMicroBatch:
    """A ``foreachBatch`` DataFrame as an ``engine.microbatch.MicroBatch``: persisted and
    viewed once, split at ``pointer`` by Spark SQL."""

    def __init__(self, frame: Any, plan: SpecPlan, pointer: int | None) -> None:
        self.spark = frame.sparkSession
        self.plan = plan
        self.pointer = pointer
        self.rows = frame.persist()
        self.view = f"__robusta_batch_{plan.name}"
        self.rows.createOrReplaceTempView(self.view)
        self.on_time, self.late = split_late(self.spark, plan, self.view, pointer)

    def stats(self) -> BatchStats:
        return batch_stats(self.spark, self.plan, self.view, self.pointer)

    def write_late(self, storage: Storage, folder: str) -> None:
        write_parts(self.late, storage, folder)

    def finest_tiles(self, group: TileGroup) -> pa.Table:
        return batch_tiles(self.spark, self.plan, group, self.on_time)

    def release(self) -> None:
        self.rows.unpersist()
        self.spark.catalog.dropTempView(self.view)


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


def batch_tiles(spark: Any, plan: SpecPlan, group: TileGroup, on_time_view: str) -> Any:
    """The finest tiles of a micro-batch's on-time rows (keys and bucket not null), as an
    Arrow table of (key columns, ``__bucket``, ``events``, IR columns): the batch job's own
    aggregation (:class:`~robusta.engine.spark.tiles.TileJob`, each op's ``spark_build``)."""
    job = TileJob(spark, plan, group, Range(), events=on_time_view)
    keys = [k.column for k in group.layout.keys]
    valid = " AND ".join([f"{q(k)} IS NOT NULL" for k in keys] + [f"{BUCKET} IS NOT NULL"])
    try:
        return job.finest_all().where(valid).drop(LAST_EVENT).toArrow()
    finally:
        job.release()
