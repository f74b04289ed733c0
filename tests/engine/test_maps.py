"""Per-category maps (``bucket_by``) against the reference evaluator, per bucket value.

Every operator as a map by channel with a bound (3) below the channels the data holds, so
the bound cuts, plus a count by device with the default bound:

- fast tier: the embedded tiles of generated edge cases (hypothesis: bucket boundaries,
  ties, null keys, null bucket values, null values, a hot key) equal the reference per tile;
  training frames over generated events equal the reference per row and window (1h, 1d,
  lifetime); lookups from both online stores equal the frame at the returned pointer;
- ``spark`` tier: the Spark tile job gives the embedded tiles, and the Spark point-in-time
  join the embedded frame.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings

from robusta.api.training import get_training_frame
from robusta.engine.embedded.tiles import build_tiles
from robusta.jobs.materialize import materialize
from robusta.jobs.upload import upload
from robusta.ops import Operator
from robusta.ops.bucketed import Bucketed
from robusta.plan.model import BaseFeature, SpecPlan
from robusta.serving import FeatureClient
from robusta.spec.durations import from_micros
from robusta.store.online import OnlineStore, open_online_store
from robusta.testing.compare import bits
from robusta.testing.reference import reference_map, window_bounds
from robusta.workspace import load_workspace
from tests.engine.test_materialize import FEATURES, assert_close, make_project
from tests.engine.test_serving import Served, lookups, serving_project
from tests.engine.test_tile_contract import FIXTURES, SIZES, batches, query_rows, spark_tiles
from tests.store.test_online_contract import online_config

pytestmark = pytest.mark.long

MIN = 60_000_000
BOUND = 3


def maps_spec(windows: str) -> str:
    lines = [
        "name: maps",
        "owner: tests",
        "query: |",
        "  SELECT user_id, item_id, channel_id, device, dwell_seconds,",
        "         CASE WHEN event_type = 'click' THEN 1 ELSE 0 END AS is_click, event_ts",
        "  FROM events",
        "timestamp: event_ts",
        "granularities: [1d, 1h, 5m]",
        "features:",
    ]
    for name, op, column, params in FEATURES:
        parts = [
            f"op: {op}",
            *([f"input: {column}"] if column else []),
            *([f"params: {params}"] if params else []),
            f"windows: {windows}",
            "group_by_selectors: {user_id: USER_ID}",
            f"bucket_by: channel_id, max_buckets: {BOUND}",
        ]
        lines.append(f"  m_{name}: {{{', '.join(parts)}}}")
    lines.append(
        f"  m_device_events: {{op: count, windows: {windows}, "
        "group_by_selectors: {user_id: USER_ID}, bucket_by: device}"
    )
    return "\n".join(lines) + "\n"


def inner(feature: BaseFeature) -> Operator:
    op = feature.op
    assert isinstance(op, Bucketed)
    return op.inner


def value_of(row: dict[str, Any], column: str | None) -> Any:
    if column is None:
        return None
    if column == "is_click":
        return 1 if row["event_type"] == "click" else 0
    return row[column]


def assert_map_close(feature: BaseFeature, got: Any, want: dict[str, Any], values: Any) -> None:
    """A map value (dict, or Arrow's list of pairs) against the reference map; ``values``
    gives a bucket value's raw values (for sketch error bounds)."""
    got = dict(got) if got is not None else None
    assert got is not None and set(got) == set(want), (feature.name, got, want)
    for bucket, expected in want.items():
        assert_close(inner(feature), got[bucket], expected, values(bucket))


# ---- tiles ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> SpecPlan:
    root = Path(tmp_path_factory.mktemp("maps-contract"))
    project = make_project(root, engine="embedded")
    (root / "feature_defs" / "maps.yaml").write_text(maps_spec("[1h]"))
    project.reload()
    spec = project.workspace.plan.spec("maps")
    assert spec is not None and len(spec.groups) == 2
    return spec


def assert_map_tiles_equal_reference(events: pa.Table, plan: SpecPlan) -> None:
    for group in plan.groups:
        tiles, _ = build_tiles(events, plan, group)
        assert_stored_maps_equal_reference(tiles, events, group)


def assert_stored_maps_equal_reference(tiles: pa.Table, events: pa.Table, group: Any) -> None:
    """Every map tile against the reference over ``events`` (query rows or raw events)."""
    rows = events.to_pylist()
    ts = pc.cast(events.column("event_ts"), pa.int64()).to_pylist()
    bucket = group.layout.bucket
    assert bucket is not None
    starts = pc.cast(tiles.column("bucket_start"), pa.int64()).to_pylist()
    users = tiles.column("user_id").to_pylist()
    grains = tiles.column("granularity").to_pylist()
    for feature in group.features:
        stored = tiles.column(feature.ir_column).combine_chunks()
        maps = feature.op.finalize(feature.op.from_arrow(stored)).to_pylist()
        for user, grain, start, got in zip(users, grains, starts, maps, strict=True):
            end = start + SIZES[grain]
            own = [
                (t, r[bucket.column], value_of(r, feature.input))
                for r, t in zip(rows, ts, strict=True)
                if r["user_id"] == user and t is not None
            ]
            op = inner(feature)
            want = reference_map(op.name, op.params, own, start, end, bucket.max_buckets)

            def values(b: str, own: Any = own, start: int = start, end: int = end) -> Any:
                return [v for t, k, v in own if k == b and start <= t < end]

            assert_map_close(feature, got, want, values)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(rows=batches)
def test_map_tiles_equal_the_reference(plan: SpecPlan, rows: list[dict[str, Any]]) -> None:
    assert_map_tiles_equal_reference(query_rows(rows), plan)


def test_the_bound_keeps_the_smallest_bucket_values(plan: SpecPlan) -> None:
    rows = [
        {
            "user_id": "u",
            "item_id": "i",
            "channel_id": channel,
            "device": None,
            "dwell_seconds": 1.0,
            "event_type": "view",
            "event_ts": 1_704_067_200_000_000 + i,
        }
        for i, channel in enumerate(["c9", "c1", "c5", "c3", "c1", None])
    ]
    events = query_rows(rows)
    group = next(g for g in plan.groups if g.layout.bucket and g.layout.bucket.column != "device")
    tiles, _ = build_tiles(events, plan, group)
    feature = next(f for f in group.features if f.name == "m_n_events")
    maps = feature.op.finalize(feature.op.from_arrow(tiles.column("m_n_events").combine_chunks()))
    assert [dict(m) for m in maps.to_pylist()] == [{"c1": 2, "c3": 1, "c5": 1}] * 3
    devices = next(g for g in plan.groups if g.layout.bucket and g.layout.bucket.column == "device")
    tiles, _ = build_tiles(events, plan, devices)
    assert tiles.column("events").to_pylist() == [6] * 3  # null buckets still count as events
    assert tiles.column("m_device_events").to_pylist() == [[]] * 3


# ---- frames and lookups -----------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = Path(tmp_path_factory.mktemp("maps"))
    served = serving_project(root, engine="embedded")
    (root / "feature_defs" / "maps.yaml").write_text(maps_spec("[1h, 1d, lifetime]"))
    served.workspace = load_workspace(root / "robusta.yaml").require_valid()
    materialize(served.workspace, ["maps"])
    return served


def training_rows(asked: list[tuple[dict[str, object], int]], pointers: list[Any]) -> pa.Table:
    return pa.table(
        {
            "USER_ID": pa.array([e["USER_ID"] for e, _ in asked], pa.string()),
            "ts": pa.array([t for _, t in asked], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "served_at": pa.array(pointers, pa.timestamp("us", tz="UTC")),
        }
    )


def test_map_frames_equal_the_reference(served: Served) -> None:
    asked = lookups(served, 60)
    frame = get_training_frame(
        training_rows(asked, [None] * len(asked)),
        ["maps"],
        workspace=served.workspace,
        materialize_missing=False,
    )
    spec = served.workspace.plan.spec("maps")
    assert spec is not None
    raw = served.events.to_pylist()
    times = pc.cast(served.events.column("event_ts"), pa.int64()).to_pylist()
    by_user: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for r, t in zip(raw, times, strict=True):
        if t is not None and r["user_id"] is not None:
            by_user[r["user_id"]].append((t, r))
    filled = 0
    for (entity, t), row in zip(asked, frame.to_pylist(), strict=True):
        for group in spec.groups:
            bucket = group.layout.bucket
            assert bucket is not None
            for feature in group.features:
                op = inner(feature)
                for output in feature.outputs:
                    start, end = window_bounds(t, output.window, 5 * MIN)
                    own = [
                        (ts, r[bucket.column], value_of(r, feature.input))
                        for ts, r in by_user[str(entity["USER_ID"])]
                    ]
                    want = reference_map(op.name, op.params, own, start, end, bucket.max_buckets)

                    def values(b: str, own: Any = own, start: Any = start, end: int = end) -> Any:
                        low = -math.inf if start is None else start
                        return [v for ts, k, v in own if k == b and low <= ts < end]

                    assert_map_close(feature, row[output.name], want, values)
                    filled += bool(want)
    assert filled > 100  # not trivially empty


@pytest.fixture(params=["embedded", "redis"])
def store(request: pytest.FixtureRequest, served: Served, tmp_path: Path) -> Iterator[OnlineStore]:
    with open_online_store(online_config(request.param, tmp_path), "test", create=True) as s:
        yield s


def test_map_lookups_equal_the_frame_at_the_returned_pointer(
    served: Served, store: OnlineStore
) -> None:
    upload(served.workspace, at=from_micros(served.at), store=store)
    client = FeatureClient(served.workspace, store)
    asked = lookups(served, 30)
    vectors = [
        client.get_features([{"USER_ID": e["USER_ID"]}], ["maps"], from_micros(t))[0]
        for e, t in asked
    ]
    frame = get_training_frame(
        training_rows(asked, [v.pointer for v in vectors]),
        ["maps"],
        workspace=served.workspace,
        version_column="served_at",
        materialize_missing=False,
    )
    spec = served.workspace.plan.spec("maps")
    assert spec is not None
    names = [o.name for o in spec.outputs]
    for vector, row in zip(vectors, frame.to_pylist(), strict=True):
        for name in names:
            value = vector.values[name]
            assert isinstance(value, dict), (name, value)
            assert bits(value) == bits(dict(row[name])), name
    many = client.get_features(
        [{"USER_ID": e["USER_ID"]} for e, _ in asked], ["maps"], from_micros(served.at)
    )
    singles = [
        client.get_features([{"USER_ID": e["USER_ID"]}], ["maps"], from_micros(served.at))[0]
        for e, _ in asked
    ]
    assert [bits(v.values) for v in many] == [bits(v.values) for v in singles]
    assert any(v.values["m_n_events_1d"] for v in many)


def test_head_values_equal_the_assembled_ones(
    served: Served, store: OnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At and after the upload's pointer lookups read the values the upload wrote (its head
    records); they equal the values assembled from the tiles, bit for bit, for every
    operator, map or not, one entity or many, and in ranking requests."""
    upload(served.workspace, at=from_micros(served.at), store=store)
    heads = FeatureClient(served.workspace, store, cache_size=0)
    tiles = FeatureClient(served.workspace, store, cache_size=0, heads=False)
    users = sorted({e["USER_ID"] for e, _ in lookups(served, 40)}, key=str)
    asked: list[set[str]] = []
    read = store.read

    def spy(spec: str, wanted: list[tuple[str, str]]) -> Any:
        asked.append({table for table, _ in wanted})
        return read(spec, wanted)

    monkeypatch.setattr(store, "read", spy)
    for at in (served.at, served.at + 5 * MIN, served.at + 3 * 1440 * MIN):
        for batch in (
            [{"USER_ID": users[0]}],
            [{"USER_ID": "nobody"}],
            [{"USER_ID": u} for u in users],
        ):
            asked.clear()
            got = heads.get_features(batch, ["maps"], from_micros(at))
            assert asked and all(t.endswith("#heads") for read in asked for t in read), asked
            want = tiles.get_features(batch, ["maps"], from_micros(at))
            assert [bits(v.values) for v in got] == [bits(v.values) for v in want]
            assert [v.pointers for v in got] == [v.pointers for v in want]
    state = store.state("maps")
    assert state is not None and state.heads_usable
    asked.clear()  # before the pointer: the tiles, in one read once the client knows it
    heads.get_features([{"USER_ID": users[0]}], ["maps"], from_micros(state.pointer - 1))
    assert len(asked) == 1 and not any(t.endswith("#heads") for t in asked[0])


# ---- streams -------------------------------------------------------------------------
def test_streamed_map_tiles_equal_the_reference(engine: str, tmp_path: Path) -> None:
    """Two landings streamed in available-now mode: every map tile the stream committed to
    Iceberg equals the reference over its bucket."""
    from robusta.demo.datagen import GeneratorConfig, generate_events
    from robusta.jobs.stream import stream
    from tests.engine.test_streaming import by_time, land, streaming_project, tile_rows

    spec = maps_spec("[1h, 1d]")
    workspace = streaming_project(tmp_path, spec=spec, engine=engine)
    events = generate_events(
        GeneratorConfig(seed=8, days=2, events_per_day=600, users=20, items=40, channels=5)
    )
    users = [{"USER_ID": u} for u in sorted({u for u in events.column("user_id").to_pylist() if u})]
    store = open_online_store(workspace.config.online, workspace.config.project, create=True)
    cached = FeatureClient(workspace, store)  # kept across both landings: its cache too
    for i, part in enumerate(by_time(events, 2)):
        land(tmp_path / "data", part, f"part-{i}", order=i)
        stream(workspace, available_now=True)
        fresh = FeatureClient(workspace, store, cache_size=0)
        for _ in range(2):  # the second round from the cache
            got = [cached.get_features([u], ["maps"])[0] for u in users]  # the per-key path
            want = [fresh.get_features([u], ["maps"])[0] for u in users]
            assert [bits(v.values) for v in got] == [bits(v.values) for v in want]
            assert [v.pointers for v in got] == [v.pointers for v in want]
    assert any(v.values["m_n_events_1d"] for v in got)
    hits = [g.cache.hits for groups in cached._groups.values() for g in groups]
    assert sum(hits) >= 2 * len(users), hits  # the repeats came from the cache
    plan = workspace.plan.spec("maps")
    assert plan is not None
    for group in plan.groups:
        tiles = tile_rows(workspace, group.layout.table)
        assert tiles.num_rows > 50
        assert_stored_maps_equal_reference(tiles, events, group)


# ---- the Spark engine -------------------------------------------------------------------
@pytest.mark.spark
@settings(max_examples=6, deadline=None, suppress_health_check=FIXTURES)
@given(rows=batches.filter(bool))
def test_spark_map_tiles_equal_the_embedded_tiles(
    spark: Any, plan: SpecPlan, rows: list[dict[str, Any]]
) -> None:
    events = query_rows(rows)
    for group, theirs in spark_tiles(spark, plan, events):
        mine, _ = build_tiles(events, plan, group)
        assert_same_map_tiles(mine, theirs, group)


def assert_same_map_tiles(mine: pa.Table, theirs: pa.Table, group: Any) -> None:
    """Two engines' map tiles: the same tiles, entries and values (``assert_same``)."""
    identity = ["user_id", "granularity", "bucket_start"]
    order = [(c, "ascending") for c in identity]
    mine, theirs = mine.sort_by(order), theirs.sort_by(order)
    for column in [*identity, "key_bucket", "events", "spec_version"]:
        assert mine.column(column).to_pylist() == theirs.column(column).to_pylist(), column
    events = mine.column("events").to_pylist()
    for feature in group.features:
        a, b = (
            feature.op.finalize(
                feature.op.from_arrow(t.column(feature.ir_column).combine_chunks())
            ).to_pylist()
            for t in (mine, theirs)
        )
        for x, y, n in zip(a, b, events, strict=True):
            assert [k for k, _ in x] == [k for k, _ in y], feature.name
            for (_, u), (_, v) in zip(x, y, strict=True):
                assert_same(inner(feature), u, v, n)


@pytest.mark.spark
def test_a_spark_materialize_writes_the_embedded_map_tiles(
    spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Spark's whole batch job (the tile job, the tasks' file writer, the commit) over the
    same events writes the embedded engine's map tiles."""
    from tests.engine.test_streaming import tile_rows

    tables = {}
    groups: tuple[Any, ...] = ()
    for engine in ("spark", "embedded"):
        root = Path(tmp_path_factory.mktemp(f"maps-{engine}"))
        project = make_project(root, engine=engine)
        (root / "feature_defs" / "maps.yaml").write_text(maps_spec("[1h, 1d]"))
        project.reload()
        materialize(project.workspace, ["maps"])
        spec = project.workspace.plan.spec("maps")
        assert spec is not None
        groups = spec.groups
        tables[engine] = {
            g.layout.table: tile_rows(project.workspace, g.layout.table) for g in groups
        }
    for group in groups:
        mine, theirs = (tables[e][group.layout.table] for e in ("embedded", "spark"))
        assert mine.num_rows == theirs.num_rows > 100
        assert_same_map_tiles(mine, theirs, group)


def assert_same(op: Operator, a: Any, b: Any, events: int) -> None:
    """Two engines' values of one bucket: floats within 1e-12, KLL sketches where exact."""
    if op.name == "approx_quantile" and events > int(op.params["k"]):
        return
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300), (op.name, a, b)
    else:
        assert a == b, (op.name, a, b)


@pytest.mark.spark
def test_a_spark_map_frame_equals_the_embedded_one(served: Served, spark: Any) -> None:
    asked = lookups(served, 30)
    rows = training_rows(asked, [None] * len(asked))
    embedded = get_training_frame(rows, ["maps"], workspace=served.workspace)
    frame = get_training_frame(
        rows.to_pandas(), ["maps"], workspace=served.workspace, engine="spark"
    ).toArrow()
    spec = served.workspace.plan.spec("maps")
    assert spec is not None
    for a, b in zip(embedded.to_pylist(), frame.to_pylist(), strict=True):
        for output in spec.outputs:
            assert bits(dict(a[output.name])) == bits(dict(b[output.name])), output.name
