"""approx_distinct (HLL), approx_quantile (KLL) and top_k (mergeable frequent items).

Sketch IRs are stored in the DataSketches binary formats Spark 4.1 writes: ``hll_sketch_agg``
(updatable HLL_8 image) and ``kll_sketch_agg_double`` (compact KLL doubles image).

Determinism: a KLL merge compacts with a random bit, so merging the same sketches twice can
give different quantiles. Window assembly therefore never KLL-merges: it pools the retained
(item, weight) pairs of the window's sketches and reads quantiles off that weighted sample with
KLL's own inclusive-rank rule. The result depends only on the stored tiles, so online and offline
assembly agree exactly, and pooling adds no compaction error.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any

import datasketches as ds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.ops.base import Operator, Param, State, picked_values, reduce_segments
from robusta.ops.params import int_between, optional, quantile_list
from robusta.ops.values import (
    Array,
    binary_values,
    binary_view,
    gather,
    list_bounds,
    list_items,
    list_of_pairs,
    lists_of,
    primitive_view,
    python_value,
    rank_in_segments,
    segment_ids,
    struct_fields,
    value_reader,
)
from robusta.spec.datatypes import DataType

# Input types whose Python ordering and equality Arrow's sort and hash grouping reproduce
# (floats are not among them: Counter merges -0.0 with 0.0 and keeps NaNs apart).
_COLUMNAR_TYPES = frozenset(
    {
        DataType.BOOLEAN,
        DataType.INT,
        DataType.BIGINT,
        DataType.STRING,
        DataType.BINARY,
        DataType.DATE,
        DataType.TIMESTAMP,
    }
)
EMPTY_STAND_IN = "\x00"  # what "" is counted as (Spark: char(0)); collides only with "\x00"


def _objects(items: Iterable[Any], n: int) -> Array:
    out = np.empty(n, dtype=object)
    out[:] = list(items)
    return out


def _binary_rows(array: pa.Array | pa.ChunkedArray) -> list[bytes | None]:
    return [None if v is None else bytes(v) for v in array.to_pylist()]


def _segments(offsets: Array) -> Iterable[tuple[int, int]]:
    bounds = np.asarray(offsets, dtype=np.int64).tolist()
    return pairwise(bounds)


class ApproxDistinct(Operator):
    name = "approx_distinct"
    summary = "distinct count estimate (HLL sketch, Spark hll_sketch_agg bytes)"
    exact = False
    param_specs = (Param("lg_k", 12, int_between(4, 21), "log2 of HLL buckets"),)

    @classmethod
    def check_input_type(cls, dtype: DataType) -> str | None:
        if dtype.is_known and not (dtype.is_integer or dtype in (DataType.STRING, DataType.BINARY)):
            return (
                f"approx_distinct counts integer, string or binary values (as Spark's "
                f"hll_sketch_agg), got {dtype}; CAST it to STRING or BIGINT in the query"
            )
        return None

    @property
    def lg_k(self) -> int:
        return int(self.params["lg_k"])

    @property
    def ir_type(self) -> pa.DataType:
        return pa.binary()

    @property
    def result_type(self) -> pa.DataType:
        return pa.int64()

    def empty(self, n: int) -> State:
        return (_objects([None] * n, n),)

    def lift(self, ts: Array, values: pa.Array | None) -> State:
        return self.build(ts, values, np.arange(len(ts) + 1))

    def build(self, ts: Array, values: pa.Array | None, offsets: Array) -> State:
        v, valid = self._values(values, len(ts))
        rows = [self._nonempty(r) for r in v.tolist()]
        sketches: list[Any] = []
        for lo, hi in _segments(offsets):
            sketch = None
            for i in range(lo, hi):
                if valid[i]:
                    sketch = sketch or ds.hll_sketch(self.lg_k, ds.tgt_hll_type.HLL_8)
                    sketch.update(rows[i])
            sketches.append(sketch)
        return (_objects(sketches, len(sketches)),)

    def _nonempty(self, value: Any) -> Any:
        # DataSketches skips empty strings and byte strings; count them as one value instead.
        if value == "" and self.input_type is DataType.STRING:
            return EMPTY_STAND_IN
        if value == b"" and self.input_type is DataType.BINARY:
            return EMPTY_STAND_IN.encode()
        return value

    def combine(self, a: State, b: State) -> State:
        return (
            _objects((self._union([x, y]) for x, y in zip(a[0], b[0], strict=True)), len(a[0])),
        )

    def merge_segments(self, state: State, offsets: Array) -> State:
        rows = state[0]
        merged = [self._union(rows[lo:hi]) for lo, hi in _segments(offsets)]
        return (_objects(merged, len(merged)),)

    def _union(self, sketches: Iterable[Any]) -> Any:
        present = [s for s in sketches if s is not None]
        if len(present) <= 1:
            return present[0] if present else None
        union = ds.hll_union(self.lg_k)
        for sketch in present:
            union.update(sketch)
        return union.get_result(ds.tgt_hll_type.HLL_8)

    def merge_windows(self, column: pa.Array, picks: Array, offsets: Sequence[int]) -> list[Any]:
        # Each tile's sketch is decoded once, however many windows use it.
        positions = picks.tolist()
        distinct = sorted(set(positions))
        raw = binary_values(column, distinct)
        decoded = dict(zip(distinct, self.from_arrow_rows(raw), strict=True))
        sketches = [decoded[p] for p in positions]
        return [self._estimate(self._union(sketches[a:b])) for a, b in pairwise(offsets)]

    def finalize(self, state: State) -> pa.Array:
        return pa.array([self._estimate(s) for s in state[0]], pa.int64())

    def _estimate(self, sketch: Any) -> int | None:
        """Distinct count from the registers alone, rounded half up like Spark.

        A sketch built in one pass carries a HIP accumulator whose estimate depends on how its
        events were split into tiles; uniting it with itself switches to the composite
        estimator, a function of the registers only, so every decomposition of a window (and
        build-from-all) gives the same estimate.
        """
        if sketch is None:
            return None
        union = ds.hll_union(self.lg_k)
        union.update(sketch)
        union.update(sketch)
        return math.floor(float(union.get_result(ds.tgt_hll_type.HLL_8).get_estimate()) + 0.5)

    def from_arrow(self, array: pa.Array) -> State:
        present = self.from_arrow_rows(_binary_rows(array))
        return (_objects(present, len(present)),)

    @staticmethod
    def from_arrow_rows(rows: Iterable[bytes | None]) -> list[Any]:
        """Sketches of stored IRs; None for null or empty ones (Spark writes an empty sketch,
        not null, for a tile whose values are all null)."""
        sketches = [None if b is None else ds.hll_sketch.deserialize(b) for b in rows]
        return [None if s is None or s.is_empty() else s for s in sketches]

    def to_arrow(self, state: State) -> pa.Array:
        return pa.array(
            [None if s is None else s.serialize_updatable() for s in state[0]], pa.binary()
        )

    def spark_build(self, value: str, ts: str) -> str:
        if self.input_type is DataType.STRING:
            value = f"CASE WHEN {value} = '' THEN char(0) ELSE {value} END"
        elif self.input_type is DataType.BINARY:
            value = f"CASE WHEN length({value}) = 0 THEN X'00' ELSE {value} END"
        return f"hll_sketch_agg({value}, {self.lg_k})"

    def spark_merge(self, ir: str, order: str) -> str:
        return f"hll_union_agg({ir}, true)"


Weighted = tuple[Any, ...]  # the KLL sketches pooled into one IR row


class ApproxQuantile(Operator):
    name = "approx_quantile"
    summary = "quantiles at params.q (KLL sketch, Spark kll_sketch_agg_double bytes)"
    exact = False
    param_specs = (
        Param("q", [0.5], quantile_list, "fractions in [0, 1]"),
        Param("k", 200, int_between(8, 65535), "KLL accuracy parameter"),
    )

    @classmethod
    def check_input_type(cls, dtype: DataType) -> str | None:
        if dtype.is_known and not dtype.is_numeric:
            return f"approx_quantile needs a numeric input, got {dtype}; CAST it in the query"
        return None

    @property
    def quantiles(self) -> list[float]:
        return [float(q) for q in self.params["q"]]

    @property
    def k(self) -> int:
        return int(self.params["k"])

    @property
    def ir_type(self) -> pa.DataType:
        return pa.binary()

    @property
    def result_type(self) -> pa.DataType:
        return pa.list_(pa.float64())

    def empty(self, n: int) -> State:
        return (_objects([()] * n, n),)

    def lift(self, ts: Array, values: pa.Array | None) -> State:
        return self.build(ts, values, np.arange(len(ts) + 1))

    def build(self, ts: Array, values: pa.Array | None, offsets: Array) -> State:
        v, valid = self._values(values, len(ts))
        rows = v.astype(np.float64).tolist()
        parts: list[Weighted] = []
        for lo, hi in _segments(offsets):
            sketch = ds.kll_doubles_sketch(self.k)
            for i in range(lo, hi):
                if valid[i]:
                    sketch.update(rows[i])
            parts.append(() if sketch.is_empty() else (sketch,))
        return (_objects(parts, len(parts)),)

    def combine(self, a: State, b: State) -> State:
        return (_objects((x + y for x, y in zip(a[0], b[0], strict=True)), len(a[0])),)

    def merge_segments(self, state: State, offsets: Array) -> State:
        rows = state[0]
        merged = [sum(rows[lo:hi], ()) for lo, hi in _segments(offsets)]
        return (_objects(merged, len(merged)),)

    def finalize(self, state: State) -> pa.Array:
        return pa.array([self._quantiles(parts) for parts in state[0]], self.result_type)

    def _quantiles(self, parts: Weighted) -> list[float] | None:
        if not parts:
            return None
        if len(parts) == 1:
            return [float(parts[0].get_quantile(q, True)) for q in self.quantiles]
        pairs = [pair for sketch in parts for pair in sketch]
        items = np.array([p[0] for p in pairs], dtype=np.float64)
        weights = np.array([p[1] for p in pairs], dtype=np.int64)
        return self._pooled_quantiles(items, weights)

    def _pooled_quantiles(self, items: Array, weights: Array) -> list[float]:
        """Quantiles of the weighted sample pooled from several sketches (in their order)."""
        order = np.argsort(items, kind="stable")
        items, cumulative = items[order], np.cumsum(weights[order])
        total = int(cumulative[-1])
        out = []
        for q in self.quantiles:
            # KLL's inclusive rule: the first item whose cumulative weight reaches ceil(q * n).
            i = int(np.searchsorted(cumulative, math.ceil(q * total), side="left"))
            out.append(float(items[min(i, len(items) - 1)]))
        return out

    def merge_windows(self, column: pa.Array, picks: Array, offsets: Sequence[int]) -> list[Any]:
        """The per-key ``finalize(merge_segments(...))``: each picked sketch's retained items
        read from its bytes once (:func:`_kll_items`, the library's iteration order), pooled
        as :meth:`_quantiles` pools them; a window of one sketch asks it."""
        if not len(picks):  # only empty windows (common: short windows of a quiet key)
            return [None] * (len(offsets) - 1)
        positions = np.asarray(picks, dtype=np.int64).tolist()
        distinct = sorted(set(positions))
        raw = dict(zip(distinct, binary_values(column, distinct), strict=True))
        parsed = {p: _kll_items(b) for p, b in raw.items()}
        out: list[Any] = []
        for a, b in pairwise(offsets):
            parts = [p for p in positions[a:b] if parsed[p] is not None]
            if not parts:
                out.append(None)
            elif len(parts) == 1:
                sketch = ds.kll_doubles_sketch.deserialize(raw[parts[0]])
                out.append([float(sketch.get_quantile(q, True)) for q in self.quantiles])
            else:
                pooled = [pair for p in parts if (pair := parsed[p]) is not None]
                items = np.concatenate([p[0] for p in pooled])
                weights = np.concatenate([p[1] for p in pooled])
                out.append(self._pooled_quantiles(items, weights))
        return out

    columnar_windows = True

    def window_values(self, column: pa.Array, picks: Array, offsets: Array) -> pa.Array:
        """Columnar ``finalize(merge_segments(...))`` for the assembler: the retained items
        and weights of every picked sketch read from its bytes once (:func:`_kll_pool`),
        pooled and ranked for all windows at once. A window of one sketch is the definition's
        ``get_quantile`` of it, which is the same rule over the same sample (tested), except
        where ties between NaN or signed zeros could order differently: those ask the sketch."""
        bounds = np.asarray(offsets, dtype=np.int64)
        n = len(bounds) - 1
        distinct, inverse = np.unique(np.asarray(picks, dtype=np.int64), return_inverse=True)
        sizes, items, weights = _kll_pool(column, distinct)
        inverse = inverse.reshape(-1)
        used = sizes[inverse] > 0
        tile, segment = inverse[used], segment_ids(bounds)[used]
        parts = np.bincount(segment, minlength=n)
        values = np.zeros((n, len(self.quantiles)), dtype=np.float64)
        # Windows of one sketch with NaN or -0.0 among its items ask the sketch.
        odd = (parts[segment] == 1) & _unordered_ties(sizes, items)[tile]
        for s, t in zip(segment[odd].tolist(), distinct[tile[odd]].tolist(), strict=True):
            [raw] = binary_values(column, [t])
            sketch = ds.kll_doubles_sketch.deserialize(raw)
            values[s] = [float(sketch.get_quantile(q, True)) for q in self.quantiles]
        pooled = ~odd
        if pooled.any():
            pool = (sizes, items, weights)
            values[:] = self._pooled(pool, tile[pooled], segment[pooled], values, n)
        flat = pa.array(values.reshape(-1), pa.float64())
        width = len(self.quantiles)
        starts = pa.array(np.arange(0, (n + 1) * width, width), pa.int32())
        return pa.ListArray.from_arrays(starts, flat, mask=pa.array(parts == 0))

    def _pooled(
        self,
        pool: tuple[Array, Array, Array],
        tile: Array,
        segment: Array,
        values: Array,
        n: int,
    ) -> Array:
        """``values`` with each window's quantiles of its pooled sample (KLL's inclusive
        rule): the window of item ``i`` is ``segment[i]`` and its sketch ``tile[i]``."""
        sizes, items, weights = pool
        begin = np.cumsum(sizes) - sizes
        lengths = sizes[tile]
        owner = np.repeat(segment, lengths)
        positions = np.repeat(begin[tile], lengths) + _within(lengths)
        item, weight = items[positions], weights[positions]
        order = np.lexsort((item, owner))  # stable: as the pooled argsort of each window
        item, owner = item[order], owner[order]
        cumulative = np.cumsum(weight[order])
        count = np.bincount(owner, minlength=n)
        end = np.cumsum(count)
        start = end - count
        base = np.where(start > 0, cumulative[np.maximum(start - 1, 0)], 0)
        total = cumulative[np.maximum(end - 1, 0)] - base
        out = values.copy()
        windows = np.flatnonzero(count > 0)
        for j, q in enumerate(self.quantiles):
            target = base[windows] + np.ceil(q * total[windows]).astype(np.int64)
            at = np.searchsorted(cumulative, target, side="left")
            at = np.clip(at, start[windows], end[windows] - 1)
            out[windows, j] = item[at]
        return out

    def from_arrow(self, array: pa.Array) -> State:
        # Spark writes an empty sketch (not null) for a tile whose values are all null.
        sketches = [
            None if b is None else ds.kll_doubles_sketch.deserialize(b) for b in _binary_rows(array)
        ]
        parts = [() if s is None or s.is_empty() else (s,) for s in sketches]
        return (_objects(parts, len(parts)),)

    def to_arrow(self, state: State) -> pa.Array:
        out: list[bytes | None] = []
        for parts in state[0]:
            if not parts:
                out.append(None)
                continue
            sketch = ds.kll_doubles_sketch.deserialize(parts[0].serialize())
            for other in parts[1:]:
                sketch.merge(other)
            out.append(sketch.serialize())
        return pa.array(out, pa.binary())

    def spark_build(self, value: str, ts: str) -> str:
        return f"kll_sketch_agg_double(CAST({value} AS DOUBLE), {self.k})"

    def spark_merge(self, ir: str, order: str) -> str:
        return f"kll_merge_agg_double({ir}, {self.k})"


def _kll_pool(column: pa.Array, positions: Array) -> tuple[Array, Array, Array]:
    """:func:`_kll_items` of every image ``column[positions]`` at once: (retained items per
    image, 0 for none; the items, image after image; their weights). Images in the full
    compact or the one-item layout are read with a few numpy gathers; others one by one."""
    body, starts, ends = binary_view(column)
    start, end = starts[positions], ends[positions]
    full = np.zeros(len(start), np.bool_)
    long = np.flatnonzero(end - start >= 20)
    head = body[start[long, None] + np.array([0, 2, 3, 18])]
    full[long] = (head[:, 0] == 5) & (head[:, 1] == 15) & (head[:, 2] & 5 == 0) & (head[:, 3] > 0)
    rows = np.flatnonzero(full)
    levels = body[start[rows] + 18].astype(np.int64)
    level_at = gather(body, np.repeat(start[rows] + 20, levels) + 4 * _within(levels), 4, "<u4")
    first_item = start[rows] + 36 + 4 * levels
    counts = (end[rows] - first_item) // 8
    items = gather(body, np.repeat(first_item, counts) + 8 * _within(counts), 8, "<f8")
    # Level h's items (2**h each) run from its offset to the next level's, the top one's to
    # the end of the image.
    first_level = np.cumsum(levels) - levels
    offset = level_at.astype(np.int64) - np.repeat(level_at[first_level], levels)
    following = np.append(offset[1:], 0)
    following[first_level + levels - 1] = counts
    weights = np.repeat(np.left_shift(1, _within(levels)), following - offset)
    sizes = np.zeros(len(start), np.int64)
    sizes[rows] = counts
    # One-item images (a tile of one event): an 8-byte preamble, then the item.
    single = np.flatnonzero((end - start == 16) & ~full)
    head = body[start[single, None] + np.arange(4)]
    single = single[(head[:, 0] == 2) & (head[:, 2] == 15) & (head[:, 3] & 5 == 4)]
    if len(single):
        sizes[single] = 1
        owner = np.concatenate([np.repeat(rows, counts), single])
        order = np.argsort(owner, kind="stable")
        items = np.concatenate([items, gather(body, start[single] + 8, 8, "<f8")])[order]
        weights = np.concatenate([weights, np.ones(len(single), np.int64)])[order]
    others = np.flatnonzero((sizes == 0) & (end > start))
    if not len(others):
        return sizes, items, weights
    return _with_others(column, positions, others, (sizes, items, weights))


def _with_others(
    column: pa.Array, positions: Array, others: Array, pool: tuple[Array, Array, Array]
) -> tuple[Array, Array, Array]:
    """``pool`` with the images ``positions[others]`` (not in the full compact layout, or
    empty) read through :func:`_kll_items`, each in its place."""
    sizes, items, weights = pool
    owner = np.repeat(np.arange(len(sizes)), sizes)
    raw = binary_values(column, positions[others].tolist())
    parsed = [_kll_items(b) for b in raw]
    more = [p for p in parsed if p is not None]
    if not more:
        return sizes, items, weights
    added = np.fromiter((0 if p is None else len(p[0]) for p in parsed), np.int64, len(parsed))
    sizes = sizes.copy()
    sizes[others] = added
    order = np.argsort(np.concatenate([owner, np.repeat(others, added)]), kind="stable")
    items = np.concatenate([items, *(p[0] for p in more)])[order]
    weights = np.concatenate([weights, *(p[1] for p in more)])[order]
    return sizes, items, weights


def _unordered_ties(sizes: Array, items: Array) -> Array:
    """Per image, whether it holds a NaN or a -0.0: items whose order among equal items
    the library's sort and numpy's may not share."""
    odd = np.isnan(items) | ((items == 0) & np.signbit(items))
    owner = np.repeat(np.arange(len(sizes)), sizes)
    return np.bincount(owner[odd], minlength=len(sizes)) > 0


def _within(lengths: Array) -> Array:
    """0 .. lengths[i] - 1 for every i, concatenated."""
    lengths = np.asarray(lengths, np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out: Array = np.arange(len(starts), dtype=np.int64) - starts
    return out


def _kll_items(image: bytes | None) -> tuple[Array, Array] | None:
    """(retained items, their weights) of a compact KLL doubles image, read from its bytes
    (DataSketches layout: a 20-byte preamble, the level offsets, min and max, the items of
    level 0 upwards, an item of level h weighing 2**h); None for no image or an empty one.
    Other layouts are read through the library."""
    if image is None:
        return None
    flags = image[3]
    if flags & 1:  # empty
        return None
    if image[2] != 15 or image[0] != 5 or flags & 4:  # not the full compact layout
        sketch = ds.kll_doubles_sketch.deserialize(image)
        pairs = list(sketch)
        return (
            np.array([p[0] for p in pairs], dtype=np.float64),
            np.array([p[1] for p in pairs], dtype=np.int64),
        )
    levels = np.frombuffer(image, "<u4", count=image[18], offset=20).astype(np.int64)
    items = np.frombuffer(image, "<f8", offset=20 + 4 * len(levels) + 16)
    bounds = np.append(levels - levels[0], len(items))
    weights = np.repeat(np.left_shift(1, np.arange(len(levels), dtype=np.int64)), np.diff(bounds))
    return items, weights


Counts = tuple[tuple[Any, int], ...]  # (value, count) sorted by count desc, value asc


def _ranked_codes(values: pa.Array) -> tuple[pa.Array, Array]:
    """(the distinct values in ascending order, each value's index among them)."""
    encoded = pc.dictionary_encode(values)
    by_rank = pc.sort_indices(encoded.dictionary)
    rank = np.empty(len(by_rank), dtype=np.int64)
    rank[np.asarray(by_rank, dtype=np.int64)] = np.arange(len(by_rank), dtype=np.int64)
    codes = rank[np.asarray(encoded.indices, dtype=np.int64)]
    return encoded.dictionary.take(by_rank), codes


def _order_by(major: Array, minor: Array, minor_size: int) -> Array:
    """Positions sorting by (``major``, ``minor``), ``0 <= minor < minor_size``: one sort of
    a combined key when it fits in int64, else a two-key sort."""
    if len(major) and int(major.max()) < (1 << 62) // max(minor_size, 1):
        return np.argsort(major * minor_size + minor)
    return np.lexsort((minor, major))


class TopK(Operator):
    """The k most frequent values, from a mergeable Misra-Gries summary.

    An IR holds the number of non-null events and at most ``capacity`` (value, count) pairs.
    Merging adds counts; when more than ``capacity`` values remain, the (capacity+1)-th largest
    count is subtracted from all and the non-positive ones dropped. Each reported count c'
    satisfies c - N/(capacity+1) <= c' <= c for N events in the window. A segment is merged all
    at once, exactly as ``spark_merge`` does. A window with events but no value frequent enough
    to survive the cut gives an empty list; only an empty window gives null.
    """

    name = "top_k"
    summary = "the k most frequent values with counts (Misra-Gries summary)"
    exact = False
    param_specs = (
        Param("k", 10, int_between(1, 1000), "how many values to report"),
        Param(
            "capacity",
            None,
            optional(int_between(1, 100_000)),
            "counters kept per IR (default max(64, 8k))",
        ),
    )

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> tuple[str, str] | None:
        capacity, k = params["capacity"], params["k"]
        if capacity is not None and capacity < k:
            return "capacity", f"top_k capacity ({capacity}) must be at least k ({k})"
        return None

    @property
    def k(self) -> int:
        return int(self.params["k"])

    @property
    def capacity(self) -> int:
        cap = self.params["capacity"]
        return int(cap) if cap is not None else max(64, 8 * self.k)

    @property
    def result_type(self) -> pa.DataType:
        return pa.list_(pa.struct([("value", self.input_type.arrow()), ("count", pa.int64())]))

    @property
    def ir_type(self) -> pa.DataType:
        return pa.struct([("total", pa.int64()), ("items", self.result_type)])

    def empty(self, n: int) -> State:
        return np.zeros(n, dtype=np.int64), _objects([()] * n, n)

    def lift(self, ts: Array, values: pa.Array | None) -> State:
        v, valid = self._values(values, len(ts))
        items = [((x, 1),) if ok else () for x, ok in zip(v.tolist(), valid, strict=True)]
        return valid.astype(np.int64), _objects(items, len(items))

    def combine(self, a: State, b: State) -> State:
        items = (self._reduce([x, y]) for x, y in zip(a[1], b[1], strict=True))
        return a[0] + b[0], _objects(items, len(a[0]))

    def merge_segments(self, state: State, offsets: Array) -> State:
        totals, rows = state
        merged = [self._reduce(rows[lo:hi]) for lo, hi in _segments(offsets)]
        return reduce_segments(np.add, totals, offsets, 0), _objects(merged, len(merged))

    def build_arrow(self, ts: Array, values: pa.Array | None, offsets: Array) -> pa.Array:
        """Columnar ``build``: every segment's value counts at once, then the cut of
        :meth:`_reduce`."""
        if self.input_type not in _COLUMNAR_TYPES:
            return super().build_arrow(ts, values, offsets)
        column = self._arrow_values(values, len(ts))
        bounds = np.asarray(offsets, dtype=np.int64)
        n = len(bounds) - 1
        if n <= 0:
            return self.to_arrow(self.empty(0))
        inside = column.slice(int(bounds[0]), int(bounds[-1] - bounds[0]))
        segments = segment_ids(bounds)
        if inside.null_count:
            valid = np.asarray(inside.is_valid(), dtype=np.bool_)
            segments, inside = segments[valid], inside.filter(pa.array(valid))
        totals = np.bincount(segments, minlength=n).astype(np.int64)
        ones = np.ones(len(segments), dtype=np.int64)
        return self._stored(totals, self._cut(segments, inside, ones, n))

    def merge_arrow(self, column: pa.Array, offsets: Array) -> pa.Array:
        """Columnar ``merge_segments``: every segment's counts summed per value at once,
        then the cut of :meth:`_reduce`."""
        if self.input_type not in _COLUMNAR_TYPES:
            return super().merge_arrow(column, offsets)
        bounds = np.asarray(offsets, dtype=np.int64)
        n = len(bounds) - 1
        if n <= 0:
            return self.to_arrow(self.empty(0))
        rows = column.slice(int(bounds[0]), int(bounds[-1] - bounds[0]))
        fields = struct_fields(rows)
        totals = np.asarray(pc.fill_null(fields["total"], 0).to_numpy(zero_copy_only=False))
        totals = reduce_segments(np.add, totals.astype(np.int64), bounds - bounds[0], 0)
        owner, items = list_items(fields["items"])
        pairs = struct_fields(items)
        counts = pc.fill_null(pairs["count"], 0).to_numpy(zero_copy_only=False)
        value = pairs["value"].cast(self.input_type.arrow())
        segments = segment_ids(bounds)[owner]
        return self._stored(totals, self._cut(segments, value, counts.astype(np.int64), n))

    @property
    def columnar_windows(self) -> bool:  # type: ignore[override]
        return self.input_type in _COLUMNAR_TYPES

    def window_values(self, column: pa.Array, picks: Array, offsets: Array) -> pa.Array:
        """Columnar ``finalize(merge_segments(...))`` for the assembler: every window's
        summaries merged at once (:meth:`_cut`), then its k first values."""
        bounds = np.asarray(offsets, dtype=np.int64)
        n = len(bounds) - 1
        merged = self.merge_arrow(column.take(pa.array(picks, pa.int64())), bounds)
        fields = struct_fields(merged)
        totals = np.asarray(pc.fill_null(fields["total"], 0), dtype=np.int64)
        owner, items = list_items(fields["items"])
        rank, _ = rank_in_segments(owner, n)
        top = pa.array(np.flatnonzero(rank < self.k), pa.int64())
        per_segment = np.bincount(owner[rank < self.k], minlength=n)
        lists = lists_of(items.take(top), per_segment, null_when_empty=False)
        mask = pa.array(totals == 0)
        return pa.ListArray.from_arrays(lists.offsets, lists.values, mask=mask).cast(
            self.result_type
        )

    def merge_windows(self, column: pa.Array, picks: Array, offsets: Sequence[int]) -> list[Any]:
        """The per-key ``finalize(merge_segments(...))``: the definition's own merge
        (:meth:`_reduce`) over the picked summaries, read as ``from_arrow`` reads them but
        only for the picked rows, without the Arrow round trip of the state and the result."""
        if not len(picks):  # only empty windows (common: short windows of a quiet key)
            return [None] * (len(offsets) - 1)
        fields = struct_fields(column)
        totals = picked_values(fields["total"], picks, 0)
        rows = self._picked_summaries(fields["items"], np.asarray(picks, dtype=np.int64))
        out: list[Any] = []
        for a, b in pairwise(offsets):
            counts = self._reduce(rows[a:b])
            out.append(self._items(counts[: self.k]) if sum(totals[a:b]) > 0 else None)
        return out

    def _picked_summaries(self, items: pa.Array, picks: Array) -> list[Counts]:
        """``list_of_pairs`` of ``items[picks]``: the same Python values, read in place."""
        pairs = struct_fields(items.values)
        read = value_reader(pairs["value"], self.input_type)
        if read is None or pairs["count"].null_count:  # values as from_arrow fills them
            return list(list_of_pairs(items.take(pa.array(picks, pa.int64())), *self._pair))
        counts, _ = primitive_view(pairs["count"])
        first, end = list_bounds(items)
        out: list[Counts] = []
        for p in picks.tolist():
            lo, hi = first[p], end[p]
            out.append(tuple(zip(read(lo, hi), counts[lo:hi].tolist(), strict=True)))
        return out

    @property
    def _pair(self) -> tuple[tuple[str, str], tuple[DataType, DataType]]:
        return ("value", "count"), (self.input_type, DataType.BIGINT)

    def _cut(self, segments: Array, values: pa.Array, counts: Array, n: int) -> pa.Array:
        """The ``n`` segments' summaries (as ``to_arrow`` writes them) from (segment, value,
        count) triples: :meth:`_reduce` for all segments at once, on integer codes (a value's
        code is its rank among the distinct values, so code order is value order)."""
        distinct, codes = _ranked_codes(values)
        # Sum the counts of each (segment, value) ...
        order = _order_by(segments, codes, len(distinct))
        segment, code, count = segments[order], codes[order], counts[order]
        first = np.ones(len(order), dtype=np.bool_)
        first[1:] = (segment[1:] != segment[:-1]) | (code[1:] != code[:-1])
        starts = np.flatnonzero(first)
        segment, code = segment[starts], code[starts]
        count = np.add.reduceat(count, starts) if len(starts) else count[:0]
        # ... rank them by (count descending, value) within their segment, and cut.
        most = int(count.max(initial=0))
        if len(distinct) * (most + 1) < 1 << 62:  # (count descending, value) as one key
            width = len(distinct) * (most + 1)
            order = _order_by(segment, (most - count) * len(distinct) + code, width)
        else:
            order = np.lexsort((code, -count, segment))
        segment, code, count = segment[order], code[order], count[order]
        rank, sizes = rank_in_segments(segment, n)
        over = np.flatnonzero(sizes > self.capacity)
        threshold = np.zeros(n, dtype=np.int64)
        threshold[over] = count[np.cumsum(sizes)[over] - sizes[over] + self.capacity]
        keep = (rank < self.capacity) & (count > threshold[segment])
        items = pa.StructArray.from_arrays(
            [
                distinct.take(pa.array(code[keep], pa.int64())),
                pa.array(count[keep] - threshold[segment[keep]], pa.int64()),
            ],
            names=["value", "count"],
        )
        per_segment = np.bincount(segment[keep], minlength=n)
        return lists_of(items, per_segment, null_when_empty=False).cast(self.result_type)

    def _stored(self, totals: Array, items: pa.Array) -> pa.Array:
        return pa.StructArray.from_arrays(
            [pa.array(totals, pa.int64()), items],
            names=["total", "items"],
            mask=pa.array(totals == 0),
        )

    def _reduce(self, summaries: Iterable[Counts]) -> Counts:
        counts: Counter[Any] = Counter()
        for summary in summaries:
            for value, count in summary:
                counts[value] += count
        ranked = sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))
        if len(ranked) <= self.capacity:
            return tuple(ranked)
        threshold = ranked[self.capacity][1]
        return tuple((v, c - threshold) for v, c in ranked[: self.capacity] if c > threshold)

    def finalize(self, state: State) -> pa.Array:
        totals, rows = state
        out = [
            self._items(counts[: self.k]) if total > 0 else None
            for total, counts in zip(totals.tolist(), rows, strict=True)
        ]
        return pa.array(out, self.result_type)

    def _items(self, counts: Counts) -> list[dict[str, Any]]:
        return [{"value": python_value(v, self.input_type), "count": c} for v, c in counts]

    def from_arrow(self, array: pa.Array) -> State:
        fields = struct_fields(array)
        totals = np.asarray(pc.fill_null(fields["total"], 0).to_numpy(zero_copy_only=False))
        rows = list_of_pairs(fields["items"], *self._pair)
        return totals.astype(np.int64), _objects(rows, len(rows))

    def to_arrow(self, state: State) -> pa.Array:
        totals, rows = state
        items = pa.array([self._items(counts) for counts in rows], self.result_type)
        return self._stored(totals, items)

    def spark_build(self, value: str, ts: str) -> str:
        # Exact counts per value in the tile, then the Misra-Gries cut.
        counted = (
            f"transform(array_distinct(collect_list({value})), "
            f"v -> struct(v AS value, CAST(size(filter(collect_list({value}), "
            f"y -> y = v)) AS BIGINT) AS count))"
        )
        built = f"named_struct('total', count({value}), 'items', {self._spark_cut(counted)})"
        return f"CASE WHEN count({value}) = 0 THEN {self._spark_null} ELSE {built} END"

    def spark_merge(self, ir: str, order: str) -> str:
        flat = f"flatten(collect_list({ir}.items))"
        counted = (
            f"transform(array_distinct(transform({flat}, e -> e.value)), "
            f"v -> struct(v AS value, aggregate(filter({flat}, e -> e.value = v), 0L, "
            f"(acc, e) -> acc + e.count) AS count))"
        )
        merged = f"named_struct('total', sum({ir}.total), 'items', {self._spark_cut(counted)})"
        empty = f"coalesce(sum({ir}.total), 0) = 0"
        return f"CASE WHEN {empty} THEN {self._spark_null} ELSE {merged} END"

    @property
    def _spark_null(self) -> str:
        """The IR of a tile without a value: null, as ``to_arrow`` masks a zero total. Typed
        with nullable fields, so the CASE's fields are nullable (pyspark's Arrow transfer
        refuses nulls under fields Spark typed NOT NULL)."""
        pair = f"struct<value:{self.input_type.value},count:bigint>"
        return f"CAST(NULL AS struct<total:bigint,items:array<{pair}>>)"

    def _spark_cut(self, counted: str) -> str:
        cap = self.capacity
        ranked = (
            f"array_sort({counted}, (a, b) -> CASE WHEN a.count > b.count THEN -1 "
            f"WHEN a.count < b.count THEN 1 WHEN a.value < b.value THEN -1 "
            f"WHEN a.value > b.value THEN 1 ELSE 0 END)"
        )
        cut = (
            f"s -> CASE WHEN size(s) <= {cap} THEN s ELSE transform(filter(slice(s, 1, {cap}), "
            f"e -> e.count > s[{cap}].count), e -> struct(e.value AS value, "
            f"e.count - s[{cap}].count AS count)) END"
        )
        return f"element_at(transform(array({ranked}), {cut}), 1)"
