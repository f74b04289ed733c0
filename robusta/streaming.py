"""`robusta stream`: Spark Structured Streaming tiles, exactly once, into Iceberg and online.

One streaming query per spec: the spec's SQL runs over its sources read as streams (views
named like the sources), and every micro-batch goes through :meth:`SpecStream.handle`:

1. **tiles**: the batch's finest tiles (Spark,
   :func:`~robusta.engine.spark.streaming.batch_tiles`) are merged into the full values of
   every open tile (:func:`~robusta.plan.open_tiles.advance`) and written as state version
   ``N`` (with ``meta.json``: pointers, counts) into the checkpoint folder, atomically
   (rename). Late rows (before the pointer) go to the late-events table (Parquet,
   ``<warehouse>/late_events/<spec>/query=<id>/batch=N``).
2. **offline**: tiles whose bucket closed in this batch (``p_before < end <= p_after``) are
   committed to the Iceberg tile table in one snapshot whose summary records the query id and
   batch id; a snapshot with the same ids means the batch is already there (skipped).
3. **online**: the records of every key the batch touched get the new full tile values, and
   the version pointer advances, in one atomic write (:meth:`OnlineStore.apply`).

Every step can be repeated with the same result, so a crash at any point (Spark replays the
batch with the same id and input) loses and doubles nothing. The pointer is
``floor(max event time - watermark, finest granularity)``, never moving backwards; offline
comes before online, so a pointer served online is always backed by Iceberg tiles.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from robusta.engine.base import choose_engine
from robusta.engine.microbatch import MicroBatch
from robusta.errors import RobustaError
from robusta.plan.model import SpecPlan, TileGroup
from robusta.plan.open_tiles import BUCKET, CHANGED, advance, bucket_micros, open_only
from robusta.plan.selection import choose_specs
from robusta.serving.stream_records import merge_tile_records
from robusta.spec.durations import Duration, floor_to, from_micros, to_micros
from robusta.spec.model import ProjectConfig, SourceConfig
from robusta.store.online import OnlineConflictError, OnlineStore, SpecState, open_online_store
from robusta.store.tiles import (
    CommitConflictError,
    Run,
    TileTables,
    coverage,
    files_where,
    local_path,
    read_bucket,
    tile_identity,
    write_tile_files,
)
from robusta.workspace import Workspace

QUERY_PROPERTY = "robusta.stream-query"
BATCH_PROPERTY = "robusta.stream-batch"
FAULT_ENV = "ROBUSTA_STREAM_FAULT"  # tests: "phase:batch" kills the process there (SIGKILL)
KEEP_STATES = 3
COMMIT_ATTEMPTS = 5

Report = Callable[[list["SpecStatus"]], None]


class StreamingError(RobustaError, RuntimeError):
    """The stream cannot start or stopped on an error; the message says what to do."""


@dataclass
class SpecStatus:
    """Progress of one spec's stream (cumulative over restarts, from its checkpoint)."""

    spec: str
    batch: int | None = None
    rows: int = 0
    late: int = 0
    dropped: int = 0
    pointer: str | None = None
    max_event: str | None = None
    lag_seconds: float | None = None  # wall clock minus the pointer
    updated: str | None = None
    active: bool = False

    def to_json(self) -> dict[str, object]:
        return asdict(self)


# ---- entry points ---------------------------------------------------------------------------
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
    config = _config(workspace)
    name = choose_engine(config, engine)
    plans = choose_specs(workspace.plan, specs)
    streams = [SpecStream(config, plan, name) for plan in plans]
    for s in streams:  # what can be known wrong is reported before any engine starts
        s.check()
    every_trigger = trigger or config.streaming.trigger
    stop = stop or threading.Event()
    try:
        if name == "embedded":
            _stream_embedded(config, streams, every_trigger, available_now, stop, report, every)
        else:
            _stream_spark(config, streams, every_trigger, available_now, stop, report, every)
    finally:
        for s in streams:
            s.close()
    return [s.status() for s in streams]


