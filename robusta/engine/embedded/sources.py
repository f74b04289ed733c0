"""A spec's sources as DuckDB views, read as Spark reads them (``engine.spark.sources``).

Every source a query names becomes a view of that name, in its declared columns. Declared
``TIMESTAMP`` columns (Spark: an instant, shown in the session time zone, UTC here) are
``TIMESTAMP`` columns holding UTC wall time, so their text is Spark's text.

- csv: fields read as text and converted with ``TRY_CAST``: a malformed field becomes null, as
  in Spark's default PERMISSIVE mode.
- json: JSON lines, each field converted as Spark's JSON reader does (a value of another JSON
  type becomes null, a line that is not JSON a row of nulls, a top-level array one row per
  element, blank lines nothing).
- parquet: DuckDB's reader, cast to the declared schema.
- iceberg: a pyiceberg scan of the table in the project's catalog, handed over as Arrow.
- python: the ``module:function`` loader (``engine.loaders``), called with no SparkSession,
  returning a pyarrow Table or a pandas DataFrame.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from robusta.engine.loaders import SourceError, arrow_of, call_loader, iceberg_scan, returned
from robusta.spec.model import ProjectConfig, SourceConfig
from robusta.spec.types import Column, DataType

# CSV options with a DuckDB equivalent (Spark name -> read_csv parameter); others are refused.
_CSV_OPTIONS = {"sep": "delim", "delimiter": "delim", "quote": "quote", "escape": "escape"}
_IGNORED_OPTIONS = {"recursivefilelookup"}  # folders are always read recursively here
_JSON_OPTIONS = _IGNORED_OPTIONS | {"mode"}  # mode: PERMISSIVE only (checked)
_NUMBERS = ("'BIGINT'", "'UBIGINT'", "'DOUBLE'")
_NAN = "('NaN', '+NaN', '-NaN')"
_INF = "('Infinity', '+Infinity', 'Inf', '+Inf')"


class EmbeddedSourceError(SourceError):
    """A source cannot be read by the embedded engine."""


class UnsupportedSourceError(EmbeddedSourceError, NotImplementedError):
    """A source option the embedded engine does not support."""


def duckdb_type(column: Column) -> str:
    """The DuckDB type of a declared (Spark DDL) column; TIMESTAMP is UTC wall time."""
    if column.type is DataType.TIMESTAMP:
        return "TIMESTAMP"
    built = exp.DataType.build(column.sql_type, dialect="spark")
    if built.this == exp.DataType.Type.DECIMAL and not built.expressions:
        return "DECIMAL(10, 0)"  # Spark's default precision; DuckDB's is (18, 3)
    return built.sql("duckdb")


def register_sources(
    con: Any,
    sources: Iterable[SourceConfig],
    files: Mapping[str, Sequence[Path]] | None = None,
    config: ProjectConfig | None = None,
) -> None:
    """Create (or replace) a view named like each source: a file source over ``files[name]``
    when given (a stream's micro-batch; none: no rows), else over every file it holds
    (``config``: for iceberg sources, the project's catalog)."""
    for source in sources:
        if source.format in ("iceberg", "python"):
            _register_arrow(con, source, config)
            continue
        if files is None:
            sql = source_sql(source, landed_files(source))
        elif files.get(source.name):
            sql = source_sql(source, files[source.name])
        else:
            sql = _no_rows_sql(source)
        if source.schema is None:
            sql = _naive_timestamps(con, sql)
        con.execute(f"CREATE OR REPLACE VIEW {ident(source.name)} AS {sql}")


def _register_arrow(con: Any, source: SourceConfig, config: ProjectConfig | None) -> None:
    con.register(_arrow_name(source), _arrow_source(source, config))
    select = _typed(source.schema, "CAST") if source.schema is not None else "*"
    con.execute(
        f"CREATE OR REPLACE VIEW {ident(source.name)} AS SELECT {select} FROM "
        f"{ident(_arrow_name(source))}"
    )


def source_sql(source: SourceConfig, files: Sequence[Path]) -> str:
    """A SELECT reading ``files`` of a file source (csv, json, parquet) in its declared
    columns."""
    if source.format not in ("csv", "json", "parquet"):
        raise UnsupportedSourceError(
            f'source "{source.name}": format {source.format} is read from Arrow, not files'
        )
    listed = "[" + ", ".join(literal(str(f)) for f in files) + "]"
    if source.format == "parquet":
        if source.schema is None:
            return f"SELECT * FROM read_parquet({listed})"
        return f"SELECT {_typed(source.schema, 'CAST')} FROM read_parquet({listed})"
    if source.schema is None:
        raise EmbeddedSourceError(
            f'source "{source.name}": a {source.format} source needs a declared schema in '
            'robusta.yaml (schema: "col TYPE, ...")'
        )
    if source.format == "json":
        return _json_sql(source, source.schema, listed)
    params = _csv_params(source)
    text = ", ".join(f"{literal(c.name)}: 'VARCHAR'" for c in source.schema)
    return (
        f"SELECT {_typed(source.schema, 'TRY_CAST')} FROM read_csv({listed}, "
        f"columns = {{{text}}}, auto_detect = false, {params})"
    )


def _no_rows_sql(source: SourceConfig) -> str:
    """A source's declared columns without rows (a stream's batch with no file of it)."""
    if source.schema is None:
        raise EmbeddedSourceError(
            f'source "{source.name}" has no schema: a stream needs one declared in robusta.yaml '
            '(schema: "col TYPE, ...")'
        )
    nulls = ", ".join(f"CAST(NULL AS {duckdb_type(c)}) AS {ident(c.name)}" for c in source.schema)
    return f"SELECT {nulls} WHERE false"


def _typed(schema: tuple[Column, ...], cast: str) -> str:
    parts = []
    for column in schema:
        name = ident(column.name)
        if column.type is DataType.TIMESTAMP and cast == "TRY_CAST":
            value = _text_to_timestamp(name)
        else:
            value = f"{cast}({name} AS {duckdb_type(column)})"
        parts.append(f"{value} AS {name}")
    return ", ".join(parts)


def _text_to_timestamp(text: str) -> str:
    # Text with an offset is converted to UTC; text without one is UTC already.
    return f"CAST(TRY_CAST({text} AS TIMESTAMPTZ) AS TIMESTAMP)"


def _json_sql(source: SourceConfig, schema: tuple[Column, ...], listed: str) -> str:
    """JSON lines as Spark's reader (PERMISSIVE, the declared schema) sees them."""
    for key, value in source.options.items():
        lowered = key.lower()
        if lowered not in _JSON_OPTIONS or (
            lowered == "mode" and str(value).upper() != "PERMISSIVE"
        ):
            raise UnsupportedSourceError(
                f'source "{source.name}": json option {key}: {value} is not supported by engine '
                "embedded; use engine: spark"
            )
    lines = (
        "SELECT CASE WHEN json_valid(line) THEN line END::JSON AS v FROM (SELECT "
        "rtrim(unnest(string_split(content, chr(10))), chr(13)) AS line "
        f"FROM read_text({listed})) WHERE trim(line) <> ''"
    )
    # An object is a row; an array, one row per element; any other line a row of nulls.
    records = (
        "SELECT CASE WHEN json_type(v) = 'OBJECT' THEN v END AS j FROM __lines "
        "WHERE v IS NULL OR json_type(v) <> 'ARRAY' "
        "UNION ALL SELECT unnest(json_extract(v, '$[*]')) AS j FROM __lines "
        "WHERE json_type(v) = 'ARRAY'"
    )
    fields = ", ".join(
        f"{_json_field(source, c, 'json_extract(j, ' + literal(_json_path(c.name)) + ')')} "
        f"AS {ident(c.name)}"
        for c in schema
    )
    return f"WITH __lines AS ({lines}), __records AS ({records}) SELECT {fields} FROM __records"


def _json_path(name: str) -> str:
    return '$."' + name.replace('"', '\\"') + '"'


def _json_field(source: SourceConfig, column: Column, value: str) -> str:
    """One JSON value converted to the declared type as Spark's JacksonParser does."""
    kind = f"json_type({value})"
    text = f"json_extract_string({value}, '$')"
    target = duckdb_type(column)
    base = exp.DataType.build(column.sql_type, dialect="spark").this
    T = exp.DataType.Type
    if base in (T.VARCHAR, T.TEXT, T.CHAR):
        refused = literal(
            f'source "{source.name}": column {column.name} holds a JSON object, array or '
            "fraction, whose text Spark keeps as written; read it with engine: spark"
        )
        return (
            f"CASE WHEN {kind} = 'VARCHAR' THEN {text} WHEN {kind} IN ('BIGINT', 'UBIGINT', "
            f"'BOOLEAN') THEN {value}::VARCHAR WHEN {kind} IS NULL OR {kind} = 'NULL' THEN NULL "
            f"ELSE error({refused}) END"
        )
    if base in (T.TINYINT, T.SMALLINT, T.INT, T.BIGINT):
        return f"CASE WHEN {kind} IN ('BIGINT', 'UBIGINT') THEN TRY_CAST({value} AS {target}) END"
    if base in (T.DOUBLE, T.FLOAT):
        return (
            f"CASE WHEN {kind} IN ({', '.join(_NUMBERS)}) THEN TRY_CAST({value} AS {target}) "
            f"WHEN {kind} = 'VARCHAR' THEN CASE WHEN {text} IN {_NAN} THEN 'NaN'::{target} "
            f"WHEN {text} IN {_INF} THEN 'Infinity'::{target} WHEN {text} IN "
            f"('-Infinity', '-Inf') THEN '-Infinity'::{target} END END"
        )
    if base == T.DECIMAL:
        return f"CASE WHEN {kind} IN ({', '.join(_NUMBERS)}) THEN TRY_CAST({value} AS {target}) END"
    if base == T.BOOLEAN:
        return f"CASE WHEN {kind} = 'BOOLEAN' THEN {value}::BOOLEAN END"
    if column.type is DataType.TIMESTAMP:
        return (
            f"CASE WHEN {kind} = 'VARCHAR' THEN {_text_to_timestamp(text)} WHEN {kind} IN "
            f"('BIGINT', 'UBIGINT') THEN TRY_CAST(make_timestamp(TRY_CAST({value} AS BIGINT) * "
            "1000000) AS TIMESTAMP) END"
        )
    if base == T.DATE:
        return (
            f"CASE WHEN {kind} = 'VARCHAR' THEN coalesce(TRY_CAST({text} AS DATE), "
            f"CAST({_text_to_timestamp(text)} AS DATE)) END"
        )
    raise UnsupportedSourceError(
        f'source "{source.name}": json column {column.name} of type {column.sql_type} is not '
        "supported by engine embedded; use engine: spark"
    )


def _arrow_source(source: SourceConfig, config: ProjectConfig | None) -> pa.Table:
    if source.format == "iceberg":
        if config is None:
            raise EmbeddedSourceError(f'source "{source.name}": iceberg needs the project config')
        table = _iceberg_table(source, config)
    else:
        table = _python_table(source)
    return _normal_arrow(source, table)


def _iceberg_table(source: SourceConfig, config: ProjectConfig) -> pa.Table:
    scan, _ = iceberg_scan(source, config.offline)
    arrow: pa.Table = scan.to_arrow()
    return arrow


def _python_table(source: SourceConfig) -> pa.Table:
    frame = call_loader(source, None)
    table = arrow_of(frame)
    if table is None:
        raise EmbeddedSourceError(
            returned(source, frame, "a pyarrow Table or a pandas DataFrame on engine embedded")
        )
    return table


def _normal_arrow(source: SourceConfig, table: pa.Table) -> pa.Table:
    """Timestamps as UTC wall time in microseconds (Spark's precision); declared columns
    present."""
    if source.schema is not None:
        have = {n.lower(): n for n in table.column_names}
        missing = [c.name for c in source.schema if c.name.lower() not in have]
        if missing:
            raise EmbeddedSourceError(
                f'source "{source.name}": declared column(s) {", ".join(missing)} missing from '
                f"the data (it has {', '.join(table.column_names)}); fix the schema in "
                "robusta.yaml"
            )
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            naive = pa.timestamp("us")
            column = table.column(i)
            if field.type.tz is not None:
                column = pc.cast(column, pa.timestamp(field.type.unit, tz="UTC"))
            column = column.cast(pa.timestamp(field.type.unit)).cast(naive, safe=False)
            table = table.set_column(i, pa.field(field.name, naive), column)
    return table


def _naive_timestamps(con: Any, sql: str) -> str:
    """A source without a declared schema: its TIMESTAMPTZ columns as UTC wall time."""
    described = con.sql(f"DESCRIBE {sql}").fetchall()
    zoned = [row[0] for row in described if str(row[1]).upper().startswith("TIMESTAMP WITH")]
    if not zoned:
        return sql
    replace = ", ".join(f"CAST({ident(c)} AS TIMESTAMP) AS {ident(c)}" for c in zoned)
    return f"SELECT * REPLACE ({replace}) FROM ({sql}) AS __s"


def _arrow_name(source: SourceConfig) -> str:
    return f"__arrow_{source.name}"


def _csv_params(source: SourceConfig) -> str:
    params = {"header": "false"}
    for key, value in source.options.items():
        lowered = key.lower()
        if lowered == "header":
            params["header"] = "true" if str(value).lower() == "true" else "false"
        elif lowered in _CSV_OPTIONS:
            params[_CSV_OPTIONS[lowered]] = literal(str(value))
        elif lowered not in _IGNORED_OPTIONS:
            raise UnsupportedSourceError(
                f'source "{source.name}": csv option "{key}" is not supported by engine '
                f"embedded (supported: header, {', '.join(_CSV_OPTIONS)}); use engine: spark"
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


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
