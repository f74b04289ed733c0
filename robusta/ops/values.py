"""Conversions between Arrow arrays and the numpy columns operators compute on.

Numbers, booleans and temporal values become fixed-width numpy arrays (timestamps as int64
epoch microseconds, dates as int32 days); strings and binaries become object arrays. Nulls are
carried as a separate validity mask with a harmless fill value in their slot, so vectorized
comparisons never meet ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from robusta.errors import OperatorError
from robusta.spec.datatypes import DataType

Array = npt.NDArray[Any]
BoolArray = npt.NDArray[np.bool_]
TS_TYPE = pa.timestamp("us", tz="UTC")


def numpy_dtype(dtype: DataType) -> npt.DTypeLike:
    """The numpy dtype that holds values of a logical type."""
    if dtype.is_integer or dtype is DataType.TIMESTAMP:
        return np.int64
    if dtype in (DataType.FLOAT, DataType.DOUBLE, DataType.DECIMAL):
        return np.float64
    if dtype is DataType.BOOLEAN:
        return np.bool_
    if dtype is DataType.DATE:
        return np.int32
    return object


def placeholders(dtype: DataType, n: int) -> Array:
    """``n`` stand-in values for empty slots: comparable with real values, never observed."""
    out = np.zeros(n, dtype=numpy_dtype(dtype))
    if out.dtype == object:
        out[:] = b"" if dtype is DataType.BINARY else ""
    return out


def to_arrow_type(values: pa.Array | pa.ChunkedArray, dtype: DataType) -> pa.Array:
    """Arrow values as one array of the logical type's Arrow type (``DataType.arrow``)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    target = dtype.arrow()
    if dtype is DataType.UNKNOWN or dtype is DataType.OTHER:
        raise OperatorError(f"cannot aggregate values of type {values.type}")
    if not values.type.equals(target):
        try:
            values = values.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise OperatorError(f"cannot read {values.type} values as {dtype}: {exc}") from exc
    return values


def to_numpy(values: pa.Array | pa.ChunkedArray, dtype: DataType) -> tuple[Array, BoolArray]:
    """Arrow values of a logical type -> (values, valid mask)."""
    values = to_arrow_type(values, dtype)
    target = dtype.arrow()
    if values.null_count:
        valid = np.asarray(values.is_valid(), dtype=np.bool_)
        filled = pc.fill_null(values, _arrow_fill(target))
    else:  # the common case, without two compute calls
        valid, filled = np.ones(len(values), dtype=np.bool_), values
    if dtype is DataType.TIMESTAMP:
        filled = filled.cast(pa.int64())
    elif dtype is DataType.DATE:
        filled = filled.cast(pa.int32())
    out = np.asarray(filled.to_numpy(zero_copy_only=False), dtype=numpy_dtype(dtype))
    return out, valid


def from_numpy(values: Array, valid: BoolArray | None, dtype: DataType) -> pa.Array:
    """(values, valid mask) -> Arrow array of the logical type's Arrow type."""
    mask = None if valid is None else ~np.asarray(valid, dtype=np.bool_)
    target = dtype.arrow()
    if dtype is DataType.TIMESTAMP:
        return pa.array(np.asarray(values, dtype=np.int64), pa.int64(), mask=mask).cast(target)
    if dtype is DataType.DATE:
        return pa.array(np.asarray(values, dtype=np.int32), pa.int32(), mask=mask).cast(target)
    return pa.array(values, target, mask=mask, from_pandas=False)


def _arrow_fill(target: pa.DataType) -> pa.Scalar:
    if pa.types.is_string(target):
        return pa.scalar("", target)
    if pa.types.is_binary(target):
        return pa.scalar(b"", target)
    if pa.types.is_boolean(target):
        return pa.scalar(False, target)
    if pa.types.is_timestamp(target):
        return pa.scalar(0, pa.int64()).cast(target)
    if pa.types.is_date(target):
        return pa.scalar(0, pa.int32()).cast(target)
    return pa.scalar(0, target)


