"""Window assembly: feature values of rows ``(keys, t, pointer)`` from stored tiles.

The one assembler of the product: the PIT join runs it per key bucket inside Spark tasks, the
online client runs it per lookup. It is pure numpy/pyarrow, vectorized over rows, and merges
every window's tiles with the operator's ``merge_segments`` in ascending time order, so both
paths give bit-identical values for the same tiles.

How (per tile group, for all rows and windows at once):

1. Keys: the tiles' keys are dictionary-encoded once (composite keys as length-prefixed
   text) and each row looks its key up in that dictionary, so no Python object is hashed.
2. Tiles are sorted by (key, granularity, bucket) and indexed by one int64 search key
   ``group << 32 | bucket index``, where the bucket index counts tiles of that granularity
   from an origin aligned to the largest granularity and at or before every tile.
3. Each row's window ``[start, end)`` (the brief's ``end = min(floor(t, gmin), p)``) is cut
   like :func:`robusta.plan.windows.decompose`, but vectorized: per granularity a left run and
   a right run of tiles, the largest granularity in the middle; every run is a contiguous
   slice of the sorted tiles, found by binary search (missing tiles are simply absent).
4. The runs, laid out in time order, become one index array and segment offsets; each IR
   column is decoded once for the tiles actually used and merged per segment.

Lifetime windows start at the origin: no tile lies before it and it is aligned to every
granularity, so the tiles used are the same as for an unbounded start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from robusta.ops import State, take
from robusta.plan.model import BaseFeature, OutputFeature, TileGroup

I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]
_IDX_BITS = 32
_NO_KEY = -1
# A record of at most this many tiles is kept whole by TileSet.narrowed: one slice of it
# costs less than cutting it into its picked runs.
WHOLE_RECORD_ROWS = 256


@dataclass(frozen=True)
class Rows:
    """The rows to assemble for: key columns (in the layout's key order), times, pointers.

    ``ts`` and ``pointer`` are epoch microseconds; ``ts_valid`` marks non-null times and
    ``pointer_valid`` non-null pointers (a null pointer caps nothing).
    """

    keys: Sequence[pa.Array]
    ts: I64
    ts_valid: BOOL
    pointer: I64 | None = None
    pointer_valid: BOOL | None = None

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(frozen=True)
class GroupAssembler:
    """Assembles a tile group's output features (``outputs``) from that group's tiles."""

    group: TileGroup
    outputs: tuple[OutputFeature, ...]

    @cached_property
    def sizes(self) -> list[int]:
        """Granularities in microseconds, finest first."""
        return sorted(g.micros for g in self.group.layout.granularities)

    @cached_property
    def features(self) -> list[BaseFeature]:
        wanted = {o.base for o in self.outputs}
        return [f for f in self.group.features if f.name in wanted]

    @cached_property
    def windows(self) -> dict[str, tuple[tuple[int | None, ...], list[tuple[OutputFeature, int]]]]:
        """Per base feature: its distinct windows (micros; None = lifetime) and each output
        with the position of its window among them."""
        out = {}
        for feature in self.features:
            outputs = [o for o in self.outputs if o.base == feature.name]
            windows = tuple(dict.fromkeys(_micros_of(o) for o in outputs))
            out[feature.name] = (windows, [(o, windows.index(_micros_of(o))) for o in outputs])
        return out

    def tile_columns(self) -> list[str]:
        """The tile-table columns assembly reads."""
        keys = [k.column for k in self.group.layout.keys]
        return [*keys, "granularity", "bucket_start", *(f.ir_column for f in self.features)]

    def prepare(self, tiles: pa.Table) -> TileSet:
        """Index ``tiles`` once for any number of :meth:`assemble` calls."""
        return TileSet.build(self.group, tiles, self.sizes)

    def assemble(self, tiles: pa.Table | TileSet, rows: Rows, codes: I64 | None = None) -> pa.Table:
        """One column per output feature, one row per row, in row order.

        ``codes`` (optional) gives each row's key code in the tile set directly, as the online
        client does (record i holds the tiles of lookup key i); else keys are looked up.
        """
        index = tiles if isinstance(tiles, TileSet) else self.prepare(tiles)
        codes = index.codes_of(rows.keys) if codes is None else codes
        ends = _window_ends(rows, self.sizes[0])
        n = len(rows)
        segments: dict[tuple[int | None, ...], tuple[I64, I64]] = {}  # windows -> picks, offsets
        for windows, _ in self.windows.values():
            if windows not in segments:
                segments[windows] = index.windows_tiles(codes, ends, windows, rows.ts_valid)
        if index.records and segments:  # one lookup's records: keep the tiles windows use
            index, segments = _narrowed(index, segments)
        values: dict[str, pa.Array] = {}
        for feature in self.features:
            windows, outputs = self.windows[feature.name]
            picks, offsets = segments[windows]
            op = feature.op
            if op.columnar_windows:
                result = op.window_values(index.column(feature), picks, offsets)
            else:
                result = op.finalize(op.merge_segments(index.picked(feature, picks), offsets))
            if not rows.ts_valid.all():
                valid = pa.array(np.tile(rows.ts_valid, len(windows)))
                result = pc.if_else(valid, result, pa.nulls(len(result), result.type))
            for output, position in outputs:
                part = result.slice(position * n, n)
                values[output.name] = part if part.type == output.type else part.cast(output.type)
        return pa.table(
            [values[o.name] for o in self.outputs], names=[o.name for o in self.outputs]
        )


def _narrowed(
    index: TileSet, segments: dict[tuple[int | None, ...], tuple[I64, I64]]
) -> tuple[TileSet, dict[tuple[int | None, ...], tuple[I64, I64]]]:
    """``index`` narrowed to the tiles of ``segments``, and the segments' picks in it."""
    used = np.unique(np.concatenate([picks for picks, _ in segments.values()]))
    narrowed, at = index.narrowed(used)
    return narrowed, {
        windows: (at[np.searchsorted(used, picks)], offsets)
        for windows, (picks, offsets) in segments.items()
    }


def _micros_of(output: OutputFeature) -> int | None:
    return None if output.window.duration is None else output.window.duration.micros


def _window_ends(rows: Rows, gmin: int) -> I64:
    """``end = floor(t, gmin)``, capped by the pointer (itself floored: a bucket end)."""
    ts = np.where(rows.ts_valid, rows.ts, 0)
    ends = ts - np.mod(ts, gmin)
    if rows.pointer is not None:
        valid = rows.pointer_valid if rows.pointer_valid is not None else np.ones(len(ts), bool)
        pointer = np.where(valid, rows.pointer, 0)
        capped = np.minimum(ends, pointer - np.mod(pointer, gmin))
        ends = np.where(valid, capped, ends)
    return ends.astype(np.int64)


@dataclass
class TileSet:
    """A tile group's tiles indexed for assembly: sorted by (key, granularity, bucket), with
    int64 search keys and the IRs decoded once per feature. Build once (per key bucket, or
    per lookup), assemble any number of row batches against it."""

    group: TileGroup
    sizes: list[int]
    origin: int
    search: I64  # sorted: group << 32 | bucket index
    order: I64  # sorted position -> row of ``tiles``
    keys: pa.Array  # distinct key texts; a key's code is its position
    tiles: pa.Table
    states: dict[str, State] = field(default_factory=dict)
    columns: dict[str, pa.Array] = field(default_factory=dict)
    presorted: bool = False  # ``tiles`` already in sorted order (``order`` is the identity)
    records: Sequence[pa.RecordBatch] = ()  # online records, one chunk each (from_records)

    @classmethod
    def build(cls, group: TileGroup, tiles: pa.Table, sizes: list[int]) -> TileSet:
        names = [k.column for k in group.layout.keys]
        text = _key_text(
            [tiles.column(c) for c in names], [tiles.schema.field(c).type for c in names]
        )
        encoded = pc.dictionary_encode(text)
        tile_codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), np.int64)
        tile_levels = levels(tiles.column("granularity"), group)
        starts = _micros(tiles.column("bucket_start"))
        largest = sizes[-1]
        origin = int(starts.min()) if len(starts) else 0
        origin -= origin % largest
        size_of = np.asarray(sizes, dtype=np.int64)[tile_levels]
        buckets = (starts - origin) // size_of
        if len(buckets) and int(buckets.max()) >= 1 << _IDX_BITS:
            raise ValueError("tiles span more buckets than the assembler can index (2**32)")
        search = _search_key(tile_codes * len(sizes) + tile_levels, buckets)
        order = np.argsort(search, kind="stable").astype(np.int64)
        return cls(group, sizes, origin, search[order], order, encoded.dictionary, tiles)

    @classmethod
    def from_records(
        cls, group: TileGroup, records: Sequence[pa.RecordBatch], sizes: list[int]
    ) -> TileSet:
        """Tiles of online records: record ``i`` holds the tiles of key code ``i``, with
        columns ``level`` (0 = finest), ``bucket_start`` (epoch micros) and the IRs, sorted
        by (level, bucket_start); so the whole set is sorted without a sort. The records
        stay apart (one chunk each) until :meth:`narrowed` keeps the tiles windows use."""
        tiles = pa.Table.from_batches(records)
        lengths = np.fromiter((r.num_rows for r in records), np.int64, len(records))
        codes = np.repeat(np.arange(len(records), dtype=np.int64), lengths)
        levels = np.asarray(tiles.column("level").to_numpy(), np.int64)
        starts = np.asarray(tiles.column("bucket_start").to_numpy(), np.int64)
        largest = sizes[-1]
        origin = int(starts.min()) if len(starts) else 0
        origin -= origin % largest
        buckets = (starts - origin) // np.asarray(sizes, dtype=np.int64)[levels]
        search = _search_key(codes * len(sizes) + levels, buckets)
        order = np.arange(len(search), dtype=np.int64)
        keys = pa.array(np.arange(len(records)))
        return cls(
            group, sizes, origin, search, order, keys, tiles, presorted=True, records=records
        )

    def narrowed(self, used: I64) -> tuple[TileSet, I64]:
        """A set of online records' tiles holding those at sorted positions ``used``, in
        one chunk, and its positions of ``used``. Picks are usually a small part of a busy
        key's record (a 90-day record holds ~26k 5-minute tiles, windows read a few runs of
        them): each record gives its runs of picked tiles as zero-copy slices, small
        records one slice of all their tiles (one slice costs more than a few rows)."""
        lengths = np.fromiter((r.num_rows for r in self.records), np.int64, len(self.records))
        bounds = np.cumsum(lengths) - lengths
        owner = np.searchsorted(bounds, used, side="right") - 1
        keep = np.zeros(len(self.search), np.bool_)
        keep[used] = True
        small = np.bincount(owner, minlength=len(lengths)) > 0
        keep |= np.repeat(small & (lengths <= WHOLE_RECORD_ROWS), lengths)
        begins, ends = _runs(keep, bounds)
        record = np.searchsorted(bounds, begins, side="right") - 1
        at, size = (begins - bounds[record]).tolist(), (ends - begins).tolist()
        pieces = [
            self.records[r].slice(a, n) for r, a, n in zip(record.tolist(), at, size, strict=True)
        ]
        tiles = pa.Table.from_batches(pieces, self.tiles.schema).combine_chunks()
        kept = np.flatnonzero(keep)
        search = self.search[kept]
        order = np.arange(len(kept), dtype=np.int64)
        narrowed = TileSet(
            self.group, self.sizes, self.origin, search, order, self.keys, tiles, presorted=True
        )
        return narrowed, np.searchsorted(kept, used).astype(np.int64)

    def codes_of(self, row_keys: Sequence[pa.Array]) -> I64:
        """Each row's key code; _NO_KEY for a null key or a key without tiles."""
        types = [self.tiles.schema.field(k.column).type for k in self.group.layout.keys]
        text = _key_text(list(row_keys), types)
        found = pc.index_in(text, value_set=self.keys)
        return np.asarray(pc.fill_null(found, _NO_KEY).to_numpy(zero_copy_only=False), np.int64)

    def picked(self, feature: BaseFeature, picks: I64) -> State:
        """The feature's IRs at sorted positions ``picks``. A set built from online records
        serves one lookup, so it decodes only the tiles picked; others decode every tile
        once (:meth:`state`) for many row batches."""
        # Sketch IRs are costly to decode: decode only the picked ones.
        sketches = pa.types.is_binary(self.tiles.schema.field(feature.ir_column).type)
        if self.presorted and sketches and feature.name not in self.states:
            # Windows share tiles: decode each picked tile once.
            distinct, again = np.unique(picks, return_inverse=True)
            column = self.tiles.column(feature.ir_column)
            decoded = feature.op.from_arrow(column.take(pa.array(distinct)).combine_chunks())
            return take(decoded, again.reshape(-1))
        return take(self.state(feature), picks)

    def column(self, feature: BaseFeature) -> pa.Array:
        """The feature's stored IRs of every tile, in sorted order (one chunk)."""
        if feature.name not in self.columns:
            column = self.tiles.column(feature.ir_column).combine_chunks()
            if not self.presorted:
                column = column.take(pa.array(self.order, pa.int64()))
            self.columns[feature.name] = column
        return self.columns[feature.name]

    def state(self, feature: BaseFeature) -> State:
        """The feature's IRs of every tile, in sorted order, decoded once."""
        if feature.name not in self.states:
            column = self.tiles.column(feature.ir_column).combine_chunks()
            if not self.presorted:
                column = column.take(pa.array(self.order, pa.int64()))
            self.states[feature.name] = feature.op.from_arrow(column)
        return self.states[feature.name]

    def windows_tiles(
        self, codes: I64, ends: I64, windows: Sequence[int | None], valid: BOOL
    ) -> tuple[I64, I64]:
        """:meth:`window_tiles` for several windows (None: lifetime) at once; segment
        ``w * len(ends) + i`` is window ``w`` of row ``i``."""
        starts = [
            np.full(len(ends), np.iinfo(np.int64).min) if w is None else ends - w for w in windows
        ]
        k = len(windows)
        return self.window_tiles(
            np.tile(codes, k), np.concatenate(starts), np.tile(ends, k), np.tile(valid, k)
        )

    def window_tiles(
        self, codes: I64, starts: I64 | None, ends: I64, valid: BOOL
    ) -> tuple[I64, I64]:
        """Sorted-tile positions of every row's window, in time order, and segment offsets."""
        sizes, n = self.sizes, len(ends)
        hi = np.maximum(ends, self.origin)
        lo = (
            np.full(n, self.origin, np.int64) if starts is None else np.maximum(starts, self.origin)
        )
        lo = np.minimum(lo, hi)
        runs: list[tuple[int, I64, I64]] = []  # (level, from, to) in time order
        right: list[tuple[int, I64, I64]] = []
        for level in range(len(sizes) - 1):
            larger = sizes[level + 1]
            new_lo = np.minimum(_ceil(lo, larger), hi)
            runs.append((level, lo, new_lo))
            lo = new_lo
            new_hi = np.maximum(hi - np.mod(hi, larger), lo)
            right.append((level, new_hi, hi))
            hi = new_hi
        runs.append((len(sizes) - 1, lo, hi))
        runs.extend(reversed(right))
        found = (codes != _NO_KEY) & valid
        # Every run of every row at once: (run, row) arrays, two binary searches in all.
        levels = np.asarray([level for level, _, _ in runs], np.int64)[:, None]
        level_sizes = np.asarray(sizes, np.int64)[levels]
        groups = codes[None, :] * len(sizes) + levels
        starts_m = np.stack([a for _, a, _ in runs]) - self.origin
        ends_m = np.stack([b for _, _, b in runs]) - self.origin
        first = np.searchsorted(self.search, _search_key(groups, starts_m // level_sizes))
        # Non-empty runs have aligned ends; empty ones have a == b and round alike.
        last = np.searchsorted(self.search, _search_key(groups, ends_m // level_sizes))
        first_m = first.T.ravel()
        count_m = np.where(found[None, :], last - first, 0).T
        per_row = count_m.sum(axis=1)
        flat_counts = count_m.ravel()
        total = int(flat_counts.sum())
        run_offsets = np.cumsum(flat_counts) - flat_counts
        picks = np.repeat(first_m - run_offsets, flat_counts) + np.arange(total, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
        return picks.astype(np.int64), offsets


def _runs(keep: BOOL, bounds: I64) -> tuple[I64, I64]:
    """Start and end of every run of ``keep`` rows, runs cut at the record starts ``bounds``."""
    cut = np.zeros(len(keep) + 1, np.bool_)
    cut[bounds] = True
    before = np.concatenate([[False], keep])
    at = np.concatenate([keep, [False]])
    return np.flatnonzero(at & (~before | cut)), np.flatnonzero(before & (~at | cut))


def _search_key(group: I64, bucket: I64) -> I64:
    return (np.asarray(group, np.int64) << _IDX_BITS) | np.asarray(bucket, np.int64)


def _ceil(x: I64, size: int) -> I64:
    return x + np.mod(-x, size)


def _micros(column: pa.ChunkedArray | pa.Array) -> I64:
    values = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)


def levels(granularity: pa.ChunkedArray | pa.Array, group: TileGroup) -> I64:
    """Granularity names -> level (0 = finest)."""
    ordered = sorted(group.layout.granularities, key=lambda g: g.micros)
    names = pa.array([g.name for g in ordered])
    levels = pc.index_in(granularity, value_set=names)
    if levels.null_count:
        raise ValueError("tiles of a granularity the plan does not have")
    return np.asarray(levels.to_numpy(zero_copy_only=False), dtype=np.int64)


def _key_text(
    columns: Sequence[pa.ChunkedArray | pa.Array], types: Sequence[pa.DataType]
) -> pa.Array:
    """One comparable value per (composite) key; null when any part is null.

    A single key keeps its type. Composite keys become text with every part length-prefixed
    (``3:abc|2:42``), so no two different keys share a text.
    """
    parts = [_combined(c).cast(t) for c, t in zip(columns, types, strict=True)]
    if len(parts) == 1:
        return parts[0]
    pieces: list[pa.Array | str] = []
    for part in parts:
        text = pc.cast(part, pa.string())
        pieces += [pc.cast(pc.utf8_length(text), pa.string()), ":", text, "|"]
    joined: pa.Array = pc.binary_join_element_wise(*pieces, "")
    return joined


def _combined(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    return column
