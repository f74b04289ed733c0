"""`robusta stream`: streamed tiles, online values and Iceberg tiles against the reference.

Generated events (every operator, a composite key, null keys and times) are landed in two
files; the stream runs in ``available-now`` mode after each landing, in this process, on the
test session. Online lookups must equal the reference evaluator at the pointer they return,
and every Iceberg tile the stream committed must equal the reference over its bucket.
"""

from __future__ import annotations

import os
import re
import textwrap
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from robusta.api.training import get_training_frame, to_arrow
from robusta.demo.datagen import GeneratorConfig, generate_events
from robusta.jobs.materialize import materialize
from robusta.jobs.stream import StreamingError, stream, stream_status
from robusta.jobs.upload import upload
from robusta.serving import FeatureClient
from robusta.spec.durations import floor_to, from_micros, to_micros
from robusta.store.tiles import TileTables
from robusta.testing.compare import bits
from robusta.testing.reference import reference_value, window_bounds
from robusta.workspace import Workspace, load_workspace
from tests.engine.test_materialize import (
    SPEC,
    assert_close,
    config_text,
    events_by_key,
    feature_yaml,
    finalize_one,
)
from tests.store.test_online_contract import online_config

pytestmark = pytest.mark.long

MIN = 60_000_000
GMIN = 5 * MIN
DAY = 1440 * MIN
LANDED = time.time()
STREAM_SPEC = SPEC.replace("windows: [1h]", "windows: [1h, 1d, lifetime]")


@dataclass
class Streamed:
    root: Path
    workspace: Workspace
    events: pa.Table  # every landed event


SMALL_SPEC = (
    SPEC.split("features:\n")[0]
    + "features:\n"
    + "".join(
        feature_yaml(*f).replace("windows: [1h]", "windows: [1h, 1d, lifetime]")
        for f in [
            ("n_events", "count", None, None),
            ("dwell_sum", "sum", "dwell_seconds", None),
            ("last_items", "last_n", "item_id", "{n: 3}"),
            ("distinct_items", "approx_distinct", "item_id", None),
        ]
    )
)


def streaming_project(
    root: Path,
    spec: str = STREAM_SPEC,
    watermark: str = "10m",
    extra: str = "",
    engine: str = "spark",
) -> Workspace:
    (root / "feature_defs").mkdir(parents=True)
    (root / "feature_defs" / "engagement.yaml").write_text(spec)
    config = (
        config_text(f"sqlite:///{root / 'catalog.db'}", engine)
        + textwrap.dedent(f"""\
        streaming:
          checkpoint: checkpoints
          watermark: {watermark}
        """)
        + textwrap.dedent(extra)
    )
    (root / "robusta.yaml").write_text(config)
    (root / "data").mkdir()
    return load_workspace(root / "robusta.yaml").require_valid()


def tile_rows(workspace: Workspace, table: str) -> pa.Table:
    config = workspace.project.config
    assert config is not None
    loaded = TileTables(config.offline).load(table)
    assert loaded is not None
    return loaded.scan().to_arrow()


def land(folder: Path, events: pa.Table, name: str, order: int | None = None) -> None:
    """Write a file the way producers must: under a hidden name, then renamed. ``order``
    sets its modification time, the order in which Spark picks files up (files landed in
    the same instant may otherwise be read in any order, making the later one's events
    late)."""
    hidden = folder / f".{name}.parquet"
    pq.write_table(events, hidden, coerce_timestamps="us")
    if order is not None:
        stamp = LANDED + order
        os.utime(hidden, (stamp, stamp))
    hidden.rename(folder / f"{name}.parquet")


