"""`robusta backfill`: a training frame written to Parquet or to an Iceberg table.

Output = the input rows' columns + one column per feature, in input order. An Iceberg output
table is created from the frame's schema, or replaced in one overwrite snapshot when it exists
with the same schema; a different schema is refused, so nothing stored is damaged.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from robusta.api.training import (
    ICEBERG_PREFIX,
    BackfillReport,
    Step,
    get_training_frame,
)
from robusta.errors import RobustaError
from robusta.spec.config import location
from robusta.spec.model import OfflineConfig
from robusta.store.catalog import storage_of
from robusta.store.files import is_local, join
from robusta.workspace import Workspace


class OutputExistsError(RobustaError, FileExistsError):
    """The output is there already and overwriting was not asked for."""


@dataclass
class BackfillResult:
    report: BackfillReport
    output: str
    non_null: dict[str, int] = field(default_factory=dict)  # feature -> rows with a value

    def to_json(self) -> dict[str, object]:
        return {**self.report.to_json(), "output": self.output, "non_null": self.non_null}


def backfill(
    workspace: Workspace,
    rows: str,
    output: str,
    features: Sequence[str] | None = None,
    *,
    timestamp_column: str = "ts",
    entity_columns: Mapping[str, str] | None = None,
    version_column: str | None = None,
    materialize_missing: bool = True,
    overwrite: bool = False,
    step: Step = lambda _: None,
    engine: str | None = None,
) -> BackfillResult:
    """Join ``rows`` with ``features`` and write the result to ``output`` (Parquet: a folder
    on Spark, a file on the embedded engine; or ``iceberg:<table>``)."""
    is_table = output.startswith(ICEBERG_PREFIX)
    storage = storage_of(workspace.config.offline)
    if not is_table and storage.exists(output) and not overwrite:
        raise OutputExistsError(f"{output} already exists: pass --overwrite or another path")
    if is_table and not overwrite:  # known before any engine starts
        _refuse_existing_table(workspace.config.offline, output[len(ICEBERG_PREFIX) :])
    report = BackfillReport()
    frame = get_training_frame(
        rows,
        features,
        workspace=workspace,
        timestamp_column=timestamp_column,
        entity_columns=entity_columns,
        version_column=version_column,
        materialize_missing=materialize_missing,
        step=step,
        report=report,
        engine=engine,
    )
    step("assembling features and writing the output")
    if isinstance(frame, pa.Table):
        offline = workspace.config.offline
        return _write_arrow(offline, frame, output, is_table, overwrite, report, step)
    return _write_spark(workspace.config.offline, frame, output, is_table, overwrite, report, step)


def _write_spark(
    offline: OfflineConfig,
    frame: Any,
    output: str,
    is_table: bool,
    overwrite: bool,
    report: BackfillReport,
    step: Step,
) -> BackfillResult:
    """The Spark engine's frame to a Parquet folder or an Iceberg table, written by the
    tasks (``engine.spark.files``): the output may be on an object store."""
    from robusta.engine.spark.files import read_files, write_parts
    from robusta.engine.spark.session import on_this_host

    storage = storage_of(offline)
    if is_table:
        identifier = output[len(ICEBERG_PREFIX) :]
        folder = _write_table(
            offline, lambda f: write_parts(frame, storage, f), identifier, overwrite, step
        )
    else:
        folder = location(Path.cwd(), output)  # not the JVM's cwd: this process's
        if storage.modified(folder) is not None:
            storage.delete(folder)  # an embedded run's output file, replaced (--overwrite)
        if is_local(folder) and not on_this_host(frame.sparkSession):
            # Executors elsewhere would write to their own disks (and could not read the
            # file back to count it): this host writes it and counts from what it holds.
            step(f"collecting the frame to write {folder} here")
            table = frame.toArrow()
            storage.write_parquet(table, join(folder, "part-00000.parquet"))
            held = {f: table.num_rows - table.column(f).null_count for f in report.features}
            return BackfillResult(report, output, held)
        write_parts(frame, storage, folder)
    step("counting feature values")
    paths = storage.files(folder, ".parquet")
    counts: dict[str, int] = dict.fromkeys(report.features, 0)
    if paths:
        schema = storage.read_schema(paths[0])
        stored = read_files(frame.sparkSession, storage, paths, schema)
        row = stored.selectExpr(*[f"count(`{f}`) AS `{f}`" for f in report.features]).collect()
        counts = {f: int(row[0][f]) for f in report.features}
    return BackfillResult(report, output, counts)


def _write_arrow(
    offline: OfflineConfig,
    frame: pa.Table,
    output: str,
    is_table: bool,
    overwrite: bool,
    report: BackfillReport,
    step: Step,
) -> BackfillResult:
    """The embedded engine's frame (Arrow) to a Parquet file or an Iceberg table."""
    import pyarrow.compute as pc

    storage = storage_of(offline)
    if is_table:

        def write(folder: str) -> None:
            storage.write_parquet(frame, join(folder, "part-00000.parquet"))

        _write_table(offline, write, output[len(ICEBERG_PREFIX) :], overwrite, step)
    else:
        path = location(Path.cwd(), output)
        storage.delete_folder(path)  # a Spark run's output folder, replaced (--overwrite)
        storage.write_parquet(frame, path)
    counts = {f: int(pc.count(frame.column(f)).as_py()) for f in report.features}
    return BackfillResult(report, output, counts)


