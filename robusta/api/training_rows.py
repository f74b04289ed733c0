"""Training rows read and checked before any engine starts.

Rows come as a path (Parquet file or folder, CSV with a header, ``iceberg:<ns>.<table>``), a
pandas, Polars or Arrow table, or a Spark DataFrame (handed through). Every input but a Spark
DataFrame is checked from its Arrow schema (a Parquet footer, a CSV read with pyarrow), so a
missing file, column or entity mapping is one message within a second, with no JVM.

Time columns (the row time and the version pointer) may be timestamps of any unit, tz-aware
or naive (naive means UTC), dates (midnight UTC) or ISO-8601 strings with or without an
offset (``Z``, ``+02:00``); they reach the engine as ``timestamp[us, UTC]``. Spark cannot read
nanosecond Parquet timestamps (what pandas writes), so such files are normalized here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.errors import RobustaError
from robusta.plan.selection import GroupRequest
from robusta.spec.durations import to_micros
from robusta.spec.model import OfflineConfig
from robusta.spec.suggest import did_you_mean
from robusta.store.files import is_local

ICEBERG_PREFIX = "iceberg:"
TIME_TYPE = pa.timestamp("us", tz="UTC")
TIME, TEXT, INTEGER, OTHER = "time", "text", "integer", "other"


class TrainingInputError(RobustaError, ValueError):
    """Training rows that cannot be joined as given (missing column, wrong type, ...)."""


@dataclass(frozen=True)
class StagedRows:
    """Rows checked and ready for an engine: a path Spark can read as it is (``path``), or
    an Arrow table with normalized time columns (``table``), or a Spark DataFrame."""

    path: str | None = None
    csv: bool = False
    table: pa.Table | None = None
    spark_frame: Any = None


def stage_rows(
    rows: Any, offline: OfflineConfig, time_columns: Sequence[str]
) -> tuple[StagedRows, dict[str, str]]:
    """``rows`` read (or, for Parquet, only their schema), with the kind of every column
    (TIME, TEXT, INTEGER, OTHER); ``time_columns`` normalized when they need it."""
    if hasattr(rows, "sparkSession") and hasattr(rows, "schema"):
        kinds = {f.name: _spark_kind(f.dataType.typeName()) for f in rows.schema.fields}
        return StagedRows(spark_frame=rows), kinds
    if isinstance(rows, str) and rows.startswith(ICEBERG_PREFIX):
        table = _read_iceberg(rows[len(ICEBERG_PREFIX) :], offline)
    elif isinstance(rows, str) and not is_local(rows):
        table = _read_uri(rows, offline)
    elif isinstance(rows, str | Path):
        staged = _stage_path(Path(rows), time_columns)
        if staged is not None:
            return staged
        table = _read_file(Path(rows))
    else:
        table = _to_arrow(rows)
    table = normalize_times(table, [c for c in time_columns if c in table.column_names])
    return StagedRows(table=table), {f.name: arrow_kind(f.type) for f in table.schema}


def _stage_path(
    path: Path, time_columns: Sequence[str]
) -> tuple[StagedRows, dict[str, str]] | None:
    """A Parquet input whose time columns Spark reads as they are: only its schema is read.
    None when the rows must be read and normalized first (or are CSV)."""
    import pyarrow.parquet as pq

    if not path.exists():
        raise TrainingInputError(f"no training rows at {path}: give a Parquet or CSV path")
    if _is_csv(path):
        return None
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise TrainingInputError(f"no Parquet files under {path}: give a Parquet or CSV path")
    try:
        schema = pq.read_schema(files[0])
    except (OSError, pa.ArrowInvalid) as exc:
        raise TrainingInputError(f"cannot read training rows {files[0]}: {exc}") from None
    kinds = {f.name: arrow_kind(f.type) for f in schema}
    if any(c in kinds and not _spark_reads(schema.field(c).type) for c in time_columns):
        return None
    return StagedRows(path=str(path.absolute())), kinds  # Spark's cwd may differ from ours


def _spark_reads(kind: pa.DataType) -> bool:
    """A time column Spark reads from Parquet and casts to TIMESTAMP exactly."""
    if pa.types.is_timestamp(kind):
        return kind.unit in ("ms", "us") and kind.tz is not None
    return bool(pa.types.is_date32(kind))


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv" or (path.is_dir() and any(path.glob("*.csv")))


def _read_file(path: Path) -> pa.Table:
    import pyarrow.dataset as ds

    try:
        if _is_csv(path):
            import pyarrow.csv as pcsv

            files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
            # An empty field is null, as Spark's CSV reader has it.
            options = pcsv.ConvertOptions(strings_can_be_null=True)
            tables = [pcsv.read_csv(f, convert_options=options) for f in files]
            return pa.concat_tables(tables, promote_options="default")
        return ds.dataset(str(path), format="parquet").to_table()
    except (OSError, pa.ArrowInvalid) as exc:
        raise TrainingInputError(f"cannot read training rows {path}: {exc}") from None


def _read_uri(uri: str, offline: OfflineConfig) -> pa.Table:
    """Parquet rows at a URI (a file, or a folder of files) on the offline store's
    filesystems (the catalog's ``s3.*``, ``gcs.*``, ... properties), read here whole."""
    from robusta.store.catalog import storage_of

    storage = storage_of(offline)
    try:
        files = storage.files(uri, ".parquet") or [uri]
        return storage.dataset(files).to_table()
    except (OSError, pa.ArrowInvalid) as exc:
        raise TrainingInputError(
            f"cannot read training rows {uri}: {exc} (a Parquet file or folder; check the "
            "catalog's storage properties in robusta.yaml, e.g. s3.endpoint)"
        ) from None


def _read_iceberg(identifier: str, offline: OfflineConfig) -> pa.Table:
    from pyiceberg.exceptions import NoSuchTableError

    from robusta.store.catalog import open_catalog

    try:
        table = open_catalog(offline).load_table(identifier)
    except NoSuchTableError:
        raise TrainingInputError(f'no Iceberg table "{identifier}" in the catalog') from None
    rows = table.scan().to_arrow()
    if rows.num_rows == 0:
        raise TrainingInputError(f'Iceberg table "{identifier}" has no rows')
    return rows


def _to_arrow(rows: Any) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    module = type(rows).__module__
    if module.startswith("pandas"):
        return pa.Table.from_pandas(rows, preserve_index=False)
    if module.startswith("polars"):
        return rows.to_arrow()
    raise TrainingInputError(
        f"training rows of type {type(rows).__name__} are not supported: give a path, "
        "a pandas, Polars or Arrow table, or a Spark DataFrame"
    )


def normalize_times(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """``columns`` as ``timestamp[us, UTC]`` (see the module doc), others unchanged."""
    for name in columns:
        index = table.column_names.index(name)
        table = table.set_column(index, name, to_utc_micros(table.column(name), name))
    return table


def to_utc_micros(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """One time column as ``timestamp[us, UTC]``; strings parsed as ISO-8601."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        ticks = np.asarray(column.cast(pa.int64()).fill_null(0).to_numpy(), np.int64)
        if kind.unit == "ns":
            return _timestamps(np.floor_divide(ticks, 1_000), column)  # floor, as Spark does
        return _timestamps(ticks * _MICROS_PER_TICK[kind.unit], column)
    if pa.types.is_date(kind):
        days = np.asarray(column.cast(pa.date32()).cast(pa.int32()).fill_null(0).to_numpy())
        return _timestamps(days.astype(np.int64) * 86_400_000_000, column)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _parse_iso(column, name)
    raise TrainingInputError(
        f'time column "{name}" is {kind}; give timestamps, dates or ISO-8601 strings '
        "(e.g. 2024-01-14T10:00:00Z)"
    )


_MICROS_PER_TICK = {"s": 1_000_000, "ms": 1_000, "us": 1}


def _timestamps(micros: np.ndarray, like: pa.ChunkedArray) -> pa.ChunkedArray:
    valid = np.asarray(like.is_valid().to_numpy(zero_copy_only=False), np.bool_)
    return pa.chunked_array([pa.array(micros, pa.int64(), mask=~valid).cast(TIME_TYPE)])


def _parse_iso(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """ISO-8601 strings (offsets converted, naive as UTC), each distinct value parsed once."""
    distinct = pc.unique(column.combine_chunks()).drop_null()
    parsed = []
    for text in distinct.to_pylist():
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise TrainingInputError(
                f'time column "{name}" holds "{text}", which is not an ISO-8601 time; write '
                "e.g. 2024-01-14T10:00:00Z or 2024-01-14 10:00:00+02:00"
            ) from None
        parsed.append(to_micros(moment))
    lookup = pa.array(parsed, pa.int64())
    index = pc.index_in(column, value_set=distinct)
    taken = lookup.take(index.combine_chunks() if isinstance(index, pa.ChunkedArray) else index)
    return pa.chunked_array([taken.cast(TIME_TYPE)])


def arrow_kind(kind: pa.DataType) -> str:
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return TIME
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return TEXT
    if pa.types.is_integer(kind):
        return INTEGER
    return OTHER


def _spark_kind(type_name: str) -> str:
    if type_name in ("timestamp", "timestamp_ntz", "date"):
        return TIME
    if type_name == "string":
        return TEXT
    if type_name in ("long", "integer", "short", "byte"):
        return INTEGER
    return OTHER


def check_columns(
    kinds: Mapping[str, str],
    requests: Sequence[GroupRequest],
    timestamp_column: str,
    entity_columns: Mapping[str, str] | None,
    version_column: str | None,
) -> dict[str, list[str]]:
    """Check the rows' columns before any job runs; returns each table's key columns."""
    mapping = dict(entity_columns or {})

    def need(column: str, what: str, allowed: tuple[str, ...], hint: str = "") -> None:
        if column not in kinds:
            raise TrainingInputError(
                f'the training rows have no {what} column "{column}"'
                f"{did_you_mean(column, kinds)}; columns: {', '.join(kinds)}{hint}"
            )
        if kinds[column] not in allowed:
            raise TrainingInputError(
                f'{what} column "{column}" is not of a usable type; it must hold '
                f"{' or '.join(_KIND_NAMES[k] for k in allowed)} (CAST it first)"
            )

    need(timestamp_column, "timestamp", (TIME, TEXT), " (name it with --timestamp-column)")
    if version_column is not None:
        need(version_column, "version-pointer", (TIME, TEXT))
    keys: dict[str, list[str]] = {}
    for request in requests:
        columns = []
        for key in request.group.layout.keys:
            column = mapping.get(key.entity, key.entity)
            hint = f" (map it with --entity-column {key.entity}=COLUMN)"
            need(column, f"{key.entity} entity", (TEXT, INTEGER), hint)
            columns.append(column)
        keys[request.group.layout.table] = columns
    return keys


_KIND_NAMES = {TIME: "timestamps or dates", TEXT: "strings", INTEGER: "integers"}
