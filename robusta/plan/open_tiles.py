"""The streaming job's tile state: every open tile, advanced by one micro-batch's tiles.

A stream keeps, per tile group, the full value of every tile (all granularities) of the
largest-granularity buckets that are still open. A micro-batch's rows are tiled at the
finest granularity (by Spark, with each operator's ``spark_build``); :func:`advance` then
merges those few thousand tiles into the state here, with the operators' own Python merge
(:meth:`~robusta.ops.base.Operator.merge_segments`, the definition both assemblers use):

1. each finest tile in both is merged, stored value first (float folds run in order of
   arrival); a tile in one of them keeps its bytes;
2. every coarser tile containing a changed tile is rolled up again from all its children in
   bucket order, exactly like the batch job's rollups; the other stored tiles are carried
   over byte for byte.

Pure pyarrow and numpy: a micro-batch touches a few thousand tiles, far below what is worth a
Spark job (each costs a second of scheduling on a small machine).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.plan.keys import key_buckets, record_keys
from robusta.plan.model import BaseFeature, TileGroup
from robusta.spec.durations import Duration, floor_to

BUCKET = "__bucket"  # bucket start, epoch micros (int64)
CHANGED = "__changed"  # state column: the tile was (re)computed by this micro-batch
# Optional leading sort key of a batch build's finest tiles (its file: key bucket and month),
# kept through the rollups so the tiles come out in the writer's file order (``file_order``).
PART = "__part"
TS_TYPE = pa.timestamp("us", tz="UTC")
_MAX_KEY_TEXT = 400  # state keys stay short (LMDB takes 511 bytes): longer texts by digest


def open_only(state: pa.Table, group: TileGroup, pointer: int | None) -> pa.Table:
    """The stored tiles still needed: those whose largest-granularity bucket is open
    (ends after ``pointer``)."""
    if pointer is None:
        return state
    largest = group.layout.granularities[0].micros
    starts = bucket_micros(state)
    day_end = pc.add(pc.subtract(starts, _floor_mod(starts, largest)), largest)
    return state.filter(pc.greater(day_end, pointer))


def advance(group: TileGroup, version: str, stored: pa.Table | None, partial: pa.Table) -> pa.Table:
    """Every open tile after a micro-batch, in the tile table's columns plus ``__changed``.

    ``stored``: the open tiles before it (tile-table columns); ``partial``: the batch's
    finest tiles as (key columns, ``__bucket``, ``events``, IR columns), keys not null.
    """
    sizes = sorted(group.layout.granularities, key=lambda g: g.micros)  # finest first
    part = partial.column(PART) if stored is None and PART in partial.column_names else None
    partial = _normalized(group, partial)
    if part is not None:  # rollups run within each part (no tile spans two: ``file_order``)
        partial = partial.append_column(PART, part)
    old = {size.name: _level(group, stored, size) for size in sizes}
    level = _merge_finest(group, old[sizes[0].name], partial)
    frames = [_finish(group, version, sizes[0], level)]
    for size in sizes[1:]:
        level = _rollup(group, level, old[size.name], size)
        frames.append(_finish(group, version, size, level))
    return pa.concat_tables(frames)


# ---- levels -----------------------------------------------------------------------------------
def _columns(group: TileGroup) -> list[str]:
    return [*_keys(group), BUCKET, "events", *(f.ir_column for f in group.features)]


def _keys(group: TileGroup) -> list[str]:
    return [k.column for k in group.layout.keys]


def _schema(group: TileGroup) -> pa.Schema:
    keys = [pa.field(k.column, k.type.arrow()) for k in group.layout.keys]
    irs = [pa.field(f.ir_column, f.ir_type) for f in group.features]
    return pa.schema([*keys, pa.field(BUCKET, pa.int64()), pa.field("events", pa.int64()), *irs])


def _normalized(group: TileGroup, partial: pa.Table) -> pa.Table:
    return partial.select(_columns(group)).cast(_schema(group))


def _level(group: TileGroup, stored: pa.Table | None, size: Duration) -> pa.Table:
    """The stored tiles of one granularity as (keys, ``__bucket``, events, IRs)."""
    if stored is None:
        return _schema(group).empty_table()
    rows = stored.filter(pc.equal(stored.column("granularity"), size.name))
    rows = rows.append_column(BUCKET, bucket_micros(rows))
    return rows.select(_columns(group)).cast(_schema(group))


def _merge_finest(group: TileGroup, old: pa.Table, new: pa.Table) -> pa.Table:
    """Finest tiles after the batch, with ``__changed``: merged (stored first), new, or
    carried over."""
    if old.num_rows == 0:  # a batch build: every tile is new
        return _flag(new, True)
    on = [*_keys(group), BUCKET]
    pairs = _indexed(new, on, "__n").join(_indexed(old, on, "__o"), keys=on, join_type="left outer")
    n_idx = pairs.column("__n").to_numpy()
    o_idx = pc.fill_null(pairs.column("__o"), -1).to_numpy()
    both = o_idx >= 0
    merged = _merge_pairs(group, old.take(o_idx[both]), new.take(n_idx[both]))
    fresh = new.take(n_idx[~both])
    untouched = np.setdiff1d(np.arange(old.num_rows), o_idx[both])
    return pa.concat_tables(
        [
            _flag(merged, True),
            _flag(fresh, True),
            _flag(old.take(untouched), False),
        ]
    )


def _merge_pairs(group: TileGroup, first: pa.Table, second: pa.Table) -> pa.Table:
    """Row i of ``first`` merged with row i of ``second`` (in that order)."""
    n = first.num_rows
    picks = np.empty(2 * n, dtype=np.int64)
    picks[0::2] = np.arange(n)
    picks[1::2] = np.arange(n) + n
    offsets = np.arange(0, 2 * n + 1, 2, dtype=np.int64)
    both = pa.concat_tables([first, second]).take(picks)
    columns = {k: first.column(k) for k in [*_keys(group), BUCKET]}
    columns["events"] = pc.add(first.column("events"), second.column("events"))
    for feature in group.features:
        columns[feature.ir_column] = _merged(feature, both.column(feature.ir_column), offsets)
    return pa.table(columns, schema=_schema(group))


def _rollup(group: TileGroup, children: pa.Table, old: pa.Table, size: Duration) -> pa.Table:
    """Tiles of ``size`` after the batch: those containing a changed child rolled up again
    from all their children (bucket order); the other stored ones carried over."""
    keys = _keys(group)
    parents = pc.subtract(children.column(BUCKET), _floor_mod(children.column(BUCKET), size.micros))
    tagged = children.append_column("__parent", parents)
    on = [*keys, "__parent"]
    part = [PART] if PART in tagged.column_names else []
    if old.num_rows == 0 and pc.all(tagged.column(CHANGED)).as_py() is not False:
        rows = _sorted(tagged, [*part, *on, BUCKET])  # a batch build: every parent rolled up
        touched = None
    else:
        touched = tagged.filter(tagged.column(CHANGED)).select(on).group_by(on).aggregate([])
        chosen = _indexed(tagged.select(on), on, "__c").join(touched, keys=on, join_type="inner")
        rows = _sorted(tagged.take(chosen.column("__c")), [*on, BUCKET])
    offsets = run_offsets(rows, on)
    starts = offsets[:-1]
    columns = {k: rows.column(k).take(starts) for k in keys}
    columns[BUCKET] = rows.column("__parent").take(starts)
    events = rows.column("events").to_numpy()
    columns["events"] = pa.array(
        np.add.reduceat(events, starts) if len(starts) else np.empty(0, np.int64), pa.int64()
    )
    for feature in group.features:
        columns[feature.ir_column] = _merged(feature, rows.column(feature.ir_column), offsets)
    redone = pa.table(columns, schema=_schema(group))
    if touched is None:
        if part:
            redone = redone.append_column(PART, rows.column(PART).take(starts))
        return _flag(redone, True)
    kept = _indexed(old, [*keys, BUCKET], "__o").join(
        touched.rename_columns([*keys, BUCKET]), keys=[*keys, BUCKET], join_type="left anti"
    )
    return pa.concat_tables([_flag(redone, True), _flag(old.take(kept.column("__o")), False)])


def _finish(group: TileGroup, version: str, size: Duration, level: pa.Table) -> pa.Table:
    """Tile-table columns (plus ``__changed``) of one granularity's tiles."""
    layout = group.layout
    primary = level.column(layout.primary).combine_chunks()
    buckets = pa.array(key_buckets(primary, layout.key_buckets), pa.int32())
    n = level.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray] = {k: level.column(k) for k in _keys(group)}
    columns["key_bucket"] = buckets
    columns["granularity"] = pa.nulls(n, pa.string()).fill_null(size.name)
    columns["bucket_start"] = level.column(BUCKET).cast(TS_TYPE)
    columns["events"] = level.column("events")
    for feature in group.features:
        columns[feature.ir_column] = level.column(feature.ir_column)
    columns["spec_version"] = pa.nulls(n, pa.string()).fill_null(version)
    columns[CHANGED] = level.column(CHANGED)
    return pa.table(columns)


