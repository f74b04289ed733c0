"""A stream's open tiles on disk, keyed: a micro-batch reads and writes only the keys it
touches, whatever the number of keys the open buckets hold.

An LMDB environment in the checkpoint (``<checkpoint>/<spec>/keyed/``) holds, per tile table:

- *tiles*: per largest-granularity bucket (a *day*) and key, that key's tiles of the day
  (every granularity, tile-table columns) as one Arrow record batch: what a micro-batch
  reads and rewrites for the keys it touches;
- *log*: per tile end, version and piece, the tiles that version wrote with that end (those
  it changed, and every tile of a (day, key) new to the state) as one Arrow record batch of
  at most :data:`PIECE` rows. The close of a bucket holding a million keys reads the few
  entries of its end and keeps each tile's latest version, columnar, instead of decoding a
  million per-key records (about 10 us each in Arrow whatever their size). Entries are
  deleted once the pointer passed their end.

It is a view of the state versions (``checkpoint``): version ``N`` publishes the full tiles of
the (day, key) pairs batch ``N`` touched and the tiles it closed as Parquet, then
:meth:`KeyedState.apply` writes them here in one transaction that records ``N``; a crash
between the two is redone from the version's files (:meth:`KeyedState.catch_up`), so the
state is always the one of the last published version. Days that closed are deleted when the
version that closed them is applied (its closing tiles are in its files for the offline
commit). A state in an earlier layout (an index of finest buckets instead of the log) is
refused (:meth:`KeyedState.check_layout`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.jobs.stream.errors import StreamingError
from robusta.plan.model import SpecPlan, TileGroup
from robusta.plan.open_tiles import (
    CHANGED,
    bucket_micros,
    closing_mask,
    key_ids,
    latest_versions,
    log_pieces,
    run_offsets,
)
from robusta.spec.durations import floor_to
from robusta.store.online.records import decode, encode, one_batch, own_slices
from robusta.store.tiles import tile_schema

PIECE = 1 << 16  # rows per log entry at most: a close decodes a few large batches
LAYOUT = b"2"  # 2: per-key tiles and the log of tiles by end (1: an index of finest buckets)
_MAP_SIZE = 1 << 40  # address space only: LMDB files grow with what they hold
_VERSION = b"version"
_LAYOUT = b"layout"
_OFFSET = 1 << 63  # epoch micros (signed) to big-endian bytes that sort in time order
_ENVS: dict[Path, Any] = {}  # LMDB allows one open environment per file per process
_LOCK = threading.Lock()

DayKeys = list[tuple[int, bytes]]  # (day start, key id)


def _environment(path: Path) -> Any:
    import lmdb

    path = path.resolve()
    with _LOCK:
        if path not in _ENVS:
            path.mkdir(parents=True, exist_ok=True)
            _ENVS[path] = lmdb.open(str(path), map_size=_MAP_SIZE, max_dbs=4)
        return _ENVS[path]


def _time(micros: int) -> bytes:
    return (micros + _OFFSET).to_bytes(8, "big")


class KeyedState:
    """The open tiles of one spec's stream (see the module docstring)."""

    def __init__(self, folder: Path, plan: SpecPlan) -> None:
        self.folder = folder
        self.plan = plan
        self.largest = plan.spec.granularities[0].micros
        self._opened: tuple[Any, Any, Any, Any] | None = None  # env, tiles, log, meta

    def _open(self) -> tuple[Any, Any, Any, Any]:
        if self._opened is None:
            env = _environment(self.folder)
            dbs = (env.open_db(b"tiles"), env.open_db(b"log"), env.open_db(b"meta"))
            self._opened = (env, *dbs)
        return self._opened

    def version(self) -> int | None:
        """The last state version applied (None before the first)."""
        env, _, _, meta = self._open()
        with env.begin(db=meta) as txn:
            raw = txn.get(_VERSION)
        return None if raw is None else int(raw)

    def check_layout(self, spec: str) -> None:
        """Refuse a state written in an earlier layout (it has no log to close from)."""
        if not (self.folder / "data.mdb").exists():
            return
        env = _environment(self.folder)
        with env.begin(db=env.open_db(b"meta")) as txn:  # opens no other table in it
            applied, layout = txn.get(_VERSION), txn.get(_LAYOUT)
        if applied is not None and layout != LAYOUT:
            raise StreamingError(
                f"the open tiles of spec {spec} ({self.folder}) were written by an earlier "
                "Robusta, in a layout this one does not read; start a fresh checkpoint "
                "(streaming.checkpoint), after `robusta materialize` and `robusta upload` "
                "of the range the stream served if its open day matters"
            )

    # ---- reads ----------------------------------------------------------------------------
    def day_keys(self, group: TileGroup, tiles: pa.Table) -> DayKeys:
        """The distinct (day, key id) pairs of ``tiles``."""
        if tiles.num_rows == 0:
            return []
        days = self._days(tiles)
        return sorted(set(zip(days.tolist(), key_ids(group, tiles), strict=True)))

    def read(self, group: TileGroup, pairs: DayKeys) -> pa.Table | None:
        """The stored tiles of ``pairs`` (tile-table columns), None when none is stored."""
        env, tiles, _, _ = self._open()
        schema = tile_schema(group)
        prefix = _prefix(group)
        batches = []
        with env.begin(db=tiles) as txn:
            for day, key in pairs:
                raw = txn.get(prefix + _time(day) + key)
                if raw is not None:
                    batches.append(decode(raw, schema))
        return pa.Table.from_batches(batches, schema) if batches else None

    def closing(
        self, group: TileGroup, before: int | None, after: int, newer: pa.Table | None = None
    ) -> pa.Table | None:
        """Every open tile ending in ``(before, after]`` (tile-table columns), at its latest
        version: from the log, superseded by ``newer`` (the tiles of the version being
        computed, not yet applied). None when there is none."""
        schema = tile_schema(group)
        parts = list(self._logged(group, before, after))
        if newer is not None and newer.num_rows:
            mine = newer.filter(closing_mask(newer, group, before, after))
            parts.append(mine.select(schema.names).cast(schema))
        parts = [t for t in parts if t.num_rows]
        if not parts:
            return None
        return latest_versions(group, parts)

    def _logged(self, group: TileGroup, before: int | None, after: int) -> Iterator[pa.Table]:
        """The log's entries ending in ``(before, after]``, in key order (end, version,
        piece): a tile's versions in the order they were written."""
        env, _, log, _ = self._open()
        schema = tile_schema(group)
        prefix = _prefix(group)
        low = prefix + (b"" if before is None else _time(before + 1))
        end = prefix + _time(after + 1)
        with env.begin(db=log) as txn:
            cursor = txn.cursor()
            ok = cursor.set_range(low)
            while ok and cursor.key() < end:
                yield pa.Table.from_batches([decode(cursor.value(), schema)])
                ok = cursor.next()

    # ---- writes ---------------------------------------------------------------------------
    def apply(self, version: int, touched: dict[str, pa.Table], pointer: int | None) -> None:
        """Version ``version``: its touched (day, key) tiles written (and logged), the days
        and log entries that ended by ``pointer`` dropped, and the version recorded, in one
        transaction."""
        env, _, _, meta = self._open()
        with env.begin(write=True) as txn:
            for group in self.plan.groups:
                tiles = touched.get(group.layout.table)
                if tiles is not None and tiles.num_rows:
                    self._put(txn, group, tiles, version, pointer)
                if pointer is not None:
                    self._drop_before(txn, group, floor_to(pointer, self.largest), pointer)
            txn.put(_VERSION, str(version).encode(), db=meta)
            txn.put(_LAYOUT, LAYOUT, db=meta)

    def _put(
        self, txn: Any, group: TileGroup, tiles: pa.Table, version: int, pointer: int | None
    ) -> None:
        """Each (day, key)'s tiles as one value; the changed tiles, and all of a pair new to
        the state (a seed's), logged by end."""
        _, tiles_db, _, _ = self._open()
        schema = tile_schema(group)
        prefix = _prefix(group)
        marks = pa.table(
            {
                "day": pa.array(self._days(tiles), pa.int64()),
                "key": pa.array(key_ids(group, tiles), pa.binary()),
            }
        )
        order = pc.sort_indices(marks, sort_keys=[("day", "ascending"), ("key", "ascending")])
        marks = marks.take(order)
        sorted_tiles = tiles.take(order)
        rows = one_batch(sorted_tiles.select(schema.names).cast(schema))
        offsets = run_offsets(marks, ["day", "key"])
        days = marks.column("day").to_pylist()
        keys = marks.column("key").to_pylist()
        new = np.zeros(len(offsets) - 1, np.bool_)
        runs = own_slices(rows, offsets)
        for i, (a, run) in enumerate(zip(offsets[:-1].tolist(), runs, strict=True)):
            old = txn.replace(prefix + _time(days[a]) + keys[a], encode(run), db=tiles_db)
            new[i] = old is None
        logged = np.repeat(new, np.diff(offsets))
        if CHANGED in sorted_tiles.column_names:
            logged |= np.asarray(sorted_tiles.column(CHANGED).to_numpy(), np.bool_)
        else:  # a version from before the keyed state: every tile
            logged[:] = True
        chosen = pa.Table.from_batches([rows]).filter(pa.array(logged))
        self._log(txn, group, chosen, version, pointer)

    def _log(
        self, txn: Any, group: TileGroup, tiles: pa.Table, version: int, pointer: int | None
    ) -> None:
        """``tiles`` as log entries of ``version``: by end, in pieces of :data:`PIECE`
        rows (those that ended by ``pointer`` are closed: not logged)."""
        _, _, log, _ = self._open()
        rows, pieces, bounds = log_pieces(group, tiles, pointer, PIECE)
        prefix = _prefix(group)
        stamp = version.to_bytes(8, "big")
        parts = own_slices(one_batch(rows), bounds)
        for (end, piece), part in zip(pieces, parts, strict=True):
            key = prefix + _time(end) + stamp + piece.to_bytes(4, "big")
            txn.put(key, encode(part), db=log)

    def _drop_before(self, txn: Any, group: TileGroup, day: int, pointer: int) -> None:
        """Delete the tiles of the days before ``day`` (closed) and the log entries that
        ended by ``pointer``."""
        _, tiles_db, log, _ = self._open()
        prefix = _prefix(group)
        for db, end in ((tiles_db, prefix + _time(day)), (log, prefix + _time(pointer + 1))):
            cursor = txn.cursor(db=db)
            ok = cursor.set_range(prefix)
            while ok and b"" < bytes(cursor.key()) < end:  # b"": past the last entry
                ok = cursor.delete()

    def _days(self, tiles: pa.Table) -> np.ndarray:
        starts = np.asarray(bucket_micros(tiles).to_numpy(), np.int64)
        return starts - np.mod(starts, self.largest)


def _prefix(group: TileGroup) -> bytes:
    return group.layout.table.encode() + b"\0"


def without_changed(tiles: pa.Table) -> pa.Table:
    return tiles.drop_columns([CHANGED]) if CHANGED in tiles.column_names else tiles
