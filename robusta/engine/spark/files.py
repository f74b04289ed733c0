"""Robusta's files on the Spark engine, read and written by the tasks through pyarrow
(``store.files.Storage``), never by Spark's own data sources: the pyspark wheel has no object
store connector (hadoop-aws and friends), and a task must never open a path that exists only
on the driver. The driver names the files; the tasks open them wherever they run. Nothing
here touches ``sparkContext``, so it works through Spark Connect too."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from robusta.plan.model import TileGroup
from robusta.store.files import Storage, join

PATH = "path"


def spark_schema(schema: pa.Schema) -> Any:
    """The Spark schema of an Arrow schema."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema, prefer_timestamp_ntz=False)


def read_files(spark: Any, storage: Storage, paths: Sequence[str], schema: pa.Schema) -> Any:
    """The Parquet files at ``paths`` as one DataFrame of ``schema`` (a file missing a column
    gives nulls for it): a task per few files, each reading its files with pyarrow."""
    paths = list(paths)
    if not paths:
        return spark.createDataFrame([], spark_schema(schema))
    parts = max(1, min(len(paths), int(spark.conf.get("spark.sql.shuffle.partitions"))))
    listed = spark.createDataFrame([(p,) for p in paths], f"{PATH} string").repartition(parts)
    return listed.mapInArrow(_Reader(storage, schema), spark_schema(schema))


class _Reader:
    """The task reading the files a batch of paths names (picklable)."""

    def __init__(self, storage: Storage, schema: pa.Schema) -> None:
        self.storage = storage
        self.schema = schema

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for path in batch.column(PATH).to_pylist():
                table = self.storage.read_table(path)
                columns = [
                    table.column(f.name).cast(f.type)
                    if f.name in table.column_names
                    else pa.nulls(table.num_rows, f.type)
                    for f in self.schema
                ]
                yield from pa.table(columns, schema=self.schema).to_batches()


def write_parts(frame: Any, storage: Storage, folder: str) -> list[str]:
    """``frame`` as Parquet files in ``folder`` (emptied first), one per task that holds
    rows, written by the tasks; the files' URIs."""
    storage.delete_folder(folder)
    writer = _PartWriter(storage, folder)
    written = frame.mapInArrow(writer, f"{PATH} string").collect()
    return sorted(str(row[PATH]) for row in written)


class _PartWriter:
    def __init__(self, storage: Storage, folder: str) -> None:
        self.storage = storage
        self.folder = folder

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        held = list(batches)
        rows = pa.Table.from_batches(held) if held else None
        if rows is not None and rows.num_rows:
            path = join(self.folder, f"part-{uuid.uuid4().hex}.parquet")
            self.storage.write_parquet(rows, path)
            yield pa.RecordBatch.from_pydict({PATH: [path]})


def write_tile_parts(tiles: Any, group: TileGroup, storage: Storage, folder: str) -> int:
    """Tiles as the tile tables' files (``store.tiles.write_tile_files``, the embedded
    engine's writer), each (granularity, key bucket, month) partition whole in one task so
    that a partition is one file; the number of files written."""
    from pyspark.sql import functions as F

    month = F.date_format("bucket_start", "yyyy-MM")
    spread = tiles.repartition(F.col("granularity"), F.col("key_bucket"), month)
    writer = _TileWriter(group, storage, folder)
    return int(sum(row["files"] for row in spread.mapInArrow(writer, "files long").collect()))


class _TileWriter:
    def __init__(self, group: TileGroup, storage: Storage, folder: str) -> None:
        self.group = group
        self.storage = storage
        self.folder = folder

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from robusta.store.tiles import write_tile_files

        held = list(batches)
        written = []
        if held:
            tiles = pa.Table.from_batches(held)
            written = write_tile_files(tiles, self.group, self.folder, self.storage)
        yield pa.RecordBatch.from_pydict({"files": [len(written)]})
