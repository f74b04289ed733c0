"""The Spark stream's open tiles in Spark's state store (RocksDB), on the executors.

The spec query's rows go through one ``transformWithStateInPandas`` operator, grouped by
(tile group, day, key bucket): every row once per tile group, its *day* the largest-granularity
bucket of its time, its key bucket ``pmod(hash(primary key), key_buckets)``. Per grouping key
the state (:class:`TileProcessor`) holds

- ``tiles``: a map from key (its state id, ``plan.open_tiles.key_ids``) to that key's tiles of
  the day, every granularity, as one Arrow record batch;
- ``log``: per tile end and piece, the tiles a micro-batch changed with that end (and every
  tile of a key new to the state), at most :data:`PIECE_ROWS` a piece, and ``ends``: per tile
  end, how many pieces it has. The close of a bucket reads the few entries of its end and
  keeps each tile's latest version (``plan.open_tiles.latest_versions``), instead of every
  key's tiles one state read at a time (a close of an hour holding a million keys took 90 s);
- ``closed``: the pointer up to which its tiles were emitted as closed;

and an event-time timer at the end of every bucket (any granularity) it holds a tile of.

The version pointer is Spark's event-time watermark, floored to the finest granularity: the
watermark is set on ``least(event time, batch time) - streaming.watermark`` (the batch time:
``current_timestamp()``, fixed per batch in Spark's offset log, so a replay sees the same)
and that column is dropped before the operator, so Spark drops no row as late: the operator
splits them itself. In batch ``N`` the watermark is the one of the batches before it, so:

- rows before the pointer are *late*: counted and handed back whole (the late-events table);
- the others are tiled (``engine.embedded.tiles.finest_tiles``: pure Arrow) and merged into
  the stored tiles of the keys they touch (``plan.open_tiles.advance``); only those keys'
  values are read and written, and their full tiles of the day are handed back (online);
- timers at or before the watermark fire after the rows: each hands back the tiles of its
  grouping key that closed since its ``closed`` mark (from ``log``, whose entries it then
  deletes), and when its day has closed, clears the grouping key's state.

So a bucket closes one micro-batch after the batch whose events passed it; Spark runs that
batch at once, without data, because the watermark moved. Everything handed back reaches the
driver as ``(group, kind, pointer, data)`` rows, ``data`` an Arrow IPC stream
(:func:`collect_output`), where the stream job commits it (``jobs.stream``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.engine.embedded.tiles import finest_tiles, utc_micros
from robusta.engine.spark.tiles import q
from robusta.plan.keys import key_buckets, spark_key_bucket
from robusta.plan.model import SpecPlan, TileGroup
from robusta.plan.open_tiles import (
    BUCKET,
    CHANGED,
    advance,
    bucket_micros,
    closing_from,
    key_ids,
    latest_versions,
    log_pieces,
    run_offsets,
)
from robusta.spec.durations import floor_to, latest
from robusta.store.online.records import decode, encode, one_batch, own_slices
from robusta.store.tiles import tile_schema

GROUP = "__group"  # the tile group's index in the plan
DAY = "__day"  # the row's largest-granularity bucket start, epoch micros
KEY_BUCKET = "__state_bucket"
CAPPED = "__capped"  # least(event time, batch time), epoch micros: what the watermark follows
NULL_KEY = "__null_key"  # a key of some tile group is null
WATERMARK = "__watermark"
NO_DAY = -1  # the day of a row without a time (no day starts there: days are whole buckets)
OUTPUT_SCHEMA = "group INT, kind STRING, pointer LONG, data BINARY"
SEED_SCHEMA = f"{GROUP} INT, {DAY} LONG, {KEY_BUCKET} INT, data BINARY"
TOUCHED, CLOSING, LATE, STATS = "touched", "closing", "late", "stats"
STATS_SCHEMA = pa.schema(
    [
        ("rows", pa.int64()),
        ("late", pa.int64()),
        ("null_keys", pa.int64()),
        ("null_timestamps", pa.int64()),
        ("max_ts", pa.int64()),
        ("max_capped", pa.int64()),
        ("state_reads", pa.int64()),  # keys' tiles read from the state store
        ("state_writes", pa.int64()),  # keys' tiles written to it
    ]
)
PIECE_ROWS = 50_000  # tiles per value handed back (tens of MB at most)
BULK_SHARE = 4  # read a map whole when the keys wanted are at least a quarter of it
STATE_PROVIDER = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
CHANGELOG_CHECKPOINTS = "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled"


@dataclass(frozen=True)
class StateLayout:
    """What the executors need of the stream (pickled once, with the processor)."""

    plan: SpecPlan
    rows: pa.Schema  # the spec query's rows, as Arrow
    start: int | None  # the stream's start pointer: rows before it are late from the first


# ---- the query --------------------------------------------------------------------------------
def stateful_rows(events: Any, plan: SpecPlan, delay: int) -> Any:
    """The spec query's rows with the watermark set, once per tile group, with the columns
    the operator groups and counts by."""
    from pyspark.sql import functions as F

    ts = F.col(q(plan.spec.timestamp)).cast("timestamp")
    capped = F.when(ts.isNotNull(), F.least(ts, F.current_timestamp()))  # least skips nulls
    keys = sorted({k.column for g in plan.groups for k in g.layout.keys})
    null_key = F.lit(False)
    for key in keys:
        null_key = null_key | F.col(q(key)).isNull()
    largest = plan.spec.granularities[0].micros
    micros = F.unix_micros(ts)
    for name in _exact_as_text(events):
        events = events.withColumn(name, F.col(q(name)).cast("string"))
    rows = (
        events.withColumn(CAPPED, F.unix_micros(capped))
        .withColumn(NULL_KEY, null_key)
        .withColumn(WATERMARK, F.timestamp_micros(F.col(CAPPED) - F.lit(delay)))
        .withWatermark(WATERMARK, "0 seconds")
        .drop(WATERMARK)  # no column of the operator carries it: Spark drops no row as late
        .withColumn(GROUP, F.explode(F.array(*[F.lit(i) for i in range(len(plan.groups))])))
        .withColumn(DAY, F.coalesce(micros - F.pmod(micros, F.lit(largest)), F.lit(NO_DAY)))
    )
    bucket: Any = None
    for i, group in enumerate(plan.groups):
        expr = key_bucket(group)
        bucket = (
            F.when(F.col(GROUP) == i, expr)
            if bucket is None
            else bucket.when(F.col(GROUP) == i, expr)
        )
    # Never null: pyspark hands a batch's grouping keys over through pandas, where a null
    # turns a column into floats, and the state is then keyed by a key it cannot encode.
    return rows.withColumn(KEY_BUCKET, F.coalesce(bucket, F.lit(-1)))


def _exact_as_text(events: Any) -> list[str]:
    """The query's BIGINT columns: pyspark hands the operator pandas frames in which an
    integer column with a null turns to float64 (exact only up to 2^53), so they travel as
    text and are cast back (``_Processor._arrow``)."""
    from pyspark.sql.types import LongType

    return [f.name for f in events.schema.fields if isinstance(f.dataType, LongType)]


def key_bucket(group: TileGroup) -> Any:
    """The state's key bucket of a row: its tile files' key bucket (``plan.keys``), of the
    primary key cast to its entity type, as the tiles hold it."""
    from pyspark.sql import functions as F

    primary = next(k for k in group.layout.keys if k.column == group.layout.primary)
    typed = f"CAST({q(primary.column)} AS {'BIGINT' if primary.type.is_integer else 'STRING'})"
    return F.expr(spark_key_bucket(typed, group.layout.key_buckets))


def tile_state(rows: Any, layout: StateLayout, seed: Any) -> Any:
    """The operator over :func:`stateful_rows`: the DataFrame of what it hands back."""
    grouped = rows.groupBy(GROUP, DAY, KEY_BUCKET)
    initial = seed.groupBy(GROUP, DAY, KEY_BUCKET)
    return grouped.transformWithStateInPandas(
        TileProcessor(layout), OUTPUT_SCHEMA, "Append", "EventTime", initialState=initial
    )


def seed_frame(spark: Any, plan: SpecPlan, tiles: dict[int, pa.Table]) -> Any:
    """The operator's initial state: per tile group index, the open tiles a batch run left
    in the day the stream starts in, one row per key (``data``: its tiles), keyed like the
    stream's rows. Empty when there are none (a restart passes an empty one: the operator
    reads an initial state in its first batch only)."""
    largest = plan.spec.granularities[0].micros
    rows = []
    for index, table in tiles.items():
        group = plan.groups[index]
        for _, run in by_key(group, table):
            tiles_of_key = pa.Table.from_batches([run])
            start = int(bucket_micros(tiles_of_key)[0].as_py())
            primary = tiles_of_key.column(group.layout.primary).combine_chunks()
            bucket = int(key_buckets(primary, group.layout.key_buckets)[0])
            rows.append((index, floor_to(start, largest), bucket, _ipc(tiles_of_key)))
    return spark.createDataFrame(rows, SEED_SCHEMA)


def by_key(group: TileGroup, tiles: pa.Table) -> Iterator[tuple[bytes, pa.RecordBatch]]:
    """``tiles`` split by key: (its state id, its tiles, holding their own values)."""
    marks = pa.table({"id": pa.array(key_ids(group, tiles), pa.binary())})
    order = pc.sort_indices(marks, sort_keys=[("id", "ascending")])
    tiles, marks = tiles.take(order), marks.take(order)
    offsets = run_offsets(marks, ["id"])
    ids = marks.column("id").to_pylist()
    runs = own_slices(one_batch(tiles), offsets)
    for a, run in zip(offsets[:-1].tolist(), runs, strict=True):
        yield ids[a], run


# ---- what the driver gets back ----------------------------------------------------------------
@dataclass
class StateOutput:
    """One micro-batch's output of the operator, on the driver."""

    rows: int = 0
    late: int = 0
    null_keys: int = 0
    null_timestamps: int = 0
    max_ts: int | None = None
    max_capped: int | None = None  # what the watermark follows (see the module docstring)
    pointer: int | None = None  # the pointer the operator used (None: it ran no key)
    state_reads: int = 0  # keys' tiles the operator read from the state store
    state_writes: int = 0
    late_rows: pa.Table | None = None
    touched: dict[int, pa.Table] = field(default_factory=dict)  # per tile group index
    closing: dict[int, pa.Table] = field(default_factory=dict)


