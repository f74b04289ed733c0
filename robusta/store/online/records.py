"""Online records: the bytes an online store holds per key, and back.

A *tile record* holds one key's tiles of one tile group as an Arrow record batch (columns
``level`` (0 = finest granularity), ``bucket_start`` (epoch micros) and one IR column per base
feature), sorted by (level, bucket_start), so the assembler indexes a lookup's records
without sorting (:meth:`robusta.plan.assembly.TileSet.from_records`). A *value record*
(pre-assembled specs) holds one row of final feature values. Both are Arrow IPC messages
without the schema, which the plan gives.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.plan.assembly import levels
from robusta.plan.key_assembly import BUCKET_START, LEVEL, record_schema
from robusta.plan.keys import record_keys
from robusta.plan.model import OutputFeature, TileGroup


def tile_record_schema(group: TileGroup) -> pa.Schema:
    return record_schema(group)


def value_record_schema(outputs: Sequence[OutputFeature]) -> pa.Schema:
    return pa.schema([pa.field(o.name, o.type) for o in outputs])


def encode(batch: pa.RecordBatch) -> bytes:
    return bytes(batch.serialize())


def decode(raw: bytes, schema: pa.Schema) -> pa.RecordBatch:
    return pa.ipc.read_record_batch(pa.py_buffer(raw), schema)


_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def decode_rows(
    raws: Sequence[bytes], schema: pa.Schema, names: Sequence[str] | None = None
) -> pa.Table:
    """Many records as one table of one chunk, a record's rows after the previous one's
    (only the columns ``names``, when given). The records are read as one IPC stream (the
    schema, every message, the end): about half the cost of reading each on its own.
    (Read in two threads, two halves took longer: Arrow's reader holds the GIL enough.)"""
    if raws:
        stream = b"".join([bytes(schema.serialize()), *raws, _END_OF_STREAM])
        table = pa.ipc.open_stream(stream).read_all()
    else:
        table = schema.empty_table()
    return (table if names is None else table.select(list(names))).combine_chunks()


def key_runs(keys: pa.Array) -> np.ndarray:
    """Start of every run of equal values in sorted ``keys``, then ``len(keys)``."""
    codes = np.asarray(pc.dictionary_encode(keys).indices.to_numpy(), np.int64)
    return np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1, [len(codes)]]).astype(np.int64)


def tile_records(group: TileGroup, tiles: pa.Table) -> Iterator[tuple[str, bytes]]:
    """(key text, tile record) per key of ``tiles`` (tile-table columns)."""
    if tiles.num_rows == 0:
        return
    keys = record_keys([tiles.column(k.column).combine_chunks() for k in group.layout.keys])
    micros = tiles.column(BUCKET_START).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    body = pa.table(
        {
            "__key": keys,
            LEVEL: pa.array(levels(tiles.column("granularity"), group), pa.int8()),
            BUCKET_START: micros,
            **{f.ir_column: tiles.column(f.ir_column) for f in group.features},
        }
    ).sort_by([("__key", "ascending"), (LEVEL, "ascending"), (BUCKET_START, "ascending")])
    yield from _runs(body, tile_record_schema(group))


def value_records(keys: pa.Array, values: pa.Table) -> Iterator[tuple[str, bytes]]:
    """(key text, value record) per row: ``keys`` are key texts, ``values`` the features."""
    if values.num_rows == 0:
        return
    rows = _OwnRows(values)
    for i, key in enumerate(keys.to_pylist()):
        yield key, encode(rows.row(i))


class _OwnRows:
    """One-row batches of a table, each holding its own values only.

    Arrow's IPC writer (pyarrow 26) writes the whole offsets buffer of a zero-length slice
    of a string array, which the slice of a row with an empty or null list hands it: such
    a row's record carried every offset of its list's child (10-50x the row). A row with
    an empty or null top-level list gets a one-row array built once instead, and a row with
    an empty list further down (in a map's values) is copied (``take``, rarer and slower)."""

    def __init__(self, values: pa.Table) -> None:
        self.batch = values.combine_chunks().to_batches()[0]
        self.spare: dict[int, tuple[np.ndarray, pa.Array, np.ndarray, pa.Array]] = {}
        self.copied = np.zeros(self.batch.num_rows, np.bool_)
        for i, column in enumerate(self.batch.columns):
            if _is_list(column.type):
                nulls = column.is_null().to_numpy(zero_copy_only=False)
                lengths = np.diff(column.offsets.to_numpy())
                empty = (lengths == 0) & ~nulls
                self.spare[i] = (nulls, pa.nulls(1, column.type), empty, _empty_list(column.type))
                self.copied |= _deep_empties(column)
            else:
                self.copied |= _shallow_empties(column)
        self.patched = np.zeros(self.batch.num_rows, np.bool_)
        for nulls, _, empty, _ in self.spare.values():
            self.patched |= nulls | empty

    def row(self, i: int) -> pa.RecordBatch:
        if self.copied[i]:
            return self.batch.take(pa.array([i], pa.int64()))
        if not self.patched[i]:
            return self.batch.slice(i, 1)
        arrays = []
        for j, column in enumerate(self.batch.columns):
            spare = self.spare.get(j)
            if spare is not None and spare[0][i]:
                arrays.append(spare[1])
            elif spare is not None and spare[2][i]:
                arrays.append(spare[3])
            else:
                arrays.append(column.slice(i, 1))
        return pa.RecordBatch.from_arrays(arrays, schema=self.batch.schema)


def _is_list(kind: pa.DataType) -> bool:
    return bool(pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind))


def _empty_list(kind: pa.DataType) -> pa.Array:
    return pa.array([[]], kind)


def _deep_empties(column: pa.Array) -> np.ndarray:
    """Rows of a list column with an empty or null list among its values' descendants."""
    offsets = column.offsets.to_numpy()
    child = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    parents = np.repeat(np.arange(len(column)), np.diff(offsets))
    out = np.zeros(len(column), np.bool_)
    out[parents[_shallow_empties(child) | _list_empties(child)]] = True
    return out


def _list_empties(array: pa.Array) -> np.ndarray:
    """Rows of ``array`` that are an empty or null list, or hold one further down."""
    if not _is_list(array.type):
        return np.zeros(len(array), np.bool_)
    lengths = np.diff(array.offsets.to_numpy())
    nulls = array.is_null().to_numpy(zero_copy_only=False)
    return np.asarray((lengths == 0) | nulls | _deep_empties(array), np.bool_)


def _shallow_empties(array: pa.Array) -> np.ndarray:
    """Rows of a non-list array (a struct's fields) with an empty or null list inside."""
    out = np.zeros(len(array), np.bool_)
    if pa.types.is_struct(array.type):
        for field in array.flatten():
            out |= _shallow_empties(field) | _list_empties(field)
    return out


def _runs(body: pa.Table, schema: pa.Schema) -> Iterator[tuple[str, bytes]]:
    keys = body.column("__key").combine_chunks()
    data = pa.Table.from_arrays(
        [body.column(name).combine_chunks() for name in schema.names], schema=schema
    )
    starts = key_runs(keys)
    for a, b in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        batch = data.slice(a, b - a).combine_chunks().to_batches()
        yield str(keys[a].as_py()), encode(batch[0])
