"""Window assembly for one key at a time: the online client's path for small lookups.

The vectorized assembler (:mod:`robusta.plan.assembly`) makes about a hundred numpy and Arrow
calls per call, whatever the number of rows; for a lookup of one key that overhead is nearly
all of the time. Here, per key, the decomposition of every window is computed with Python
integers and one binary search per granularity, and each operator folds the few IRs it needs
with :meth:`robusta.ops.Operator.merge_windows`.

Same values as the vectorized assembler, bit for bit: the windows pick the same tiles in the
same (time) order (the runs below mirror ``TileSet.window_tiles``), and every ``merge_windows``
override is tested identical to the operator's definition (``merge_segments`` + ``finalize``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from robusta.plan.model import BaseFeature, OutputFeature, TileGroup

LEVEL = "level"
BUCKET_START = "bucket_start"
Windows = tuple[int | None, ...]  # window lengths in micros; None = lifetime
Run = tuple[int, int, int]  # (level, from, to): tiles of one granularity in [from, to)
# Search keys ``level << 56 | (bucket_start + 2**55)``: one binary search finds every run of
# every level; bucket starts stay within +-2**55 us (1141 years) of the epoch.
_LEVEL_SHIFT = 56
_START_BIAS = 1 << 55
_CUTS_CACHED = 256


def record_schema(group: TileGroup) -> pa.Schema:
    """A key's tile record (what online stores hold per key): ``level`` (0 = finest
    granularity), ``bucket_start`` (epoch micros), then one IR column per base feature in
    the group's order; rows sorted by (level, bucket_start)."""
    fields = [pa.field(LEVEL, pa.int8()), pa.field(BUCKET_START, pa.int64())]
    return pa.schema([*fields, *(pa.field(f.ir_column, f.ir_type) for f in group.features)])


@dataclass(frozen=True)
class KeyAssembler:
    """Assembles a tile group's ``outputs`` for one key from that key's tile record."""

    group: TileGroup
    outputs: tuple[OutputFeature, ...]
    _cuts: dict[tuple[Windows, int], _Cuts] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @cached_property
    def sizes(self) -> list[int]:
        """Granularities in microseconds, finest first."""
        return sorted(g.micros for g in self.group.layout.granularities)

    @cached_property
    def lifetime_start(self) -> int:
        """The earliest start searchable, aligned to every granularity: before every tile."""
        return -_START_BIAS - (-_START_BIAS % -self.sizes[-1])

    @cached_property
    def windows(self) -> Windows:
        """Every distinct window of the outputs: one tile search per key finds them all."""
        return tuple(dict.fromkeys(_micros_of(o) for o in self.outputs))

    @cached_property
    def features(self) -> list[tuple[BaseFeature, int, tuple[int, ...], list[tuple[str, int]]]]:
        """Per base feature wanted: its record column, its windows (positions in
        :attr:`windows`) and each output's position among those."""
        out = []
        for column, feature in enumerate(self.group.features, start=2):
            mine = [o for o in self.outputs if o.base == feature.name]
            if not mine:
                continue
            windows = tuple(dict.fromkeys(self.windows.index(_micros_of(o)) for o in mine))
            positions = [(o.name, windows.index(self.windows.index(_micros_of(o)))) for o in mine]
            out.append((feature, column, windows, positions))
        return out

    def assemble(self, record: pa.RecordBatch, end: int) -> dict[str, Any]:
        """Every output's value for windows ending at ``end`` (floored to the finest
        granularity and capped by the version pointer) from one key's tile record
        (:func:`record_schema`)."""
        picks, offsets = self.cuts(self.windows, end).picks(_search_keys(record))
        layouts: dict[tuple[int, ...], tuple[np.ndarray, list[int]]] = {}
        values: dict[str, Any] = {}
        for feature, column, windows, outputs in self.features:
            if windows not in layouts:
                layouts[windows] = _select(picks, offsets, windows)
            mine, bounds = layouts[windows]
            merged = feature.op.merge_windows(record.column(column), mine, bounds)
            for name, position in outputs:
                values[name] = merged[position]
        return values

    def cuts(self, windows: Windows, end: int) -> _Cuts:
        """The search keys of every run of ``windows`` ending at ``end``; the same for every
        key, so kept for the next lookups (``end`` moves once per finest bucket)."""
        cached = self._cuts.get((windows, end))
        if cached is None:
            if len(self._cuts) >= _CUTS_CACHED:
                self._cuts.clear()
            cached = _Cuts.of([self.runs(w, end) for w in windows])
            self._cuts[(windows, end)] = cached
        return cached

    def runs(self, window: int | None, end: int) -> list[Run]:
        """The runs covering ``[end - window, end)`` in time order: per granularity a left run
        up to the next larger alignment, the largest granularity in the middle, then the right
        runs (the brief's greedy decomposition, as ``TileSet.window_tiles`` cuts it). A
        lifetime window starts before every tile."""
        sizes = self.sizes
        hi = end
        lo = self.lifetime_start if window is None else max(end - window, self.lifetime_start)
        lo = min(lo, hi)
        left: list[Run] = []
        right: list[Run] = []
        for level in range(len(sizes) - 1):
            larger = sizes[level + 1]
            new_lo = min(lo - lo % -larger, hi)  # lo rounded up to ``larger``
            left.append((level, lo, new_lo))
            lo = new_lo
            new_hi = max(hi - hi % larger, lo)
            right.append((level, new_hi, hi))
            hi = new_hi
        return [*left, (len(sizes) - 1, lo, hi), *reversed(right)]