def _qualified(offline: OfflineConfig, identifier: str) -> str:
    return identifier if "." in identifier else f"{offline.namespace}.{identifier}"


def _refuse_existing_table(offline: OfflineConfig, identifier: str) -> None:
    from pyiceberg.exceptions import NoSuchTableError

    from robusta.store.catalog import open_catalog

    identifier = _qualified(offline, identifier)
    try:
        open_catalog(offline).load_table(identifier)
    except NoSuchTableError:
        return
    raise OutputExistsError(
        f'Iceberg table "{identifier}" already exists: pass --overwrite to replace its rows, '
        "or choose another name"
    )


def _write_table(
    offline: OfflineConfig,
    write: Callable[[str], object],
    identifier: str,
    overwrite: bool,
    step: Step,
) -> str:
    """``write`` Parquet into a new folder under the warehouse and commit it to Iceberg table
    ``identifier``."""
    from pyiceberg.exceptions import NoSuchTableError

    from robusta.store.catalog import open_catalog
    from robusta.store.tiles import swap_files

    identifier = _qualified(offline, identifier)
    storage = storage_of(offline)
    folder = join(offline.warehouse, "training", identifier, uuid.uuid4().hex[:12])
    write(folder)
    paths = storage.files(folder, ".parquet")
    catalog = open_catalog(offline)
    try:
        if not paths:
            raise OutputExistsError("the training frame has no rows: nothing to commit")
        schema = storage.read_schema(paths[0]).remove_metadata()
        try:
            table = catalog.load_table(identifier)
        except NoSuchTableError:
            catalog.create_namespace_if_not_exists(identifier.rsplit(".", 1)[0])
            table = catalog.create_table(identifier, schema=schema)
        else:
            if not overwrite:
                raise OutputExistsError(
                    f'Iceberg table "{identifier}" already exists: pass --overwrite to replace '
                    "its rows, or choose another name"
                )
            if _shape(table.schema().as_struct()) != _shape(_iceberg_schema(schema).as_struct()):
                raise OutputExistsError(
                    f'Iceberg table "{identifier}" exists with other columns or types: drop it '
                    "or choose another name"
                )
        step(f"committing {identifier}")
        swap_files(table, [task.file for task in table.scan().plan_files()], paths)
    except BaseException:
        storage.delete_folder(folder)  # nothing references it
        raise
    return str(folder)


def _iceberg_schema(schema: Any) -> Any:
    from pyiceberg.catalog import Catalog

    return Catalog._convert_schema_if_needed(schema)  # what create_table would make of it


def _shape(field_type: Any) -> object:
    """A type's structure without field ids (ids differ between tables, not columns)."""
    from pyiceberg.types import ListType, MapType, StructType

    if isinstance(field_type, StructType):
        return tuple((f.name, _shape(f.field_type)) for f in field_type.fields)
    if isinstance(field_type, ListType):
        return ("list", _shape(field_type.element_type))
    if isinstance(field_type, MapType):
        return ("map", _shape(field_type.key_type), _shape(field_type.value_type))
    return str(field_type)
