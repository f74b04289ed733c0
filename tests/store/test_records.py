"""Online record encoding: what a record holds, and many records read back at once."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from robusta.store.online.records import decode, decode_rows, encode, value_records

SCHEMA = pa.schema(
    [
        pa.field("n", pa.int64()),
        pa.field("recent", pa.list_(pa.string())),
        pa.field("by_channel", pa.map_(pa.string(), pa.list_(pa.float64()))),
    ]
)


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
    entries = pa.StructArray.from_arrays([pa.array(["a", "b"]), inner], ["key", "value"])
    by_channel = pa.MapArray.from_arrays(
        pa.array([0, 0, 2, 2], pa.int32()), entries.field(0), inner
    )
    del entries
    return pa.table({"n": pa.array([1, 2, 3]), "recent": recent, "by_channel": by_channel})


def test_a_value_record_holds_its_own_values_only() -> None:
    values = _values_with_spanning_nulls()
    records = dict(value_records(pa.array(["k0", "k1", "k2"]), values))
    for i, key in enumerate(["k0", "k1", "k2"]):
        row = values.slice(i, 1).to_pylist()
        alone = encode(pa.RecordBatch.from_pylist(row, schema=values.schema))
        assert decode(records[key], values.schema).to_pylist() == row
        assert len(records[key]) <= len(alone) + 64, (key, len(records[key]), len(alone))


rows = st.fixed_dictionaries(
    {
        "n": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        "recent": st.one_of(st.none(), st.lists(st.one_of(st.none(), st.text(max_size=5)))),
        "by_channel": st.one_of(
            st.none(),
            st.dictionaries(
                st.text(max_size=3),
                st.one_of(st.none(), st.lists(st.floats(allow_nan=False), max_size=3)),
                max_size=3,
            ),
        ),
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(rows, min_size=1, max_size=3), max_size=8), st.booleans())
def test_records_read_at_once_equal_records_read_one_by_one(
    batches: list[list[dict[str, object]]], some: bool
) -> None:
    raws = [encode(pa.RecordBatch.from_pylist(b, schema=SCHEMA)) for b in batches]
    names = ["by_channel", "n"] if some else None
    table = decode_rows(raws, SCHEMA, names)
    one_by_one = [r for raw in raws for r in decode(raw, SCHEMA).to_pylist()]
    expected = [{k: r[k] for k in names} for r in one_by_one] if names else one_by_one
    assert table.column_names == (names or SCHEMA.names)
    assert table.to_pylist() == expected
    assert all(c.num_chunks <= 1 for c in table.columns)


@settings(max_examples=60, deadline=None)
@given(st.lists(rows, min_size=1, max_size=12))
def test_value_records_equal_their_rows_and_hold_them_only(
    table_rows: list[dict[str, object]],
) -> None:
    values = pa.Table.from_pylist(table_rows, schema=SCHEMA)
    keys = pa.array([f"k{i}" for i in range(len(table_rows))])
    for (key, raw), row in zip(value_records(keys, values), table_rows, strict=True):
        alone = encode(pa.RecordBatch.from_pylist([row], schema=SCHEMA))
        assert decode(raw, SCHEMA).to_pylist(maps_as_pydicts="strict") == [row], key
        # a few bytes over at most (Arrow keeps a small table's 64-byte buffer whole)
        assert len(raw) <= len(alone) + 128, (key, len(raw), len(alone))
