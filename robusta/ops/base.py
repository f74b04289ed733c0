"""The aggregator contract every operator implements, once, for every engine.

An operator turns events into an intermediate representation (IR), merges IRs and finalizes
an IR into a feature value. In Python an IR column is a *state*: a tuple of equal-length
numpy arrays (struct of arrays), so merges are vectorized across many rows at once.

Hooks, in the order data meets them:

- ``lift``: one IR per raw event (vectorized); ``build`` = lift + ``merge_segments``.
- ``combine(a, b)``: element-wise merge of two IR columns, ``a`` holding the earlier tiles.
- ``merge_segments(state, offsets)``: merge each contiguous run of IRs, in array order. The
  default is a left fold of ``combine`` vectorized across segments, so every segment is merged
  in exactly the same order on every path (bit-identical float sums online and offline).
- ``finalize``: IR -> feature value; an empty IR gives the brief's empty value.
- ``merge_windows(column, picks, offsets)``: final values of a few windows of one key as
  Python values; the online client's per-key path. The default is the definition above
  (decode, ``merge_segments``, ``finalize``); operators override it with a scalar fold where
  numpy calls would cost more than their few values, tested bit-identical to the default.
- ``to_arrow`` / ``from_arrow``: the stored IR format (``ir_type``).
- ``build_arrow`` / ``merge_arrow``: the tile builders' entry points, stored IRs in and out
  (``to_arrow`` of ``build`` / ``merge_segments``). Operators whose state is a Python object
  per row (lists, counters) override them with a columnar computation over Arrow, tested
  bit-identical to the definition; everything else uses the state path.
- ``window_values(column, picks, offsets)``: the assembler's entry point for operators with
  ``columnar_windows``: final values of windows of picked stored IRs, ``finalize`` of
  ``merge_segments`` over ``from_arrow(column)[picks]``, computed over Arrow.
- ``spark_build`` / ``spark_merge``: Spark SQL aggregate expressions (text; no pyspark here)
  that build an IR from rows and merge IRs, producing exactly ``ir_type``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from itertools import compress
from operator import add
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from robusta.errors import OperatorError
from robusta.ops.values import Array, primitive_view, to_arrow_type, to_numpy, validity
from robusta.spec.datatypes import DataType

State = tuple[Array, ...]


@dataclass(frozen=True, slots=True)
class Param:
    """One operator parameter: name, default, a checker returning a message when invalid."""

    name: str
    default: Any
    check: Callable[[Any], str | None]
    help: str


class ParamError(OperatorError):
    """An operator parameter is missing, unknown or out of range (``key`` names it)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


