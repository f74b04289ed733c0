"""`robusta upload`: tiles from Iceberg to the online store, then the version pointer.

Per spec, an upload serves every window from the version pointer ``p`` backwards:

- ``p`` = the end of the last fully ingested bucket: the end of the tiles' coverage (or
  ``--at``), floored to the finest granularity;
- the *horizon* ``H = floor(p - longest window - margin, largest granularity)``; a key's tile
  record holds its tiles of every granularity in ``[H, p)``, so lookups at any time from
  ``H + longest window`` on are exact;
- lifetime windows also need everything before ``H``: the key's largest-granularity tiles
  before ``H`` are merged (a left fold in time order, as the assembler would) into one
  *prefix* tile at ``H - largest``, so lookups read one tile instead of the whole history
  and still get bit-identical values;
- a pre-assembled spec stores each key's final values as of ``p`` instead.

Records go to a new generation; one atomic commit then makes it (and ``p``) live and the old
generation is dropped, so a crash mid-upload leaves the previous pointer and values served.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.errors import RobustaError
from robusta.plan.assembly import GroupAssembler, Rows
from robusta.plan.key_assembly import BUCKET_START
from robusta.plan.keys import record_keys
from robusta.plan.model import SpecPlan, TileGroup
from robusta.plan.selection import choose_specs
from robusta.spec.durations import Duration, floor_to, from_micros, to_micros
from robusta.spec.model import OnlineConfig, ProjectConfig
from robusta.store.files import Storage
from robusta.store.online import OnlineStore, Record, SpecState, open_online_store
from robusta.store.online.base import heads_table, is_heads_table
from robusta.store.online.records import key_runs, tile_records
from robusta.store.online.value_records import value_records
from robusta.store.tiles import read_bucket, tile_identity
from robusta.workspace import Workspace

Step = Callable[[str], None]
DEFAULT_MARGIN = Duration.parse("1d")


_COMMIT_TRIES = 5  # compare-and-set attempts while a stream moves the live state


class UploadError(RobustaError, ValueError):
    """The tiles cannot be uploaded as asked (not materialized, stale, out of range)."""


@dataclass
class SpecUpload:
    spec: str
    mode: str
    pointer: str
    horizon: str
    keys: int = 0
    records: int = 0
    dropped: int = 0
    seconds: float = 0.0
    note: str = ""  # why nothing was served, when records is 0
    executor_tasks: int = 0  # Spark tasks that wrote the records (0: written by this process)


@dataclass
class UploadReport:
    specs: list[SpecUpload] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def upload(
    workspace: Workspace,
    specs: list[str] | None = None,
    at: datetime | None = None,
    *,
    step: Step = lambda _: None,
    store: OnlineStore | None = None,
    engine: str | None = None,
) -> UploadReport:
    """Upload the tiles of ``specs`` (default: all) to the configured online store.

    On the Spark engine with Redis or Aerospike, the executors write the records, a task per
    key bucket; the embedded store (a folder on this host) and a given ``store`` are written
    from this process."""
    from robusta.store.tiles import TileTables

    started = time.perf_counter()
    config = workspace.config
    plans = choose_specs(workspace.plan, specs)
    tables = TileTables(config.offline)
    report = UploadReport()
    writers, note = _writers(config, engine or config.engine, given=store is not None)
    online = store or open_online_store(config.online, config.project, create=True)
    try:
        for plan in plans:
            mode = str((config.online.options.get("modes") or {}).get(plan.name, "assemble"))
            margin = Duration.parse(config.online.options.get("margin", DEFAULT_MARGIN.name))
            job = _SpecUpload(plan, mode, margin.micros, tables, online, step, writers)
            if note:
                job.notes.append(note)
            report.specs.append(job.run(None if at is None else to_micros(at)))
    finally:
        if store is None:
            online.close()
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def _writers(config: ProjectConfig, engine: str, given: bool) -> tuple[_Executors | None, str]:
    """The executors that write the records (None: this process), and a note when a cluster
    cannot write them."""
    if engine != "spark" or given:
        return None, ""
    from robusta.engine.spark.session import is_cluster, spark_session

    if config.online.type == "embedded":
        if not is_cluster(config.spark):
            return None, ""
        return None, (
            "the embedded online store is a folder on this host, so this process wrote the "
            "records, not the executors (use Redis or Aerospike to write from the cluster)"
        )
    return _Executors(spark_session(config.spark), config.online, config.project), ""


class _SpecUpload:
    def __init__(
        self,
        plan: SpecPlan,
        mode: str,
        margin: int,
        tables: Any,
        store: OnlineStore,
        step: Step,
        writers: _Executors | None = None,
    ) -> None:
        self.plan, self.mode, self.margin = plan, mode, margin
        self.tables, self.store, self.step = tables, store, step
        self.writers = writers  # None: records are written from this process
        self.tasks = 0  # executor tasks that wrote records
        self.notes: list[str] = []  # what the report should say about this upload

    def run(self, at: int | None) -> SpecUpload:
        started = time.perf_counter()
        loaded = [(g, self._table(g)) for g in self.plan.groups]
        pointer = min(self._pointer(g, t, at) for g, t in loaded)
        horizon = min(self._horizon(g, pointer) for g, _ in loaded)
        for group, table in loaded:
            self._check_coverage(group, table, horizon, pointer)
        live = self.store.state(self.plan.name)
        generation = self.store.claim_generation(self.plan.name, live.generation if live else 0)
        done = SpecUpload(self.plan.name, self.mode, _iso(pointer), _iso(horizon))
        for group, table in loaded:
            keys, records = self._write(group, table, horizon, pointer, generation)
            done.keys += keys
            done.records += records
        done.executor_tasks = self.tasks
        if done.records == 0:
            self.notes.append(
                f"no key has tiles between the horizon {_iso(horizon)} and the pointer "
                f"{_iso(pointer)}: lookups will find no values (materialize the events of "
                "that time, or upload --at an earlier time the tiles cover)"
            )
        done.note = "; ".join(dict.fromkeys(self.notes))
        state = SpecState(
            generation=generation,
            pointer=pointer,
            plan_hash=self.plan.hash,
            mode=self.mode,
            horizon=horizon,
            uploaded_at=to_micros(datetime.now().astimezone()),
            heads_at=pointer if self.mode == "assemble" else None,
        )
        self.step(f"{self.plan.name}: advancing the version pointer to {_iso(pointer)}")
        self._commit(state, live)
        if live is not None:  # and what uploads that never committed left in between
            for old in range(live.generation, generation):
                done.dropped += self.store.drop(self.plan.name, old)
        done.seconds = round(time.perf_counter() - started, 2)
        return done

    def _commit(self, state: SpecState, live: SpecState | None) -> None:
        """Make ``state`` live if the live generation is still ``live``'s (compare and set):
        another upload committing meanwhile makes this one fail with nothing of it live.
        A stream advancing the live state in between is not a conflict: retried."""
        from robusta.store.online.base import OnlineConflictError

        spec = self.plan.name
        for _ in range(_COMMIT_TRIES):
            now = self.store.state(spec)
            if (now.generation if now else None) != (live.generation if live else None):
                break
            try:
                self.store.apply(spec, state.generation, [], state, expected=now)
                return
            except OnlineConflictError:
                continue  # the state moved between the read and the write: look again
        self.store.drop(spec, state.generation)
        raise UploadError(
            f"another upload of spec {spec} committed while this one wrote its records; "
            f"nothing of this one is live: rerun `robusta upload --spec {spec}`"
        )

    # ---- what to upload ----------------------------------------------------------------
    def _table(self, group: TileGroup) -> Any:
        from robusta.store.tiles import ADD, STALE, stale_reason, table_state

        table = self.tables.load(group.layout.table)
        name = self.plan.name
        if table is None or table.current_snapshot() is None:
            raise UploadError(f"spec {name} has no tiles: run `robusta materialize --spec {name}`")
        state = table_state(table, group, self.plan.hash)
        if state == STALE:
            raise UploadError(
                f"the tiles of spec {name} {stale_reason(table, group, self.plan.hash)}: run "
                f"`robusta materialize --spec {name} --rebuild` first"
            )
        if state == ADD:
            raise UploadError(
                f"the tiles of spec {name} lack its added features: run "
                f"`robusta materialize --spec {name}` first (it computes just those)"
            )
        return table

    def _pointer(self, group: TileGroup, table: Any, at: int | None) -> int:
        from robusta.store.tiles import coverage

        gmin = group.layout.finest.micros
        spans = coverage(table)
        now = to_micros(datetime.now().astimezone())
        ends = [b for _, b in spans if b is not None]
        if at is None:
            if not ends:
                raise UploadError(
                    f"the tiles of spec {self.plan.name} hold no complete bucket yet (a run "
                    "covers buckets up to its latest event minus offline.allowed_lateness): "
                    f"run `robusta materialize --spec {self.plan.name}` once more data landed, "
                    "or lower offline.allowed_lateness"
                )
            return floor_to(min(max(ends), now), gmin)
        if ends and len(ends) == len(spans) and at > max(ends):
            # The pointer never passes the coverage: buckets after it may still change.
            self.notes.append(
                f"--at {_iso(at)} is after the complete tiles, which end at {_iso(max(ends))} "
                "(the latest event minus offline.allowed_lateness): serving up to there"
            )
            return floor_to(max(ends), gmin)
        if not any((a is None or a <= at) and (b is None or at <= b) for a, b in spans):
            raise UploadError(
                f"the tiles of spec {self.plan.name} do not cover {_iso(at)}: run "
                f"`robusta materialize --spec {self.plan.name}` over that time first"
            )
        return floor_to(at, gmin)

    def _horizon(self, group: TileGroup, pointer: int) -> int:
        windows = [w.duration.micros for f in group.features for w in f.windows if w.duration]
        largest = group.layout.granularities[0].micros
        return floor_to(pointer - max(windows, default=0) - self.margin, largest)

    def _check_coverage(self, group: TileGroup, table: Any, horizon: int, pointer: int) -> None:
        from robusta.store.tiles import coverage, uncovered

        needed = (None if _has_lifetime(group) else horizon, pointer)
        if uncovered(coverage(table), needed):
            raise UploadError(
                f"the tiles of spec {self.plan.name} do not cover {_iso(horizon)} to "
                f"{_iso(pointer)}: run `robusta materialize --spec {self.plan.name}` first"
            )

    def _write(
        self, group: TileGroup, table: Any, horizon: int, pointer: int, generation: int
    ) -> tuple[int, int]:
        """Write the group's records into ``generation``; returns (keys, records)."""
        lifetime = _has_lifetime(group)
        files = self.tables.files_by_bucket(table, None if lifetime else horizon, pointer)
        records = BucketRecords(group, self.tables.storage, self.mode, horizon, pointer)
        if self.writers is not None:  # on the executors, a task per key bucket
            online, project = self.writers.online, self.writers.project
            work = BucketWrite(records, online, project, self.plan.name, generation)
            self.step(f"{group.layout.table}: {len(files)} key buckets on the executors")
            counts = self.writers.run(work, files)
            self.tasks += len(counts)
            return sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
        keys = written = 0
        for i, bucket in enumerate(sorted(files)):
            self.step(
                f"{group.layout.table}: key bucket {i + 1}/{len(files)}, {keys:,} keys so far"
            )
            counted = _Counted(records(bucket, files[bucket]))
            written += self.store.write(self.plan.name, generation, counted)
            keys += counted.keys
        return keys, written


