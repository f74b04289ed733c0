"""`robusta materialize`: compute tiles with Spark and commit them to Iceberg, atomically.

For each tile group of each chosen spec: run the tile job over the range (whole buckets of
the largest granularity; default all data), write Parquet into a fresh run folder, and commit
one overwrite snapshot that swaps exactly the tiles of the range. With a range, tiles outside
it that share a data file with tiles inside are carried over by the same Spark job, so the
swap never loses them. Rerunning gives the same table content.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from robusta.engine.spark.session import spark_session
from robusta.engine.spark.sources import register_sources
from robusta.engine.spark.tiles import Range, TileJob, write_tiles
from robusta.errors import RobustaError, UnknownFeatureError
from robusta.plan.model import SpecPlan, TileGroup
from robusta.spec.durations import floor_to, to_micros
from robusta.spec.model import ProjectConfig
from robusta.store.tiles import Span, TileTables
from robusta.workspace import Workspace

Step = Callable[[str], None]


@dataclass
class TableReport:
    spec: str
    table: str
    version: str
    events: int
    dropped_null_key: int
    dropped_null_timestamp: int
    tiles: dict[str, int]
    snapshot_id: int
    seconds: float
    range: tuple[str | None, str | None] = (None, None)
    carried_over_files: int = field(default=0)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def materialize(
    workspace: Workspace,
    specs: Sequence[str] = (),
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    rebuild: bool = False,
    step: Step = lambda _: None,
) -> list[TableReport]:
    """Materialize the tiles of ``specs`` (default: every spec) and return one report per table."""
    workspace.require_valid()
    config = workspace.project.config
    assert config is not None  # require_valid guarantees it
    chosen = _choose(workspace, specs)
    if (start is None) != (end is None):
        raise MaterializeError("give both --start and --end, or neither (all data)")
    step("starting Spark")
    spark = spark_session(config.spark)
    tables = TileTables(config.offline)
    _record_volumes(spark, config, chosen, start, end, step)
    reports = []
    for plan in chosen:
        register_sources(spark, config, plan.spec.sources)
        try:
            for group in plan.groups:
                window = _aligned(plan, start, end)
                reports.append(
                    _materialize_group(spark, tables, plan, group, window, rebuild, step)
                )
        finally:
            spark.catalog.dropTempView(f"__robusta_events_{plan.name}")  # and its cache
    return reports


def _record_volumes(
    spark: object,
    config: ProjectConfig,
    chosen: Sequence[SpecPlan],
    start: datetime | None,
    end: datetime | None,
    step: Step,
) -> None:
    """Event counts of the monitored sources the chosen specs read (``robusta.monitor``)."""
    from robusta.monitor import record_volumes

    names = dict.fromkeys(name for plan in chosen for name in plan.spec.sources)
    for name in names:
        source = config.sources.get(name)
        if source is None or source.monitor is None:
            continue
        step(f"recording event volumes of {name}")
        register_sources(spark, config, [name])
        lo = None if start is None else to_micros(start)
        hi = None if end is None else to_micros(end)
        record_volumes(spark, config, source, lo, hi)


class MaterializeError(RobustaError, ValueError):
    """A materialize request that cannot be carried out as given."""


def _choose(workspace: Workspace, names: Sequence[str]) -> list[SpecPlan]:
    if not names:
        return list(workspace.plan.specs)
    chosen = []
    for name in names:
        plan = workspace.plan.spec(name)
        if plan is None:
            known = ", ".join(s.name for s in workspace.plan.specs)
            raise UnknownFeatureError(f'no spec named "{name}" (specs: {known})')
        chosen.append(plan)
    return chosen


def _aligned(plan: SpecPlan, start: datetime | None, end: datetime | None) -> Range:
    if start is None or end is None:
        return Range()
    largest = plan.spec.granularities[0].micros
    lo = floor_to(to_micros(start), largest)
    hi = -floor_to(-to_micros(end), largest)  # ceiling: whole buckets covering the range
    if hi <= lo:
        raise MaterializeError(f"--end ({end}) must be after --start ({start})")
    return Range(lo, hi)


def _materialize_group(
    spark: object,
    tables: TileTables,
    plan: SpecPlan,
    group: TileGroup,
    window: Range,
    rebuild: bool,
    step: Step,
) -> TableReport:
    started = time.perf_counter()
    name = group.layout.table
    table = tables.ensure(group, plan.hash, rebuild=rebuild)
    run = tables.start_run(table)
    old_files = tables.overlapping_files(table, window.start, window.end)
    job = TileJob(spark, plan, group, window)
    try:
        step(f"{name}: reading events and building tiles")
        tiles = job.tiles()
        if window.bounded and old_files:
            tiles = tiles.unionByName(_carried_over(spark, old_files, window))
        step(f"{name}: writing tiles")
        write_tiles(tiles, str(run.folder))
        counts = job.counts(job.tiles())  # the cached tiles: no recomputation
        step(f"{name}: committing")
        snapshot = tables.replace(
            table,
            old_files,
            run,
            {
                "robusta.spec-version": plan.hash,
                "robusta.events": str(counts.events),
            },
            covered=_covered(window, counts.last_bucket, group),
        )
    finally:
        job.release()
    return TableReport(
        spec=plan.name,
        table=tables.identifier(name),
        version=plan.hash,
        events=counts.events,
        dropped_null_key=counts.null_keys,
        dropped_null_timestamp=counts.null_timestamps,
        tiles=counts.tiles,
        snapshot_id=snapshot,
        seconds=round(time.perf_counter() - started, 2),
        range=_range_text(window),
        carried_over_files=len(old_files) if window.bounded else 0,
    )


def _covered(window: Range, last_bucket: int | None, group: TileGroup) -> Span:
    """What the run made complete: its range; or, over all data, all time up to now or to the
    end of the last tile with events, whichever is later (events may still arrive after)."""
    if window.bounded:
        return (window.start, window.end)
    gmin = group.layout.finest.micros
    now = floor_to(to_micros(datetime.now(UTC)), gmin)
    return (None, now if last_bucket is None else max(now, last_bucket + gmin))


def _carried_over(spark: object, files: Sequence[object], window: Range) -> object:
    """Tiles outside the range that live in data files the commit will replace."""
    paths = [f.file_path for f in files]  # type: ignore[attr-defined]
    frame = spark.read.parquet(*paths)  # type: ignore[attr-defined]
    inside = (
        f"unix_micros(bucket_start) >= {window.start} AND unix_micros(bucket_start) < {window.end}"
    )
    return frame.where(f"NOT ({inside})")


def _range_text(window: Range) -> tuple[str | None, str | None]:
    from robusta.spec.durations import from_micros

    if not window.bounded:
        return (None, None)
    assert window.start is not None and window.end is not None
    return (from_micros(window.start).isoformat(), from_micros(window.end).isoformat())