class Operator(ABC):
    """Base of every aggregation operator; see the module docstring for the contract."""

    name: ClassVar[str]
    summary: ClassVar[str]
    needs_input: ClassVar[bool] = True
    exact: ClassVar[bool] = True
    param_specs: ClassVar[tuple[Param, ...]] = ()
    columnar_windows: ClassVar[bool] = False  # the assembler calls ``window_values``

    def __init__(
        self, input_type: DataType = DataType.UNKNOWN, params: Mapping[str, Any] | None = None
    ) -> None:
        self.input_type = input_type
        self.params = self.normalize_params(params or {})
        problem = self.check_input_type(input_type)
        if problem is not None:
            raise OperatorError(problem)

    @property
    def label(self) -> str:
        """How listings name this operator."""
        return self.name

    # ---- validation -------------------------------------------------------------------
    @classmethod
    def normalize_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        known = {p.name: p for p in cls.param_specs}
        for key in params:
            if key not in known:
                allowed = ", ".join(known) or "none"
                raise ParamError(
                    key, f'{cls.name} has no parameter "{key}" (parameters: {allowed})'
                )
        out: dict[str, Any] = {}
        for spec in cls.param_specs:
            value = params.get(spec.name, spec.default)
            message = spec.check(value)
            if message is not None:
                raise ParamError(spec.name, f"{cls.name} {spec.name}: {message}")
            out[spec.name] = value
        problem = cls.check_params(out)
        if problem is not None:
            raise ParamError(*problem)
        return out

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> tuple[str, str] | None:
        """(param, message) when parameters are fine one by one but not together."""
        return None

    @classmethod
    def check_input_type(cls, dtype: DataType) -> str | None:
        """A message when ``dtype`` cannot be this operator's input, else None."""
        if not dtype.is_known:
            return None
        if dtype is DataType.OTHER:
            return f"{cls.name} cannot aggregate arrays, maps or structs; select a plain column"
        if not dtype.is_orderable:
            return f"{cls.name} cannot order {dtype} values; CAST them in the query"
        return None

    # ---- types --------------------------------------------------------------------------
    @property
    @abstractmethod
    def ir_type(self) -> pa.DataType: ...

    @property
    @abstractmethod
    def result_type(self) -> pa.DataType: ...

    # ---- python state -------------------------------------------------------------------
    @abstractmethod
    def empty(self, n: int) -> State:
        """``n`` empty IRs (the identity of ``combine``)."""

    @abstractmethod
    def lift(self, ts: Array, values: pa.Array | None) -> State:
        """One IR per event; ``ts`` are int64 epoch microseconds."""

    @abstractmethod
    def combine(self, a: State, b: State) -> State:
        """Element-wise merge; ``a`` covers earlier time than ``b``."""

    @abstractmethod
    def finalize(self, state: State) -> pa.Array:
        """Feature values, typed ``result_type``."""

    @abstractmethod
    def from_arrow(self, array: pa.Array) -> State: ...

    @abstractmethod
    def to_arrow(self, state: State) -> pa.Array: ...

    def merge_segments(self, state: State, offsets: Array) -> State:
        """Merge ``state[offsets[i]:offsets[i+1]]`` for every i, each as a left fold in order."""
        return fold_segments(self, state, offsets)

    def merge_windows(self, column: pa.Array, picks: Array, offsets: Sequence[int]) -> list[Any]:
        """Final values of a few windows of one key: window ``w`` merges the IRs
        ``column[picks[offsets[w]:offsets[w + 1]]]`` in that (time) order."""
        state = self.from_arrow(column.take(pa.array(picks, pa.int64())))
        merged = self.merge_segments(state, np.asarray(offsets, dtype=np.int64))
        values: list[Any] = self.finalize(merged).to_pylist()
        return values

    def build(self, ts: Array, values: pa.Array | None, offsets: Array) -> State:
        """IRs of contiguous groups of events (``offsets`` as in ``merge_segments``)."""
        return self.merge_segments(self.lift(ts, values), offsets)

    def build_arrow(self, ts: Array, values: pa.Array | None, offsets: Array) -> pa.Array:
        """``to_arrow(build(ts, values, offsets))``: the stored IRs of groups of events, built
        a bounded number of segments at a time (segments are independent), so Python states
        (sketch objects) never exist for every tile of a large build at once."""
        bounds = np.asarray(offsets, dtype=np.int64)
        if len(bounds) - 1 <= _CHUNK_SEGMENTS:
            return self.to_arrow(self.build(ts, values, bounds))
        if values is not None:
            self._checked(values, len(ts))
        parts = []
        for lo in range(0, len(bounds) - 1, _CHUNK_SEGMENTS):
            cut = bounds[lo : lo + _CHUNK_SEGMENTS + 1]
            first, last = int(cut[0]), int(cut[-1])
            chunk = None if values is None else values.slice(first, last - first)
            parts.append(self.to_arrow(self.build(ts[first:last], chunk, cut - first)))
        return pa.concat_arrays(parts)

    def merge_arrow(self, column: pa.Array, offsets: Array) -> pa.Array:
        """``to_arrow(merge_segments(from_arrow(column), offsets))``: stored IRs merged, a
        bounded number of segments at a time (see :meth:`build_arrow`)."""
        bounds = np.asarray(offsets, dtype=np.int64)
        parts = []
        for lo in range(0, max(len(bounds) - 1, 1), _CHUNK_SEGMENTS):
            cut = bounds[lo : lo + _CHUNK_SEGMENTS + 1]
            first, last = int(cut[0]), int(cut[-1])
            state = self.from_arrow(column.slice(first, last - first))
            parts.append(self.to_arrow(self.merge_segments(state, cut - first)))
        return pa.concat_arrays(parts) if len(parts) > 1 else parts[0]

    def window_values(self, column: pa.Array, picks: Array, offsets: Array) -> pa.Array:
        """Final values of windows: window ``i`` merges the stored IRs ``column[picks[j]]``
        for ``offsets[i] <= j < offsets[i + 1]``, in that (time) order."""
        state = self.from_arrow(column.take(pa.array(picks, pa.int64())))
        return self.finalize(self.merge_segments(state, offsets))

    # ---- spark hooks ----------------------------------------------------------------------
    @abstractmethod
    def spark_build(self, value: str, ts: str) -> str:
        """Spark SQL aggregate expression building the IR from rows."""

    @abstractmethod
    def spark_merge(self, ir: str, order: str) -> str:
        """Spark SQL aggregate expression merging IRs; ``order`` sorts them in time."""

    # ---- helpers for subclasses -----------------------------------------------------------
    def _values(self, values: pa.Array | None, n: int) -> tuple[Array, Array]:
        return to_numpy(self._checked(values, n), self.input_type)

    def _arrow_values(self, values: pa.Array | None, n: int) -> pa.Array:
        """The input as one Arrow array of the input type (what ``to_numpy`` reads)."""
        return to_arrow_type(self._checked(values, n), self.input_type)

    def _checked(self, values: pa.Array | None, n: int) -> pa.Array:
        if values is None:
            raise OperatorError(f"{self.name} needs an input column")
        if len(values) != n:
            raise OperatorError(f"{self.name}: {len(values)} values for {n} timestamps")
        return values


