"""A stream's open tiles on disk, keyed: a micro-batch reads and writes only the keys it
touches, whatever the number of keys the open buckets hold.

An LMDB environment in the checkpoint (``<checkpoint>/<spec>/keyed/``) holds, per tile table:

- *tiles*: per largest-granularity bucket (a *day*) and key, that key's tiles of the day
  (every granularity, tile-table columns) as one Arrow record batch;
- *finest*: an index entry per finest bucket a key has tiles in, so the tiles that close when
  the pointer passes a bucket are found without reading the other keys.

It is a view of the state versions (``checkpoint``): version ``N`` publishes the full tiles of
the (day, key) pairs batch ``N`` touched and the tiles it closed as Parquet, then
:meth:`KeyedState.apply` writes them here in one transaction that records ``N``; a crash
between the two is redone from the version's files (:meth:`KeyedState.catch_up`), so the
state is always the one of the last published version. Days that closed are deleted when the
version that closed them is applied (its closing tiles are in its files for the offline
commit).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.plan.model import SpecPlan, TileGroup
from robusta.plan.open_tiles import CHANGED, bucket_micros, closing_from, key_ids, run_offsets
from robusta.spec.durations import floor_to
from robusta.store.online.records import decode, encode
from robusta.store.tiles import tile_schema

_MAP_SIZE = 1 << 40  # address space only: LMDB files grow with what they hold
_VERSION = b"version"
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
            _ENVS[path] = lmdb.open(str(path), map_size=_MAP_SIZE, max_dbs=3)
        return _ENVS[path]


def _time(micros: int) -> bytes:
    return (micros + _OFFSET).to_bytes(8, "big")


class KeyedState:
    """The open tiles of one spec's stream (see the module docstring)."""

    def __init__(self, folder: Path, plan: SpecPlan) -> None:
        self.folder = folder
        self.plan = plan
        self.largest = plan.spec.granularities[0].micros
        self._opened: tuple[Any, Any, Any, Any] | None = None  # env, tiles, index, meta

    def _open(self) -> tuple[Any, Any, Any, Any]:
        if self._opened is None:
            env = _environment(self.folder)
            dbs = (env.open_db(b"tiles"), env.open_db(b"finest"), env.open_db(b"meta"))
            self._opened = (env, *dbs)
        return self._opened

    def version(self) -> int | None:
        """The last state version applied (None before the first)."""
        env, _, _, meta = self._open()
        with env.begin(db=meta) as txn:
            raw = txn.get(_VERSION)
        return None if raw is None else int(raw)

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

    def closing_keys(self, group: TileGroup, before: int | None, after: int) -> DayKeys:
        """(day, key) of every key with a tile that may close in ``(before, after]``: those
        with finest tiles from the start of the earliest bucket (any granularity) that ends
        in that range up to ``after``, read from the index."""
        closes, low = closing_from(self.plan.spec.granularities, before, after)
        if not closes:
            return []
        env, _, index, _ = self._open()
        prefix = _prefix(group)
        end = prefix + _time(after)
        found: set[tuple[int, bytes]] = set()
        with env.begin(db=index) as txn:
            cursor = txn.cursor()
            ok = cursor.set_range(prefix + (b"" if low is None else _time(low)))
            while ok:
                entry = bytes(cursor.key())
                if not entry.startswith(prefix) or entry >= end:
                    break
                start = int.from_bytes(entry[len(prefix) : len(prefix) + 8], "big") - _OFFSET
                found.add((floor_to(start, self.largest), entry[len(prefix) + 8 :]))
                ok = cursor.next()
        return sorted(found)

    # ---- writes ---------------------------------------------------------------------------
    def apply(self, version: int, touched: dict[str, pa.Table], pointer: int | None) -> None:
        """Version ``version``: its touched (day, key) tiles written, the days that ended by
        ``pointer`` dropped, and the version recorded, in one transaction."""
        env, _, _, meta = self._open()
        with env.begin(write=True) as txn:
            for group in self.plan.groups:
                tiles = touched.get(group.layout.table)
                if tiles is not None and tiles.num_rows:
                    self._put(txn, group, tiles)
                if pointer is not None:
                    self._drop_before(txn, group, floor_to(pointer, self.largest))
            txn.put(_VERSION, str(version).encode(), db=meta)

    def _put(self, txn: Any, group: TileGroup, tiles: pa.Table) -> None:
        """Each (day, key)'s tiles as one value, and an index entry per finest tile."""
        _, tiles_db, index, _ = self._open()
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
        rows = tiles.select(schema.names).cast(schema).take(order)
        offsets = run_offsets(marks, ["day", "key"])
        finest = pc.equal(rows.column("granularity"), self.plan.spec.finest.name)
        is_finest = np.asarray(finest.to_numpy(zero_copy_only=False), np.bool_)
        starts = np.asarray(bucket_micros(rows).to_numpy(), np.int64)
        days = marks.column("day").to_pylist()
        keys = marks.column("key").to_pylist()
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            batch = rows.slice(a, b - a).combine_chunks().to_batches()[0]
            txn.put(prefix + _time(days[a]) + keys[a], encode(batch), db=tiles_db)
            for i in (np.flatnonzero(is_finest[a:b]) + a).tolist():
                txn.put(prefix + _time(int(starts[i])) + keys[a], b"", db=index)

    def _drop_before(self, txn: Any, group: TileGroup, day: int) -> None:
        """Delete the tiles and index entries of the days before ``day`` (closed)."""
        _, tiles_db, index, _ = self._open()
        prefix = _prefix(group)
        end = prefix + _time(day)
        for db in (tiles_db, index):
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
