"""Online records: value records (packed) and many records read back at once."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from robusta.store.online.records import _runs, decode, decode_rows, encode, one_batch, own_slices
from robusta.store.online.value_records import (
    MAGIC,
    MAGIC_V1,
    _layout,
    decode_value_columns,
    decode_values,
    encode_values,
    value_records,
)

SCHEMA = pa.schema(
    [
        pa.field("n", pa.int64()),
        pa.field("mean", pa.float64()),
        pa.field("recent", pa.list_(pa.string())),
        pa.field("seen", pa.bool_()),
        pa.field("first", pa.string()),
        pa.field("at", pa.timestamp("us", tz="UTC")),
        pa.field("day", pa.date32()),
        pa.field("by_channel", pa.map_(pa.string(), pa.list_(pa.float64()))),
        pa.field("small", pa.int32()),
        pa.field("big", pa.uint64()),
        pa.field("ratio", pa.float32()),
        pa.field("took", pa.duration("us")),
        pa.field("top", pa.list_(pa.struct([("value", pa.string()), ("count", pa.int64())]))),
        pa.field("blob", pa.binary()),
        pa.field("days", pa.list_(pa.date32())),
    ]
)


def _bits(value: Any) -> Any:
    """Floats by their bits (NaN payloads and -0.0 compare exactly), the rest as they are."""
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, list):
        return [_bits(v) for v in value]
    if isinstance(value, dict):
        return {k: _bits(v) for k, v in value.items()}
    return value


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return [_bits(r) for r in table.to_pylist(maps_as_pydicts="strict")]


floats = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-0.0, math.nan, 5e-324]),
)
rows = st.fixed_dictionaries(
    {
        "n": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        "mean": floats,
        "recent": st.one_of(st.none(), st.lists(st.one_of(st.none(), st.text(max_size=5)))),
        "seen": st.one_of(st.none(), st.booleans()),
        "first": st.one_of(st.none(), st.text(max_size=6)),
        "at": st.one_of(st.none(), st.integers(-62_135_596_800 * 10**6, 253_402_300_799 * 10**6)),
        "day": st.one_of(st.none(), st.integers(-719_162, 2_932_896)),  # years 1..9999
        "by_channel": st.one_of(
            st.none(),
            st.dictionaries(
                st.text(max_size=3),
                st.one_of(st.none(), st.lists(floats, max_size=3)),
                max_size=3,
            ),
        ),
        "small": st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
        "big": st.one_of(st.none(), st.integers(0, 2**64 - 1)),
        "ratio": st.one_of(st.none(), st.floats(width=32, allow_nan=False)),
        "took": st.one_of(st.none(), st.integers(-(10**15), 10**15)),
        "top": st.one_of(
            st.none(),
            st.lists(
                st.one_of(
                    st.none(),
                    st.fixed_dictionaries(
                        {
                            "value": st.one_of(st.none(), st.text(max_size=4)),
                            "count": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
                        }
                    ),
                ),
                max_size=3,
            ),
        ),
        "blob": st.one_of(st.none(), st.binary(max_size=6)),
        "days": st.one_of(
            st.none(), st.lists(st.one_of(st.none(), st.integers(-719_162, 2_932_896)), max_size=3)
        ),
    }
)


def _table(table_rows: list[dict[str, Any]]) -> pa.Table:
    columns = {
        name: [r[name] for r in table_rows]
        for name in SCHEMA.names
        if name not in ("at", "day", "took", "days")
    }
    columns["at"] = pa.array([r["at"] for r in table_rows], pa.int64()).cast(
        SCHEMA.field("at").type
    )
    columns["day"] = pa.array([r["day"] for r in table_rows], pa.int32()).cast(pa.date32())
    took = pa.array([r["took"] for r in table_rows], pa.int64())
    columns["took"] = took.cast(SCHEMA.field("took").type)
    days = pa.array([r["days"] for r in table_rows], pa.list_(pa.int32()))
    columns["days"] = days.cast(SCHEMA.field("days").type)
    return pa.table({name: columns[name] for name in SCHEMA.names}, schema=SCHEMA)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(rows, max_size=12),
    st.sampled_from([None, ["by_channel", "n"], ["seen"], ["first", "day"]]),
    st.booleans(),
)
def test_value_records_decode_to_their_rows_bit_for_bit(
    table_rows: list[dict[str, Any]], names: list[str] | None, texts_only: bool
) -> None:
    values = _table(table_rows)
    if texts_only:  # a schema without fixed-width values (a group of map features)
        values = values.select(["recent", "first", "by_channel"])
        names = [n for n in names or [] if n in values.schema.names] or None
    raws = encode_values(values)
    assert all(raw.startswith(MAGIC) for raw in raws)
    decoded = decode_values(raws, values.schema, names)
    expected = values if names is None else values.select(names)
    assert decoded.schema == expected.schema
    assert _rows(decoded) == _rows(expected)
    assert all(c.num_chunks <= 1 for c in decoded.columns)
    for i, raw in enumerate(raws):  # one at a time too
        assert _rows(decode_values([raw], values.schema)) == _rows(values.slice(i, 1))
    # as Python values (a lookup's path): what Arrow's own conversion gives, bit for bit
    columns = decode_value_columns(raws, values.schema, names or values.schema.names)
    python = [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]
    assert [_bits(r) for r in python] == _rows(expected)
    # many records at once go through Arrow: the same values
    many = decode_value_columns(raws * 3, values.schema, names or values.schema.names)
    assert {k: [_bits(v) for v in vs] for k, vs in many.items()} == {
        k: [_bits(v) for v in vs] * 3 for k, vs in columns.items()
    }


@settings(max_examples=40, deadline=None)
@given(st.lists(rows, min_size=1, max_size=12))
def test_value_records_hold_their_own_row_only(table_rows: list[dict[str, Any]]) -> None:
    values = _table(table_rows)
    keys = pa.array([f"k{i}" for i in range(len(table_rows))])
    for i, (key, raw) in enumerate(value_records(keys, values)):
        alone = encode_values(_table([table_rows[i]]))[0]
        # a few bytes over at most (Arrow keeps a small table's 64-byte buffer whole)
        assert len(raw) <= len(alone) + 128, (key, len(raw), len(alone))


def _values_with_spanning_nulls() -> pa.Table:
    """Three rows whose null lists span values, as operators' null masks leave them."""
    words = pa.array([f"user-{i:04d}" for i in range(3000)])
    recent = pa.ListArray.from_arrays(
        pa.array([0, 1000, 2000, 3000], pa.int32()), words, mask=pa.array([True, False, True])
    )
    inner = pa.ListArray.from_arrays(
        pa.array([0, 500, 1000], pa.int32()),
        pa.array([float(i) for i in range(1000)]),
        mask=pa.array([True, False]),
    )
    keys = pa.array(["a", "b"])
    by_channel = pa.MapArray.from_arrays(pa.array([0, 0, 2, 2], pa.int32()), keys, inner)
    return pa.table({"n": pa.array([1, 2, 3]), "recent": recent, "by_channel": by_channel})