# ---- helpers ------------------------------------------------------------------------------------
def _merged(feature: BaseFeature, irs: pa.ChunkedArray | pa.Array, offsets: np.ndarray) -> pa.Array:
    """Each segment of ``irs`` folded with the operator's own merge."""
    op = feature.op
    column = irs.combine_chunks() if isinstance(irs, pa.ChunkedArray) else irs
    if len(offsets) <= 1:
        return pa.array([], feature.ir_type)
    merged: pa.Array = op.merge_arrow(column, offsets).cast(feature.ir_type)
    return merged


def _sorted(rows: pa.Table, on: Sequence[str]) -> pa.Table:
    """``rows`` sorted by ``on``; rows already in order (a batch build's) are not copied."""
    order = pc.sort_indices(rows.select(list(on)), sort_keys=[(c, "ascending") for c in on])
    return rows if is_identity(order) else rows.take(order)


def is_identity(order: pa.Array | pa.ChunkedArray) -> bool:
    """Whether sort indices leave every row where it is."""
    return bool(np.array_equal(np.asarray(order), np.arange(len(order))))


def run_offsets(rows: pa.Table, on: Sequence[str]) -> np.ndarray:
    """Offsets of the runs of equal ``on`` values in sorted ``rows`` (with 0 and n)."""
    n = rows.num_rows
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.zeros(n - 1, dtype=bool)
    for name in on:
        column = rows.column(name).combine_chunks()
        change |= pc.not_equal(column.slice(1), column.slice(0, n - 1)).to_numpy(
            zero_copy_only=False
        )
    return np.concatenate([[0], np.flatnonzero(change) + 1, [n]]).astype(np.int64)


