"""Independent pieces of work run as Spark tasks on the executors, one task per piece.

A job that is a loop over independent items (an upload's key buckets) hands the loop's body
to :func:`run_tasks`: a picklable callable of ``(item id, file URIs)`` returning counts. The
executors import it from Robusta's shipped code, open the files through ``store.files`` and
write wherever the callable writes (an online store); only the counts come back. Nothing here
touches ``sparkContext``, so it works through Spark Connect too."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

Work = Callable[[int, Sequence[str]], Sequence[int]]
ID, PATHS = "item", "paths"


def run_tasks(
    spark: Any, work: Work, items: Mapping[int, Sequence[str]], counts: Sequence[str]
) -> dict[int, tuple[int, ...]]:
    """``work(id, paths)`` for every item, each in a Spark task of its own; returns each
    item's counts (named ``counts``, in that order)."""
    if not items:
        return {}
    listed = spark.createDataFrame(
        [(i, list(paths)) for i, paths in sorted(items.items())],
        f"{ID} long, {PATHS} array<string>",
    )
    spread = listed.repartitionByRange(len(items), ID)  # about one item per task
    schema = pa.schema([(ID, pa.int64()), *((c, pa.int64()) for c in counts)])
    rows = spread.mapInArrow(_Task(work, schema), _ddl(schema)).collect()
    return {int(row[ID]): tuple(int(row[c]) for c in counts) for row in rows}


class _Task:
    """The task body: runs ``work`` for each item its partition holds (picklable)."""

    def __init__(self, work: Work, schema: pa.Schema) -> None:
        self.work = work
        self.schema = schema

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ids = batch.column(ID).to_pylist()
            for item, paths in zip(ids, batch.column(PATHS).to_pylist(), strict=True):
                counts = list(self.work(int(item), list(paths or [])))
                yield pa.record_batch(
                    [pa.array([v], pa.int64()) for v in (item, *counts)], schema=self.schema
                )


def _ddl(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} long" for f in schema)
