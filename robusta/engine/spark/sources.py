"""Reading a spec's sources into Spark and running its query over them.

Every source a query names becomes a temporary view of that name, so the spec's SQL runs
unchanged. Formats: csv, json and parquet through Spark's readers (the declared schema is
enforced, never inferred); iceberg through files planned by pyiceberg (Spark reads their
Parquet; no Iceberg runtime jar is needed); python through a ``module:function`` loader that
returns a Spark DataFrame.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from robusta.errors import RobustaError
from robusta.spec.model import ProjectConfig, SourceConfig


class SourceError(RobustaError, OSError):
    """A source cannot be read."""


def register_sources(spark: Any, config: ProjectConfig, names: Iterable[str]) -> None:
    """Create (or replace) a temporary view for each named source."""
    for name in names:
        frame = read_source(spark, config, config.sources[name])
        frame.createOrReplaceTempView(name)


def read_source(spark: Any, config: ProjectConfig, source: SourceConfig) -> Any:
    if source.format == "python":
        return _python_source(spark, source)
    if source.format == "iceberg":
        return _iceberg_source(spark, config, source)
    if source.path is None or not source.path.exists():
        raise SourceError(
            f'source "{source.name}": {source.path} does not exist; write data '
            "there or fix its path in robusta.yaml"
        )
    reader = spark.read.format(source.format).options(**dict(source.options))
    if source.schema is not None:
        reader = reader.schema(", ".join(f"`{c.name}` {c.sql_type}" for c in source.schema))
    path = str(source.path)
    if source.path.is_dir() and source.format in ("csv", "json"):
        reader = reader.option("recursiveFileLookup", "true")
    return reader.load(path)


def _python_source(spark: Any, source: SourceConfig) -> Any:
    module_name, _, function_name = (source.loader or "").partition(":")
    try:
        loader = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise SourceError(
            f'source "{source.name}": cannot import loader "{source.loader}" '
            f"({exc}); is the module on PYTHONPATH?"
        ) from exc
    frame = loader(spark)
    if not hasattr(frame, "createOrReplaceTempView"):
        raise SourceError(
            f'source "{source.name}": loader "{source.loader}" must return a '
            f"Spark DataFrame, got {type(frame).__name__}"
        )
    return frame


def _iceberg_source(spark: Any, config: ProjectConfig, source: SourceConfig) -> Any:
    from robusta.store.catalog import open_catalog

    catalog = open_catalog(config.offline)
    try:
        table = catalog.load_table(source.table or "")
    except Exception as exc:  # pyiceberg raises several types for a missing table
        raise SourceError(
            f'source "{source.name}": cannot load Iceberg table "{source.table}" ({exc})'
        ) from exc
    files = [task.file.file_path for task in table.scan().plan_files()]
    if not files:
        raise SourceError(f'source "{source.name}": Iceberg table "{source.table}" is empty')
    return spark.read.parquet(*files)


def read_stream(spark: Any, config: ProjectConfig, name: str) -> Any:
    """A streaming DataFrame of source ``name``: its landing folder (new files are picked up
    as they arrive; write them under a name starting with ``.`` or ``_`` and rename them, so
    no half-written file is read), or Kafka when ``streaming.sources`` says so."""
    source = config.sources[name]
    override = config.streaming.sources.get(name)
    fmt = override.format if override else source.format
    options = dict(override.options if override else source.options)
    path = override.path if override else source.path
    if source.schema is None:
        raise SourceError(
            f'source "{name}" has no schema: a stream needs one declared in robusta.yaml '
            '(schema: "col TYPE, ...")'
        )
    ddl = ", ".join(f"`{c.name}` {c.sql_type}" for c in source.schema)
    if override is not None and override.format == "kafka":  # only an override is kafka
        frame = spark.readStream.format("kafka").options(**options).load()
        parse = "from_json" if override.value_format == "json" else "from_csv"
        return frame.selectExpr(f"{parse}(CAST(value AS STRING), '{ddl}') AS __row").select(
            "__row.*"
        )
    if fmt not in ("csv", "json", "parquet"):
        raise SourceError(
            f'source "{name}" ({fmt}) cannot be streamed: give it a landing folder in '
            "streaming.sources (csv, json or parquet) or a Kafka topic"
        )
    if path is None or not path.is_dir():
        raise SourceError(
            f'source "{name}": the landing folder {path} does not exist; create it (the '
            "stream picks up files landed there) or set streaming.sources in robusta.yaml"
        )
    if fmt in ("csv", "json"):
        options.setdefault("recursiveFileLookup", "true")
    return spark.readStream.format(fmt).options(**options).schema(ddl).load(str(path))
