"""Value records: one key's row of final feature values (head values, pre-assembled specs).

A lookup of many keys (a ranking request's 500 items) decodes that many records, and an Arrow
IPC message costs about a quarter of a microsecond per array on top of its own fixed cost,
whatever the row holds. So a value record is *packed*: ``MAGIC``, then every fixed-width
value (integers, floats, booleans, dates, times, timestamps, durations) with a validity byte
at fixed places, then the other values (texts, lists, maps) as an IPC message of those
columns alone. Many records decode as one numpy view of their fixed parts and one IPC
stream of the rest. Values are kept bit for bit (floats as their bits: NaN payloads, -0.0).

Records written before packing (a bare IPC message, which starts with 0xFFFFFFFF) still
decode: ``decode_values`` reads either.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from robusta.store.online.records import decode, decode_rows, encode, one_batch, own_slices

MAGIC = b"RBV1"  # a packed record; an IPC message starts with 0xFFFFFFFF instead


@dataclass(frozen=True)
class _Layout:
    """Where a schema's values go: the fixed-width fields (index in the schema, storage
    dtype) packed in ``dtype``, the other fields in an IPC message of ``rest``."""

    fixed: tuple[tuple[int, np.dtype], ...]
    dtype: np.dtype
    rest: pa.Schema
    format: str  # the fixed part for ``struct``: each value as Python reads it, its validity
    places: dict[str, int]  # fixed-width field -> its value's place in a ``struct`` tuple
    converted: dict[str, pa.DataType]  # fixed-width fields ``struct`` reads as integers

    @property
    def width(self) -> int:
        return int(self.dtype.itemsize)


@functools.lru_cache(maxsize=256)
def _layout(schema: pa.Schema) -> _Layout:
    fixed = []
    rest = []
    for i, field in enumerate(schema):
        storage = _storage(field.type)
        if storage is None:
            rest.append(field)
        else:
            fixed.append((i, storage))
    dtype = np.dtype([item for i, s in fixed for item in ((f"v{i}", s), (f"n{i}", np.uint8))])
    codes = "".join(_struct_code(schema[i].type) + "B" for i, _ in fixed)
    places = {schema[i].name: 2 * k for k, (i, _) in enumerate(fixed)}
    converted = {schema[i].name: schema[i].type for i, _ in fixed if not _native(schema[i].type)}
    return _Layout(tuple(fixed), dtype, pa.schema(rest), "<" + codes, places, converted)


def _struct_code(kind: pa.DataType) -> str:
    """How ``struct`` reads a fixed-width value: numbers and booleans as Python values,
    the rest (temporal types) as the signed integers Arrow keeps them as."""
    if pa.types.is_boolean(kind):
        return "?"
    if pa.types.is_floating(kind) and _native(kind):
        return {32: "f", 64: "d"}[kind.bit_width]
    code = {8: "b", 16: "h", 32: "i", 64: "q"}[kind.bit_width]
    return code.upper() if pa.types.is_unsigned_integer(kind) else code


def _storage(kind: pa.DataType) -> np.dtype | None:
    """The unsigned integer a fixed-width type's values are kept as (bits), or None."""
    if pa.types.is_boolean(kind):
        return np.dtype(np.uint8)
    plain = (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_temporal(kind)  # dates, times, timestamps, durations
    ) and not pa.types.is_interval(kind)
    if not plain or kind.bit_width not in (8, 16, 32, 64):
        return None
    return np.dtype(f"<u{kind.bit_width // 8}")


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
    packed = np.zeros(n, layout.dtype)
    for i, storage in layout.fixed:
        column = values.column(i).chunk(0)
        packed[f"n{i}"] = column.is_valid().to_numpy(zero_copy_only=False)
        packed[f"v{i}"] = _bits(column, storage)
    blob = packed.tobytes()
    width = layout.width
    heads = [MAGIC + blob[r * width : (r + 1) * width] for r in range(n)]
    if not layout.rest.names:
        return heads
    rest = own_slices(one_batch(values.select(layout.rest.names)), np.arange(n + 1))
    return [head + encode(row) for head, row in zip(heads, rest, strict=True)]