def collect_output(frame: Any) -> StateOutput:
    """The operator's output of a micro-batch (``foreachBatch``'s frame), decoded. Always
    collected: Spark commits the operator's state only when its output was computed.
    (Collected at once: a first batch over millions of keys can pass Spark's limit on one
    job's results, ``spark.driver.maxResultSize``; a partition at a time ran the partitions
    one after another, every batch.)"""
    table = frame.toArrow()
    out = StateOutput()
    parts: dict[tuple[str, int], list[pa.Table]] = {}
    pointers = set()
    for row in table.to_pylist():
        data = pa.ipc.open_stream(row["data"]).read_all()
        if row["pointer"] is not None:
            pointers.add(int(row["pointer"]))
        if row["kind"] == STATS:
            _add_stats(out, data)
        else:
            parts.setdefault((row["kind"], int(row["group"])), []).append(data)
    if len(pointers) > 1:
        raise RuntimeError(f"the state operator used several pointers in one batch: {pointers}")
    out.pointer = pointers.pop() if pointers else None
    for (kind, group), tables in parts.items():
        joined = pa.concat_tables(tables, promote_options="default")
        if kind == LATE:
            out.late_rows = joined
        elif kind == TOUCHED:
            out.touched[group] = joined
        else:
            out.closing[group] = joined
    return out


