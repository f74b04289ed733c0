"""Packed columns: a record's texts, lists, structs and maps as plain buffers, so that many
records decode as one gather per buffer instead of one Arrow IPC message each.

A value of a packable type is laid out, in a record, as the buffers of its type tree walked
depth first, for the ``m`` elements the record holds at that depth (1 at the top):

- every node: ``m`` validity bytes;
- a fixed-width leaf (integers, floats, booleans, dates, times, timestamps, durations):
  ``m`` values of its width, little-endian (a null's value is 0);
- a text or binary leaf: ``m`` lengths (uint32), then their bytes;
- a list or map: ``m`` lengths (uint32), then its child for the sum of those lengths;
- a struct: each field in turn, for the same ``m``.

Lengths, not offsets: the records of a read decode to one array whose offsets are one
cumulative sum, with nothing to rebase. A record's fixed part (written beside this by
:mod:`robusta.store.online.value_records`) holds nothing of these; the element counts
follow from the lengths.

:func:`pack` lays out many rows at once (scatter by numpy) and :func:`unpack` reads many
records at once (gather by numpy); :func:`unpack_python` reads one record's value as Python
objects without Arrow, for types whose Python values Arrow would make from the same bits
(numbers, booleans, texts, binaries, lists and structs of them).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from robusta.store.online.records import is_list

I64 = np.ndarray  # int64 per record (or per element)
_U32 = np.dtype("<u4")


def packable(kind: pa.DataType) -> bool:
    """Whether ``pack`` lays out values of ``kind``."""
    if fixed_width(kind) is not None or _is_bytes(kind):
        return True
    if is_list(kind):
        return packable(_child_type(kind))  # a map: its key-value structs
    if pa.types.is_struct(kind):
        return all(packable(kind.field(i).type) for i in range(kind.num_fields))
    return False


def python_native(kind: pa.DataType) -> bool:
    """Whether :func:`unpack_python` reads ``kind`` (as Arrow's ``to_pylist`` would)."""
    if _is_bytes(kind) or pa.types.is_boolean(kind) or pa.types.is_integer(kind):
        return True
    if pa.types.is_floating(kind):
        return not pa.types.is_float16(kind)
    if pa.types.is_map(kind):
        return python_native(kind.key_type) and python_native(kind.item_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return python_native(kind.value_type)
    if pa.types.is_struct(kind):
        return all(python_native(kind.field(i).type) for i in range(kind.num_fields))
    return False


# ---- writing -----------------------------------------------------------------------------
class _Pieces:
    """The buffers of every record, in layout order: a piece is (bytes of every record in
    record order, each record's byte count)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.items: list[tuple[np.ndarray, I64]] = []

    def add(self, data: np.ndarray, record: I64, unit: int) -> None:
        """``data``: ``unit`` bytes per element, elements in record order (``record``)."""
        counts = np.bincount(record, minlength=self.n).astype(np.int64) * unit
        self.items.append((np.ascontiguousarray(data).view(np.uint8).reshape(-1), counts))

    def add_sized(self, data: np.ndarray, counts: I64) -> None:
        self.items.append((np.ascontiguousarray(data).view(np.uint8).reshape(-1), counts))

    def layout(self) -> tuple[np.ndarray, I64]:
        """One buffer holding every record's bytes, and each record's bounds in it."""
        sizes = np.zeros(self.n, np.int64)
        for _, counts in self.items:
            sizes += counts
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        out = np.empty(int(bounds[-1]), np.uint8)
        cursor = bounds[:-1].copy()
        for data, counts in self.items:
            if len(data):
                out[_ranges(cursor, counts)] = data
            cursor += counts
        return out, bounds


def pack(columns: Sequence[pa.Array]) -> tuple[np.ndarray, I64]:
    """The packed bytes of every row of ``columns`` (packable types, one array each, of
    equal length), as one buffer and each row's bounds in it."""
    n = len(columns[0]) if columns else 0
    pieces = _Pieces(n)
    rows = np.arange(n, dtype=np.int64)
    for column in columns:
        _write(column, rows, rows, pieces)
    return pieces.layout()


def _write(array: pa.Array, index: I64, record: I64, pieces: _Pieces) -> None:
    """The buffers of ``array``'s elements ``index`` (of records ``record``, in order)."""
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), np.uint8)[index]
    pieces.add(valid, record, 1)
    kind = array.type
    width = fixed_width(kind)
    if width is not None:
        pieces.add(_bits(array, width)[index], record, width)
    elif _is_bytes(kind):
        offsets = _byte_offsets(array)
        lengths = (offsets[index + 1] - offsets[index]) * valid
        pieces.add(lengths.astype(_U32), record, 4)
        data = np.frombuffer(array.buffers()[2] or b"", np.uint8)
        pieces.add_sized(
            data[_ranges(offsets[index], lengths)], _per_record(lengths, record, pieces.n)
        )
    elif is_list(kind):
        offsets = np.asarray(array.offsets.to_numpy(), np.int64)
        lengths = (offsets[index + 1] - offsets[index]) * valid
        pieces.add(lengths.astype(_U32), record, 4)
        child = _ranges(offsets[index], lengths)
        _write(array.values, child, np.repeat(record, lengths), pieces)
    else:  # a struct (its fields with its nulls folded in)
        for field in array.flatten():
            _write(field, index, record, pieces)


