"""The consistency report: logged lookups recomputed by the PIT join, compared exactly.

The evidence for the product's promise: every logged row (:mod:`robusta.api.logged`) is
recomputed with the PIT join at its logged version pointer (``get_training_frame`` with the
logged rows and ``version_column``) and each feature's served value is compared with the
recomputed one, per feature the share of rows that match. Values are compared exactly, with
Spark's null-safe equality (``eqNullSafe``) on both engines: null matches null only, NaN
matches NaN, 0.0 matches -0.0; lists and structs element by element the same way. The
embedded engine reads and compares in Arrow (no JVM), the Spark engine in Spark.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.api.logged import (
    NoLogError,
    how_to_log,
    log_files,
    read_log,
    read_log_table,
    requested_any,
    since_text,
)
from robusta.api.training import get_training_frame
from robusta.engine.base import choose_engine
from robusta.plan.model import SpecPlan
from robusta.store.catalog import storage_of
from robusta.store.feature_log import REQUESTED, TS, VERSION_POINTER, entity_types
from robusta.workspace import Workspace

LOGGED = "__logged__"  # prefix of a served value beside its recomputed one
EXAMPLES = 5  # mismatching rows shown per feature

Step = Callable[[str], None]


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
    step: Step = lambda _: None,
    engine: str | None = None,
) -> ConsistencyReport:
    """Recompute logged lookups with the PIT join at their version pointers; compare. On
    ``engine`` (default the project's ``engine``): embedded reads, joins and compares in
    Arrow, Spark in Spark; both give the same report."""
    config = workspace.config
    chosen_engine = choose_engine(config, engine)
    chosen = [s for s in workspace.plan.specs if not specs or s.name in specs]
    logged = [(spec, files) for spec in chosen if (files := log_files(config.offline, spec))]
    if not logged:  # known before any engine starts
        raise NoLogError(f"no logged lookups{since_text(since)}: {how_to_log(config.online)}")
    report = ConsistencyReport(None if since is None else since.isoformat(), max_mismatch)
    if chosen_engine == "embedded":
        for spec, files in logged:
            step(f"reading the log of {spec.name}")
            rows = read_log_table(storage_of(config.offline), files, since)
            _compare_arrow(workspace, spec, rows, report, step)
    else:
        from robusta.engine.spark.session import spark_session

        spark = spark_session(config.spark)
        for spec, files in logged:
            step(f"reading the log of {spec.name}")
            rows = read_log(spark, storage_of(config.offline), spec, files, since)
            _compare_spark(workspace, spec, rows, report, step)
    if not report.features:
        raise NoLogError(f"no logged lookups{since_text(since)}: {how_to_log(config.online)}")
    return report


# ---- Arrow (the embedded engine) --------------------------------------------------------
def _compare_arrow(
    workspace: Workspace, spec: SpecPlan, rows: pa.Table, report: ConsistencyReport, step: Step
) -> None:
    logged = [o.name for o in spec.outputs if o.name in rows.column_names]
    keys = list(entity_types(spec))
    served = rows.filter(pc.is_valid(rows.column(VERSION_POINTER)))
    report.defaults += rows.num_rows - served.num_rows
    report.rows += served.num_rows
    if served.num_rows == 0 or not logged:
        return  # nothing to recompute
    columns = {name: served.column(name) for name in (*keys, TS, VERSION_POINTER, REQUESTED)}
    inputs = pa.table({**columns, **{LOGGED + o: served.column(o) for o in logged}})
    step(f"recomputing the logged rows of {spec.name} with the PIT join")
    frame = get_training_frame(
        inputs, logged, workspace=workspace, timestamp_column=TS,
        version_column=VERSION_POINTER, engine="embedded",
    )
    for name in logged:
        asked = requested_any(frame.column(REQUESTED), [name])
        same = same_values(frame.column(LOGGED + name), frame.column(name))
        match = FeatureMatch(name, int(asked.sum()), int((asked & same).sum()))
        if match.rows == 0:
            continue
        wrong = pa.array(np.flatnonzero(asked & ~same)[:EXAMPLES], pa.int64())
        if len(wrong):
            picked = frame.take(wrong).select([*keys, TS, VERSION_POINTER])
            picked = picked.append_column("served", frame.column(LOGGED + name).take(wrong))
            picked = picked.append_column("recomputed", frame.column(name).take(wrong))
            match.examples = [{k: _plain(v) for k, v in r.items()} for r in picked.to_pylist()]
        report.features.append(match)


def same_values(served: pa.ChunkedArray, recomputed: pa.ChunkedArray) -> np.ndarray:
    """Per row, Spark's ``served <=> recomputed``: null matches null only, NaN matches NaN,
    0.0 matches -0.0, no tolerance; nested values element by element the same way."""
    a, b = served.combine_chunks(), recomputed.combine_chunks()
    if a.type != b.type or pa.types.is_nested(a.type):
        pairs = zip(a.to_pylist(), b.to_pylist(), strict=True)
        return np.fromiter((_same(x, y) for x, y in pairs), np.bool_, count=len(a))
    equal = pc.equal(a, b)
    if pa.types.is_floating(a.type):
        equal = pc.or_kleene(equal, pc.and_kleene(pc.is_nan(a), pc.is_nan(b)))
    nulls = pc.and_(pc.is_null(a), pc.is_null(b))
    return np.asarray(pc.or_(equal.fill_null(False), nulls).to_numpy(zero_copy_only=False))


def _same(x: Any, y: Any) -> bool:
    if x is None or y is None:
        return x is None and y is None
    if isinstance(x, float) and isinstance(y, float):
        return x == y or (math.isnan(x) and math.isnan(y))
    if isinstance(x, list | tuple) and isinstance(y, list | tuple):
        return len(x) == len(y) and all(map(_same, x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    return bool(x == y)


# ---- Spark ------------------------------------------------------------------------------
def _compare_spark(
    workspace: Workspace, spec: SpecPlan, rows: Any, report: ConsistencyReport, step: Step
) -> None:
    from pyspark.sql import functions as F

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
            ).limit(EXAMPLES)
            match.examples = [
                {k: _plain(v) for k, v in row.asDict().items()} for row in picked.collect()
            ]
        report.features.append(match)
    frame.unpersist()


def _plain(value: Any) -> Any:
    """A value for the JSON report; times as naive UTC ISO text on both engines (Spark hands
    them over naive, in its session time zone, UTC)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat()
    if hasattr(value, "asDict"):
        return {k: _plain(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