def struct_fields(array: pa.Array | pa.ChunkedArray) -> dict[str, pa.Array]:
    """Fields of a struct array, with the struct's own nulls applied to every field."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not isinstance(array, pa.StructArray):
        raise OperatorError(f"expected a struct IR, got {array.type}")
    names = [array.type.field(i).name for i in range(array.type.num_fields)]
    return dict(zip(names, array.flatten(), strict=True))


def same_shape(left: pa.DataType, right: pa.DataType) -> bool:
    """Arrow types equal up to nullability (engines differ in the not-null flags they set)."""
    if pa.types.is_struct(left) and pa.types.is_struct(right):
        return left.num_fields == right.num_fields and all(
            left.field(i).name == right.field(i).name
            and same_shape(left.field(i).type, right.field(i).type)
            for i in range(left.num_fields)
        )
    if pa.types.is_list(left) and pa.types.is_list(right):
        return same_shape(left.value_type, right.value_type)
    return bool(left.equals(right))


def python_value(value: Any, dtype: DataType) -> Any:
    """A value from a numpy column (int micros / days for temporal types) as Arrow's Python."""
    if dtype is DataType.TIMESTAMP:
        return pa.scalar(value, pa.int64()).cast(TS_TYPE).as_py()
    if dtype is DataType.DATE:
        return pa.scalar(value, pa.int32()).cast(pa.date32()).as_py()
    return value


def list_of_pairs(
    array: pa.Array | pa.ChunkedArray, fields: tuple[str, str], types: tuple[DataType, DataType]
) -> list[tuple[tuple[Any, Any], ...]]:
    """A list<struct<a, b>> column as one tuple of (a, b) pairs per row (null rows -> ()).

    Reads the child values through the list's own offsets: ``flatten()`` would drop the items
    a null row may still point at (and slices start past offset zero), misaligning the rows.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    offsets = np.asarray(array.offsets)
    lo, hi = (int(offsets[0]), int(offsets[-1])) if len(offsets) else (0, 0)
    columns = struct_fields(array.values.slice(lo, hi - lo))
    first, _ = to_numpy(columns[fields[0]], types[0])
    second, _ = to_numpy(columns[fields[1]], types[1])
    pairs = list(zip(first.tolist(), second.tolist(), strict=True))
    bounds = (offsets - lo).tolist()
    valid = np.asarray(array.is_valid()).tolist()
    return [tuple(pairs[bounds[i] : bounds[i + 1]]) if valid[i] else () for i in range(len(array))]


def primitive_view(array: pa.Array) -> tuple[Array, BoolArray | None]:
    """A zero-copy numpy view of a fixed-width Arrow array (int, float, timestamp, date)
    and its validity (None without nulls; null slots hold unspecified values).

    The per-key path reads a few values of a record this way; ``to_numpy`` would copy or
    refuse arrays with nulls.
    """
    kind = array.type
    if not array.null_count and not pa.types.is_date(kind):
        values = array.to_numpy()  # zero-copy
        return (values.view(np.int64) if values.dtype.kind == "M" else values), None
    if pa.types.is_floating(kind):
        dtype: npt.DTypeLike = np.float64 if kind.bit_width == 64 else np.float32
    elif pa.types.is_integer(kind) or pa.types.is_temporal(kind):
        dtype = np.dtype(f"i{kind.bit_width // 8}")
    else:
        raise OperatorError(f"no fixed-width view of {kind} values")
    data = array.buffers()[1]
    values = np.frombuffer(data, dtype=dtype, count=len(array) + array.offset)[array.offset :]
    return values, validity(array)


def validity(array: pa.Array) -> BoolArray | None:
    """Which values of ``array`` are valid, read from its bitmap (a compute call costs more
    than the few values the per-key path reads); None without nulls."""
    if not array.null_count:
        return None
    bitmap = np.frombuffer(array.buffers()[0], np.uint8)
    bits = np.unpackbits(bitmap, count=array.offset + len(array), bitorder="little")
    valid: BoolArray = bits[array.offset :].view(np.bool_)
    return valid


def list_bounds(array: pa.Array) -> tuple[list[int], list[int]]:
    """Per row of a list array, its first and end item in ``array.values`` (null rows hold
    none), as Python integers for a few reads."""
    offsets = np.frombuffer(array.buffers()[1], np.int32, len(array) + 1 + array.offset)
    offsets = offsets[array.offset :]
    first, end = offsets[:-1], offsets[1:]
    valid = validity(array)
    if valid is not None:  # a null row may still point at items
        end = np.where(valid, end, first)
    return first.tolist(), end.tolist()


def value_reader(values: pa.Array, dtype: DataType) -> Callable[[int, int], list[Any]] | None:
    """Reads ``values[lo:hi]`` as ``to_numpy(values, dtype)[0][lo:hi].tolist()`` does
    (temporal values as int micros or days) without converting the rest; None for values
    with nulls or of another type than ``dtype``'s (``to_numpy`` fills and casts those)."""
    if values.null_count or not values.type.equals(dtype.arrow()):
        return None
    if dtype in (DataType.TIMESTAMP, DataType.DATE):
        view, _ = primitive_view(values)
        return lambda lo, hi: list(view[lo:hi].tolist())
    return lambda lo, hi: list(values.slice(lo, hi - lo).to_pylist())


