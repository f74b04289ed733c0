"""Online records: the bytes an online store holds per key, and back.

A *tile record* holds one key's tiles of one tile group as an Arrow record batch (columns
``level`` (0 = finest granularity), ``bucket_start`` (epoch micros) and one IR column per base
feature), sorted by (level, bucket_start), so the assembler indexes a lookup's records
without sorting (:meth:`robusta.plan.assembly.TileSet.from_records`), as an Arrow IPC
message without the schema, which the plan gives. Value records (a key's row of final
values) are packed for fast decoding of many: :mod:`robusta.store.online.value_records`.
"""

from __future__ import annotations

import functools
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
    if len(raws) == 1:  # no stream to frame (a lookup of one key)
        table = pa.Table.from_batches([decode(raws[0], schema)])
    elif raws:
        stream = b"".join([_schema_message(schema), *raws, _END_OF_STREAM])
        table = pa.ipc.open_stream(stream).read_all()
    else:
        table = schema.empty_table()
    return (table if names is None else table.select(list(names))).combine_chunks()


@functools.lru_cache(maxsize=256)
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
    for a, b in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        batch = data.slice(a, b - a).combine_chunks().to_batches()
        yield str(keys[a].as_py()), encode(batch[0])
