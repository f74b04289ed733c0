"""Derived expressions: the Arrow evaluator against Spark SQL itself (ANSI mode off, the
semantics docs/spec.md promises), on generated columns with nulls, zeros, negatives, ties
and large values; and the evaluator's own guarantees (types, broadcasting literals)."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robusta.plan.derived import Kind, compile_expression

TYPES = {"x": pa.float64(), "y": pa.float64(), "n": pa.int64(), "m": pa.int64(), "s": pa.string()}
EXPRESSIONS = [
    "x + y",
    "x - n",
    "x * y",
    "n * m",
    "n + m - 3",
    "x / y",
    "n / m",
    "x / NULLIF(n, 0)",
    "-x",
    "ABS(n)",
    "ABS(x)",
    "x > y",
    "n >= m AND x < 1.5",
    "n = m OR s = 'b'",
    "NOT (x <= y)",
    "x IS NULL",
    "s IS NOT NULL",
    "COALESCE(x, n, 0)",
    "COALESCE(s, 'none')",
    "NULLIF(n, 2)",
    "CASE WHEN x > 0 THEN 'pos' WHEN x < 0 THEN 'neg' ELSE 'zero' END",
    "CASE WHEN n > 1 THEN x END",
    "IF(n > m, n, m)",
    "GREATEST(x, y, n)",
    "LEAST(n, m)",
    "CAST(n AS DOUBLE)",
    "CAST(x AS BIGINT)",
    "CAST(n > 0 AS BIGINT)",
    "FLOOR(x)",
    "CEIL(x)",
    "ROUND(x, 2)",
    "ROUND(x)",
    "ROUND(n, -1)",
    "SQRT(x)",
    "LN(x)",
    "LOG(2, x)",
    "EXP(y)",
    "POWER(x, 2)",
]
FLOATS = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.5, -2.5, 2.675, 1e20, -1e20, 1e-300]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)
INTS = st.one_of(
    st.none(),
    st.sampled_from([0, 1, -1, 2, 15, -15, 2**62]),
    st.integers(min_value=-1000, max_value=1000),
)
ROWS = st.lists(
    st.tuples(FLOATS, FLOATS, INTS, INTS, st.one_of(st.none(), st.sampled_from(["a", "b", ""]))),
    min_size=1,
    max_size=30,
)
# Transcendental functions: the JVM's StrictMath and the C library may differ in the last bit.
APPROXIMATE = ("SQRT", "LN", "LOG", "EXP", "POWER")


def columns(rows: list[tuple[Any, ...]]) -> dict[str, pa.Array]:
    names = list(TYPES)
    return {n: pa.array([r[i] for r in rows], TYPES[n]) for i, n in enumerate(names)}


def same(ours: Any, theirs: Any, approximate: bool) -> bool:
    if ours is None or theirs is None:
        return ours is None and theirs is None
    if isinstance(ours, float) and isinstance(theirs, float):
        if math.isnan(ours) or math.isnan(theirs):
            return math.isnan(ours) and math.isnan(theirs)
        if approximate:
            return math.isclose(ours, theirs, rel_tol=1e-14, abs_tol=0.0) or ours == theirs
    return bool(ours == theirs and type(ours) is type(theirs))


@pytest.mark.spark
def test_the_evaluator_agrees_with_spark_sql(spark: Any) -> None:
    spark.conf.set("spark.sql.ansi.enabled", "false")
    compiled = {e: compile_expression(e, TYPES, {}) for e in EXPRESSIONS}

    @given(rows=ROWS)
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    def check(rows: list[tuple[Any, ...]]) -> None:
        data = columns(rows)
        frame = spark.createDataFrame(pa.table(data)).selectExpr(
            *[f"{e} AS e{i}" for i, e in enumerate(EXPRESSIONS)]
        )
        theirs = frame.collect()
        for i, (text, expression) in enumerate(compiled.items()):
            ours = expression.evaluate(data, len(rows)).to_pylist()
            approximate = text.startswith(APPROXIMATE)
            for row, (a, row_spark) in enumerate(zip(ours, theirs, strict=True)):
                b = row_spark[f"e{i}"]
                assert same(a, b, approximate), (text, rows[row], a, b)

    try:
        check()
    finally:
        spark.conf.unset("spark.sql.ansi.enabled")


def test_literals_broadcast_and_types_follow_spark() -> None:
    x = pa.array([1.0, None, 3.0])
    kinds = {
        "1 + 2": (Kind.INT, [3, 3, 3]),
        "1 / 2": (Kind.FLOAT, [0.5, 0.5, 0.5]),
        "x + 1": (Kind.FLOAT, [2.0, None, 4.0]),
        "CASE WHEN TRUE THEN 'a' END": (Kind.TEXT, ["a", "a", "a"]),
        "NULL": (Kind.NULL, [None, None, None]),
    }
    for text, (kind, want) in kinds.items():
        expression = compile_expression(text, {"x": pa.float64()}, {})
        assert expression.kind == kind, text
        assert expression.evaluate({"x": x}, 3).to_pylist() == want, text
