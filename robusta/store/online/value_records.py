"""Value records: one key's row of final feature values (head values, pre-assembled specs).

A lookup of many keys (a ranking request's 500 items) decodes that many records, and an Arrow
IPC message costs about a quarter of a microsecond per array on top of its own fixed cost,
whatever the row holds. So a value record is *packed*: ``MAGIC``, then every fixed-width
value (integers, floats, booleans, dates, times, timestamps, durations) with a validity byte
at fixed places, then the texts, lists, structs and maps as plain buffers
(:mod:`robusta.store.online.packed`), then any other value (none of the operators' types) as
an IPC message of those columns alone. Many records decode as one numpy view of their fixed
parts and one gather per buffer of the rest. Values are kept bit for bit (floats as their
bits: NaN payloads, -0.0).

Records written before still decode: ``RBV1`` records (the fixed-width values packed, every
other value in the IPC message) and bare IPC messages (which start with 0xFFFFFFFF).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from robusta.store.online.packed import (
    Reader,
    fixed_width,
    pack,
    packable,
    python_native,
    python_readers,
    struct_code,
    unpack,
    unpack_python,
)
from robusta.store.online.records import decode, decode_rows, encode, one_batch, own_slices
from robusta.store.online.schema_cache import by_schema_identity

MAGIC = b"RBV2"  # a packed record; an IPC message starts with 0xFFFFFFFF instead
MAGIC_V1 = b"RBV1"  # written before texts and lists were packed: those in the IPC message


@dataclass(frozen=True)
class _Layout:
    """Where a schema's values go: the fixed-width fields (index in the schema, storage
    dtype) packed in ``dtype``, then the ``packed`` fields' buffers, then the other fields
    in an IPC message of ``rest``."""

    schema: pa.Schema
    fixed: tuple[tuple[int, np.dtype], ...]
    dtype: np.dtype
    packed: tuple[int, ...]  # fields laid out by ``robusta.store.online.packed``
    rest: pa.Schema
    format: str  # the fixed part for ``struct``: each value as Python reads it, its validity
    places: dict[str, int]  # fixed-width field -> its value's place in a ``struct`` tuple
    converted: dict[str, pa.DataType]  # fixed-width fields ``struct`` reads as integers

    packed_kinds: tuple[pa.DataType, ...]
    readers: tuple[Reader, ...] | None  # reading the packed fields as Python values, if all can

    @property
    def width(self) -> int:
        return int(self.dtype.itemsize)


@by_schema_identity
def _layout(schema: pa.Schema, magic: bytes = MAGIC) -> _Layout:
    """The layout of records of ``schema`` that start with ``magic`` (``MAGIC_V1``: no
    packed fields)."""
    fixed = []
    packed = []
    rest = []
    for i, field in enumerate(schema):
        storage = _storage(field.type)
        if storage is not None:
            fixed.append((i, storage))
        elif magic == MAGIC and packable(field.type):
            packed.append(i)
        else:
            rest.append(field)
    dtype = np.dtype([item for i, s in fixed for item in ((f"v{i}", s), (f"n{i}", np.uint8))])
    codes = "".join(struct_code(schema[i].type) + "B" for i, _ in fixed)
    places = {schema[i].name: 2 * k for k, (i, _) in enumerate(fixed)}
    converted = {
        schema[i].name: schema[i].type for i, _ in fixed if not python_native(schema[i].type)
    }
    kinds = tuple(schema[i].type for i in packed)
    readers = python_readers(kinds) if all(python_native(k) for k in kinds) else None
    return _Layout(
        schema,
        tuple(fixed),
        dtype,
        tuple(packed),
        pa.schema(rest),
        "<" + codes,
        places,
        converted,
        kinds,
        readers,
    )


def _storage(kind: pa.DataType) -> np.dtype | None:
    """The unsigned integer a fixed-width type's values are kept as (bits), or None."""
    width = fixed_width(kind)
    return None if width is None else np.dtype(f"<u{width}")


def value_records(keys: pa.Array, values: pa.Table) -> Iterator[tuple[str, bytes]]:
    """(key text, value record) per row: ``keys`` are key texts, ``values`` the features."""
    yield from zip(keys.to_pylist(), encode_values(values), strict=True)


