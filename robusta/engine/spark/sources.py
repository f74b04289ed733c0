"""Reading a spec's sources into Spark and running its query over them.

Every source a query names becomes a temporary view of that name, so the spec's SQL runs
unchanged. Formats: csv, json and parquet through Spark's readers (the declared schema is
enforced, never inferred); iceberg through files planned by pyiceberg (Spark reads their
Parquet; no Iceberg runtime jar is needed); python through a ``module:function`` loader
(``engine.loaders``) returning a Spark DataFrame, a pyarrow Table or a pandas DataFrame. For
iceberg and python sources a declared schema selects and casts the columns, as on the embedded
engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from robusta.engine.loaders import SourceError, arrow_of, call_loader, iceberg_scan, returned
from robusta.spec.model import ProjectConfig, SourceConfig

__all__ = ["SourceError", "read_source", "read_stream", "register_sources"]


def register_sources(spark: Any, config: ProjectConfig, names: Iterable[str]) -> None:
    """Create (or replace) a temporary view for each named source."""
    for name in names:
        frame = read_source(spark, config, config.sources[name])
        frame.createOrReplaceTempView(name)


def read_source(spark: Any, config: ProjectConfig, source: SourceConfig) -> Any:
    if source.format == "python":
        return _declared(source, _python_source(spark, source))
    if source.format == "iceberg":
        return _declared(source, _iceberg_source(spark, config, source))
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
    frame = call_loader(source, spark)
    if hasattr(frame, "createOrReplaceTempView"):
        return frame
    table = arrow_of(frame)
    if table is None:
        raise SourceError(
            returned(source, frame, "a Spark DataFrame, a pyarrow Table or a pandas DataFrame")
        )
    return spark.createDataFrame(table)


def _declared(source: SourceConfig, frame: Any) -> Any:
    """The declared columns, cast to their declared types (none declared: all as they are)."""
    if source.schema is None:
        return frame
    have = {c.lower() for c in frame.columns}
    missing = [c.name for c in source.schema if c.name.lower() not in have]
    if missing:
        raise SourceError(
            f'source "{source.name}": declared column(s) {", ".join(missing)} missing from the '
            f"data (it has {', '.join(frame.columns)}); fix the schema in robusta.yaml"
        )
    return frame.selectExpr(
        *(f"CAST(`{c.name}` AS {c.sql_type}) AS `{c.name}`" for c in source.schema)
    )


def _iceberg_source(spark: Any, config: ProjectConfig, source: SourceConfig) -> Any:
    _, tasks = iceberg_scan(source, config.offline)
    return spark.read.parquet(*(task.file.file_path for task in tasks))


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
