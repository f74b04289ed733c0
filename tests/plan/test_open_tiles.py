"""The stream's open-tile state (`plan.open_tiles.advance`) against tiles built from all events.

Generated events (bucket boundaries, ties, nulls, a hot key) arrive in time order, cut into
micro-batches. Each batch's finest tiles are built on their own (as Spark builds them) and
merged into the state; the final state must hold the tiles the batch job builds from all
events (``robusta.testing.tiles.build_tiles``), bit for bit. Cuts on bucket boundaries hold
for every operator; cuts inside a bucket (one tile built from two batches) for the operators
whose merge regroups exactly (float sums fold in another grouping, sketches compact by
another path). Every batch must flag exactly the tiles it touched and carry the others'
bytes over unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robusta.plan.model import TileGroup
from robusta.plan.open_tiles import BUCKET, CHANGED, advance, open_only
from robusta.spec.types import DataType
from robusta.testing.compare import bits
from robusta.testing.reference import reference_value
from tests.engine.test_materialize import assert_close
from tests.plan.test_assembly import CASES, GMIN, T0, group_for, scenario, tiles_of

Event = tuple[Any, int | None, Any]
REGROUPS_EXACTLY = {
    "count",
    "min",
    "max",
    "first",
    "last",
    "first_n",
    "last_n",
    "approx_distinct",
}
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def finest(group: TileGroup, events: Sequence[Event]) -> pa.Table:
    """A micro-batch's finest tiles, in the columns ``engine.embedded.tiles.finest_tiles`` gives."""
    tiles = tiles_of(group, list(events))
    name = min(group.layout.granularities, key=lambda g: g.micros).name
    tiles = tiles.filter(pc.equal(tiles.column("granularity"), name))
    return tiles.append_column(BUCKET, pc.cast(tiles.column("bucket_start"), pa.int64()))


def identity(tiles: pa.Table) -> list[tuple[Any, str, int]]:
    return list(
        zip(
            tiles.column("k").to_pylist(),
            tiles.column("granularity").to_pylist(),
            pc.cast(tiles.column("bucket_start"), pa.int64()).to_pylist(),
            strict=True,
        )
    )


def by_identity(group: TileGroup, tiles: pa.Table) -> dict[tuple[Any, str, int], tuple[Any, ...]]:
    """Each tile's events count and IR bits, by (key, granularity, bucket start)."""
    irs = [tiles.column(f.ir_column).to_pylist() for f in group.features]
    events = tiles.column("events").to_pylist()
    return {
        tile: (events[i], *(bits(column[i]) for column in irs))
        for i, tile in enumerate(identity(tiles))
    }


def touched(group: TileGroup, events: list[Event]) -> set[tuple[Any, str, int]]:
    out = set()
    for key, t, _ in events:
        for g in group.layout.granularities:
            assert t is not None
            out.add((key, g.name, t - t % g.micros))
    return out


def stream_through(group: TileGroup, timed: list[Event], cuts: list[int]) -> pa.Table:
    """Advance the state batch by batch; check each batch's flags and carried-over bytes."""
    state: pa.Table | None = None
    bounds = [0, *sorted(cuts), len(timed)]
    for lo, hi in itertools.pairwise(bounds):
        batch = timed[lo:hi]
        after = advance(group, "v1", state, finest(group, batch))
        flags = dict(zip(identity(after), after.column(CHANGED).to_pylist(), strict=True))
        assert {t for t, changed in flags.items() if changed} == touched(group, batch)
        if state is not None:
            before, now = by_identity(group, state), by_identity(group, after)
            for tile, value in before.items():
                if not flags[tile]:
                    assert now[tile] == value, tile  # carried over byte for byte
        assert after.column("spec_version").to_pylist() == ["v1"] * after.num_rows
        state = after
    assert state is not None
    return state