def encode_values(values: pa.Table) -> list[bytes]:
    """The packed value record of every row of ``values``."""
    n = values.num_rows
    if n == 0:
        return []
    layout = _layout(values.schema)
    values = values.combine_chunks()
    fixed = np.zeros(n, layout.dtype)
    for i, storage in layout.fixed:
        column = values.column(i).chunk(0)
        fixed[f"n{i}"] = column.is_valid().to_numpy(zero_copy_only=False)
        fixed[f"v{i}"] = _bits(column, storage)
    blob = fixed.tobytes()
    width = layout.width
    out = [MAGIC + blob[r * width : (r + 1) * width] for r in range(n)]
    if layout.packed:
        data, bounds = pack([values.column(i).chunk(0) for i in layout.packed])
        texts = data.tobytes()
        ends = bounds.tolist()
        out = [head + texts[ends[r] : ends[r + 1]] for r, head in enumerate(out)]
    if layout.rest.names:
        rest = own_slices(one_batch(values.select(layout.rest.names)), np.arange(n + 1))
        out = [head + encode(row) for head, row in zip(out, rest, strict=True)]
    return out


def _bits(column: pa.Array, storage: np.dtype) -> np.ndarray:
    """A fixed-width column's values as unsigned integers of its width (nulls as 0)."""
    if pa.types.is_boolean(column.type):
        return np.asarray(column.fill_null(False).to_numpy(zero_copy_only=False), np.uint8)
    unsigned = pa.from_numpy_dtype(storage)
    return np.asarray(column.view(unsigned).fill_null(0).to_numpy(), storage)


def decode_values(
    raws: Sequence[bytes], schema: pa.Schema, names: Sequence[str] | None = None
) -> pa.Table:
    """Value records (packed, or as written before) as one table of one chunk, a row per
    record in order, with only the columns ``names`` when given."""
    wanted = list(schema.names if names is None else names)
    magics = {_magic(raw) for raw in raws}
    if len(magics) > 1:  # records of two formats (an upload under way): not a fast path
        batches = [_decode_one(raw, schema) for raw in raws]
        return pa.Table.from_batches(batches, schema).select(wanted).combine_chunks()
    magic = magics.pop() if magics else MAGIC
    if not magic:
        return decode_rows(raws, schema, wanted)
    return _unpack(raws, _layout(schema, magic), wanted)


def _magic(raw: bytes) -> bytes:
    """``MAGIC``, ``MAGIC_V1`` or, for a bare IPC message, nothing."""
    head = raw[: len(MAGIC)]
    return head if head in (MAGIC, MAGIC_V1) else b""


def _decode_one(raw: bytes, schema: pa.Schema) -> pa.RecordBatch:
    magic = _magic(raw)
    if magic:
        return _unpack([raw], _layout(schema, magic), schema.names).to_batches()[0]
    return decode(raw, schema)


def _unpack(raws: Sequence[bytes], layout: _Layout, wanted: list[str]) -> pa.Table:
    schema = layout.schema
    fixed = dict(layout.fixed)
    chosen = set(wanted)
    columns: dict[str, pa.Array] = {}
    picked = [i for i, field in enumerate(schema) if field.name in chosen and i in fixed]
    if picked:
        packed = np.frombuffer(_fixed_parts(raws, layout), layout.dtype, count=len(raws))
        for i in picked:
            columns[schema[i].name] = _column(schema[i].type, packed[f"v{i}"], packed[f"n{i}"])
    columns.update(_variable_columns(raws, layout, wanted))
    return pa.Table.from_arrays(
        [columns[name] for name in wanted], schema=pa.schema([schema.field(n) for n in wanted])
    )


PYTHON_READ_MAX = 16  # records read as Python values one by one; more go through Arrow


def decode_value_columns(
    raws: Sequence[bytes], schema: pa.Schema, names: Sequence[str]
) -> dict[str, list[Any]]:
    """Packed value records as Python values, a list per column of ``names`` (maps as
    dicts): what :func:`decode_values` then ``to_pylist`` give, without Arrow arrays for
    a few records (a lookup of one key decodes in a few microseconds)."""
    magics = {_magic(raw) for raw in raws}
    if len(magics) != 1 or b"" in magics:
        table = decode_values(raws, schema, names)
        return {name: _python(table.column(name)) for name in names}
    layout = _layout(schema, magics.pop())
    out: dict[str, list[Any]] = {}
    tuples = []
    if layout.width:
        tuples = list(struct.iter_unpack(layout.format, _fixed_parts(raws, layout)))
    for name in names:
        place = layout.places.get(name)
        if place is None:
            continue
        values = [t[place] if t[place + 1] else None for t in tuples]
        kind = layout.converted.get(name)
        if kind is not None:  # dates, times, timestamps, durations: as Arrow makes them
            values = pa.array(values, pa.from_numpy_dtype(_signed(kind))).view(kind).to_pylist()
        out[name] = values
    others = [name for name in names if name not in layout.places]
    if others and layout.readers is not None and len(raws) <= PYTHON_READ_MAX:
        out.update(_python_columns(raws, layout, others))
    elif others:
        for name, column in _variable_columns(raws, layout, others).items():
            out[name] = _python(column)
    return {name: out[name] for name in names}


