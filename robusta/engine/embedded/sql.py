"""A spec's sources and query in DuckDB: Spark SQL transpiled by sqlglot, results as Arrow.

Every source a query names becomes a DuckDB view of that name, so the transpiled query runs
unchanged. The connection's time zone is UTC. Declared ``TIMESTAMP`` columns (Spark: an
instant, shown in the session time zone, UTC here) are views' ``TIMESTAMP`` columns holding
UTC wall time, so casting them to text gives Spark's text; the spec's timestamp column comes
back as ``timestamp[us, UTC]``.

CSV fields are read as text and converted with ``TRY_CAST``, so a malformed field becomes
null as in Spark's default PERMISSIVE mode. Formats other than csv and parquet are not
supported by the embedded engine yet (:class:`UnsupportedSourceError`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from robusta.errors import RobustaError
from robusta.spec.model import SourceConfig
from robusta.spec.types import Column, DataType

TS_TYPE = pa.timestamp("us", tz="UTC")
# CSV options with a DuckDB equivalent (Spark name -> read_csv parameter); others are refused.
_CSV_OPTIONS = {"sep": "delim", "delimiter": "delim", "quote": "quote", "escape": "escape"}
_IGNORED_OPTIONS = {"recursivefilelookup"}  # folders are always read recursively here


class EmbeddedSourceError(RobustaError, OSError):
    """A source cannot be read by the embedded engine."""


class UnsupportedSourceError(EmbeddedSourceError, NotImplementedError):
    """A source format or option the embedded engine does not support yet."""


class TranspileError(RobustaError, ValueError):
    """The spec's Spark SQL cannot be carried over to DuckDB."""


def connect() -> Any:
    """A DuckDB connection in UTC (imported here: DuckDB is only needed by this engine)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def transpile(query: str) -> str:
    """The spec's query (Spark SQL) as DuckDB SQL."""
    try:
        statements = sqlglot.transpile(query, read="spark", write="duckdb")
    except SqlglotError as exc:
        raise TranspileError(f"cannot carry the query over to DuckDB: {exc}") from exc
    if len(statements) != 1:
        raise TranspileError(f"the query must be one statement, found {len(statements)}")
    return statements[0]


def duckdb_type(column: Column) -> str:
    """The DuckDB type of a declared (Spark DDL) column; TIMESTAMP is UTC wall time."""
    if column.type is DataType.TIMESTAMP:
        return "TIMESTAMP"
    built = exp.DataType.build(column.sql_type, dialect="spark")
    if built.this == exp.DataType.Type.DECIMAL and not built.expressions:
        return "DECIMAL(10, 0)"  # Spark's default precision; DuckDB's is (18, 3)
    return built.sql("duckdb")


def register_sources(
    con: Any, sources: Iterable[SourceConfig], files: Mapping[str, Sequence[Path]] | None = None
) -> None:
    """Create (or replace) a view named like each source: over ``files[name]`` when given
    (a stream's micro-batch; none: no rows), else over every file the source holds."""
    for source in sources:
        _check_format(source)
        if files is None:
            sql = source_sql(source, landed_files(source))
        elif files.get(source.name):
            sql = source_sql(source, files[source.name])
        else:
            sql = _no_rows_sql(source)
        con.execute(f"CREATE OR REPLACE VIEW {_ident(source.name)} AS {sql}")


def source_sql(source: SourceConfig, files: Sequence[Path]) -> str:
    """A SELECT reading ``files`` of ``source`` in its declared columns."""
    _check_format(source)
    listed = "[" + ", ".join(_literal(str(f)) for f in files) + "]"
    if source.format == "parquet":
        if source.schema is None:
            return f"SELECT * FROM read_parquet({listed})"
        return f"SELECT {_typed(source.schema, 'CAST')} FROM read_parquet({listed})"
    if source.schema is None:
        raise EmbeddedSourceError(
            f'source "{source.name}": a csv source needs a declared schema in robusta.yaml '
            '(schema: "col TYPE, ...")'
        )
    params = _csv_params(source)
    text = ", ".join(f"{_literal(c.name)}: 'VARCHAR'" for c in source.schema)
    return (
        f"SELECT {_typed(source.schema, 'TRY_CAST')} FROM read_csv({listed}, "
        f"columns = {{{text}}}, auto_detect = false, {params})"
    )


