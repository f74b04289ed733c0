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

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robusta.errors import RobustaError
from robusta.plan.selection import GroupRequest, resolve_features
from robusta.spec.durations import floor_to, from_micros
from robusta.spec.suggest import did_you_mean
from robusta.workspace import Workspace, load_workspace

if TYPE_CHECKING:
    from robusta.store.tiles import TileTables

Step = Callable[[str], None]
ICEBERG_PREFIX = "iceberg:"
_TIME_TYPES = ("timestamp", "timestamp_ntz", "date")


class TrainingInputError(RobustaError, ValueError):
    """Training rows that cannot be joined as given (missing column, wrong type, ...)."""


class MissingTilesError(RobustaError, LookupError):
    """Tiles the rows need are not materialized and materializing was not allowed."""


@dataclass
class BackfillReport:
    """What a backfill did: rows, features, tables materialized first, time taken."""

    rows: int = 0
    features: list[str] = field(default_factory=list)
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
) -> Any:
    """A Spark DataFrame: ``rows``' columns plus one column per requested feature.

    ``source="logged"``: instead, the feature vectors the online client served and logged
    (``online.log``), from ``since``: entity columns, ``ts``, ``version_pointer`` and the
    features (``rows`` must be None).

    ``rows``: a Spark DataFrame, a pandas DataFrame, or a path (Parquet file or folder, CSV
    with a header, or ``iceberg:<namespace>.<table>`` in the project's catalog). ``features``:
    output names (``user_clicks_1h``), base features (every window), spec names, or None for
    all. Entity ``E`` is read from column ``E`` unless ``entity_columns`` maps it. A key
    bucket with more than ``rows_per_task`` rows (hot keys) is split by time over tasks.
    """
    from robusta.engine.spark.pit import (
        DEFAULT_ROWS_PER_TASK,
        finish,
        join_group,
        prepare_rows,
        row_counts,
    )
    from robusta.engine.spark.session import spark_session

    started = time.perf_counter()
    workspace = (workspace or load_workspace(Path(config) if config else None)).require_valid()
    project_config = workspace.project.config
    assert project_config is not None  # require_valid guarantees it
    if isinstance(features, str):
        features = [features]
    if source not in ("tiles", "logged"):
        raise TrainingInputError(f'source must be "tiles" or "logged", not "{source}"')
    if source == "logged":
        from robusta.logged import logged_frame

        if rows is not None:
            raise TrainingInputError('source="logged" reads the rows from the log: pass rows=None')
        return logged_frame(spark_session(project_config.spark), workspace, features, since)
    requests = resolve_features(workspace.plan, features)
    step("starting Spark")
    spark = spark_session(project_config.spark)
    frame = read_rows(spark, rows, workspace)
    key_columns = check_rows(frame, requests, timestamp_column, entity_columns, version_column)
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
    bounds = prepared.selectExpr(
        "count(1) AS n", f"{low} AS lo", f"{high} AS hi"
    ).collect()[0]
    order = row_counts(prepared)  # restores input order without a sampling pass
    joined = prepared
    done = report if report is not None else BackfillReport()
    done.rows = int(bounds["n"])
    for request in requests:
        join = _plan_join(
            workspace,
            request,
            bounds["lo"],
            bounds["hi"],
            version_column is not None,
            materialize_missing,
            step,
            done,
        )
        step(f"joining {request.group.layout.table}")
        joined = join_group(
            joined,
            join,
            key_columns[request.group.layout.table],
            rows_per_task or DEFAULT_ROWS_PER_TASK,
        )
    done.features = [o.name for r in requests for o in r.outputs]
    done.seconds = round(time.perf_counter() - started, 2)
    return finish(joined, version_column is not None, order)


def read_rows(spark: Any, rows: Any, workspace: Workspace) -> Any:
    """Training rows as a Spark DataFrame."""
    if hasattr(rows, "sparkSession") and hasattr(rows, "schema"):
        return rows
    if type(rows).__module__.startswith("pandas"):
        return spark.createDataFrame(rows)
    if isinstance(rows, str) and rows.startswith(ICEBERG_PREFIX):
        return _read_iceberg(spark, rows[len(ICEBERG_PREFIX) :], workspace)
    path = Path(rows).absolute()  # Spark resolves relative paths from the JVM's own cwd
    if not path.exists():
        raise TrainingInputError(f"no training rows at {path}: give a Parquet or CSV path")
    if path.suffix.lower() == ".csv" or (path.is_dir() and any(path.glob("*.csv"))):
        return spark.read.option("header", "true").option("inferSchema", "true").csv(str(path))
    return spark.read.parquet(str(path))


