"""Brute-force reference evaluator: the oracle operators and engines are tested against.

It implements BRIEF section 2 (Semantics) literally, in plain Python over raw events, and is
deliberately independent of ``robusta.ops``: it must never import it. Obviously correct beats
fast here.

- Windows: ``end = floor(t, gmin)`` (``min(floor(t, gmin), p)`` with a version pointer ``p``),
  ``start = end - W`` (``None``, i.e. -infinity, for ``lifetime``); an event counts when
  ``start <= ts < end``.
- Rows with a null key or a null timestamp are dropped. Null values are ignored by every op
  except ``count``, which counts events. An empty window gives ``count`` 0 and None otherwise.
- Sketch ops are answered EXACTLY (``approx_distinct``: the distinct count; ``approx_quantile``:
  exact quantiles with KLL's inclusive rule; ``top_k``: exact counts). Tests compare sketch
  results against these within the sketch's published error.
- Arithmetic is exact: integer sums are Python ints (no int64 wrap-around), and float sums,
  means and variances are computed with :class:`fractions.Fraction` and rounded once at the
  end. The operators fold in float64 in a fixed merge order instead, so float comparisons
  against this oracle need a tolerance (relative, plus the accumulated-rounding bound of the
  inputs' magnitude when large values cancel).
"""

from __future__ import annotations

import datetime
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from fractions import Fraction
from typing import Any

from robusta.spec.durations import Window

EXACT_OPS: frozenset[str] = frozenset(
    {
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "variance",
        "stddev",
        "first",
        "last",
        "first_n",
        "last_n",
    }
)
SKETCH_OPS: frozenset[str] = frozenset({"approx_distinct", "approx_quantile", "top_k"})
ALL_OPS: frozenset[str] = EXACT_OPS | SKETCH_OPS

DEFAULT_N = 5  # first_n / last_n
DEFAULT_K = 10  # top_k
DEFAULT_Q: tuple[float, ...] = (0.5,)  # approx_quantile


def window_bounds(
    t: int, window: Window, gmin_micros: int, pointer: int | None = None
) -> tuple[int | None, int]:
    """``(start, end)`` of the window ``[start, end)`` queried at ``t``; start None = lifetime.

    ``end = floor(t, gmin)`` (epoch-aligned, also before 1970), capped at ``pointer`` when
    given; ``start = end - W``.
    """
    if gmin_micros <= 0:
        raise ValueError(f"gmin must be positive, got {gmin_micros}")
    if window.duration is not None and window.duration.micros % gmin_micros != 0:
        raise ValueError(f"window {window} is not a whole multiple of gmin ({gmin_micros}us)")
    end = t - t % gmin_micros  # Python's % takes the divisor's sign: floors negatives too
    if pointer is not None:
        end = min(end, pointer)
    if window.duration is None:
        return None, end
    return end - window.duration.micros, end


def reference_value(
    op: str,
    params: Mapping[str, Any],
    events: Iterable[tuple[int, Any]],
    start: int | None,
    end: int,
) -> Any:
    """The plain Python value ``finalize`` should produce for ``op`` over the events of ONE key
    with ``start <= ts < end`` (``start`` None: no lower bound)."""
    if op not in ALL_OPS:
        raise ValueError(f"unknown op {op!r}; ops: {', '.join(sorted(ALL_OPS))}")
    inside = [
        (ts, value)
        for ts, value in events
        if ts is not None and (start is None or start <= ts) and ts < end
    ]
    if op == "count":
        return len(inside)
    present = [(ts, value) for ts, value in inside if value is not None]
    if not present:
        return None
    values = [value for _, value in present]
    n = len(values)

    if op == "sum":
        if all(isinstance(v, int) for v in values):
            return sum(values)
        return float(_exact_sum(values))
    if op == "avg":
        return float(_exact_sum(values) / n)
    if op in ("variance", "stddev"):
        if n < 2:
            return None
        mean = _exact_sum(values) / n
        variance = sum(((Fraction(v) - mean) ** 2 for v in values), Fraction(0)) / (n - 1)
        return float(variance) if op == "variance" else math.sqrt(float(variance))
    if op == "min":
        return min(values)
    if op == "max":
        return max(values)
    if op == "first":
        return min(present)[1]
    if op == "last":
        return max(present)[1]
    if op == "first_n":
        return [value for _, value in sorted(present)[: _int_param(params, "n", DEFAULT_N)]]
    if op == "last_n":
        newest_first = sorted(present, reverse=True)
        return [value for _, value in newest_first[: _int_param(params, "n", DEFAULT_N)]]
    if op == "approx_distinct":
        return len(set(values))
    if op == "approx_quantile":
        ordered = sorted(float(v) for v in values)
        qs = params.get("q", DEFAULT_Q)
        # Inclusive rule: the smallest index i with (i + 1) >= ceil(q * n); q = 0 gives the min.
        return [ordered[max(math.ceil(float(q) * n) - 1, 0)] for q in qs]
    # top_k
    counts = Counter(values)
    ranked = sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))
    return [{"value": v, "count": c} for v, c in ranked[: _int_param(params, "k", DEFAULT_K)]]


def bucket_text(value: Any) -> str:
    """A bucket value as map features key it: Spark's CAST(... AS STRING) spelling."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return str(value)


def reference_map(
    op: str,
    params: Mapping[str, Any],
    events: Iterable[tuple[int, Any, Any]],
    start: int | None,
    end: int,
    max_buckets: int,
) -> dict[str, Any]:
    """A map feature (``bucket_by``) over ``(ts, bucket value, value)`` events of ONE key:
    ``reference_value`` of each bucket value's events in ``[start, end)``, for the
    ``max_buckets`` smallest bucket values (as text) that have one; null buckets are left
    out. An empty window gives an empty map."""
    by: dict[str, list[tuple[int, Any]]] = {}
    for ts, bucket, value in events:
        if bucket is None or ts is None or ts >= end or (start is not None and ts < start):
            continue
        by.setdefault(bucket_text(bucket), []).append((ts, value))
    return {b: reference_value(op, params, by[b], start, end) for b in sorted(by)[:max_buckets]}


def evaluate(
    events: Iterable[tuple[Hashable, int, Any]],
    key: Hashable,
    t: int,
    window: Window,
    gmin_micros: int,
    op: str,
    params: Mapping[str, Any] | None = None,
    pointer: int | None = None,
) -> Any:
    """``value(key, t, W)`` of BRIEF section 2 from raw ``(key, ts_micros, value)`` events."""
    start, end = window_bounds(t, window, gmin_micros, pointer)
    own = ((ts, value) for k, ts, value in events if k is not None and ts is not None and k == key)
    return reference_value(op, params or {}, own, start, end)


def _exact_sum(values: Iterable[Any]) -> Fraction:
    return sum((Fraction(v) for v in values), Fraction(0))


def _int_param(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    return value


__all__ = [
    "ALL_OPS",
    "EXACT_OPS",
    "SKETCH_OPS",
    "bucket_text",
    "evaluate",
    "reference_map",
    "reference_value",
    "window_bounds",
]
