"""Logged feature vectors as Spark frames: training rows, and the consistency report.

The online client logs what it served (:mod:`robusta.serving.feature_log`). Those rows are
training rows as they are (:func:`logged_frame`, behind ``get_training_frame(None, features,
source="logged")``), and the evidence for the product's promise: :func:`consistency`
recomputes every logged row with the PIT join at the logged version pointer and reports, per
feature, the share of rows whose served value equals the recomputed one exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from robusta.errors import RobustaError
from robusta.plan.model import SpecPlan
from robusta.plan.selection import resolve_features
from robusta.serving.feature_log import (
    REQUEST_ID,
    REQUESTED,
    TS,
    VERSION_POINTER,
    entity_types,
    log_table,
)
from robusta.spec.durations import to_micros
from robusta.workspace import Workspace

LOGGED = "__logged__"  # prefix of a served value beside its recomputed one


class NoLogError(RobustaError, LookupError):
    """Nothing is logged for what was asked."""


def log_files(workspace: Workspace, spec: SpecPlan) -> list[str]:
    """The data files of the spec's feature log (none when nothing is logged); found with
    pyiceberg alone, so a request for logs that do not exist fails before Spark starts."""
    from pyiceberg.exceptions import NoSuchTableError

    from robusta.store.catalog import open_catalog

    config = workspace.project.config
    assert config is not None
    catalog = open_catalog(config.offline)
    try:
        table = catalog.load_table(f"{config.offline.namespace}.{log_table(spec.name)}")
    except NoSuchTableError:
        return []
    return [task.file.file_path for task in table.scan().plan_files()]


def read_log(spark: Any, files: Sequence[str], since: datetime | None) -> Any:
    """Logged rows of ``files`` (optionally from ``since``) as a Spark DataFrame."""
    rows = spark.read.option("mergeSchema", "true").parquet(*files)
    if since is not None:
        rows = rows.where(f"unix_micros({TS}) >= {to_micros(since)}")
    return rows


@dataclass(frozen=True)
class SpecLog:
    """What to read of one spec's log: its requested outputs and the log's files."""

    spec: SpecPlan
    outputs: list[str]
    files: list[str]


def require_logs(
    workspace: Workspace, features: Sequence[str] | None, since: datetime | None
) -> list[SpecLog]:
    """The logs holding ``features``, each checked to exist (before any engine starts)."""
    requests = resolve_features(workspace.plan, features)
    by_spec: dict[str, list[str]] = {}
    for request in requests:
        by_spec.setdefault(request.spec.name, []).extend(o.name for o in request.outputs)
    logs = []
    for name, outputs in by_spec.items():
        spec = workspace.plan.spec(name)
        assert spec is not None
        files = log_files(workspace, spec)
        if not files:
            why = _how_to_log(workspace)
            raise NoLogError(f"nothing of spec {name} is logged{_since(since)}: {why}")
        logs.append(SpecLog(spec, outputs, files))
    return logs


def _how_to_log(workspace: Workspace) -> str:
    config = workspace.project.config
    log = {} if config is None else config.online.options.get("log") or {}
    if not log.get("enabled", False):
        return "online.log is off in robusta.yaml: set `online: {log: true}` and serve lookups"
    return "serve lookups with FeatureClient first (it logs the vectors it serves)"


def logged_frame(
    spark: Any, workspace: Workspace, logs: Sequence[SpecLog], since: datetime | None
) -> Any:
    """Logged rows with the served values of the logs' outputs (specs joined per request)."""
    from pyspark.sql import functions as F

    frame = None
    for log in logs:
        rows = read_log(spark, log.files, since)
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
    assert frame is not None
    return frame


def _requested_value(name: str) -> Any:
    from pyspark.sql import functions as F

    picked = F.when(F.array_contains(F.col(REQUESTED), name), F.struct(F.col(name).alias("v")))
    return F.first(picked, ignorenulls=True).getField("v")


def _since(since: datetime | None) -> str:
    return "" if since is None else f" since {since.isoformat()}"


