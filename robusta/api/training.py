"""Point-in-time training frames: rows (entity keys + time) get features as of their time.

    from robusta.training import get_training_frame
    frame = get_training_frame("rows.parquet", ["user_events_1h", "user_engagement"])

Every feature equals the brief's ``value(key, t, W)`` (``end = floor(t, gmin)``, capped by a
version pointer column when given), assembled from the tile tables by the bucketed PIT join
(``robusta.engine.spark.pit``). Tiles missing or stale for the rows' time range are
materialized first (or, with ``materialize_missing=False``, reported with the command to run).
Rows are checked (columns, types, feature names) before any Spark job starts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from robusta.api.logged import logged_frame, logged_table, require_logs
from robusta.api.training_rows import (
    ICEBERG_PREFIX,
    StagedRows,
    TrainingInputError,
    check_columns,
    normalize_times,
    stage_rows,
)
from robusta.engine.base import choose_engine
from robusta.errors import RobustaError
from robusta.plan.model import ServicePlan
from robusta.plan.selection import GroupRequest, resolve_features, services_in
from robusta.plan.services import derived_columns, service_versions
from robusta.spec.durations import floor_to, from_micros
from robusta.store.tiles import TileTables
from robusta.workspace import Workspace, load_workspace

Step = Callable[[str], None]
JOIN_THREADS = 2  # tile groups joined at once on the embedded engine


class MissingTilesError(RobustaError, LookupError):
    """Tiles the rows need are not materialized and materializing was not allowed."""


class StaleTilesError(MissingTilesError):
    """The stored tiles are of another spec version; a reading API never rebuilds them."""


@dataclass
class BackfillReport:
    """What a backfill did: rows, features, tables materialized first, time taken."""

    rows: int = 0
    features: list[str] = field(default_factory=list)
    services: dict[str, str] = field(default_factory=dict)  # service -> version
    materialized: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def get_training_frame(
    rows: Any,
    features: Sequence[str] | None = None,
    *,
    config: str | Path | None = None,
    workspace: Workspace | None = None,
    timestamp_column: str = "ts",
    entity_columns: Mapping[str, str] | None = None,
    version_column: str | None = None,
    materialize_missing: bool = True,
    step: Step = lambda _: None,
    report: BackfillReport | None = None,
    rows_per_task: int | None = None,
    source: str = "tiles",
    since: datetime | None = None,
    engine: str | None = None,
) -> Any:
    """``rows``' columns plus one column per requested feature: a Spark DataFrame on the
    Spark engine (always when ``rows`` is a Spark DataFrame), an Arrow table on the embedded
    engine (``engine``, default the project's ``engine``; :func:`to_pandas` converts either).

    ``source="logged"``: instead, the feature vectors the online client served and logged
    (``online.log``), from ``since``: one row per request with ``request_id``, the entity
    columns, ``ts``, ``version_pointer`` and the features (``rows`` must be None); read with
    pyarrow on the embedded engine, with Spark on Spark (``robusta.api.logged``).

    ``rows``: a Spark DataFrame, a pandas, Polars or Arrow table, or a path (Parquet file or
    folder, CSV with a header, or ``iceberg:<namespace>.<table>`` in the project's catalog).
    ``features``: output names (``user_clicks_1h``), base features (every window), spec
    names, or None for all. Entity ``E`` is read from column ``E`` unless ``entity_columns``
    maps it. A key bucket with more than ``rows_per_task`` rows (hot keys) is split by time
    over tasks (Spark).
    """
    from robusta.engine.spark.derived import with_derived
    from robusta.engine.spark.pit import (
        DEFAULT_ROWS_PER_TASK,
        finish,
        join_group,
        prepare_rows,
        row_counts,
    )
    from robusta.engine.spark.session import spark_session

    started = time.perf_counter()
    workspace = workspace or load_workspace(Path(config) if config else None)
    project_config = workspace.config  # validated: raises the project's problems
    if isinstance(features, str):
        features = [features]
    if source not in ("tiles", "logged"):
        raise TrainingInputError(f'source must be "tiles" or "logged", not "{source}"')
    if source == "logged":
        if rows is not None:
            raise TrainingInputError('source="logged" reads the rows from the log: pass rows=None')
        logs = require_logs(workspace, features, since)  # before any engine starts
        if choose_engine(project_config, engine) == "embedded":
            return logged_table(logs, since)
        return logged_frame(spark_session(project_config.spark), logs, since)
    # Everything that can be wrong with the request is found before Spark starts.
    requests = resolve_features(workspace.plan, features)
    services = services_in(workspace.plan, features)
    entity_columns = service_entity_columns(services, entity_columns)
    times = [timestamp_column, *([version_column] if version_column else [])]
    staged, kinds = stage_rows(rows, project_config.offline, times)
    key_columns = check_columns(kinds, requests, timestamp_column, entity_columns, version_column)
    check_request_columns(kinds, services)
    refuse_stale(TileTables(project_config.offline), requests)
    done = report if report is not None else BackfillReport()
    done.services = service_versions(services)
    if staged.spark_frame is None and choose_engine(project_config, engine) == "embedded":
        joined = _embedded_join(
            workspace,
            staged,
            requests,
            key_columns,
            timestamp_column,
            version_column,
            materialize_missing,
            step,
            done,
        )
        joined = with_derived_table(joined, services)
        done.features += [d.name for s in services for d in s.derived]
        done.seconds = round(time.perf_counter() - started, 2)
        return joined
    step("starting Spark")
    spark = spark_session(project_config.spark)
    frame = spark_rows(spark, staged)
    prepared = prepare_rows(frame, timestamp_column, version_column).persist()
    step("scanning training rows")
    # A version pointer moves windows earlier: the oldest tile needed may be before min(t),
    # and no window of a row ends after its pointer (so no tile after the latest one is read).
    low = (
        "least(min(__robusta_ts), min(__robusta_pointer))"
        if version_column
        else "min(__robusta_ts)"
    )
    high = (
        "max(least(__robusta_ts, coalesce(__robusta_pointer, __robusta_ts)))"
        if version_column
        else "max(__robusta_ts)"
    )
    bounds = prepared.selectExpr("count(1) AS n", f"{low} AS lo", f"{high} AS hi").collect()[0]
    order = row_counts(prepared)  # restores input order without a sampling pass
    joined = prepared
    done.rows = int(bounds["n"])
    joins = _plan_joins(
        workspace,
        requests,
        bounds["lo"],
        bounds["hi"],
        version_column is not None,
        materialize_missing,
        step,
        done,
        engine="spark",
    )
    for request, join in zip(requests, joins, strict=True):
        step(f"joining {request.group.layout.table}")
        joined = join_group(
            joined,
            join,
            key_columns[request.group.layout.table],
            rows_per_task or DEFAULT_ROWS_PER_TASK,
        )
    done.features = [o.name for r in requests for o in r.outputs]
    done.features += [d.name for s in services for d in s.derived]
    done.seconds = round(time.perf_counter() - started, 2)
    finished = finish(joined, version_column is not None, order)
    return with_derived(finished, services) if services else finished


SERVICES_METADATA = b"robusta.services"  # Arrow frames: JSON {service: version}


def service_entity_columns(
    services: Sequence[ServicePlan], given: Mapping[str, str] | None
) -> dict[str, str]:
    """Where each entity is read from: the services' mappings, then ``given`` over them."""
    mapping: dict[str, str] = {}
    for service in services:
        for entity, column in service.entities.items():
            if mapping.setdefault(entity, column) != column:
                raise TrainingInputError(
                    f"services map entity {entity} to both {mapping[entity]} and {column}; "
                    f"say which column holds it with entity_columns={{'{entity}': ...}}"
                )
    return {**mapping, **(given or {})}


def check_request_columns(kinds: Mapping[str, str], services: Sequence[ServicePlan]) -> None:
    """Every request input a derived feature reads is a column of the training rows."""
    for service in services:
        for item in service.derived:
            for name in item.expression.requests:
                if name not in kinds:
                    raise TrainingInputError(
                        f"derived feature {item.name} of service {service.name} reads "
                        f"request.{name}: the training rows need a column {name}"
                    )


def with_derived_table(table: pa.Table, services: Sequence[ServicePlan]) -> pa.Table:
    """An Arrow frame plus its services' derived columns, the service versions in its
    schema metadata (``robusta.services``)."""
    if not services:
        return table
    for name, values in derived_columns(table, services):
        table = table.append_column(name, values)
    meta = dict(table.schema.metadata or {})
    meta[SERVICES_METADATA] = json.dumps(service_versions(services)).encode()
    return table.replace_schema_metadata(meta)


def _embedded_join(
    workspace: Workspace,
    staged: StagedRows,
    requests: Sequence[GroupRequest],
    key_columns: Mapping[str, list[str]],
    timestamp_column: str,
    version_column: str | None,
    materialize_missing: bool,
    step: Step,
    done: BackfillReport,
) -> pa.Table:
    """The PIT join on the embedded engine: Arrow rows, no JVM (``engine.embedded.pit``)."""
    import pyarrow.parquet as pq

    from robusta.engine.embedded.pit import group_features

    times = [timestamp_column, *([version_column] if version_column else [])]
    table = staged.table if staged.table is not None else pq.read_table(str(staged.path))
    table = normalize_times(table, times)
    lo, hi = _bounds(table, timestamp_column, version_column)
    done.rows = table.num_rows
    joins = _plan_joins(
        workspace,
        requests,
        lo,
        hi,
        version_column is not None,
        materialize_missing,
        step,
        done,
        engine="embedded",
    )

    def features(request: GroupRequest, join: Any) -> pa.Table:
        step(f"joining {request.group.layout.table}")
        columns = key_columns[request.group.layout.table]
        return group_features(table, join, columns, timestamp_column, version_column)

    # Groups join side by side: Arrow and numpy release the GIL for much of a join.
    with ThreadPoolExecutor(JOIN_THREADS) as pool:
        parts = list(pool.map(features, requests, joins))
    for part in parts:
        for name in part.column_names:
            table = table.append_column(name, part.column(name))
    done.features = [o.name for r in requests for o in r.outputs]
    return table


def _bounds(
    table: pa.Table, timestamp_column: str, version_column: str | None
) -> tuple[int | None, int | None]:
    """The oldest time a window may start from and the latest a window may end at, as the
    Spark path's scan: a pointer moves windows earlier, and no window ends after it."""
    ts = pc.cast(table.column(timestamp_column), pa.int64())
    lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
    if version_column is not None:
        pointer = pc.cast(table.column(version_column), pa.int64())
        low = [v for v in (lo, pc.min(pointer).as_py()) if v is not None]
        lo = min(low) if low else None
        hi = pc.max(pc.min_element_wise(ts, pc.coalesce(pointer, ts))).as_py()
    return lo, hi


def spark_rows(spark: Any, staged: StagedRows) -> Any:
    """Staged training rows as a Spark DataFrame."""
    import pyarrow.parquet as pq

    from robusta.engine.spark.session import on_this_host

    if staged.spark_frame is not None:
        return staged.spark_frame
    if staged.table is not None:
        return spark.createDataFrame(staged.table)
    if staged.path is None:
        raise TrainingInputError("the staged training rows hold no frame, table or path")
    if not on_this_host(spark):  # executors elsewhere cannot open this host's files
        return spark.createDataFrame(pq.read_table(staged.path))
    return spark.read.parquet(staged.path)


def refuse_stale(tables: TileTables, requests: Sequence[GroupRequest]) -> None:
    """A stale tile table (the spec changed) is reported with the command that rebuilds it;
    a reading API never rebuilds one (a stream and an upload may depend on it)."""
    from robusta.store.tiles import STALE, table_state

    for request in requests:
        table = tables.load(request.group.layout.table)
        if table is not None and table_state(table, request.group, request.spec.hash) == STALE:
            raise _stale(table, request)


def _stale(table: Any, request: GroupRequest) -> StaleTilesError:
    from robusta.store.tiles import stale_reason

    name = request.spec.name
    return StaleTilesError(
        f"the tiles of spec {name} {stale_reason(table, request.group, request.spec.hash)}: "
        f"run `robusta materialize --spec {name} --rebuild` first (it swaps the new tiles in "
        "with one commit), then upload them if they are served"
    )


@dataclass(frozen=True)
class _Missing:
    """Tiles a request needs that its table lacks, and the run that computes them."""

    spec: str
    ranged: tuple[int, int] | None  # the rows' range alone; None: the whole spec
    why: str

    @property
    def command(self) -> str:
        command = f"robusta materialize --spec {self.spec}"
        if self.ranged is not None:
            command += f" --start {_iso(self.ranged[0])} --end {_iso(self.ranged[1])}"
        return command


def _plan_joins(
    workspace: Workspace,
    requests: Sequence[GroupRequest],
    lo: int | None,
    hi: int | None,
    with_pointer: bool,
    materialize_missing: bool,
    step: Step,
    report: BackfillReport,
    *,
    engine: str | None = None,
) -> list[Any]:
    """One ``GroupJoin`` per request, over tile tables made ready first: tiles missing for
    the rows' time range (or only lacking added features) are computed, every spec that
    needs all its tiles in one materialize run (its groups build side by side)."""
    from robusta.engine.pit_join import GroupJoin, split_buckets
    from robusta.store.tiles import TileTables

    tables = TileTables(workspace.config.offline)
    spans = [_needed_span(request, lo, hi) for request in requests]
    missing = [
        need
        for request, span in zip(requests, spans, strict=True)
        if (need := _missing(tables, request, span, step)) is not None
    ]
    _compute_missing(workspace, missing, materialize_missing, step, report, engine)
    joins = []
    for request, (since, end) in zip(requests, spans, strict=True):
        table = tables.load(request.group.layout.table)
        files, sizes = tables.bucket_files(table, since, end)
        parts = split_buckets(sizes, workspace.config.offline.join_memory)
        if parts:
            step(
                f"{request.group.layout.table}: {len(parts)} key buckets split in "
                f"{sum(parts.values())} parts to fit offline.join_memory"
            )
        join = GroupJoin(
            request.group, request.outputs, files, since, with_pointer, tables.storage, parts
        )
        joins.append(join)
    return joins


def _needed_span(
    request: GroupRequest, lo: int | None, hi: int | None
) -> tuple[int | None, int | None]:
    """The tiles the rows' windows read: from the oldest window start (None: lifetime) to
    the latest window end."""
    gmin = request.group.layout.finest.micros
    durations = [o.window.duration for o in request.outputs]
    lifetime = any(d is None for d in durations)
    longest = max((d.micros for d in durations if d is not None), default=0)
    end = None if hi is None else floor_to(hi, gmin)  # windows end at floor(t) or earlier
    since = None if lifetime or lo is None else floor_to(lo, gmin) - longest
    return since, end


def _missing(
    tables: TileTables,
    request: GroupRequest,
    needed: tuple[int | None, int | None],
    step: Step,
) -> _Missing | None:
    """What the group's tile table lacks for the rows' time range, or None. A stale table
    (the spec changed) is never rebuilt here: a stream and an upload may depend on it, so
    that is reported with the command to run."""
    from robusta.store.tiles import ADD, STALE, coverage, table_state, uncovered

    since, end = needed
    name = request.spec.name
    table = tables.load(request.group.layout.table)
    state = None if table is None else table_state(table, request.group, request.spec.hash)
    if state == STALE:
        raise _stale(table, request)
    spans = [] if table is None else coverage(table)
    ends = [b for _, b in spans if b is not None]
    if end is not None and ends and end > max(ends):
        # Rows after the coverage get the events ingested so far: rerunning cannot complete
        # buckets the data has not reached yet.
        step(
            f"rows reach past the end of spec {name}'s complete tiles ({_iso(max(ends))}); "
            "their features use the events ingested so far"
        )
        end = max(ends)
    added = state == ADD
    if not (added or table is None or uncovered(spans, (since, end))):
        return None
    ranged: tuple[int, int] | None = None  # the rows' range, materialized alone
    if table is not None and not added and since is not None and end is not None:
        ranged = (since, end)
    why = (
        "without the added features (merge on read computes just those)"
        if added
        else "missing for the rows' time range"
    )
    return _Missing(name, ranged, why)


def _compute_missing(
    workspace: Workspace,
    missing: Sequence[_Missing],
    materialize_missing: bool,
    step: Step,
    report: BackfillReport,
    engine: str | None,
) -> None:
    """Materialize what ``missing`` names: one run of every spec needing all its tiles
    (groups side by side), then one ranged run per other spec over its groups' ranges."""
    from robusta.jobs.materialize import materialize

    if missing and not materialize_missing:
        first = missing[0]
        raise MissingTilesError(
            f"tiles of spec {first.spec} are {first.why}: run `{first.command}` first"
        )
    per_spec: dict[str, _Missing] = {}
    for need in missing:
        seen = per_spec.setdefault(need.spec, need)
        if seen.ranged is not None and (need.ranged is None or need != seen):
            ranged = (
                None
                if need.ranged is None
                else (min(seen.ranged[0], need.ranged[0]), max(seen.ranged[1], need.ranged[1]))
            )
            per_spec[need.spec] = _Missing(need.spec, ranged, seen.why)
    for need in per_spec.values():
        step(f"tiles of {need.spec} are {need.why}: running `{need.command}`")
        if need.ranged is not None:
            start, stop = (from_micros(t) for t in need.ranged)
            materialize(workspace, [need.spec], start, stop, step=step, engine=engine)
    whole = [need.spec for need in per_spec.values() if need.ranged is None]
    if whole:
        materialize(workspace, whole, step=step, engine=engine)
    report.materialized.extend(per_spec)


def _iso(micros: int) -> str:
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S")


def to_arrow(frame: Any) -> pa.Table:
    """A training frame from either engine as an Arrow table (a Spark frame is collected:
    keep it small)."""
    if isinstance(frame, pa.Table):
        return frame
    table: pa.Table = frame.toArrow()
    return table


def to_pandas(frame: Any) -> Any:
    """A small training frame as pandas (needs pandas installed); times stay UTC-aware
    (Spark hands them over as naive times of its session time zone, UTC)."""
    if isinstance(frame, pa.Table):
        return frame.to_pandas()
    pandas_frame = frame.toPandas()
    for f in frame.schema.fields:
        if f.dataType.typeName() == "timestamp" and pandas_frame[f.name].dt.tz is None:
            pandas_frame[f.name] = pandas_frame[f.name].dt.tz_localize("UTC")
    return pandas_frame


__all__ = [
    "ICEBERG_PREFIX",
    "BackfillReport",
    "TrainingInputError",
    "get_training_frame",
    "resolve_features",
    "to_arrow",
    "to_pandas",
]
