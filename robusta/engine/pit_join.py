"""The point-in-time join's engine-neutral part: one tile group's features for Arrow batches
of rows sorted by key bucket (``GroupJoin.add_features``), the same on every engine.

A batch carries the rows' key columns (``key_column(i)``, cast to the entity types), their
``KEY_BUCKET`` (``plan.keys``; -1 for a null key), time ``TS`` and optionally ``POINTER``
(epoch microseconds). For each key bucket a batch meets, that bucket's tile files are read
with pyarrow (pruned beforehand to the rows' time range) and the pure assembler
(``robusta.plan.assembly``) computes every window of every row of the bucket at once. Memory is
one bucket's tiles plus one batch of rows, however hot a key is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.plan.assembly import GroupAssembler, Rows, TileSet
from robusta.plan.model import OutputFeature, TileGroup

ROW_ID = "__robusta_row_id"
TS = "__robusta_ts"  # row time, epoch microseconds
POINTER = "__robusta_pointer"  # version pointer, epoch microseconds
KEY_BUCKET = "__robusta_key_bucket"


def key_column(i: int) -> str:
    return f"__robusta_key{i}"


@dataclass(frozen=True)
class GroupJoin:
    """What a task needs to add one tile group's features: picklable, no Spark objects."""

    group: TileGroup
    outputs: tuple[OutputFeature, ...]
    files: Mapping[int, Sequence[str]]  # key bucket -> tile files that may hold needed tiles
    since: int | None  # no window starts before this (epoch micros); None: lifetime windows
    with_pointer: bool

    def add_features(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        assembler = GroupAssembler(self.group, self.outputs)
        loaded: tuple[int, TileSet] | None = None  # the current bucket's indexed tiles
        for batch in batches:
            if batch.num_rows == 0:
                continue
            buckets = np.asarray(batch.column(KEY_BUCKET).to_numpy(zero_copy_only=False))
            parts, positions = [], []
            for bucket in np.unique(buckets).tolist():
                if loaded is None or loaded[0] != bucket:
                    loaded = (bucket, assembler.prepare(self._tiles(bucket, assembler)))
                where = np.flatnonzero(buckets == bucket)
                rows = batch.take(pa.array(where))
                parts.append(assembler.assemble(loaded[1], self._rows(rows)))
                positions.append(where)
            features = pa.concat_tables(parts).combine_chunks()
            back = np.empty(batch.num_rows, np.int64)
            back[np.concatenate(positions)] = np.arange(batch.num_rows)
            features = features.take(pa.array(back))
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, *(c.combine_chunks() for c in features.columns)],
                names=[*batch.schema.names, *features.column_names],
            )

    def _rows(self, rows: pa.RecordBatch) -> Rows:
        n = len(self.group.layout.keys)
        ts = rows.column(TS)
        pointer = rows.column(POINTER) if self.with_pointer else None
        return Rows(
            keys=[rows.column(key_column(i)) for i in range(n)],
            ts=_int64(ts),
            ts_valid=_valid(ts),
            pointer=_int64(pointer) if pointer is not None else None,
            pointer_valid=_valid(pointer) if pointer is not None else None,
        )

    def _tiles(self, bucket: int, assembler: GroupAssembler) -> pa.Table:
        from robusta.store.tiles import read_bucket, tile_identity

        columns = assembler.tile_columns()
        paths = list(self.files.get(bucket, ()))
        if not paths:
            return _empty_tiles(self.group, columns)
        identity = tile_identity(self.group)
        return read_bucket(paths, bucket, since=self.since, columns=columns, identity=identity)


def _empty_tiles(group: TileGroup, columns: list[str]) -> pa.Table:
    from robusta.store.tiles import tile_schema

    schema = tile_schema(group)
    return schema.empty_table().select(columns)


def _int64(column: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(column, 0).to_numpy(zero_copy_only=False), np.int64)


def _valid(column: pa.Array) -> np.ndarray:
    return np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False), dtype=bool)
