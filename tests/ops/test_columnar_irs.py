"""The columnar ``build_arrow`` / ``merge_arrow`` of top_k, first_n and last_n against their
definition (``to_arrow`` of ``build`` / ``merge_segments``), bit for bit.

The tile builders call these; the definition is the Python fold over per-row states. Cases:
nulls, empty segments, ties in time and in count, the Misra-Gries cut (small capacities),
-0.0, NaN and infinities (NaN takes the definition's path), strings, integers, booleans and
timestamps, and offsets that do not start at row 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robusta.ops import make_operator
from robusta.ops.base import Operator
from robusta.spec.datatypes import DataType
from robusta.testing.compare import bits

VALUES: dict[DataType, st.SearchStrategy[Any]] = {
    DataType.STRING: st.sampled_from(["", "a", "b", "ab", "é", "z"]) | st.text(max_size=2),
    DataType.BIGINT: st.integers(-3, 3) | st.integers(-(2**63), 2**63 - 1),
    DataType.BOOLEAN: st.booleans(),
    DataType.TIMESTAMP: st.integers(0, 5).map(lambda s: s * 1_000_000),
    DataType.DOUBLE: st.sampled_from([0.0, -0.0, 1.5, -1.5, float("inf"), float("nan")]),
}


@st.composite
def events(draw: st.DrawFn, dtype: DataType) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(values, times, offsets): segments of 0-8 events, times in a small range (ties)."""
    lengths = draw(st.lists(st.integers(0, 8), min_size=1, max_size=10))
    skip = draw(st.integers(0, 2))  # rows before the first segment, which no segment holds
    n = sum(lengths) + skip
    values = draw(st.lists(st.none() | VALUES[dtype], min_size=n, max_size=n))
    times = np.asarray(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)), np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64) + skip
    if dtype is DataType.TIMESTAMP:
        arrow = pa.array(values, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    else:
        arrow = pa.array(values, dtype.arrow())
    return arrow, times, offsets


def operator(name: str, dtype: DataType, size: int) -> Operator:
    if name == "top_k":
        return make_operator(name, dtype, {"k": 1, "capacity": size})
    return make_operator(name, dtype, {"n": size})


def check_build(op: Operator, case: tuple[pa.Array, np.ndarray, np.ndarray]) -> None:
    values, times, offsets = case
    fast = op.build_arrow(times, values, offsets)
    slow = op.to_arrow(op.build(times, values, offsets))
    same(op, fast, slow)


def same(op: Operator, fast: pa.Array, slow: pa.Array) -> None:
    """Equal stored IRs: same type and values, floats by their bits (NaN equals NaN)."""
    assert fast.cast(op.ir_type).type == slow.cast(op.ir_type).type
    assert bits(fast.to_pylist()) == bits(slow.to_pylist())
    assert fast.null_count == slow.null_count


def check_merge(op: Operator, case: tuple[pa.Array, np.ndarray, np.ndarray], cuts: Any) -> None:
    """Tiles built over the events (one per segment), then merged in runs of ``cuts``."""
    values, times, offsets = case
    tiles = op.to_arrow(op.build(times, values, offsets)).cast(op.ir_type)
    lengths = cuts.draw(st.lists(st.integers(0, 4), min_size=1, max_size=6))
    start = cuts.draw(st.integers(0, min(2, len(tiles))))
    bounds = np.concatenate([[0], np.cumsum(lengths)]) + start
    bounds = np.minimum(bounds, len(tiles)).astype(np.int64)
    fast = op.merge_arrow(tiles, bounds)
    slow = op.to_arrow(op.merge_segments(op.from_arrow(tiles), bounds))
    same(op, fast, slow)


DTYPES = st.sampled_from(sorted(VALUES, key=lambda d: d.value))


@settings(max_examples=300, deadline=None)
@given(st.data(), DTYPES, st.sampled_from(["top_k", "first_n", "last_n"]), st.integers(1, 4))
def test_build_arrow_equals_the_definition(
    data: st.DataObject, dtype: DataType, name: str, size: int
) -> None:
    check_build(operator(name, dtype, size), data.draw(events(dtype)))


@settings(max_examples=300, deadline=None)
@given(st.data(), DTYPES, st.sampled_from(["top_k", "first_n", "last_n"]), st.integers(1, 4))
def test_merge_arrow_equals_the_definition(
    data: st.DataObject, dtype: DataType, name: str, size: int
) -> None:
    check_merge(operator(name, dtype, size), data.draw(events(dtype)), data)


def test_top_k_cut_keeps_counts_above_the_threshold() -> None:
    """A hand-checked cut: capacity 2, counts a:3 b:2 c:2 d:1 -> threshold 2 -> a:1."""
    op = make_operator("top_k", DataType.STRING, {"k": 2, "capacity": 2})
    values = pa.array(["a", "b", "c", "a", "b", "c", "a", "d"])
    ir = op.build_arrow(np.zeros(8, np.int64), values, np.array([0, 8]))
    assert ir.to_pylist() == [{"total": 8, "items": [{"value": "a", "count": 1}]}]


def test_last_n_keeps_the_latest_in_time_then_value_order() -> None:
    op = make_operator("last_n", DataType.STRING, {"n": 2})
    values = pa.array(["b", "a", None, "c", "a"])
    times = np.array([1, 3, 9, 3, 2], np.int64)
    ir = op.build_arrow(times, values, np.array([0, 5, 5]))
    rows = ir.to_pylist()
    assert rows[1] is None
    assert [(p["ts"].timestamp() * 1e6, p["value"]) for p in rows[0]] == [(3.0, "a"), (3.0, "c")]


def test_reduce_segments_stops_at_the_last_offset() -> None:
    """Rows after the last segment are not summed into it (``reduceat`` alone would)."""
    from robusta.ops.base import reduce_segments

    sums = reduce_segments(np.add, np.array([1, 2, 4, 8]), np.array([0, 1, 2]), 0)
    assert sums.tolist() == [1, 2]


@st.composite
def windows(draw: st.DrawFn, tiles: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of tiles in ascending tile order (as the assembler picks them), some empty."""
    picks: list[int] = []
    offsets = [0]
    for _ in range(draw(st.integers(1, 6))):
        start = draw(st.integers(0, tiles))
        length = draw(st.integers(0, tiles - start))
        picks += range(start, start + length)
        offsets.append(len(picks))
    return np.asarray(picks, np.int64), np.asarray(offsets, np.int64)


@settings(max_examples=300, deadline=None)
@given(st.data(), DTYPES, st.sampled_from(["top_k", "first_n", "last_n"]), st.integers(1, 4))
def test_window_values_equal_the_definition(
    data: st.DataObject, dtype: DataType, name: str, size: int
) -> None:
    """Tiles of disjoint, ascending times (one per 10 s, events inside), windows of them."""
    op = operator(name, dtype, size)
    values, times, offsets = data.draw(events(dtype))
    times = times + 10 * segment_of(offsets, len(times))  # tile i holds times 10i .. 10i + 4
    tiles = op.to_arrow(op.build(times, values, offsets)).cast(op.ir_type)
    picks, bounds = data.draw(windows(len(tiles)))
    fast = op.window_values(tiles, picks, bounds)
    slow = op.finalize(op.merge_segments(op.from_arrow(tiles.take(pa.array(picks))), bounds))
    assert fast.type == slow.type
    assert bits(fast.to_pylist()) == bits(slow.to_pylist())


def test_window_values_of_overlapping_tiles_take_the_definition() -> None:
    op = make_operator("first_n", DataType.STRING, {"n": 1})
    events = pa.array(["late", "early"])
    tiles = op.to_arrow(op.build(np.array([5, 1]), events, np.array([0, 1, 2])))
    got = op.window_values(tiles, np.array([0, 1]), np.array([0, 2]))
    assert got.to_pylist() == [["early"]]  # the second tile holds the earlier event


def segment_of(offsets: np.ndarray, n: int) -> np.ndarray:
    """Each row's segment (rows before the first offset: segment 0)."""
    return np.maximum(np.searchsorted(offsets, np.arange(n), side="right") - 1, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=1500), st.sampled_from([8, 20, 200]))
def test_kll_images_read_as_the_library_iterates_them(values: list[float], k: int) -> None:
    import datasketches

    from robusta.ops.sketches import _kll_items

    sketch = datasketches.kll_doubles_sketch(k)
    for v in values:
        sketch.update(v)
    parsed = _kll_items(sketch.serialize())
    if not values:
        assert parsed is None
        return
    assert parsed is not None
    assert sorted(zip(parsed[0].tolist(), parsed[1].tolist(), strict=True)) == sorted(sketch)


@settings(max_examples=200, deadline=None)
@given(st.data(), st.lists(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), min_size=1, max_size=3))
def test_quantile_window_values_equal_the_definition(data: st.DataObject, qs: list[float]) -> None:
    op = make_operator("approx_quantile", DataType.DOUBLE, {"q": qs, "k": 8})
    lengths = data.draw(st.lists(st.integers(0, 40), min_size=1, max_size=8))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    drawn = data.draw(st.lists(st.none() | st.floats(-50, 50), min_size=n, max_size=n))
    values = pa.array(drawn, pa.float64())
    tiles = op.to_arrow(op.build(np.zeros(n, np.int64), values, offsets))
    picks, bounds = data.draw(windows(len(tiles)))
    fast = op.window_values(tiles, picks, bounds)
    slow = op.finalize(op.merge_segments(op.from_arrow(tiles.take(pa.array(picks))), bounds))
    assert fast.type == slow.type
    assert bits(fast.to_pylist()) == bits(slow.to_pylist())


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 3000), min_size=1, max_size=6),
    st.sampled_from([8, 20, 200]),
    st.sampled_from(["gamma", "ties", "zeros"]),
    st.integers(0, 2**32 - 1),
)
def test_quantiles_of_one_sketch_equal_the_definition(
    sizes: list[int], k: int, kind: str, seed: int
) -> None:
    """Windows of one sketch each (many compacted levels, ties, signed zeros): the pooled
    rule the columnar path uses for them gives the sketch's own ``get_quantile``."""
    rng = np.random.default_rng(seed)
    qs = [0.0, 0.3, 0.5, 0.99, 1.0]
    op = make_operator("approx_quantile", DataType.DOUBLE, {"q": qs, "k": k})
    n = sum(sizes)
    if kind == "gamma":
        drawn = np.round(rng.gamma(2.0, 20.0, n), 2)
    elif kind == "ties":
        drawn = rng.integers(0, 4, n).astype(np.float64)
    else:  # -0.0 and 0.0 tie: those windows ask the sketch
        drawn = rng.choice([0.0, -0.0, 1.0], n)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    tiles = op.to_arrow(op.build(np.zeros(n, np.int64), pa.array(drawn), offsets))
    picks = np.arange(len(sizes), dtype=np.int64)
    bounds = np.arange(len(sizes) + 1, dtype=np.int64)
    fast = op.window_values(tiles, picks, bounds)
    slow = op.finalize(op.merge_segments(op.from_arrow(tiles.take(pa.array(picks))), bounds))
    assert bits(fast.to_pylist()) == bits(slow.to_pylist())