def _bits(column: pa.Array, storage: np.dtype) -> np.ndarray:
    """A fixed-width column's values as unsigned integers of its width (nulls as 0)."""
    if pa.types.is_boolean(column.type):
        return np.asarray(column.fill_null(False).to_numpy(zero_copy_only=False), np.uint8)
    unsigned = pa.from_numpy_dtype(storage)
    return np.asarray(column.view(unsigned).fill_null(0).to_numpy(), storage)


def decode_values(
    raws: Sequence[bytes], schema: pa.Schema, names: Sequence[str] | None = None
) -> pa.Table:
    """Value records (packed, or bare IPC messages as written before) as one table of one
    chunk, a row per record in order, with only the columns ``names`` when given."""
    wanted = list(schema.names if names is None else names)
    packed = [raw.startswith(MAGIC) for raw in raws]
    if not all(packed):
        if not any(packed):
            return decode_rows(raws, schema, wanted)
        batches = [_decode_one(raw, schema) for raw in raws]  # both kinds: not a fast path
        return pa.Table.from_batches(batches, schema).select(wanted).combine_chunks()
    return _unpack(raws, schema, wanted)


def _decode_one(raw: bytes, schema: pa.Schema) -> pa.RecordBatch:
    if raw.startswith(MAGIC):
        return _unpack([raw], schema, schema.names).to_batches()[0]
    return decode(raw, schema)


def _unpack(raws: Sequence[bytes], schema: pa.Schema, wanted: list[str]) -> pa.Table:
    layout = _layout(schema)
    fixed = dict(layout.fixed)
    chosen = set(wanted)
    columns: dict[str, pa.Array] = {}
    picked = [i for i, field in enumerate(schema) if field.name in chosen and i in fixed]
    if picked:
        packed = np.frombuffer(_fixed_parts(raws, layout), layout.dtype, count=len(raws))
        for i in picked:
            columns[schema[i].name] = _column(schema[i].type, packed[f"v{i}"], packed[f"n{i}"])
    columns.update(_rest_columns(raws, layout, wanted))
    return pa.Table.from_arrays(
        [columns[name] for name in wanted], schema=pa.schema([schema.field(n) for n in wanted])
    )


def decode_value_columns(
    raws: Sequence[bytes], schema: pa.Schema, names: Sequence[str]
) -> dict[str, list[Any]]:
    """Packed value records as Python values, a list per column of ``names`` (maps as
    dicts): what :func:`decode_values` then ``to_pylist`` give, without Arrow arrays for
    the numbers and booleans (a lookup of one key decodes in a few microseconds)."""
    layout = _layout(schema)
    if not all(raw.startswith(MAGIC) for raw in raws):
        table = decode_values(raws, schema, names)
        return {name: _python(table.column(name)) for name in names}
    out: dict[str, list[Any]] = {}
    tuples = []
    if raws and layout.width:
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
    for name, column in _rest_columns(raws, layout, list(names)).items():
        out[name] = _python(column)
    return {name: out[name] for name in names}


def _fixed_parts(raws: Sequence[bytes], layout: _Layout) -> bytes:
    start = len(MAGIC)
    end = start + layout.width
    return b"".join([raw[start:end] for raw in raws])


def _rest_columns(raws: Sequence[bytes], layout: _Layout, wanted: list[str]) -> dict[str, pa.Array]:
    rest = set(layout.rest.names)
    others = [name for name in wanted if name in rest]
    if not others:
        return {}
    start = len(MAGIC) + layout.width
    table = decode_rows([raw[start:] for raw in raws], layout.rest, others)
    return {
        name: table.column(name).chunk(0)
        if table.num_rows
        else pa.array([], table.schema.field(name).type)
        for name in others
    }


def _python(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """A column's values as Python objects, maps as dicts (``maps_as_pydicts`` converts
    value by value: only maps pay for it)."""
    if pa.types.is_map(column.type):
        values: list[Any] = column.to_pylist(maps_as_pydicts="strict")
        return values
    plain: list[Any] = column.to_pylist()
    return plain


def _native(kind: pa.DataType) -> bool:
    """Whether ``struct`` reads the type's values as Python gets them from Arrow."""
    plain = pa.types.is_integer(kind) or pa.types.is_boolean(kind)
    return bool(plain or (pa.types.is_floating(kind) and not pa.types.is_float16(kind)))


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
