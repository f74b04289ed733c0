"""Logged feature vectors read back: training rows as served, on either engine.

The online client logs what it served (:mod:`robusta.serving.feature_log`). Those rows are
training rows as they are, behind ``get_training_frame(None, features, source="logged")``:
:func:`logged_table` (Arrow, the embedded engine: no JVM) and :func:`logged_frame` (a Spark
DataFrame) give the same rows. :mod:`robusta.api.consistency` recomputes them with the PIT join.
This module only reads logs: it imports no other API module (``training`` and
``consistency`` import it, never the reverse).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.errors import RobustaError
from robusta.plan.model import SpecPlan
from robusta.plan.selection import resolve_features
from robusta.spec.durations import to_micros
from robusta.spec.model import OfflineConfig, OnlineConfig
from robusta.store.catalog import storage_of
from robusta.store.feature_log import (
    REQUEST_ID,
    REQUESTED,
    TS,
    VERSION_POINTER,
    entity_types,
    log_schema,
    log_table,
)
from robusta.store.files import Storage
from robusta.workspace import Workspace


class NoLogError(RobustaError, LookupError):
    """Nothing is logged for what was asked."""


def log_files(offline: OfflineConfig, spec: SpecPlan) -> list[str]:
    """The data files of the spec's feature log (none when nothing is logged); found with
    pyiceberg alone, so a request for logs that do not exist fails before any engine starts."""
    from pyiceberg.exceptions import NoSuchTableError

    from robusta.store.catalog import open_catalog

    catalog = open_catalog(offline)
    try:
        table = catalog.load_table(f"{offline.namespace}.{log_table(spec.name)}")
    except NoSuchTableError:
        return []
    return [task.file.file_path for task in table.scan().plan_files()]


@dataclass(frozen=True)
class SpecLog:
    """What to read of one spec's log: its requested outputs and the log's files."""

    spec: SpecPlan
    outputs: list[str]
    files: list[str]
    storage: Storage  # opens the files


def require_logs(
    workspace: Workspace, features: Sequence[str] | None, since: datetime | None
) -> list[SpecLog]:
    """The logs holding ``features``, each checked to exist (before any engine starts)."""
    config = workspace.config
    requests = resolve_features(workspace.plan, features)
    by_spec: dict[str, tuple[SpecPlan, list[str]]] = {}
    for request in requests:
        _, outputs = by_spec.setdefault(request.spec.name, (request.spec, []))
        outputs.extend(o.name for o in request.outputs)
    logs = []
    for name, (spec, outputs) in by_spec.items():
        files = log_files(config.offline, spec)
        if not files:
            why = how_to_log(config.online)
            raise NoLogError(f"nothing of spec {name} is logged{since_text(since)}: {why}")
        logs.append(SpecLog(spec, outputs, files, storage_of(config.offline)))
    return logs


def how_to_log(online: OnlineConfig) -> str:
    """What to do so that lookups are logged."""
    log = online.options.get("log") or {}
    if not log.get("enabled", False):
        return "online.log is off in robusta.yaml: set `online: {log: true}` and serve lookups"
    return "serve lookups with FeatureClient first (it logs the vectors it serves)"


def _require_some(logs: Sequence[SpecLog]) -> None:
    if not logs:  # require_logs gives at least one
        raise NoLogError("no feature log given: ask require_logs for the logs to read")


def since_text(since: datetime | None) -> str:
    return "" if since is None else f" since {since.isoformat()}"


# ---- Arrow (the embedded engine) --------------------------------------------------------
def read_log_table(storage: Storage, files: Sequence[str], since: datetime | None) -> pa.Table:
    """Logged rows of ``files`` (optionally from ``since``) as one Arrow table. Columns are
    matched by name and a file written before an output was added gets nulls for it, as
    Spark's ``mergeSchema`` reads them."""
    parts = [storage.read_table(f) for f in files]
    rows = pa.concat_tables(parts, promote_options="default")
    if since is not None:
        micros = pc.cast(rows.column(TS), pa.int64())
        rows = rows.filter(pc.greater_equal(micros, to_micros(since)))  # a null ts: dropped
    return rows


def logged_table(logs: Sequence[SpecLog], since: datetime | None) -> pa.Table:
    """:func:`logged_frame` on Arrow: one row per request (first seen first) with the
    request id, entity columns, ``ts``, ``version_pointer`` and the logs' outputs; the specs'
    rows joined on the request (requests missing from a spec's log are left out)."""
    _require_some(logs)
    frame: pa.Table | None = None
    for log in logs:
        rows = read_log_table(log.storage, log.files, since)
        served = rows.filter(pa.array(requested_any(rows.column(REQUESTED), log.outputs)))
        merged = _merge_requests(served, log)
        if frame is None:
            frame = merged
            continue
        at = pc.index_in(frame.column(REQUEST_ID), value_set=merged.column(REQUEST_ID))
        both = pc.is_valid(at)
        frame, taken = frame.filter(both), merged.take(at.filter(both))
        for name in log.outputs:
            frame = frame.append_column(name, taken.column(name))
    return frame if frame is not None else pa.table({})