@dataclass(frozen=True, slots=True)
class BucketRecords:
    """How one key bucket's tiles become online records: its tile records from the horizon
    on (with lifetime prefixes), or its final values at the pointer (picklable: executors
    run it)."""

    group: TileGroup
    storage: Storage
    mode: str
    horizon: int
    pointer: int

    def __call__(self, bucket: int, paths: Sequence[str]) -> Iterator[Record]:
        tiles = read_bucket(
            self.storage, paths, bucket, end=self.pointer, identity=tile_identity(self.group)
        )
        table = self.group.layout.table
        if self.mode == "preassembled":
            pairs = value_records_at(self.group, tiles, self.pointer)
            return ((table, key, record) for key, record in pairs)
        stored = _record_tiles(self.group, tiles, self.horizon, _has_lifetime(self.group))
        pairs = tile_records(self.group, stored)
        # Beside the tiles, every key's values at the pointer assembled from those tiles:
        # lookups at or after it (the live ones) read those while a stream has not moved the
        # pointer (SpecState.heads_at).
        heads = value_records_at(self.group, stored, self.pointer)
        return itertools.chain(
            ((table, key, record) for key, record in pairs),
            ((heads_table(table), key, record) for key, record in heads),
        )


@dataclass(frozen=True, slots=True)
class BucketWrite:
    """A key bucket's records written into a generation from the task that computes them:
    the task opens the online store itself (picklable: executors run it)."""

    records: BucketRecords
    online: OnlineConfig
    project: str
    spec: str
    generation: int

    def __call__(self, bucket: int, paths: Sequence[str]) -> tuple[int, int]:
        counted = _Counted(self.records(bucket, paths))
        with open_online_store(self.online, self.project) as store:
            written = store.write(self.spec, self.generation, counted)
        return counted.keys, written


