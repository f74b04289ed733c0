"""`robusta materialize`: compute tiles with Spark and commit them to Iceberg, atomically.

For each tile group of each chosen spec: run the tile job over the range (whole buckets of
the largest granularity; default all data), write Parquet into a fresh run folder, and commit
one overwrite snapshot that swaps exactly the tiles of the range. With a range, tiles outside
it that share a data file with tiles inside are carried over by the same Spark job, so the
swap never loses them. Rerunning gives the same table content.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime

from robusta.engine.base import TileEngine, choose_engine, open_engine
from robusta.engine.counts import Range, TileCounts
from robusta.errors import RobustaError
from robusta.plan.model import BaseFeature, SpecPlan, TileGroup
from robusta.plan.selection import choose_specs
from robusta.spec.durations import Duration, floor_to, from_micros, to_micros
from robusta.spec.model import ProjectConfig
from robusta.store.tiles import (
    FRESH,
    LATEST_PROPERTY,
    VERSION_PROPERTY,
    Span,
    TileTables,
    coverage,
    latest_event,
    merge_spans,
    new_features,
    table_state,
)
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
    added_columns: list[str] = field(default_factory=list)  # merge on read: only these
    covered_until: str | None = None  # where the table's coverage from this run ends

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
    engine: str | None = None,
) -> list[TableReport]:
    """Materialize the tiles of ``specs`` (default: every spec) and return one report per
    table. ``engine``: ``embedded`` or ``spark`` (default: the project's ``engine``)."""
    config = workspace.config
    chosen = choose_specs(workspace.plan, specs)
    if (start is None) != (end is None):
        raise MaterializeError("give both --start and --end, or neither (all data)")
    if rebuild and start is not None:
        raise MaterializeError(
            "--rebuild recomputes every tile of a table over all data: drop --start and --end"
        )
    name = choose_engine(config, engine)
    step("starting Spark" if name == "spark" else f"starting the {name} engine")
    tiles = open_engine(config, name)
    tables = TileTables(config.offline)
    _record_volumes(tiles, config, chosen, start, end, step)
    windows = {plan.name: _aligned(plan, start, end) for plan in chosen}

    def run(plan: SpecPlan, group: TileGroup, stop: threading.Event) -> TableReport:
        window = windows[plan.name]
        return _materialize_group(tiles, tables, plan, group, window, rebuild, step, stop)

    return _each_group(tiles, chosen, run)


GroupRun = Callable[[SpecPlan, TileGroup, threading.Event], "TableReport"]


def _each_group(tiles: TileEngine, chosen: Sequence[SpecPlan], run: GroupRun) -> list[TableReport]:
    """``run`` for every group of the chosen specs, up to ``tiles.parallel_groups`` at once,
    reports in spec order. When one fails (or Ctrl-C), the groups after it stop before their
    commit (``stop`` is set): as in a serial run, what committed before the failure stays."""
    work = [(plan, group) for plan in chosen for group in plan.groups]
    left = Counter(plan.name for plan, _ in work)
    lock = threading.Lock()
    stop = threading.Event()

    def one(plan: SpecPlan, group: TileGroup) -> TableReport:
        try:
            return run(plan, group, stop)
        finally:
            with lock:
                left[plan.name] -= 1
                if not left[plan.name]:  # the spec's events are no longer needed
                    tiles.done_with(plan)

    if tiles.parallel_groups <= 1 or len(work) <= 1:
        return [one(plan, group) for plan, group in work]
    with ThreadPoolExecutor(tiles.parallel_groups) as pool:
        futures = [pool.submit(one, plan, group) for plan, group in work]
        try:
            return [future.result() for future in futures]
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise


class StoppedError(RobustaError, RuntimeError):
    """A group's run stopped before its commit because another one failed or was stopped."""


def _check_going(stop: threading.Event | None, table: str) -> None:
    if stop is not None and stop.is_set():
        raise StoppedError(f"{table}: stopped before committing; nothing of it was committed")


def _record_volumes(
    tiles: TileEngine,
    config: ProjectConfig,
    chosen: Sequence[SpecPlan],
    start: datetime | None,
    end: datetime | None,
    step: Step,
) -> None:
    """Event counts of the monitored sources the chosen specs read (``jobs.volumes``)."""
    from robusta.jobs.volumes import monitored_sources

    lo = None if start is None else to_micros(start)
    hi = None if end is None else to_micros(end)
    for source in monitored_sources(config.sources, chosen):
        step(f"recording event volumes of {source.name}")
        tiles.record_volumes(source, lo, hi)


class MaterializeError(RobustaError, ValueError):
    """A materialize request that cannot be carried out as given."""


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
    engine: TileEngine,
    tables: TileTables,
    plan: SpecPlan,
    group: TileGroup,
    window: Range,
    rebuild: bool,
    step: Step,
    stop: threading.Event | None = None,
) -> TableReport:
    started = time.perf_counter()
    name = group.layout.table
    table = tables.ensure(group, plan.hash, rebuild=rebuild)
    added = [] if rebuild else (new_features(table, group) or [])
    if added and table.current_snapshot() is not None:
        report = _add_columns(engine, tables, plan, group, table, added, step, stop)
        if not window.bounded:  # the whole coverage has every column now
            return report
        table = tables.load(name)
    with tables.start_run(table) as run:  # its lease ends with the run
        old_files = [] if rebuild else tables.overlapping_files(table, window.start, window.end)
        if window.bounded:  # every column set of the partitions touched goes together
            old_files = tables.with_partition_mates(table, old_files)
        step(f"{name}: reading events, building and writing tiles")
        carried = old_files if window.bounded else ()
        counts = engine.write_tiles(plan, group, window, run.folder, carried)
        latest = _latest(counts.last_event, None if rebuild else latest_event(table))
        covered = _covered(window, latest, group, tables.offline.allowed_lateness)
        properties = {VERSION_PROPERTY: plan.hash, "robusta.events": str(counts.events)}
        if latest is not None:
            properties[LATEST_PROPERTY] = str(latest)
        _check_going(stop, name)
        step(f"{name}: committing")
        if rebuild:  # every old tile out and the new layout in, one commit
            snapshot = tables.rebuild(table, run, properties, covered, group)
        else:
            snapshot = tables.replace(
                table, old_files, run, properties, covered=covered, group=group
            )
    report = _table_report(plan, tables.identifier(name), counts, snapshot, started)
    report.range = _range_text(window)
    report.carried_over_files = len(old_files) if window.bounded else 0
    report.covered_until = None if covered is None or covered[1] is None else _iso(covered[1])
    return report