def _indexed(table: pa.Table, on: Sequence[str], name: str) -> pa.Table:
    """The ``on`` columns of ``table`` and each row's index (joins carry no IR payload:
    Arrow's hash join cannot carry list or struct columns)."""
    index = pa.array(np.arange(table.num_rows, dtype=np.int64))
    return table.select(list(on)).append_column(name, index)


def _flag(table: pa.Table, changed: bool) -> pa.Table:
    return table.append_column(CHANGED, pa.array(np.full(table.num_rows, changed), pa.bool_()))


def bucket_micros(tiles: pa.Table) -> pa.Array:
    """Each tile's ``bucket_start`` in epoch microseconds."""
    return pc.cast(pc.cast(tiles.column("bucket_start"), TS_TYPE), pa.int64())


def _floor_mod(values: pa.ChunkedArray | pa.Array, size: int) -> pa.Array:
    """``values mod size``, never negative (Spark's ``pmod``; times before 1970 too)."""
    return pa.array(np.mod(np.asarray(values.to_numpy(), dtype=np.int64), size), pa.int64())


# ---- closing ----------------------------------------------------------------------------------
def closing_mask(tiles: pa.Table, group: TileGroup, before: int | None, after: int) -> pa.Array:
    """Whether each tile closes between the pointers: ``before < end <= after``."""
    ends = pc.add(bucket_micros(tiles), sizes(tiles, group))
    closing = pc.less_equal(ends, after)
    return closing if before is None else pc.and_(closing, pc.greater(ends, before))