def _micros_of(output: OutputFeature) -> int | None:
    return None if output.window.duration is None else output.window.duration.micros


def _select(
    picks: np.ndarray, offsets: list[int], windows: tuple[int, ...]
) -> tuple[np.ndarray, list[int]]:
    """The picks and offsets of some of the windows (by position) out of all of them."""
    if len(windows) == 1:
        [w] = windows
        return picks[offsets[w] : offsets[w + 1]], [0, offsets[w + 1] - offsets[w]]
    bounds = [0]
    for w in windows:
        bounds.append(bounds[-1] + offsets[w + 1] - offsets[w])
    return np.concatenate([picks[offsets[w] : offsets[w + 1]] for w in windows]), bounds


def _search_keys(record: pa.RecordBatch) -> np.ndarray:
    """Each tile's search key; ascending, as records are sorted by (level, bucket_start)."""
    levels = record.column(0).to_numpy()  # zero-copy: neither column has nulls
    starts = record.column(1).to_numpy()
    keys: np.ndarray = (levels.astype(np.int64) << _LEVEL_SHIFT) + (starts + _START_BIAS)
    return keys


@dataclass(frozen=True)
class _Cuts:
    """Every run of some windows as a pair of search keys, windows one after another."""

    bounds: np.ndarray  # (from, to) search keys of each run, flattened
    window_ends: np.ndarray  # index of each window's last run

    @classmethod
    def of(cls, windows: list[list[Run]]) -> _Cuts:
        bounds = [
            (level << _LEVEL_SHIFT) + edge + _START_BIAS
            for runs in windows
            for level, lo, hi in runs
            for edge in (lo, hi)
        ]
        ends = np.cumsum([len(runs) for runs in windows]) - 1
        return cls(np.asarray(bounds, np.int64), ends.astype(np.int64))

    def picks(self, search: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Row positions of every window's tiles, in time order, and the window offsets."""
        found = np.searchsorted(search, self.bounds)
        first, lengths = found[0::2], found[1::2] - found[0::2]
        ends = np.cumsum(lengths)
        total = int(ends[-1]) if len(ends) else 0
        picks = np.repeat(first - (ends - lengths), lengths) + np.arange(total)
        return picks, [0, *ends[self.window_ends].tolist()]
