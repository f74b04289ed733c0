"""Event counts of a monitored source in Arrow (the embedded engine's side of the volumes,
``store.volumes``): what ``engine.spark.volumes.count_sql`` counts on Spark, row for row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from robusta.spec.durations import floor_to
from robusta.spec.model import MonitorConfig
from robusta.store.volumes import TOTAL

_UTC = pa.timestamp("us", tz="UTC")


def count_events(
    events: pa.Table, monitor: MonitorConfig, start: int | None, end: int | None
) -> tuple[pa.Table, int | None, int | None]:
    """``events`` holds the monitor's timestamp (``timestamp[us, UTC]``) and its segment
    columns as text. Returns the counts (bucket, segment, value, events) and the whole
    buckets ``[lo, hi)`` they cover."""
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
