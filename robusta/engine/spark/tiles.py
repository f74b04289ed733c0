"""The batch tile job: a spec's events -> tiles at every granularity, in one pass.

For one tile group of a spec: the spec's query runs over the source views; a single
aggregation groups *all* rows by (keys, finest bucket), building every base feature's IR with
its operator's ``spark_build`` and counting events; groups with a null key or a null bucket are
the dropped rows and are only counted. Each coarser granularity is then rolled up from the next
finer one with ``spark_merge`` (ordered by bucket start), so larger tiles are exact merges of
smaller ones. Only native Spark SQL expressions run: no Python UDF touches a row.
"""

from __future__ import annotations

from typing import Any

from robusta.engine.counts import Range, TileCounts
from robusta.engine.spark.files import read_files, write_tile_parts
from robusta.plan.keys import spark_key_bucket
from robusta.plan.model import BucketBy, SpecPlan, TileGroup
from robusta.spec.durations import Duration
from robusta.store.files import Storage

BUCKET = "__bucket"  # bucket start, epoch microseconds
LAST_EVENT = "__last_event"  # latest event time of a finest tile, epoch microseconds
_VALUE = "__bucket_value"  # a map feature's bucket value (``ops.bucketed``), as text
__all__ = ["Range", "TileCounts", "TileJob", "read_tiles", "write_tiles"]


def q(name: str) -> str:
    """A Spark SQL identifier, quoted."""
    return "`" + name.replace("`", "``") + "`"