def test_null_lists_spanning_values_stay_out_of_records() -> None:
    values = _values_with_spanning_nulls()
    raws = encode_values(values)
    for i, raw in enumerate(raws):
        row = values.slice(i, 1)
        alone = encode_values(pa.Table.from_pylist(row.to_pylist(), schema=values.schema))[0]
        assert decode_values([raw], values.schema).to_pylist() == row.to_pylist()
        assert len(raw) <= len(alone) + 128, (i, len(raw), len(alone))


@settings(max_examples=30, deadline=None)
@given(st.lists(rows, min_size=1, max_size=6))
def test_records_of_the_first_packed_format_still_decode(table_rows: list[dict[str, Any]]) -> None:
    # RBV1: the fixed part as now, then an IPC message of every other column
    values = _table(table_rows)
    layout = _layout(SCHEMA)
    fixed = {SCHEMA[i].name for i, _ in layout.fixed}
    others = [n for n in SCHEMA.names if n not in fixed]
    width = layout.width
    old = [
        MAGIC_V1 + raw[len(MAGIC) : len(MAGIC) + width] + encode(batch)
        for raw, batch in zip(
            encode_values(values), values.select(others).to_batches(max_chunksize=1), strict=True
        )
    ]
    assert _rows(decode_values(old, SCHEMA)) == _rows(values)
    columns = decode_value_columns(old, SCHEMA, ["first", "n", "top"])
    assert [_bits(v) for v in columns["top"]] == [_bits(r["top"]) for r in _rows(values)]
    mixed = [old[0], *encode_values(values)[1:]]
    assert _rows(decode_values(mixed, SCHEMA)) == _rows(values)


