"""A micro-batch applied online: the touched keys' records and the pointer, in one write.

The records of every key the batch touched get the new full tile values
(``store.online.stream_records``) and the spec's version pointer advances, in one atomic
write (:meth:`OnlineStore.apply`). It runs after the offline commit, so a pointer served
online is always backed by Iceberg tiles; writing full values makes a replay write the same
bytes. The live state must be the stream's own: an upload that replaced the generation, or a
new spec version, stops the stream with what to do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow.compute as pc

from robusta.jobs.stream.checkpoint import Checkpoint
from robusta.jobs.stream.errors import StreamingError
from robusta.jobs.stream.stores import StreamStores
from robusta.plan.model import SpecPlan
from robusta.plan.open_tiles import CHANGED, bucket_micros
from robusta.spec.durations import floor_to, to_micros
from robusta.store.online import OnlineConflictError, SpecState
from robusta.store.online.stream_records import merge_tile_records


class OnlineApply:
    """Applies one spec's micro-batches to the online store (see the module docstring)."""

    def __init__(self, plan: SpecPlan, checkpoint: Checkpoint, stores: StreamStores) -> None:
        self.plan = plan
        self.checkpoint = checkpoint
        self.stores = stores
        self.largest = plan.spec.granularities[0].micros

    def apply(self, meta: dict[str, Any]) -> None:
        if meta["tiles_from"] is None:
            return
        store = self.stores.store
        live = store.state(self.plan.name)
        self._check_live(live)
        generation = live.generation if live is not None else 1
        records = []
        oldest = None
        for group in self.plan.groups:
            tiles = self.checkpoint.touched(meta["batch"], group)
            if tiles is None or tiles.num_rows == 0:
                continue
            changed = tiles.filter(tiles.column(CHANGED))
            records += merge_tile_records(store, self.plan.name, generation, group, changed)
            if live is None:
                oldest = _min(oldest, int(pc.min(bucket_micros(tiles)).as_py()))
        served: int | None = meta["pointer"]
        if live is None:
            if oldest is None and served is None:
                return  # nothing to write, nor a pointer
            horizon = self._fresh_horizon(oldest, served)
            # No pointer yet (a Spark stream's first batch: its watermark follows the batches
            # before): its tiles are written, served as of the horizon, before which nothing is.
            pointer = horizon if served is None else served
        else:
            horizon = live.horizon
            pointer = live.pointer if served is None else max(served, live.pointer)
        state = SpecState(
            generation=generation,
            pointer=pointer,
            plan_hash=self.plan.hash,
            mode="assemble",
            horizon=horizon,
            uploaded_at=to_micros(datetime.now(UTC)),
        )
        try:
            store.apply(self.plan.name, generation, records, state, expected=live)
        except OnlineConflictError:
            raise self._taken_over() from None
        self.checkpoint.write_online_generation(generation)

    def online_pointer(self) -> int | None:
        """The live version pointer (None before anything is served)."""
        state = self.stores.store.state(self.plan.name)
        return None if state is None else state.pointer

    def _check_live(self, live: SpecState | None) -> None:
        """The live state must be the stream's own (or an upload's it started on)."""
        if live is None:
            return
        if live.plan_hash != self.plan.hash:
            raise StreamingError(
                f"the online store holds spec {self.plan.name} version {live.plan_hash}, the "
                f"spec is now version {self.plan.hash}: rebuild its tiles and upload them, "
                "then restart the stream with a fresh checkpoint"
            )
        mine = self.checkpoint.online_generation()
        if mine is not None and mine != live.generation:
            raise self._taken_over()

    def _taken_over(self) -> StreamingError:
        return StreamingError(
            f"an upload replaced the online generation of spec {self.plan.name} while it "
            "was streamed; restart the stream with a fresh checkpoint (streaming.checkpoint)"
        )

    def _fresh_horizon(self, oldest: int | None, pointer: int | None) -> int:
        """A fresh stream holds every event from its first one on; nothing earlier exists
        for it, so lookups are exact from that day on, whatever their window."""
        longest = max(
            (w.duration.micros for f in self.plan.features for w in f.windows if w.duration),
            default=0,
        )
        first = oldest if oldest is not None else pointer
        if first is None:
            raise ValueError("a fresh horizon needs a tile or a pointer")
        first_day = floor_to(first, self.largest)
        return floor_to(first_day - longest, self.largest)


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)