class TileJob:
    """Spark DataFrames of one tile group's tiles; call :meth:`tiles` then :meth:`counts`."""

    def __init__(
        self,
        spark: Any,
        plan: SpecPlan,
        group: TileGroup,
        window: Range,
        *,
        events: str | None = None,
    ) -> None:
        """``events``: a view of the spec query's rows to tile instead of running the query
        (the streaming job passes each micro-batch's rows this way)."""
        self.spark = spark
        self._events = events
        self.plan = plan
        self.group = group
        self.window = window
        self.keys = [k.column for k in group.layout.keys]
        self._finest_all: Any = None
        self._tiles: Any = None
        self._cached: list[Any] = []  # persisted frames to release when the group is done

    def events_view(self) -> str:
        """The spec's query as a temp view (sources must already be registered).

        With several tile groups the query result is cached, so the source is read once.
        """
        if self._events is not None:
            return self._events
        view = f"__robusta_events_{self.plan.name}"
        if not self.spark.catalog.tableExists(view):
            events = self.spark.sql(self.plan.spec.query)
            if len(self.plan.groups) > 1:
                events = events.persist()
            events.createOrReplaceTempView(view)
        return view

    def finest_all(self) -> Any:
        """Finest tiles of every (keys, bucket) group, null keys and times included."""
        if self._finest_all is not None:
            return self._finest_all
        layout = self.group.layout
        ts = f"CAST({q(self.plan.spec.timestamp)} AS TIMESTAMP)"
        size = layout.finest.micros
        # Keys are cast to their entity type under internal names (inputs may share a name).
        keys = [
            f"CAST({q(k.column)} AS {'BIGINT' if k.type.is_integer else 'STRING'}) AS __k{i}"
            for i, k in enumerate(layout.keys)
        ]
        inputs = sorted({q(f.input) for f in self.group.features if f.input})
        irs = ", ".join(
            f"{f.op.spark_build(q(f.input) if f.input else 'NULL', '__ts')} AS {q(f.ir_column)}"
            for f in self.group.features
        )
        grouped = [f"__k{i}" for i in range(len(keys))]
        where = ""
        if self.window.bounded:
            where = f"WHERE __m IS NULL OR (__m >= {self.window.start} AND __m < {self.window.end})"
        bucket = layout.bucket
        if bucket is not None:  # maps: per (keys, tile, bucket value) first, then collected
            inputs.append(f"CAST({q(bucket.column)} AS STRING) AS {_VALUE}")
        rows = f"""
            SELECT {", ".join([*keys, *inputs])}, unix_micros({ts}) AS __m, {ts} AS __ts
            FROM {self.events_view()}"""
        by = [*grouped, f"__m - pmod(__m, {size})"]
        sql = f"""
            SELECT {", ".join(f"{g} AS {q(k)}" for g, k in zip(grouped, self.keys, strict=True))},
                   __m - pmod(__m, {size}) AS {BUCKET}, count(1) AS events,
                   max(__m) AS {LAST_EVENT}, {irs}
            FROM ({rows}) AS e
            {where}
            GROUP BY {", ".join(by)}
        """
        if bucket is not None:
            per_value = f"""
                SELECT {", ".join(grouped)}, __m - pmod(__m, {size}) AS {BUCKET}, {_VALUE},
                       count(1) AS events, max(__m) AS {LAST_EVENT}, {irs}
                FROM ({rows}) AS e
                {where}
                GROUP BY {", ".join([*by, _VALUE])}"""
            named = [f"{g} AS {q(k)}" for g, k in zip(grouped, self.keys, strict=True)]
            sql = f"""
                SELECT {", ".join(named)}, {BUCKET}, sum(events) AS events,
                       max({LAST_EVENT}) AS {LAST_EVENT}, {self._maps(bucket.max_buckets)}
                FROM ({per_value}) AS v
                GROUP BY {", ".join([*grouped, BUCKET])}"""
        self._finest_all = self.spark.sql(sql).persist()
        self._cached.append(self._finest_all)
        return self._finest_all

    def tiles(self) -> Any:
        """Every tile of the group, all granularities, in the tile table's columns (cached)."""
        if self._tiles is not None:
            return self._tiles
        finest = self.finest_all().where(
            " AND ".join([f"{q(k)} IS NOT NULL" for k in self.keys] + [f"{BUCKET} IS NOT NULL"])
        )
        sizes = list(reversed(self.group.layout.granularities))  # finest first
        levels = [(sizes[0], finest)]
        for size in sizes[1:]:
            levels.append((size, self._rollup(levels[-1][1], size)))
        frames = [self._finish(frame, size) for size, frame in levels]
        union = frames[0]
        for frame in frames[1:]:
            union = union.unionByName(frame)
        self._tiles = union  # its parts (finest tiles, rollups) are already cached
        return self._tiles

    def _rollup(self, child: Any, size: Duration) -> Any:
        view = f"__robusta_child_{self.plan.name}_{size.name}"
        child.createOrReplaceTempView(view)
        irs = ", ".join(
            f"{f.op.spark_merge(q(f.ir_column), BUCKET)} AS {q(f.ir_column)}"
            for f in self.group.features
        )
        parent = f"{BUCKET} - pmod({BUCKET}, {size.micros})"
        keys = ", ".join(q(k) for k in self.keys)
        sql = (
            f"SELECT {keys}, {parent} AS {BUCKET}, sum(events) AS events, {irs} "
            f"FROM {view} GROUP BY {keys}, {parent}"
        )
        if self.group.layout.bucket is not None:
            sql = self._map_rollup(view, parent, self.group.layout.bucket)
        rollup = self.spark.sql(sql).persist()
        self._cached.append(rollup)
        return rollup

    def _maps(self, max_buckets: int) -> str:
        """Per feature, the map of the per-value IRs of a group's rows (``_VALUE``, the
        feature's IR column): its ``max_buckets`` smallest values (``ops.bucketed``),
        sorted, with null values left out."""
        order = "(l, r) -> CASE WHEN l.k < r.k THEN -1 WHEN l.k > r.k THEN 1 ELSE 0 END"
        maps = []
        for f in self.group.features:
            entries = f"collect_list(struct({_VALUE} AS k, {q(f.ir_column)} AS v))"
            kept = f"filter({entries}, x -> x.k IS NOT NULL)"
            top = f"slice(array_sort({kept}, {order}), 1, {max_buckets})"
            maps.append(f"map_from_entries({top}) AS {q(f.ir_column)}")
        return ", ".join(maps)

    def _map_rollup(self, view: str, parent: str, bucket: BucketBy) -> str:
        """A coarser level of map tiles: every child tile's entries (one per bucket value,
        shared by all features of the group) are merged per (keys, parent, value) with the
        inner operators' ``spark_merge`` in time order, then collected into maps again.
        A child without entries still counts its events (``posexplode_outer``)."""
        features = self.group.features
        keys = ", ".join(q(k) for k in self.keys)
        values = ", ".join(
            f"try_element_at({q(f.ir_column)}, {_VALUE}) AS {q(f.ir_column)}" for f in features
        )
        exploded = (
            f"SELECT {keys}, {BUCKET}, events, __pos, {_VALUE}, {values} FROM {view} "
            f"LATERAL VIEW OUTER posexplode(map_keys({q(features[0].ir_column)})) "
            f"AS __pos, {_VALUE}"
        )
        irs = ", ".join(
            f"{f.op.spark_merge(q(f.ir_column), BUCKET)} AS {q(f.ir_column)}" for f in features
        )
        per_value = (
            f"SELECT {keys}, {parent} AS __parent, {_VALUE}, "
            "sum(CASE WHEN coalesce(__pos, 0) = 0 THEN events ELSE 0 END) AS events, "
            f"{irs} FROM ({exploded}) AS x GROUP BY {keys}, {parent}, {_VALUE}"
        )
        return (
            f"SELECT {keys}, __parent AS {BUCKET}, sum(events) AS events, "
            f"{self._maps(bucket.max_buckets)} FROM ({per_value}) AS v GROUP BY {keys}, __parent"
        )

    def _finish(self, frame: Any, size: Duration) -> Any:
        from pyspark.sql import functions as F

        layout = self.group.layout
        columns = [
            *[F.col(q(k)) for k in self.keys],
            F.expr(spark_key_bucket(q(layout.primary), layout.key_buckets)).alias("key_bucket"),
            F.lit(size.name).alias("granularity"),
            F.expr(f"timestamp_micros({BUCKET})").alias("bucket_start"),
            F.col("events"),
            *[F.col(q(f.ir_column)) for f in self.group.features],
            F.lit(self.plan.hash).alias("spec_version"),
        ]
        return frame.select(*columns)

    def counts(self, tiles: Any) -> TileCounts:
        """Events read, rows dropped and tiles per granularity (small Spark jobs on cached data)."""
        null_key = " OR ".join(f"{q(k)} IS NULL" for k in self.keys)
        row = (
            self.finest_all()
            .selectExpr(
                "coalesce(sum(events), 0) AS events",
                f"coalesce(sum(CASE WHEN {null_key} THEN events ELSE 0 END), 0) AS null_keys",
                f"coalesce(sum(CASE WHEN NOT ({null_key}) AND {BUCKET} IS NULL THEN events "
                "ELSE 0 END), 0) AS null_times",
                f"max(CASE WHEN NOT ({null_key}) THEN {BUCKET} END) AS last_bucket",
                f"max(CASE WHEN NOT ({null_key}) THEN {LAST_EVENT} END) AS last_event",
            )
            .collect()[0]
        )
        per = {
            r["granularity"]: int(r["count"])
            for r in tiles.groupBy("granularity").count().collect()
        }
        ordered = {g.name: per.get(g.name, 0) for g in self.group.layout.granularities}
        last, latest = row["last_bucket"], row["last_event"]
        if self.window.bounded:
            latest = self._source_latest()
        return TileCounts(
            int(row["events"]),
            int(row["null_keys"]),
            int(row["null_times"]),
            ordered,
            None if last is None else int(last),
            None if latest is None else int(latest),
        )

    def _source_latest(self) -> int | None:
        """The latest event with a key anywhere in the source, not only in the window: a
        range before it is complete (``TileCounts.last_event``)."""
        ts = f"unix_micros(CAST({q(self.plan.spec.timestamp)} AS TIMESTAMP))"
        keyed = " AND ".join(f"{q(k)} IS NOT NULL" for k in self.keys)
        row = self.spark.sql(
            f"SELECT max({ts}) AS latest FROM {self.events_view()} WHERE {keyed}"
        ).collect()[0]
        return None if row["latest"] is None else int(row["latest"])

    def release(self) -> None:
        """Unpersist this group's cached frames (the spec's events stay for its other groups)."""
        for frame in self._cached:
            frame.unpersist()
        self._cached.clear()


