"""The bucketed point-in-time join: training rows get their features from tile files.

Per tile group the rows are hash-partitioned by the group's ``key_bucket`` (the same function
as the tile tables, ``plan.keys``) and sorted by it within partitions. Tiles are never
shuffled: each Spark task streams its rows in Arrow batches (``mapInArrow``), and for each key
bucket it meets reads that bucket's tile files, pruned on the driver by pyiceberg to the rows'
time range, straight from the table with pyarrow. The pure assembler
(``robusta.plan.assembly``) then computes every window of every row of the bucket at once.
Memory per task is one bucket's tiles plus one batch of rows, however hot a key is: a hot key's
rows arrive in many bounded batches, and its bucket's tiles are read once per task. A bucket
whose tiles exceed the memory budget is split by key hash (``GroupJoin.parts``), each part a
task of its own; a bucket (or part) with more rows than ``rows_per_task`` is split by time
into several tasks (skew).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from robusta.engine.pit_join import (
    KEY_BUCKET,
    KEY_PART,
    POINTER,
    ROW_ID,
    TS,
    GroupJoin,
    key_column,
)
from robusta.plan.keys import spark_key_bucket, spark_key_part

__all__ = [
    "KEY_BUCKET",
    "KEY_PART",
    "TS",
    "GroupJoin",
    "finish",
    "join_group",
    "prepare_rows",
    "row_counts",
]


def prepare_rows(rows: Any, timestamp_column: str, version_column: str | None) -> Any:
    """Rows with a row id and their time (and pointer) as epoch microseconds."""
    from pyspark.sql import functions as F

    prepared = rows.withColumn(ROW_ID, F.monotonically_increasing_id()).withColumn(
        TS, F.expr(f"unix_micros(CAST({_q(timestamp_column)} AS TIMESTAMP))")
    )
    if version_column is not None:
        prepared = prepared.withColumn(
            POINTER, F.expr(f"unix_micros(CAST({_q(version_column)} AS TIMESTAMP))")
        )
    return prepared


DEFAULT_ROWS_PER_TASK = 250_000
CHUNK = "__robusta_chunk"


def join_group(
    rows: Any,
    join: GroupJoin,
    key_columns: Sequence[str],
    rows_per_task: int = DEFAULT_ROWS_PER_TASK,
) -> Any:
    """``rows`` (from :func:`prepare_rows`) with ``join``'s feature columns added.

    A key bucket with more than ``rows_per_task`` rows (a hot key) is split by time into
    that many tasks' worth of chunks, each reading the bucket's tiles itself.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_type
    from pyspark.sql.types import StructField, StructType

    layout = join.group.layout
    keyed = rows
    for i, (key, column) in enumerate(zip(layout.keys, key_columns, strict=True)):
        spark_type = "BIGINT" if key.type.is_integer else "STRING"
        keyed = keyed.withColumn(key_column(i), F.expr(f"CAST({_q(column)} AS {spark_type})"))
    primary = next(i for i, k in enumerate(layout.keys) if k.column == layout.primary)
    bucket = spark_key_bucket(key_column(primary), layout.key_buckets)
    keyed = keyed.withColumn(KEY_BUCKET, F.expr(f"coalesce({bucket}, -1)"))  # -1: null key
    keyed = keyed.withColumn(KEY_PART, F.expr(_key_part(key_column(primary), join)))
    chunk, extra = _time_chunks(keyed, rows_per_task)
    keyed = keyed.withColumn(CHUNK, F.expr(chunk))
    tasks = layout.key_buckets + sum(n - 1 for n in join.parts.values()) + extra
    partitioned = keyed.repartition(tasks, KEY_BUCKET, KEY_PART, CHUNK)
    partitioned = partitioned.sortWithinPartitions(KEY_BUCKET, KEY_PART)
    added = [StructField(o.name, from_arrow_type(o.type), True) for o in join.outputs]
    schema = StructType([*partitioned.schema.fields, *added])
    joined = partitioned.mapInArrow(join.add_features, schema)
    internal = [key_column(i) for i in range(len(layout.keys))] + [KEY_BUCKET, KEY_PART, CHUNK]
    return joined.drop(*internal)


