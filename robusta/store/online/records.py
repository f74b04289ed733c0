"""Online records: the bytes an online store holds per key, and back.

A *tile record* holds one key's tiles of one tile group as an Arrow record batch (columns
``level`` (0 = finest granularity), ``bucket_start`` (epoch micros) and one IR column per base
feature), sorted by (level, bucket_start), so the assembler indexes a lookup's records
without sorting (:meth:`robusta.plan.assembly.TileSet.from_records`), as an Arrow IPC
message without the schema, which the plan gives. Value records (a key's row of final
values) are packed for fast decoding of many: :mod:`robusta.store.online.value_records`.

Every record is a slice of a larger batch, cut by :func:`own_slices`: Arrow's IPC writer
(pyarrow 26) writes the whole offsets buffer of a zero-length slice of a string or list
array, which the slice of rows whose lists are all empty or null hands it (a key whose
last-n lists are empty carried every offset of the batch: 240 KB for 300 bytes of tiles).
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
from robusta.store.online.schema_cache import by_schema_identity


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
    if len(raws) == 1:  # no stream to frame (a lookup of one key)
        table = pa.Table.from_batches([decode(raws[0], schema)])
    elif raws:
        stream = b"".join([_schema_message(schema), *raws, _END_OF_STREAM])
        table = pa.ipc.open_stream(stream).read_all()
    else:
        table = schema.empty_table()
    return (table if names is None else table.select(list(names))).combine_chunks()


@by_schema_identity
def _schema_message(schema: pa.Schema) -> bytes:
    return bytes(schema.serialize())


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


def _runs(body: pa.Table, schema: pa.Schema) -> Iterator[tuple[str, bytes]]:
    keys = body.column("__key").combine_chunks()
    data = pa.Table.from_arrays(
        [body.column(name).combine_chunks() for name in schema.names], schema=schema
    )
    starts = key_runs(keys)
    batch = one_batch(data)
    for a, run in zip(starts[:-1].tolist(), own_slices(batch, starts), strict=True):
        yield str(keys[a].as_py()), encode(run)


def one_batch(table: pa.Table) -> pa.RecordBatch:
    """``table`` as one record batch (its columns combined)."""
    table = table.combine_chunks()
    if table.num_rows == 0:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    (batch,) = table.to_batches()
    return batch


def own_slices(batch: pa.RecordBatch, bounds: np.ndarray) -> Iterator[pa.RecordBatch]:
    """Each run of rows ``[bounds[k], bounds[k + 1])`` of ``batch`` as a batch that holds
    its own values only (see the module docstring): a slice, or, for the columns of a run
    with an empty descendant, a one-row array built once (a null or empty list) or a copy."""
    hollow = [_hollow(column, bounds) for column in batch.columns]
    if not any(column.any() for column in hollow):
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            yield batch.slice(a, b - a)
        return
    spares = {j: _Spare(batch.column(j)) for j, column in enumerate(hollow) if column.any()}
    flags = np.stack(hollow, axis=1)
    patched = [bool(p) for p in np.any(flags, axis=1)]
    for k, (a, b) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
        if not patched[k]:
            yield batch.slice(a, b - a)
            continue
        arrays = [
            spares[j].rows(a, b) if own else column.slice(a, b - a)
            for j, (column, own) in enumerate(zip(batch.columns, flags[k].tolist(), strict=True))
        ]
        yield pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


class _Spare:
    """A column's runs as arrays of their own: a null or empty list row from arrays
    built once (most of them), any other run copied (``take``, slower)."""

    def __init__(self, column: pa.Array) -> None:
        self.column = column
        self.nulls = self.empty = None
        if is_list(column.type):
            self.nulls = column.is_null().to_numpy(zero_copy_only=False)
            self.empty = np.diff(column.offsets.to_numpy()) == 0
            self.null_row = pa.nulls(1, column.type)
            self.empty_row = pa.array([[]], column.type)

    def rows(self, a: int, b: int) -> pa.Array:
        if b - a == 1 and self.nulls is not None and self.empty is not None:
            if self.nulls[a]:
                return self.null_row
            if self.empty[a]:
                return self.empty_row
        return self.column.take(pa.array(np.arange(a, b, dtype=np.int64)))


def _hollow(array: pa.Array, bounds: np.ndarray) -> np.ndarray:
    """Per run of ``array`` (``bounds``, positions in it), whether a slice of the run
    holds a zero-length slice of a child array, or a null list whose offsets span values
    (operators' null masks leave them), at any depth."""
    out = np.zeros(len(bounds) - 1, np.bool_)
    if is_list(array.type):
        offsets = np.asarray(array.offsets.to_numpy(), np.int64)  # places in .values
        inner = offsets[bounds]
        out |= np.diff(inner) == 0
        if array.null_count:
            nulls = array.is_null().to_numpy(zero_copy_only=False)
            spanning = np.concatenate([[0], np.cumsum(nulls & (np.diff(offsets) > 0))])
            out |= np.diff(spanning[bounds]) > 0
        out |= _hollow(array.values, inner)
    elif pa.types.is_struct(array.type):
        for field in array.flatten():
            out |= _hollow(field, bounds)
    return out


def is_list(kind: pa.DataType) -> bool:
    return bool(pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind))
