"""A spec's Spark SQL in DuckDB, with Spark's results.

DuckDB SQL is built here and in the two modules beside it: ``sources.py`` (the sources'
views) and ``rewrite.py`` (Spark's meaning carried over).

The query is parsed as Spark SQL, qualified and typed against the sources' views, checked
(``spec.embedded_sql``: a construct not known to match Spark is refused, located), rewritten
where DuckDB's meaning differs from Spark 4's (ANSI mode, the default), then written as DuckDB
SQL by sqlglot. The rewrites are in ``rewrite.py``.

Sources are read by ``sources.py`` (csv, json, parquet, iceberg, python); the connection's time
zone is UTC and the spec's timestamp column comes back as ``timestamp[us, UTC]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from robusta.engine.embedded.rewrite import MACROS, rewrite
from robusta.engine.embedded.sources import (
    EmbeddedSourceError,
    UnsupportedSourceError,
    duckdb_type,
    ident,
    landed_files,
    register_sources,
    source_sql,
    visible_files,
)
from robusta.errors import RobustaError
from robusta.spec.embedded_sql import embedded_problems, typed_query
from robusta.spec.model import SourceConfig
from robusta.spec.sql import QueryProblem, output_names

__all__ = [
    "EmbeddedSourceError",
    "QueryError",
    "TranspileError",
    "UnsupportedSourceError",
    "connect",
    "duckdb_type",
    "landed_files",
    "monitor_sql",
    "query_table",
    "register_sources",
    "run_query",
    "source_sql",
    "transpile",
    "view_schemas",
    "visible_files",
]

TS_TYPE = pa.timestamp("us", tz="UTC")


class TranspileError(RobustaError, ValueError):
    """The spec's Spark SQL cannot be run faithfully in DuckDB."""

    def __init__(self, message: str, problem: QueryProblem | None = None) -> None:
        super().__init__(message)
        self.problem = problem


class QueryError(RobustaError, RuntimeError):
    """The query stopped on a value (a malformed CAST, a zero divisor, ...), as on Spark."""


def connect() -> Any:
    """A DuckDB connection in UTC with Spark's helper macros (DuckDB is only needed here)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for head, body in MACROS.items():
        con.execute(f"CREATE MACRO {head} AS {body}")
    return con


def view_schemas(con: Any, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """The Spark types of the columns of views ``names`` (for typing the query)."""
    out = {}
    for name in names:
        rows = con.sql(f"DESCRIBE {ident(name)}").fetchall()
        out[name] = {str(r[0]): _spark_type_name(str(r[1])) for r in rows}
    return out


def _spark_type_name(duck: str) -> str:
    if duck.upper() == "TIMESTAMP":  # UTC wall time: Spark's TIMESTAMP
        return "TIMESTAMP"
    if duck.upper() == "HUGEINT":
        return "DECIMAL(38, 0)"
    return str(exp.DataType.build(duck, dialect="duckdb").sql("spark"))


def transpile(query: str, schemas: Mapping[str, Mapping[str, str]]) -> str:
    """The spec's query (Spark SQL over sources typed by ``schemas``) as DuckDB SQL giving
    Spark's rows; :class:`TranspileError` (with the first problem) when it cannot."""
    return _transpiled(query, schemas)[0]


def _transpiled(
    query: str, schemas: Mapping[str, Mapping[str, str]]
) -> tuple[str, list[str]]:
    problems = embedded_problems(query, schemas)
    if problems:
        raise TranspileError(problems[0].message, problems[0])
    tree = typed_query(query, schemas)
    if tree is None:
        raise TranspileError("the query cannot be typed against its sources; run robusta validate")
    original = sqlglot.parse_one(query, read="spark")
    if not isinstance(original, exp.Query):
        raise TranspileError("the query must be one SELECT statement; run robusta validate")
    originals = {c.lower(): c for cols in schemas.values() for c in cols}
    names = output_names(original, tree, originals)
    rewrite(tree)
    return tree.sql(dialect="duckdb"), names


def query_table(
    con: Any, query: str, sources: Iterable[str], timestamp: str | None = None
) -> pa.Table:
    """The query's rows as Arrow (over the views of ``sources``), its output columns named as
    the query names them; ``timestamp`` (if given) cast to TIMESTAMP."""
    sql, names = _transpiled(query, view_schemas(con, sources))
    stamp = (timestamp or "").lower()
    columns = [
        f"CAST(#{i} AS TIMESTAMP) AS {ident(n)}" if n.lower() == stamp else f"#{i} AS {ident(n)}"
        for i, n in enumerate(names, start=1)
    ]
    import duckdb

    try:
        table: pa.Table = con.sql(
            f"SELECT {', '.join(columns)} FROM ({sql}) AS __q"
        ).to_arrow_table()
    except duckdb.Error as exc:  # a value Spark refuses too (ANSI), or one DuckDB cannot carry
        first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
        raise QueryError(f"the query failed on engine embedded: {first}") from exc
    return table


def run_query(con: Any, query: str, timestamp: str, sources: Iterable[str]) -> pa.Table:
    """The query's rows (:func:`query_table`), ``timestamp`` as ``timestamp[us, UTC]``."""
    table = query_table(con, query, sources, timestamp)
    index = next(i for i, n in enumerate(table.column_names) if n.lower() == timestamp.lower())
    # A naive TIMESTAMP here is UTC wall time: labelling it UTC keeps its microseconds.
    name = table.column_names[index]
    return table.set_column(index, name, pc.cast(table.column(index), TS_TYPE))


def monitor_sql(source: SourceConfig) -> str:
    """A monitored source's timestamp and segment columns (as text), for event counts."""
    monitor = source.monitor
    if monitor is None:
        raise ValueError(f"source {source.name} has no monitor")
    ts = ident(monitor.timestamp)
    columns = [f"CAST({ts} AS TIMESTAMP) AS {ts}"]
    columns += [f"CAST({ident(s)} AS VARCHAR) AS {ident(s)}" for s in monitor.segments]
    return f"SELECT {', '.join(columns)} FROM {ident(source.name)}"
