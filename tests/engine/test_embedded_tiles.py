"""The embedded engine's tile builder and query transpilation.

Fast tier (no Spark): tiles built from generated events (null keys and times, ties, hot users)
through DuckDB against the brute-force reference, for every operator and granularity.
``spark`` tier: the same events tiled by the Spark engine give the same tiles (the query's rows
on both engines: ``test_sql_corpus``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from robusta.engine.counts import TileCounts
from robusta.engine.embedded.sql import (
    UnsupportedSourceError,
    connect,
    register_sources,
    run_query,
)
from robusta.engine.embedded.tiles import build_tiles
from robusta.plan.model import SpecPlan, TileGroup
from robusta.spec.model import SourceConfig
from robusta.spec.types import parse_schema
from robusta.store.tiles import TileTables, tile_schema
from robusta.testing.reference import reference_value
from tests.engine.test_materialize import (
    Project,
    assert_close,
    events_by_key,
    finalize_one,
    make_project,
    sample_rows,
)

TABLES = ["engagement__by_user_id", "engagement__by_channel_id__user_id"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return make_project(tmp_path_factory.mktemp("embedded"))


def spec_plan(project: Project) -> SpecPlan:
    (plan,) = project.workspace.plan.specs
    return plan


def tile_group(project: Project, table: str) -> TileGroup:
    return next(g for g in spec_plan(project).groups if g.layout.table == table)


@pytest.fixture(scope="module")
def query_rows(project: Project) -> pa.Table:
    config = project.workspace.project.config
    assert config is not None
    con = connect()
    register_sources(con, config.sources.values())
    plan = spec_plan(project)
    return run_query(con, plan.spec.query, plan.spec.timestamp, plan.spec.sources)


@pytest.fixture(scope="module")
def built(project: Project, query_rows: pa.Table) -> dict[str, tuple[pa.Table, TileCounts]]:
    plan = spec_plan(project)
    return {t: build_tiles(query_rows, plan, tile_group(project, t)) for t in TABLES}


def test_query_rows_are_the_events(project: Project, query_rows: pa.Table) -> None:
    assert query_rows.num_rows == project.events.num_rows
    assert query_rows.schema.field("event_ts").type == pa.timestamp("us", tz="UTC")
    assert query_rows.schema.field("is_click").type == pa.int32()  # Spark's INT
    got = pc.cast(query_rows.column("event_ts"), pa.int64()).drop_null().to_pylist()
    want = pc.cast(project.events.column("event_ts"), pa.int64()).drop_null().to_pylist()
    assert sorted(got) == sorted(want)


@pytest.mark.parametrize("table", TABLES)
def test_counts(
    project: Project, built: dict[str, tuple[pa.Table, TileCounts]], table: str
) -> None:
    tiles, counts = built[table]
    events = project.events
    keys = [k.column for k in tile_group(project, table).layout.keys]
    null_key = pc.is_null(events.column(keys[0]))
    for k in keys[1:]:
        null_key = pc.or_(null_key, pc.is_null(events.column(k)))
    null_ts = pc.and_(pc.invert(null_key), pc.is_null(events.column("event_ts")))
    assert counts.events == events.num_rows
    assert counts.null_keys == pc.sum(null_key).as_py() > 0
    assert counts.null_timestamps == pc.sum(null_ts).as_py() > 0
    assert sum(counts.tiles.values()) == tiles.num_rows
    for g, n in counts.tiles.items():
        assert n == pc.sum(pc.equal(tiles.column("granularity"), g)).as_py() > 0
    kept = events.filter(pc.invert(pc.or_(null_key, pc.is_null(events.column("event_ts")))))
    latest = pc.max(pc.cast(kept.column("event_ts"), pa.int64())).as_py()
    assert counts.last_event == latest
    assert counts.last_bucket == latest - latest % (5 * 60 * 1_000_000)
    for g in ("1d", "1h", "5m"):
        level = tiles.filter(pc.equal(tiles.column("granularity"), g))
        assert pc.sum(level.column("events")).as_py() == kept.num_rows


@pytest.mark.parametrize("table", TABLES)
def test_tiles_equal_the_reference(
    project: Project, built: dict[str, tuple[pa.Table, TileCounts]], table: str
) -> None:
    group = tile_group(project, table)
    rows, _ = built[table]
    assert rows.schema == tile_schema(group)
    assert set(rows.column("spec_version").to_pylist()) == {spec_plan(project).hash}
    keys = [k.column for k in group.layout.keys]
    sizes = {g.name: g.micros for g in group.layout.granularities}
    starts = pc.cast(rows.column("bucket_start"), pa.int64()).to_pylist()
    grains = rows.column("granularity").to_pylist()
    picks: list[int] = []
    for g in sizes:  # hot tiles and a sample of every granularity
        level = [i for i, x in enumerate(grains) if x == g]
        picks += [level[i] for i in sample_rows(rows.take(level), 25)]
    for i in picks:
        assert starts[i] % sizes[grains[i]] == 0
    per_count = events_by_key(project.events, keys, "__count")
    for i in picks:
        key = tuple(rows.column(k)[i].as_py() for k in keys)
        times = [t for t, _ in per_count[key] if starts[i] <= t < starts[i] + sizes[grains[i]]]
        assert rows.column("events")[i].as_py() == len(times)
    for feature in group.features:
        per_key = events_by_key(project.events, keys, feature.input or "__count")
        for i in picks:
            key = tuple(rows.column(k)[i].as_py() for k in keys)
            start, end = starts[i], starts[i] + sizes[grains[i]]
            inside = [(t, v) for t, v in per_key[key] if start <= t < end]
            want = reference_value(feature.op.name, feature.op.params, inside, start, end)
            got = finalize_one(feature, rows.column(feature.ir_column).slice(i, 1))
            assert_close(feature.op, got, want, [v for _, v in inside])


def test_buckets_before_1970_are_epoch_aligned(project: Project) -> None:
    plan = spec_plan(project)
    group = tile_group(project, TABLES[0])
    times = [-1, -300_000_000, -300_000_001, 0]
    events = pa.table(
        {
            "user_id": ["u", "u", "u", "u"],
            "event_ts": pa.array(times, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            **{c: pa.nulls(4, pa.string()) for c in ("item_id", "channel_id", "device")},
            "dwell_seconds": pa.array([1.0, 2.0, 3.0, 4.0]),
            "is_click": pa.array([1, 0, 1, 1], pa.int32()),
        }
    )
    tiles, counts = build_tiles(events, plan, group)
    finest = tiles.filter(pc.equal(tiles.column("granularity"), "5m"))
    got = dict(
        zip(
            pc.cast(finest.column("bucket_start"), pa.int64()).to_pylist(),
            finest.column("events").to_pylist(),
            strict=True,
        )
    )
    assert got == {-300_000_000: 2, -600_000_000: 1, 0: 1}
    assert counts.last_bucket == 0 and counts.last_event == 0


def test_unsupported_reader_options_are_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a\n1\n")
    source = SourceConfig("raw", "csv", tmp_path, {"multiLine": "true"}, parse_schema("a STRING"))
    with pytest.raises(UnsupportedSourceError, match='csv option "multiLine" is not supported'):
        register_sources(connect(), [source])


# ---- against the Spark engine ------------------------------------------------------------------
EXACT = {"count", "min", "max", "first", "last", "first_n", "last_n", "top_k"}
FLOATS = {"sum", "avg", "variance", "stddev"}


@pytest.fixture(scope="module")
def spark_tiles(spark: Any, project: Project) -> dict[str, pa.Table]:
    from robusta.jobs.materialize import materialize

    materialize(project.workspace)
    config = project.workspace.project.config
    assert config is not None
    tables = TileTables(config.offline)
    out = {}
    for name in TABLES:
        table = tables.load(name)
        assert table is not None
        out[name] = table.scan().to_arrow()
    return out


def _ordered(rows: pa.Table, group: TileGroup) -> pa.Table:
    keys = [k.column for k in group.layout.keys]
    return rows.sort_by([(c, "ascending") for c in ["granularity", *keys, "bucket_start"]])


def _float_fields(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _float_fields(v)]
    return [value]


@pytest.mark.spark
@pytest.mark.parametrize("table", TABLES)
def test_same_tiles_as_spark(
    project: Project,
    built: dict[str, tuple[pa.Table, TileCounts]],
    spark_tiles: dict[str, pa.Table],
    table: str,
) -> None:
    group = tile_group(project, table)
    assert_same_tiles(built[table][0], spark_tiles[table], group)


def assert_same_tiles(mine: pa.Table, theirs: pa.Table, group: TileGroup) -> None:
    """The tile contract across engines: exact IRs identical, floats within 1e-12 relative,
    sketches with equal estimates (KLL: where it holds every value)."""
    got = _ordered(mine.select(tile_schema(group).names).cast(tile_schema(group)), group)
    want = _ordered(theirs.select(tile_schema(group).names).cast(tile_schema(group)), group)
    assert got.num_rows == want.num_rows
    identity = [k.column for k in group.layout.keys]
    identity += ["key_bucket", "granularity", "bucket_start", "events", "spec_version"]
    for name in identity:
        assert got.column(name).equals(want.column(name)), name
    for feature in group.features:
        op = feature.op
        mine, theirs = got.column(feature.ir_column), want.column(feature.ir_column)
        if op.name in EXACT or (op.name == "sum" and pa.types.is_integer(feature.ir_type)):
            assert mine.equals(theirs), feature.name
        elif op.name in FLOATS:
            for a, b in zip(mine.to_pylist(), theirs.to_pylist(), strict=True):
                for x, y in zip(_float_fields(a), _float_fields(b), strict=True):
                    if isinstance(x, float) and isinstance(y, float):
                        assert math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-300), feature.name
                    else:
                        assert x == y, feature.name
        else:  # sketches: equal estimates
            a = op.finalize(op.from_arrow(mine.combine_chunks())).to_pylist()
            b = op.finalize(op.from_arrow(theirs.combine_chunks())).to_pylist()
            if op.name == "approx_distinct":
                assert a == b, feature.name
            else:
                # A KLL sketch of more than k values has compacted at random (Spark's and
                # datasketches' merges draw a bit), so only exact-mode sketches compare equal.
                events = got.column("events").to_pylist()
                small = [i for i, n in enumerate(events) if n <= op.params["k"]]
                assert [a[i] for i in small] == [b[i] for i in small], feature.name