def _byte_offsets(array: pa.Array) -> I64:
    """A text or binary array's offsets (places in its data buffer), ``len + 1`` of them."""
    large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    buffer = array.buffers()[1]
    every = np.frombuffer(buffer, np.int64 if large else np.int32) if buffer else np.zeros(1)
    return np.asarray(every[array.offset : array.offset + len(array) + 1], np.int64)


def _bits(array: pa.Array, width: int) -> np.ndarray:
    """A fixed-width array's values as unsigned integers of its width (nulls as 0)."""
    if pa.types.is_boolean(array.type):
        return np.asarray(array.fill_null(False).to_numpy(zero_copy_only=False), np.uint8)
    unsigned = pa.from_numpy_dtype(np.dtype(f"<u{width}"))
    return np.asarray(array.view(unsigned).fill_null(0).to_numpy(), f"<u{width}")


# ---- reading -----------------------------------------------------------------------------
class _Cursor:
    """Each record's read position in the joined buffer of a read."""

    def __init__(self, blob: np.ndarray, starts: I64) -> None:
        self.blob = blob
        self.at = starts.astype(np.int64, copy=True)

    def take(self, counts: I64) -> np.ndarray:
        """The next ``counts`` bytes of every record, records in order."""
        out: np.ndarray = self.blob[_ranges(self.at, counts)]
        self.at += counts
        return out


def unpack(
    blob: np.ndarray, starts: I64, kinds: Sequence[pa.DataType]
) -> tuple[list[pa.Array], I64]:
    """Arrays of ``kinds`` (a row per record) from records whose packed bytes begin at
    ``starts`` in ``blob`` (uint8), ``pack``'s columns back bit for bit; and where each
    record's packed bytes end."""
    cursor = _Cursor(blob, starts)
    ones = np.ones(len(starts), np.int64)
    return [_read(kind, ones, cursor) for kind in kinds], cursor.at


def _read(kind: pa.DataType, m: I64, cursor: _Cursor) -> pa.Array:
    """The array of ``m[r]`` elements of record ``r`` (every record, in order)."""
    valid = cursor.take(m)
    total = len(valid)
    nulls = total - int(np.count_nonzero(valid))
    bitmap = pa.py_buffer(np.packbits(valid != 0, bitorder="little")) if nulls else None
    width = fixed_width(kind)
    if width is not None:
        data = cursor.take(m * width)
        if pa.types.is_boolean(kind):
            data = np.packbits(data != 0, bitorder="little")
        return pa.Array.from_buffers(kind, total, [bitmap, pa.py_buffer(data)], null_count=nulls)
    if pa.types.is_struct(kind):
        fields = [_read(kind.field(i).type, m, cursor) for i in range(kind.num_fields)]
        return pa.Array.from_buffers(kind, total, [bitmap], nulls, children=fields)
    lengths = cursor.take(4 * m).view(_U32).astype(np.int64)
    offsets = _offsets(lengths, kind)
    inner = _per_record_sum(lengths, m)
    if _is_bytes(kind):
        data = cursor.take(inner)
        buffers = [bitmap, offsets, pa.py_buffer(data)]
        return pa.Array.from_buffers(kind, total, buffers, null_count=nulls)
    child = _read(_child_type(kind), inner, cursor)
    return pa.Array.from_buffers(kind, total, [bitmap, offsets], nulls, children=[child])


def _child_type(kind: pa.DataType) -> pa.DataType:
    """A list's values, or a map's entries (key-value structs)."""
    if pa.types.is_map(kind):
        return pa.struct([kind.key_field, kind.item_field])
    return kind.value_type


def _offsets(lengths: I64, kind: pa.DataType) -> pa.Buffer:
    large = pa.types.is_large_list(kind) or pa.types.is_large_string(kind)
    large = large or pa.types.is_large_binary(kind)
    dtype = np.int64 if large else np.int32
    return pa.py_buffer(np.concatenate([[0], np.cumsum(lengths)]).astype(dtype))


# ---- reading one record as Python values ------------------------------------------------
Reader = Callable[[bytes, int, int], tuple[list[Any], int]]


def python_readers(kinds: Sequence[pa.DataType]) -> tuple[Reader, ...]:
    """What :func:`unpack_python` reads ``kinds`` (all :func:`python_native`) with."""
    return tuple(_python_reader(kind) for kind in kinds)