def closed_between(
    tiles: pa.Table, group: TileGroup, before: int | None, after: int | None
) -> pa.Table:
    """The tiles that close between the pointers (none when the pointer did not move)."""
    if after is None or after == before:
        return tiles.slice(0, 0)
    return tiles.filter(closing_mask(tiles, group, before, after))


def closing_from(
    granularities: Sequence[Duration], before: int | None, after: int
) -> tuple[bool, int | None]:
    """Whether any tile can close in ``(before, after]``, and the earliest finest bucket
    a closing tile may hold: the start of the earliest bucket (any granularity) ending in
    that range (None: any, when ``before`` is None)."""
    if before is None:
        return True, None
    starts = [
        floor_to(before, g.micros)
        for g in granularities
        if floor_to(before, g.micros) + g.micros <= after
    ]
    return (True, min(starts)) if starts else (False, None)


def sizes(tiles: pa.Table, group: TileGroup) -> pa.Array:
    """Each tile's granularity in microseconds."""
    names = [g.name for g in group.layout.granularities]
    index = pc.index_in(tiles.column("granularity"), value_set=pa.array(names))
    micros = pa.array([g.micros for g in group.layout.granularities], pa.int64())
    return pc.take(micros, index)


def latest_versions(group: TileGroup, parts: list[pa.Table]) -> pa.Table:
    """The rows of ``parts`` (in the order tiles were written), each tile's last one."""
    rows = pa.concat_tables(parts)
    if len(parts) == 1:
        return rows  # one entry (or the newer tiles alone): each tile once
    identity = [*(k.column for k in group.layout.keys), "granularity", "bucket_start"]
    index = pa.array(np.arange(rows.num_rows, dtype=np.int64))
    last = rows.select(identity).append_column("__row", index).group_by(identity)
    picks = np.sort(np.asarray(last.aggregate([("__row", "max")]).column("__row_max")))
    return rows.take(picks)


def log_pieces(
    group: TileGroup, tiles: pa.Table, pointer: int | None, rows_per_piece: int
) -> tuple[pa.Table, list[tuple[int, int]], np.ndarray]:
    """``tiles`` laid out for a log by tile end: those still open after ``pointer``, sorted
    by end; each piece's (end, number among its end's) and the pieces' row bounds in them
    (at most ``rows_per_piece`` rows a piece)."""
    ends = np.asarray(pc.add(bucket_micros(tiles), sizes(tiles, group)).to_numpy(), np.int64)
    open_ = ends > pointer if pointer is not None else np.ones(len(ends), np.bool_)
    order = np.argsort(ends, kind="stable")
    order = order[open_[order]]
    rows = tiles.take(pa.array(order, pa.int64()))
    ends = ends[order]
    runs = np.concatenate([[0], np.flatnonzero(np.diff(ends)) + 1, [len(ends)]]).astype(np.int64)
    pieces: list[tuple[int, int]] = []
    starts: list[int] = []
    for a, b in zip(runs[:-1].tolist(), runs[1:].tolist(), strict=True):
        for number, first in enumerate(range(a, b, rows_per_piece)):
            pieces.append((int(ends[a]), number))
            starts.append(first)
    return rows, pieces, np.array([*starts, len(ends)], np.int64)


# ---- state keys -------------------------------------------------------------------------------
def key_ids(group: TileGroup, tiles: pa.Table) -> list[bytes]:
    """Each row's key as the bytes a stream's state is keyed by (its online text, or a
    digest of a long one)."""
    texts = record_keys([tiles.column(k.column).combine_chunks() for k in group.layout.keys])
    out = []
    for text in texts.to_pylist():
        raw = str(text).encode()
        out.append(raw if len(raw) <= _MAX_KEY_TEXT else b"#" + hashlib.sha256(raw).digest())
    return out
