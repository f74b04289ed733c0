"""A micro-batch computed into the next state version of the stream's open tiles.

The batch's rows are split at the version pointer (late rows go to the late-events table, as
Parquet under ``<warehouse>/late_events/<spec>/query=<id>/batch=N``); the engine tiles the
on-time ones at the finest granularity (``engine.microbatch.MicroBatch``); the stored tiles
of the (day, key) pairs they fall in are read from the keyed state (``keyed.KeyedState``)
and merged with them (:func:`~robusta.plan.open_tiles.advance`, Arrow, the same for both
engines), so a batch costs what it touches. The version holds those pairs' full tiles and
the tiles whose bucket the pointer passed (from the index of the keyed state); it appears at
once (a rename), and is then applied to the keyed state (:meth:`BatchTiles.settle`). A stream
that starts inside a largest bucket a batch run began is seeded from that run's Iceberg
tiles, so it continues the bucket instead of starting it empty.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from robusta.engine.microbatch import MicroBatch
from robusta.jobs.stream.checkpoint import CLOSING, TOUCHED, Checkpoint, write_json
from robusta.jobs.stream.errors import fault
from robusta.jobs.stream.keyed import KeyedState, without_changed
from robusta.jobs.stream.stores import StreamStores
from robusta.plan.model import SpecPlan, TileGroup
from robusta.plan.open_tiles import BUCKET, advance, bucket_micros, open_only
from robusta.spec.durations import floor_to, latest, to_micros
from robusta.store.files import join
from robusta.store.tiles import read_bucket, tile_identity

Rows = Callable[[int | None], MicroBatch]  # the batch's rows, split at the pointer given


class StateVersions:
    """What the two ways of computing a stream's state versions share (embedded:
    :class:`BatchTiles`; Spark: ``stateful.StatefulTiles``): the spec, its checkpoint and
    stores, the watermark, the late-events folder, and publishing a version atomically."""

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

    def late_folder_of(self, batch_id: int) -> str:
        """Where a batch's late rows go: per query too, as a fresh checkpoint restarts
        batch ids and must not overwrite."""
        query, batch_at = f"query={self.checkpoint.query_id()}", f"batch={batch_id}"
        return join(self.late_folder, query, batch_at)

    def begin_version(self, batch_id: int) -> Path:
        """The folder version ``batch_id`` is written in before it is published."""
        tmp = self.checkpoint.state(batch_id).with_name(f"{batch_id}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def publish_version(self, tmp: Path, batch_id: int, meta: dict[str, object]) -> None:
        """Version ``batch_id`` with its ``meta``, published at once (a rename)."""
        write_json(tmp / "meta.json", meta)
        fault("tiles", batch_id)
        tmp.rename(self.checkpoint.state(batch_id))


class BatchTiles(StateVersions):
    """Computes state version ``N`` of one spec's stream from batch ``N`` (embedded)."""

    @functools.cached_property
    def state(self) -> KeyedState:
        """The open tiles, keyed (opened when first read)."""
        return KeyedState(self.checkpoint.folder / "keyed", self.plan)

    def compute(self, rows: Rows, batch_id: int) -> None:
        checkpoint = self.checkpoint
        before = checkpoint.previous(batch_id)
        pointer: int | None = before["pointer"]
        batch = rows(pointer)
        try:
            stats = batch.stats()
            if stats.late:
                batch.write_late(self.stores.tables.storage, self.late_folder_of(batch_id))
            max_ts = latest(before["max_ts"], stats.max_ts)
            after = pointer
            if max_ts is not None:
                # Capped at now: one event stamped in the future must not close buckets
                # (and turn every later event late) before their time.
                now = to_micros(datetime.now(UTC))
                newest = min(max_ts, now)
                after = latest(pointer, floor_to(newest - self.delay, self.gmin))
            tmp = self.begin_version(batch_id)
            self.catch_up()
            on_time = stats.rows - stats.late > 0
            tiles_from = batch_id if on_time else before["tiles_from"]
            for group in self.plan.groups:
                seed = (
                    on_time
                    and before["tiles_from"] is None
                    and self.checkpoint.seeded(self.largest)
                )
                touched = self._touched(group, batch if on_time else None, pointer, seed)
                closing = closing_tiles(self.state, group, touched, pointer, after)
                write_version_tiles(touched, tmp / TOUCHED, group)
                write_version_tiles(closing, tmp / CLOSING, group)
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
            self.publish_version(tmp, batch_id, meta)
        finally:
            batch.release()

    def catch_up(self) -> None:
        """Apply to the keyed state the published versions it lacks (a crash after a
        publish), in order."""
        applied = self.state.version()
        for version in self.checkpoint.state_ids():
            if applied is None or version > applied:
                self.settle(version)

    def settle(self, batch_id: int) -> None:
        """Version ``batch_id`` applied to the keyed state (once: a replay finds it there)."""
        applied = self.state.version()
        if applied is not None and applied >= batch_id:
            return
        touched = {}
        for group in self.plan.groups:
            tiles = self.checkpoint.touched(batch_id, group)
            if tiles is not None:
                touched[group.layout.table] = tiles
        self.state.apply(batch_id, touched, self.checkpoint.meta(batch_id)["pointer"])

    def _touched(
        self, group: TileGroup, batch: MicroBatch | None, pointer: int | None, seed: bool
    ) -> pa.Table | None:
        """The full tiles, after the batch, of every (day, key) its on-time rows fall in:
        the stored ones (keyed state; the batch run's, for a stream seeded from one) merged
        with the batch's finest tiles."""
        if batch is None:
            return None
        partial = batch.finest_tiles(group)
        stored = seed_tiles(self.stores, self.plan, group, pointer) if seed else None
        if stored is None:
            partial_starts = partial.append_column("bucket_start", _as_time(partial))
            stored = self.state.read(group, self.state.day_keys(group, partial_starts))
        if stored is not None:
            stored = open_only(stored, group, pointer)
        return advance(group, self.plan.hash, stored, partial)


def closing_tiles(
    state: KeyedState,
    group: TileGroup,
    touched: pa.Table | None,
    before: int | None,
    after: int | None,
) -> pa.Table | None:
    """The tiles whose bucket ends in ``(before, after]``, as of after this batch: the
    stored ones (the keyed state's log), superseded by the touched ones."""
    if after is None or after == before:
        return None
    return state.closing(group, before, after, touched)


def seed_tiles(
    stores: StreamStores, plan: SpecPlan, group: TileGroup, pointer: int | None
) -> pa.Table | None:
    """The open tiles of the largest bucket a stream starts in, from the batch run's
    Iceberg tiles before ``pointer`` (its finest tiles, rolled up as the stream rolls up):
    the stream continues that bucket instead of starting it empty."""
    tables = stores.tables
    table = tables.load(group.layout.table)
    if table is None or pointer is None:
        return None
    opened = floor_to(pointer, plan.spec.granularities[0].micros)
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
    return without_changed(advance(group, plan.hash, None, partial))


def write_version_tiles(tiles: pa.Table | None, folder: Path, group: TileGroup) -> None:
    """A version's tiles of one kind (touched, closing) for ``group``, when there are any."""
    if tiles is not None and tiles.num_rows:
        folder.mkdir(exist_ok=True)
        pq.write_table(tiles, folder / f"{group.layout.table}.parquet")


def _as_time(partial: pa.Table) -> pa.Array:
    """A batch's finest tiles' ``__bucket`` (epoch micros) as ``bucket_start``."""
    return pc.cast(partial.column(BUCKET), pa.timestamp("us", tz="UTC"))