# ---- consistency ------------------------------------------------------------------------
@dataclass
class FeatureMatch:
    """One feature's served values against the recomputed ones."""

    feature: str
    rows: int  # logged rows that requested it (served from the store)
    matched: int
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few mismatches

    @property
    def share(self) -> float:
        return self.matched / self.rows if self.rows else 1.0


@dataclass
class ConsistencyReport:
    since: str | None
    max_mismatch: float
    rows: int = 0
    defaults: int = 0  # rows served as defaults (store down): nothing to compare
    features: list[FeatureMatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(1.0 - f.share <= self.max_mismatch for f in self.features)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "since": self.since,
            "max_mismatch": self.max_mismatch,
            "rows": self.rows,
            "defaults": self.defaults,
            "features": [{**asdict(f), "share": f.share} for f in self.features],
        }


def consistency(
    workspace: Workspace,
    since: datetime | None = None,
    specs: Sequence[str] = (),
    max_mismatch: float = 0.0,
    step: Any = lambda _: None,
) -> ConsistencyReport:
    """Recompute logged lookups with the PIT join at their version pointers; compare."""
    from robusta.engine.spark.session import spark_session

    config = workspace.project.config
    assert config is not None
    chosen = [s for s in workspace.plan.specs if not specs or s.name in specs]
    logged = [(spec, files) for spec in chosen if (files := log_files(workspace, spec))]
    if not logged:  # known before Spark starts
        raise NoLogError(f"no logged lookups{_since(since)}: {_how_to_log(workspace)}")
    spark = spark_session(config.spark)
    report = ConsistencyReport(None if since is None else since.isoformat(), max_mismatch)
    for spec, files in logged:
        step(f"reading the log of {spec.name}")
        _compare_spec(workspace, spec, read_log(spark, files, since), report, step)
    if not report.features:
        raise NoLogError(f"no logged lookups{_since(since)}: {_how_to_log(workspace)}")
    return report


def _compare_spec(
    workspace: Workspace, spec: SpecPlan, rows: Any, report: ConsistencyReport, step: Any
) -> None:
    from pyspark.sql import functions as F

    from robusta.training import get_training_frame

    outputs = [o.name for o in spec.outputs]
    present = set(rows.columns)
    logged = [o for o in outputs if o in present]
    keys = list(entity_types(spec))
    served = rows.where(F.col(VERSION_POINTER).isNotNull())
    report.defaults += rows.where(F.col(VERSION_POINTER).isNull()).count()
    inputs = served.select(
        *keys, TS, VERSION_POINTER, REQUESTED, *(F.col(o).alias(LOGGED + o) for o in logged)
    )
    step(f"recomputing the logged rows of {spec.name} with the PIT join")
    frame = get_training_frame(
        inputs, logged, workspace=workspace, timestamp_column=TS, version_column=VERSION_POINTER
    ).cache()
    checks = []
    for name in logged:
        asked = F.array_contains(F.col(REQUESTED), name)
        same = F.col(LOGGED + name).eqNullSafe(F.col(name))
        checks += [
            F.sum(F.when(asked, 1).otherwise(0)).alias(f"n:{name}"),
            F.sum(F.when(asked & same, 1).otherwise(0)).alias(f"m:{name}"),
        ]
    counts = frame.agg(F.count(F.lit(1)).alias("rows"), *checks).collect()[0]
    report.rows += int(counts["rows"])
    for name in logged:
        match = FeatureMatch(name, int(counts[f"n:{name}"] or 0), int(counts[f"m:{name}"] or 0))
        if match.rows == 0:
            continue
        if match.matched < match.rows:
            asked = F.array_contains(F.col(REQUESTED), name)
            wrong = frame.where(asked & ~F.col(LOGGED + name).eqNullSafe(F.col(name)))
            picked = wrong.select(
                *keys, TS, VERSION_POINTER, F.col(LOGGED + name).alias("served"),
                F.col(name).alias("recomputed"),
            ).limit(5)
            match.examples = [
                {k: _plain(v) for k, v in row.asDict().items()} for row in picked.collect()
            ]
        report.features.append(match)
    frame.unpersist()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "asDict"):
        return {k: _plain(v) for k, v in value.asDict().items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
