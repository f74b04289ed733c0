"""Logical column types shared by specs, plans and operators.

Kept free of sqlglot and every engine so that the operator library, and the online lookup path
that uses it, import quickly.
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa


class DataType(StrEnum):
    BOOLEAN = "boolean"
    INT = "int"
    BIGINT = "bigint"
    FLOAT = "float"
    DOUBLE = "double"
    DECIMAL = "decimal"
    STRING = "string"
    BINARY = "binary"
    DATE = "date"
    TIMESTAMP = "timestamp"
    OTHER = "other"  # arrays, maps, structs: allowed in queries, not as aggregation inputs
    UNKNOWN = "unknown"  # the source declares no schema

    @property
    def is_integer(self) -> bool:
        return self in (DataType.INT, DataType.BIGINT)

    @property
    def is_numeric(self) -> bool:
        return self in (
            DataType.INT,
            DataType.BIGINT,
            DataType.FLOAT,
            DataType.DOUBLE,
            DataType.DECIMAL,
        )

    @property
    def is_orderable(self) -> bool:
        return self not in (DataType.OTHER, DataType.BINARY)

    @property
    def is_known(self) -> bool:
        return self is not DataType.UNKNOWN

    def arrow(self) -> pa.DataType:
        """Arrow type used for values of this type in IRs and results."""
        return _ARROW[self]


_ARROW: dict[DataType, pa.DataType] = {
    DataType.BOOLEAN: pa.bool_(),
    DataType.INT: pa.int64(),
    DataType.BIGINT: pa.int64(),
    DataType.FLOAT: pa.float64(),
    DataType.DOUBLE: pa.float64(),
    DataType.DECIMAL: pa.float64(),
    DataType.STRING: pa.string(),
    DataType.BINARY: pa.binary(),
    DataType.DATE: pa.date32(),
    DataType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    DataType.OTHER: pa.null(),
    DataType.UNKNOWN: pa.null(),
}

ENTITY_TYPES: dict[str, DataType] = {
    "string": DataType.STRING,
    "int": DataType.INT,
    "long": DataType.BIGINT,
    "bigint": DataType.BIGINT,
}
