"""The embedded engine behind the engine seam (``engine.base.TileEngine``): DuckDB runs the
spec's query over its sources, Arrow builds the tiles (``tiles.build_tiles``), pyarrow writes
them in the Spark engine's file layout (``store.tiles.write_tile_files``). No JVM."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
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
from robusta.store.catalog import storage_of
from robusta.store.tiles import read_tile_files, write_tile_files

SHARE_ROWS = 2_000_000  # events per share of key buckets in one build (bounds its memory)
SPLIT_ROWS = 200_000  # from this many events a build goes in two shares, built side by side
SHARE_THREADS = 2  # shares built at once (two cores; Arrow and numpy release the GIL)


def _shares(events: pa.Table, group: TileGroup) -> int:
    rows = int(events.num_rows)
    wanted = max(-(-rows // SHARE_ROWS), SHARE_THREADS if rows >= SPLIT_ROWS else 1)
    return max(1, min(group.layout.key_buckets, wanted))


def _bucket_of(table: pa.Table, group: TileGroup) -> np.ndarray:
    from robusta.plan.keys import key_buckets

    column = table.column(group.layout.primary).combine_chunks()
    return key_buckets(column, group.layout.key_buckets)


def by_key_share(events: pa.Table, group: TileGroup, shares: int) -> Iterator[pa.Table]:
    """The events in ``shares`` shares of key buckets (bucket mod shares); rows with a null
    key (bucket -1) go with the first share, which counts them."""
    if shares == 1:
        yield events
        return
    share = np.maximum(_bucket_of(events, group), 0) % shares
    for i in range(shares):
        yield events.filter(pa.array(share == i))


def added(a: TileCounts, b: TileCounts) -> TileCounts:
    """The counts of two shares' builds together."""

    def latest(x: int | None, y: int | None) -> int | None:
        return y if x is None else x if y is None else max(x, y)

    return TileCounts(
        events=a.events + b.events,
        null_keys=a.null_keys + b.null_keys,
        null_timestamps=a.null_timestamps + b.null_timestamps,
        tiles={g: a.tiles.get(g, 0) + b.tiles.get(g, 0) for g in {*a.tiles, *b.tiles}},
        last_bucket=latest(a.last_bucket, b.last_bucket),
        last_event=latest(a.last_event, b.last_event),
    )


class EmbeddedTileEngine:
    name = "embedded"
    parallel_groups = 2  # Arrow builds and Parquet writes release the GIL in large part

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config
        self.storage = storage_of(config.offline)
        self.con = connect()
        self._events: dict[str, pa.Table] = {}  # per spec: its query's rows, read once
        # One query at a time on the connection (DuckDB parallelizes each query itself).
        self._query_lock = threading.Lock()

    def events(self, plan: SpecPlan) -> pa.Table:
        with self._query_lock:
            return self._read_events(plan)

    def _read_events(self, plan: SpecPlan) -> pa.Table:
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
        folder: str,
        carried: Sequence[Any] = (),
    ) -> TileCounts:
        events = self.events(plan)
        latest = None
        if window.bounded:  # rows without a time are counted as dropped, as on Spark
            ts = utc_micros(events.column(plan.spec.timestamp))
            latest = source_latest(events, ts, group)
            inside = pc.and_(pc.greater_equal(ts, window.start), pc.less(ts, window.end))
            events = events.filter(pc.or_kleene(pc.is_null(ts), inside))
        kept = self._outside(carried, window, group) if carried else None
        # Keys never share a tile: a build goes a share of the key buckets at a time, two
        # at once, so only those shares' tiles are in memory (each writes its own files).
        shares = _shares(events, group)

        def build(share: int, rows: pa.Table) -> TileCounts:
            tiles, part = build_tiles(rows, plan, group)
            if kept is not None:
                mine = kept.column("key_bucket").to_numpy() % shares == share
                tiles = pa.concat_tables([tiles, kept.filter(pa.array(mine))])
            write_tile_files(tiles, group, folder, self.storage)
            return part

        work = enumerate(by_key_share(events, group, shares))
        if shares == 1:
            parts = [build(share, rows) for share, rows in work]
        else:
            with ThreadPoolExecutor(SHARE_THREADS) as pool:
                parts = list(pool.map(lambda job: build(*job), work))
        counts = functools.reduce(added, parts)  # one share at least
        if window.bounded:  # the source's latest event, not the window's (TileCounts)
            counts.last_event = latest
        return counts

    def _outside(self, files: Sequence[Any], window: Range, group: TileGroup) -> pa.Table:
        old = read_tile_files(self.storage, [f.file_path for f in files], group)
        starts = pc.cast(old.column("bucket_start"), pa.int64())
        inside = pc.and_(pc.greater_equal(starts, window.start), pc.less(starts, window.end))
        return old.filter(pc.invert(inside))

    def rewrite(self, files: Sequence[Any], group: TileGroup, folder: str) -> None:
        paths = [f.file_path for f in files]
        tiles = read_tile_files(self.storage, paths, group)
        write_tile_files(tiles, group, folder, self.storage)

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
