"""Data-volume monitors: event counts per source and segment, and drops against recent levels.

A source with a ``monitor`` section in ``robusta.yaml``

    sources:
      engagement_events:
        ...
        monitor: {timestamp: event_ts, segments: [device, country], granularity: 1d}

gets its events counted by every ``robusta materialize`` that reads it: per time bucket, in
total and per value of each segment column, into the Iceberg table ``<namespace>.event_volumes``
(a rerun over a range replaces that range's counts), and by ``robusta stream``, which adds each
micro-batch's counts exactly once (the batch is recorded in the commit's snapshot summary and
checked before adding; a later batch ``materialize`` of the range replaces them, as it
replaces streamed tiles). ``robusta monitor`` then compares each
segment's latest bucket with the median of its previous ``baseline`` buckets and flags the
segments that fell below ``drop`` times that level: a country whose events stop is flagged even
while the total, carried by the other countries, looks normal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from robusta.errors import RobustaError
from robusta.plan.model import SpecPlan
from robusta.spec.durations import floor_to, from_micros, to_micros
from robusta.spec.model import MonitorConfig, OfflineConfig, ProjectConfig, SourceConfig

VOLUMES_TABLE = "event_volumes"
TOTAL = "__total__"  # the segment of all events
NULL_VALUE = "(null)"
VOLUMES_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("segment", pa.string()),
        pa.field("value", pa.string()),
        pa.field("bucket_start", pa.timestamp("us", tz="UTC")),
        pa.field("granularity_us", pa.int64()),
        pa.field("events", pa.int64()),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC")),
    ]
)


class MonitorError(RobustaError, LookupError):
    """Nothing to monitor (no source has a monitor section, or nothing was recorded)."""


def monitored_sources(config: ProjectConfig, plans: Sequence[SpecPlan]) -> list[SourceConfig]:
    """The sources with a monitor section that ``plans`` read, each once."""
    names = dict.fromkeys(name for plan in plans for name in plan.spec.sources)
    found = [config.sources.get(name) for name in names]
    return [s for s in found if s is not None and s.monitor is not None]


# ---- recording (called by materialize, with the source registered as a Spark view) -------
def record_volumes(
    spark: Any,
    config: ProjectConfig,
    source: SourceConfig,
    start: int | None = None,
    end: int | None = None,
) -> int:
    """Count ``source``'s events of whole buckets covering ``[start, end)`` (default: all)
    and replace those buckets' counts in the volumes table; returns the rows written."""
    monitor = source.monitor
    assert monitor is not None
    size = monitor.granularity.micros
    lo = None if start is None else floor_to(start, size)
    hi = None if end is None else -floor_to(-end, size)
    counts = spark.sql(_count_sql(source, lo, hi)).toArrow()
    return store_counts(config, source, counts, lo, hi)


def store_counts(
    config: ProjectConfig, source: SourceConfig, counts: pa.Table, lo: int | None, hi: int | None
) -> int:
    """Replace the buckets ``[lo, hi)`` of the source's volumes with ``counts`` (bucket,
    segment, value, events); returns the rows written."""
    assert source.monitor is not None
    rows = _volume_rows(source.name, counts, source.monitor.granularity.micros)
    _replace(config.offline, source.name, rows, lo, hi)
    return int(rows.num_rows)


def count_events(
    events: pa.Table, monitor: MonitorConfig, start: int | None, end: int | None
) -> tuple[pa.Table, int | None, int | None]:
    """What ``_count_sql`` counts, in Arrow: ``events`` holds the monitor's timestamp
    (``timestamp[us, UTC]``) and its segment columns as text. Returns the counts (bucket,
    segment, value, events) and the whole buckets ``[lo, hi)`` they cover."""
    import numpy as np

    size = monitor.granularity.micros
    lo = None if start is None else floor_to(start, size)
    hi = None if end is None else -floor_to(-end, size)
    ts = pc.cast(pc.cast(events.column(monitor.timestamp), _UTC), pa.int64())
    keep = pc.is_valid(ts)
    if lo is not None:
        keep = pc.and_(keep, pc.greater_equal(ts, lo))
    if hi is not None:
        keep = pc.and_(keep, pc.less(ts, hi))
    kept = events.filter(keep)
    micros = np.asarray(ts.filter(keep).to_numpy(), np.int64)
    buckets = pa.array(micros - np.mod(micros, size), pa.int64())
    parts = [_counted(buckets, pa.nulls(kept.num_rows, pa.string()), TOTAL)]
    for segment in monitor.segments:
        parts.append(_counted(buckets, pc.cast(kept.column(segment), pa.string()), segment))
    return pa.concat_tables(parts), lo, hi