def binary_view(array: pa.Array) -> tuple[Array, Array, Array]:
    """A binary array's bytes (uint8) and each row's start and end in them (int64; a null
    row is empty), read in place."""
    if not pa.types.is_binary(array.type):
        raise OperatorError(f"expected binary values, got {array.type}")
    _, offsets_buffer, data = array.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, count=len(array) + 1 + array.offset)
    bounds = offsets[array.offset :].astype(np.int64)
    starts, ends = bounds[:-1], bounds[1:]
    valid = validity(array)
    if valid is not None:  # a null row may still point at bytes
        ends = np.where(valid, ends, starts)
    body = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return body, starts, ends


def gather(body: Array, starts: Array, width: int, dtype: str) -> Array:
    """The ``width``-byte little-endian values of ``dtype`` at byte offsets ``starts``."""
    cells = body[np.asarray(starts, np.int64)[:, None] + np.arange(width)]
    values: Array = np.ascontiguousarray(cells).view(dtype).reshape(-1)
    return values


def binary_values(array: pa.Array, positions: list[int]) -> list[bytes | None]:
    """``array[p]`` for each position of a binary array, as bytes (None for nulls), sliced
    straight from its buffers: a ``take`` costs more than the few values the per-key path
    reads."""
    if not pa.types.is_binary(array.type):
        raise OperatorError(f"expected binary values, got {array.type}")
    _, offsets_buffer, data = array.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, count=len(array) + 1 + array.offset)
    bounds = offsets[array.offset :].tolist()
    body = memoryview(data) if data is not None else memoryview(b"")
    valid_bits = validity(array)
    valid = None if valid_bits is None else valid_bits.tolist()
    return [
        None if valid is not None and not valid[p] else bytes(body[bounds[p] : bounds[p + 1]])
        for p in positions
    ]


# ---- columnar helpers for list-valued IRs (``Operator.build_arrow`` / ``merge_arrow``) ------
def segment_ids(offsets: Array) -> Array:
    """The segment of every row in ``[offsets[0], offsets[-1])``: ``i`` for the rows
    ``offsets[i] .. offsets[i + 1] - 1``."""
    bounds = np.asarray(offsets, dtype=np.int64)
    return np.repeat(np.arange(len(bounds) - 1, dtype=np.int64), np.diff(bounds))


def list_items(array: pa.Array | pa.ChunkedArray) -> tuple[Array, pa.Array]:
    """The items of a list column and the row of each (null rows hold none), read through
    the list's own offsets as ``list_of_pairs`` does."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    offsets = np.asarray(array.offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    if array.null_count:
        lengths = np.where(np.asarray(array.is_valid(), dtype=np.bool_), lengths, 0)
    rows = np.repeat(np.arange(len(array), dtype=np.int64), lengths)
    starts = np.repeat(offsets[:-1] - (np.cumsum(lengths) - lengths), lengths)
    positions = starts + np.arange(len(rows), dtype=np.int64)
    return rows, array.values.take(pa.array(positions, pa.int64()))


def rank_in_segments(segments: Array, n: int) -> tuple[Array, Array]:
    """For rows sorted by segment: each row's position within its segment, and the size
    of every one of the ``n`` segments."""
    sizes = np.bincount(segments, minlength=n).astype(np.int64)
    first = np.cumsum(sizes) - sizes
    return np.arange(len(segments), dtype=np.int64) - first[segments], sizes


def lists_of(items: pa.Array, counts: Array, null_when_empty: bool) -> pa.ListArray:
    """A list column whose row ``i`` holds the next ``counts[i]`` of ``items``."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    mask = pa.array(np.asarray(counts) == 0, pa.bool_()) if null_when_empty else None
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), items, mask=mask)


def has_nan(values: pa.Array) -> bool:
    """Whether float ``values`` hold a NaN or a -0.0 (whose Python ordering, NaN unordered and
    -0.0 equal to 0.0 in ties, the columnar paths do not reproduce)."""
    if not pa.types.is_floating(values.type) or len(values) == 0:
        return False
    if pc.any(pc.is_nan(values)).as_py():
        return True
    plain = np.asarray(values.fill_null(1.0).to_numpy(zero_copy_only=False))
    return bool(np.any((plain == 0) & np.signbit(plain)))
