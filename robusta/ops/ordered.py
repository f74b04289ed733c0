"""first, last, first_n and last_n: values ordered by (timestamp, value)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa

from robusta.ops.base import (
    Operator,
    Param,
    State,
    fold_segments,
    picked_validity,
    picked_values,
    reduce_segments,
    take,
)
from robusta.ops.params import int_between
from robusta.ops.values import (
    TS_TYPE,
    Array,
    from_numpy,
    has_nan,
    list_bounds,
    list_items,
    list_of_pairs,
    lists_of,
    placeholders,
    primitive_view,
    python_value,
    rank_in_segments,
    segment_ids,
    struct_fields,
    to_numpy,
    value_reader,
)
from robusta.spec.datatypes import DataType


def _event_struct(value: str, ts: str) -> str:
    """Spark struct (ts, value) of an event, null when the value is null."""
    return f"CASE WHEN {value} IS NOT NULL THEN struct({ts} AS ts, {value} AS value) END"


def _not_greater(a: Array, b: Array) -> Array:
    """a <= b with NaN as the largest value (Spark's ordering), so ties do not hinge on order."""
    if a.dtype.kind == "f":
        return (a <= b) | np.isnan(b)
    return a <= b


class _Edge(Operator):
    """first / last: the event with the least / greatest (ts, value)."""

    want_least: bool = True

    @property
    def ir_type(self) -> pa.DataType:
        return pa.struct([("ts", TS_TYPE), ("value", self.input_type.arrow())])

    @property
    def result_type(self) -> pa.DataType:
        return self.input_type.arrow()

    def empty(self, n: int) -> State:
        values = placeholders(self.input_type, n)
        return np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.int64), values

    def lift(self, ts: Array, values: pa.Array | None) -> State:
        v, valid = self._values(values, len(ts))
        return valid, np.asarray(ts, dtype=np.int64), v

    def combine(self, a: State, b: State) -> State:
        av, ats, aval = a
        bv, bts, bval = b
        if self.want_least:
            a_wins = (ats < bts) | ((ats == bts) & _not_greater(aval, bval))
        else:
            a_wins = (ats > bts) | ((ats == bts) & _not_greater(bval, aval))
        pick_a = av & (~bv | a_wins)
        return av | bv, np.where(pick_a, ats, bts), np.where(pick_a, aval, bval)

    def merge_segments(self, state: State, offsets: Array) -> State:
        """The winner of each segment directly: the tiles of a window cover disjoint times,
        so the least / greatest timestamp is unique and equals what the fold picks; the
        segments with a timestamp tie (events of one tile) take the fold, on their own."""
        valid, ts, _ = state
        offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.diff(offsets)
        info = np.iinfo(np.int64)
        ufunc, worst = (np.minimum, info.max) if self.want_least else (np.maximum, info.min)
        best = reduce_segments(ufunc, np.where(valid, ts, worst), offsets, worst)
        segment = np.full(len(ts), -1, dtype=np.int64)
        segment[offsets[0] : offsets[-1]] = np.repeat(np.arange(len(lengths)), lengths)
        winners = np.flatnonzero(valid & (segment >= 0) & (ts == best[segment]))
        owners = segment[winners]  # ascending: a tie is a repeated neighbour
        repeated = np.flatnonzero(owners[1:] == owners[:-1])
        tied = np.unique(owners[repeated])
        winners = winners[~np.isin(owners, tied)]
        out = self.empty(len(lengths))
        for column, source in zip(out, state, strict=True):
            column[segment[winners]] = source[winners]
        if len(tied):
            sizes = lengths[tied]
            inner = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            rows = np.repeat(offsets[tied] - inner[:-1], sizes) + np.arange(int(inner[-1]))
            folded = fold_segments(self, take(state, rows), inner)
            for column, source in zip(out, folded, strict=True):
                column[tied] = source
        return out

    def merge_windows(self, column: pa.Array, picks: Array, offsets: Sequence[int]) -> list[Any]:
        """The winner by timestamp alone (unique within a window's tiles, as in
        ``merge_segments``), its value read as Arrow's Python value; ties take the fold."""
        fields = struct_fields(column)
        ts = picked_values(fields["ts"], picks, 0)
        if fields["ts"].null_count or fields["value"].null_count:
            ok = [
                a and b
                for a, b in zip(
                    picked_validity(fields["ts"], picks),
                    picked_validity(fields["value"], picks),
                    strict=True,
                )
            ]
            winners = self._winners(ts, ok, offsets)
        else:
            winners = self._winners_all_valid(ts, offsets)
        if winners is None:
            return super().merge_windows(column, picks, offsets)
        values = fields["value"]
        return [None if w is None else values[int(picks[w])].as_py() for w in winners]

    def _winners_all_valid(self, ts: list[int], offsets: Sequence[int]) -> list[int | None] | None:
        """Per window the position of the winning timestamp; None on a tie."""
        pick = min if self.want_least else max
        winners: list[int | None] = []
        for a, b in pairwise(offsets):
            times = ts[a:b]
            if not times:
                winners.append(None)
                continue
            best = pick(times)
            if times.count(best) > 1:
                return None
            winners.append(a + times.index(best))
        return winners

    def _winners(
        self, ts: list[int], ok: list[bool], offsets: Sequence[int]
    ) -> list[int | None] | None:
        """:meth:`_winners_all_valid` skipping invalid IRs."""
        pick = min if self.want_least else max
        winners: list[int | None] = []
        for a, b in pairwise(offsets):
            candidates = [(ts[i], i) for i in range(a, b) if ok[i]]
            if not candidates:
                winners.append(None)
                continue
            best = pick(t for t, _ in candidates)
            at_best = [i for t, i in candidates if t == best]
            if len(at_best) > 1:
                return None
            winners.append(at_best[0])
        return winners

    def finalize(self, state: State) -> pa.Array:
        return from_numpy(state[2], state[0], self.input_type)

    def from_arrow(self, array: pa.Array) -> State:
        fields = struct_fields(array)
        ts, ts_valid = to_numpy(fields["ts"], DataType.TIMESTAMP)
        v, valid = to_numpy(fields["value"], self.input_type)
        return valid & ts_valid, ts, v

    def to_arrow(self, state: State) -> pa.Array:
        valid, ts, v = state
        return pa.StructArray.from_arrays(
            [from_numpy(ts, valid, DataType.TIMESTAMP), from_numpy(v, valid, self.input_type)],
            names=["ts", "value"],
            mask=pa.array(~valid),
        )

    def spark_build(self, value: str, ts: str) -> str:
        return f"{self._agg}({_event_struct(value, ts)})"

    def spark_merge(self, ir: str, order: str) -> str:
        return f"{self._agg}({ir})"

    @property
    def _agg(self) -> str:
        return "min" if self.want_least else "max"


