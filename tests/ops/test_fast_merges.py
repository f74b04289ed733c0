"""Operators' fast ``merge_segments`` against the plain left fold of ``combine``, bit for bit.

Float sums (padded sequential accumulate) and first/last (direct winner) skip the fold's
Python step per element; they must give exactly what the fold gives, for -0.0, NaN,
infinities, nulls, empty segments, timestamp ties (first/last fall back to the fold) and
segments longer than one padded block.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from robusta.ops import base as ops_base
from robusta.ops import make_operator
from robusta.ops.base import fold_segments
from robusta.spec.datatypes import DataType
from robusta.testing.compare import bits

FLOATS = st.sampled_from([0.0, -0.0, 1e308, -1e308, float("nan"), float("inf"), 0.1, -2.5]) | (
    st.floats(allow_nan=True, allow_infinity=True)
)


@st.composite
def segmented(
    draw: st.DrawFn, values: st.SearchStrategy[Any]
) -> tuple[list[Any], list[int], list[int]]:
    lengths = draw(st.lists(st.integers(0, 9), min_size=0, max_size=12))
    n = sum(lengths)
    items = draw(st.lists(st.none() | values, min_size=n, max_size=n))
    times = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    return items, times, np.concatenate([[0], np.cumsum(lengths)]).astype(int).tolist()


def both(
    op_name: str, dtype: DataType, items: list[Any], times: list[int], offsets: list[int]
) -> None:
    op = make_operator(op_name, dtype, {})
    arrow = pa.array(items, dtype.arrow())
    state = op.lift(np.asarray(times, np.int64), arrow)
    fast = op.finalize(op.merge_segments(state, np.asarray(offsets)))
    slow = op.finalize(fold_segments(op, state, np.asarray(offsets)))
    assert bits(fast.to_pylist()) == bits(slow.to_pylist())


@settings(max_examples=300, deadline=None)
@given(segmented(FLOATS), st.sampled_from(["sum", "avg", "first", "last"]))
def test_float_merges_equal_the_fold(case: tuple[list[Any], list[int], list[int]], op: str) -> None:
    both(op, DataType.DOUBLE, *case)


@settings(max_examples=100, deadline=None)
@given(segmented(st.text(max_size=2)), st.sampled_from(["first", "last"]))
def test_edges_of_strings_equal_the_fold(
    case: tuple[list[Any], list[int], list[int]], op: str
) -> None:
    both(op, DataType.STRING, *case)


def test_sums_longer_than_one_block(monkeypatch: Any) -> None:
    monkeypatch.setattr(ops_base, "_MATRIX_CELLS", 7)  # blocks of a few rows each
    rng = np.random.default_rng(2)
    lengths = rng.integers(0, 12, 40)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = (rng.standard_normal(int(offsets[-1])) * 1e6).tolist()
    both("sum", DataType.DOUBLE, values, [0] * len(values), offsets.tolist())
