"""Hand-computed checks of the reference evaluator, so the oracle is itself tested."""

from __future__ import annotations

import math
from typing import Any

import pytest

from robusta.spec.durations import Duration, Window
from robusta.testing.reference import (
    ALL_OPS,
    EXACT_OPS,
    SKETCH_OPS,
    evaluate,
    reference_value,
    window_bounds,
)

S = 1_000_000  # microseconds per second
GMIN = 300 * S  # 5m
HOUR = Window.parse("1h")
LIFETIME = Window.parse("lifetime")


def test_op_name_sets() -> None:
    assert EXACT_OPS.isdisjoint(SKETCH_OPS)
    assert {"approx_distinct", "approx_quantile", "top_k"} == SKETCH_OPS
    assert len(ALL_OPS) == 14


# ---- window bounds ---------------------------------------------------------------------------
def test_bounds_on_a_bucket_edge() -> None:
    assert window_bounds(3600 * S, HOUR, GMIN) == (0, 3600 * S)


def test_bounds_just_after_and_before_an_edge() -> None:
    assert window_bounds(3600 * S + 1, HOUR, GMIN) == (0, 3600 * S)
    assert window_bounds(3600 * S - 1, HOUR, GMIN) == (-300 * S, 3300 * S)


def test_bounds_before_the_epoch_floor_downwards() -> None:
    assert window_bounds(-1, HOUR, GMIN) == (-3900 * S, -300 * S)
    assert window_bounds(-300 * S, HOUR, GMIN) == (-3900 * S, -300 * S)


def test_pointer_caps_the_end() -> None:
    assert window_bounds(7200 * S, HOUR, GMIN, pointer=6000 * S) == (2400 * S, 6000 * S)
    # A pointer later than floor(t, gmin) changes nothing.
    assert window_bounds(7200 * S + 7, HOUR, GMIN, pointer=9000 * S) == (3600 * S, 7200 * S)


def test_lifetime_has_no_start() -> None:
    assert window_bounds(1234 * S, LIFETIME, GMIN) == (None, 1200 * S)
    assert window_bounds(1234 * S, LIFETIME, GMIN, pointer=600 * S) == (None, 600 * S)


def test_window_must_be_a_multiple_of_gmin() -> None:
    with pytest.raises(ValueError, match="multiple"):
        window_bounds(0, Window(Duration(7 * 60 * S)), GMIN)
    with pytest.raises(ValueError, match="positive"):
        window_bounds(0, HOUR, 0)


# ---- window membership -----------------------------------------------------------------------
def test_event_at_end_is_excluded_and_at_start_included() -> None:
    events = [("u", 0, 1), ("u", 3600 * S - 1, 10), ("u", 3600 * S, 100), ("u", -1, 1000)]
    # t = 1h05m30s: end = 1h05m, start = 5m.
    t = 3930 * S
    assert evaluate(events, "u", t, HOUR, GMIN, "sum") == 110
    # t = 1h (on the edge): [0, 1h) holds the events at 0 and 1h - 1us only.
    assert evaluate(events, "u", 3600 * S, HOUR, GMIN, "sum") == 11
    assert evaluate(events, "u", 3600 * S, LIFETIME, GMIN, "sum") == 1011


def test_pointer_hides_events_after_it() -> None:
    events = [("u", 100 * S, 1), ("u", 700 * S, 2), ("u", 1300 * S, 4)]
    t = 1500 * S
    assert evaluate(events, "u", t, HOUR, GMIN, "sum") == 7
    assert evaluate(events, "u", t, HOUR, GMIN, "sum", pointer=900 * S) == 3
    assert evaluate(events, "u", t, HOUR, GMIN, "sum", pointer=600 * S) == 1


def test_other_keys_null_keys_and_null_timestamps_are_dropped() -> None:
    events: list[tuple[Any, Any, Any]] = [
        ("u", 1, 1),
        ("v", 1, 10),
        (None, 1, 100),
        ("u", None, 1000),
        ("u", 2, None),
    ]
    assert evaluate(events, "u", GMIN, HOUR, GMIN, "sum") == 1
    assert evaluate(events, "u", GMIN, HOUR, GMIN, "count") == 2
    assert evaluate(events, None, GMIN, HOUR, GMIN, "count") == 0


# ---- empty windows and nulls -----------------------------------------------------------------
@pytest.mark.parametrize("op", sorted(ALL_OPS))
def test_empty_window(op: str) -> None:
    expected = 0 if op == "count" else None
    assert reference_value(op, {}, [], None, 10) == expected
    assert reference_value(op, {}, [(10, 1), (-5, 1)], 0, 10) == expected


@pytest.mark.parametrize("op", sorted(ALL_OPS - {"count"}))
def test_only_null_values_is_empty_except_for_count(op: str) -> None:
    assert reference_value(op, {}, [(1, None), (2, None)], None, 10) is None
    assert reference_value("count", {}, [(1, None), (2, None)], None, 10) == 2