_UTC = pa.timestamp("us", tz="UTC")


def _counted(buckets: pa.Array, values: pa.Array, segment: str) -> pa.Table:
    grouped = (
        pa.table({"bucket": buckets, "value": values})
        .group_by(["bucket", "value"])
        .aggregate([([], "count_all")])
    )
    return pa.table(
        {
            "bucket": grouped.column("bucket"),
            "segment": pa.array([segment] * grouped.num_rows, pa.string()),
            "value": grouped.column("value"),
            "events": grouped.column("count_all"),
        }
    )


def _count_sql(
    source: SourceConfig, lo: int | None, hi: int | None, view: str | None = None
) -> str:
    monitor = source.monitor
    assert monitor is not None
    ts = f"unix_micros(CAST({_q(monitor.timestamp)} AS TIMESTAMP))"
    parts = [f"named_struct('segment', '{TOTAL}', 'value', CAST(NULL AS STRING))"]
    parts += [
        f"named_struct('segment', '{_text(s)}', 'value', CAST({_q(s)} AS STRING))"
        for s in monitor.segments
    ]
    where = [f"{ts} IS NOT NULL"]
    if lo is not None:
        where.append(f"{ts} >= {lo}")
    if hi is not None:
        where.append(f"{ts} < {hi}")
    size = monitor.granularity.micros
    return f"""
        SELECT bucket, s.segment AS segment, s.value AS value, count(1) AS events
        FROM (
            SELECT {ts} - pmod({ts}, {size}) AS bucket, explode(array({", ".join(parts)})) AS s
            FROM {_q(view or source.name)} WHERE {" AND ".join(where)}
        ) GROUP BY bucket, s.segment, s.value
    """


def _volume_rows(source: str, counts: pa.Table, size: int) -> pa.Table:
    n = counts.num_rows
    now = to_micros(datetime.now(UTC))
    values = [NULL_VALUE if v is None else v for v in counts.column("value").to_pylist()]
    segments = counts.column("segment").to_pylist()
    values = [None if s == TOTAL else v for s, v in zip(segments, values, strict=True)]
    time_type = pa.timestamp("us", tz="UTC")
    return pa.Table.from_arrays(
        [
            pa.array([source] * n, pa.string()),
            pa.array(segments, pa.string()),
            pa.array(values, pa.string()),
            counts.column("bucket").cast(pa.int64()).cast(time_type),
            pa.array([size] * n, pa.int64()),
            counts.column("events").cast(pa.int64()),
            pa.array([now] * n, pa.int64()).cast(time_type),
        ],
        schema=VOLUMES_SCHEMA,
    )


def _replace(
    offline: OfflineConfig, source: str, rows: pa.Table, lo: int | None, hi: int | None
) -> None:
    from pyiceberg import expressions

    # pydantic models: untyped positionals
    equal: Any = expressions.EqualTo
    at_least: Any = expressions.GreaterThanOrEqual
    below: Any = expressions.LessThan
    table = _volumes_table(offline, create=True)
    if table.current_snapshot() is None:  # nothing to replace yet
        table.append(rows)
        return
    scope: Any = equal("source", source)
    if lo is not None:
        scope = expressions.And(scope, at_least("bucket_start", _iso(lo)))
    if hi is not None:
        scope = expressions.And(scope, below("bucket_start", _iso(hi)))
    table.overwrite(rows, overwrite_filter=scope)


def _volumes_table(offline: OfflineConfig, *, create: bool) -> Any:
    from pyiceberg.exceptions import NoSuchTableError

    from robusta.store.catalog import open_catalog

    catalog = open_catalog(offline)
    identifier = f"{offline.namespace}.{VOLUMES_TABLE}"
    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        if not create:
            return None
        return catalog.create_table(identifier, schema=VOLUMES_SCHEMA)


# ---- streaming: each micro-batch's counts added once ---------------------------------------
BATCH_PROPERTY = "robusta.volumes-batch"  # snapshot summary: "<stream id>:<batch id>"


