"""The embedded engine behind the engine seam (``engine.base.TileEngine``): DuckDB runs the
spec's query over its sources, Arrow builds the tiles (``tiles.build_tiles``), pyarrow writes
them in the Spark engine's file layout (``store.tiles.write_tile_files``). No JVM."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from robusta.engine.counts import Range, TileCounts
from robusta.engine.embedded.sql import (
    QueryError,
    TranspileError,
    connect,
    monitor_sql,
    register_sources,
    run_query,
)
from robusta.engine.embedded.tiles import build_tiles, source_latest, utc_micros
from robusta.errors import Problem, ValidationError
from robusta.plan.model import SpecPlan, TileGroup
from robusta.spec.loader import query_location
from robusta.spec.model import ProjectConfig, SourceConfig
from robusta.store.tiles import local_path, read_tile_files, write_tile_files


class EmbeddedTileEngine:
    name = "embedded"

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config
        self.con = connect()
        self._events: dict[str, pa.Table] = {}  # per spec: its query's rows, read once

    def events(self, plan: SpecPlan) -> pa.Table:
        if plan.name not in self._events:
            sources = [self.config.sources[s] for s in plan.spec.sources]
            register_sources(self.con, sources, config=self.config)
            spec = plan.spec
            try:
                rows = run_query(self.con, spec.query, spec.timestamp, spec.sources)
            except TranspileError as exc:  # what validation reports when engine: embedded
                if exc.problem is None:
                    raise
                where = query_location(spec.file, exc.problem)
                raise ValidationError([Problem(where, f"spec {spec.name}: {exc}")]) from None
            except QueryError as exc:
                raise QueryError(f"spec {spec.name}: {exc}") from exc
            self._events[plan.name] = rows
        return self._events[plan.name]

    def write_tiles(
        self,
        plan: SpecPlan,
        group: TileGroup,
        window: Range,
        folder: Path,
        carried: Sequence[Any] = (),
    ) -> TileCounts:
        events = self.events(plan)
        latest = None
        if window.bounded:  # rows without a time are counted as dropped, as on Spark
            ts = utc_micros(events.column(plan.spec.timestamp))
            latest = source_latest(events, ts, group)
            inside = pc.and_(pc.greater_equal(ts, window.start), pc.less(ts, window.end))
            events = events.filter(pc.or_kleene(pc.is_null(ts), inside))
        tiles, counts = build_tiles(events, plan, group)
        if window.bounded:  # the source's latest event, not the window's (TileCounts)
            counts.last_event = latest
        if carried:
            tiles = pa.concat_tables([tiles, self._outside(carried, window, group)])
        write_tile_files(tiles, group, folder)
        return counts

    def _outside(self, files: Sequence[Any], window: Range, group: TileGroup) -> pa.Table:
        old = read_tile_files([str(local_path(f.file_path)) for f in files], group)
        starts = pc.cast(old.column("bucket_start"), pa.int64())
        inside = pc.and_(pc.greater_equal(starts, window.start), pc.less(starts, window.end))
        return old.filter(pc.invert(inside))

    def rewrite(self, files: Sequence[Any], group: TileGroup, folder: Path) -> None:
        paths = [str(local_path(f.file_path)) for f in files]
        write_tile_files(read_tile_files(paths, group), group, folder)

    def record_volumes(self, source: SourceConfig, start: int | None, end: int | None) -> None:
        from robusta.engine.embedded.volumes import count_events
        from robusta.store.volumes import monitor_of, store_counts

        monitor = monitor_of(source)
        register_sources(self.con, [source], config=self.config)
        rows = self.con.sql(monitor_sql(source)).to_arrow_table()
        counts, lo, hi = count_events(rows, monitor, start, end)
        store_counts(self.config.offline, source, counts, lo, hi)

    def done_with(self, plan: SpecPlan) -> None:
        self._events.pop(plan.name, None)