def _key_part(key_sql: str, join: GroupJoin) -> str:
    """SQL giving each row its slice of its key bucket (``join.parts``; 0 when not split)."""
    buckets = join.group.layout.key_buckets
    cases = [
        f"WHEN {bucket} THEN {spark_key_part(key_sql, buckets, n)}"
        for bucket, n in sorted(join.parts.items())
    ]
    if not cases:
        return "0"
    return f"coalesce(CASE {KEY_BUCKET} {' '.join(cases)} END, 0)"


def _time_chunks(keyed: Any, rows_per_task: int) -> tuple[str, int]:
    """SQL numbering each row's time chunk within its bucket, and the extra chunks made."""
    from pyspark.sql import functions as F

    stats = (
        keyed.groupBy(KEY_BUCKET, KEY_PART)
        .agg(F.count("*").alias("n"), F.min(TS).alias("lo"), F.max(TS).alias("hi"))
        .collect()
    )
    cases, extra = [], 0
    for row in stats:
        n, lo, hi = row["n"], row["lo"], row["hi"]
        parts = -(-n // rows_per_task)
        if parts > 1 and lo is not None and hi is not None and hi > lo:
            extra += parts - 1
            step = -(-(hi - lo + 1) // parts)
            cases.append(
                f"WHEN {KEY_BUCKET} = {row[KEY_BUCKET]} AND {KEY_PART} = {row[KEY_PART]} THEN "
                f"CAST(coalesce({TS} - {lo}, 0) DIV {step} AS INT)"
            )
    if not cases:
        return "0", 0
    return f"CASE {' '.join(cases)} ELSE 0 END", extra


_ROW_BITS = 33  # monotonically_increasing_id: partition id << 33 | row within the partition
TARGET = "__robusta_target"


def row_counts(prepared: Any) -> dict[int, int]:
    """Rows per input partition of :func:`prepare_rows`' frame (keyed by partition id)."""
    from pyspark.sql import functions as F

    counted = prepared.groupBy(F.shiftright(F.col(ROW_ID), _ROW_BITS).alias("p")).count()
    return {int(r["p"]): int(r["count"]) for r in counted.collect()}


def finish(joined: Any, with_pointer: bool, counts: Mapping[int, int] | None = None) -> Any:
    """Input order restored, internal columns dropped.

    ``orderBy`` would sample its input to choose ranges, and the sample job runs the whole
    join a second time (Python tasks included). With the rows per input partition known
    (``counts``), each row's output partition follows from its row id alone: chunk ``i`` of
    the input order goes to output partition ``i`` through a hash-partitioning value chosen
    so that Spark's ``pmod(hash(v), n)`` is ``i``; partitions are then sorted by row id.
    """
    internal = [ROW_ID, TS] + ([POINTER] if with_pointer else [])
    if counts is None:
        return joined.orderBy(ROW_ID).drop(*internal)
    from pyspark.sql import functions as F

    spark = joined.sparkSession
    total = sum(counts.values())
    parts = max(1, min(int(spark.conf.get("spark.sql.shuffle.partitions")), total // 20_000))
    size = max(1, -(-total // parts))
    offsets, running = [], 0
    for pid in sorted(counts):
        offsets.append(f"WHEN {pid} THEN {running}")
        running += counts[pid]
    dense = (
        f"(CASE shiftright({ROW_ID}, {_ROW_BITS}) {' '.join(offsets)} END "
        f"+ ({ROW_ID} & {(1 << _ROW_BITS) - 1}))"
    )
    chunk = f"CAST({dense} DIV {size} AS BIGINT)"
    targets = _hash_targets(spark, parts)
    pick = " ".join(f"WHEN {i} THEN {v}" for i, v in enumerate(targets))
    # BIGINT like range()'s ids: the hash of an INT differs.
    routed = joined.withColumn(TARGET, F.expr(f"CAST(CASE {chunk} {pick} END AS BIGINT)"))
    ordered = routed.repartition(parts, TARGET).sortWithinPartitions(ROW_ID)
    return ordered.drop(TARGET, *internal)


def _hash_targets(spark: Any, parts: int) -> list[int]:
    """For each partition ``i < parts``, a BIGINT whose Spark hash partition is ``i``."""
    found: dict[int, int] = {}
    span = 64 * parts
    while len(found) < parts:
        rows = spark.sql(
            f"SELECT id, pmod(hash(id), {parts}) AS p FROM range({span - 64 * parts}, {span})"
        ).collect()
        for row in rows:
            found.setdefault(int(row["p"]), int(row["id"]))
        span *= 2
    return [found[i] for i in range(parts)]


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"
