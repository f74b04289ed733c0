"""Event counts of a monitored source in Spark SQL (the Spark engine's side of the volumes,
``store.volumes``); ``engine.embedded.volumes.count_events`` counts the same in Arrow."""

from __future__ import annotations

from typing import Any

from robusta.spec.durations import floor_to
from robusta.spec.model import OfflineConfig, SourceConfig
from robusta.store.volumes import TOTAL, monitor_of, store_counts


def record_volumes(
    spark: Any,
    offline: OfflineConfig,
    source: SourceConfig,
    start: int | None = None,
    end: int | None = None,
) -> int:
    """Count ``source``'s events (registered as a view of its name) of whole buckets covering
    ``[start, end)`` (default: all) and replace those buckets' counts in the volumes table;
    returns the rows written."""
    size = monitor_of(source).granularity.micros
    lo = None if start is None else floor_to(start, size)
    hi = None if end is None else -floor_to(-end, size)
    counts = spark.sql(count_sql(source, lo, hi)).toArrow()
    return store_counts(offline, source, counts, lo, hi)


def count_sql(
    source: SourceConfig, lo: int | None, hi: int | None, view: str | None = None
) -> str:
    """Counts (bucket, segment, value, events) of the view ``view`` (default: the source's
    name) within ``[lo, hi)``."""
    monitor = monitor_of(source)
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


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _text(name: str) -> str:
    return name.replace("\\", "\\\\").replace("'", "\\'")