class First(_Edge):
    name = "first"
    summary = "value of the event with the least (ts, value)"
    want_least = True


class Last(_Edge):
    name = "last"
    summary = "value of the event with the greatest (ts, value)"
    want_least = False


Item = tuple[int, Any]


class _EdgeN(Operator):
    """first_n / last_n: the n events with the least / greatest (ts, value).

    A state row is a tuple of (ts, value) pairs sorted ascending; first_n keeps the n smallest,
    last_n the n largest. Results list first_n oldest first and last_n newest first.
    """

    want_least: bool = True
    param_specs = (Param("n", 5, int_between(1, 10_000), "how many values to keep"),)

    @property
    def n(self) -> int:
        return int(self.params["n"])

    @property
    def ir_type(self) -> pa.DataType:
        return pa.list_(pa.struct([("ts", TS_TYPE), ("value", self.input_type.arrow())]))

    @property
    def result_type(self) -> pa.DataType:
        return pa.list_(self.input_type.arrow())

    def empty(self, n: int) -> State:
        out = np.empty(n, dtype=object)
        out[:] = [()] * n
        return (out,)

    def lift(self, ts: Array, values: pa.Array | None) -> State:
        v, valid = self._values(values, len(ts))
        out = np.empty(len(ts), dtype=object)
        out[:] = [
            ((int(t), x),) if ok else () for t, x, ok in zip(ts, v.tolist(), valid, strict=True)
        ]
        return (out,)

    def combine(self, a: State, b: State) -> State:
        out = np.empty(len(a[0]), dtype=object)
        out[:] = [self._keep(x, y) for x, y in zip(a[0], b[0], strict=True)]
        return (out,)

    def _keep(self, x: tuple[Item, ...], y: tuple[Item, ...]) -> tuple[Item, ...]:
        if not y:
            return x
        if not x:
            return y
        merged = list(heapq.merge(x, y))
        return tuple(merged[: self.n]) if self.want_least else tuple(merged[-self.n :])

    def build_arrow(self, ts: Array, values: pa.Array | None, offsets: Array) -> pa.Array:
        """Columnar ``build``: the events of all segments sorted by (segment, ts, value)
        at once, each segment's first or last n kept (the fold keeps exactly those)."""
        column = self._arrow_values(values, len(ts))
        bounds = np.asarray(offsets, dtype=np.int64)
        if len(bounds) <= 1 or has_nan(column):
            return super().build_arrow(ts, values, offsets)
        lo, hi = int(bounds[0]), int(bounds[-1])
        inside = column.slice(lo, hi - lo)
        times = np.asarray(ts, dtype=np.int64)[lo:hi]
        segments = segment_ids(bounds)
        if inside.null_count:
            valid = np.asarray(inside.is_valid(), dtype=np.bool_)
            segments, times = segments[valid], times[valid]
            inside = inside.filter(pa.array(valid))
        return self._kept(segments, times, inside, len(bounds) - 1)

    def merge_arrow(self, column: pa.Array, offsets: Array) -> pa.Array:
        """Columnar ``merge_segments``: the items of all segments' IRs sorted at once."""
        bounds = np.asarray(offsets, dtype=np.int64)
        if len(bounds) <= 1:
            return super().merge_arrow(column, offsets)
        rows = column.slice(int(bounds[0]), int(bounds[-1] - bounds[0]))
        owner, items = list_items(rows)
        pairs = struct_fields(items)
        value = pairs["value"].cast(self.input_type.arrow())
        if has_nan(value) or pairs["ts"].null_count or value.null_count:
            return super().merge_arrow(column, offsets)
        times = np.asarray(pairs["ts"].cast(TS_TYPE).cast(pa.int64()), dtype=np.int64)
        return self._kept(segment_ids(bounds)[owner], times, value, len(bounds) - 1)

    columnar_windows = True

    def window_values(self, column: pa.Array, picks: Array, offsets: Array) -> pa.Array:
        """Columnar ``finalize(merge_segments(...))`` for the assembler. A window's tiles
        cover disjoint, ascending times, so its first (last) n items lie in its first (last)
        n non-empty tiles: only those are read. Windows whose tiles are not so ordered (not
        from a tile table) take the definition."""
        bounds = np.asarray(offsets, dtype=np.int64)
        picks = np.asarray(picks, dtype=np.int64)
        n = len(bounds) - 1
        low, high, filled = _time_range(column)
        segment = segment_ids(bounds)
        used = filled[picks]
        picked, segment = picks[used], segment[used]
        same = segment[1:] == segment[:-1]
        if np.any(same & (high[picked[:-1]] >= low[picked[1:]])):
            return super().window_values(column, picks, offsets)
        rank, sizes = rank_in_segments(segment, n)
        near = rank < self.n if self.want_least else rank >= sizes[segment] - self.n
        owner, items = list_items(column.take(pa.array(picked[near], pa.int64())))
        pairs = struct_fields(items)
        value = pairs["value"].cast(self.input_type.arrow())
        if has_nan(value) or value.null_count or pairs["ts"].null_count:
            return super().window_values(column, picks, offsets)
        times = np.asarray(pairs["ts"].cast(TS_TYPE).cast(pa.int64()), dtype=np.int64)
        return self._final(segment[near][owner], times, value, n)

    def merge_windows(self, column: pa.Array, picks: Array, offsets: Sequence[int]) -> list[Any]:
        """The per-key ``finalize(merge_segments(...))``. Where a window's non-empty IRs
        hold ascending, disjoint times (the tiles of a window do), the fold keeps exactly the
        first (last) n items of their concatenation, each IR in its own sorted order: only
        the IRs holding those are read. Other windows take the definition."""
        if not len(picks):  # only empty windows (common: short windows of a quiet key)
            return [None] * (len(offsets) - 1)
        view = _ItemsView.of(column, self.input_type)
        if view is None:
            return super().merge_windows(column, picks, offsets)
        picks = np.asarray(picks, dtype=np.int64)
        first, sizes, low, high = view.ranges(picks)
        out: list[Any] = []
        for a, b in pairwise(offsets):
            filled = [i for i in range(a, b) if sizes[i]]
            if any(high[i] >= low[j] for i, j in pairwise(filled)):
                out.append(super().merge_windows(column, picks[a:b], [0, b - a])[0])
                continue
            out.append(self._edge_values(view, [(first[i], sizes[i]) for i in filled]))
        return out

    def _edge_values(self, view: _ItemsView, tiles: list[tuple[int, int]]) -> list[Any] | None:
        """The result of a window whose IRs (``(first item, size)``, ascending and disjoint in
        time) are ``tiles``: first_n oldest first, last_n newest first; None when empty."""
        wanted, held = [], 0
        for tile in tiles if self.want_least else reversed(tiles):
            if held >= self.n:
                break
            wanted.append(tile)
            held += tile[1]
        if not self.want_least:
            wanted.reverse()
        items = [pair for tile in wanted for pair in sorted(view.items(*tile))]
        kept = items[: self.n] if self.want_least else items[::-1][: self.n]
        return [self._value(v) for _, v in kept] if kept else None

    def _final(self, segments: Array, times: Array, values: pa.Array, n: int) -> pa.Array:
        """``finalize`` of the segments' merged IRs from (segment, ts, value) items: first_n
        oldest first, last_n newest first, null for an empty window."""
        table = pa.table({"s": pa.array(segments, pa.int64()), "t": times, "v": values})
        direction = "ascending" if self.want_least else "descending"
        ordered = table.sort_by([("s", "ascending"), ("t", direction), ("v", direction)])
        segment = np.asarray(ordered.column("s").to_numpy(), dtype=np.int64)
        rank, _ = rank_in_segments(segment, n)
        keep = rank < self.n
        kept = ordered.column("v").take(pa.array(np.flatnonzero(keep), pa.int64()))
        per_segment = np.bincount(segment[keep], minlength=n)
        lists = lists_of(kept.combine_chunks(), per_segment, null_when_empty=True)
        return lists.cast(self.result_type)

    def _kept(self, segments: Array, times: Array, values: pa.Array, n: int) -> pa.Array:
        """The ``n`` segments' IRs (as ``to_arrow`` writes them) from (segment, ts, value)."""
        table = pa.table({"s": pa.array(segments, pa.int64()), "t": times, "v": values})
        ordered = table.sort_by([("s", "ascending"), ("t", "ascending"), ("v", "ascending")])
        segment = np.asarray(ordered.column("s").to_numpy(), dtype=np.int64)
        rank, sizes = rank_in_segments(segment, n)
        keep = rank < self.n if self.want_least else rank >= sizes[segment] - self.n
        kept = pa.array(np.flatnonzero(keep), pa.int64())
        pairs = pa.StructArray.from_arrays(
            [
                ordered.column("t").take(kept).combine_chunks().cast(TS_TYPE),
                ordered.column("v").take(kept).combine_chunks(),
            ],
            names=["ts", "value"],
        )
        per_segment = np.bincount(segment[keep], minlength=n)
        return lists_of(pairs, per_segment, null_when_empty=True).cast(self.ir_type)

    def finalize(self, state: State) -> pa.Array:
        rows: list[list[Any] | None] = []
        for items in state[0]:
            if not items:
                rows.append(None)
                continue
            ordered = items if self.want_least else reversed(items)
            rows.append([self._value(v) for _, v in ordered])
        return pa.array(rows, self.result_type)

    def from_arrow(self, array: pa.Array) -> State:
        rows = list_of_pairs(array, ("ts", "value"), (DataType.TIMESTAMP, self.input_type))
        out = np.empty(len(rows), dtype=object)
        out[:] = [tuple(sorted(items)) for items in rows]
        return (out,)

    def to_arrow(self, state: State) -> pa.Array:
        """The lists built from flat columns (one cast per column, not per value)."""
        counts = np.fromiter((len(items) for items in state[0]), np.int64, len(state[0]))
        flat = [pair for items in state[0] for pair in items]
        ts = pa.array([t for t, _ in flat], pa.int64()).cast(TS_TYPE)
        values = _typed_values([v for _, v in flat], self.input_type)
        pairs = pa.StructArray.from_arrays([ts, values], names=["ts", "value"])
        return lists_of(pairs, counts, null_when_empty=True).cast(self.ir_type)

    def _value(self, value: Any) -> Any:
        return python_value(value, self.input_type)

    def spark_build(self, value: str, ts: str) -> str:
        return self._cut(f"array_sort(collect_list({_event_struct(value, ts)}))")

    def spark_merge(self, ir: str, order: str) -> str:
        return self._cut(f"array_sort(flatten(collect_list({ir})))")

    def _cut(self, sorted_items: str) -> str:
        # Bind the sorted array to a lambda variable so it is computed once. No event with a
        # value gives null, not an empty list (as to_arrow masks empty lists).
        start = "1" if self.want_least else f"greatest(size(s) - {self.n} + 1, 1)"
        keep = f"s -> CASE WHEN size(s) = 0 THEN NULL ELSE slice(s, {start}, {self.n}) END"
        return f"element_at(transform(array({sorted_items}), {keep}), 1)"