def unpack_python(raw: bytes, at: int, readers: Sequence[Reader]) -> tuple[list[Any], int]:
    """The values of one record whose packed bytes begin at ``at`` in ``raw``, read by
    ``readers`` (:func:`python_readers` of its kinds, in order), as Python objects (maps as
    dicts); and where its packed bytes end."""
    out = []
    for read in readers:
        values, at = read(raw, at, 1)
        out.append(values[0])
    return out, at


@functools.lru_cache(maxsize=512)
def _python_reader(kind: pa.DataType) -> Reader:
    """A function reading ``m`` elements of ``kind`` at a place: (values, next place)."""
    if fixed_width(kind) is not None:  # booleans too
        code = struct_code(kind)
        size = struct.calcsize("<" + code)

        def fixed(raw: bytes, at: int, m: int) -> tuple[list[Any], int]:
            valid = raw[at : at + m]
            values = struct.unpack_from(f"<{m}{code}", raw, at + m)
            return [
                v if ok else None for v, ok in zip(values, valid, strict=True)
            ], at + m + m * size

        return fixed
    if _is_bytes(kind):
        text = pa.types.is_string(kind) or pa.types.is_large_string(kind)

        def texts(raw: bytes, at: int, m: int) -> tuple[list[Any], int]:
            valid = raw[at : at + m]
            lengths = struct.unpack_from(f"<{m}I", raw, at + m)
            at += 5 * m
            out: list[Any] = []
            for ok, length in zip(valid, lengths, strict=True):
                piece = raw[at : at + length]
                out.append((piece.decode() if text else piece) if ok else None)
                at += length
            return out, at

        return texts
    if pa.types.is_struct(kind):
        names = [kind.field(i).name for i in range(kind.num_fields)]
        readers = [_python_reader(kind.field(i).type) for i in range(kind.num_fields)]

        def structs(raw: bytes, at: int, m: int) -> tuple[list[Any], int]:
            valid = raw[at : at + m]
            at += m
            fields = []
            for read in readers:
                values, at = read(raw, at, m)
                fields.append(values)
            rows = zip(*fields, strict=True) if fields else iter([()] * m)
            return [
                dict(zip(names, row, strict=True)) if ok else None
                for ok, row in zip(valid, rows, strict=True)
            ], at

        return structs
    if pa.types.is_map(kind):
        entries = _python_reader(pa.list_(_child_type(kind)))  # lists of key-value structs

        def maps(raw: bytes, at: int, m: int) -> tuple[list[Any], int]:
            values, at = entries(raw, at, m)
            return [None if pairs is None else _dict(pairs) for pairs in values], at

        return maps
    child = _python_reader(kind.value_type)

    def lists(raw: bytes, at: int, m: int) -> tuple[list[Any], int]:
        valid = raw[at : at + m]
        lengths = struct.unpack_from(f"<{m}I", raw, at + m)
        values, at = child(raw, at + 5 * m, sum(lengths))
        out: list[Any] = []
        start = 0
        for ok, length in zip(valid, lengths, strict=True):
            out.append(values[start : start + length] if ok else None)
            start += length
        return out, at

    return lists


def _dict(pairs: list[dict[str, Any]]) -> dict[Any, Any]:
    """A map's entries as a dict (keys are distinct in a valid map, as Arrow checks)."""
    out = dict(tuple(pair.values()) for pair in pairs)
    if len(out) != len(pairs):
        raise ValueError("a map holds a key twice")
    return out


# ---- shared ------------------------------------------------------------------------------
def struct_code(kind: pa.DataType) -> str:
    """How ``struct`` reads a fixed-width value: numbers and booleans as Python values,
    the rest (temporal types, half floats) as the signed integers Arrow keeps them as."""
    if pa.types.is_boolean(kind):
        return "?"
    if pa.types.is_floating(kind) and python_native(kind):
        return {32: "f", 64: "d"}[kind.bit_width]
    code = {8: "b", 16: "h", 32: "i", 64: "q"}[kind.bit_width]
    return code.upper() if pa.types.is_unsigned_integer(kind) else code


def fixed_width(kind: pa.DataType) -> int | None:
    """Bytes per value of a fixed-width type (booleans: 1), or None."""
    if pa.types.is_boolean(kind):
        return 1
    plain = (
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_temporal(kind)
    ) and not pa.types.is_interval(kind)
    if not plain or kind.bit_width not in (8, 16, 32, 64):
        return None
    return int(kind.bit_width // 8)


def _is_bytes(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def _ranges(starts: I64, lengths: I64) -> I64:
    """The positions ``starts[i] .. starts[i] + lengths[i]`` of every ``i``, in order."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, np.int64) - before, lengths) + np.arange(total)


def _per_record(values: I64, record: I64, n: int) -> I64:
    return np.bincount(record, weights=values, minlength=n).astype(np.int64)


def _per_record_sum(values: I64, m: I64) -> I64:
    """Per record, the sum of its ``m[r]`` consecutive ``values``."""
    sums = np.concatenate([[0], np.cumsum(values)])
    ends = np.cumsum(m)
    out: I64 = (sums[ends] - sums[ends - m]).astype(np.int64)
    return out
