"""Window decomposition: exact cover of [start, end) with the fewest aligned tiles."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robusta.plan.windows import TileRef, decompose

MIN = 60_000_000
HIERARCHIES = [
    (86400 * 1_000_000, 3600 * 1_000_000, 5 * MIN),
    (3600 * 1_000_000, 10 * MIN),
    (7 * 86400 * 1_000_000, 86400 * 1_000_000, 3600 * 1_000_000, 15 * MIN),
    (5 * MIN,),
]


def fewest_tiles(start: int, end: int, sizes: tuple[int, ...]) -> int:
    """Breadth-first search over aligned positions: the true minimum number of tiles."""
    finest = min(sizes)
    seen = {start: 0}
    queue = deque([start])
    while queue:
        at = queue.popleft()
        if at == end:
            return seen[at]
        for size in sizes:
            nxt = at + size
            if at % size == 0 and nxt <= end and nxt not in seen:
                seen[nxt] = seen[at] + 1
                queue.append(nxt)
    raise AssertionError(f"no cover found with finest {finest}")


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int, tuple[int, ...]]:
    sizes = draw(st.sampled_from(HIERARCHIES))
    finest = sizes[-1]
    # Start near a multiple of the largest size so bucket edges are hit often.
    anchor = draw(st.integers(0, 400)) * sizes[0]
    start = anchor + draw(st.integers(-30, 30)) * finest
    length = draw(st.one_of(st.integers(0, 40), st.integers(0, 3000))) * finest
    length = min(length, 40 * sizes[0] // 2)
    return start, start + length, sizes


@settings(max_examples=300, deadline=None)
@given(case=ranges())
def test_cover_is_exact_ordered_and_minimal(case: tuple[int, int, tuple[int, ...]]) -> None:
    start, end, sizes = case
    tiles = decompose(start, end, sizes)
    position = start
    for tile in tiles:  # contiguous, ascending, each aligned to its own size
        assert tile.start == position
        assert tile.size in sizes and tile.start % tile.size == 0
        position = tile.end
    assert position == end
    if end - start <= 600 * sizes[-1]:
        assert len(tiles) == fewest_tiles(start, end, sizes)


def test_largest_tiles_are_used_in_the_middle() -> None:
    day, hour, five = HIERARCHIES[0]
    start = 3 * day - 2 * hour - 5 * five
    tiles = decompose(start, start + 7 * day, HIERARCHIES[0])
    sizes = [t.size for t in tiles]
    assert sizes.count(day) == 6
    assert sizes == sorted(sizes[: sizes.index(day)]) + [day] * 6 + sorted(
        sizes[sizes.index(day) + 6 :], reverse=True
    )


def test_empty_and_unaligned() -> None:
    assert decompose(0, 0, (300,)) == []
    assert decompose(600, 300, (300,)) == []
    assert decompose(0, 900, (300,)) == [TileRef(0, 300), TileRef(300, 300), TileRef(600, 300)]
    with pytest.raises(ValueError, match="not aligned"):
        decompose(1, 901, (300,))