class FirstN(_EdgeN):
    name = "first_n"
    summary = "values of the n events with the least (ts, value), oldest first"
    want_least = True


class LastN(_EdgeN):
    name = "last_n"
    summary = "values of the n events with the greatest (ts, value), newest first"
    want_least = False


@dataclass(frozen=True)
class _ItemsView:
    """The stored items of a first_n / last_n IR column, read in place for a few rows:
    each row's first and end item (none for null rows), item times, item values."""

    first: list[int]
    end: list[int]
    times: list[int]
    read: Callable[[int, int], list[Any]]

    @classmethod
    def of(cls, column: pa.Array, dtype: DataType) -> _ItemsView | None:
        """None where the definition reads items otherwise (null times or values become
        fill values there)."""
        fields = struct_fields(column.values)
        ts = fields["ts"]
        read = value_reader(fields["value"], dtype)
        if read is None or ts.null_count or not ts.type.equals(TS_TYPE):
            return None
        first, end = list_bounds(column)
        times, _ = primitive_view(ts)
        return cls(first, end, times.tolist(), read)

    def ranges(self, picks: Array) -> tuple[list[int], list[int], list[int], list[int]]:
        """Per pick: its first item, item count, least and greatest item time."""
        first, sizes, low, high = [], [], [], []
        for p in picks.tolist():
            lo, hi = self.first[p], self.end[p]
            times = self.times[lo:hi]
            first.append(lo)
            sizes.append(hi - lo)
            low.append(min(times, default=0))
            high.append(max(times, default=0))
        return first, sizes, low, high

    def items(self, first: int, size: int) -> list[tuple[int, Any]]:
        """The (ts, value) items of one IR as the definition's state holds them."""
        times = self.times[first : first + size]
        return list(zip(times, self.read(first, first + size), strict=True))