def test_kll_images_read_at_once_as_one_by_one() -> None:
    """_kll_pool over full images, one-item images, empty images and nulls (in a sliced
    column) reads what _kll_items reads of each."""
    import datasketches

    from robusta.ops.sketches import _kll_items, _kll_pool

    images: list[bytes | None] = [None]
    for values in ([], [2.5], [1.0, 2.0], list(np.linspace(0, 1, 3000)), [7.0]):
        sketch = datasketches.kll_doubles_sketch(8)
        for v in values:
            sketch.update(float(v))
        images += [sketch.serialize(), None]
    column = pa.array([b"x", *images], pa.binary()).slice(1)
    positions = np.array([8, 0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 4], np.int64)
    sizes, items, weights = _kll_pool(column, positions)
    offset = 0
    for size, image in zip(sizes.tolist(), (images[p] for p in positions), strict=True):
        want = _kll_items(image)
        got = (items[offset : offset + size], weights[offset : offset + size])
        offset += size
        if want is None:
            assert size == 0
            continue
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
    assert offset == len(items)


@pytest.mark.parametrize("name", ["sum", "avg", "first", "approx_distinct", "top_k", "last_n"])
def test_state_path_in_chunks_equals_one_pass(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """build_arrow / merge_arrow of the state path work a few segments at a time (bounded
    memory); the stored IRs are those of one pass."""
    from robusta.ops import base

    rng = np.random.default_rng(5)
    dtype = DataType.DOUBLE if name in ("sum", "avg") else DataType.STRING
    op = make_operator(name, dtype, {})
    lengths = rng.integers(0, 6, 50)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    times = rng.integers(0, 4, n).astype(np.int64)
    if dtype is DataType.DOUBLE:
        values = pa.array(rng.standard_normal(n))
    else:
        values = pa.array([f"v{i}" for i in rng.integers(0, 9, n)])
    whole = base.Operator.build_arrow(op, times, values, offsets)
    merged = base.Operator.merge_arrow(op, whole, np.array([0, 7, 7, 30, 50]))
    monkeypatch.setattr(base, "_CHUNK_SEGMENTS", 3)
    assert base.Operator.build_arrow(op, times, values, offsets).equals(whole)
    assert base.Operator.merge_arrow(op, whole, np.array([0, 7, 7, 30, 50])).equals(merged)
