"""Per-category maps: any operator, aggregated separately for each value of a bucket column.

``Bucketed(inner, max_buckets)`` turns an operator over events into one over events that also
carry a bucket value (a category, a device...): its IR is a map {bucket value: inner IR} and
its result a map {bucket value: inner result}, for example a user's views per category over
7 days. Bucket values are text (the key columns' spelling: integers in decimal, booleans
``true``/``false``); events whose bucket value is null are left out of the map.

The bound: a map keeps the ``max_buckets`` smallest bucket values (text order) and drops the
others. Keeping the n smallest keys commutes with merging (the n smallest keys of a union are
the n smallest of the parts' n smallest), so tiles, rollups and windows agree exactly
whatever the grouping, and a kept bucket's IR is always complete.

Every bucket present in an IR has at least one event, so the maps of all bucketed features
of one tile share one key set (the Spark tile job relies on it to roll up several features
from one ``explode``).

The input is a struct array: ``bucket`` (text) and, when the inner operator reads one,
``value``. A state is one object column: per row a pair (sorted bucket values, the inner
state of their IRs), so ``take`` and ``concat`` work on it as on any state. Merges flatten
the rows' entries, sort them by (segment, bucket) keeping their order (time order) within a
bucket, and run the inner operator's own ``merge_segments``: each bucket's IRs are merged
exactly as the inner operator merges them without buckets, bit for bit.

Spark: ``spark_build`` / ``spark_merge`` are the inner operator's, applied per bucket value;
the tile job groups by the bucket as well and collects the per-bucket IRs into the map
(``engine.spark.tiles``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from robusta.errors import OperatorError
from robusta.ops.base import Operator, State, concat, take
from robusta.ops.values import Array, segment_ids
from robusta.spec.model import DEFAULT_MAX_BUCKETS, MAX_BUCKETS_LIMIT

BUCKET_FIELD = "bucket"
VALUE_FIELD = "value"

_Entries = tuple[Array, State]  # one row: sorted bucket values (object array), their IRs


class Bucketed(Operator):
    """``inner`` per bucket value; see the module docstring."""

    name: ClassVar[str] = "bucketed"
    summary: ClassVar[str] = "a map {bucket value: the inner operator's value}"
    needs_input: ClassVar[bool] = True

    def __init__(self, inner: Operator, max_buckets: int = DEFAULT_MAX_BUCKETS) -> None:
        if not 1 <= max_buckets <= MAX_BUCKETS_LIMIT:
            raise OperatorError(f"max_buckets must be 1 .. {MAX_BUCKETS_LIMIT}, got {max_buckets}")
        # No super().__init__: the inner operator already checked its params and input type.
        self.inner = inner
        self.max_buckets = max_buckets
        self.input_type = inner.input_type
        self.params = inner.params

    def __repr__(self) -> str:
        return f"Bucketed({self.inner.name}, max_buckets={self.max_buckets})"

    @property
    def label(self) -> str:
        """How listings show it: the inner operator's name (they show the column)."""
        return self.inner.name

    # ---- types --------------------------------------------------------------------------
    @property
    def ir_type(self) -> pa.DataType:
        return pa.map_(pa.string(), self.inner.ir_type)

    @property
    def result_type(self) -> pa.DataType:
        return pa.map_(pa.string(), self.inner.result_type)

    def input_struct(self, buckets: pa.Array, values: pa.Array | None) -> pa.StructArray:
        """The input column engines pass: bucket values (text) and the inner input."""
        fields: dict[str, pa.Array] = {BUCKET_FIELD: buckets.cast(pa.string())}
        if self.inner.needs_input:
            if values is None:
                raise OperatorError(f"{self.inner.name} needs an input column")
            fields[VALUE_FIELD] = values
        return pa.StructArray.from_arrays(list(fields.values()), names=list(fields))

    # ---- states ---------------------------------------------------------------------------
    def empty(self, n: int) -> State:
        rows = np.empty(n, dtype=object)
        for i in range(n):
            rows[i] = (_NO_BUCKETS, self.inner.empty(0))
        return (rows,)

    def lift(self, ts: Array, values: pa.Array | None) -> State:
        bounds = np.arange(len(ts) + 1, dtype=np.int64)
        return self.build(ts, values, bounds)

    def build(self, ts: Array, values: pa.Array | None, offsets: Array) -> State:
        """IRs of contiguous groups of events: each group's events split by bucket value,
        each bucket's built by the inner operator, in the events' order."""
        bounds = np.asarray(offsets, dtype=np.int64)
        struct = self._checked(values, len(ts))
        first, last = int(bounds[0]), int(bounds[-1])
        segments = segment_ids(bounds)
        stored = struct.field(BUCKET_FIELD).slice(first, last - first)
        buckets = _text(stored)
        inner_values = None
        if self.inner.needs_input:
            inner_values = struct.field(VALUE_FIELD).slice(first, last - first)
        kept = np.arange(len(stored), dtype=np.int64)
        if stored.null_count:  # null bucket values are left out of the map
            kept = kept[np.asarray(stored.is_valid(), dtype=np.bool_)]
        order, runs, run_segment, run_bucket = _runs(segments[kept], buckets[kept])
        picked = kept[order]
        chosen = None if inner_values is None else inner_values.take(pa.array(picked, pa.int64()))
        irs = self.inner.build(np.asarray(ts)[first:last][picked], chosen, runs)
        return (self._rows(len(bounds) - 1, run_segment, run_bucket, irs),)

    def combine(self, a: State, b: State) -> State:
        rows = np.empty(2 * len(a[0]), dtype=object)
        rows[0::2], rows[1::2] = a[0], b[0]
        return self.merge_segments((rows,), np.arange(0, len(rows) + 1, 2, dtype=np.int64))

    def merge_segments(self, state: State, offsets: Array) -> State:
        bounds = np.asarray(offsets, dtype=np.int64)
        first, last = int(bounds[0]), int(bounds[-1])
        counts, buckets, irs = self._flat(state[0][first:last])
        segments = np.repeat(segment_ids(bounds - first), counts)
        order, runs, run_segment, run_bucket = _runs(segments, buckets)
        merged = self.inner.merge_segments(take(irs, order), runs)
        return (self._rows(len(bounds) - 1, run_segment, run_bucket, merged),)

    def finalize(self, state: State) -> pa.Array:
        counts, buckets, irs = self._flat(state[0])
        return _map(counts, buckets, self.inner.finalize(irs), self.result_type)

    def to_arrow(self, state: State) -> pa.Array:
        counts, buckets, irs = self._flat(state[0])
        return _map(counts, buckets, self.inner.to_arrow(irs), self.ir_type)

    def from_arrow(self, array: pa.Array) -> State:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        offsets = np.asarray(array.offsets, dtype=np.int64)
        counts = np.diff(offsets)
        if array.null_count:  # a tile written before the feature existed
            counts = np.where(np.asarray(array.is_valid(), dtype=np.bool_), counts, 0)
        starts = np.repeat(offsets[:-1] - (np.cumsum(counts) - counts), counts)
        positions = pa.array(starts + np.arange(int(counts.sum()), dtype=np.int64), pa.int64())
        buckets = _text(array.keys.take(positions))
        rows = np.repeat(np.arange(len(array), dtype=np.int64), counts)
        order, runs, run_row, run_bucket = _runs(rows, buckets)
        if len(runs) - 1 != len(order):
            raise OperatorError("a stored map holds a bucket value twice")
        irs = take(self.inner.from_arrow(array.items.take(positions)), order)
        return (self._rows(len(array), run_row, run_bucket, irs),)

    def merge_windows(self, column: pa.Array, picks: Array, offsets: Sequence[int]) -> list[Any]:
        values: list[Any] = super().merge_windows(column, picks, offsets)
        return [None if v is None else dict(v) for v in values]

    # ---- spark hooks: the inner operator's, per bucket value ------------------------------
    def spark_build(self, value: str, ts: str) -> str:
        return self.inner.spark_build(value, ts)

    def spark_merge(self, ir: str, order: str) -> str:
        return self.inner.spark_merge(ir, order)

    # ---- helpers ----------------------------------------------------------------------------
    def _flat(self, rows: Array) -> tuple[Array, Array, State]:
        """Every row's entries in one run: entries per row, bucket values, inner IRs."""
        counts = np.fromiter((len(r[0]) for r in rows), dtype=np.int64, count=len(rows))
        if not counts.any():
            return counts, _NO_BUCKETS, self.inner.empty(0)
        buckets = np.concatenate([r[0] for r in rows])
        return counts, buckets, concat([r[1] for r in rows if len(r[0])])

    def _rows(self, n: int, run_row: Array, run_bucket: Array, irs: State) -> Array:
        """``n`` rows from runs sorted by (row, bucket): each row keeps its
        ``max_buckets`` smallest bucket values."""
        kept = _smallest(run_row, self.max_buckets)
        run_row, run_bucket, irs = run_row[kept], run_bucket[kept], take(irs, kept)
        ends = np.searchsorted(run_row, np.arange(n + 1, dtype=np.int64))
        rows = np.empty(n, dtype=object)
        empty = self.inner.empty(0)
        for i in range(n):
            a, b = int(ends[i]), int(ends[i + 1])
            rows[i] = (
                (run_bucket[a:b], tuple(c[a:b] for c in irs))
                if b > a
                else (
                    _NO_BUCKETS,
                    empty,
                )
            )
        return rows