def write_tiles(tiles: Any, group: TileGroup, storage: Storage, folder: str) -> None:
    """Write tiles as Parquet, one file per (granularity, key_bucket, month) partition, by
    the tasks (``engine.spark.files``): the warehouse may be an object store Spark cannot
    write to itself."""
    write_tile_parts(tiles, group, storage, folder)


def read_tiles(spark: Any, storage: Storage, paths: list[str], group: TileGroup) -> Any:
    """A tile table's files as one frame in the table's columns, files of added columns
    (merge on read, ``store.tiles``) joined to the others on the tile identity; the files
    are read by the tasks (``engine.spark.files.read_files``)."""
    from pyspark.sql import functions as F

    from robusta.store.tiles import file_schema, files_by_columns, tile_identity, tile_schema

    schema = tile_schema(group)
    groups = files_by_columns(storage, paths)
    names = schema.names
    frames = [
        read_files(spark, storage, files, file_schema(storage, columns, files[0], schema))
        for columns, files in groups
    ]
    if not frames:
        return read_files(spark, storage, [], schema)
    identity = tile_identity(group)
    merged = frames[0]
    for frame in frames[1:]:
        shared = [c for c in frame.columns if c in merged.columns and c not in identity]
        extra = [c for c in frame.columns if c not in merged.columns]
        right = frame.select(*identity, *(F.col(c).alias(f"__r_{c}") for c in shared), *extra)
        merged = merged.join(right, identity, "full_outer")
        for c in shared:
            merged = merged.withColumn(c, F.coalesce(F.col(c), F.col(f"__r_{c}"))).drop(f"__r_{c}")
    present = set(merged.columns)
    return merged.select(*(F.col(q(c)) if c in present else F.lit(None).alias(c) for c in names))
