"""One spec's stream: the checks before it starts, and every micro-batch's three steps.

:meth:`SpecStream.run_batch` takes batch ``N`` (its rows from either engine) through:

1. **tiles** (``batch.BatchTiles``): state version ``N`` of the open tiles, computed once,
   then applied to the keyed state (``keyed.KeyedState``) once; on Spark
   (:meth:`SpecStream.run_state_batch`) the open tiles live in Spark's state store and
   version ``N`` is what its state operator handed back (``stateful.StatefulTiles``);
2. **offline** (``offline.OfflineCommit``): the tiles it closed, committed to Iceberg once;
3. **online** (``online.OnlineApply``): the touched keys' records and the pointer, one write;

then drops the state versions no replay needs (``checkpoint.Checkpoint``). Every step can be
repeated with the same result, so a crash at any point (the engine replays the batch with
the same id and input) loses and doubles nothing. The runners (``runners``) feed it batches:
Spark's ``foreachBatch`` or the embedded engine's pollers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from robusta.jobs.stream.batch import BatchTiles, Rows
from robusta.jobs.stream.checkpoint import Checkpoint, SpecStatus
from robusta.jobs.stream.errors import StreamingError, fault
from robusta.jobs.stream.keyed import KeyedState
from robusta.jobs.stream.offline import OfflineCommit
from robusta.jobs.stream.online import OnlineApply
from robusta.jobs.stream.stateful import StatefulTiles
from robusta.jobs.stream.stores import StreamStores
from robusta.plan.model import SpecPlan
from robusta.spec.model import ProjectConfig, SourceConfig
from robusta.store.files import join
from robusta.store.tiles import coverage

SPARK_STATE_LAYOUT = "2"  # 2: a log of tiles by end (1: an index of finest buckets)

if TYPE_CHECKING:
    from robusta.engine.spark.stream_state import StateOutput


class SpecStream:
    """A spec's stream: its checkpoint, stores and the three steps of a micro-batch."""

    def __init__(self, config: ProjectConfig, plan: SpecPlan, engine: str | None = None) -> None:
        self.config = config  # the engines read the sources from the whole config
        self.plan = plan
        self.engine = engine or config.engine
        self.checkpoint = Checkpoint(config.streaming.checkpoint / plan.name, self.engine)
        self.stores = StreamStores(config.offline, config.online, config.project)
        delay = config.streaming.watermark_of(plan.name).micros
        late_folder = join(config.offline.warehouse, "late_events", plan.name)
        self.tiles = BatchTiles(
            plan, self.checkpoint, self.stores, delay=delay, late_folder=late_folder
        )
        self.stateful = StatefulTiles(
            plan, self.checkpoint, self.stores, delay=delay, late_folder=late_folder
        )
        self.offline = OfflineCommit(plan, self.checkpoint, self.stores)
        self.online = OnlineApply(plan, self.checkpoint, self.stores)
        self.sources: list[SourceConfig] = []  # the embedded engine's landing folders

    @property
    def folder(self) -> Path:
        return self.checkpoint.folder

    # ---- before any engine starts ---------------------------------------------------------
    def check(self) -> None:
        """Refuse what the stream cannot run (before any engine starts)."""
        self._check_mode()
        self._check_query()
        self._check_engine()
        if self.engine == "embedded":
            from robusta.engine.embedded.streaming import stream_sources

            self.sources = stream_sources(self.config, self.plan.spec.sources)

    def _check_query(self) -> None:
        from robusta.spec.loader import engine_problems, query_location
        from robusta.spec.sql import stream_problems

        spec = self.plan.spec
        problems = stream_problems(spec.query) or engine_problems(
            spec.query, spec.sources, self.config, self.engine
        )
        for problem in problems[:1]:
            where = query_location(self.plan.spec.file, problem)
            raise StreamingError(f"{where}: spec {self.plan.name}: {problem.message}")

    def _check_engine(self) -> None:
        """A checkpoint's batch log is the engine's own: it stays with the engine that made
        it (another would not know which files were processed)."""
        other = "spark" if self.engine == "embedded" else "embedded"
        if (self.folder / other).exists():
            raise StreamingError(
                f"the checkpoint of spec {self.plan.name} ({self.folder}) was written by engine "
                f"{other}: stream it with --engine {other}, or start a fresh checkpoint "
                "(streaming.checkpoint) to switch engines"
            )
        if self.engine == "spark" and (self.folder / "keyed").exists():
            raise StreamingError(
                f"the checkpoint of spec {self.plan.name} ({self.folder}) keeps its open tiles "
                "on the driver, as Robusta did before they moved into Spark's state store; "
                "start a fresh checkpoint (streaming.checkpoint), or stream it with --engine "
                "embedded"
            )
        if self.engine == "embedded":
            KeyedState(self.folder / "keyed", self.plan).check_layout(self.plan.name)
        if self.engine == "spark" and self.spark_started():
            layout = self._spark_layout.read_text() if self._spark_layout.exists() else "1"
            if layout.strip() != SPARK_STATE_LAYOUT:
                raise StreamingError(
                    f"the checkpoint of spec {self.plan.name} ({self.folder}) holds Spark "
                    f"state in layout {layout.strip()} (an index of finest buckets); this "
                    f"Robusta keeps layout {SPARK_STATE_LAYOUT} (a log of tiles by end): start "
                    "a fresh checkpoint (streaming.checkpoint) after the stream's last closed "
                    "bucket, or stream it with the Robusta that wrote it"
                )

    @property
    def _spark_layout(self) -> Path:
        return self.folder / "spark-state-layout"

    def spark_started(self) -> bool:
        """Whether the Spark query committed a batch (its state exists)."""
        commits = self.folder / "spark" / "commits"
        return commits.is_dir() and any(p.name.isdigit() for p in commits.iterdir())

    def mark_spark_layout(self) -> None:
        """Record the layout of the Spark state a fresh query starts (read by ``check``)."""
        if not self.spark_started():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._spark_layout.write_text(SPARK_STATE_LAYOUT + "\n")

    def _check_mode(self) -> None:
        modes = self.config.online.options.get("modes") or {}
        if modes.get(self.plan.name, "assemble") != "assemble":
            raise StreamingError(
                f"spec {self.plan.name} is served pre-assembled; a stream updates tiles, so "
                f"set online.modes.{self.plan.name}: assemble (or do not stream it)"
            )

    # ---- running --------------------------------------------------------------------------
    def begin(self) -> None:
        """Fix the pointer the stream starts from (after :meth:`check`, before a batch): the
        later of the online pointer and the end of the Iceberg tiles' coverage."""
        self.checkpoint.fix_start(self._served_ends, self.plan.spec.finest.micros)

    def _served_ends(self) -> Iterator[int | None]:
        yield self.online.online_pointer()
        for group in self.plan.groups:
            table = self.stores.tables.load(group.layout.table)
            if table is not None:
                yield from (b for _, b in coverage(table) if b is not None)

    def run_batch(self, rows: Rows, batch_id: int) -> None:
        """Batch ``batch_id`` whose rows ``rows(pointer)`` gives, split at the pointer."""
        checkpoint = self.checkpoint
        if not checkpoint.computed(batch_id):
            self.tiles.compute(rows, batch_id)
        meta = checkpoint.meta(batch_id)
        fault("computed", batch_id)
        self.tiles.settle(batch_id)
        self.offline.commit(meta)
        fault("offline", batch_id)
        self.online.apply(meta)
        fault("online", batch_id)
        checkpoint.clean(batch_id, self.tiles.state.version())
        checkpoint.forget_all_but(batch_id)

    def run_state_batch(self, output: StateOutput, batch_id: int) -> None:
        """Batch ``batch_id`` of a Spark stream, whose open tiles Spark's state store holds:
        what its state operator handed back (``stateful.StatefulTiles``), then the same
        offline and online steps."""
        checkpoint = self.checkpoint
        if not checkpoint.computed(batch_id):
            self.stateful.compute(output, batch_id)
        else:  # a replay: the state store holds this run's values of the touched tiles
            self.stateful.replay(output, batch_id)
        meta = checkpoint.meta(batch_id)
        fault("computed", batch_id)
        self.offline.commit(meta)
        fault("offline", batch_id)
        self.online.apply(meta)
        fault("online", batch_id)
        checkpoint.clean(batch_id, batch_id)
        checkpoint.forget_all_but(batch_id)

    def status(self, *, active: bool = False) -> SpecStatus:
        return self.checkpoint.status(self.plan.name, active=active)

    def close(self) -> None:
        self.stores.close()