def stream_volumes(
    spark: Any,
    config: ProjectConfig,
    source: SourceConfig,
    checkpoint: str,
    trigger: str | None,
    available_now: bool,
) -> Any:
    """Start a streaming query adding ``source``'s micro-batch counts to the volumes table."""
    from robusta.engine.spark.sources import read_stream

    writer = (
        read_stream(spark, config, source.name)
        .writeStream.queryName(f"robusta_volumes_{source.name}")
        .option("checkpointLocation", checkpoint)
        .foreachBatch(VolumeBatches(config, source, checkpoint))
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    elif trigger is not None:
        writer = writer.trigger(processingTime=trigger)
    return writer.start()


@dataclass(frozen=True)
class VolumeBatches:
    """The ``foreachBatch`` function of :func:`stream_volumes` (picklable: no Spark state)."""

    config: ProjectConfig
    source: SourceConfig
    stream: str  # the checkpoint: names the stream across restarts

    def __call__(self, batch: Any, batch_id: int) -> None:
        assert self.source.monitor is not None
        view = f"__robusta_volumes_{self.source.name}"
        batch.createOrReplaceTempView(view)
        try:
            counts = batch.sparkSession.sql(_count_sql(self.source, None, None, view)).toArrow()
        finally:
            batch.sparkSession.catalog.dropTempView(view)
        size = self.source.monitor.granularity.micros
        rows = _volume_rows(self.source.name, counts, size)
        add_volumes(self.config.offline, self.source.name, rows, f"{self.stream}:{batch_id}")


class EmbeddedVolumes:
    """A monitored source's stream on the embedded engine: each :meth:`step` adds the counts
    of one micro-batch of its landing folder (``engine.embedded.streaming.FileBatches``
    in ``folder``), once."""

    def __init__(self, config: ProjectConfig, source: SourceConfig, folder: Path) -> None:
        from robusta.engine.embedded.streaming import FileBatches, stream_sources

        self.config = config
        (self.source,) = stream_sources(config, [source.name])
        self.stream = str(folder)
        self.batches = FileBatches(folder / "embedded", [self.source])

    def landed(self) -> dict[str, set[str]]:
        return self.batches.landed()

    def step(self, among: dict[str, set[str]] | None) -> bool:
        """Add one batch's counts; False when there was none."""
        from robusta.engine.embedded.sql import connect, monitor_sql, register_sources
        from robusta.engine.embedded.streaming import batch_source

        monitor = self.source.monitor
        batch = self.batches.next(among)
        if batch is None or monitor is None:
            return False
        con = connect()
        try:
            register_sources(con, [batch_source(self.source)], batch.files)
            rows = con.sql(monitor_sql(self.source)).to_arrow_table()
        finally:
            con.close()
        counts, _, _ = count_events(rows, monitor, None, None)
        volumes = _volume_rows(self.source.name, counts, monitor.granularity.micros)
        add_volumes(self.config.offline, self.source.name, volumes, f"{self.stream}:{batch.id}")
        self.batches.commit(batch)
        return True


def add_volumes(offline: OfflineConfig, source: str, rows: pa.Table, batch: str) -> bool:
    """Add ``rows``' counts to the stored ones of the same buckets, in one commit marked with
    ``batch``; False (nothing done) when that batch was added before (a replay)."""
    from pyiceberg import expressions

    table = _volumes_table(offline, create=True)
    if any(
        s.summary is not None and s.summary.additional_properties.get(BATCH_PROPERTY) == batch
        for s in table.snapshots()
    ):
        return False
    if rows.num_rows == 0:
        return True
    buckets = sorted(set(rows.column("bucket_start").cast(pa.int64()).to_pylist()))
    equal: Any = expressions.EqualTo  # pydantic models: untyped positionals
    among: Any = expressions.In
    scope = expressions.And(
        equal("source", source), among("bucket_start", [_iso(b) for b in buckets])
    )
    stored = table.scan(row_filter=scope).to_arrow() if table.current_snapshot() else None
    merged = _summed(rows if stored is None else pa.concat_tables([stored, rows]))
    marker = {BATCH_PROPERTY: batch}
    if stored is None or stored.num_rows == 0:
        table.append(merged, snapshot_properties=marker)
    else:
        table.overwrite(merged, overwrite_filter=scope, snapshot_properties=marker)
    return True


def _summed(rows: pa.Table) -> pa.Table:
    """Counts of equal (source, segment, value, bucket, granularity) added up."""
    keys = ["source", "segment", "value", "bucket_start", "granularity_us"]
    filled = rows.set_column(
        rows.schema.get_field_index("value"), "value", pc.fill_null(rows.column("value"), "\0")
    )
    total = filled.group_by(keys).aggregate([("events", "sum"), ("recorded_at", "max")])
    value = pc.if_else(pc.equal(total.column("value"), "\0"), None, total.column("value"))
    total = total.set_column(total.schema.get_field_index("value"), "value", value)
    total = total.rename_columns(
        ["events" if c == "events_sum" else "recorded_at" if c == "recorded_at_max" else c
         for c in total.column_names]
    )
    return total.select(VOLUMES_SCHEMA.names).cast(VOLUMES_SCHEMA)


# ---- checking ---------------------------------------------------------------------------
@dataclass
class Volume:
    """One segment value's latest bucket against its recent level."""

    source: str
    segment: str
    value: str | None
    bucket: str
    events: int
    baseline: float  # median of the previous buckets (missing ones count 0)
    flagged: bool

    @property
    def ratio(self) -> float | None:
        return self.events / self.baseline if self.baseline else None


@dataclass
class MonitorReport:
    drop: float
    baseline_buckets: int
    min_events: int
    volumes: list[Volume] = field(default_factory=list)

    @property
    def flagged(self) -> list[Volume]:
        return [v for v in self.volumes if v.flagged]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.flagged,
            "drop": self.drop,
            "baseline_buckets": self.baseline_buckets,
            "min_events": self.min_events,
            "volumes": [{**asdict(v), "ratio": v.ratio} for v in self.volumes],
        }


