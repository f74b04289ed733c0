"""Sources read by the embedded engine as Spark reads them: JSON lines (PERMISSIVE, the declared
schema enforced), an Iceberg table of the project's catalog, python loaders (pyarrow or pandas,
called without a SparkSession). Fast tier: the embedded rows are Spark's (as observed on Spark
4); ``spark`` tier: both engines give identical rows."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from robusta.engine.embedded.sources import EmbeddedSourceError
from robusta.engine.embedded.sql import connect, query_table, register_sources
from robusta.engine.loaders import SourceError
from robusta.spec.config import load_config
from robusta.spec.model import ProjectConfig
from tests.engine.test_sql_corpus import normal

JSON_DDL = "s STRING, i INT, d DOUBLE, ts TIMESTAMP, f BOOLEAN, dt DATE, b BIGINT"
# Each line tries one way Spark's JSON reader converts (or nulls) a value.
JSON_LINES = """\
{"s": "a", "i": 1, "d": 1.5, "ts": "2024-01-01 10:00:00", "f": true, "dt": "2024-01-02", "b": 5}
{"s": 12, "i": "7", "d": "NaN", "ts": "2024-01-01T10:00:00Z", "f": "true", "dt": "2024-01-02T05:00:00", "b": 1.5}
{"s": true, "i": 2.0, "d": 3, "ts": 1704103200, "f": 1, "dt": 5, "b": 99999999999}
not json at all
{"s": "b", "i": 2147483648, "d": "abc", "ts": "garbage", "f": false, "dt": "2024-13-01", "b": -3}

{"s": null, "I": 3, "extra": 1, "ts": "2024-01-01 10:00:00+02:00"}
[{"s": "in array", "i": -4}, {"s": "second", "d": "-Infinity"}]
{"s": "c", "i": -0, "d": -0.0, "ts": "2024-01-01 10:00:00.123456"}
{}
"""  # noqa: E501
UTC_10 = datetime(2024, 1, 1, 10)
JSON_ROWS = [  # what Spark 4 reads (PERMISSIVE; a wrong-typed field alone is null)
    ("a", 1, 1.5, UTC_10, True, date(2024, 1, 2), 5),
    ("12", None, float("nan"), UTC_10, None, date(2024, 1, 2), None),
    ("true", None, 3.0, UTC_10, None, None, 99999999999),
    (None, None, None, None, None, None, None),
    ("b", None, None, None, False, None, -3),
    (None, None, None, datetime(2024, 1, 1, 8), None, None, None),
    ("in array", -4, None, None, None, None, None),
    ("second", None, -float("inf"), None, None, None, None),
    ("c", 0, -0.0, datetime(2024, 1, 1, 10, 0, 0, 123456), None, None, None),
    (None, None, None, None, None, None, None),
]
PY_DDL = "user_id STRING, qty INT, amount DOUBLE, ts TIMESTAMP"
LOADERS = """\
import pandas as pd
import pyarrow as pa


def from_pandas():
    return pd.DataFrame({
        "user_id": ["u1", None, "u3"],
        "qty": [1, 2, 3],  # int64: the schema says INT
        "amount": [1.5, None, -2.25],
        "ts": pd.to_datetime(
            ["2024-01-01 10:00:00.123456789", "2024-01-02", None], utc=True, format="ISO8601"
        ),
        "ignored": ["x", "y", "z"],
    })


def from_arrow(spark):
    assert spark is None or hasattr(spark, "sql")
    return pa.table({
        "user_id": ["u1", "u2"],
        "qty": pa.array([4, None], pa.int32()),
        "amount": [0.5, 7.0],
        "ts": pa.array([0, -1_500_000], pa.timestamp("us", tz="Europe/Paris")),
    })


def not_a_frame():
    return [1, 2, 3]
