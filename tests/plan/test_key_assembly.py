"""The per-key assembler (online lookups) against the vectorized one, bit for bit.

Two levels: every operator's ``merge_windows`` override against the operator's definition
(``Operator.merge_windows``: decode, ``merge_segments``, ``finalize``) on generated IRs with
nulls, NaN, signed zeros, duplicates and timestamp ties; and ``KeyAssembler`` on online tile
records against ``GroupAssembler`` on the same tiles, for every operator and window, with
the scenarios of ``test_assembly`` (boundaries, hot keys, empty windows, version pointers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robusta.ops import Operator, make_operator
from robusta.plan.key_assembly import KeyAssembler
from robusta.spec.datatypes import DataType
from robusta.store.online.records import decode, tile_record_schema, tile_records
from robusta.testing.compare import bits
from tests.plan.test_assembly import CASES, GMIN, T0, assemble, group_for, scenario, tiles_of

Params = dict[str, Any]
OVERRIDES: list[tuple[str, DataType]] = [
    ("count", DataType.STRING),
    ("sum", DataType.DOUBLE),
    ("sum", DataType.BIGINT),
    ("avg", DataType.DOUBLE),
    ("avg", DataType.BIGINT),
    ("min", DataType.DOUBLE),
    ("max", DataType.DOUBLE),
    ("min", DataType.BIGINT),
    ("max", DataType.BIGINT),
    ("min", DataType.STRING),  # not numeric: the override hands over to the definition
    ("first", DataType.DOUBLE),
    ("last", DataType.DOUBLE),
    ("first", DataType.STRING),
    ("last", DataType.BIGINT),
    ("approx_distinct", DataType.STRING),
    # Types without a scalar fold: the overrides hand over, or read values as Arrow does.
    ("min", DataType.TIMESTAMP),
    ("max", DataType.DATE),
    ("max", DataType.BOOLEAN),
    ("first", DataType.TIMESTAMP),
    ("last", DataType.DATE),
    ("last", DataType.BOOLEAN),
    ("variance", DataType.DOUBLE),
    ("variance", DataType.BIGINT),
    ("stddev", DataType.DOUBLE),
    ("first_n", DataType.DOUBLE),
    ("last_n", DataType.DOUBLE),
    ("first_n", DataType.STRING),
    ("last_n", DataType.BIGINT),
    ("first_n", DataType.TIMESTAMP),
    ("last_n", DataType.DATE),
    ("approx_quantile", DataType.DOUBLE),
    ("approx_quantile", DataType.BIGINT),
    ("top_k", DataType.STRING),
    ("top_k", DataType.DOUBLE),
    ("top_k", DataType.BIGINT),
    ("top_k", DataType.TIMESTAMP),
    ("top_k", DataType.BOOLEAN),
]
# Small parameters, so the generated IRs meet the cuts: first_n / last_n keep fewer items
# than a window holds, top_k's capacity drops counters, KLL compacts into several levels.
PARAMS: dict[str, Params] = {
    "first_n": {"n": 3},
    "last_n": {"n": 2},
    "approx_quantile": {"q": [0.0, 0.3, 0.5, 0.99, 1.0], "k": 8},
    "top_k": {"k": 2, "capacity": 3},
}
SPECIAL = {
    DataType.DOUBLE: st.sampled_from([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 2.5]),
    DataType.BIGINT: st.sampled_from([0, -1, 7, 2**40]),
    DataType.STRING: st.sampled_from(["", "a", "b", "é"]),
    DataType.TIMESTAMP: st.sampled_from([0, -1, 1_700_000_000_000_000]),
    DataType.DATE: st.sampled_from([0, -1, 19_000]),
    DataType.BOOLEAN: st.sampled_from([True, False]),
}


def values_for(dtype: DataType) -> st.SearchStrategy[Any]:
    general: st.SearchStrategy[Any] = {
        DataType.DOUBLE: st.floats(-1e6, 1e6),
        DataType.BIGINT: st.integers(-(10**12), 10**12),
        DataType.STRING: st.text(max_size=2),
        DataType.TIMESTAMP: st.integers(-(10**15), 10**16),
        DataType.DATE: st.integers(-20_000, 40_000),
        DataType.BOOLEAN: st.booleans(),
    }[dtype]
    return general | SPECIAL[dtype] | st.none()


@st.composite
def ir_column(draw: st.DrawFn, op: Operator, dtype: DataType) -> pa.Array:
    """IRs built from generated events, several events per IR, some IRs empty."""
    n = draw(st.integers(1, 30))
    values = draw(st.lists(values_for(dtype), min_size=n, max_size=n))
    # Few distinct times, so first/last meet timestamp ties between IRs.
    ts = np.asarray(draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)), np.int64)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=12)))
    offsets = np.asarray([0, *cuts, n], np.int64)
    state = op.build(ts, pa.array(values, dtype.arrow()), offsets)
    return op.to_arrow(state)


@st.composite
def tile_column(draw: st.DrawFn, op: Operator, dtype: DataType) -> pa.Array:
    """IRs as a key's tiles hold them: events in time order cut into consecutive IRs, so
    IRs cover ascending times (equal times may straddle a cut), up to 40 of them."""
    n = draw(st.integers(1, 80))
    values = draw(st.lists(values_for(dtype), min_size=n, max_size=n))
    steps = draw(st.lists(st.sampled_from([0, 1, 1, 7]), min_size=n, max_size=n))
    ts = np.cumsum(np.asarray(steps, np.int64))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=40)))
    offsets = np.asarray([0, *cuts, n], np.int64)
    column = op.to_arrow(op.build(ts, pa.array(values, dtype.arrow()), offsets))
    if pa.types.is_list(column.type) and draw(st.booleans()):
        # Items stored in another order than ours (the definition sorts them when read).
        rows = column.to_pylist()
        column = pa.array([r if r is None else r[::-1] for r in rows], column.type)
    return column


@st.composite
def tile_windows(draw: st.DrawFn, size: int) -> list[list[int]]:
    """Windows as the assembler picks them: ascending runs of tiles, sharing tiles (a
    shorter window is a suffix of a longer one), single tiles, none."""
    windows = []
    for _ in range(draw(st.integers(0, 5))):
        start = draw(st.integers(0, size))
        stop = draw(st.integers(start, size))
        skip = draw(st.sets(st.integers(start, max(start, stop - 1)), max_size=3))
        windows.append([p for p in range(start, stop) if p not in skip])
    if size and draw(st.booleans()):
        windows.append([size - 1])
    return windows


def check_merge_windows(op: Operator, column: pa.Array, windows: list[list[int]]) -> None:
    picks = np.asarray([p for w in windows for p in w], np.int64)
    offsets = np.cumsum([0, *(len(w) for w in windows)]).tolist()
    got = op.merge_windows(column, picks, offsets)
    want = Operator.merge_windows(op, column, picks, offsets)
    assert [bits(v) for v in got] == [bits(v) for v in want]


def sliced(column: pa.Array, data: st.DataObject) -> pa.Array:
    if data.draw(st.booleans()):  # a sliced record column starts past offset zero
        return pa.concat_arrays([column[:1], column]).slice(1)
    return column


@pytest.mark.parametrize(("name", "dtype"), OVERRIDES, ids=[f"{n}-{d}" for n, d in OVERRIDES])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_merge_windows_equals_the_definition(name: str, dtype: DataType, data: Any) -> None:
    """Any picks: IRs overlapping in time, repeated, out of order."""
    op = make_operator(name, dtype, PARAMS.get(name))
    column = sliced(data.draw(ir_column(op, dtype)), data)
    size = len(column)
    windows = data.draw(st.lists(st.lists(st.integers(0, size - 1), max_size=8), max_size=5))
    check_merge_windows(op, column, windows)


@pytest.mark.parametrize(("name", "dtype"), OVERRIDES, ids=[f"{n}-{d}" for n, d in OVERRIDES])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_merge_windows_of_tiles_equals_the_definition(
    name: str, dtype: DataType, data: Any
) -> None:
    """Picks as windows of tiles make them: the overrides' fast paths (first_n / last_n
    read only the edge tiles of time-ordered, disjoint IRs)."""
    op = make_operator(name, dtype, PARAMS.get(name))
    column = sliced(data.draw(tile_column(op, dtype)), data)
    check_merge_windows(op, column, data.draw(tile_windows(len(column))))


@pytest.mark.parametrize(("name", "dtype", "params"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_key_assembler_equals_the_vectorized_assembler(
    name: str, dtype: DataType, params: dict[str, Any], data: st.DataObject
) -> None:
    group = group_for(name, dtype, params)
    events, rows = data.draw(scenario(dtype))
    rows = [r for r in rows if r[1] is not None]  # online lookups always have a time
    if not rows:
        return
    vectorized = assemble(group, events, rows)
    schema = tile_record_schema(group)
    records = {
        key: decode(raw, schema) for key, raw in tile_records(group, tiles_of(group, events))
    }
    empty = pa.RecordBatch.from_pylist([], schema=schema)
    feature = group.features[0]
    assembler = KeyAssembler(group, feature.outputs)
    for i, (key, t, pointer) in enumerate(rows):
        end = t - t % GMIN
        if pointer is not None:
            end = min(end, pointer - pointer % GMIN)
        got = assembler.assemble(records.get(key, empty), end)
        for output in feature.outputs:
            want = vectorized.column(output.name)[i].as_py()
            assert bits(got[output.name]) == bits(want), (output.name, key, t, pointer)


def test_lifetime_and_empty_records() -> None:
    group = group_for("count", DataType.STRING, {})
    schema = tile_record_schema(group)
    assembler = KeyAssembler(group, group.features[0].outputs)
    empty = pa.RecordBatch.from_pylist([], schema=schema)
    assert set(assembler.assemble(empty, T0).values()) == {0}
    events: list[tuple[Any, int | None, Any]] = [
        ("a", T0 - 3 * 86_400_000_000 + 1, "x"),
        ("a", T0 + GMIN - 1, "y"),
    ]
    [(_, raw)] = list(tile_records(group, tiles_of(group, events)))
    got = assembler.assemble(decode(raw, schema), T0 + GMIN)
    assert got["f_lifetime"] == 2
    assert got["f_5m"] == 1
