"""Python sources' loaders, called the same way by both engines.

A loader is ``"package.module:function"``. It is called with the SparkSession when it takes a
parameter (``None`` on the embedded engine, which has none) and with nothing when it takes
none. On Spark it may return a Spark DataFrame, a pyarrow Table or a pandas DataFrame; on the
embedded engine a pyarrow Table or a pandas DataFrame.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pyarrow as pa

from robusta.errors import RobustaError
from robusta.spec.model import OfflineConfig, SourceConfig


class SourceError(RobustaError, OSError):
    """A source cannot be read."""


def call_loader(source: SourceConfig, spark: Any) -> Any:
    """What ``source``'s loader returns, given ``spark`` (None: no SparkSession)."""
    module_name, _, function_name = (source.loader or "").partition(":")
    try:
        loader = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise SourceError(
            f'source "{source.name}": cannot import loader "{source.loader}" '
            f"({exc}); is the module on PYTHONPATH?"
        ) from exc
    try:
        takes_session = bool(inspect.signature(loader).parameters)
    except (TypeError, ValueError):  # a callable without a signature: pass the session
        takes_session = True
    return loader(spark) if takes_session else loader()


def arrow_of(frame: Any) -> pa.Table | None:
    """``frame`` as a pyarrow Table when it is one, a RecordBatch or a pandas DataFrame."""
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pa.RecordBatch):
        return pa.Table.from_batches([frame])
    if type(frame).__module__.startswith("pandas") and hasattr(frame, "to_parquet"):
        return pa.Table.from_pandas(frame, preserve_index=False)
    return None


def returned(source: SourceConfig, frame: Any, wanted: str) -> str:
    return (
        f'source "{source.name}": loader "{source.loader}" must return {wanted}, got '
        f"{type(frame).__name__}"
    )


def iceberg_scan(source: SourceConfig, offline: OfflineConfig) -> tuple[Any, list[Any]]:
    """An iceberg source's table scan and its planned file tasks (both engines read from
    these); a missing or empty table is a :class:`SourceError`."""
    from robusta.store.catalog import open_catalog

    catalog = open_catalog(offline)
    try:
        table = catalog.load_table(source.table or "")
    except Exception as exc:  # pyiceberg raises several types for a missing table
        raise SourceError(
            f'source "{source.name}": cannot load Iceberg table "{source.table}" ({exc})'
        ) from exc
    scan = table.scan()
    tasks = list(scan.plan_files())
    if not tasks:
        raise SourceError(f'source "{source.name}": Iceberg table "{source.table}" is empty')
    return scan, tasks
