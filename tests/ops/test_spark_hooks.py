"""The Spark hooks build and merge the same IRs the Python side reads and merges.

Runs each operator's ``spark_build`` over generated events per (key, bucket) and
``spark_merge`` over the resulting IRs per key, in a real local Spark session, and checks the
Python side finalizes them to the same values. This pins the stored IR formats (including the
DataSketches images of Spark's sketch aggregates) that later engines rely on.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from robusta.ops import OPERATORS, make_operator
from robusta.ops.values import same_shape
from robusta.spec.types import DataType

pytestmark = pytest.mark.spark

CASES: list[tuple[str, DataType, dict[str, Any]]] = [
    ("count", DataType.DOUBLE, {}),
    ("sum", DataType.BIGINT, {}),
    ("sum", DataType.DOUBLE, {}),
    ("avg", DataType.DOUBLE, {}),
    ("avg", DataType.BIGINT, {}),
    ("min", DataType.STRING, {}),
    ("max", DataType.DOUBLE, {}),
    ("variance", DataType.DOUBLE, {}),
    ("stddev", DataType.BIGINT, {}),
    ("first", DataType.STRING, {}),
    ("last", DataType.DOUBLE, {}),
    ("first_n", DataType.STRING, {"n": 3}),
    ("last_n", DataType.BIGINT, {"n": 4}),
    ("approx_distinct", DataType.STRING, {}),
    ("approx_distinct", DataType.BIGINT, {"lg_k": 10}),
    ("approx_quantile", DataType.DOUBLE, {"q": [0.1, 0.5, 0.9]}),
    ("top_k", DataType.STRING, {"k": 3, "capacity": 4}),
]
COLUMN = {DataType.DOUBLE: "v_double", DataType.BIGINT: "v_long", DataType.STRING: "v_str"}


@pytest.fixture(scope="module")
def events() -> pa.Table:
    rng = random.Random(11)
    base = datetime(2024, 3, 1, tzinfo=UTC)
    rows: dict[str, list[Any]] = {k: [] for k in ("k", "b", "ts", "v_double", "v_long", "v_str")}
    for i in range(900):
        key = "hot" if i % 3 == 0 else f"k{rng.randrange(6)}"
        bucket = rng.randrange(5)
        ts = base + timedelta(minutes=5 * bucket, seconds=rng.choice([0, 0, 7, 299]))
        rows["k"].append(key)
        rows["b"].append(bucket)
        rows["ts"].append(ts)
        rows["v_double"].append(
            None if rng.random() < 0.05 else rng.choice([1.5, -2.25, 1e6, rng.random()])
        )
        rows["v_long"].append(None if rng.random() < 0.05 else rng.randrange(-50, 50))
        rows["v_str"].append(None if rng.random() < 0.05 else rng.choice("abcdefgh"))
    for i in range(4):  # a key whose values are all null: empty IRs (null on both engines)
        rows["k"].append("nulls")
        rows["b"].append(i % 2)
        rows["ts"].append(base + timedelta(minutes=5 * (i % 2)))
        for column in ("v_double", "v_long", "v_str"):
            rows[column].append(None)
    schema = pa.schema(
        [
            ("k", pa.string()),
            ("b", pa.int64()),
            ("ts", pa.timestamp("us", "UTC")),
            ("v_double", pa.float64()),
            ("v_long", pa.int64()),
            ("v_str", pa.string()),
        ]
    )
    return pa.table(rows, schema=schema)


@pytest.mark.parametrize(
    ("name", "dtype", "params"), CASES, ids=[f"{c[0]}-{c[1].value}" for c in CASES]
)
def test_spark_ir_matches_python(
    spark: Any, events: pa.Table, name: str, dtype: DataType, params: dict[str, Any]
) -> None:
    op = make_operator(name, dtype, params)
    column = COLUMN[dtype]
    frame = spark.createDataFrame(events)
    frame.createOrReplaceTempView("events")
    tiles = spark.sql(
        f"SELECT k, b, {op.spark_build(column, 'ts')} AS ir FROM events GROUP BY k, b ORDER BY k, b"
    ).toArrow()
    assert same_shape(tiles.schema.field("ir").type, op.ir_type), tiles.schema

    # Build: each Spark tile finalizes like the Python build over the same events (float sums
    # may differ in the last bits: Spark adds a tile's events in its own order).
    table = events.sort_by([("k", "ascending"), ("b", "ascending"), ("ts", "ascending")])
    keys = list(zip(table.column("k").to_pylist(), table.column("b").to_pylist(), strict=True))
    starts = [0] + [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]] + [len(keys)]
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    python = op.build(ts, table.column(column), np.asarray(starts))
    spark_state = op.from_arrow(tiles.column("ir"))
    assert_same(
        op.finalize(spark_state).to_pylist(),
        op.finalize(python).to_pylist(),
        exact=False,
        rel=1e-12 if op.exact else 0.05,
    )

    # Merge: Spark's merge of a key's tiles equals the Python merge of the same Spark IRs.
    spark.createDataFrame(tiles).createOrReplaceTempView("tiles")
    merged = spark.sql(
        f"SELECT k, {op.spark_merge('ir', 'b')} AS ir FROM tiles GROUP BY k ORDER BY k"
    ).toArrow()
    tile_keys = tiles.column("k").to_pylist()
    bounds = [0] + [i for i in range(1, len(tile_keys)) if tile_keys[i] != tile_keys[i - 1]]
    python_merged = op.merge_segments(spark_state, np.asarray([*bounds, len(tile_keys)]))
    assert_same(
        op.finalize(op.from_arrow(merged.column("ir"))).to_pylist(),
        op.finalize(python_merged).to_pylist(),
        exact=True,
    )


def assert_same(left: list[Any], right: list[Any], exact: bool, rel: float = 0.0) -> None:
    if exact:
        assert left == right
        return
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        numbers = isinstance(a, int | float) and isinstance(b, int | float)
        float_lists = isinstance(a, list) and bool(a) and isinstance(a[0], float)
        if numbers or float_lists:
            assert a == pytest.approx(b, rel=rel)
        else:
            assert a == b


def test_every_operator_has_a_case() -> None:
    assert {name for name, _, _ in CASES} == set(OPERATORS)