def _add_stats(out: StateOutput, stats: pa.Table) -> None:
    for row in stats.to_pylist():
        out.rows += row["rows"]
        out.late += row["late"]
        out.null_keys += row["null_keys"]
        out.null_timestamps += row["null_timestamps"]
        out.max_ts = latest(out.max_ts, row["max_ts"])
        out.max_capped = latest(out.max_capped, row["max_capped"])
        out.state_reads += row["state_reads"]
        out.state_writes += row["state_writes"]


def _pieces(table: pa.Table, rows: int = PIECE_ROWS) -> list[bytes]:
    """``table`` as Arrow IPC values of at most ``rows`` rows each (a day's close of many
    keys must not make one cell past what Arrow and Spark hold in one)."""
    return [_ipc(table.slice(at, rows)) for at in range(0, table.num_rows, rows)]


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


# ---- the operator (on the executors) ----------------------------------------------------------
class TileProcessor:
    """The stateful processor (see the module docstring). Its base class is pyspark's
    ``StatefulProcessor``, mixed in when the operator is built (:func:`tile_state`) so this
    module imports without pyspark."""

    def __new__(cls, layout: StateLayout) -> Any:
        from pyspark.sql.streaming.stateful_processor import StatefulProcessor

        bound = type("RobustaTileProcessor", (_Processor, StatefulProcessor), {})
        return bound(layout)