def _stream_spark(
    config: ProjectConfig,
    streams: Sequence[SpecStream],
    trigger: Duration,
    available_now: bool,
    stop: threading.Event,
    report: Report,
    every: float,
) -> None:
    """The streams as Spark Structured Streaming queries (``foreachBatch``)."""
    from robusta.engine.spark.session import spark_session

    spark = spark_session(config.spark, app_name="robusta-stream")
    queries = []
    try:
        for s in streams:
            queries.append(s.start(spark, trigger, available_now))
        plans = [s.plan for s in streams]
        queries += _volume_streams(spark, config, plans, trigger, available_now)
        reported = time.monotonic()
        while not stop.is_set() and any(query.isActive for query in queries):
            stop.wait(0.2)
            _raise_failed(list(streams), queries)
            if time.monotonic() - reported >= every:
                reported = time.monotonic()
                report([s.status(active=True) for s in streams])
        _raise_failed(list(streams), queries)
    finally:
        for query in queries:
            if query.isActive:
                query.stop()  # an interrupted batch is replayed at the next start


def _stream_embedded(
    config: ProjectConfig,
    streams: Sequence[SpecStream],
    trigger: Duration,
    available_now: bool,
    stop: threading.Event,
    report: Report,
    every: float,
) -> None:
    """The streams polled in this process (``engine.embedded.streaming``): every trigger,
    one micro-batch per spec and monitored source that has new files. ``available_now``
    stops once the files landed at the start are processed."""
    from robusta.monitor import EmbeddedVolumes, monitored_sources

    plans = [s.plan for s in streams]
    pollers: list[Any] = [s.poller() for s in streams]
    for source in monitored_sources(config, plans):
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
        stop.wait(max(0.0, trigger.micros / 1e6 - (time.monotonic() - started)))


def _volume_streams(
    spark: Any,
    config: ProjectConfig,
    plans: Sequence[SpecPlan],
    trigger: Duration,
    available_now: bool,
) -> list[Any]:
    """One streaming query per monitored source the specs read (``robusta.monitor``)."""
    from robusta.monitor import monitored_sources, stream_volumes

    every = f"{trigger.micros // 1000} milliseconds"
    queries = []
    for source in monitored_sources(config, plans):
        checkpoint = str(config.streaming.checkpoint / "volumes" / source.name)
        queries.append(stream_volumes(spark, config, source, checkpoint, every, available_now))
    return queries


def stream_status(workspace: Workspace, specs: Sequence[str] = ()) -> list[SpecStatus]:
    """Each spec's stream progress as recorded in its checkpoint (no Spark)."""
    config = _config(workspace)
    return [SpecStream(config, plan).status() for plan in choose_specs(workspace.plan, specs)]


def _config(workspace: Workspace) -> ProjectConfig:
    config = workspace.require_valid().project.config
    assert config is not None  # require_valid guarantees it
    return config


def _raise_failed(streams: list[SpecStream], queries: list[Any]) -> None:
    for query in queries[len(streams) :]:  # the volume monitors' queries
        failure = query.exception()
        if failure is not None:
            text = str(getattr(failure, "desc", failure)).strip().splitlines()[0]
            raise StreamingError(
                f"stream {query.name} stopped: {text}; fix the cause and rerun `robusta stream`"
            ) from None
    for s, query in zip(streams, queries, strict=False):
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


