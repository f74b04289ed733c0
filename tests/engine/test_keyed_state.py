"""The embedded stream's keyed state (`robusta.jobs.stream.keyed`) on its own.

Generated events (every kind of IR: counts, float sums, lists, sketches) go through the state
version by version as a micro-batch runs them, the first version as a seed (a batch run's
tiles: none flagged changed). At every version the close from the log must hold exactly the
tiles of every stored key's record (the brute force), superseded by the version's own, bit for
bit. A state in the earlier layout is refused with what to do.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from robusta.demo.datagen import GeneratorConfig, generate_events
from robusta.engine.embedded.tiles import finest_tiles
from robusta.jobs.stream import StreamingError, keyed, stream
from robusta.jobs.stream.keyed import DayKeys, KeyedState, without_changed
from robusta.plan.model import SpecPlan, TileGroup
from robusta.plan.open_tiles import BUCKET, CHANGED, advance, closed_between, open_only
from robusta.spec.durations import floor_to
from tests.engine.test_streaming import SMALL_SPEC, by_time, streaming_project

WATERMARK = 10 * 60_000_000


def brute_close(
    state: KeyedState,
    group: TileGroup,
    pairs: DayKeys,
    touched: pa.Table,
    bounds: tuple[int | None, int],
) -> pa.Table:
    """The close as read from every stored key's record (the touched keys' from ``touched``)."""
    mine = set(state.day_keys(group, touched))
    stored = state.read(group, [p for p in pairs if p not in mine])
    parts = [without_changed(touched), *([] if stored is None else [stored])]
    return closed_between(pa.concat_tables(parts), group, *bounds)


def in_order(group: TileGroup, tiles: pa.Table) -> pa.Table:
    keys = [k.column for k in group.layout.keys]
    on = [*keys, "granularity", "bucket_start"]
    return tiles.select(without_changed(tiles).column_names).sort_by([(c, "ascending") for c in on])


def version_tiles(
    state: KeyedState, plan: SpecPlan, group: TileGroup, rows: pa.Table, pointer: int | None
) -> pa.Table:
    """A micro-batch's full tiles of the (day, key) pairs it touches."""
    partial = finest_tiles(rows, plan, group).partial
    starts = partial.append_column("bucket_start", pc.cast(partial.column(BUCKET), pa.int64()))
    stored = state.read(group, state.day_keys(group, starts))
    if stored is not None:
        stored = open_only(stored, group, pointer)
    return advance(group, plan.hash, stored, partial)


def test_the_close_from_the_log_equals_every_stored_keys_tiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyed, "PIECE", 7)  # a close reads many pieces
    workspace = streaming_project(tmp_path, SMALL_SPEC, engine="embedded")
    (plan,) = workspace.plan.specs
    (group,) = plan.groups
    state = KeyedState(tmp_path / "keyed", plan)
    events = generate_events(
        GeneratorConfig(seed=3, days=2, events_per_day=900, users=25, items=30, channels=3)
    )
    events = events.filter(pc.is_valid(events.column("event_ts")))
    pairs: set[tuple[int, bytes]] = set()
    pointer: int | None = None
    closed = 0
    parts = by_time(events, 30)
    seeded = pc.unique(parts[0].column("user_id"))  # their open tiles: the seed's alone
    parts[1:] = [p.filter(pc.invert(pc.is_in(p.column("user_id"), seeded))) for p in parts[1:]]
    for version, part in enumerate(parts):
        touched = version_tiles(state, plan, group, part, pointer)
        if version == 0:  # a seed: tiles the state never had, none flagged changed
            flags = pa.array([False] * touched.num_rows)
            touched = touched.set_column(touched.column_names.index(CHANGED), CHANGED, flags)
        newest = pc.max(pc.cast(part.column("event_ts"), pa.int64())).as_py()
        after = max(pointer or 0, floor_to(newest - WATERMARK, plan.spec.finest.micros))
        expected = brute_close(state, group, sorted(pairs), touched, (pointer, after))
        actual = state.closing(group, pointer, after, touched)
        if expected.num_rows:
            assert actual is not None
            assert in_order(group, actual).equals(in_order(group, expected)), version
            closed += actual.num_rows
        else:
            assert actual is None or actual.num_rows == 0
        state.apply(version, {group.layout.table: touched}, after)
        pairs |= set(state.day_keys(group, touched))
        pointer = after
    assert closed > 100


def test_a_state_in_the_earlier_layout_is_refused(tmp_path: Path) -> None:
    import lmdb

    workspace = streaming_project(tmp_path, SMALL_SPEC, engine="embedded")
    folder = tmp_path / "checkpoints" / "engagement" / "keyed"
    folder.mkdir(parents=True)
    env = lmdb.open(str(folder), max_dbs=3)  # the earlier layout: tiles, finest, meta
    for name in (b"tiles", b"finest"):
        env.open_db(name)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"version", b"4")
    env.close()
    with pytest.raises(StreamingError, match=r"earlier Robusta.*fresh checkpoint"):
        stream(workspace, available_now=True, engine="embedded")