def in_time_order(events: list[Event]) -> list[Event]:
    """The valid events as they arrive: in time order (ties keep their order)."""
    valid = [e for e in events if e[0] is not None and e[1] is not None]
    return sorted(valid, key=lambda e: e[1])  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(("op_name", "dtype", "params"), CASES, ids=[c[0] for c in CASES])
@SETTINGS
@given(data=st.data())
def test_batches_cut_on_bucket_boundaries_give_the_batch_tiles(
    op_name: str, dtype: DataType, params: dict[str, Any], data: st.DataObject
) -> None:
    group = group_for(op_name, dtype, params)
    events, _ = data.draw(scenario(dtype))
    timed = in_time_order(events)
    boundaries = [
        i
        for i in range(1, len(timed))
        if timed[i][1] // GMIN != timed[i - 1][1] // GMIN  # type: ignore[operator]
    ]
    cuts = data.draw(st.lists(st.sampled_from(boundaries), max_size=4)) if boundaries else []
    state = stream_through(group, timed, cuts)
    want = tiles_of(group, timed)
    if op_name != "approx_quantile":
        assert by_identity(group, state) == by_identity(group, want)
        return
    # KLL merges compact with a random bit: the same tiles, quantiles within rank bounds.
    assert sorted(identity(state)) == sorted(identity(want))
    feature = group.features[0]
    sizes = {g.name: g.micros for g in group.layout.granularities}
    got = feature.op.finalize(feature.op.from_arrow(state.column(feature.ir_column))).to_pylist()
    for (key, name, start), value in zip(identity(state), got, strict=True):
        inside = [v for k, t, v in timed if k == key and start <= t < start + sizes[name]]  # type: ignore[operator]
        want_value = reference_value(op_name, params, [(0, v) for v in inside], None, 1)
        assert_close(feature.op, value, want_value, inside)


@pytest.mark.parametrize(
    ("op_name", "dtype", "params"),
    [c for c in CASES if c[0] in REGROUPS_EXACTLY],
    ids=[c[0] for c in CASES if c[0] in REGROUPS_EXACTLY],
)
@SETTINGS
@given(data=st.data())
def test_batches_cut_anywhere_give_the_batch_tiles(
    op_name: str, dtype: DataType, params: dict[str, Any], data: st.DataObject
) -> None:
    """Cuts inside buckets and between tied events: one tile merged from two batches."""
    group = group_for(op_name, dtype, params)
    events, _ = data.draw(scenario(dtype))
    timed = in_time_order(events)
    cuts = data.draw(st.lists(st.integers(0, len(timed)), max_size=5))
    state = stream_through(group, timed, cuts)
    assert by_identity(group, state) == by_identity(group, tiles_of(group, timed))


def test_only_tiles_of_open_largest_buckets_are_kept() -> None:
    group = group_for("count", DataType.STRING, {})
    day = max(g.micros for g in group.layout.granularities)
    events = [("a", T0 + 3 * GMIN, "x"), ("a", T0 + day + GMIN, "y"), ("b", T0 + day + 7, "z")]
    state = advance(group, "v1", None, finest(group, events))
    starts = pc.cast(state.column("bucket_start"), pa.int64()).to_numpy()
    assert open_only(state, group, None).num_rows == state.num_rows
    # The first day is closed once the pointer reaches its end: its tiles go.
    kept = open_only(state, group, T0 + day)
    assert kept.num_rows == int((starts >= T0 + day).sum()) > 0
    assert open_only(state, group, T0 + day - GMIN).num_rows == state.num_rows


def test_an_empty_batch_changes_nothing() -> None:
    group = group_for("sum", DataType.DOUBLE, {})
    events = [("a", T0 + 3 * GMIN, 1.5), ("b", T0 + 9 * GMIN, None)]
    state = advance(group, "v1", None, finest(group, events))
    again = advance(group, "v1", state, finest(group, []))
    assert not any(again.column(CHANGED).to_pylist())
    assert by_identity(group, again) == by_identity(group, state)
