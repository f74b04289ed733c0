"""The embedded engine behind the engine seam (``engine.base.TileEngine``): DuckDB runs the
spec's query over its sources, Arrow builds the tiles (``tiles.build_tiles``), pyarrow writes
them in the Spark engine's file layout (``store.tiles.write_tile_files``). No JVM."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.engine.counts import Range, TileCounts
from robusta.engine.embedded.sql import connect, monitor_sql, register_sources, run_query
from robusta.engine.embedded.tiles import build_tiles, utc_micros
from robusta.plan.model import SpecPlan, TileGroup
from robusta.spec.model import ProjectConfig, SourceConfig
from robusta.store.tiles import local_path, read_tile_files, write_tile_files

SHARE_ROWS = 2_000_000  # events per share of key buckets in one build (bounds its memory)


def _shares(events: pa.Table, group: TileGroup) -> int:
    return max(1, min(group.layout.key_buckets, -(-int(events.num_rows) // SHARE_ROWS)))


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

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config
        self.con = connect()
        self._events: dict[str, pa.Table] = {}  # per spec: its query's rows, read once

    def events(self, plan: SpecPlan) -> pa.Table:
        if plan.name not in self._events:
            register_sources(self.con, [self.config.sources[s] for s in plan.spec.sources])
            self._events[plan.name] = run_query(self.con, plan.spec.query, plan.spec.timestamp)
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
        if window.bounded:  # rows without a time are counted as dropped, as on Spark
            ts = utc_micros(events.column(plan.spec.timestamp))
            inside = pc.and_(pc.greater_equal(ts, window.start), pc.less(ts, window.end))
            events = events.filter(pc.or_kleene(pc.is_null(ts), inside))
        kept = self._outside(carried, window, group) if carried else None
        counts: TileCounts | None = None
        # Keys never share a tile: a large build goes a share of the key buckets at a time,
        # so only that share's tiles are in memory (each writes its own partitions' files).
        shares = _shares(events, group)
        for share, rows in enumerate(by_key_share(events, group, shares)):
            tiles, part = build_tiles(rows, plan, group)
            if kept is not None:
                mine = kept.column("key_bucket").to_numpy() % shares == share
                tiles = pa.concat_tables([tiles, kept.filter(pa.array(mine))])
            write_tile_files(tiles, group, folder)
            counts = part if counts is None else added(counts, part)
        assert counts is not None  # one share at least
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
        from robusta.monitor import count_events, store_counts

        assert source.monitor is not None
        register_sources(self.con, [source])
        rows = self.con.sql(monitor_sql(source)).to_arrow_table()
        counts, lo, hi = count_events(rows, source.monitor, start, end)
        store_counts(self.config, source, counts, lo, hi)

    def done_with(self, plan: SpecPlan) -> None:
        self._events.pop(plan.name, None)