class _Processor:
    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout
        self.plan = layout.plan
        self.gmin = self.plan.spec.finest.micros
        self.largest = self.plan.spec.granularities[0].micros

    def init(self, handle: Any) -> None:
        self.handle = handle
        self.tiles = handle.getMapState("tiles", "id BINARY", "data BINARY")
        self.log = handle.getMapState("log", "end LONG, piece INT", "data BINARY")
        self.ends = handle.getMapState("ends", "end LONG", "pieces INT")
        self.closed = handle.getValueState("closed", "upto LONG")
        self.count = handle.getValueState("count", "keys LONG")
        self.reads = self.writes = 0  # per call, handed back with its counts

    def close(self) -> None:
        return None

    # ---- rows -----------------------------------------------------------------------------
    def handleInputRows(
        self, key: tuple[Any, ...], rows: Iterable[Any], timerValues: Any
    ) -> Iterator[Any]:
        index, day = int(key[0]), int(key[1])
        pointer = self._pointer(timerValues)
        table = self._arrow(rows)
        ts = utc_micros(table.column(self.plan.spec.timestamp))
        late = (
            pc.fill_null(pc.less(ts, pointer), False)
            if pointer is not None
            else pa.array(np.zeros(table.num_rows, np.bool_))
        )
        self.reads = self.writes = 0
        out: list[tuple[int, str, bytes]] = []
        if index == 0 and pc.any(late).as_py():  # every row reaches group 0 once: kept there
            kept = table.filter(late).select(self.layout.rows.names)
            out += [(index, LATE, piece) for piece in _pieces(kept)]
        on_time = table.filter(pc.invert(late))
        if day != NO_DAY and on_time.num_rows:
            group = self.plan.groups[index]
            partial = finest_tiles(on_time, self.plan, group).partial
            if partial.num_rows:
                touched = self._advance(group, partial, pointer)
                out += [(index, TOUCHED, piece) for piece in _pieces(touched)]
        counted = (table, ts, late) if index == 0 else None  # rows are counted in group 0
        out.append((index, STATS, _ipc(self._stats(counted))))
        yield _frame(out, pointer)

    def _arrow(self, frames: Iterable[Any]) -> pa.Table:
        """The pandas frames Spark hands over as Arrow, in the query's own types."""
        import pandas as pd

        frame = pd.concat(list(frames), ignore_index=True)
        # By position: Spark names the operator's extra columns by position in the frames.
        fields = list(self.layout.rows)
        columns = {f.name: _column(frame.iloc[:, i], f.type) for i, f in enumerate(fields)}
        columns[CAPPED] = pa.array(frame.iloc[:, len(fields)], pa.int64(), from_pandas=True)
        columns[NULL_KEY] = pa.array(frame.iloc[:, len(fields) + 1], pa.bool_(), from_pandas=True)
        return pa.table(columns)

    def _stats(self, counted: tuple[pa.Table, pa.Array, pa.Array] | None) -> pa.Table:
        """This call's counts: of ``counted`` (rows, their times, whether late) and of its
        state reads and writes."""
        rows = late = null_keys = null_ts = 0
        newest = capped = None
        if counted is not None:
            table, ts, is_late = counted
            rows, null_ts = table.num_rows, ts.null_count
            late = int(pc.sum(is_late).as_py() or 0)
            null_keys = int(pc.sum(table.column(NULL_KEY)).as_py() or 0)
            newest, capped = pc.max(ts).as_py(), pc.max(table.column(CAPPED)).as_py()
        values = [rows, late, null_keys, null_ts, newest, capped, self.reads, self.writes]
        return pa.table([[v] for v in values], schema=STATS_SCHEMA)

    def _advance(self, group: TileGroup, partial: pa.Table, pointer: int | None) -> pa.Table:
        """The batch's finest tiles merged into the stored tiles of the keys they touch;
        their full tiles of the day (with ``__changed``), which are also stored back and,
        those changed, logged."""
        schema = tile_schema(group)
        ids = sorted(set(key_ids(group, partial)))
        before = self._read(group, ids)
        found = set() if before is None else set(key_ids(group, before))
        self.count.update((self._count() + len(ids) - len(found),))
        touched = advance(group, self.plan.hash, before, partial)
        tiles = touched.drop_columns([CHANGED]).select(schema.names).cast(schema)
        self._store(group, tiles)
        new = np.array([key not in found for key in key_ids(group, touched)], np.bool_)
        changed = np.asarray(touched.column(CHANGED).to_numpy(zero_copy_only=False), np.bool_)
        self._log(group, tiles.filter(pa.array(changed | new)), pointer)
        self._timers(group, partial)
        return touched

    def _store(self, group: TileGroup, tiles: pa.Table) -> None:
        for key, tiles_of_key in by_key(group, tiles):
            self.tiles.updateValue((key,), (encode(tiles_of_key),))
            self.writes += 1

    def _log(self, group: TileGroup, tiles: pa.Table, pointer: int | None) -> None:
        """``tiles`` (tile-table columns) into the log by end, those still open after
        ``pointer``, after the pieces each end already has."""
        rows, pieces, bounds = log_pieces(group, tiles, pointer, PIECE_ROWS)
        first: dict[int, int] = {}  # per end, the pieces it had
        for (end, piece), part in zip(pieces, own_slices(one_batch(rows), bounds), strict=True):
            if end not in first:
                found = self.ends.getValue((end,))
                first[end] = 0 if found is None else int(found[0])
            self.log.updateValue((end, first[end] + piece), (encode(part),))
            self.ends.updateValue((end,), (first[end] + piece + 1,))

    def _timers(self, group: TileGroup, partial: pa.Table) -> None:
        """A timer at the end of every bucket, any granularity, holding a finest tile of
        ``partial`` (or of seed tiles)."""
        buckets = np.unique(np.asarray(partial.column(BUCKET).to_numpy(), np.int64))
        ends: set[int] = set()
        for bucket in buckets.tolist():
            ends |= {floor_to(bucket, g.micros) + g.micros for g in group.layout.granularities}
        for end in sorted(ends):
            self.handle.registerTimer(end // 1000)

    # ---- timers ---------------------------------------------------------------------------
    def handleExpiredTimer(
        self, key: tuple[Any, ...], timerValues: Any, expiredTimerInfo: Any
    ) -> Iterator[Any]:
        index, day = int(key[0]), int(key[1])
        pointer = self._pointer(timerValues)
        mark = self.closed.get()
        before = int(mark[0]) if mark is not None else self.layout.start
        if pointer is None or (before is not None and pointer <= before):
            return
        if mark is None and not self.tiles.exists():
            return  # the day's other timers, after its close dropped the state
        group = self.plan.groups[index]
        closes, _ = closing_from(group.layout.granularities, before, pointer)
        self.reads = self.writes = 0
        out = []
        if closes:
            closing = self._closing(group, before, pointer)
            if closing is not None:
                out += [(index, CLOSING, piece) for piece in _pieces(closing)]
        if pointer >= day + self.largest:
            # The day closed: nothing of it is needed again. Its other timers (all due) find
            # the state empty.
            for state in (self.tiles, self.log, self.ends, self.closed, self.count):
                state.clear()
        else:
            self.closed.update((pointer,))
        out.append((index, STATS, _ipc(self._stats(None))))
        yield _frame(out, pointer)

    def _closing(self, group: TileGroup, before: int | None, after: int) -> pa.Table | None:
        """The tiles ending in ``(before, after]`` at their latest version, from the log,
        whose entries of those ends are then deleted; None when there is none."""
        if not self.ends.exists():
            return None
        due = sorted(
            (int(end), int(pieces))
            for (end,), (pieces,) in self.ends.iterator()
            if (before is None or end > before) and end <= after
        )
        schema = tile_schema(group)
        parts = []
        for end, pieces in due:
            for piece in range(pieces):
                found = self.log.getValue((end, piece))
                self.reads += 1
                if found is not None:
                    parts.append(pa.Table.from_batches([decode(found[0], schema)]))
                self.log.removeKey((end, piece))
            self.ends.removeKey((end,))
        parts = [part for part in parts if part.num_rows]
        return latest_versions(group, parts) if parts else None

    def _read(self, group: TileGroup, ids: list[bytes]) -> pa.Table | None:
        """The stored tiles of the keys ``ids``: one read each, or, when they are a large
        share of the keys stored (a day's close, a first file), all entries in bulk (the
        state server sends them in batches) and those kept; none when nothing is stored."""
        if not ids or not self.tiles.exists():
            return None
        schema = tile_schema(group)
        batches = []
        if len(ids) * BULK_SHARE >= self._count():
            wanted = set(ids)
            for (key,), (value,) in self.tiles.iterator():
                self.reads += 1
                if key in wanted:
                    batches.append(decode(value, schema))
        else:
            for key in ids:
                found = self.tiles.getValue((key,))
                self.reads += 1
                if found is not None:
                    batches.append(decode(found[0], schema))
        return pa.Table.from_batches(batches, schema) if batches else None

    def _count(self) -> int:
        """How many keys the grouping key's map holds."""
        known = self.count.get()
        return 0 if known is None else int(known[0])

    # ---- the seed -------------------------------------------------------------------------
    def handleInitialState(self, key: tuple[Any, ...], initialState: Any, timerValues: Any) -> None:
        """A key's open tiles from a batch run (:func:`seed_frame`): stored, indexed and
        timed as if streamed; closed up to the start (the batch run committed those)."""
        group = self.plan.groups[int(key[0])]
        schema = tile_schema(group)
        seeds = initialState["data"].tolist()  # one key's tiles each
        self.count.update((self._count() + len(seeds),))
        for raw in seeds:
            tiles = pa.ipc.open_stream(raw).read_all().select(schema.names).cast(schema)
            self._store(group, tiles)
            self._log(group, tiles, self.layout.start)
            finest = tiles.filter(pc.equal(tiles.column("granularity"), group.layout.finest.name))
            self._timers(group, pa.table({BUCKET: bucket_micros(finest)}))
        if self.layout.start is not None:
            self.closed.update((self.layout.start,))

    # ---- the pointer ----------------------------------------------------------------------
    def _pointer(self, timer_values: Any) -> int | None:
        """The version pointer of this batch: the watermark (from the batches before it)
        floored to the finest granularity, never before the stream's start."""
        watermark = int(timer_values.getCurrentWatermarkInMs())
        floored = floor_to(watermark * 1000, self.gmin) if watermark > 0 else None
        start = self.layout.start
        return start if floored is None else floored if start is None else max(start, floored)


def _column(values: Any, dtype: pa.DataType) -> pa.Array:
    """A pandas column as Arrow of the query's type (BIGINT ones come as text)."""
    if pa.types.is_int64(dtype):
        return pc.cast(pa.array(values.astype(object), pa.string(), from_pandas=True), dtype)
    return pa.array(values, type=dtype, from_pandas=True)


def _frame(out: list[tuple[int, str, bytes]], pointer: int | None) -> Any:
    import pandas as pd

    return pd.DataFrame(
        {
            "group": [o[0] for o in out],
            "kind": [o[1] for o in out],
            "pointer": pd.Series([pointer] * len(out), dtype="object"),
            "data": [o[2] for o in out],
        }
    )
