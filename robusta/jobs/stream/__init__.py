"""`robusta stream`: micro-batches of tiles, exactly once, into Iceberg and the online store.

One stream per spec: the spec's SQL runs over its sources read as streams, and every
micro-batch goes through three idempotent steps (``spec.SpecStream.run_batch``):

1. **tiles** (``batch``): the batch's finest tiles (either engine,
   ``engine.microbatch.MicroBatch``) are merged into the full values of every open tile
   (:func:`~robusta.plan.open_tiles.advance`) and written as state version ``N`` (with
   ``meta.json``: pointers, counts) into the checkpoint folder (``checkpoint``), atomically
   (rename). Late rows (before the pointer) go to the late-events table (Parquet,
   ``<warehouse>/late_events/<spec>/query=<id>/batch=N``).
2. **offline** (``offline``): tiles whose bucket closed in this batch (``p_before < end <=
   p_after``) are committed to the Iceberg tile table in one snapshot whose summary records
   the query id and batch id; a snapshot with the same ids means the batch is already there
   (skipped).
3. **online** (``online``): the records of every key the batch touched get the new full tile
   values, and the version pointer advances, in one atomic write (:meth:`OnlineStore.apply`).

Every step can be repeated with the same result, so a crash at any point (the engine replays
the batch with the same id and input) loses and doubles nothing. The pointer is
``floor(max event time - watermark, finest granularity)``, never moving backwards; offline
comes before online, so a pointer served online is always backed by Iceberg tiles. The
runners (``runners``): Spark Structured Streaming queries, or the embedded engine's pollers
of the landing folders.
"""

from robusta.jobs.stream.checkpoint import SpecStatus
from robusta.jobs.stream.errors import FAULT_ENV, StreamingError
from robusta.jobs.stream.runners import stream, stream_status

__all__ = ["FAULT_ENV", "SpecStatus", "StreamingError", "stream", "stream_status"]