def _fixed_parts(raws: Sequence[bytes], layout: _Layout) -> bytes:
    start = len(MAGIC)
    end = start + layout.width
    return b"".join([raw[start:end] for raw in raws])


def _variable_columns(
    raws: Sequence[bytes], layout: _Layout, wanted: list[str]
) -> dict[str, pa.Array]:
    """The wanted columns of the packed fields and of the IPC message."""
    chosen = set(wanted)
    names = [layout.schema[i].name for i in layout.packed]
    rest = [name for name in wanted if name in set(layout.rest.names)]
    if chosen.isdisjoint(names) and not rest:
        return {}
    start = len(MAGIC) + layout.width
    tails = [raw[start:] for raw in raws]
    out: dict[str, pa.Array] = {}
    if layout.packed:
        lengths = np.fromiter(map(len, tails), np.int64, len(tails))
        starts = np.cumsum(lengths) - lengths
        blob = np.frombuffer(b"".join(tails), np.uint8)
        arrays, ends = unpack(blob, starts, layout.packed_kinds)
        out.update((n, a) for n, a in zip(names, arrays, strict=True) if n in chosen)
        skipped = (ends - starts).tolist()
        tails = [tail[skip:] for tail, skip in zip(tails, skipped, strict=True)]
    if rest:
        out.update(_rest_columns(tails, layout.rest, rest))
    return out


def _python_columns(
    raws: Sequence[bytes], layout: _Layout, wanted: list[str]
) -> dict[str, list[Any]]:
    """``_variable_columns`` as Python values, read record by record without Arrow."""
    start = len(MAGIC) + layout.width
    readers = layout.readers or ()
    rows = []
    tails = []
    for raw in raws:
        values, end = unpack_python(raw, start, readers)
        rows.append(values)
        tails.append(raw[end:])
    chosen = set(wanted)
    out = {
        layout.schema[i].name: [row[k] for row in rows]
        for k, i in enumerate(layout.packed)
        if layout.schema[i].name in chosen
    }
    rest = [name for name in wanted if name in set(layout.rest.names)]
    if rest:
        for name, column in _rest_columns(tails, layout.rest, rest).items():
            out[name] = _python(column)
    return out


def _rest_columns(tails: list[bytes], rest: pa.Schema, wanted: list[str]) -> dict[str, pa.Array]:
    """Columns ``wanted`` of the records' IPC messages (``tails``)."""
    table = decode_rows(tails, rest, wanted)
    return {
        name: table.column(name).chunk(0)
        if table.num_rows
        else pa.array([], table.schema.field(name).type)
        for name in wanted
    }


def _python(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """A column's values as Python objects, maps as dicts (``maps_as_pydicts`` converts
    value by value: only maps pay for it)."""
    if pa.types.is_map(column.type):
        values: list[Any] = column.to_pylist(maps_as_pydicts="strict")
        return values
    plain: list[Any] = column.to_pylist()
    return plain


def _signed(kind: pa.DataType) -> np.dtype:
    return np.dtype(f"<i{kind.bit_width // 8}")


def _column(kind: pa.DataType, bits: np.ndarray, valid: np.ndarray) -> pa.Array:
    """An Arrow array of ``kind`` from its values' bits and validity bytes."""
    mask = valid == 0
    if pa.types.is_boolean(kind):
        return pa.array(bits != 0, pa.bool_(), mask=mask if mask.any() else None)
    data = pa.py_buffer(np.ascontiguousarray(bits))
    bitmap = pa.array(~mask).buffers()[1] if mask.any() else None
    return pa.Array.from_buffers(kind, len(bits), [bitmap, data], null_count=int(mask.sum()))


__all__ = ["MAGIC", "decode_value_columns", "decode_values", "encode_values", "value_records"]