_NO_BUCKETS: Array = np.empty(0, dtype=object)


def _text(values: pa.Array) -> Array:
    """Bucket values as a numpy object array of str (None for null)."""
    return np.asarray(values.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)


def _runs(rows: Array, buckets: Array) -> tuple[Array, Array, Array, Array]:
    """Entries sorted by (row, bucket value), stable: their order, the offsets of each
    (row, bucket) run, and each run's row and bucket value."""
    if len(rows) == 0:
        none = np.empty(0, dtype=np.int64)
        return none, np.zeros(1, dtype=np.int64), none, _NO_BUCKETS
    distinct, codes = np.unique(buckets, return_inverse=True)
    codes = codes.reshape(-1)
    order = np.lexsort((codes, rows))  # stable: a run keeps its entries' order
    rows, codes = rows[order], codes[order]
    starts = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (codes[1:] != codes[:-1])])
    runs = np.append(starts, len(order)).astype(np.int64)
    return order, runs, rows[starts], distinct[codes[starts]]


def _smallest(run_row: Array, limit: int) -> Array:
    """Positions of the runs within the first ``limit`` of their row (runs sorted)."""
    if len(run_row) == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, run_row[1:] != run_row[:-1]])
    first = np.repeat(starts, np.diff(np.append(starts, len(run_row))))
    return np.flatnonzero(np.arange(len(run_row)) - first < limit)


def _map(counts: Array, buckets: Array, items: pa.Array, dtype: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    keys = pa.array(buckets.tolist(), pa.string())
    return pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), keys, items, type=dtype)
