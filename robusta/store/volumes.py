"""The event-volumes table: per source, time bucket and segment value, the events counted.

``<namespace>.event_volumes`` holds one row per (source, segment, value, bucket): a
materialize of a range replaces that range's buckets (:func:`store_counts`), a stream adds
each micro-batch's counts once (:func:`add_volumes`: the batch is recorded in the commit, as a
table property per stream checked in O(1) before adding, and in the snapshot summary).
``robusta monitor`` reads it
(``api.monitor``); the engines count (``engine.embedded.volumes``, ``engine.spark.volumes``).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from robusta.errors import RobustaError
from robusta.spec.durations import from_micros, to_micros
from robusta.spec.model import MonitorConfig, OfflineConfig, SourceConfig

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
BATCH_PROPERTY = "robusta.volumes-batch"  # snapshot summary: "<stream id>:<batch id>"
# Table property per stream: the last batch added, checked in O(1) by a replay.
ADDED_PREFIX = "robusta.volumes-added."


class NotMonitoredError(RobustaError, ValueError):
    """Volumes asked of a source without a monitor section."""


def monitor_of(source: SourceConfig) -> MonitorConfig:
    """The source's monitor section (the callers chose monitored sources)."""
    if source.monitor is None:
        raise NotMonitoredError(
            f'source "{source.name}" has no monitor section: add `monitor: {{timestamp: '
            "<column>, segments: [<column>, ...]}` to it in robusta.yaml"
        )
    return source.monitor


def store_counts(
    offline: OfflineConfig, source: SourceConfig, counts: pa.Table, lo: int | None, hi: int | None
) -> int:
    """Replace the buckets ``[lo, hi)`` of the source's volumes with ``counts`` (bucket,
    segment, value, events); returns the rows written."""
    rows = volume_rows(source.name, counts, monitor_of(source).granularity.micros)
    _replace(offline, source.name, rows, lo, hi)
    return int(rows.num_rows)


def volume_rows(source: str, counts: pa.Table, size: int) -> pa.Table:
    """Counts (bucket, segment, value, events) as rows of the volumes table."""
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
    table = volumes_table(offline, create=True)
    if table.current_snapshot() is None:  # nothing to replace yet
        table.append(rows)
        return
    scope: Any = equal("source", source)
    if lo is not None:
        scope = expressions.And(scope, at_least("bucket_start", iso(lo)))
    if hi is not None:
        scope = expressions.And(scope, below("bucket_start", iso(hi)))
    table.overwrite(rows, overwrite_filter=scope)


def volumes_table(offline: OfflineConfig, *, create: bool) -> Any:
    """The volumes table (None when it does not exist and ``create`` is false)."""
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


def add_volumes(offline: OfflineConfig, source: str, rows: pa.Table, batch: str) -> bool:
    """Add ``rows``' counts to the stored ones of the same buckets, in one commit marked with
    ``batch``; False (nothing done) when that batch was added before (a replay)."""
    from pyiceberg import expressions

    table = volumes_table(offline, create=True)
    if _added(table, batch):
        return False
    stream, _, number = batch.rpartition(":")
    marker = {BATCH_PROPERTY: batch}
    mark = {_mark(stream): number}
    if rows.num_rows == 0:
        return True  # nothing to add (nor to double on a replay): no commit
    buckets = sorted(set(rows.column("bucket_start").cast(pa.int64()).to_pylist()))
    equal: Any = expressions.EqualTo  # pydantic models: untyped positionals
    among: Any = expressions.In
    scope = expressions.And(
        equal("source", source), among("bucket_start", [iso(b) for b in buckets])
    )
    stored = table.scan(row_filter=scope).to_arrow() if table.current_snapshot() else None
    merged = _summed(rows if stored is None else pa.concat_tables([stored, rows]))
    with table.transaction() as tx:  # the counts and the mark in one commit
        tx.set_properties(**mark)
        if stored is None or stored.num_rows == 0:
            tx.append(merged, snapshot_properties=marker)
        else:
            tx.overwrite(merged, overwrite_filter=scope, snapshot_properties=marker)
    return True


def _mark(stream: str) -> str:
    """The table property holding a stream's last batch (its id is a checkpoint path)."""
    return ADDED_PREFIX + hashlib.sha256(stream.encode()).hexdigest()[:16]


def _added(table: Any, batch: str) -> bool:
    """Whether ``batch`` ("<stream id>:<batch id>") was added: the stream's mark (its last
    batch added; batches are added in order), or, before marks, a snapshot naming it."""
    stream, _, number = batch.rpartition(":")
    last = table.properties.get(_mark(stream))
    if last is not None and number.isdigit():
        return int(last) >= int(number)
    return any(
        s.summary is not None and s.summary.additional_properties.get(BATCH_PROPERTY) == batch
        for s in table.snapshots()
    )


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
        [
            "events" if c == "events_sum" else "recorded_at" if c == "recorded_at_max" else c
            for c in total.column_names
        ]
    )
    return total.select(VOLUMES_SCHEMA.names).cast(VOLUMES_SCHEMA)


def iso(micros: int) -> str:
    """A bucket start as the table's filters spell it."""
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S+00:00")