Count = tuple[str, str, str | None, int, int, int]  # source, segment, value, bucket, size, n


def find_drops(
    counts: Iterable[Count],
    *,
    drop: float = 0.5,
    baseline: int = 7,
    min_events: int = 20,
    at: int | None = None,
) -> list[Volume]:
    """Per source, each segment value's count in the bucket holding ``at`` (default: the
    latest complete bucket, one that ended by now) against the median of the ``baseline``
    buckets before it; flagged when below ``drop`` times a median of at least
    ``min_events``. Pure: no store access."""
    by_source: dict[str, dict[tuple[str, str | None], dict[int, int]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    sizes: dict[str, int] = {}
    for source, segment, value, bucket, size, n in counts:
        by_source[source][(segment, value)][bucket] = n
        sizes[source] = size
    out = []
    for source, series in sorted(by_source.items()):
        size = sizes[source]
        total = series.get((TOTAL, None), {})
        if not total:
            continue
        if at is not None:
            latest = floor_to(at, size)
        else:  # a bucket still filling up would look like a drop
            now = to_micros(datetime.now(UTC))
            complete = [b for b in total if b + size <= now]
            if not complete:
                continue
            latest = max(complete)
        previous = [latest - k * size for k in range(1, baseline + 1)]
        for (segment, value), buckets in sorted(series.items(), key=lambda kv: _order(kv[0])):
            level = median(buckets.get(b, 0) for b in previous)
            now = buckets.get(latest, 0)
            flagged = level >= min_events and now < drop * level
            out.append(
                Volume(source, segment, value, _iso(latest), now, float(level), flagged)
            )
    return out


def _order(key: tuple[str, str | None]) -> tuple[int, str, str]:
    segment, value = key
    return (0 if segment == TOTAL else 1, segment, value or "")


def check_volumes(
    config: ProjectConfig,
    sources: Sequence[str] = (),
    *,
    drop: float = 0.5,
    baseline: int = 7,
    min_events: int = 20,
    at: datetime | None = None,
) -> MonitorReport:
    """Read the recorded volumes and :func:`find_drops` in them."""
    monitored = [s.name for s in config.sources.values() if s.monitor is not None]
    if not monitored:
        raise MonitorError(
            "no source has a monitor section: add `monitor: {timestamp: <column>, segments: "
            "[<column>, ...]}` to a source in robusta.yaml, then run `robusta materialize`"
        )
    unknown = [s for s in sources if s not in monitored]
    if unknown:
        raise MonitorError(
            f"not monitored: {', '.join(unknown)}; monitored: {', '.join(monitored)}"
        )
    table = _volumes_table(config.offline, create=False)
    if table is None:
        raise MonitorError("no event volumes recorded yet: run `robusta materialize`")
    wanted = set(sources or monitored)
    sizes = {  # counts of an earlier granularity setting are not comparable
        s.name: s.monitor.granularity.micros for s in config.sources.values() if s.monitor
    }
    rows = table.scan().to_arrow().to_pylist()
    counts = [
        (
            r["source"],
            r["segment"],
            r["value"],
            to_micros(r["bucket_start"]),
            int(r["granularity_us"]),
            int(r["events"]),
        )
        for r in rows
        if r["source"] in wanted and int(r["granularity_us"]) == sizes[r["source"]]
    ]
    report = MonitorReport(drop, baseline, min_events)
    report.volumes = find_drops(
        counts,
        drop=drop,
        baseline=baseline,
        min_events=min_events,
        at=None if at is None else to_micros(at),
    )
    return report


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _text(name: str) -> str:
    return name.replace("\\", "\\\\").replace("'", "\\'")


def _iso(micros: int) -> str:
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S+00:00")
