"""State version ``N`` of a Spark stream, from what its state operator handed back.

On Spark the open tiles live in Spark's state store on the executors
(``engine.spark.stream_state``); a micro-batch's operator hands the driver only what the batch
holds: the full tiles of the keys it touched, the tiles that closed, its late rows and counts.
:class:`StatefulTiles` writes them as state version ``N`` (the layout ``checkpoint`` documents,
published by a rename), which the offline and online steps read as on the embedded engine.

The pointer of version ``N`` is the one the operator used: Spark's watermark, which follows
the batches before ``N`` (``max(least(event time, batch time)) - watermark``, floored to the
finest granularity, never before the stream's start). The driver computes it from the counts
of those batches, the same way, and checks it against the operator's.

A version, once published, keeps its pointer, counts and closed tiles when Spark replays
its batch after a crash (the closed tiles come from the previous state, so the replay
hands back the same). Its touched tiles are rewritten from the replay's (:meth:`replay`):
the state store now holds those (a KLL merge compacts with a random bit, rows tied in time
may fold in another order), and the online step, which writes full values, then serves the
same bytes the state will close with.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from robusta.jobs.stream.batch import StateVersions, write_version_tiles
from robusta.jobs.stream.checkpoint import CLOSING, TOUCHED
from robusta.jobs.stream.errors import StreamingError
from robusta.spec.durations import floor_to, latest, to_micros
from robusta.store.files import join

if TYPE_CHECKING:
    from robusta.engine.spark.stream_state import StateOutput


class StatefulTiles(StateVersions):
    """Publishes state version ``N`` of one spec's Spark stream (see the module docstring)."""

    def pointer(self, before: dict[str, Any]) -> int | None:
        """The pointer of the batch after the one ``before`` describes."""
        pointer: int | None = before["pointer"]
        capped = before.get("capped")
        if capped is None:
            return pointer
        moved = floor_to(capped - self.delay, self.gmin)
        return moved if pointer is None else max(pointer, moved)

    def compute(self, output: StateOutput, batch_id: int) -> None:
        checkpoint = self.checkpoint
        before = checkpoint.previous(batch_id)
        pointer = self.pointer(before)
        if output.pointer is not None and output.pointer != pointer:
            raise StreamingError(
                f"stream robusta_{self.plan.name}: Spark's state operator closed tiles up to "
                f"{output.pointer}, the stream's checkpoint says {pointer}; the checkpoint "
                "does not belong to this query: restart it with a fresh checkpoint"
            )
        if output.late_rows is not None and output.late_rows.num_rows:
            self.stores.tables.storage.write_parquet(
                output.late_rows, join(self.late_folder_of(batch_id), "part-00000.parquet")
            )
        tmp = self.begin_version(batch_id)
        for index, group in enumerate(self.plan.groups):
            write_version_tiles(output.touched.get(index), tmp / TOUCHED, group)
            write_version_tiles(output.closing.get(index), tmp / CLOSING, group)
        on_time = output.rows - output.late > 0
        meta = {
            "batch": batch_id,
            "query": checkpoint.query_id(),
            "tiles_from": batch_id if on_time else before["tiles_from"],
            "pointer_before": before["pointer"],
            "pointer": pointer,
            "max_ts": latest(before["max_ts"], output.max_ts),
            "capped": latest(before.get("capped"), output.max_capped),
            "rows": before["rows"] + output.rows,
            "late": before["late"] + output.late,
            "dropped": before["dropped"] + output.null_keys + output.null_timestamps,
            "batch_rows": output.rows,
            "state_reads": output.state_reads,  # keys' tiles read from Spark's state store
            "state_writes": output.state_writes,
            "first_batch": before["batch"] is None,
            "written": to_micros(datetime.now(UTC)),
        }
        self.publish_version(tmp, batch_id, meta)

    def replay(self, output: StateOutput, batch_id: int) -> None:
        """Batch ``batch_id`` ran again after its version was published: its touched tiles
        rewritten from this run's (each file replaced atomically), the rest kept."""
        version = self.checkpoint.state(batch_id)
        for index, group in enumerate(self.plan.groups):
            tiles = output.touched.get(index)
            path = version / TOUCHED / f"{group.layout.table}.parquet"
            if tiles is not None and tiles.num_rows and path.is_file():
                partial = path.with_name(path.name + ".tmp")
                pq.write_table(tiles, partial)
                partial.replace(path)
        self.checkpoint.forget(batch_id)