def by_time(events: pa.Table, parts: int) -> list[pa.Table]:
    """Events split into ``parts`` consecutive time ranges (null times in the first)."""
    ts = pc.cast(events.column("event_ts"), pa.int64())
    order = pc.sort_indices(ts, null_placement="at_start")
    ordered = events.take(order)
    size = -(-ordered.num_rows // parts)
    return [ordered.slice(i * size, size) for i in range(parts)]


@pytest.fixture(scope="module")
def streamed(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Streamed:
    root = tmp_path_factory.mktemp("stream")
    workspace = streaming_project(root, engine=engine)
    events = generate_events(
        GeneratorConfig(seed=8, days=2, events_per_day=1200, users=40, items=90, channels=5)
    )
    for i, part in enumerate(by_time(events, 2)):
        land(root / "data", part, f"part-{i}", order=i)
        stream(workspace, available_now=True)
    return Streamed(root, workspace, events)


def test_status_counts_every_row_once(streamed: Streamed) -> None:
    (status,) = stream_status(streamed.workspace)
    assert status.rows == streamed.events.num_rows
    assert status.late == 0
    ts = pc.cast(streamed.events.column("event_ts"), pa.int64())
    newest = int(pc.max(ts).as_py())
    assert status.pointer == from_micros(floor_to(newest - 10 * MIN, GMIN)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def test_iceberg_tiles_equal_the_reference(streamed: Streamed) -> None:
    (plan,) = streamed.workspace.plan.specs
    for group in plan.groups:
        rows = tile_rows(streamed.workspace, group.layout.table)
        keys = [k.column for k in group.layout.keys]
        sizes = {g.name: g.micros for g in group.layout.granularities}
        starts = pc.cast(rows.column("bucket_start"), pa.int64()).to_pylist()
        seen = {
            (
                tuple(rows.column(k)[i].as_py() for k in keys),
                rows.column("granularity")[i].as_py(),
                s,
            )
            for i, s in enumerate(starts)
        }
        assert len(seen) == rows.num_rows  # no tile committed twice
        for feature in group.features:
            per_key = events_by_key(streamed.events, keys, feature.input or "__count")
            for i in range(0, rows.num_rows, max(1, rows.num_rows // 150)):
                key = tuple(rows.column(k)[i].as_py() for k in keys)
                start = starts[i]
                end = start + sizes[rows.column("granularity")[i].as_py()]
                inside = [(t, v) for t, v in per_key[key] if start <= t < end]
                want = reference_value(feature.op.name, feature.op.params, inside, start, end)
                got = finalize_one(feature, rows.column(feature.ir_column).slice(i, 1))
                assert_close(feature.op, got, want, [v for _, v in inside])


def test_lookups_equal_the_reference_at_the_pointer(streamed: Streamed) -> None:
    (plan,) = streamed.workspace.plan.specs
    group = next(g for g in plan.groups if len(g.layout.keys) == 1)
    per_feature = {
        f.name: events_by_key(streamed.events, ["user_id"], f.input or "__count")
        for f in group.features
    }
    users = sorted({k for (k,) in per_feature["n_events"]})
    ts = pc.cast(streamed.events.column("event_ts"), pa.int64())
    last = int(pc.max(ts).as_py())
    with FeatureClient.from_config(streamed.root / "robusta.yaml") as client:
        for t in (last, last - 3 * 60 * MIN + 7, floor_to(last, 60 * MIN)):
            vectors = client.get_features(
                [{"USER_ID": u} for u in users], [f.name for f in group.features], from_micros(t)
            )
            for user, vector in zip(users, vectors, strict=True):
                pointer = int(pa.scalar(vector.pointer).cast(pa.int64()).as_py())
                for feature in group.features:
                    for output in feature.outputs:
                        start, end = window_bounds(t, output.window, GMIN, pointer)
                        events = per_feature[feature.name][(user,)]
                        inside = [
                            (e, v) for e, v in events if (start is None or start <= e) and e < end
                        ]
                        want = reference_value(
                            feature.op.name, feature.op.params, inside, start, end
                        )
                        got = vector.values[output.name]
                        assert_close(feature.op, got, want, [v for _, v in inside])


# ---- exactly once under SIGKILL ----------------------------------------------------------------
def expected_tiles(events: pa.Table, keys: list[str], pointer: int) -> set[tuple[Any, ...]]:
    """(key, granularity, bucket start) of every tile with events that ends by ``pointer``."""
    out = set()
    ts = pc.cast(events.column("event_ts"), pa.int64()).to_pylist()
    key_values = list(zip(*(events.column(k).to_pylist() for k in keys), strict=True))
    for key, t in zip(key_values, ts, strict=True):
        if t is None or any(k is None for k in key):
            continue
        for name, size in (("1d", DAY), ("1h", 60 * MIN), ("5m", GMIN)):
            start = floor_to(t, size)
            if start + size <= pointer:
                out.add((key, name, start))
    return out


def assert_iceberg_tiles_equal_reference(
    workspace: Workspace, events: pa.Table, group: Any
) -> None:
    """Every tile that closed before the stream's pointer is in Iceberg once (nothing lost,
    nothing committed twice) and equals the reference over its bucket."""
    rows = tile_rows(workspace, group.layout.table)
    pointer = floor_to(
        int(pc.max(pc.cast(events.column("event_ts"), pa.int64())).as_py()) - 10 * MIN, GMIN
    )
    starts = pc.cast(rows.column("bucket_start"), pa.int64()).to_pylist()
    got = [
        ((u,), g, b)
        for u, g, b in zip(
            rows.column("user_id").to_pylist(),
            rows.column("granularity").to_pylist(),
            starts,
            strict=True,
        )
    ]
    assert len(got) == len(set(got))  # nothing committed twice
    sizes = {"1d": DAY, "1h": 60 * MIN, "5m": GMIN}
    # Tiles still open are a batch run's (a materialize over the open day) or none.
    closed = {t for t in got if t[2] + sizes[t[1]] <= pointer}
    assert closed == expected_tiles(events, ["user_id"], pointer)  # nothing lost
    for feature in group.features:
        per_key = events_by_key(events, ["user_id"], feature.input or "__count")
        for i, (key, g, start) in enumerate(got):
            if start + sizes[g] > pointer:
                continue
            inside = [(t, v) for t, v in per_key[key] if start <= t < start + sizes[g]]
            want = reference_value(
                feature.op.name, feature.op.params, inside, start, start + sizes[g]
            )
            got_value = finalize_one(feature, rows.column(feature.ir_column).slice(i, 1))
            assert_close(feature.op, got_value, want, [v for _, v in inside])


def assert_lookups_equal_reference(
    workspace: Workspace, root: Path, events: pa.Table, group: Any, at: int | None = None
) -> list[Any]:
    per_feature = {
        f.name: events_by_key(events, ["user_id"], f.input or "__count") for f in group.features
    }
    users = sorted({k for (k,) in per_feature[group.features[0].name]})
    ts = pc.cast(events.column("event_ts"), pa.int64())
    t = at if at is not None else int(pc.max(ts).as_py())
    with FeatureClient.from_config(root / "robusta.yaml") as client:
        vectors = client.get_features(
            [{"USER_ID": u} for u in users], [f.name for f in group.features], from_micros(t)
        )
    for user, vector in zip(users, vectors, strict=True):
        pointer = int(pa.scalar(vector.pointer).cast(pa.int64()).as_py())
        for feature in group.features:
            for output in feature.outputs:
                start, end = window_bounds(t, output.window, GMIN, pointer)
                inside = [
                    (e, v)
                    for e, v in per_feature[feature.name][(user,)]
                    if (start is None or start <= e) and e < end
                ]
                want = reference_value(feature.op.name, feature.op.params, inside, start, end)
                assert_close(feature.op, vector.values[output.name], want, [v for _, v in inside])
    return vectors


def test_materialize_of_the_open_day_is_not_doubled_by_the_stream(
    engine: str, tmp_path: Path
) -> None:
    """A batch run over the day the stream is writing (between two micro-batches): its
    tiles replace the ones the stream committed, and the stream does not commit that day's
    later tiles beside them (batch tiles win, in either order)."""
    workspace = streaming_project(tmp_path, SMALL_SPEC, engine=engine)
    events = generate_events(
        GeneratorConfig(seed=23, days=2, events_per_day=600, users=25, items=50, channels=4)
    )
    parts = by_time(events, 4)
    land(tmp_path / "data", parts[0], "part-0", order=0)
    stream(workspace, available_now=True)  # the pointer stops inside the first day
    land(tmp_path / "data", parts[1], "part-1", order=1)
    ts = pc.cast(pa.concat_tables(parts[:2]).column("event_ts"), pa.int64())
    first, last = int(pc.min(ts).as_py()), int(pc.max(ts).as_py())
    materialize(workspace, start=from_micros(first), end=from_micros(last))
    for i in (2, 3):  # two runs: the batch's leftover rows of the day are rewritten again
        land(tmp_path / "data", parts[i], f"part-{i}", order=i)
        stream(workspace, available_now=True)
    (plan,) = workspace.plan.specs
    (group,) = plan.groups
    assert_iceberg_tiles_equal_reference(workspace, events, group)
    assert_lookups_equal_reference(workspace, tmp_path, events, group)


# ---- lambda: late events repaired by batch --------------------------------------------------
@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_batch_materialize_repairs_late_events_and_lookups_equal_backfills(
    engine: str, tmp_path: Path, backend: str
) -> None:
    online = ""
    if backend == "redis":
        options = online_config("redis", tmp_path).options
        url, prefix = options["url"], options["key_prefix"]
        online = f'online: {{type: redis, url: "{url}", key_prefix: "{prefix}"}}\n'
    workspace = streaming_project(tmp_path, SMALL_SPEC, extra=online, engine=engine)
    events = generate_events(
        GeneratorConfig(seed=17, days=2, events_per_day=700, users=30, items=60, channels=4)
    )
    early, middle, recent = by_time(events, 3)
    late = early.slice(0, 40)  # arrive after the pointer passed them
    on_time = pa.concat_tables([early.slice(40), middle])
    land(tmp_path / "data", on_time, "part-0")
    stream(workspace, available_now=True)
    land(tmp_path / "data", pa.concat_tables([late, recent]), "part-1")
    stream(workspace, available_now=True)
    (status,) = stream_status(workspace)
    valid_late = pc.sum(pc.is_valid(late.column("event_ts"))).as_py()
    assert status.late == valid_late > 0
    late_rows = pq.read_table(tmp_path / "warehouse" / "late_events" / "engagement")
    assert late_rows.num_rows == valid_late
    (plan,) = workspace.plan.specs
    (group,) = plan.groups
    without_late = pa.concat_tables([on_time, recent])
    assert_lookups_equal_reference(workspace, tmp_path, without_late, group)

    ts = pc.cast(events.column("event_ts"), pa.int64())
    first, last = int(pc.min(ts).as_py()), int(pc.max(ts).as_py())
    materialize(workspace, start=from_micros(first), end=from_micros(last + 1))
    upload(workspace)
    vectors = assert_lookups_equal_reference(workspace, tmp_path, events, group, at=last)
    users = [v.entity["USER_ID"] for v in vectors]
    rows = pa.table(
        {
            "USER_ID": pa.array(users, pa.string()),
            "ts": pa.array([last] * len(users), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "served_at": pa.array([v.pointer for v in vectors], pa.timestamp("us", tz="UTC")),
        }
    )
    frame = get_training_frame(
        rows.to_pandas(),
        [f.name for f in group.features],
        workspace=workspace,
        version_column="served_at",
        materialize_missing=False,
    )
    backfilled = to_arrow(frame).to_pylist()
    for vector, row in zip(vectors, backfilled, strict=True):
        for name, value in vector.values.items():
            assert bits(value) == bits(row[name]), (name, vector.entity)


def test_backfills_equal_the_streamed_lookups(streamed: Streamed) -> None:
    """Online = offline on streamed tiles: a backfill with the pointer a lookup returned
    reads the Iceberg copy and gives the same bits."""
    (plan,) = streamed.workspace.plan.specs
    (status,) = stream_status(streamed.workspace)
    assert status.pointer is not None
    pointer = to_micros(datetime.fromisoformat(status.pointer))
    pairs = streamed.events.select(["user_id", "channel_id"]).drop_null().to_pylist()[::97][:12]
    entities = [{"USER_ID": p["user_id"], "CHANNEL_ID": p["channel_id"]} for p in pairs]
    # Times up to the pointer: a backfill checks coverage up to its rows' times.
    times = [pointer - k * 37 * MIN + 11 for k in range(len(entities))]
    with FeatureClient.from_config(streamed.root / "robusta.yaml") as client:
        got = [
            client.get_features([e], None, from_micros(t))[0]
            for e, t in zip(entities, times, strict=True)
        ]
    rows = pa.table(
        {
            "USER_ID": pa.array([e["USER_ID"] for e in entities], pa.string()),
            "CHANNEL_ID": pa.array([e["CHANNEL_ID"] for e in entities], pa.string()),
            "ts": pa.array(times, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "served_at": pa.array([v.pointer for v in got], pa.timestamp("us", tz="UTC")),
        }
    )
    frame = get_training_frame(
        rows.to_pandas(),
        None,
        workspace=streamed.workspace,
        version_column="served_at",
        materialize_missing=False,
    )
    names = [o.name for o in plan.outputs]
    for vector, row in zip(got, to_arrow(frame).to_pylist(), strict=True):
        for name in names:
            assert bits(vector.values[name]) == bits(row[name]), (name, vector.entity)


def test_a_missing_landing_folder_says_what_to_do(engine: str, tmp_path: Path) -> None:
    workspace = streaming_project(tmp_path, SMALL_SPEC, engine=engine)
    (tmp_path / "data").rmdir()
    with pytest.raises(OSError, match=r"landing folder .* does not exist; create it"):
        stream(workspace, available_now=True)


def test_preassembled_specs_are_refused(engine: str, tmp_path: Path) -> None:
    extra = "online: {type: embedded, modes: {engagement: preassembled}}\n"
    workspace = streaming_project(tmp_path, SMALL_SPEC, extra=extra, engine=engine)
    with pytest.raises(StreamingError, match=re.escape("set online.modes.engagement: assemble")):
        stream(workspace, available_now=True)


def test_a_stream_starts_after_a_batch_run_inside_its_day(engine: str, tmp_path: Path) -> None:
    """materialize + upload of the first part (coverage ends inside a day, at the data), then
    a stream over the landing folder: it continues the batch run's open day from its tiles,
    every closed tile is in Iceberg once and lookups equal the reference over all events."""
    workspace = streaming_project(tmp_path, SMALL_SPEC, engine=engine)
    events = generate_events(
        GeneratorConfig(seed=29, days=3, events_per_day=600, users=25, items=50, channels=4)
    )
    first, second = by_time(events, 2)  # the batch ends inside day 2, the stream closes it
    land(tmp_path / "data", first, "part-0", order=0)
    (report,) = materialize(workspace)
    (done,) = upload(workspace).specs
    ts = pc.cast(first.column("event_ts"), pa.int64())
    covered = floor_to(int(pc.max(ts).as_py()) - 60 * MIN, GMIN)  # allowed lateness 1h
    assert report.covered_until == from_micros(covered).isoformat()
    assert done.pointer == from_micros(covered).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert covered % DAY != 0  # the stream starts inside a day the batch run began
    hour = covered - covered % (60 * MIN)
    assert pc.sum(pc.and_(pc.greater_equal(ts, hour), pc.less(ts, covered))).as_py() > 0
    land(tmp_path / "data", second, "part-1", order=1)
    stream(workspace, available_now=True)
    (plan,) = workspace.plan.specs
    (group,) = plan.groups
    assert_iceberg_tiles_equal_reference(workspace, events, group)
    assert_lookups_equal_reference(workspace, tmp_path, events, group)


# ---- keyed state ------------------------------------------------------------------------------
def test_a_batch_reads_and_writes_only_the_keys_it_touches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a first file with many users, a batch with one user's event reads the keyed
    state of that user's day alone, publishes that user's tiles alone, and leaves every other
    user's tiles in the state as they were."""
    from robusta.jobs.stream.checkpoint import Checkpoint
    from robusta.jobs.stream.keyed import KeyedState

    one_file = "  sources:\n    events: {options: {maxFilesPerTrigger: 1}}\n"
    workspace = streaming_project(
        tmp_path, SMALL_SPEC, extra="# one file per batch\n" + one_file, engine="embedded"
    )
    events = generate_events(
        GeneratorConfig(seed=5, days=1, events_per_day=1500, users=300, items=40, channels=3)
    )
    events = events.filter(pc.is_valid(events.column("user_id")))
    land(tmp_path / "data", events, "part-0", order=0)
    stream(workspace, available_now=True, engine="embedded")
    (plan,) = workspace.plan.specs
    (group,) = plan.groups
    folder = tmp_path / "checkpoints" / plan.name
    state = KeyedState(folder / "keyed", plan)
    users = pc.unique(events.column("user_id")).to_pylist()
    everyone = state.day_keys(group, _tiles_of(state, group, users, events))
    before = state.read(group, everyone)
    assert before is not None and len(everyone) > 50
    assert len(pc.unique(before.column("user_id"))) == len(everyone)  # one day: every user

    newest = pc.max(events.column("event_ts"))  # no bucket closes: the pointer stays
    one = events.slice(0, 1).set_column(
        events.column_names.index("event_ts"), "event_ts", pa.array([newest.as_py()], newest.type)
    )
    land(tmp_path / "data", one, "part-1", order=1)
    read: list[tuple[int, bytes]] = []
    real = KeyedState.read

    def recorded(self: KeyedState, group: Any, pairs: Any) -> Any:
        read.extend(pairs)
        return real(self, group, pairs)

    monkeypatch.setattr(KeyedState, "read", recorded)
    stream(workspace, available_now=True, engine="embedded")
    mine = state.day_keys(group, _tiles_of(state, group, [one.column("user_id")[0].as_py()], one))
    assert read == mine and len(mine) == 1
    checkpoint = Checkpoint(folder, "embedded")
    touched = checkpoint.touched(checkpoint.state_ids()[-1], group)
    assert touched is not None
    assert pc.unique(touched.column("user_id")).to_pylist() == [one.column("user_id")[0].as_py()]
    monkeypatch.undo()
    after = state.read(group, [p for p in everyone if p not in mine])
    kept = before.filter(pc.invert(pc.is_in(before.column("user_id"), touched.column("user_id"))))
    assert after is not None and after.sort_by(
        [("user_id", "ascending"), ("granularity", "ascending"), ("bucket_start", "ascending")]
    ).equals(
        kept.sort_by(
            [("user_id", "ascending"), ("granularity", "ascending"), ("bucket_start", "ascending")]
        )
    )


@pytest.mark.spark
def test_a_spark_batch_reads_and_writes_only_the_keys_it_touches(tmp_path: Path) -> None:
    """On Spark the open tiles live in Spark's state store: after a first file with many
    users, a batch with one user's event reads and writes that user's tiles alone in the
    store (the operator counts its reads and writes) and hands back that user's alone."""
    from robusta.jobs.stream.checkpoint import Checkpoint

    workspace = streaming_project(tmp_path, SMALL_SPEC)
    events = generate_events(
        GeneratorConfig(seed=5, days=1, events_per_day=1500, users=300, items=40, channels=3)
    )
    events = events.filter(pc.is_valid(events.column("user_id")))
    land(tmp_path / "data", events, "part-0", order=0)
    stream(workspace, available_now=True)
    (plan,) = workspace.plan.specs
    (group,) = plan.groups
    checkpoint = Checkpoint(tmp_path / "checkpoints" / plan.name, "spark")
    first = [checkpoint.meta(i) for i in checkpoint.state_ids()]
    users = len(pc.unique(events.column("user_id")))
    assert max(m["state_writes"] for m in first) == users > 50

    newest = pc.max(events.column("event_ts"))  # no bucket closes: the pointer stays
    one = events.slice(0, 1).set_column(
        events.column_names.index("event_ts"), "event_ts", pa.array([newest.as_py()], newest.type)
    )
    land(tmp_path / "data", one, "part-1", order=1)
    stream(workspace, available_now=True)
    (batch,) = [i for i in checkpoint.state_ids() if checkpoint.meta(i)["batch_rows"] == 1]
    meta = checkpoint.meta(batch)
    assert (meta["state_reads"], meta["state_writes"]) == (1, 1)
    touched = checkpoint.touched(batch, group)
    assert touched is not None
    assert pc.unique(touched.column("user_id")).to_pylist() == [one.column("user_id")[0].as_py()]
    assert_lookups_equal_reference(workspace, tmp_path, pa.concat_tables([events, one]), group)


def _tiles_of(state: Any, group: Any, users: list[Any], events: pa.Table) -> pa.Table:
    """One row per (user, day) of ``events``, shaped as tiles (``user_id``, ``bucket_start``)."""
    rows = events.filter(pc.is_in(events.column("user_id"), pa.array(users)))
    rows = rows.filter(pc.is_valid(rows.column("event_ts")))
    return pa.table(
        {
            "user_id": rows.column("user_id"),
            "bucket_start": pc.cast(rows.column("event_ts"), pa.timestamp("us", tz="UTC")),
        }
    )


def test_a_replayed_commit_is_known_from_the_tables_mark(tmp_path: Path) -> None:
    """Each commit marks the table with its query's last batch, so a replayed batch is
    skipped without listing snapshots (old ones may be expired)."""
    from robusta.jobs.stream.offline import COMMITTED_PREFIX
    from robusta.jobs.stream.spec import SpecStream

    one_file = "# one file per batch\n  sources:\n    events: {options: {maxFilesPerTrigger: 1}}\n"
    workspace = streaming_project(tmp_path, SMALL_SPEC, extra=one_file, engine="embedded")
    events = generate_events(
        GeneratorConfig(seed=9, days=1, events_per_day=600, users=20, items=30, channels=3)
    )
    for i, part in enumerate(by_time(events, 3)):
        land(tmp_path / "data", part, f"part-{i}", order=i)
    stream(workspace, available_now=True, engine="embedded")
    (plan,) = workspace.plan.specs
    (group,) = plan.groups
    spec = SpecStream(workspace.config, plan, "embedded")
    last = spec.checkpoint.state_ids()[-1]
    meta = spec.checkpoint.meta(last)
    table = spec.stores.tables.load(group.layout.table)
    assert table is not None
    assert table.properties[COMMITTED_PREFIX + meta["query"]] == str(last)
    snapshots = len(table.snapshots())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(table), "snapshots", lambda _: pytest.fail("snapshots listed"))
        spec.offline.commit(meta)
    table = spec.stores.tables.load(group.layout.table)
    assert table is not None and len(table.snapshots()) == snapshots
    spec.close()


def test_a_spark_checkpoint_with_driver_state_is_refused(tmp_path: Path) -> None:
    """A Spark checkpoint from before the open tiles moved into Spark's state store (its
    keyed state beside the batch log) is refused before Spark starts, with what to do."""
    workspace = streaming_project(tmp_path, SMALL_SPEC)
    folder = tmp_path / "checkpoints" / "engagement"
    (folder / "keyed").mkdir(parents=True)
    (folder / "spark").mkdir()
    with pytest.raises(StreamingError, match="fresh checkpoint"):
        stream(workspace, available_now=True, engine="spark")


def test_a_spark_checkpoint_of_the_earlier_state_layout_is_refused(tmp_path: Path) -> None:
    """A Spark checkpoint whose state indexed finest buckets (no layout mark beside its
    committed batches) is refused before Spark starts: its closes would find no log."""
    from robusta.jobs.stream.spec import SpecStream

    workspace = streaming_project(tmp_path, SMALL_SPEC)
    folder = tmp_path / "checkpoints" / "engagement"
    (folder / "spark" / "commits").mkdir(parents=True)
    (folder / "spark" / "commits" / "0").write_text("v1\n")
    with pytest.raises(StreamingError, match=r"layout 1 .* fresh checkpoint"):
        stream(workspace, available_now=True, engine="spark")
    (folder / "spark-state-layout").write_text("2\n")  # the layout this Robusta writes
    (plan,) = workspace.plan.specs
    SpecStream(workspace.config, plan, "spark")._check_engine()  # accepted