def requested_any(requested: pa.ChunkedArray, names: Collection[str]) -> np.ndarray:
    """Per row, whether its ``requested`` list holds one of ``names`` (a null list: no)."""
    lists = requested.combine_chunks()
    flat = pc.list_flatten(lists)
    hit = pc.is_in(flat, value_set=pa.array(sorted(names), pa.string())).fill_null(False)
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    out = np.zeros(len(lists), np.bool_)
    out[parents[hit.to_numpy(zero_copy_only=False)]] = True
    return out


def _merge_requests(served: pa.Table, log: SpecLog) -> pa.Table:
    """One row per request id from the log's rows (one per tile group): keys, time and
    pointer from the first row that has them, each output from the first row that
    requested it (a null value is a value, so pick by request, not by non-null)."""
    ids = served.column(REQUEST_ID).combine_chunks()
    distinct = pc.unique(ids)  # first seen first; a null id is one request, as in groupBy
    group = pc.index_in(ids, value_set=distinct).to_numpy(zero_copy_only=False)
    keys = list(entity_types(log.spec))
    columns: dict[str, Any] = {REQUEST_ID: distinct}
    for name in (*keys, TS, VERSION_POINTER):
        valid = pc.is_valid(served.column(name)).to_numpy(zero_copy_only=False)
        columns[name] = served.column(name).take(_first_where(group, valid, len(distinct)))
    types = {o.name: o.type for o in log.spec.outputs}
    for name in log.outputs:
        if name not in served.column_names:  # never logged: nothing was served for it
            columns[name] = pa.nulls(len(distinct), types[name])
            continue
        asked = requested_any(served.column(REQUESTED), [name])
        columns[name] = served.column(name).take(_first_where(group, asked, len(distinct)))
    return pa.table(columns)


def _first_where(group: np.ndarray, mask: np.ndarray, groups: int) -> pa.Array:
    """Per group, the index of its first row where ``mask`` holds (null when none does)."""
    rows = np.flatnonzero(mask)
    found, first = np.unique(group[rows], return_index=True)
    index = np.zeros(groups, np.int64)
    missing = np.ones(groups, np.bool_)
    index[found] = rows[first]
    missing[found] = False
    return pa.array(index, pa.int64(), mask=missing)


# ---- Spark ------------------------------------------------------------------------------
def read_log(
    spark: Any, storage: Storage, spec: SpecPlan, files: Sequence[str], since: datetime | None
) -> Any:
    """Logged rows of ``files`` (optionally from ``since``) as a Spark DataFrame in the log's
    columns (a file written before an output was added has nulls for it); the tasks read
    the files (``engine.spark.files``)."""
    from robusta.engine.spark.files import read_files

    rows = read_files(spark, storage, files, log_schema(spec))
    if since is not None:
        rows = rows.where(f"unix_micros({TS}) >= {to_micros(since)}")
    return rows


def logged_frame(spark: Any, logs: Sequence[SpecLog], since: datetime | None) -> Any:
    """Logged rows with the served values of the logs' outputs (specs joined per request)."""
    from pyspark.sql import functions as F

    _require_some(logs)
    frame = None
    for log in logs:
        rows = read_log(spark, log.storage, log.spec, log.files, since)
        outputs = log.outputs
        served = rows.where(F.arrays_overlap(F.col(REQUESTED), F.array(*map(F.lit, outputs))))
        keys = list(entity_types(log.spec))
        # One logged row per tile group: gather each request's values from the rows that
        # requested them (a null value is a value, so pick by request, not by non-null).
        merged = served.groupBy(REQUEST_ID).agg(
            *(F.first(c, ignorenulls=True).alias(c) for c in (*keys, TS, VERSION_POINTER)),
            *(_requested_value(o).alias(o) for o in outputs),
        )
        if frame is None:
            frame = merged.select(REQUEST_ID, *keys, TS, VERSION_POINTER, *outputs)
        else:
            frame = frame.join(merged.select(REQUEST_ID, *outputs), REQUEST_ID, "inner")
    return frame


def _requested_value(name: str) -> Any:
    from pyspark.sql import functions as F

    picked = F.when(F.array_contains(F.col(REQUESTED), name), F.struct(F.col(name).alias("v")))
    return F.first(picked, ignorenulls=True).getField("v")
