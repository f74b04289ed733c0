"""The point-in-time join's engine-neutral part: one tile group's features for Arrow batches
of rows sorted by key bucket (``GroupJoin.add_features``), the same on every engine.

A batch carries the rows' key columns (``key_column(i)``, cast to the entity types), their
``KEY_BUCKET`` (``plan.keys``; -1 for a null key), time ``TS`` and optionally ``POINTER``
(epoch microseconds). For each key bucket a batch meets, that bucket's tile files are read
with pyarrow (pruned beforehand to the rows' time range) and the pure assembler
(``robusta.plan.assembly``) computes every window of every row of the bucket at once.

Memory is one bucket's tiles plus one batch of rows, however hot a key is, and a budget
(``offline.join_memory``) bounds the tiles: a bucket whose tile files would take more is
split by key hash into ``parts`` (:func:`split_buckets`, ``plan.keys.KeyPart``); rows then
carry their ``KEY_PART`` too, arrive sorted by (bucket, part), and each part's tiles are
read (batch by batch, keeping only the part's keys) when its first row comes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.plan.assembly import GroupAssembler, Rows, TileSet
from robusta.plan.keys import KeyPart
from robusta.plan.model import OutputFeature, TileGroup
from robusta.store.files import Storage

ROW_ID = "__robusta_row_id"
TS = "__robusta_ts"  # row time, epoch microseconds
POINTER = "__robusta_pointer"  # version pointer, epoch microseconds
KEY_BUCKET = "__robusta_key_bucket"
KEY_PART = "__robusta_key_part"  # slice of the key bucket (0 when it is not split)
# Memory per byte of tile files, what the budget's split assumes: the Arrow tiles a join task
# loads measured 3.1x their Parquet bytes (every operator, docs/benchmarks.md "Scaling").
MEMORY_PER_FILE_BYTE = 3
_PART_BITS = 20  # (bucket, part) packed in one int64 while a batch is grouped


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
    storage: Storage  # opens the files' URIs in whichever process runs the task
    parts: Mapping[int, int] = field(default_factory=dict)  # bucket -> key parts (absent: 1)

    def add_features(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        assembler = GroupAssembler(self.group, self.outputs)
        loaded: tuple[int, TileSet] | None = None  # the current bucket's indexed tiles
        for batch in batches:
            if batch.num_rows == 0:
                continue
            slices = _slices(batch)
            parts, positions = [], []
            for code in np.unique(slices).tolist():
                if loaded is None or loaded[0] != code:
                    bucket, part = code >> _PART_BITS, code & ((1 << _PART_BITS) - 1)
                    tiles = self._tiles(bucket, part, assembler)
                    loaded = (code, assembler.prepare(tiles))
                where = np.flatnonzero(slices == code)
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

    def _tiles(self, bucket: int, part: int, assembler: GroupAssembler) -> pa.Table:
        from robusta.store.tiles import read_bucket, tile_identity

        columns = assembler.tile_columns()
        paths = list(self.files.get(bucket, ()))
        if not paths:
            return _empty_tiles(self.group, columns)
        layout = self.group.layout
        sliced = KeyPart(layout.primary, part, self.parts.get(bucket, 1), layout.key_buckets)
        return read_bucket(
            self.storage,
            paths,
            bucket,
            since=self.since,
            columns=columns,
            identity=tile_identity(self.group),
            part=sliced,
        )


def split_buckets(file_bytes: Mapping[int, int], budget: int) -> dict[int, int]:
    """Key parts per bucket so that each part's tiles fit ``budget`` bytes in memory, from
    the bytes of the bucket's tile files (only buckets that need more than one part)."""
    parts = {}
    for bucket, size in file_bytes.items():
        count = -(-size * MEMORY_PER_FILE_BYTE // budget)
        if count > 1:
            parts[bucket] = min(count, 1 << _PART_BITS)
    return parts


def _slices(batch: pa.RecordBatch) -> np.ndarray:
    """Each row's (key bucket, key part), packed in one int64."""
    buckets = np.asarray(batch.column(KEY_BUCKET).to_numpy(zero_copy_only=False), np.int64)
    if KEY_PART not in batch.schema.names:
        return buckets << _PART_BITS
    parts = np.asarray(batch.column(KEY_PART).to_numpy(zero_copy_only=False), np.int64)
    return (buckets << _PART_BITS) | parts


def _empty_tiles(group: TileGroup, columns: list[str]) -> pa.Table:
    from robusta.store.tiles import tile_schema

    schema = tile_schema(group)
    return schema.empty_table().select(columns)


def _int64(column: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(column, 0).to_numpy(zero_copy_only=False), np.int64)


def _valid(column: pa.Array) -> np.ndarray:
    return np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False), dtype=bool)