class _Counted:
    """The records of an iterator, counted as they are consumed (one per key)."""

    def __init__(self, records: Iterator[Record]) -> None:
        self.records, self.keys = records, 0

    def __iter__(self) -> Iterator[Record]:
        for record in self.records:
            if not is_heads_table(record[0]):  # a key's tiles, not its head values
                self.keys += 1
            yield record


@dataclass(frozen=True, slots=True)
class _Executors:
    """Where an upload's buckets are written from: Spark tasks opening ``online`` themselves."""

    spark: Any
    online: OnlineConfig
    project: str

    def run(self, work: BucketWrite, files: dict[int, list[str]]) -> dict[int, tuple[int, ...]]:
        from robusta.engine.spark.tasks import run_tasks

        return run_tasks(self.spark, work, files, ("keys", "records"))


def _has_lifetime(group: TileGroup) -> bool:
    return any(w.duration is None for f in group.features for w in f.windows)


def _micros(tiles: pa.Table) -> pa.Array:
    return tiles.column(BUCKET_START).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())


def _record_tiles(group: TileGroup, tiles: pa.Table, horizon: int, lifetime: bool) -> pa.Table:
    """The tiles online records hold: from the horizon on, after each key's lifetime
    prefix."""
    recent = tiles.filter(pc.greater_equal(_micros(tiles), horizon))
    if lifetime:
        recent = pa.concat_tables([_prefixes(group, tiles, horizon), recent])
    return recent


