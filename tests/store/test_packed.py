"""The packed layout of texts, lists, structs and maps (``robusta.store.online.packed``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from robusta.store.online.packed import (
    pack,
    packable,
    python_native,
    python_readers,
    unpack,
    unpack_python,
)

ENTRY = pa.struct([("value", pa.string()), ("count", pa.int64())])
COLUMNS = {
    "text": pa.array(["", None, "é", "long" * 50, "x"]),
    "large": pa.array([None, "a", "", "bb", "c"], pa.large_string()),
    "bytes": pa.array([b"\x00\xff", None, b"", b"z", b"q"], pa.large_binary()),
    "ints": pa.array([[1, None], None, [], [2**63 - 1], [-(2**63)]], pa.large_list(pa.int64())),
    "halves": pa.array([[1.5], [None], None, [], [-0.0]], pa.list_(pa.float16())),
    "stamps": pa.array([[0], None, [], [None, 5], [1]], pa.list_(pa.int64())).cast(
        pa.list_(pa.timestamp("us", tz="UTC"))
    ),
    "top": pa.array(
        [[{"value": "a", "count": 2}], [None], None, [], [{"value": None, "count": None}]],
        pa.list_(ENTRY),
    ),
    "nested": pa.array(
        [[[1.0], []], None, [None], [], [[2.0, None]]], pa.list_(pa.list_(pa.float64()))
    ),
    "by": pa.array(
        [{"a": [1], "b": None}, None, {}, {"c": []}, {"d": [None]}],
        pa.map_(pa.string(), pa.list_(pa.int32())),
    ),
    "flags": pa.array([[True, None, False], None, [], [False], [True]], pa.list_(pa.bool_())),
}


@pytest.mark.parametrize("offset", [0, 2])
def test_packed_columns_read_back_as_written(offset: int) -> None:
    # the columns sliced (``offset``): values outside the slice stay out of the records
    columns = [c.slice(offset) for c in COLUMNS.values()]
    assert all(packable(c.type) for c in columns)
    blob, bounds = pack(columns)
    arrays, ends = unpack(blob, bounds[:-1], [c.type for c in columns])
    assert ends.tolist() == bounds[1:].tolist()
    for column, array in zip(columns, arrays, strict=True):
        array.validate(full=True)
        assert array.equals(column), (column.type, array, column)
    # a record read alone
    native = [i for i, c in enumerate(columns) if python_native(c.type)]
    assert {columns[i].type for i in native} >= {COLUMNS["top"].type, COLUMNS["by"].type}
    for r in range(len(columns[0])):
        record = blob[bounds[r] : bounds[r + 1]]
        alone, _ = unpack(record, np.zeros(1, np.int64), [c.type for c in columns])
        assert [a.to_pylist() for a in alone] == [c.slice(r, 1).to_pylist() for c in columns]


def test_python_values_equal_arrows() -> None:
    columns = [c for c in COLUMNS.values() if python_native(c.type)]
    assert len(columns) >= 6
    blob, bounds = pack(columns)
    readers = python_readers([c.type for c in columns])
    raw = blob.tobytes()
    for r in range(len(columns[0])):
        values, end = unpack_python(raw, int(bounds[r]), readers)
        assert end == bounds[r + 1]
        assert values == [c.slice(r, 1).to_pylist(maps_as_pydicts="strict")[0] for c in columns]


def test_what_is_not_packed() -> None:
    assert not packable(pa.decimal128(10, 2))
    assert not packable(pa.list_(pa.dictionary(pa.int8(), pa.string())))
    assert not python_native(pa.list_(pa.timestamp("us")))
    assert not python_native(pa.float16())