"""
ICE_ROWS = pa.table(
    {
        "item_id": ["i1", "i2", None],
        "n": pa.array([1, None, 3], pa.int64()),
        "ts": pa.array([1_704_103_200_000_000, None, -1], pa.timestamp("us", tz="UTC")),
    }
)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectConfig]:
    root = tmp_path_factory.mktemp("sources")
    (root / "json").mkdir()
    (root / "json" / "part-1.json").write_text(JSON_LINES)
    (root / "json" / "_landing.json").write_text('{"s": "hidden"}\n')  # skipped, as on Spark
    (root / "corpus_loaders.py").write_text(LOADERS)
    (root / "robusta.yaml").write_text(
        textwrap.dedent(f"""\
        project: sources
        engine: embedded
        sources:
          j: {{format: json, path: json, schema: "{JSON_DDL}"}}
          pandas_events: {{format: python, loader: "corpus_loaders:from_pandas", schema: "{PY_DDL}"}}
          arrow_events: {{format: python, loader: "corpus_loaders:from_arrow", schema: "{PY_DDL}"}}
          bad_loader: {{format: python, loader: "corpus_loaders:not_a_frame", schema: "a INT"}}
          items: {{format: iceberg, table: robusta.items}}
          typed_items: {{format: iceberg, table: robusta.items, schema: "item_id STRING, n INT"}}
        """)  # noqa: E501
    )
    loaded, problems = load_config(root / "robusta.yaml")
    assert loaded is not None, problems
    from robusta.store.catalog import open_catalog

    catalog = open_catalog(loaded.offline)
    catalog.create_table("robusta.items", schema=ICE_ROWS.schema).append(ICE_ROWS)
    sys.path.insert(0, str(root))
    yield loaded
    sys.path.remove(str(root))


def embedded(config: ProjectConfig, source: str) -> pa.Table:
    con = connect()
    register_sources(con, [config.sources[source]], config=config)
    return query_table(con, f"SELECT * FROM {source}", [source])


def rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in table.to_pylist()]


def test_json_lines_read_as_spark_reads_them(config: ProjectConfig) -> None:
    got = embedded(config, "j")
    assert got.schema.types == [
        pa.string(), pa.int32(), pa.float64(), pa.timestamp("us"), pa.bool_(), pa.date32(),
        pa.int64(),
    ]  # fmt: skip
    assert normal(got)[1] == normal(pa.Table.from_pylist(
        [dict(zip(got.column_names, r, strict=True)) for r in JSON_ROWS], schema=got.schema
    ))[1]  # fmt: skip


def test_json_text_spark_keeps_as_written_is_refused(tmp_path: Path) -> None:
    """A JSON object or fraction read into a STRING column: Spark keeps its text as written,
    which DuckDB no longer has, so the read stops with what to do."""
    (tmp_path / "a.json").write_text('{"s": {"x":  1}}\n')
    (tmp_path / "robusta.yaml").write_text(
        'project: p\nsources:\n  j: {format: json, path: a.json, schema: "s STRING"}\n'
    )
    loaded, _ = load_config(tmp_path / "robusta.yaml")
    assert loaded is not None
    with pytest.raises(Exception, match="holds a JSON object, array or fraction"):
        embedded(loaded, "j")


def test_python_loaders_without_a_spark_session(config: ProjectConfig) -> None:
    got = embedded(config, "pandas_events")
    assert got.column_names == ["user_id", "qty", "amount", "ts"]  # declared, in order
    assert got.schema.field("qty").type == pa.int32()
    assert rows(got) == [
        ("u1", 1, 1.5, datetime(2024, 1, 1, 10, 0, 0, 123456)),  # nanoseconds truncated
        (None, 2, None, datetime(2024, 1, 2)),
        ("u3", 3, -2.25, None),
    ]
    arrow = embedded(config, "arrow_events")  # takes a parameter: called with None
    assert rows(arrow) == [
        ("u1", 4, 0.5, datetime(1970, 1, 1)),  # an instant: UTC wall time
        ("u2", None, 7.0, datetime(1969, 12, 31, 23, 59, 58, 500000)),
    ]


def test_a_loader_returning_something_else_is_a_clear_error(config: ProjectConfig) -> None:
    with pytest.raises(EmbeddedSourceError, match="must return a pyarrow Table or a pandas"):
        embedded(config, "bad_loader")
    assert issubclass(EmbeddedSourceError, SourceError)


def test_iceberg_table_of_the_project_catalog(config: ProjectConfig) -> None:
    got = embedded(config, "items")
    assert rows(got) == [
        ("i1", 1, datetime(2024, 1, 1, 10)),
        ("i2", None, None),
        (None, 3, datetime(1969, 12, 31, 23, 59, 59, 999999)),
    ]
    typed = embedded(config, "typed_items")
    assert typed.schema.types == [pa.string(), pa.int32()]


@pytest.mark.spark
@pytest.mark.parametrize("source", ["j", "pandas_events", "arrow_events", "items", "typed_items"])
def test_both_engines_read_the_same_rows(spark: Any, config: ProjectConfig, source: str) -> None:
    from robusta.engine.spark.sources import read_source

    theirs = normal(read_source(spark, config, config.sources[source]).toArrow())
    mine = normal(embedded(config, source))
    assert mine == theirs, (mine, theirs)


@pytest.mark.spark
def test_spark_refuses_a_bad_loader_return_too(spark: Any, config: ProjectConfig) -> None:
    from robusta.engine.spark.sources import read_source

    with pytest.raises(SourceError, match="must return a Spark DataFrame, a pyarrow Table"):
        read_source(spark, config, config.sources["bad_loader"])