def _prefixes(group: TileGroup, tiles: pa.Table, horizon: int) -> pa.Table:
    """Per key, its largest-granularity tiles before ``horizon`` folded into one tile at
    ``horizon - largest`` (empty IRs for features without a lifetime window)."""
    columns = [k.column for k in group.layout.keys]
    largest = group.layout.granularities[0]
    old = tiles.filter(
        pc.and_(
            pc.less(_micros(tiles), horizon),
            pc.equal(tiles.column("granularity"), largest.name),
        )
    )
    old = old.sort_by([*((c, "ascending") for c in columns), (BUCKET_START, "ascending")])
    schema = tiles.schema
    if old.num_rows == 0:
        return schema.empty_table()
    keys = record_keys([old.column(c).combine_chunks() for c in columns])
    offsets = key_runs(keys)
    starts = offsets[:-1]
    first = pa.array(starts)
    out: dict[str, Any] = {c: old.column(c).take(first) for c in schema.names}
    out[BUCKET_START] = pa.array(np.full(len(starts), horizon - largest.micros), pa.int64()).cast(
        schema.field(BUCKET_START).type
    )
    for feature in group.features:
        op = feature.op
        if any(w.duration is None for w in feature.windows):
            state = op.from_arrow(old.column(feature.ir_column).combine_chunks())
            out[feature.ir_column] = op.to_arrow(op.merge_segments(state, offsets))
        else:
            out[feature.ir_column] = op.to_arrow(op.empty(len(starts)))
    return pa.table({n: out[n] for n in schema.names}, schema=schema)


HEAD_SLICE_TILES = 200_000  # tiles assembled at once for head (and pre-assembled) records


def value_records_at(
    group: TileGroup, tiles: pa.Table, pointer: int, *, slice_tiles: int = HEAD_SLICE_TILES
) -> Iterator[tuple[str, bytes]]:
    """Per key of ``tiles`` (every tile up to ``pointer``), its record of every output's
    value as of ``pointer``: the pre-assembled mode's records and the head records.
    Assembled a slice of keys at a time (about ``slice_tiles`` tiles), so the decoded IRs
    (sketches are Python objects) never exist for a whole key bucket at once."""
    if tiles.num_rows == 0:
        return
    columns = [k.column for k in group.layout.keys]
    texts = record_keys([tiles.column(c).combine_chunks() for c in columns])
    keyed = tiles.append_column("__key", texts)
    keyed = keyed.sort_by([("__key", "ascending")])
    runs = key_runs(keyed.column("__key").combine_chunks())
    assembler = GroupAssembler(group, tuple(o for f in group.features for o in f.outputs))
    first = 0
    while first < len(runs) - 1:
        last = int(np.searchsorted(runs, runs[first] + slice_tiles, side="right")) - 1
        last = max(last, first + 1)  # a key with more tiles than a slice still goes whole
        part = keyed.slice(int(runs[first]), int(runs[last] - runs[first]))
        starts = pa.array(runs[first:last] - runs[first], pa.int64())
        n = last - first
        rows = Rows(
            keys=[part.column(c).take(starts).combine_chunks() for c in columns],
            ts=np.full(n, pointer, np.int64),
            ts_valid=np.ones(n, np.bool_),
        )
        values = assembler.assemble(part.drop_columns(["__key"]), rows)
        yield from value_records(part.column("__key").take(starts).combine_chunks(), values)
        first = last


def _iso(micros: int) -> str:
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["UploadError", "UploadReport", "upload", "value_records_at"]
