"""What the streaming job asks of the embedded engine for one micro-batch.

A micro-batch is the spec query's rows over the files that arrived since the last one. The
job (``robusta.jobs.stream.batch``) needs three things of it: its counts and newest event
time (:class:`BatchStats`), its late rows written aside, and the finest tiles of its on-time
rows per tile group, which it merges into the open tiles of its keyed state on disk
(``plan.open_tiles``). On Spark the open tiles live in Spark's state store and one operator
does all three on the executors (``engine.spark.stream_state``).

Late: a time before the version pointer (the end of the last finest bucket already served).
On time: at or after it, or no time at all (counted as dropped by the tiling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from robusta.plan.model import TileGroup
from robusta.store.files import Storage


@dataclass(frozen=True)
class BatchStats:
    """What one micro-batch held (counted on the spec query's rows)."""

    rows: int
    late: int
    null_keys: int  # rows without a key (any tile group), not tiled
    null_timestamps: int
    max_ts: int | None  # newest event time (epoch micros), late rows included


class MicroBatch(Protocol):
    """One micro-batch's rows, split at the version pointer it was given."""

    def stats(self) -> BatchStats:
        """Counts and the newest event time of the batch's rows."""

    def write_late(self, storage: Storage, folder: str) -> None:
        """The late rows as Parquet into ``folder`` (replacing what a replay wrote)."""

    def finest_tiles(self, group: TileGroup) -> pa.Table:
        """The finest tiles of the on-time rows with keys and a time: key columns,
        ``__bucket``, ``events`` and the group's IR columns (``plan.open_tiles``' input)."""

    def release(self) -> None:
        """Free what the engine holds for the batch."""