def take(state: State, index: Array) -> State:
    return tuple(column[index] for column in state)


def concat(states: list[State]) -> State:
    return tuple(np.concatenate(cols) for cols in zip(*states, strict=True))


def fold_segments(op: Operator, state: State, offsets: Array) -> State:
    """Vectorized left fold of ``op.combine`` over contiguous segments.

    Segments are processed longest first so the rows still active at step j form a prefix;
    each step merges the j-th element of every active segment into its accumulator in place.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    n = len(lengths)
    acc = op.empty(n)  # fresh, writable columns
    if n == 0 or not lengths.any():
        return acc
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    sorted_starts = offsets[:-1][order]
    ascending = sorted_lengths[::-1]
    for j in range(int(sorted_lengths[0])):
        active = n - int(np.searchsorted(ascending, j, side="right"))
        nxt = take(state, sorted_starts[:active] + j)
        merged = nxt if j == 0 else op.combine(tuple(c[:active] for c in acc), nxt)
        for column, values in zip(acc, merged, strict=True):
            column[:active] = values
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    return take(acc, inverse)


_CHUNK_SEGMENTS = 1 << 16  # segments per build_arrow / merge_arrow step of the state path
_MATRIX_CELLS = 1 << 22  # cells of one padded block in sequential_sums (32 MiB of float64)


def sequential_sums(valid: Array, values: Array, offsets: Array) -> tuple[Array, Array]:
    """Float sums of the valid values of each segment as a left fold in array order, the
    exact result of folding ``a + b``, without a Python step per element.

    Segments become rows of a matrix padded with -0.0, the exact additive identity (``x +
    -0.0 == x`` for every x, -0.0 and NaN included), and ``np.add.accumulate`` adds each row
    strictly left to right (unlike ``sum``, which adds pairwise). Many segments are padded by
    length class (powers of two, so padding at most doubles the work) in blocks of bounded
    memory. Returns (any value present, sum).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    n = len(lengths)
    present = reduce_segments(np.logical_or, valid, offsets, False)
    sums = np.zeros(n, dtype=np.float64)
    longest = int(lengths.max()) if n else 0
    if longest == 0:
        return present, sums
    masked = np.where(valid, values, -0.0).astype(np.float64)
    if n * longest <= _MATRIX_CELLS:
        sums[:] = _padded_sums(masked, offsets[:-1], lengths, longest)
        return present, sums
    classes = np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    for length_class in np.unique(classes[lengths > 0]).tolist():
        members = np.flatnonzero((classes == length_class) & (lengths > 0))
        width = int(lengths[members].max())
        per_block = max(1, _MATRIX_CELLS // width)
        for lo in range(0, len(members), per_block):
            block = members[lo : lo + per_block]
            sums[block] = _padded_sums(masked, offsets[block], lengths[block], width)
    return present, sums


def _padded_sums(masked: Array, starts: Array, lengths: Array, width: int) -> Array:
    """Left-to-right sums of ``masked[starts[i] : starts[i] + lengths[i]]`` for every i."""
    cells = np.full((len(starts), width), -0.0)
    rows = np.repeat(np.arange(len(starts)), lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    cells[rows, within] = masked[np.repeat(starts, lengths) + within]
    sums: Array = np.add.accumulate(cells, axis=1)[:, -1]
    return sums


def checked_int_sums(values: Array, offsets: Array) -> Array:
    """Integer segment sums that raise instead of wrapping around past int64."""
    sums = reduce_segments(np.add, values, offsets, 0)
    approx = reduce_segments(np.add, values.astype(np.float64), offsets, 0.0)
    if np.any(np.abs(approx - sums.astype(np.float64)) > 2.0**62):
        raise OperatorError(
            "an integer sum overflows int64; CAST the input to DOUBLE in the spec's query"
        )
    return sums


def reduce_segments(ufunc: np.ufunc, values: Array, offsets: Array, identity: Any) -> Array:
    """``ufunc`` reduced over each contiguous segment; empty segments get ``identity``.

    Only for merges whose result cannot depend on order (integer sums, min, max): numpy reduces
    in its own order, which for float sums would break bit-identical results across paths.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    starts, lengths = offsets[:-1], np.diff(offsets)
    out = np.full(len(lengths), identity, dtype=values.dtype)
    filled = lengths > 0
    if filled.any():  # reduceat's last segment runs to the end: cut the rows after the last
        out[filled] = ufunc.reduceat(values[: offsets[-1]], starts[filled])
    return out


# ---- scalar folds of the per-key path (merge_windows overrides) -------------------------
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def picked_values(column: pa.Array, picks: Array, fill: Any) -> list[Any]:
    """``column[picks]`` of a fixed-width column as Python values, null slots as ``fill``."""
    values, valid = primitive_view(column)
    picked = values[picks]
    if valid is not None:
        picked = np.where(valid[picks], picked, fill)
    out: list[Any] = picked.tolist()
    return out


def picked_validity(column: pa.Array, picks: Array) -> list[bool]:
    """Which of ``column[picks]`` are non-null."""
    valid = validity(column)
    if valid is None:
        return [True] * len(picks)
    out: list[bool] = valid[picks].tolist()
    return out


def scalar_float_sum(values: Sequence[float], present: Sequence[bool]) -> float | None:
    """The left fold ``sequential_sums`` computes, for one segment: the same additions in the
    same order (-0.0 is the exact identity it pads with); None without a present value."""
    kept = list(compress(values, present))
    return reduce(add, kept, -0.0) if kept else None


def scalar_int_sum(values: Sequence[int]) -> int:
    """An integer segment sum that raises where ``checked_int_sums`` does (past int64)."""
    total = sum(values)
    if not INT64_MIN <= total <= INT64_MAX:
        raise OperatorError(
            "an integer sum overflows int64; CAST the input to DOUBLE in the spec's query"
        )
    return total