# ---- one spec -------------------------------------------------------------------------------
class SpecStream:
    """A spec's streaming query and its micro-batch handler (see the module docstring)."""

    def __init__(self, config: ProjectConfig, plan: SpecPlan, engine: str | None = None) -> None:
        self.config = config
        self.plan = plan
        self.engine = engine or config.engine
        self.folder = config.streaming.checkpoint / plan.name
        self.delay = config.streaming.watermark_of(plan.name).micros
        self.gmin = plan.spec.finest.micros
        self.largest = plan.spec.granularities[0].micros
        self.late_folder = config.offline.warehouse / "late_events" / plan.name
        self._tables: TileTables | None = None
        self._store: OnlineStore | None = None
        self.failure: BaseException | None = None  # what stopped the last micro-batch
        self._read: dict[tuple[int, str], pa.Table] = {}  # state versions read (immutable)
        self.sources: list[SourceConfig] = []  # the embedded engine's landing folders

    # ---- lifecycle ------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse what the stream cannot run (before any engine starts)."""
        self._check_mode()
        self._check_query()
        self._check_engine()
        if self.engine == "embedded":
            from robusta.engine.embedded.streaming import stream_sources

            self.sources = stream_sources(self.config, self.plan.spec.sources)

    def start(self, spark: Any, trigger: Duration, available_now: bool) -> Any:
        """The Spark streaming query (after :meth:`check`)."""
        from robusta.engine.spark.sources import read_stream

        self._write_start()
        for name in self.plan.spec.sources:
            read_stream(spark, self.config, name).createOrReplaceTempView(name)
        events = spark.sql(self.plan.spec.query)
        writer = (
            events.writeStream.queryName(f"robusta_{self.plan.name}")
            .option("checkpointLocation", str(self.folder / "spark"))
            .foreachBatch(self.handle)
        )
        if available_now:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{trigger.micros // 1000} milliseconds")
        return writer.start()

    def poller(self) -> EmbeddedPoller:
        """The embedded engine's micro-batches of this spec (after :meth:`check`)."""
        self._write_start()
        return EmbeddedPoller(self)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def tables(self) -> TileTables:
        if self._tables is None:
            self._tables = TileTables(self.config.offline)
        return self._tables

    @property
    def store(self) -> OnlineStore:
        if self._store is None:
            self._store = open_online_store(self.config.online, self.config.project, create=True)
        return self._store

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

    def _check_mode(self) -> None:
        modes = self.config.online.options.get("modes") or {}
        if modes.get(self.plan.name, "assemble") != "assemble":
            raise StreamingError(
                f"spec {self.plan.name} is served pre-assembled; a stream updates tiles, so "
                f"set online.modes.{self.plan.name}: assemble (or do not stream it)"
            )

    def _write_start(self) -> None:
        """The pointer the stream starts from, fixed once per checkpoint (replays of the
        first batch must see the same one): the later of the online pointer and the end of
        the Iceberg tiles' coverage; events before it are late (batch tiles have them)."""
        path = self.folder / "start.json"
        if path.exists() and self._state_ids():
            return  # batches were computed from it: it stays
        # No batch computed yet: (re)read it, so a materialize or upload since an earlier
        # start that never got to a batch is not tiled a second time.
        ends = [self._online_pointer()]
        for group in self.plan.groups:
            table = self.tables.load(group.layout.table)
            if table is not None:
                ends += [b for _, b in coverage(table) if b is not None]
        known = [e for e in ends if e is not None]
        pointer = floor_to(max(known), self.gmin) if known else None
        _write_json(path, {"pointer": pointer, "created": _iso(to_micros(datetime.now(UTC)))})
        self.__dict__.pop("_start", None)  # read again by the batches

    @functools.cached_property
    def _start(self) -> dict[str, Any]:
        """The start (pointer, creation time); fixed once :meth:`_write_start` ran."""
        start: dict[str, Any] = json.loads((self.folder / "start.json").read_text())
        return start

    def _online_pointer(self) -> int | None:
        state = self.store.state(self.plan.name)
        return None if state is None else state.pointer

    # ---- the micro-batch ------------------------------------------------------------------
    def handle(self, frame: Any, batch_id: int) -> None:
        """Spark's ``foreachBatch``: tiles, then offline, then online; each step idempotent
        (see the module doc)."""
        from robusta.engine.spark.streaming import SparkMicroBatch

        try:
            self.run_batch(lambda pointer: SparkMicroBatch(frame, self.plan, pointer), batch_id)
        except BaseException as exc:  # kept for the caller: Spark reports it as Java text
            self.failure = exc
            raise

    def run_batch(self, rows: Callable[[int | None], MicroBatch], batch_id: int) -> None:
        """Batch ``batch_id`` whose rows ``rows(pointer)`` gives, split at the pointer."""
        meta_path = self._state(batch_id) / "meta.json"
        if not meta_path.exists():
            self._compute(rows, batch_id)
        meta = json.loads(meta_path.read_text())
        _fault("computed", batch_id)
        self._commit_offline(meta)
        _fault("offline", batch_id)
        self._apply_online(meta)
        _fault("online", batch_id)
        self._clean(batch_id)
        # Only this version can be read again (the next batch merges into it).
        self._read = {k: v for k, v in self._read.items() if k[0] == meta["tiles_from"]}

    def _compute(self, rows: Callable[[int | None], MicroBatch], batch_id: int) -> None:
        before = self._previous(batch_id)
        pointer: int | None = before["pointer"]
        batch = rows(pointer)
        try:
            stats = batch.stats()
            if stats.late:
                # Per query: a fresh checkpoint restarts batch ids and must not overwrite.
                folder = self.late_folder / f"query={self._query_id()}" / f"batch={batch_id}"
                batch.write_late(folder)
            max_ts = _max(before["max_ts"], stats.max_ts)
            after = pointer
            if max_ts is not None:
                # Capped at now: one event stamped in the future must not close buckets
                # (and turn every later event late) before their time.
                now = to_micros(datetime.now(UTC))
                newest = min(max_ts, now)
                after = _max(pointer, floor_to(newest - self.delay, self.gmin))
            tmp = self._state(batch_id).with_name(f"{batch_id}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tiles_from = batch_id
            if stats.rows - stats.late > 0:
                self._write_tiles(before, batch, pointer, tmp)
            else:
                tiles_from = before["tiles_from"]  # nothing on time: the tiles stay as they were
                tmp.mkdir(parents=True)
            meta = {
                "batch": batch_id,
                "query": self._query_id(),
                "tiles_from": tiles_from,
                "pointer_before": pointer,
                "pointer": after,
                "max_ts": max_ts,
                "rows": before["rows"] + stats.rows,
                "late": before["late"] + stats.late,
                "dropped": before["dropped"] + stats.null_keys + stats.null_timestamps,
                "batch_rows": stats.rows,
                "first_batch": before["batch"] is None,
                "written": to_micros(datetime.now(UTC)),
            }
            _write_json(tmp / "meta.json", meta)
            _fault("tiles", batch_id)
            tmp.rename(self._state(batch_id))  # the version is complete, atomically
        finally:
            batch.release()

    def _write_tiles(
        self, before: dict[str, Any], batch: MicroBatch, pointer: int | None, tmp: Path
    ) -> None:
        """The new open-tile state of every group: the batch's finest tiles (the engine's)
        merged into the previous state (Arrow, :func:`~robusta.plan.open_tiles.advance`)."""
        for group in self.plan.groups:
            stored = None
            if before["tiles_from"] is not None:
                stored = open_only(self._tiles(before["tiles_from"], group), group, pointer)
            elif self._seeded:
                stored = self._seed(group, pointer)
            partial = batch.finest_tiles(group)
            tiles = advance(group, self.plan.hash, stored, partial)
            folder = tmp / group.layout.table
            folder.mkdir(parents=True)
            pq.write_table(tiles, folder / "tiles.parquet")

    @property
    def _seeded(self) -> bool:
        """Whether the stream starts inside a largest bucket that a batch run began."""
        pointer = self._start["pointer"]
        return pointer is not None and pointer % self.largest != 0

    def _seed(self, group: TileGroup, pointer: int | None) -> pa.Table | None:
        """The open tiles of the largest bucket the stream starts in, from the batch run's
        Iceberg tiles before ``pointer`` (its finest tiles, rolled up as the stream rolls up):
        the stream continues that bucket instead of starting it empty."""
        table = self.tables.load(group.layout.table)
        if table is None or pointer is None:
            return None
        opened = floor_to(pointer, self.largest)
        files = self.tables.files_by_bucket(table, opened, pointer)
        identity = tile_identity(group)
        parts = [read_bucket(p, b, opened, pointer, identity=identity) for b, p in files.items()]
        tiles = pa.concat_tables(parts, promote_options="default") if parts else None
        if tiles is None or tiles.num_rows == 0:
            return None
        finest = tiles.filter(pc.equal(tiles.column("granularity"), group.layout.finest.name))
        partial = finest.append_column(BUCKET, bucket_micros(finest))
        return open_only(advance(group, self.plan.hash, None, partial), group, pointer)

    def _previous(self, batch_id: int) -> dict[str, Any]:
        """Meta of the latest complete state before ``batch_id`` (or the start's)."""
        done = [i for i in self._state_ids() if i < batch_id]
        if done:
            meta: dict[str, Any] = json.loads((self._state(max(done)) / "meta.json").read_text())
            return meta
        return {
            "batch": None,
            "tiles_from": None,
            "pointer": self._start["pointer"],
            "max_ts": None,
            "rows": 0,
            "late": 0,
            "dropped": 0,
        }

    # ---- offline --------------------------------------------------------------------------
    def _commit_offline(self, meta: dict[str, Any]) -> None:
        before, after = meta["pointer_before"], meta["pointer"]
        if after is None or after == before or meta["tiles_from"] is None:
            return
        covered = (self._start["pointer"] if meta["first_batch"] else before, after)
        for group in self.plan.groups:
            for attempt in range(COMMIT_ATTEMPTS):
                try:
                    self._commit_group(group, meta, covered)
                    break
                except CommitConflictError:
                    # A concurrent commit (a materialize) won: look again at what it wrote.
                    if attempt == COMMIT_ATTEMPTS - 1:
                        raise
                    time.sleep(0.2 * (attempt + 1))

    def _commit_group(
        self, group: TileGroup, meta: dict[str, Any], covered: tuple[int | None, int]
    ) -> None:
        """The group's tiles closed by this batch, in one snapshot naming the batch. Tiles of
        the same buckets that another writer committed while they were open (a batch run
        over the open day) are replaced: a closing bucket's tiles are the stream's, the
        values it served online."""
        before, after = meta["pointer_before"], meta["pointer"]
        table = self.tables.ensure(group, self.plan.hash)
        if _committed(table, meta["query"], meta["batch"]):
            return
        tiles = self._tiles(meta["tiles_from"], group)
        closing = _closing(tiles, group, before, after)
        run_id = f"stream-{meta['query'][:8]}-{meta['batch']}"
        run = Run(run_id, local_path(table.location()) / "runs" / run_id)
        shutil.rmtree(run.folder, ignore_errors=True)
        run.folder.mkdir(parents=True)
        write_tile_files(tiles.filter(closing), group, run.folder)
        displaced = self._displaced(table, group, meta, run.folder / "kept")
        summary = {
            "robusta.spec-version": self.plan.hash,
            QUERY_PROPERTY: meta["query"],
            BATCH_PROPERTY: str(meta["batch"]),
        }
        # One snapshot even without tiles (no events in the closed buckets): it records the
        # batch and the coverage, and fails if anyone committed since the table was read.
        self.tables.replace(table, displaced, run, summary, covered=covered)

    def _displaced(
        self, table: Any, group: TileGroup, meta: dict[str, Any], folder: Path
    ) -> list[Any]:
        """Other writers' data files holding tiles of the buckets this batch closes; their
        other rows are written to ``folder`` (the commit replaces the files). Only looked
        for when another writer committed since the stream started (before its start, batch
        runs covered no bucket it holds open), or when it continues a batch run's bucket."""
        created = datetime.strptime(self._start["created"], "%Y-%m-%dT%H:%M:%SZ")
        since = int(created.replace(tzinfo=UTC).timestamp() * 1000)
        # A stream seeded from a batch run's open bucket replaces that run's tiles too.
        if not self._seeded and not any(
            snapshot.timestamp_ms >= since and summary.get(QUERY_PROPERTY) != meta["query"]
            for snapshot, summary in _summaries(table)
        ):
            return []
        before, after = meta["pointer_before"], meta["pointer"]
        displaced: list[Any] = []
        for data_file in _closing_files(table, group, before, after):
            rows = pq.read_table(local_path(data_file.file_path))
            hit = _closing(rows, group, before, after)
            if not pc.any(hit).as_py():
                continue
            kept = rows.filter(pc.invert(hit))
            if kept.num_rows:
                folder.mkdir(parents=True, exist_ok=True)
                pq.write_table(kept, folder / f"{len(displaced):05d}.parquet")
            displaced.append(data_file)
        return displaced

    # ---- online ---------------------------------------------------------------------------
    def _apply_online(self, meta: dict[str, Any]) -> None:
        if meta["pointer"] is None or meta["tiles_from"] is None:
            return
        live = self.store.state(self.plan.name)
        self._check_live(live)
        generation = live.generation if live is not None else 1
        records = []
        oldest = None
        for group in self.plan.groups:
            tiles = self._tiles(meta["tiles_from"], group)
            if meta["tiles_from"] == meta["batch"]:
                changed = tiles.filter(tiles.column(CHANGED))
                records += merge_tile_records(
                    self.store, self.plan.name, generation, group, changed
                )
            if live is None and tiles.num_rows:
                oldest = _min(oldest, int(pc.min(bucket_micros(tiles)).as_py()))
        pointer = max(meta["pointer"], live.pointer if live is not None else meta["pointer"])
        state = SpecState(
            generation=generation,
            pointer=pointer,
            plan_hash=self.plan.hash,
            mode="assemble",
            horizon=live.horizon if live is not None else self._fresh_horizon(oldest, pointer),
            uploaded_at=to_micros(datetime.now(UTC)),
        )
        try:
            self.store.apply(self.plan.name, generation, records, state, expected=live)
        except OnlineConflictError:
            raise self._taken_over() from None
        _write_json(self.folder / "online.json", {"generation": generation})

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
        mine = self.folder / "online.json"
        if mine.exists() and json.loads(mine.read_text())["generation"] != live.generation:
            raise self._taken_over()

    def _taken_over(self) -> StreamingError:
        return StreamingError(
            f"an upload replaced the online generation of spec {self.plan.name} while it "
            "was streamed; restart the stream with a fresh checkpoint (streaming.checkpoint)"
        )

    def _fresh_horizon(self, oldest: int | None, pointer: int) -> int:
        """A fresh stream holds every event from its first one on; nothing earlier exists
        for it, so lookups are exact from that day on, whatever their window."""
        longest = max(
            (w.duration.micros for f in self.plan.features for w in f.windows if w.duration),
            default=0,
        )
        first_day = floor_to(oldest if oldest is not None else pointer, self.largest)
        return floor_to(first_day - longest, self.largest)

    def _tiles(self, batch_id: int, group: TileGroup) -> pa.Table:
        """A state version's tiles of one group (read with pyarrow: a few thousand rows),
        read once: the offline and online steps, then the next batch, use the same one."""
        key = (batch_id, group.layout.table)
        if key not in self._read:
            self._read[key] = pq.read_table(self._state(batch_id) / group.layout.table)
        return self._read[key]

    # ---- checkpoint folders ---------------------------------------------------------------
    def _state(self, batch_id: int) -> Path:
        return self.folder / "state" / str(batch_id)

    def _state_ids(self) -> list[int]:
        root = self.folder / "state"
        if not root.is_dir():
            return []
        return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())

    def _clean(self, batch_id: int) -> None:
        """Drop state versions no replay can need (the last few, and the one tiles_from
        points at, stay)."""
        ids = self._state_ids()
        meta = json.loads((self._state(batch_id) / "meta.json").read_text())
        keep = set(ids[-KEEP_STATES:]) | {meta["tiles_from"]}
        for i in ids:
            if i not in keep and i < batch_id:
                shutil.rmtree(self._state(i), ignore_errors=True)

    def _query_id(self) -> str:
        """The query id (Spark's, or the embedded log's): stable across restarts of the
        same checkpoint."""
        if self.engine == "embedded":
            return str(json.loads((self.folder / "embedded" / "metadata.json").read_text())["id"])
        metadata = self.folder / "spark" / "metadata"
        return str(json.loads(metadata.read_text().splitlines()[0])["id"])

    def status(self, *, active: bool = False) -> SpecStatus:
        ids = self._state_ids()
        if not ids:
            return SpecStatus(self.plan.name, active=active)
        meta = json.loads((self._state(ids[-1]) / "meta.json").read_text())
        pointer = meta["pointer"]
        now = to_micros(datetime.now(UTC))
        return SpecStatus(
            spec=self.plan.name,
            batch=meta["batch"],
            rows=meta["rows"],
            late=meta["late"],
            dropped=meta["dropped"],
            pointer=None if pointer is None else _iso(pointer),
            max_event=None if meta["max_ts"] is None else _iso(meta["max_ts"]),
            lag_seconds=None if pointer is None else round((now - pointer) / 1e6, 1),
            updated=_iso(meta["written"]),
            active=active,
        )


class EmbeddedPoller:
    """One spec's micro-batches on the embedded engine: each :meth:`step` runs the next
    batch of its landing folders through :meth:`SpecStream.run_batch`, and logs it done."""

    def __init__(self, spec: SpecStream) -> None:
        from robusta.engine.embedded.streaming import FileBatches

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


# ---- helpers --------------------------------------------------------------------------------
def _summaries(table: Any) -> Iterator[tuple[Any, dict[str, str]]]:
    """Every snapshot of ``table`` with its summary's properties."""
    for snapshot in table.snapshots():
        yield snapshot, (snapshot.summary.additional_properties if snapshot.summary else {})


def _committed(table: Any, query: str, batch: int) -> bool:
    return any(
        summary.get(QUERY_PROPERTY) == query and summary.get(BATCH_PROPERTY) == str(batch)
        for _, summary in _summaries(table)
    )


def _closing(tiles: pa.Table, group: TileGroup, before: int | None, after: int) -> pa.Array:
    """Whether each tile closes between the pointers: ``before < end <= after``."""
    ends = pc.add(bucket_micros(tiles), _sizes(tiles, group))
    closing = pc.less_equal(ends, after)
    return closing if before is None else pc.and_(closing, pc.greater(ends, before))


def _closing_files(table: Any, group: TileGroup, before: int | None, after: int) -> list[Any]:
    """Data files that may hold tiles closing between the pointers (partition and column
    statistics prune the rest): per granularity, ``before - size < start <= after - size``."""
    from pyiceberg import expressions as ex

    above: Any = ex.GreaterThan  # pydantic models: untyped positionals
    at_most: Any = ex.LessThanOrEqual
    equal: Any = ex.EqualTo
    condition: Any = ex.AlwaysFalse()
    for size in group.layout.granularities:
        one: Any = ex.And(
            equal("granularity", size.name), at_most("bucket_start", after - size.micros)
        )
        if before is not None:
            one = ex.And(one, above("bucket_start", before - size.micros))
        condition = ex.Or(condition, one)
    return files_where(table, condition)


def _sizes(tiles: pa.Table, group: TileGroup) -> pa.Array:
    """Each tile's granularity in microseconds."""
    names = [g.name for g in group.layout.granularities]
    index = pc.index_in(tiles.column("granularity"), value_set=pa.array(names))
    micros = pa.array([g.micros for g in group.layout.granularities], pa.int64())
    return pc.take(micros, index)


def _fault(phase: str, batch_id: int) -> None:
    """Test hook: ``ROBUSTA_STREAM_FAULT=phase:batch`` kills this process (SIGKILL) there."""
    wanted = os.environ.get(FAULT_ENV)
    if wanted and wanted == f"{phase}:{batch_id}":
        os.kill(os.getpid(), signal.SIGKILL)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _iso(micros: int) -> str:
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["SpecStatus", "StreamingError", "stream", "stream_status"]
