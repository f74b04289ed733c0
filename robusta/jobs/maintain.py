"""`robusta maintain`: the tables that streams keep adding to, kept small and fast to plan.

A stream commits a snapshot and a few small files per closing micro-batch, and so do the
volume monitors; feature logs grow by one commit per flush. For every tile table of the
chosen specs, the event-volumes table and the feature-log tables:

1. tile tables: the files of each partition (granularity, key bucket, month) that holds more
   than one are read (added-column files merged on the tile identity) and written again as
   one file, in one commit per table that changes no tile;
2. snapshots older than ``offline.retention`` are expired (never the current one): time
   travel reaches back that far, no further;
3. the files no retained snapshot needs are deleted (``store.maintenance``).

A writer committing between the read and the commit of step 1 wins: the compaction fails
with nothing written and is reported, to run again later.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from robusta.plan.model import TileGroup
from robusta.plan.selection import choose_specs
from robusta.spec.durations import Duration, to_micros
from robusta.store.files import join
from robusta.store.maintenance import delete_unreferenced, expire_snapshots
from robusta.store.tiles import (
    CommitConflictError,
    TileTables,
    live_files,
    read_tile_files,
    write_tile_files,
)
from robusta.workspace import Workspace

Step = Callable[[str], None]


@dataclass(frozen=True)
class MaintainReport:
    table: str
    files_before: int  # live data files
    files_after: int
    expired: int  # snapshots
    kept: int
    deleted_files: int
    deleted_bytes: int
    conflict: str | None = None  # why the compaction was not committed

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def maintain(
    workspace: Workspace,
    specs: Sequence[str] = (),
    *,
    retention: Duration | None = None,
    step: Step = lambda _: None,
    now: datetime | None = None,
) -> list[MaintainReport]:
    """Compact, expire and clean every table of ``specs`` (default all), the volumes table
    and the feature logs; snapshots younger than ``retention`` (default
    ``offline.retention``) are kept."""
    config = workspace.config
    keep = retention or config.offline.retention
    at = now or datetime.now(UTC)
    cutoff_ms = (to_micros(at) - keep.micros) // 1000
    tables = TileTables(config.offline)
    reports = []
    for plan in choose_specs(workspace.plan, specs):
        for group in plan.groups:
            table = tables.load(group.layout.table)
            if table is None:
                continue
            step(group.layout.table)
            files = live_files(table)
            before = len(files)
            conflict = None
            try:
                table = _compact_partitions(tables, table, group, files)
            except CommitConflictError as exc:
                conflict = str(exc)
                table = tables.load(group.layout.table)
            reports.append(_upkeep(tables, table, before, cutoff_ms, at, conflict))
    for table in _other_tables(tables, config.offline.namespace):
        step(table.name()[-1])
        reports.append(_upkeep(tables, table, len(live_files(table)), cutoff_ms, at, None))
    return reports


def _upkeep(
    tables: TileTables,
    table: Any,
    before: int,
    cutoff_ms: int,
    at: datetime,
    conflict: str | None,
) -> MaintainReport:
    try:
        expired, kept = expire_snapshots(table, cutoff_ms)
    except CommitConflictError as exc:
        expired, kept, conflict = 0, len(table.snapshots()), conflict or str(exc)
    table = table.refresh()
    files, size = delete_unreferenced(table, tables.storage, now=at.timestamp())
    return MaintainReport(
        table=table.name()[-1],
        files_before=before,
        files_after=len(live_files(table)),
        expired=expired,
        kept=kept,
        deleted_files=files,
        deleted_bytes=size,
        conflict=conflict,
    )


def _compact_partitions(tables: TileTables, table: Any, group: TileGroup, files: list[Any]) -> Any:
    """Each partition with several of ``files`` (the table's live ones) rewritten as one, in
    one commit; the table after."""
    by_partition: dict[str, list[Any]] = defaultdict(list)
    for data_file in files:
        by_partition[_partition(data_file.file_path)].append(data_file)
    crowded = [held for held in by_partition.values() if len(held) > 1]
    if not crowded:
        return table
    storage = tables.storage
    with tables.start_run(table) as run:
        old = []
        for i, part in enumerate(crowded):  # a folder each: no two can write the same path
            tiles = read_tile_files(storage, [f.file_path for f in part], group)
            write_tile_files(tiles, group, join(run.folder, f"p{i:05d}"), storage)
            old += part
        tables.replace(table, old, run, {"robusta.maintain": "compact"})
    return tables.load(group.layout.table)


def _partition(path: str) -> str:
    """The (granularity, key bucket, month) a tile file holds, from the name every tile
    writer gives it (``.../granularity=G/key_bucket=B/month=M.parquet``); another file is a
    partition of its own (never merged)."""
    found = _PARTITION.search(path)
    return found.group(0) if found else path


_PARTITION = re.compile(r"granularity=[^/]+/key_bucket=[^/]+/month=[^/]+\.parquet$")


def _other_tables(tables: TileTables, namespace: str) -> list[Any]:
    """The namespace's tables that are not tile tables: event volumes and feature logs."""
    from robusta.store.feature_log import LOG_PREFIX
    from robusta.store.volumes import VOLUMES_TABLE

    out = []
    for identifier in tables.catalog.list_tables(namespace):
        name = identifier[-1]
        if name == VOLUMES_TABLE or name.startswith(LOG_PREFIX):
            out.append(tables.catalog.load_table(identifier))
    return out