def test_unknown_op() -> None:
    with pytest.raises(ValueError, match="unknown op"):
        reference_value("median", {}, [], None, 1)


# ---- operator values -------------------------------------------------------------------------
EVENTS = [(1, 1), (2, 2), (3, None), (4, 4)]


def test_numeric_ops() -> None:
    def value(op: str) -> Any:
        return reference_value(op, {}, EVENTS, None, 100)

    assert value("count") == 4
    assert value("sum") == 7
    assert isinstance(value("sum"), int)
    assert value("avg") == 7 / 3
    assert value("min") == 1
    assert value("max") == 4
    # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9; / (n - 1) = 7/3.
    assert value("variance") == 7 / 3
    assert value("stddev") == math.sqrt(7 / 3)


def test_variance_needs_two_values() -> None:
    assert reference_value("variance", {}, [(1, 5), (2, None)], None, 10) is None
    assert reference_value("stddev", {}, [(1, 5), (2, 5)], None, 10) == 0.0


def test_arithmetic_is_exact() -> None:
    # Plain left-to-right float summation gives 0.6000000000000001; the exact sum rounds to 0.6.
    assert reference_value("sum", {}, [(1, 0.1), (2, 0.2), (3, 0.3)], None, 10) == 0.6
    # No int64 wrap-around.
    assert reference_value("sum", {}, [(1, 2**62), (2, 2**62)], None, 10) == 2**63
    assert reference_value("sum", {}, [(1, 1), (2, 0.5)], None, 10) == 1.5
    # Cancellation: the exact mean of [1e16, 1, -1e16] is 1/3.
    assert reference_value("avg", {}, [(1, 1e16), (2, 1.0), (3, -1e16)], None, 10) == 1 / 3


def test_first_last_break_timestamp_ties_by_value() -> None:
    events = [(10, "b"), (10, "a"), (20, None), (5, None), (10, "c")]
    assert reference_value("first", {}, events, None, 100) == "a"
    assert reference_value("last", {}, events, None, 100) == "c"
    assert reference_value("first", {}, events, 11, 100) is None


def test_first_n_oldest_first_and_last_n_newest_first() -> None:
    events = [(3, 30), (1, 10), (2, 21), (2, 20), (4, None), (5, 50), (1, 10)]
    assert reference_value("first_n", {"n": 3}, events, None, 100) == [10, 10, 20]
    assert reference_value("last_n", {"n": 3}, events, None, 100) == [50, 30, 21]
    assert reference_value("first_n", {}, events, None, 100) == [10, 10, 20, 21, 30]
    assert reference_value("last_n", {"n": 10}, events, None, 100) == [50, 30, 21, 20, 10, 10]
    with pytest.raises(ValueError):
        reference_value("first_n", {"n": 0}, events, None, 100)


def test_exact_distinct() -> None:
    events = [(1, "a"), (2, "b"), (3, "a"), (4, None)]
    assert reference_value("approx_distinct", {}, events, None, 100) == 2


def test_exact_quantiles_use_the_inclusive_rule() -> None:
    events = [(i, 11 - i) for i in range(1, 11)]  # values 10..1
    q = [0.0, 0.1, 0.11, 0.5, 0.55, 0.99, 1.0]
    # ceil(q * 10) = 0, 1, 2, 5, 6, 10, 10 -> indices 0, 0, 1, 4, 5, 9, 9.
    expected = [1.0, 1.0, 2.0, 5.0, 6.0, 10.0, 10.0]
    assert reference_value("approx_quantile", {"q": q}, events, None, 100) == expected
    assert reference_value("approx_quantile", {}, [(1, 7), (2, 3)], None, 100) == [3.0]


def test_exact_top_k_sorts_by_count_then_value() -> None:
    values = ["b", "a", "c", "b", "a", "d", None, None, None]
    events = list(enumerate(values))
    assert reference_value("top_k", {"k": 3}, events, None, 100) == [
        {"value": "a", "count": 2},
        {"value": "b", "count": 2},
        {"value": "c", "count": 1},
    ]
    assert len(reference_value("top_k", {}, events, None, 100)) == 4


def test_reference_map_keeps_the_smallest_bucket_values_in_the_window() -> None:
    from robusta.testing.reference import reference_map

    events = [
        (1, "b", 2.0),
        (2, "a", 1.0),
        (3, None, 9.0),
        (4, "c", 3.0),
        (5, "a", 4.0),
        (9, "d", 1),
    ]
    assert reference_map("sum", {}, events, None, 9, 2) == {"a": 5.0, "b": 2.0}
    assert reference_map("count", {}, events, 3, 9, 5) == {"a": 1, "c": 1}
    assert reference_map("max", {}, events, 6, 9, 5) == {}
    flags = [(1, True, 1), (2, False, 1), (3, 10, 1), (4, 9, 1)]
    assert list(reference_map("count", {}, flags, None, 9, 4)) == ["10", "9", "false", "true"]
