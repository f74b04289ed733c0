"""Comparing operator results with the reference evaluator, under the brief's error bounds.

Shared by the operator property tests, the assembler and PIT-join tests and the benchmarks'
equality checks. The tolerances are explained in ``tests/ops/test_operators.py``'s docstring:
exact ops compare bit for bit, float folds within their accumulated-rounding bound, sketches
within 3x their published error (HLL lgK 12: 1.6% RSE; KLL k 200: ~1.65% rank error;
Misra-Gries: N / (capacity + 1)).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import currently_in_test_context, event

from robusta.ops import Operator
from robusta.spec.datatypes import DataType
from robusta.testing.reference import reference_value

Event = tuple[int, Any]
BIGINT, DOUBLE = DataType.BIGINT, DataType.DOUBLE

EPS = 2.0**-52
HLL_RSE = 0.016  # BRIEF: HLL lgK 12, 1.6% relative standard error
HLL_EXACT_UP_TO = 384  # HLL_8 lgK 12 leaves exact coupon (LIST/SET) mode at 385 coupons
KLL_RANK_ERROR = 0.0165  # BRIEF: KLL k 200, ~1.65% normalized rank error


FLOAT_OPS = frozenset({"sum", "avg", "variance", "stddev"})


def inexact(op: Operator) -> bool:
    """Float results compared with the exact oracle under a tolerance (int sums are exact)."""
    return op.name in FLOAT_OPS and not (op.name == "sum" and op.input_type is BIGINT)


def order_sensitive(op: Operator) -> bool:
    """Float folds whose bits depend on the merge order (int sum/avg stay bit-exact)."""
    return op.name in ("variance", "stddev") or (op.name in FLOAT_OPS and op.input_type is DOUBLE)


def canon(value: Any, *, zero_sign: bool = False) -> Any:
    """Floats by their bits (hex), so ``==`` is bit-exact; -0.0 is 0.0 unless ``zero_sign``."""
    if isinstance(value, float):
        return (value if zero_sign else value + 0.0).hex()
    if isinstance(value, list):
        return [canon(v, zero_sign=zero_sign) for v in value]
    if isinstance(value, dict):
        return {k: canon(v, zero_sign=zero_sign) for k, v in value.items()}
    return value


def bits(value: Any) -> Any:
    return canon(value, zero_sign=True)


def present(events: Sequence[Event]) -> list[Any]:
    return [v for _, v in events if v is not None]


def sort_by_ts(events: Sequence[Event]) -> list[Event]:
    return sorted(events, key=lambda e: e[0])


# ---- comparison against the oracle -----------------------------------------------------------
def assert_float_close(name: str, got: float, want: float, values: Sequence[Any]) -> None:
    floats = [float(v) for v in values]
    n = len(floats)
    if name == "sum":
        slack = n * EPS * sum(abs(v) for v in floats)
    elif name == "avg":
        slack = EPS * sum(abs(v) for v in floats)
    else:
        slack = 8 * n * EPS * max(v * v for v in floats)
    if name == "stddev" and not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9):
        got, want = got * got, want * want
    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9) or abs(got - want) <= slack, (
        f"{name}: {got!r} vs exact {want!r} (slack {slack:g}, n {n})"
    )


def note_regime(label: str) -> None:
    """Count sketch regimes in ``--hypothesis-show-statistics`` (no-op outside hypothesis)."""
    if currently_in_test_context():
        event(label)


def assert_distinct_estimate(estimate: int, exact: int) -> None:
    note_regime("HLL coupon mode" if exact <= HLL_EXACT_UP_TO else "HLL estimation mode")
    if exact <= HLL_EXACT_UP_TO:
        assert estimate == exact
    else:
        assert abs(estimate - exact) <= 3 * HLL_RSE * exact + 1, (estimate, exact)


def assert_quantiles(op: Operator, got: list[float], values: Sequence[Any]) -> None:
    ordered = sorted(float(v) for v in values)
    n = len(ordered)
    qs = [float(q) for q in op.params["q"]]
    assert len(got) == len(qs)
    note_regime("KLL exact (n <= k)" if n <= int(op.params["k"]) else "KLL compacted (n > k)")
    if n <= int(op.params["k"]):
        want = reference_value("approx_quantile", op.params, ts0(values), None, 1)
        assert canon(got) == canon(want)
        return
    tolerance = 3 * KLL_RANK_ERROR
    for q, x in zip(qs, got, strict=True):
        lo = bisect.bisect_left(ordered, x)
        hi = bisect.bisect_right(ordered, x)
        assert hi > lo, f"quantile {q}: {x!r} is not an input value"
        assert lo / n - tolerance <= q <= hi / n + tolerance, (
            f"quantile {q}: {x!r} has true rank in [{lo / n}, {hi / n}] (n {n})"
        )


def top_k_capacity(op: Operator) -> int:
    cap = op.params["capacity"]
    return int(cap) if cap is not None else max(64, 8 * int(op.params["k"]))


def assert_top_k(op: Operator, got: list[dict[str, Any]], values: Sequence[Any]) -> None:
    counts = Counter(values)
    k, capacity = int(op.params["k"]), top_k_capacity(op)
    note_regime("top_k exact" if len(counts) <= capacity else "top_k Misra-Gries cut")
    if len(counts) <= capacity:
        want = reference_value("top_k", op.params, ts0(values), None, 1)
        assert canon(got) == canon(want)
        return
    slack = len(values) / (capacity + 1)
    assert len(got) <= k
    reported = [item["value"] for item in got]
    assert len(set(reported)) == len(reported)
    keys = [(-item["count"], item["value"]) for item in got]
    assert keys == sorted(keys), "not sorted by count desc, value asc"
    for item in got:
        exact = counts[item["value"]]
        assert exact - slack <= item["count"] <= exact, (item, exact, slack)
    cut = got[-1]["count"] if len(got) == k else 0
    for value, exact in counts.items():
        if value not in reported:
            assert exact <= cut + slack, f"{value!r} (count {exact}) missing; cut {cut}"


def ts0(values: Sequence[Any]) -> list[Event]:
    return [(0, v) for v in values]


def assert_matches_reference(op: Operator, got: Any, events: Sequence[Event]) -> None:
    """``got`` (one finalized value) against the oracle over ``events`` (already windowed)."""
    name = op.name
    want = reference_value(name, op.params, events, None, 2**63)
    values = present(events)
    if name == "top_k" and want is not None:
        # Null is for empty windows only, even when the Misra-Gries cut dropped every counter.
        assert got is not None, "top_k: null for a window with values"
        assert_top_k(op, got, values)
    elif want is None or got is None:
        assert got is None and want is None, (got, want)
    elif inexact(op):
        assert_float_close(name, got, want, values)
    elif name == "approx_distinct":
        assert_distinct_estimate(got, want)
    elif name == "approx_quantile":
        assert_quantiles(op, got, values)
    else:
        assert canon(got) == canon(want), (got, want)


def assert_same_value(op: Operator, got: Any, expected: Any, events: Sequence[Event]) -> None:
    """Two results over the same events from different merge orders/groupings."""
    name = op.name
    if order_sensitive(op):
        assert_matches_reference(op, got, events)
        assert_matches_reference(op, expected, events)
    elif name == "approx_quantile" and len(present(events)) > int(op.params["k"]):
        # Different groupings compact differently; pooling itself is deterministic (test d).
        assert_matches_reference(op, got, events)
        assert_matches_reference(op, expected, events)
    elif name == "top_k":
        assert_matches_reference(op, got, events)
        assert_matches_reference(op, expected, events)
    else:
        assert canon(got) == canon(expected), (got, expected)
        assert_matches_reference(op, got, events)
