"""The embedded engine's tile builder and query transpilation.

Fast tier (no Spark): tiles built from generated events (null keys and times, ties, hot users)
through DuckDB against the brute-force reference, for every operator and granularity.
``spark`` tier: the same events tiled by the Spark engine give the same tiles, and a corpus of
Spark SQL constructs gives the same rows in DuckDB after sqlglot transpiles it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
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
    return run_query(con, plan.spec.query, plan.spec.timestamp)


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


def test_other_formats_are_refused_clearly(tmp_path: Path) -> None:
    source = SourceConfig("raw", "json", tmp_path, {}, parse_schema("a STRING"))
    with pytest.raises(UnsupportedSourceError, match="not supported by the embedded engine yet"):
        register_sources(connect(), [source])


# ---- against the Spark engine ------------------------------------------------------------------
EXACT = {"count", "min", "max", "first", "last", "first_n", "last_n", "top_k"}
FLOATS = {"sum", "avg", "variance", "stddev"}


@pytest.fixture(scope="module")
def spark_tiles(spark: Any, project: Project) -> dict[str, pa.Table]:
    from robusta.materialize import materialize

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
    got = _ordered(built[table][0], group)
    want = _ordered(
        spark_tiles[table].select(tile_schema(group).names).cast(tile_schema(group)), group
    )
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


# ---- the query in DuckDB: the same rows as Spark -----------------------------------------------
CORPUS = {
    "cast_text_and_date": "SELECT event_id, CAST(event_ts AS STRING) AS s, "
    "CAST(event_ts AS DATE) AS d, CAST(CAST(event_ts AS DATE) AS STRING) AS ds, "
    "CAST('12' AS INT) AS i, CAST(dwell_seconds AS DECIMAL(12, 3)) AS dec FROM events",
    "cast_to_timestamp": "SELECT event_id, "
    "CAST(CAST(event_ts AS STRING) AS TIMESTAMP) AS t FROM events",
    "case": "SELECT event_id, CASE WHEN event_type = 'click' THEN 'c' WHEN event_type = 'view' "
    "THEN 'v' ELSE NULL END AS k, CASE device WHEN 'ios' THEN 1 ELSE 2 END AS d FROM events",
    "strings": "SELECT event_id, lower(country) AS l, upper(device) AS u, "
    "concat(user_id, '/', item_id) AS c, substring(item_id, 2, 3) AS s, substr(item_id, 3) AS s2, "
    "length(user_id) AS n, trim(concat(' ', device, ' ')) AS t, user_id || item_id AS p "
    "FROM events",
    "dates": "SELECT event_id, date_trunc('HOUR', event_ts) AS h, "
    "date_trunc('DAY', event_ts) AS d, to_date(event_ts) AS td, hour(event_ts) AS hr, "
    "year(event_ts) AS y, month(event_ts) AS m, dayofmonth(event_ts) AS dm FROM events",
    "integer_division": "SELECT event_id, CAST(floor(dwell_seconds * 10) AS BIGINT) div 7 AS q, "
    "(0 - CAST(floor(dwell_seconds * 10) AS BIGINT)) div 7 AS nq, "
    "CAST(dwell_seconds AS STRING) AS t, length(user_id) / 2 AS half, "
    "length(user_id) % 3 AS r FROM events WHERE dwell_seconds > 0",
    "nulls": "SELECT event_id, coalesce(user_id, channel_id, 'none') AS k, "
    "nullif(device, 'web') AS d, CASE WHEN user_id IS NULL THEN 1 ELSE 0 END AS nk, "
    "coalesce(dwell_seconds, 0.0) AS dw FROM events",
    "subquery": "SELECT user_id, d FROM (SELECT user_id, dwell_seconds * 2 AS d FROM events "
    "WHERE dwell_seconds > 10) AS t WHERE d < 100",
    "arithmetic": "SELECT event_id, dwell_seconds * 2 + 1 AS a, "
    "abs(0 - dwell_seconds) AS b, greatest(dwell_seconds, 5.0) AS g FROM events",
}
# Constructs that give other rows in DuckDB than in Spark (what validation must refuse).
DIFFERENT = {
    # Spark's floor(double) is a BIGINT; DuckDB's a DOUBLE, which its // does not truncate.
    "floor_div": "SELECT event_id, floor(dwell_seconds * 10) div 7 AS q FROM events",
    # Spark truncates a double cast to an integer; DuckDB rounds it.
    "cast_double_to_int": "SELECT event_id, CAST(dwell_seconds AS INT) AS i FROM events",
    # Spark rounds half up on the decimal text (22.665 -> 22.67); DuckDB on the double.
    "round_half": "SELECT event_id, round(dwell_seconds, 2) AS r FROM events",
    # sqlglot makes Spark's TIMESTAMP a TIMESTAMPTZ, whose text has a "+00" suffix.
    "cast_timestamp_to_text_after_cast": "SELECT event_id, "
    "CAST(CAST(event_ts AS TIMESTAMP) AS STRING) AS s FROM events",
}


def _feature_def_queries() -> dict[str, str]:
    import yaml

    folder = Path(__file__).resolve().parents[2] / "feature_defs"
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and "query" in doc:
            out[f"feature_defs/{path.name}"] = doc["query"]
    return out


def _normal(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same type (floats within 1e-12 relative)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    return type(a) is type(b) and bool(a == b)


@pytest.fixture(scope="module")
def engines(spark: Any, project: Project, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from robusta.datagen import EVENT_SCHEMA_DDL, write_events
    from robusta.engine.spark.sources import read_source

    folder = tmp_path_factory.mktemp("corpus") / "csv"
    write_events(project.events, folder, "csv")
    config = project.workspace.project.config
    assert config is not None
    con = connect()
    for name in ("events", "engagement_events"):
        source = SourceConfig(
            name, "csv", folder, {"header": "true"}, parse_schema(EVENT_SCHEMA_DDL)
        )
        register_sources(con, [source])
        read_source(spark, config, source).createOrReplaceTempView(name)
    return spark, con


def _compare(engines: Any, query: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    from robusta.engine.embedded.sql import transpile

    spark, con = engines
    theirs = [tuple(_normal(v) for v in row) for row in spark.sql(query).collect()]
    mine = [tuple(_normal(v) for v in row) for row in con.sql(transpile(query)).fetchall()]
    return sorted(mine, key=repr), sorted(theirs, key=repr)


def _rows_equal(mine: list[tuple[Any, ...]], theirs: list[tuple[Any, ...]]) -> bool:
    return len(mine) == len(theirs) and all(
        len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
        for a, b in zip(mine, theirs, strict=True)
    )


@pytest.mark.spark
@pytest.mark.parametrize("name", [*CORPUS, *_feature_def_queries()])
def test_transpiled_query_gives_spark_rows(engines: Any, name: str) -> None:
    query = CORPUS.get(name) or _feature_def_queries()[name]
    mine, theirs = _compare(engines, query)
    assert theirs, "the corpus query must return rows"
    diff = [(a, b) for a, b in zip(mine, theirs, strict=False) if not _rows_equal([a], [b])]
    assert len(mine) == len(theirs) and not diff, (name, len(mine), len(theirs), diff[:2])


@pytest.mark.spark
@pytest.mark.parametrize("name", list(DIFFERENT))
def test_constructs_that_differ_in_duckdb(engines: Any, name: str) -> None:
    """Known differences, asserted so a fix (or a sqlglot upgrade) is noticed."""
    mine, theirs = _compare(engines, DIFFERENT[name])
    assert not _rows_equal(mine, theirs)


@pytest.mark.parametrize("table", TABLES)
def test_a_build_in_key_shares_gives_the_same_tiles(
    project: Project,
    query_rows: pa.Table,
    built: dict[str, tuple[pa.Table, TileCounts]],
    table: str,
) -> None:
    """Large builds go a share of the key buckets at a time (bounded memory): the shares'
    tiles and counts together are the one-pass build's."""
    from robusta.engine.embedded.job import added, by_key_share

    plan, group = spec_plan(project), tile_group(project, table)
    parts = [build_tiles(rows, plan, group) for rows in by_key_share(query_rows, group, 3)]
    assert len(parts) == 3 and all(p[0].num_rows for p in parts)
    counts = parts[0][1]
    for _, more in parts[1:]:
        counts = added(counts, more)
    whole, want = built[table]
    assert counts == want
    tiles, whole = _ordered(pa.concat_tables([p[0] for p in parts]), group), _ordered(whole, group)
    kll = {f.ir_column for f in group.features if f.op.name == "approx_quantile"}  # randomized
    for name in tiles.column_names:
        if name not in kll:
            assert tiles.column(name).equals(whole.column(name)), name