def _add_columns(
    engine: TileEngine,
    tables: TileTables,
    plan: SpecPlan,
    group: TileGroup,
    table: object,
    added: Sequence[BaseFeature],
    step: Step,
    stop: threading.Event | None = None,
) -> TableReport:
    """Merge on read: the ``added`` features' IR columns over the table's coverage, written
    as new files beside the existing ones (which are not rewritten), in one commit."""
    started = time.perf_counter()
    # Exactly the tiles the table holds: the coverage (an open start: from the first tile).
    spans = merge_spans(coverage(table))
    largest = group.layout.granularities[0].micros
    first = -((1 << 62) // largest) * largest
    start = spans[0][0] if spans and spans[0][0] is not None else first
    end = spans[-1][1] if spans else None
    latest = latest_event(table)
    if latest is not None:  # and the tiles after the coverage (within the allowed lateness)
        end = max(end if end is not None else latest, floor_to(latest, largest) + largest)
    window = Range(start, end) if end is not None else Range()
    subset = TileGroup(group.layout, tuple(added))
    names = ", ".join(f.name for f in added)
    with tables.start_run(table) as run:  # its lease ends with the run
        step(f"{group.layout.table}: computing the added features {names} over the coverage")
        counts = engine.write_tiles(plan, subset, window, run.folder)
        _check_going(stop, group.layout.table)
        step(f"{group.layout.table}: committing the added columns")
        snapshot = tables.add_columns(table, group, plan.hash, run, added)
    report = _table_report(plan, tables.identifier(group.layout.table), counts, snapshot, started)
    report.range = _range_text(window) if spans and spans[0][0] is not None else (None, None)
    report.added_columns = [f.ir_column for f in added]
    return report


def _table_report(
    plan: SpecPlan, table: str, counts: TileCounts, snapshot: int, started: float
) -> TableReport:
    return TableReport(
        spec=plan.name,
        table=table,
        version=plan.hash,
        events=counts.events,
        dropped_null_key=counts.null_keys,
        dropped_null_timestamp=counts.null_timestamps,
        tiles=counts.tiles,
        snapshot_id=snapshot,
        seconds=round(time.perf_counter() - started, 2),
    )


def _latest(*times: int | None) -> int | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _covered(
    window: Range, latest: int | None, group: TileGroup, lateness: Duration
) -> Span | None:
    """What the run made complete: whole finest buckets up to ``floor(latest event -
    allowed lateness, gmin)`` (never wall-clock now), within its range if it has one. Events
    landing later than that are late: they never change a bucket behind a served pointer."""
    if latest is None:
        return None  # no event at all: nothing is known to be complete
    ready = floor_to(latest - lateness.micros, group.layout.finest.micros)
    if window.start is None or window.end is None:  # not bounded
        return (None, ready)
    end = min(window.end, ready)
    return (window.start, end) if end > window.start else None


def _iso(micros: int) -> str:
    return from_micros(micros).isoformat()


def _range_text(window: Range) -> tuple[str | None, str | None]:
    if window.start is None or window.end is None:  # not bounded
        return (None, None)
    return (from_micros(window.start).isoformat(), from_micros(window.end).isoformat())


@dataclass
class CompactReport:
    spec: str
    table: str
    files_before: int
    files_after: int
    snapshot_id: int | None  # None: already compact, nothing committed

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def compact(
    workspace: Workspace,
    specs: Sequence[str] = (),
    *,
    step: Step = lambda _: None,
    engine: str | None = None,
) -> list[CompactReport]:
    """Fold every tile table's added-column files into whole files, one commit per table;
    the tiles (and so every value served or backfilled) stay the same."""
    from robusta.store.tiles import files_by_columns

    config = workspace.config
    chosen = choose_specs(workspace.plan, specs)
    name = choose_engine(config, engine)
    tiles: TileEngine | None = None  # started when a table needs it
    tables = TileTables(config.offline)
    reports = []
    for plan in chosen:
        for group in plan.groups:
            table = tables.load(group.layout.table)
            if table is None:
                continue
            if table_state(table, group, plan.hash) != FRESH:
                raise MaterializeError(
                    f"table {tables.identifier(group.layout.table)} is not of the current spec "
                    f"version: run `robusta materialize --spec {plan.name}` first"
                )
            files = tables.overlapping_files(table, None, None)
            paths = [f.file_path for f in files]
            identifier = tables.identifier(group.layout.table)
            if len(files_by_columns(tables.storage, paths)) <= 1:
                reports.append(CompactReport(plan.name, identifier, len(files), len(files), None))
                continue
            step(f"{group.layout.table}: compacting {len(files)} files")
            tiles = tiles or open_engine(config, name)
            with tables.start_run(table) as run:  # its lease ends with the run
                tiles.rewrite(files, group, run.folder)
                snapshot = tables.replace(table, files, run, {"robusta.compacted": "true"})
                after = len(tables.storage.files(run.folder, ".parquet"))
            reports.append(CompactReport(plan.name, identifier, len(files), after, snapshot))
    return reports
