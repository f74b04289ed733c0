"""Column schemas: Spark DDL and Arrow schemas to logical types, via sqlglot."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from robusta.spec.datatypes import ENTITY_TYPES, DataType

__all__ = ["ENTITY_TYPES", "Column", "DataType", "parse_schema", "schema_from_arrow"]


_T = exp.DataType.Type
_FROM_SQLGLOT: dict[object, DataType] = {
    _T.BOOLEAN: DataType.BOOLEAN,
    _T.TINYINT: DataType.INT,
    _T.SMALLINT: DataType.INT,
    _T.INT: DataType.INT,
    _T.BIGINT: DataType.BIGINT,
    _T.FLOAT: DataType.FLOAT,
    _T.DOUBLE: DataType.DOUBLE,
    _T.DECIMAL: DataType.DECIMAL,
    _T.TEXT: DataType.STRING,
    _T.VARCHAR: DataType.STRING,
    _T.CHAR: DataType.STRING,
    _T.BINARY: DataType.BINARY,
    _T.VARBINARY: DataType.BINARY,
    _T.DATE: DataType.DATE,
    _T.TIMESTAMP: DataType.TIMESTAMP,
    _T.TIMESTAMPTZ: DataType.TIMESTAMP,
    _T.TIMESTAMPLTZ: DataType.TIMESTAMP,
    _T.TIMESTAMPNTZ: DataType.TIMESTAMP,
    _T.DATETIME: DataType.TIMESTAMP,
    _T.UNKNOWN: DataType.UNKNOWN,
    _T.NULL: DataType.UNKNOWN,
}


def from_sqlglot(data_type: exp.DataType | None) -> DataType:
    """Map a sqlglot type (as annotated on an expression) to a logical type."""
    if data_type is None:
        return DataType.UNKNOWN
    return _FROM_SQLGLOT.get(data_type.this, DataType.OTHER)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: DataType
    sql_type: str  # as written (Spark DDL), handed to sqlglot for type inference


@dataclass(frozen=True, slots=True)
class SchemaSyntaxError(Exception):
    """Internal: a DDL schema string does not parse; offset is 0-based into the string."""

    message: str
    offset: int


_ARROW_TO_SQL: tuple[tuple[str, str], ...] = (
    ("is_boolean", "BOOLEAN"),
    ("is_int8", "TINYINT"),
    ("is_int16", "SMALLINT"),
    ("is_int32", "INT"),
    ("is_int64", "BIGINT"),
    ("is_float32", "FLOAT"),
    ("is_float64", "DOUBLE"),
    ("is_string", "STRING"),
    ("is_large_string", "STRING"),
    ("is_binary", "BINARY"),
    ("is_large_binary", "BINARY"),
    ("is_date32", "DATE"),
    ("is_timestamp", "TIMESTAMP"),
)


def schema_from_arrow(schema: pa.Schema) -> tuple[Column, ...]:
    """Columns of an Arrow schema (e.g. of Parquet files); nested types become OTHER."""
    columns = []
    for field in schema:
        sql = next((s for test, s in _ARROW_TO_SQL if getattr(pa.types, test)(field.type)), None)
        if sql is None and pa.types.is_decimal(field.type):
            sql = f"DECIMAL({field.type.precision}, {field.type.scale})"
        if sql is None:
            columns.append(Column(field.name, DataType.OTHER, "BINARY"))
        else:
            columns.append(Column(field.name, from_sqlglot(exp.DataType.build(sql, "spark")), sql))
    return tuple(columns)


_DDL_PREFIX = "CREATE TABLE t ("


def parse_schema(ddl: str) -> tuple[Column, ...]:
    """Parse a Spark DDL column list ("a STRING, b INT") into columns."""
    try:
        statement = sqlglot.parse_one(f"{_DDL_PREFIX}{ddl})", read="spark")
    except ParseError as exc:
        err = exc.errors[0] if exc.errors else {}
        col = int(err.get("col", 0) or 0) - len(str(err.get("highlight", "") or ""))
        message = str(err.get("description", "cannot parse the schema"))
        raise SchemaSyntaxError(message, max(col - len(_DDL_PREFIX), 0)) from exc
    except TokenError as exc:
        raise SchemaSyntaxError(str(exc), 0) from exc
    columns: list[Column] = []
    schema = statement.this if isinstance(statement.this, exp.Schema) else None
    for definition in schema.expressions if schema is not None else []:
        kind = definition.args.get("kind") if isinstance(definition, exp.ColumnDef) else None
        if kind is None or kind.this == exp.DataType.Type.USERDEFINED:
            raise SchemaSyntaxError(
                f'column "{definition.name}" needs a Spark type such as STRING, BIGINT, DOUBLE '
                "or TIMESTAMP",
                max(ddl.find(definition.name), 0),
            )
        columns.append(Column(definition.name, from_sqlglot(kind), kind.sql("spark")))
    if not columns:
        raise SchemaSyntaxError('no columns; write e.g. "user_id STRING, ts TIMESTAMP"', 0)
    return tuple(columns)
