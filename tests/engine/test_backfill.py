"""`get_training_frame` / `robusta backfill` on Spark against the reference evaluator.

The materialize tests' project (every operator, a composite key, null keys and times,
duplicates, hot users) with four windows per feature; training rows sit at event times, on
5m/1h/1d boundaries, before and after the data, on unknown and null keys, with null times and
with version pointers (some inside a bucket, floored to it).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from robusta.api.training import BackfillReport, MissingTilesError, get_training_frame
from robusta.demo.datagen import GeneratorConfig, generate_events, write_events
from robusta.ops import Operator
from robusta.plan.model import SpecPlan
from robusta.spec.durations import Window
from robusta.store.catalog import open_catalog
from robusta.testing.compare import assert_matches_reference, bits
from robusta.testing.reference import window_bounds
from robusta.workspace import Workspace, load_workspace
from tests.engine.test_materialize import SPEC, Project, config_text, events_by_key

pytestmark = pytest.mark.spark

WINDOWS = "[10m, 1h, 1d, lifetime]"
MIN = 60_000_000
GMIN = 5 * MIN


def backfill_project(root: Path, engine: str = "spark") -> Project:
    """Generated events and the every-operator spec with windows up to lifetime."""
    events = generate_events(
        GeneratorConfig(seed=11, days=3, events_per_day=2000, users=80, items=200, channels=6)
    )
    write_events(events, root / "data", "parquet")
    (root / "feature_defs").mkdir()
    spec = SPEC.replace("windows: [1h]", f"windows: {WINDOWS}")
    (root / "feature_defs" / "engagement.yaml").write_text(spec)
    (root / "robusta.yaml").write_text(config_text(f"sqlite:///{root / 'catalog.db'}", engine))
    return Project(root, load_workspace(root / "robusta.yaml").require_valid(), events)


@pytest.fixture(scope="module")
def project(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    yield backfill_project(tmp_path_factory.mktemp("backfill"))


def training_rows(events: pa.Table, count: int = 160) -> pa.Table:
    rng = random.Random(3)
    users = [u for u in events.column("user_id").to_pylist() if u is not None]
    channels = sorted({c for c in events.column("channel_id").to_pylist() if c is not None})
    times = [t for t in pc.cast(events.column("event_ts"), pa.int64()).to_pylist() if t]
    lo, hi = min(times), max(times)
    hot = max(set(users), key=users.count)
    rows = []
    for i in range(count):
        user = rng.choice([*users[:50], hot, hot, "nobody", None])
        kind = i % 6
        t: int | None
        if kind == 0:
            t = rng.choice(times)  # exactly at an event
        elif kind == 1:
            t = rng.choice(times) // (60 * MIN) * 60 * MIN  # an hour boundary
        elif kind == 2:
            t = rng.choice(times) // (1440 * MIN) * 1440 * MIN  # a day boundary
        elif kind == 3:
            t = rng.randint(lo - 2 * 1440 * MIN, hi + 2 * 1440 * MIN)  # also outside the data
        elif kind == 4:
            t = None if i % 4 == 0 else rng.choice(times) + GMIN
        else:
            t = rng.choice(times) + 1
        pointer = None
        if t is not None and i % 3 == 0:
            pointer = t - rng.choice([0, GMIN, 7 * MIN, 90 * MIN, 1440 * MIN])
        rows.append((user, rng.choice(channels), t, pointer, i))
    return pa.table(
        {
            "USER_ID": pa.array([r[0] for r in rows], pa.string()),
            "CHANNEL_ID": pa.array([r[1] for r in rows], pa.string()),
            "ts": pa.array([r[2] for r in rows], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "served_at": pa.array([r[3] for r in rows], pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "label": pa.array([r[4] for r in rows], pa.int64()),
        }
    )


@pytest.fixture(scope="module")
def backfilled(
    project: Project, tmp_path_factory: pytest.TempPathFactory
) -> tuple[pa.Table, pa.Table, BackfillReport]:
    rows = training_rows(project.events)
    path = tmp_path_factory.mktemp("rows") / "rows.parquet"
    pq.write_table(rows, path)
    report = BackfillReport()
    frame = get_training_frame(
        str(path), None, workspace=project.workspace, version_column="served_at", report=report
    )
    return rows, frame.toArrow(), report


def test_backfill_materializes_missing_tiles_and_keeps_row_order(
    backfilled: tuple[pa.Table, pa.Table, BackfillReport],
) -> None:
    rows, got, report = backfilled
    assert report.materialized == ["engagement"]  # once, for both of its tile groups
    assert report.rows == rows.num_rows
    assert got.column("label").to_pylist() == rows.column("label").to_pylist()
    assert got.num_columns == rows.num_columns + len(report.features)


def reference_cases(
    plan: SpecPlan,
    events: pa.Table,
    rows: pa.Table,
    got: pa.Table,
    features: Collection[str] | None = None,
) -> Iterator[tuple[Operator, Any, list[tuple[int, Any]] | None]]:
    """(operator, backfilled value, the row's events in the window) for every output of
    ``features`` (default all) and every row; events None for a row without a time."""
    ts = pc.cast(rows.column("ts"), pa.int64()).to_pylist()
    pointers = pc.cast(rows.column("served_at"), pa.int64()).to_pylist()
    for group in plan.groups:
        keys = [k.column for k in group.layout.keys]
        row_keys = list(
            zip(*(rows.column(k.entity).to_pylist() for k in group.layout.keys), strict=True)
        )
        for feature in group.features:
            if features is not None and feature.name not in features:
                continue
            by_key = events_by_key(events, keys, feature.input or "__count")
            for output in feature.outputs:
                values = got.column(output.name).to_pylist()
                for key, t, p, value in zip(row_keys, ts, pointers, values, strict=True):
                    if t is None:
                        yield feature.op, value, None
                        continue
                    cap = None if p is None else p - p % GMIN
                    start, end = window_bounds(t, output.window, GMIN, cap)
                    inside = [
                        (e, v)
                        for e, v in by_key.get(key, [])
                        if (start is None or e >= start) and e < end
                    ]
                    yield feature.op, value, inside


def assert_frame_matches_reference(
    project: Project, rows: pa.Table, got: pa.Table, least: int = 1000
) -> None:
    """Every feature of every row of a backfilled frame against the reference evaluator
    (a row without a time gets nulls); at least ``least`` values checked."""
    (plan,) = project.workspace.plan.specs
    checked = 0
    for op, value, inside in reference_cases(plan, project.events, rows, got):
        if inside is None:
            assert value is None
            continue
        assert_matches_reference(op, value, inside)
        checked += 1
    assert checked > least


def test_every_feature_equals_the_reference(
    project: Project, backfilled: tuple[pa.Table, pa.Table, BackfillReport]
) -> None:
    rows, got, _ = backfilled
    assert_frame_matches_reference(project, rows, got)


def test_no_materialize_names_the_command(project: Project, tmp_path: Path) -> None:
    rows = training_rows(project.events, 5)
    late = rows.set_column(
        2, "ts", pc.add(rows.column("ts"), pa.scalar(400 * 86_400_000_000, pa.duration("us")))
    )
    # All data was materialized (open-ended coverage), so later rows need nothing new...
    frame = get_training_frame(
        late.to_pandas(), ["n_events_1h"], workspace=project.workspace, materialize_missing=False
    )
    assert frame.count() == 5
    # ...but a changed spec makes the tiles stale.
    spec = project.root / "feature_defs" / "engagement.yaml"
    original = spec.read_text()
    try:
        spec.write_text(original.replace("granularities: [1d, 1h, 5m]", "granularities: [1d, 5m]"))
        changed = load_workspace(project.root / "robusta.yaml").require_valid()
        with pytest.raises(
            MissingTilesError, match="robusta materialize --spec engagement --rebuild"
        ):
            get_training_frame(
                rows.to_pandas(), ["n_events_1h"], workspace=changed, materialize_missing=False
            )
    finally:
        spec.write_text(original)
    _ = Window


def run_cli(project: Project, *args: str) -> Any:
    from click.testing import CliRunner

    from robusta.cli.main import main

    config = str(project.root / "robusta.yaml")
    return CliRunner().invoke(main, ["backfill", "--config", config, *args])


def test_cli_backfill_to_parquet_and_iceberg(project: Project, tmp_path: Path) -> None:
    rows = training_rows(project.events, 40).rename_columns(
        ["user", "CHANNEL_ID", "event_time", "served_at", "label"]
    )
    pq.write_table(rows, tmp_path / "rows.parquet")
    args = [
        "--input", str(tmp_path / "rows.parquet"),
        "--features", "n_events_1h,top_channels",
        "--timestamp-column", "event_time",
        "--entity-column", "USER_ID=user",
    ]  # fmt: skip
    result = run_cli(project, *args, "--output", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["rows"] == 40
    assert report["features"] == [
        "n_events_1h", "top_channels_10m", "top_channels_1h", "top_channels_1d",
        "top_channels_lifetime",
    ]  # fmt: skip
    written = pq.read_table(tmp_path / "out")
    assert written.column("label").to_pylist() == rows.column("label").to_pylist()
    again = run_cli(project, *args, "--output", str(tmp_path / "out"))
    assert again.exit_code == 2 and "--overwrite" in again.output

    result = run_cli(project, *args, "--output", "iceberg:training_rows")
    assert result.exit_code == 0, result.output
    assert "n_events_1h" in result.output and "rows with a value" in result.output
    config = project.workspace.project.config
    assert config is not None
    table = open_catalog(config.offline).load_table(f"{config.offline.namespace}.training_rows")
    stored = table.scan().to_arrow()
    assert sorted(stored.column("label").to_pylist()) == sorted(rows.column("label").to_pylist())
    refused = run_cli(project, *args, "--output", "iceberg:training_rows")
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    replaced = run_cli(project, *args, "--output", "iceberg:training_rows", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert len(table.refresh().scan().to_arrow()) == 40  # replaced, not appended


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--features", "n_event_1h"], 'spec or service named "n_event_1h"'),
        (["--timestamp-column", "when"], 'no timestamp column "when"'),
        (["--entity-column", "USER_ID=usr"], 'no USER_ID entity column "usr"'),
        (["--timestamp-column", "label"], 'time column "label" is int64'),
        (["--entity-column", "USER_ID"], '"USER_ID" is not ENTITY=COLUMN'),
    ],
)
def test_cli_bad_input_gets_one_clear_message(
    project: Project, tmp_path: Path, args: list[str], message: str
) -> None:
    pq.write_table(training_rows(project.events, 5), tmp_path / "rows.parquet")
    result = run_cli(
        project, "--input", str(tmp_path / "rows.parquet"), "--output", str(tmp_path / "o"), *args
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_hot_buckets_split_by_time_give_the_same_frame(
    project: Project, backfilled: tuple[pa.Table, pa.Table, BackfillReport], spark: Any
) -> None:
    from robusta.engine.spark.pit import KEY_BUCKET, KEY_PART, TS, _time_chunks

    rows, whole, _ = backfilled
    split = get_training_frame(
        rows.to_pandas(),
        None,
        workspace=project.workspace,
        version_column="served_at",
        rows_per_task=10,
    ).toArrow()
    assert split.to_pylist() == whole.to_pylist()
    keyed = spark.createDataFrame(
        [(1, 0, t) for t in range(30)] + [(2, 0, 5)],
        f"{KEY_BUCKET} INT, {KEY_PART} INT, {TS} BIGINT",
    )
    sql, extra = _time_chunks(keyed, 10)
    assert extra == 2  # bucket 1: 30 rows -> 3 chunks; bucket 2 stays whole
    chunks = keyed.selectExpr(f"{sql} AS c").groupBy("c").count().collect()
    assert sorted(r["count"] for r in chunks) == [10, 10, 11]


def test_a_join_memory_budget_splits_buckets_into_tasks_with_the_same_frame(
    project: Project, backfilled: tuple[pa.Table, pa.Table, BackfillReport], spark: Any
) -> None:
    """On Spark, a budget below the buckets' tiles makes a task per key part (rows hashed
    as the tiles are) and the same frame, bit for bit."""
    from robusta.api.training import _plan_joins, resolve_features
    from robusta.engine.spark.pit import join_group, prepare_rows

    rows, whole, _ = backfilled
    small = with_join_memory(project.workspace, 64 << 10)  # ~40 parts of 8 buckets
    split = get_training_frame(
        rows.to_pandas(), None, workspace=small, version_column="served_at"
    ).toArrow()
    for name in whole.column_names:
        got = [bits(v) for v in split.column(name).to_pylist()]
        assert got == [bits(v) for v in whole.column(name).to_pylist()], name
    (request,) = resolve_features(small.plan, ["n_events_1h"])
    frame = prepare_rows(
        spark.createDataFrame(rows.select(["USER_ID", "ts"]).to_pandas()), "ts", None
    )
    times = pc.cast(rows.column("ts"), pa.int64())
    lo, hi = pc.min(times).as_py(), pc.max(times).as_py()
    (join,) = _plan_joins(small, [request], lo, hi, False, False, lambda _: None, BackfillReport())
    assert sum(join.parts.values()) > request.group.layout.key_buckets
    tasks = join_group(frame, join, ["USER_ID"]).rdd.getNumPartitions()
    assert tasks == request.group.layout.key_buckets + sum(n - 1 for n in join.parts.values())


def test_a_hot_bucket_gets_more_tasks(project: Project, spark: Any) -> None:
    from robusta.api.training import _plan_joins, resolve_features
    from robusta.api.training_rows import check_columns, stage_rows
    from robusta.engine.spark.pit import join_group, prepare_rows

    rows = training_rows(project.events, 60)
    frame = spark.createDataFrame(rows.to_pandas())
    (request,) = resolve_features(project.workspace.plan, ["n_events_1h"])
    _, kinds = stage_rows(frame, project.workspace.project.config.offline, ["ts"])  # type: ignore[union-attr]
    keys = check_columns(kinds, [request], "ts", None, None)[request.group.layout.table]
    prepared = prepare_rows(frame, "ts", None)
    times = pc.cast(rows.column("ts"), pa.int64())
    lo, hi = pc.min(times).as_py(), pc.max(times).as_py()
    (join,) = _plan_joins(
        project.workspace, [request], lo, hi, False, False, lambda _: None, BackfillReport()
    )
    buckets = request.group.layout.key_buckets
    assert join_group(prepared, join, keys).rdd.getNumPartitions() == buckets
    assert join_group(prepared, join, keys, rows_per_task=5).rdd.getNumPartitions() > buckets


def test_pointers_far_before_the_row_time_read_the_older_tiles(project: Project) -> None:
    """Without lifetime windows only tiles from min(t, pointer) - longest window are read; a
    pointer days before t must still find its tiles."""
    every = training_rows(project.events, 60)
    rows = every.filter(pc.is_valid(every.column("ts")))
    two_days = pa.scalar(2 * 86_400_000_000, pa.duration("us"))
    rows = rows.set_column(3, "served_at", pc.subtract(rows.column("ts"), two_days))
    rows = rows.set_column(2, "ts", pc.add(rows.column("ts"), two_days))
    features = ["n_events_1h", "n_events_1d", "dwell_sum_1d"]
    got = get_training_frame(
        rows.to_pandas(), features, workspace=project.workspace, version_column="served_at"
    ).toArrow()
    (plan,) = project.workspace.plan.specs
    outputs = {o.name: (f, o) for f in plan.features for o in f.outputs}
    ts = pc.cast(rows.column("ts"), pa.int64()).to_pylist()
    pointers = pc.cast(rows.column("served_at"), pa.int64()).to_pylist()
    users = rows.column("USER_ID").to_pylist()
    nonzero = 0
    for name in features:
        feature, output = outputs[name]
        by_key = events_by_key(project.events, ["user_id"], feature.input or "__count")
        for user, t, p, value in zip(
            users, ts, pointers, got.column(name).to_pylist(), strict=True
        ):
            start, end = window_bounds(t, output.window, GMIN, p - p % GMIN)
            assert start is not None
            inside = [(e, v) for e, v in by_key.get((user,), []) if start <= e < end]
            assert_matches_reference(feature.op, value, inside)
            nonzero += bool(inside)
    assert nonzero > 20


def test_rows_from_every_writer_give_the_same_frame(
    project: Project, spark: Any, tmp_path: Path
) -> None:
    """The same rows written by pandas (nanoseconds), Polars (milliseconds), DuckDB, Spark
    and as CSV with offsets backfill to the same frame (after the rows' own tiles exist)."""
    import duckdb
    import polars as pl

    rows = training_rows(project.events, 40).select(["USER_ID", "CHANNEL_ID", "ts", "label"])
    rows = rows.filter(pc.is_valid(rows.column("ts")))
    # Milliseconds are what every writer here holds exactly.
    ms = pc.cast(rows.column("ts"), pa.timestamp("ms", tz="UTC"), safe=False)
    rows = rows.set_column(2, "ts", pc.cast(ms, pa.timestamp("us", tz="UTC")))
    frame = rows.to_pandas()
    frame["ts"] = frame["ts"].astype("datetime64[ns, UTC]")
    frame.to_parquet(tmp_path / "pandas.parquet")
    pl.from_pandas(frame).with_columns(pl.col("ts").dt.cast_time_unit("ms")).write_parquet(
        tmp_path / "polars.parquet"
    )
    duck = duckdb.connect()
    duck.register("rows", rows)
    duck.sql("COPY rows TO '" + str(tmp_path / "duckdb.parquet") + "' (FORMAT parquet)")
    spark.createDataFrame(frame).write.parquet(str(tmp_path / "spark"))
    csv = frame.assign(ts=frame["ts"].dt.tz_convert("Europe/Berlin").map(lambda t: t.isoformat()))
    csv.to_csv(tmp_path / "rows.csv", index=False)
    inputs = {
        "pandas": str(tmp_path / "pandas.parquet"),
        "polars": str(tmp_path / "polars.parquet"),
        "duckdb": str(tmp_path / "duckdb.parquet"),
        "spark": str(tmp_path / "spark"),
        "csv": str(tmp_path / "rows.csv"),
        "pandas frame": frame,
    }
    features = ["n_events_1h", "dwell_sum_1h", "last_items_1h"]
    frames = {}
    for writer, source in inputs.items():
        got = get_training_frame(source, features, workspace=project.workspace).toArrow()
        frames[writer] = got.sort_by("label").select(["label", "USER_ID", "ts", *features])
    want = frames["pandas"]
    for writer, got in frames.items():
        assert got.column("ts").type == pa.timestamp("us", tz="UTC"), writer
        assert got.equals(want), writer
    from robusta.api.training import to_pandas

    back = to_pandas(get_training_frame(frame, features, workspace=project.workspace))
    assert str(back["ts"].dt.tz) == "UTC"  # the zone is kept
    assert list(back["ts"]) == list(frame["ts"])


def test_the_embedded_join_equals_the_spark_join_bit_for_bit(
    project: Project, backfilled: tuple[pa.Table, pa.Table, BackfillReport]
) -> None:
    """The same rows joined on Arrow (no Spark) from the same tiles: every feature of every
    row, with nulls, pointers, hot and unknown keys, equals the Spark join's to the bit."""
    from robusta.api.training import _plan_joins, resolve_features
    from robusta.api.training_rows import check_columns, normalize_times, stage_rows
    from robusta.engine.embedded.pit import BATCH_ROWS, join_group

    rows, spark_frame, report = backfilled
    assert rows.num_rows < BATCH_ROWS * 4
    config = project.workspace.project.config
    assert config is not None
    staged, kinds = stage_rows(rows, config.offline, ["ts", "served_at"])
    assert staged.table is not None
    table = normalize_times(staged.table, ["ts", "served_at"])
    requests = resolve_features(project.workspace.plan, None)
    keys = check_columns(kinds, requests, "ts", None, "served_at")
    times = pc.cast(rows.column("ts"), pa.int64())
    pointers = pc.cast(rows.column("served_at"), pa.int64())
    lo = min(pc.min(times).as_py(), pc.min(pointers).as_py())
    hi = pc.max(times).as_py()
    joined = table
    joins = _plan_joins(
        project.workspace, requests, lo, hi, True, False, lambda _: None, BackfillReport()
    )
    for request, join in zip(requests, joins, strict=True):
        joined = join_group(joined, join, keys[request.group.layout.table], "ts", "served_at")
    assert joined.column("label").to_pylist() == rows.column("label").to_pylist()  # order
    for name in report.features:
        got = [bits(v) for v in joined.column(name).to_pylist()]
        assert got == [bits(v) for v in spark_frame.column(name).to_pylist()], name


def with_join_memory(workspace: Workspace, budget: int) -> Workspace:
    """``workspace`` with ``offline.join_memory`` set to ``budget`` bytes."""
    config = workspace.config
    offline = dataclasses.replace(config.offline, join_memory=budget)
    project = dataclasses.replace(
        workspace.project, config=dataclasses.replace(config, offline=offline)
    )
    return dataclasses.replace(workspace, project=project)