def _check_format(source: SourceConfig) -> None:
    if source.format not in ("csv", "parquet"):
        raise UnsupportedSourceError(
            f'source "{source.name}": format {source.format} is not supported by the embedded '
            "engine yet (csv and parquet are); use the Spark engine for it"
        )


def run_query(con: Any, query: str, timestamp: str) -> pa.Table:
    """The transpiled ``query``'s rows as Arrow, ``timestamp`` as ``timestamp[us, UTC]``."""
    sql = transpile(query)
    inner = f"SELECT * REPLACE (CAST({_ident(timestamp)} AS TIMESTAMP) AS {_ident(timestamp)})"
    table: pa.Table = con.sql(f"{inner} FROM ({sql}) AS __q").to_arrow_table()
    index = table.schema.get_field_index(timestamp)
    # A naive TIMESTAMP here is UTC wall time: labelling it UTC keeps its microseconds.
    return table.set_column(index, timestamp, pc.cast(table.column(index), TS_TYPE))


def _typed(schema: tuple[Column, ...], cast: str) -> str:
    parts = []
    for column in schema:
        name = _ident(column.name)
        if column.type is DataType.TIMESTAMP and cast == "TRY_CAST":
            # Text with an offset is converted to UTC; text without one is UTC already.
            value = f"CAST(TRY_CAST({name} AS TIMESTAMPTZ) AS TIMESTAMP)"
        else:
            value = f"{cast}({name} AS {duckdb_type(column)})"
        parts.append(f"{value} AS {name}")
    return ", ".join(parts)


def _csv_params(source: SourceConfig) -> str:
    params = {"header": "false"}
    for key, value in source.options.items():
        lowered = key.lower()
        if lowered == "header":
            params["header"] = "true" if str(value).lower() == "true" else "false"
        elif lowered in _CSV_OPTIONS:
            params[_CSV_OPTIONS[lowered]] = _literal(str(value))
        elif lowered not in _IGNORED_OPTIONS:
            raise UnsupportedSourceError(
                f'source "{source.name}": csv option "{key}" is not supported by the embedded '
                f"engine yet (supported: header, {', '.join(_CSV_OPTIONS)})"
            )
    return ", ".join(f"{k} = {v}" for k, v in params.items())


def landed_files(source: SourceConfig) -> list[Path]:
    """The files Spark reads: the path itself, or every file under the folder except hidden
    ones (names starting with ``.`` or ``_``, e.g. files being landed)."""
    path = source.path
    if path is None or not path.exists():
        raise EmbeddedSourceError(
            f'source "{source.name}": {path} does not exist; write data there or fix its '
            "path in robusta.yaml"
        )
    files = [path] if path.is_file() else visible_files(path)
    if not files:
        raise EmbeddedSourceError(f'source "{source.name}": no files under {path}')
    return files


def visible_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` but hidden ones (a name part starting with . or _)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )


def _no_rows_sql(source: SourceConfig) -> str:
    """A source's declared columns without rows (a stream's batch with no file of it)."""
    if source.schema is None:
        raise EmbeddedSourceError(
            f'source "{source.name}" has no schema: a stream needs one declared in robusta.yaml '
            '(schema: "col TYPE, ...")'
        )
    nulls = ", ".join(
        f"CAST(NULL AS {duckdb_type(c)}) AS {_ident(c.name)}" for c in source.schema
    )
    return f"SELECT {nulls} WHERE false"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def monitor_sql(source: SourceConfig) -> str:
    """A monitored source's timestamp and segment columns (as text), for event counts."""
    monitor = source.monitor
    if monitor is None:
        raise ValueError(f"source {source.name} has no monitor")
    ts = _ident(monitor.timestamp)
    columns = [f"CAST({ts} AS TIMESTAMP) AS {ts}"]
    columns += [f"CAST({_ident(s)} AS VARCHAR) AS {_ident(s)}" for s in monitor.segments]
    return f"SELECT {', '.join(columns)} FROM {_ident(source.name)}"
