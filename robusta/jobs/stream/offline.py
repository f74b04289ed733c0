"""A micro-batch's closed tiles committed to the Iceberg tile tables, exactly once.

Tiles whose bucket closed in the batch (``p_before < end <= p_after``) are committed in one
snapshot per tile table whose summary records the query id and batch id; a snapshot with the
same ids means the batch is already there (a replay: skipped). Tiles of the same buckets that
another writer committed while they were open (a batch run over the open day) are replaced,
their data files rewritten without them (:meth:`OfflineCommit._displaced`): a closing
bucket's tiles are the stream's, the values it served online.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pyarrow.compute as pc

from robusta.jobs.stream.checkpoint import Checkpoint
from robusta.jobs.stream.keyed import without_changed
from robusta.jobs.stream.stores import StreamStores
from robusta.plan.model import SpecPlan, TileGroup
from robusta.plan.open_tiles import closing_mask
from robusta.store.files import Storage, join
from robusta.store.tiles import (
    CommitConflictError,
    Run,
    files_where,
    write_tile_files,
    written_ms,
)

QUERY_PROPERTY = "robusta.stream-query"
BATCH_PROPERTY = "robusta.stream-batch"
# Table property per query: its last batch committed (batches commit in order), so a replay
# is recognised in O(1) whatever the number of snapshots, and after old ones expire.
COMMITTED_PREFIX = "robusta.stream-committed."
COMMIT_ATTEMPTS = 5


class OfflineCommit:
    """Commits the tiles one spec's micro-batches close (see the module docstring)."""

    def __init__(self, plan: SpecPlan, checkpoint: Checkpoint, stores: StreamStores) -> None:
        self.plan = plan
        self.checkpoint = checkpoint
        self.stores = stores
        self.largest = plan.spec.granularities[0].micros

    def commit(self, meta: dict[str, Any]) -> None:
        before, after = meta["pointer_before"], meta["pointer"]
        if after is None or after == before or meta["tiles_from"] is None:
            return
        covered = (self.checkpoint.start["pointer"] if meta["first_batch"] else before, after)
        for group in self.plan.groups:
            for attempt in range(COMMIT_ATTEMPTS):
                try:
                    self._commit_group(group, meta, covered)
                    break
                except CommitConflictError:
                    # A concurrent commit (a materialize) won: look again at what it wrote.
                    if attempt == COMMIT_ATTEMPTS - 1:
                        raise
                    time.sleep(0.2 * (attempt + 1))

    def _commit_group(
        self, group: TileGroup, meta: dict[str, Any], covered: tuple[int | None, int]
    ) -> None:
        """The group's tiles closed by this batch, in one snapshot naming the batch."""
        tables = self.stores.tables
        table = tables.ensure(group, self.plan.hash)
        if _committed(table, meta["query"], meta["batch"]):
            return
        closing = self.checkpoint.closing(meta["batch"], group)
        run_id = f"stream-{meta['query'][:8]}-{meta['batch']}"
        run = Run(run_id, join(table.location(), "runs", run_id))
        storage = tables.storage
        storage.delete_folder(run.folder)  # of an attempt that did not commit
        if closing is not None and closing.num_rows:
            write_tile_files(without_changed(closing), group, run.folder, storage)
        displaced = self._displaced(table, group, meta, storage, join(run.folder, "kept"))
        summary = {
            "robusta.spec-version": self.plan.hash,
            QUERY_PROPERTY: meta["query"],
            BATCH_PROPERTY: str(meta["batch"]),
        }
        # One snapshot even without tiles (no events in the closed buckets): it records the
        # batch and the coverage, and fails if anyone committed since the table was read.
        mark = {COMMITTED_PREFIX + meta["query"]: str(meta["batch"])}
        tables.replace(table, displaced, run, summary, covered=covered, marks=mark)

    def _displaced(
        self, table: Any, group: TileGroup, meta: dict[str, Any], storage: Storage, folder: str
    ) -> list[Any]:
        """Other writers' data files holding tiles of the buckets this batch closes; their
        other rows are written to ``folder`` (the commit replaces the files). Only looked
        for when another writer committed since the stream started (before its start, batch
        runs covered no bucket it holds open), or when it continues a batch run's bucket."""
        since = self.checkpoint.started_ms()
        # A stream seeded from a batch run's open bucket replaces that run's tiles too.
        if not self.checkpoint.seeded(self.largest) and not self._written_since(
            table, since, meta["query"]
        ):
            return []
        before, after = meta["pointer_before"], meta["pointer"]
        displaced: list[Any] = []
        for data_file in _closing_files(table, group, before, after):
            rows = storage.read_table(data_file.file_path)
            hit = closing_mask(rows, group, before, after)
            if not pc.any(hit).as_py():
                continue
            kept = rows.filter(pc.invert(hit))
            if kept.num_rows:
                storage.write_parquet(kept, join(folder, f"{len(displaced):05d}.parquet"))
            displaced.append(data_file)
        return displaced

    def _written_since(self, table: Any, since: int, query: str) -> bool:
        """Whether another writer committed since ``since`` (epoch ms): a batch writer's
        mark, or for tables written before marks, a snapshot of another writer."""
        written = written_ms(table)
        if written is not None:
            return written >= since
        return any(
            snapshot.timestamp_ms >= since and summary.get(QUERY_PROPERTY) != query
            for snapshot, summary in _summaries(table)
        )


def _summaries(table: Any) -> Iterator[tuple[Any, dict[str, str]]]:
    """Every snapshot of ``table`` with its summary's properties."""
    for snapshot in table.snapshots():
        yield snapshot, (snapshot.summary.additional_properties if snapshot.summary else {})


def _committed(table: Any, query: str, batch: int) -> bool:
    """Whether the table holds batch ``batch`` of stream ``query``: its mark, or (tables a
    stream committed to before marks) a snapshot naming it."""
    last = table.properties.get(COMMITTED_PREFIX + query)
    if last is not None:
        return int(last) >= batch
    return any(
        summary.get(QUERY_PROPERTY) == query and summary.get(BATCH_PROPERTY) == str(batch)
        for _, summary in _summaries(table)
    )


def _closing_files(table: Any, group: TileGroup, before: int | None, after: int) -> list[Any]:
    """Data files that may hold tiles closing between the pointers (partition and column
    statistics prune the rest): per granularity, ``before - size < start <= after - size``."""
    from pyiceberg import expressions as ex

    above: Any = ex.GreaterThan  # pydantic models: untyped positionals
    at_most: Any = ex.LessThanOrEqual
    equal: Any = ex.EqualTo
    condition: Any = ex.AlwaysFalse()
    for size in group.layout.granularities:
        one: Any = ex.And(
            equal("granularity", size.name), at_most("bucket_start", after - size.micros)
        )
        if before is not None:
            one = ex.And(one, above("bucket_start", before - size.micros))
        condition = ex.Or(condition, one)
    return files_where(table, condition)
