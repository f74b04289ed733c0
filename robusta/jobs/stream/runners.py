"""`robusta stream`: the specs' streams run until stopped, on Spark or on the embedded engine.

On Spark each spec is a Structured Streaming query over its sources read as streams (views
named like the sources) whose ``foreachBatch`` is :class:`SparkQuery` (and each monitored
source a query of its own, ``jobs.volumes``); on the embedded engine this process polls the
landing folders (:class:`EmbeddedPoller`, ``engine.embedded.streaming.FileBatches``). Either
way every micro-batch goes through :meth:`SpecStream.run_batch`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from robusta.engine.base import choose_engine
from robusta.errors import RobustaError
from robusta.jobs.stream.checkpoint import SpecStatus
from robusta.jobs.stream.errors import StreamingError
from robusta.jobs.stream.spec import SpecStream
from robusta.plan.model import SpecPlan
from robusta.plan.selection import choose_specs
from robusta.spec.durations import Duration
from robusta.spec.model import ProjectConfig
from robusta.workspace import Workspace

Report = Callable[[list[SpecStatus]], None]


def stream(
    workspace: Workspace,
    specs: Sequence[str] = (),
    *,
    trigger: Duration | None = None,
    available_now: bool = False,
    stop: threading.Event | None = None,
    report: Report = lambda _: None,
    every: float = 2.0,
    engine: str | None = None,
) -> list[SpecStatus]:
    """Run the streams of ``specs`` (default all) until ``stop`` is set, or, with
    ``available_now``, until every file landed so far is processed. ``report`` gets the
    status of every spec about every ``every`` seconds. ``engine``: the project's unless
    given; a checkpoint stays with the engine that started it."""
    config = workspace.config
    name = choose_engine(config, engine)
    plans = choose_specs(workspace.plan, specs)
    streams = [SpecStream(config, plan, name) for plan in plans]
    for s in streams:  # what can be known wrong is reported before any engine starts
        s.check()
    every_trigger = trigger or config.streaming.trigger
    stop = stop or threading.Event()
    upkeep = Upkeep(workspace, [p.name for p in plans], config.streaming.maintain)
    try:
        if name == "embedded":
            _stream_embedded(
                config, streams, every_trigger, available_now, stop, report, every, upkeep
            )
        else:
            _stream_spark(
                config, streams, every_trigger, available_now, stop, report, every, upkeep
            )
    finally:
        for s in streams:
            s.close()
    return [s.status() for s in streams]


class Upkeep:
    """A long-running stream's table maintenance (``jobs.maintain``), every
    ``streaming.maintain`` (from the stream's start), between micro-batches."""

    def __init__(self, workspace: Workspace, specs: list[str], every: Duration | None) -> None:
        self.workspace = workspace
        self.specs = specs
        self.every = None if every is None else every.micros / 1e6
        self.last = time.monotonic()

    def run_if_due(self) -> None:
        if self.every is None or time.monotonic() - self.last < self.every:
            return
        from robusta.jobs.maintain import maintain

        maintain(self.workspace, self.specs)  # a conflict with a commit is retried next time
        self.last = time.monotonic()


def stream_status(workspace: Workspace, specs: Sequence[str] = ()) -> list[SpecStatus]:
    """Each spec's stream progress as recorded in its checkpoint (no Spark)."""
    config = workspace.config
    return [SpecStream(config, plan).status() for plan in choose_specs(workspace.plan, specs)]


# ---- Spark ----------------------------------------------------------------------------------
class SparkQuery:
    """A spec's stream as a Spark streaming query; :meth:`handle` is its ``foreachBatch``."""

    def __init__(self, spec: SpecStream) -> None:
        self.spec = spec
        self.failure: BaseException | None = None  # what stopped the last micro-batch

    def start(self, spark: Any, trigger: Duration, available_now: bool) -> Any:
        """The streaming query (after :meth:`SpecStream.check`): the spec query's rows
        through the state operator that holds the open tiles (``engine.spark.stream_state``),
        into :meth:`handle`."""
        from pyspark.sql.pandas.types import to_arrow_schema

        from robusta.engine.spark.sources import read_stream
        from robusta.engine.spark.stream_state import (
            CHANGELOG_CHECKPOINTS,
            STATE_PROVIDER,
            StateLayout,
            stateful_rows,
            tile_state,
        )

        spec = self.spec
        spec.begin()
        spec.mark_spark_layout()
        for name in spec.plan.spec.sources:
            read_stream(spark, spec.config, name).createOrReplaceTempView(name)
        events = spark.sql(spec.plan.spec.query)
        spark.conf.set("spark.sql.streaming.stateStore.providerClass", STATE_PROVIDER)
        # A commit writes the batch's changed entries, not a RocksDB snapshot of the state
        # (its flush and files grew with the open keys); snapshots follow in the background.
        # The project's spark.conf decides when it names the setting.
        if CHANGELOG_CHECKPOINTS not in spec.config.spark.conf:
            spark.conf.set(CHANGELOG_CHECKPOINTS, "true")
        layout = StateLayout(
            spec.plan,
            to_arrow_schema(events.schema, timezone="UTC"),
            spec.checkpoint.start["pointer"],
        )
        delay = spec.config.streaming.watermark_of(spec.plan.name).micros
        output = tile_state(stateful_rows(events, spec.plan, delay), layout, self._seed(spark))
        writer = (
            output.writeStream.queryName(f"robusta_{spec.plan.name}")
            .option("checkpointLocation", str(spec.folder / "spark"))
            .foreachBatch(self.handle)
        )
        if available_now:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{trigger.micros // 1000} milliseconds")
        return writer.start()

    def _seed(self, spark: Any) -> Any:
        """The operator's initial state: the open tiles of the day a batch run began, when
        the stream starts inside it (its first start only: then Spark reads it)."""
        from robusta.engine.spark.stream_state import seed_frame
        from robusta.jobs.stream.batch import seed_tiles

        spec = self.spec
        plan = spec.plan
        tiles = {}
        if not spec.spark_started() and spec.checkpoint.seeded(plan.spec.granularities[0].micros):
            start = spec.checkpoint.start["pointer"]
            for index, group in enumerate(plan.groups):
                seed = seed_tiles(spec.stores, plan, group, start)
                if seed is not None and seed.num_rows:
                    tiles[index] = seed
        return seed_frame(spark, plan, tiles)

    def handle(self, frame: Any, batch_id: int) -> None:
        """Spark's ``foreachBatch``: the state operator's output, then offline, then online;
        each step idempotent."""
        from robusta.engine.spark.stream_state import collect_output

        try:
            self.spec.run_state_batch(collect_output(frame), batch_id)
        except BaseException as exc:  # kept for the caller: Spark reports it as Java text
            self.failure = exc
            raise


def _stream_spark(
    config: ProjectConfig,
    streams: Sequence[SpecStream],
    trigger: Duration,
    available_now: bool,
    stop: threading.Event,
    report: Report,
    every: float,
    upkeep: Upkeep,
) -> None:
    """The streams as Spark Structured Streaming queries (``foreachBatch``)."""
    from robusta.engine.spark.session import spark_session

    if config.spark.remote is not None:
        # foreachBatch would run on the Connect server, away from the stream's state here.
        raise StreamingError(
            "robusta stream does not run through Spark Connect: its open tiles and offsets "
            "live in the process that runs it, and Connect runs foreachBatch on the server; "
            "give spark.master instead of spark.remote, or run it with --engine embedded"
        )
    spark = spark_session(config.spark, app_name="robusta-stream")
    specs = [SparkQuery(s) for s in streams]
    queries = []
    try:
        for s in specs:
            queries.append(s.start(spark, trigger, available_now))
        plans = [s.plan for s in streams]
        queries += _volume_streams(spark, config, plans, trigger, available_now)
        reported = time.monotonic()
        while not stop.is_set() and any(query.isActive for query in queries):
            stop.wait(0.2)
            _raise_failed(specs, queries)
            if time.monotonic() - reported >= every:
                reported = time.monotonic()
                report([s.status(active=True) for s in streams])
            upkeep.run_if_due()
        _raise_failed(specs, queries)
    finally:
        for query in queries:
            if query.isActive:
                query.stop()  # an interrupted batch is replayed at the next start


def _volume_streams(
    spark: Any,
    config: ProjectConfig,
    plans: Sequence[SpecPlan],
    trigger: Duration,
    available_now: bool,
) -> list[Any]:
    """One streaming query per monitored source the specs read (``jobs.volumes``)."""
    from robusta.jobs.volumes import monitored_sources, stream_volumes

    every = f"{trigger.micros // 1000} milliseconds"
    queries = []
    for source in monitored_sources(config.sources, plans):
        checkpoint = str(config.streaming.checkpoint / "volumes" / source.name)
        queries.append(stream_volumes(spark, config, source, checkpoint, every, available_now))
    return queries


def _raise_failed(specs: list[SparkQuery], queries: list[Any]) -> None:
    for query in queries[len(specs) :]:  # the volume monitors' queries
        failure = query.exception()
        if failure is not None:
            text = str(getattr(failure, "desc", failure)).strip().splitlines()[0]
            raise StreamingError(
                f"stream {query.name} stopped: {text}; fix the cause and rerun `robusta stream`"
            ) from None
    for s, query in zip(specs, queries, strict=False):
        failure = query.exception()
        if failure is None:
            continue
        if isinstance(s.failure, RobustaError):
            raise s.failure
        if s.failure is not None:
            raise StreamingError(
                f"stream {query.name} stopped: {type(s.failure).__name__}: {s.failure}; "
                "rerun `robusta stream` once fixed (it resumes from its checkpoint)"
            ) from s.failure
        if failure is not None:
            text = str(getattr(failure, "desc", failure)).strip().splitlines()[0]
            raise StreamingError(
                f"stream {query.name} stopped: {text}; fix the cause and rerun `robusta "
                "stream` (it resumes from its checkpoint, replaying the unfinished batch)"
            ) from None


# ---- the embedded engine --------------------------------------------------------------------
class EmbeddedPoller:
    """One spec's micro-batches on the embedded engine: each :meth:`step` runs the next
    batch of its landing folders through :meth:`SpecStream.run_batch`, and logs it done."""

    def __init__(self, spec: SpecStream) -> None:
        from robusta.engine.embedded.streaming import FileBatches

        spec.begin()
        self.spec = spec
        self.batches = FileBatches(spec.folder / "embedded", spec.sources)
        self.batches.query_id  # noqa: B018 (created before the first batch needs it)

    def landed(self) -> dict[str, set[str]]:
        return self.batches.landed()

    def step(self, among: dict[str, set[str]] | None) -> bool:
        """Run one batch; False when there was none to run."""
        from robusta.engine.embedded.streaming import EmbeddedMicroBatch

        batch = self.batches.next(among)
        if batch is None:
            return False
        spec = self.spec
        try:
            spec.run_batch(
                lambda pointer: EmbeddedMicroBatch(spec.plan, spec.sources, batch, pointer),
                batch.id,
            )
        except RobustaError:
            raise
        except Exception as exc:
            raise StreamingError(
                f"stream robusta_{spec.plan.name} stopped: {type(exc).__name__}: {exc}; rerun "
                "`robusta stream` once fixed (it resumes from its checkpoint)"
            ) from exc
        self.batches.commit(batch)
        return True


def _stream_embedded(
    config: ProjectConfig,
    streams: Sequence[SpecStream],
    trigger: Duration,
    available_now: bool,
    stop: threading.Event,
    report: Report,
    every: float,
    upkeep: Upkeep,
) -> None:
    """The streams polled in this process (``engine.embedded.streaming``): every trigger,
    one micro-batch per spec and monitored source that has new files. ``available_now``
    stops once the files landed at the start are processed."""
    from robusta.jobs.volumes import EmbeddedVolumes, monitored_sources

    plans = [s.plan for s in streams]
    pollers: list[Any] = [EmbeddedPoller(s) for s in streams]
    for source in monitored_sources(config.sources, plans):
        folder = config.streaming.checkpoint / "volumes" / source.name
        pollers.append(EmbeddedVolumes(config, source, folder))
    landed = [p.landed() if available_now else None for p in pollers]
    reported = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        worked = False
        for poller, among in zip(pollers, landed, strict=True):
            if stop.is_set():
                break
            worked = poller.step(among) or worked
        if time.monotonic() - reported >= every:
            reported = time.monotonic()
            report([s.status(active=True) for s in streams])
        if available_now and not worked:
            return
        upkeep.run_if_due()
        stop.wait(max(0.0, trigger.micros / 1e6 - (time.monotonic() - started)))