def _time_range(column: pa.Array) -> tuple[Array, Array, Array]:
    """Per stored first_n / last_n IR: its least and greatest item time and whether it holds
    any item (null and empty lists hold none)."""
    owner, items = list_items(column)
    times = struct_fields(items)["ts"].cast(TS_TYPE).cast(pa.int64()).fill_null(0)
    times_np = np.asarray(times, dtype=np.int64)
    counts = np.bincount(owner, minlength=len(column))
    filled = counts > 0
    low = np.zeros(len(column), dtype=np.int64)
    high = np.zeros(len(column), dtype=np.int64)
    if len(times_np):
        starts = (np.cumsum(counts) - counts)[filled]  # items are grouped by owner, in order
        low[filled] = np.minimum.reduceat(times_np, starts)
        high[filled] = np.maximum.reduceat(times_np, starts)
    return low, high, filled


def _typed_values(values: list[Any], dtype: DataType) -> pa.Array:
    """State values (int micros / days for temporal types) as an Arrow column of ``dtype``."""
    if dtype is DataType.TIMESTAMP:
        return pa.array(values, pa.int64()).cast(TS_TYPE)
    if dtype is DataType.DATE:
        return pa.array(values, pa.int32()).cast(pa.date32())
    return pa.array(values, dtype.arrow())
