"""A micro-batch computed into the next state version of the stream's open tiles.

The batch's rows are split at the version pointer (late rows go to the late-events table, as
Parquet under ``<warehouse>/late_events/<spec>/query=<id>/batch=N``); the engine tiles the
on-time ones at the finest granularity (``engine.microbatch.MicroBatch``), and those tiles
are merged into the full values of every open tile (:func:`~robusta.plan.open_tiles.advance`,
Arrow, the same for both engines). A stream that starts inside a largest bucket a batch run
began is seeded from that run's Iceberg tiles, so it continues the bucket instead of
starting it empty. The version and its ``meta.json`` appear at once (a rename).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from robusta.engine.microbatch import MicroBatch
from robusta.jobs.stream.checkpoint import Checkpoint, write_json
from robusta.jobs.stream.errors import fault
from robusta.jobs.stream.stores import StreamStores
from robusta.plan.model import SpecPlan, TileGroup
from robusta.plan.open_tiles import BUCKET, advance, bucket_micros, open_only
from robusta.spec.durations import floor_to, to_micros
from robusta.store.files import join
from robusta.store.tiles import read_bucket, tile_identity

Rows = Callable[[int | None], MicroBatch]  # the batch's rows, split at the pointer given


class BatchTiles:
    """Computes state version ``N`` of one spec's stream from batch ``N``."""

    def __init__(
        self,
        plan: SpecPlan,
        checkpoint: Checkpoint,
        stores: StreamStores,
        *,
        delay: int,
        late_folder: str,
    ) -> None:
        self.plan = plan
        self.checkpoint = checkpoint
        self.stores = stores
        self.delay = delay  # the watermark, in microseconds
        self.late_folder = late_folder
        self.gmin = plan.spec.finest.micros
        self.largest = plan.spec.granularities[0].micros

    def compute(self, rows: Rows, batch_id: int) -> None:
        checkpoint = self.checkpoint
        before = checkpoint.previous(batch_id)
        pointer: int | None = before["pointer"]
        batch = rows(pointer)
        try:
            stats = batch.stats()
            if stats.late:
                # Per query: a fresh checkpoint restarts batch ids and must not overwrite.
                query, batch_at = f"query={checkpoint.query_id()}", f"batch={batch_id}"
                batch.write_late(
                    self.stores.tables.storage, join(self.late_folder, query, batch_at)
                )
            max_ts = _max(before["max_ts"], stats.max_ts)
            after = pointer
            if max_ts is not None:
                # Capped at now: one event stamped in the future must not close buckets
                # (and turn every later event late) before their time.
                now = to_micros(datetime.now(UTC))
                newest = min(max_ts, now)
                after = _max(pointer, floor_to(newest - self.delay, self.gmin))
            tmp = checkpoint.state(batch_id).with_name(f"{batch_id}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tiles_from = batch_id
            if stats.rows - stats.late > 0:
                self._write_tiles(before, batch, pointer, tmp)
            else:
                tiles_from = before["tiles_from"]  # nothing on time: the tiles stay as they were
                tmp.mkdir(parents=True)
            meta = {
                "batch": batch_id,
                "query": checkpoint.query_id(),
                "tiles_from": tiles_from,
                "pointer_before": pointer,
                "pointer": after,
                "max_ts": max_ts,
                "rows": before["rows"] + stats.rows,
                "late": before["late"] + stats.late,
                "dropped": before["dropped"] + stats.null_keys + stats.null_timestamps,
                "batch_rows": stats.rows,
                "first_batch": before["batch"] is None,
                "written": to_micros(datetime.now(UTC)),
            }
            write_json(tmp / "meta.json", meta)
            fault("tiles", batch_id)
            tmp.rename(checkpoint.state(batch_id))  # the version is complete, atomically
        finally:
            batch.release()

    def _write_tiles(
        self, before: dict[str, Any], batch: MicroBatch, pointer: int | None, tmp: Path
    ) -> None:
        """The new open-tile state of every group: the batch's finest tiles (the engine's)
        merged into the previous state (Arrow, :func:`~robusta.plan.open_tiles.advance`)."""
        for group in self.plan.groups:
            stored = None
            if before["tiles_from"] is not None:
                stored = open_only(
                    self.checkpoint.tiles(before["tiles_from"], group), group, pointer
                )
            elif self.checkpoint.seeded(self.largest):
                stored = self._seed(group, pointer)
            partial = batch.finest_tiles(group)
            tiles = advance(group, self.plan.hash, stored, partial)
            folder = tmp / group.layout.table
            folder.mkdir(parents=True)
            pq.write_table(tiles, folder / "tiles.parquet")

    def _seed(self, group: TileGroup, pointer: int | None) -> pa.Table | None:
        """The open tiles of the largest bucket the stream starts in, from the batch run's
        Iceberg tiles before ``pointer`` (its finest tiles, rolled up as the stream rolls up):
        the stream continues that bucket instead of starting it empty."""
        tables = self.stores.tables
        table = tables.load(group.layout.table)
        if table is None or pointer is None:
            return None
        opened = floor_to(pointer, self.largest)
        files = tables.files_by_bucket(table, opened, pointer)
        identity = tile_identity(group)
        storage = tables.storage
        parts = [
            read_bucket(storage, p, b, opened, pointer, identity=identity) for b, p in files.items()
        ]
        tiles = pa.concat_tables(parts, promote_options="default") if parts else None
        if tiles is None or tiles.num_rows == 0:
            return None
        finest = tiles.filter(pc.equal(tiles.column("granularity"), group.layout.finest.name))
        partial = finest.append_column(BUCKET, bucket_micros(finest))
        return open_only(advance(group, self.plan.hash, None, partial), group, pointer)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)
