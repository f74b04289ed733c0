"""Window decomposition: cover [start, end) with the fewest epoch-aligned tiles.

Rules (the brief's "Assembly"): granularities form a hierarchy, each a whole multiple of the
next; both ends are aligned to the finest one. Working from the finest level up, each end is
moved with tiles of that level until it is aligned to the next larger level; the aligned middle
is then covered by the largest tiles. At every level fewer tiles than the level ratio are used
per end, which is the minimum, so the cover is the fewest tiles. Tiles come out in ascending
time order, the order every assembler merges them in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True, slots=True, order=True)
class TileRef:
    """The tile of granularity ``size`` starting at ``start`` (microseconds)."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


def decompose(start: int, end: int, granularities: Sequence[int]) -> list[TileRef]:
    """Fewest aligned tiles exactly covering ``[start, end)``, in ascending time order.

    ``granularities`` are sizes in microseconds, each a multiple of the next (any order).
    ``start`` and ``end`` must be multiples of the smallest one.
    """
    sizes = sorted(set(granularities))
    if not sizes:
        raise ValueError("at least one granularity is needed")
    finest = sizes[0]
    if start % finest or end % finest:
        raise ValueError(f"[{start}, {end}) is not aligned to the finest granularity {finest}")
    if end <= start:
        return []
    left: list[TileRef] = []
    right: list[TileRef] = []
    lo, hi = start, end
    for size, larger in pairwise(sizes):
        while lo % larger and lo < hi:
            left.append(TileRef(lo, size))
            lo += size
        while hi % larger and hi > lo:
            hi -= size
            right.append(TileRef(hi, size))
    largest = sizes[-1]
    middle = [TileRef(s, largest) for s in range(lo, hi, largest)]
    return [*left, *middle, *reversed(right)]