def test_records_written_before_packing_still_decode() -> None:
    values = _table([dict.fromkeys(SCHEMA.names), {**dict.fromkeys(SCHEMA.names), "n": 3}])
    bare = [encode(b) for b in values.to_batches(max_chunksize=1)]
    assert _rows(decode_values(bare, SCHEMA)) == _rows(values)
    mixed = [bare[0], encode_values(values)[1]]
    assert _rows(decode_values(mixed, SCHEMA, ["n"])) == _rows(values.select(["n"]))
    assert decode_value_columns(mixed, SCHEMA, ["n", "first"]) == {
        "n": [None, 3],
        "first": [None, None],
    }


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(rows, min_size=1, max_size=3), max_size=8))
def test_ipc_records_read_at_once_equal_records_read_one_by_one(
    batches: list[list[dict[str, Any]]],
) -> None:
    raws = [encode(_table(b).to_batches()[0]) for b in batches]
    table = decode_rows(raws, SCHEMA)
    one_by_one = [r for raw in raws for r in _rows(pa.Table.from_batches([decode(raw, SCHEMA)]))]
    assert _rows(table) == one_by_one


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(rows, min_size=1, max_size=4), min_size=1, max_size=8), st.data())
def test_runs_cut_from_a_batch_hold_their_own_rows_only(
    runs: list[list[dict[str, Any]]], data: st.DataObject
) -> None:
    # every run (a key's tiles) next to a large body of other rows, as tile records are cut
    filler = {**dict.fromkeys(SCHEMA.names), "recent": [f"w{i}" for i in range(400)]}
    filler["by_channel"] = {"c": [1.0] * 50}
    place = data.draw(st.integers(0, len(runs)))
    every = [*runs[:place], [filler] * 30, *runs[place:]]
    batch = one_batch(_table([r for run in every for r in run]))
    bounds = np.cumsum([0, *(len(run) for run in every)])
    for k, part in enumerate(own_slices(batch, bounds)):
        expected = _table(every[k])
        assert _rows(pa.Table.from_batches([part])) == _rows(expected)
        raw = encode(part)
        assert _rows(pa.Table.from_batches([decode(raw, SCHEMA)])) == _rows(expected)
        alone = encode(expected.to_batches()[0])
        if k != place:  # the filler is as large as it is (Arrow pads 64-byte buffers)
            assert len(raw) <= len(alone) + 256 * len(every[k]), (k, len(raw), len(alone))


def test_a_key_whose_lists_are_all_empty_gets_a_small_tile_record() -> None:
    words = [[f"item-{i}-{j}" for j in range(20)] for i in range(20_000)]
    body = pa.table(
        {
            "__key": pa.array(["a"] * 20_000 + ["b"] * 3),
            "recent": pa.array([*words, [], None, []], pa.list_(pa.string())),
        }
    )
    records = dict(_runs(body, pa.schema([body.schema.field("recent")])))
    assert len(records["b"]) < 1_000, len(records["b"])