def _read_iceberg(spark: Any, identifier: str, workspace: Workspace) -> Any:
    from pyiceberg.exceptions import NoSuchTableError

    from robusta.store.catalog import open_catalog

    assert workspace.project.config is not None
    catalog = open_catalog(workspace.project.config.offline)
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError as exc:
        raise TrainingInputError(f'no Iceberg table "{identifier}" in the catalog') from exc
    files = [task.file.file_path for task in table.scan().plan_files()]
    if not files:
        raise TrainingInputError(f'Iceberg table "{identifier}" has no rows')
    return spark.read.parquet(*files)


def check_rows(
    frame: Any,
    requests: Sequence[GroupRequest],
    timestamp_column: str,
    entity_columns: Mapping[str, str] | None,
    version_column: str | None,
) -> dict[str, list[str]]:
    """Check the rows' columns before any job runs; returns each table's key columns."""
    types = {f.name: f.dataType.typeName() for f in frame.schema.fields}
    mapping = dict(entity_columns or {})

    def need(column: str, what: str, allowed: tuple[str, ...]) -> None:
        if column not in types:
            raise TrainingInputError(
                f'the training rows have no {what} column "{column}"'
                f"{did_you_mean(column, types)}; columns: {', '.join(types)}"
            )
        if types[column] not in allowed:
            raise TrainingInputError(
                f'{what} column "{column}" is {types[column]}; it must be one of '
                f"{', '.join(allowed)} (CAST it first)"
            )

    need(timestamp_column, "timestamp", (*_TIME_TYPES, "string"))
    if version_column is not None:
        need(version_column, "version-pointer", (*_TIME_TYPES, "string"))
    keys: dict[str, list[str]] = {}
    for request in requests:
        columns = []
        for key in request.group.layout.keys:
            column = mapping.get(key.entity, key.entity)
            need(column, f"{key.entity} entity", ("string", "long", "integer", "short", "byte"))
            columns.append(column)
        keys[request.group.layout.table] = columns
    return keys


def _plan_join(
    workspace: Workspace,
    request: GroupRequest,
    lo: int | None,
    hi: int | None,
    with_pointer: bool,
    materialize_missing: bool,
    step: Step,
    report: BackfillReport,
) -> Any:
    from robusta.engine.spark.pit import GroupJoin
    from robusta.store.tiles import TileTables

    assert workspace.project.config is not None
    tables = TileTables(workspace.project.config.offline)
    layout = request.group.layout
    gmin = layout.finest.micros
    durations = [o.window.duration for o in request.outputs]
    lifetime = any(d is None for d in durations)
    longest = max((d.micros for d in durations if d is not None), default=0)
    end = None if hi is None else floor_to(hi, gmin)  # windows end at floor(t) or earlier
    since = None if lifetime or lo is None else floor_to(lo, gmin) - longest
    table = _ready_table(
        tables, workspace, request, (since, end), materialize_missing, step, report
    )
    files = tables.files_by_bucket(table, since, end)
    return GroupJoin(request.group, request.outputs, files, since, with_pointer)


def _ready_table(
    tables: TileTables,
    workspace: Workspace,
    request: GroupRequest,
    needed: tuple[int | None, int | None],
    materialize_missing: bool,
    step: Step,
    report: BackfillReport,
) -> Any:
    """The group's tile table, materialized first when missing, stale or not covering."""
    from robusta.materialize import materialize
    from robusta.store.tiles import ADD, STALE, coverage, table_state, uncovered

    since, end = needed
    name = request.spec.name
    table = tables.load(request.group.layout.table)
    state = None if table is None else table_state(table, request.group, request.spec.hash)
    stale, added = state == STALE, state == ADD
    missing = table is None or uncovered(coverage(table), needed)
    if not (stale or added or missing):
        return table
    ranged = table is not None and not stale and not added and since is not None and end is not None
    why = (
        "stale (the spec changed)"
        if stale
        else "without the added features (merge on read computes just those)"
        if added
        else "missing for the rows' time range"
    )
    command = f"robusta materialize --spec {name}" + (" --rebuild" if stale else "")
    if ranged:
        assert since is not None and end is not None
        command += f" --start {_iso(since)} --end {_iso(end)}"
    if not materialize_missing:
        raise MissingTilesError(f"tiles of spec {name} are {why}: run `{command}` first")
    step(f"tiles of {name} are {why}: running `{command}`")
    if ranged:
        assert since is not None and end is not None
        materialize(workspace, [name], from_micros(since), from_micros(end), step=step)
    else:
        materialize(workspace, [name], rebuild=stale, step=step)
    report.materialized.append(name)
    return tables.load(request.group.layout.table)


def _iso(micros: int) -> str:
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S")


def to_pandas(frame: Any) -> Any:
    """A small training frame as pandas (needs pandas installed)."""
    return frame.toPandas()


__all__ = ["BackfillReport", "get_training_frame", "resolve_features", "to_pandas"]
