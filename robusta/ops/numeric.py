"""count, sum, avg, min, max, variance and stddev."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.errors import OperatorError
from robusta.ops.base import (
    Operator,
    State,
    checked_int_sums,
    picked_validity,
    picked_values,
    reduce_segments,
    scalar_float_sum,
    scalar_int_sum,
    sequential_sums,
)
from robusta.ops.values import (
    Array,
    from_numpy,
    numpy_dtype,
    placeholders,
    primitive_view,
    struct_fields,
    to_numpy,
)
from robusta.spec.datatypes import DataType

# Ordered fold of IRs in Spark: collect (order, ir) pairs, sort by time, fold left. Used where
# float arithmetic makes the merge order visible, so Spark rollups equal Python merges bit for bit.
_ORDERED = "transform(array_sort(collect_list(struct({order} AS o, {ir} AS ir))), x -> x.ir)"


def ordered_fold(ir: str, order: str, init: str, step: str) -> str:
    """Spark SQL folding IRs in time order; ``step`` combines ``acc`` (earlier) and ``x``."""
    return f"aggregate({_ORDERED.format(ir=ir, order=order)}, {init}, (acc, x) -> {step})"


def _nullable_sum(av: Array, a: Array, bv: Array, b: Array) -> tuple[Array, Array]:
    both = av & bv
    total = a + b
    if total.dtype.kind == "i" and np.any(both & ((a ^ total) & (b ^ total) < 0)):
        raise OperatorError("an integer sum overflows int64; CAST the input to DOUBLE in the query")
    value = np.where(both, total, np.where(av, a, b))
    return av | bv, value


def _chan_fold(
    counts: Sequence[int], means: Sequence[float], m2s: Sequence[float]
) -> tuple[int, float, float]:
    """``Variance.combine`` folded left over one window's IRs with Python scalars: the same
    float operations in the same order (int64 operands of a division become float64 first,
    as numpy's true division does), so the result is the vectorized fold's, bit for bit."""
    n, mean, m2 = 0, 0.0, 0.0
    for i, (nb, mb, m2b) in enumerate(zip(counts, means, m2s, strict=True)):
        if i == 0 or (n == 0 and nb != 0):  # the first IR; an empty acc takes b
            n, mean, m2 = nb, mb, m2b
        elif nb != 0:
            total = n + nb
            delta = mb - mean
            mean, m2 = (
                mean + delta * (float(nb) / float(total)),
                m2 + m2b + delta * delta * (float(n * nb) / float(total)),
            )
            n = total
    return n, mean, m2


def _require_numeric(name: str, dtype: DataType) -> str | None:
    if dtype.is_known and not dtype.is_numeric:
        return f"{name} needs a numeric input, got {dtype}; CAST it in the query"
    return None


class Count(Operator):
    name = "count"
    summary = "number of events (null inputs included)"
    needs_input = False

    @classmethod
    def check_input_type(cls, dtype: DataType) -> str | None:
        return None

    @property
    def ir_type(self) -> pa.DataType:
        return pa.int64()

    @property
    def result_type(self) -> pa.DataType:
        return pa.int64()

    def empty(self, n: int) -> State:
        return (np.zeros(n, dtype=np.int64),)

    def lift(self, ts: Array, values: pa.Array | None) -> State:
        return (np.ones(len(ts), dtype=np.int64),)

    def combine(self, a: State, b: State) -> State:
        return (a[0] + b[0],)

    def merge_segments(self, state: State, offsets: Array) -> State:
        return (reduce_segments(np.add, state[0], offsets, 0),)

    def merge_windows(self, column: pa.Array, picks: Array, offsets: Sequence[int]) -> list[Any]:
        counts = picked_values(column, picks, 0)
        return [sum(counts[a:b]) for a, b in pairwise(offsets)]

    def finalize(self, state: State) -> pa.Array:
        return pa.array(state[0], pa.int64())

    def from_arrow(self, array: pa.Array) -> State:
        return (np.asarray(pc.fill_null(array, 0).to_numpy(zero_copy_only=False), np.int64),)

    def to_arrow(self, state: State) -> pa.Array:
        return pa.array(state[0], pa.int64())

    def spark_build(self, value: str, ts: str) -> str:
        return "count(1)"

    def spark_merge(self, ir: str, order: str) -> str:
        return f"coalesce(sum({ir}), 0L)"


class Sum(Operator):
    name = "sum"
    summary = "sum of values; int64 for integer input, float64 otherwise"

    @classmethod
    def check_input_type(cls, dtype: DataType) -> str | None:
        return _require_numeric(cls.name, dtype)

    @property
    def value_type(self) -> DataType:
        return DataType.BIGINT if self.input_type.is_integer else DataType.DOUBLE

    @property
    def ir_type(self) -> pa.DataType:
        return self.value_type.arrow()

    @property
    def result_type(self) -> pa.DataType:
        return self.value_type.arrow()

    def empty(self, n: int) -> State:
        return (np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=numpy_dtype(self.value_type)))

    def lift(self, ts: Array, values: pa.Array | None) -> State:
        v, valid = self._values(values, len(ts))
        v = np.where(valid, v, 0).astype(numpy_dtype(self.value_type))
        return valid, v

    def combine(self, a: State, b: State) -> State:
        return _nullable_sum(a[0], a[1], b[0], b[1])

    def merge_segments(self, state: State, offsets: Array) -> State:
        if self.value_type is not DataType.BIGINT:
            return sequential_sums(state[0], state[1], offsets)  # floats: in time order
        valid, values = state
        return (
            reduce_segments(np.logical_or, valid, offsets, False),
            checked_int_sums(np.where(valid, values, 0), offsets),
        )

    def merge_windows(self, column: pa.Array, picks: Array, offsets: Sequence[int]) -> list[Any]:
        values = picked_values(column, picks, 0)
        present = picked_validity(column, picks)
        if self.value_type is not DataType.BIGINT:
            return [scalar_float_sum(values[a:b], present[a:b]) for a, b in pairwise(offsets)]
        out: list[Any] = []
        for a, b in pairwise(offsets):
            kept = [v for v, ok in zip(values[a:b], present[a:b], strict=True) if ok]
            out.append(scalar_int_sum(kept) if kept else None)
        return out

    def finalize(self, state: State) -> pa.Array:
        return from_numpy(state[1], state[0], self.value_type)

    def from_arrow(self, array: pa.Array) -> State:
        v, valid = to_numpy(array, self.value_type)
        return valid, v

    def to_arrow(self, state: State) -> pa.Array:
        return self.finalize(state)

    def spark_build(self, value: str, ts: str) -> str:
        return f"sum(CAST({value} AS {self._spark_type}))"

    def spark_merge(self, ir: str, order: str) -> str:
        if self.value_type is DataType.BIGINT:
            return f"sum({ir})"
        step = "CASE WHEN acc IS NULL THEN x WHEN x IS NULL THEN acc ELSE acc + x END"
        return ordered_fold(ir, order, "CAST(NULL AS DOUBLE)", step)

    @property
    def _spark_type(self) -> str:
        return "BIGINT" if self.value_type is DataType.BIGINT else "DOUBLE"


class Avg(Sum):
    name = "avg"
    summary = "mean of values"

    @property
    def ir_type(self) -> pa.DataType:
        return pa.struct([("sum", self.value_type.arrow()), ("count", pa.int64())])

    @property
    def result_type(self) -> pa.DataType:
        return pa.float64()

    def empty(self, n: int) -> State:
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=numpy_dtype(self.value_type))

    def lift(self, ts: Array, values: pa.Array | None) -> State:
        valid, v = super().lift(ts, values)
        return valid.astype(np.int64), v

    def combine(self, a: State, b: State) -> State:
        _, total = _nullable_sum(a[0] > 0, a[1], b[0] > 0, b[1])
        return a[0] + b[0], total

    def merge_segments(self, state: State, offsets: Array) -> State:
        count, total = state
        if self.value_type is not DataType.BIGINT:
            _, sums = sequential_sums(count > 0, total, offsets)  # floats: in time order
            return reduce_segments(np.add, count, offsets, 0), sums
        return (
            reduce_segments(np.add, count, offsets, 0),
            checked_int_sums(total, offsets),
        )

    def merge_windows(self, column: pa.Array, picks: Array, offsets: Sequence[int]) -> list[Any]:
        fields = struct_fields(column)
        counts = picked_values(fields["count"], picks, 0)
        totals = picked_values(fields["sum"], picks, 0)
        out: list[Any] = []
        for a, b in pairwise(offsets):
            n = sum(counts[a:b])
            if n == 0:
                out.append(None)
                continue
            if self.value_type is DataType.BIGINT:
                total: float | None = float(scalar_int_sum(totals[a:b]))
            else:  # the fold skips IRs without events, as merge_segments does
                total = scalar_float_sum(totals[a:b], [c > 0 for c in counts[a:b]])
            out.append(None if total is None else total / float(n))
        return out

    def finalize(self, state: State) -> pa.Array:
        count, total = state
        has = count > 0
        mean = np.divide(total.astype(np.float64), count, out=np.zeros(len(count)), where=has)
        return from_numpy(mean, has, DataType.DOUBLE)

    def from_arrow(self, array: pa.Array) -> State:
        fields = struct_fields(array)
        count = np.asarray(pc.fill_null(fields["count"], 0).to_numpy(zero_copy_only=False))
        total, _ = to_numpy(fields["sum"], self.value_type)
        return count.astype(np.int64), total

    def to_arrow(self, state: State) -> pa.Array:
        count, total = state
        has = count > 0
        return pa.StructArray.from_arrays(
            [from_numpy(total, has, self.value_type), pa.array(count, pa.int64())],
            names=["sum", "count"],
        )

    def spark_build(self, value: str, ts: str) -> str:
        return (
            f"named_struct('sum', sum(CAST({value} AS {self._spark_type})), "
            f"'count', count({value}))"
        )

    def spark_merge(self, ir: str, order: str) -> str:
        if self.value_type is DataType.BIGINT:
            return f"named_struct('sum', sum({ir}.sum), 'count', coalesce(sum({ir}.count), 0L))"
        step = (
            "named_struct('sum', CASE WHEN acc.sum IS NULL THEN x.sum WHEN x.sum IS NULL "
            "THEN acc.sum ELSE acc.sum + x.sum END, 'count', acc.count + x.count)"
        )
        return ordered_fold(
            ir, order, "named_struct('sum', CAST(NULL AS DOUBLE), 'count', 0L)", step
        )


class _Extreme(Operator):
    """min / max: keeps the extreme value; NaN counts as the largest number (as in Spark)."""

    keep_larger: bool = True

    @property
    def ir_type(self) -> pa.DataType:
        return self.input_type.arrow()

    @property
    def result_type(self) -> pa.DataType:
        return self.input_type.arrow()

    def empty(self, n: int) -> State:
        values = placeholders(self.input_type, n)
        return np.zeros(n, dtype=np.bool_), values

    def lift(self, ts: Array, values: pa.Array | None) -> State:
        v, valid = self._values(values, len(ts))
        return valid, v

    def combine(self, a: State, b: State) -> State:
        av, a_val = a
        bv, b_val = b
        keep_a = self._a_wins(a_val, b_val)
        value = np.where(av & bv, np.where(keep_a, a_val, b_val), np.where(av, a_val, b_val))
        return av | bv, value

    def merge_segments(self, state: State, offsets: Array) -> State:
        valid, values = state
        if values.dtype.kind not in "iuf":
            return super().merge_segments(state, offsets)
        ufunc, identity = self._reduction(values.dtype)
        masked = np.where(valid, values, identity)
        return (
            reduce_segments(np.logical_or, valid, offsets, False),
            reduce_segments(ufunc, masked, offsets, identity),
        )

    def merge_windows(self, column: pa.Array, picks: Array, offsets: Sequence[int]) -> list[Any]:
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            return super().merge_windows(column, picks, offsets)
        # The definition's own reduction (merge_segments: nulls as the identity, one
        # reduceat) over the picked values, without the Arrow decode and finalize around it.
        values, valid = primitive_view(column)
        ufunc, identity = self._reduction(values.dtype)
        picked = values[picks]
        if valid is not None:
            picked = np.where(valid[picks], picked, identity)
        windows = list(pairwise(offsets))
        starts = [a for a, b in windows if b > a]
        reduced = iter(ufunc.reduceat(picked, starts).tolist() if starts else [])
        if valid is None:
            return [next(reduced) if b > a else None for a, b in windows]
        present = valid[picks].tolist()
        out = []
        for a, b in windows:
            value = next(reduced) if b > a else None
            out.append(value if any(present[a:b]) else None)
        return out

    def _reduction(self, dtype: np.dtype[Any]) -> tuple[np.ufunc, float | int]:
        """The ufunc and identity ``merge_segments`` reduces with: NaN is the largest value
        as in Spark, so maximum keeps it and fmin skips it unless every value is NaN."""
        if dtype.kind == "f":
            return (np.maximum, -np.inf) if self.keep_larger else (np.fmin, np.inf)
        info = np.iinfo(dtype)
        return (np.maximum, int(info.min)) if self.keep_larger else (np.minimum, int(info.max))

    def _a_wins(self, a: Array, b: Array) -> Array:
        floating = a.dtype.kind == "f"
        if self.keep_larger:
            wins = a >= b
            return (np.isnan(a) | wins) if floating else wins
        wins = a <= b
        return (np.isnan(b) | wins) if floating else wins

    def finalize(self, state: State) -> pa.Array:
        return from_numpy(state[1], state[0], self.input_type)

    def from_arrow(self, array: pa.Array) -> State:
        v, valid = to_numpy(array, self.input_type)
        return valid, v

    def to_arrow(self, state: State) -> pa.Array:
        return self.finalize(state)

    def spark_build(self, value: str, ts: str) -> str:
        return f"{self.name}({value})"

    def spark_merge(self, ir: str, order: str) -> str:
        return f"{self.name}({ir})"


class Max(_Extreme):
    name = "max"
    summary = "largest value"
    keep_larger = True


class Min(_Extreme):
    name = "min"
    summary = "smallest value"
    keep_larger = False


class Variance(Operator):
    name = "variance"
    summary = "sample variance (n - 1); null when fewer than 2 values"

    @classmethod
    def check_input_type(cls, dtype: DataType) -> str | None:
        return _require_numeric(cls.name, dtype)

    @property
    def ir_type(self) -> pa.DataType:
        return pa.struct([("count", pa.int64()), ("mean", pa.float64()), ("m2", pa.float64())])

    @property
    def result_type(self) -> pa.DataType:
        return pa.float64()

    def empty(self, n: int) -> State:
        return np.zeros(n, dtype=np.int64), np.zeros(n), np.zeros(n)

    def lift(self, ts: Array, values: pa.Array | None) -> State:
        v, valid = self._values(values, len(ts))
        mean = np.where(valid, v.astype(np.float64), 0.0)
        return valid.astype(np.int64), mean, np.zeros(len(ts))

    def combine(self, a: State, b: State) -> State:
        # Chan et al.'s pairwise update, with the same operation order as spark_merge.
        na, ma, m2a = a
        nb, mb, m2b = b
        n = na + nb
        safe_n = np.where(n > 0, n, 1)
        delta = mb - ma
        mean = ma + delta * (nb / safe_n)
        m2 = m2a + m2b + delta * delta * ((na * nb) / safe_n)
        only_a, only_b = nb == 0, na == 0
        mean = np.where(only_a, ma, np.where(only_b, mb, mean))
        m2 = np.where(only_a, m2a, np.where(only_b, m2b, m2))
        return n, mean, m2

    def merge_windows(self, column: pa.Array, picks: Array, offsets: Sequence[int]) -> list[Any]:
        if not len(picks):  # only empty windows (common: short windows of a quiet key)
            return [None] * (len(offsets) - 1)
        fields = struct_fields(column)
        counts = picked_values(fields["count"], picks, 0)
        means = picked_values(fields["mean"], picks, 0.0)
        m2s = picked_values(fields["m2"], picks, 0.0)
        out: list[Any] = []
        for a, b in pairwise(offsets):
            n, _, m2 = _chan_fold(counts[a:b], means[a:b], m2s[a:b])
            out.append(self._scalar_finish(m2 / (n - 1)) if n >= 2 else None)
        return out

    def _scalar_finish(self, variance: float) -> float:
        return variance

    def finalize(self, state: State) -> pa.Array:
        n, _, m2 = state
        ok = n >= 2
        return from_numpy(
            self._finish(np.divide(m2, n - 1, out=np.zeros(len(n)), where=ok)), ok, DataType.DOUBLE
        )

    def _finish(self, variance: Array) -> Array:
        return variance

    def from_arrow(self, array: pa.Array) -> State:
        fields = struct_fields(array)
        cols = [
            pc.fill_null(fields[f], 0).to_numpy(zero_copy_only=False)
            for f in ("count", "mean", "m2")
        ]
        return (
            np.asarray(cols[0], np.int64),
            np.asarray(cols[1], np.float64),
            np.asarray(cols[2], np.float64),
        )

    def to_arrow(self, state: State) -> pa.Array:
        n, mean, m2 = state
        return pa.StructArray.from_arrays(
            [pa.array(n, pa.int64()), pa.array(mean, pa.float64()), pa.array(m2, pa.float64())],
            names=["count", "mean", "m2"],
        )

    def spark_build(self, value: str, ts: str) -> str:
        v = f"CAST({value} AS DOUBLE)"
        return (
            f"named_struct('count', count({v}), 'mean', coalesce(avg({v}), 0D), "
            f"'m2', coalesce(var_pop({v}) * count({v}), 0D))"
        )

    def spark_merge(self, ir: str, order: str) -> str:
        step = (
            "CASE WHEN x.count = 0 THEN acc WHEN acc.count = 0 THEN x ELSE named_struct("
            "'count', acc.count + x.count, "
            "'mean', acc.mean + (x.mean - acc.mean) * (CAST(x.count AS DOUBLE) "
            "/ CAST(acc.count + x.count AS DOUBLE)), "
            "'m2', acc.m2 + x.m2 + (x.mean - acc.mean) * (x.mean - acc.mean) * "
            "(CAST(acc.count * x.count AS DOUBLE) / CAST(acc.count + x.count AS DOUBLE))) END"
        )
        return ordered_fold(ir, order, "named_struct('count', 0L, 'mean', 0D, 'm2', 0D)", step)


class Stddev(Variance):
    name = "stddev"
    summary = "sample standard deviation (n - 1); null when fewer than 2 values"

    def _finish(self, variance: Array) -> Array:
        return np.sqrt(variance)

    def _scalar_finish(self, variance: float) -> float:
        # Both are IEEE's correctly rounded root; NaN and negatives (math.sqrt raises on
        # those) take numpy's, so the NaN's bits are the definition's too.
        return math.sqrt(variance) if variance >= 0 else float(np.sqrt(variance))
