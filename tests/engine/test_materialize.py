"""`robusta materialize` on generated data: stored tiles against the reference evaluator.

One project with every operator (and a composite-key group) over generated events that have
null keys and times, duplicates, ties, bucket-edge timestamps and hot users. Each test reads
the Iceberg tables back with pyiceberg, as every later reader will.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import textwrap
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import datasketches as ds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from robusta.demo.datagen import EVENT_SCHEMA_DDL, GeneratorConfig, generate_events, write_events
from robusta.jobs.materialize import TableReport, materialize
from robusta.ops import Operator, make_operator
from robusta.plan.keys import key_bucket
from robusta.plan.model import BaseFeature, TileGroup
from robusta.spec.types import DataType
from robusta.store.tiles import SpecChangedError, TileTables
from robusta.testing.reference import reference_value
from robusta.workspace import Workspace, load_workspace

pytestmark = [pytest.mark.spark, pytest.mark.long]

FEATURES = [  # (name, op, input, params): every operator, keyed by user
    ("n_events", "count", None, None),
    ("clicks", "sum", "is_click", None),
    ("dwell_sum", "sum", "dwell_seconds", None),
    ("dwell_avg", "avg", "dwell_seconds", None),
    ("dwell_min", "min", "dwell_seconds", None),
    ("dwell_max", "max", "dwell_seconds", None),
    ("dwell_var", "variance", "dwell_seconds", None),
    ("dwell_std", "stddev", "dwell_seconds", None),
    ("first_item", "first", "item_id", None),
    ("last_device", "last", "device", None),
    ("first_items", "first_n", "item_id", "{n: 3}"),
    ("last_items", "last_n", "item_id", "{n: 3}"),
    ("distinct_items", "approx_distinct", "item_id", None),
    ("dwell_q", "approx_quantile", "dwell_seconds", "{q: [0.5, 0.9]}"),
    ("top_channels", "top_k", "channel_id", "{k: 3}"),
]


def feature_yaml(name: str, op: str, column: str | None, params: str | None) -> str:
    parts = [
        f"op: {op}",
        *([f"input: {column}"] if column else []),
        *([f"params: {params}"] if params else []),
        "windows: [1h]",
        "group_by_selectors: {user_id: USER_ID}",
    ]
    return f"  {name}: {{{', '.join(parts)}}}\n"


SPEC = (
    """\
name: engagement
owner: tests
query: |
  SELECT user_id, item_id, channel_id, device, dwell_seconds,
         CASE WHEN event_type = 'click' THEN 1 ELSE 0 END AS is_click,
         event_ts
  FROM events
timestamp: event_ts
granularities: [1d, 1h, 5m]
features:
"""
    + "".join(feature_yaml(*f) for f in FEATURES)
    + """\
  pair_events:
    op: count
    windows: [1h]
    group_by_selectors: {user_id: USER_ID, channel_id: CHANNEL_ID}
    primary_selector: user_id
"""
)


def config_text(catalog_uri: str, engine: str = "spark") -> str:
    return textwrap.dedent(f"""\
        project: tiles-test
        engine: {engine}
        sources:
          events:
            format: parquet
            path: data
            schema: "{EVENT_SCHEMA_DDL}"
        entities:
          USER_ID: {{type: string}}
          CHANNEL_ID: {{type: string}}
        offline:
          catalog: {{type: sql, uri: "{catalog_uri}"}}
          warehouse: warehouse
          namespace: tiles_{os.getpid()}
        """)


@dataclass
class Project:
    root: Path
    workspace: Workspace
    events: pa.Table

    def reload(self) -> None:
        self.workspace = load_workspace(self.root / "robusta.yaml").require_valid()


def make_project(root: Path, catalog_uri: str | None = None, engine: str = "spark") -> Project:
    events = generate_events(
        GeneratorConfig(seed=3, days=3, events_per_day=3000, users=120, items=300, channels=9)
    )
    write_events(events, root / "data", "parquet")
    (root / "feature_defs").mkdir()
    (root / "feature_defs" / "engagement.yaml").write_text(SPEC)
    uri = catalog_uri or f"sqlite:///{root / 'catalog.db'}"
    (root / "robusta.yaml").write_text(config_text(uri, engine))
    return Project(root, load_workspace(root / "robusta.yaml").require_valid(), events)


@pytest.fixture(scope="module", params=["spark", "embedded"])
def project(
    spark: Any, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Project]:
    """The project on each engine: every test of this module runs on both."""
    proj = make_project(tmp_path_factory.mktemp("tiles"), engine=request.param)
    yield proj


@pytest.fixture(scope="module")
def first_run(project: Project) -> list[TableReport]:
    return materialize(project.workspace)


def load_table(project: Project, name: str) -> Any:
    config = project.workspace.project.config
    assert config is not None
    table = TileTables(config.offline).load(name)
    assert table is not None
    return table


def table_rows(project: Project, name: str) -> pa.Table:
    return load_table(project, name).scan().to_arrow()


def group(project: Project, table: str) -> TileGroup:
    (plan,) = project.workspace.plan.specs
    return next(g for g in plan.groups if g.layout.table == table)


def events_by_key(
    events: pa.Table, keys: list[str], column: str
) -> dict[Any, list[tuple[int, Any]]]:
    """(ts, value) per key, with the spec query's derived columns; null keys/times dropped."""
    values = (
        events.column("event_type").to_pylist()
        if column == "is_click"
        else (
            events.column(column).to_pylist() if column != "__count" else [None] * events.num_rows
        )
    )
    if column == "is_click":
        values = [1 if v == "click" else 0 for v in values]
    ts = pc.cast(events.column("event_ts"), pa.int64()).to_pylist()
    key_values = list(zip(*(events.column(k).to_pylist() for k in keys), strict=True))
    out: dict[Any, list[tuple[int, Any]]] = defaultdict(list)
    for key, t, v in zip(key_values, ts, values, strict=True):
        if t is not None and all(k is not None for k in key):
            out[key].append((t, v))
    return out


def finalize_one(feature: BaseFeature, ir: pa.Array) -> Any:
    op: Operator = feature.op
    return op.finalize(op.from_arrow(ir)).to_pylist()[0]


def assert_close(op: Operator, got: Any, want: Any, values: list[Any]) -> None:
    if want is None or got is None:
        assert got == want
    elif op.name == "approx_distinct":
        assert abs(got - want) <= max(1, 3 * 0.016 * want)
    elif op.name == "approx_quantile":
        present = sorted(v for v in values if v is not None)
        for q, v in zip(op.params["q"], got, strict=True):
            below = sum(x < v for x in present) / len(present)
            upto = sum(x <= v for x in present) / len(present)
            assert below - 0.05 <= q <= upto + 0.05
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (op.name, got, want)
    else:
        assert got == want, op.name


def sample_rows(rows: pa.Table, count: int) -> list[int]:
    rng = random.Random(5)
    events = rows.column("events").to_pylist()
    hot = sorted(range(len(events)), key=lambda i: -events[i])[:10]
    return hot + rng.sample(range(rows.num_rows), min(count, rows.num_rows))


def test_report_counts_events_nulls_and_tiles(
    project: Project, first_run: list[TableReport]
) -> None:
    main = next(r for r in first_run if r.table.endswith(".engagement__by_user_id"))
    user = project.events.column("user_id")
    ts = project.events.column("event_ts")
    assert main.events == project.events.num_rows
    assert main.dropped_null_key == user.null_count
    assert main.dropped_null_timestamp == pc.sum(pc.and_(pc.is_valid(user), pc.is_null(ts))).as_py()
    rows = table_rows(project, "engagement__by_user_id")
    assert sum(main.tiles.values()) == rows.num_rows
    assert set(main.tiles) == {"1d", "1h", "5m"}


@pytest.mark.parametrize("table", ["engagement__by_user_id", "engagement__by_channel_id__user_id"])
def test_stored_tiles_equal_the_reference(
    project: Project, first_run: list[TableReport], table: str
) -> None:
    tiles = group(project, table)
    rows = table_rows(project, table)
    keys = [k.column for k in tiles.layout.keys]
    sizes = {g.name: g.micros for g in tiles.layout.granularities}
    for feature in tiles.features:
        per_key = events_by_key(project.events, keys, feature.input or "__count")
        for i in sample_rows(rows, 40):
            key = tuple(rows.column(k)[i].as_py() for k in keys)
            start = pc.cast(rows.column("bucket_start"), pa.int64())[i].as_py()
            end = start + sizes[rows.column("granularity")[i].as_py()]
            inside = [(t, v) for t, v in per_key[key] if start <= t < end]
            want = reference_value(feature.op.name, feature.op.params, inside, start, end)
            got = finalize_one(feature, rows.column(feature.ir_column).slice(i, 1))
            assert_close(feature.op, got, want, [v for _, v in inside])


def test_rollups_equal_the_merge_of_their_children(
    project: Project, first_run: list[TableReport]
) -> None:
    tiles = group(project, "engagement__by_user_id")
    rows = table_rows(project, "engagement__by_user_id")
    start = pc.cast(rows.column("bucket_start"), pa.int64()).to_pylist()
    users = rows.column("user_id").to_pylist()
    grains = rows.column("granularity").to_pylist()
    index = {(u, g, s): i for i, (u, g, s) in enumerate(zip(users, grains, start, strict=True))}
    levels = list(tiles.layout.granularities)  # largest first
    for parent, child in itertools.pairwise(levels):
        parents = [i for i, g in enumerate(grains) if g == parent.name][:150]
        picks, offsets = [], [0]
        for i in parents:
            for b in range(start[i], start[i] + parent.micros, child.micros):
                if (users[i], child.name, b) in index:
                    picks.append(index[(users[i], child.name, b)])
            offsets.append(len(picks))
        for feature in tiles.features:
            op = feature.op
            if op.name == "approx_quantile":
                # Spark's KLL merge compacts at random: a rollup is a valid sketch of its
                # children, not a bit-equal one; every tile is checked against the reference.
                continue
            column = rows.column(feature.ir_column)
            merged = op.merge_segments(op.from_arrow(column.take(picks)), np.asarray(offsets))
            stored = op.finalize(op.from_arrow(column.take(parents))).to_pylist()
            assert op.finalize(merged).to_pylist() == stored, (feature.name, parent, child)


def test_rerun_is_idempotent_with_one_new_snapshot(
    project: Project, first_run: list[TableReport]
) -> None:
    table = load_table(project, "engagement__by_user_id")
    before, snapshots = sorted_rows(table.scan().to_arrow()), len(table.snapshots())
    materialize(project.workspace)
    table = load_table(project, "engagement__by_user_id")
    assert len(table.snapshots()) == snapshots + 1
    assert_same_tiles(sorted_rows(table.scan().to_arrow()), before)


def assert_same_tiles(got: pa.Table, want: pa.Table) -> None:
    """Identical content, except sketch images, which are not canonical: an HLL in sparse mode
    lists coupons in insertion order (Spark's row order), so its estimate must match, not its
    bytes; Spark's KLL compaction draws a random bit, so a sketch of more than k values may
    differ between runs, never in n or beyond its error."""
    assert got.column_names == want.column_names and got.num_rows == want.num_rows
    hll = make_operator("approx_distinct", DataType.STRING)
    for name in got.column_names:
        if name == "distinct_items":
            estimates = [hll.finalize(hll.from_arrow(t.column(name))) for t in (got, want)]
            assert estimates[0].equals(estimates[1])
            continue
        if name != "dwell_q":
            assert got.column(name).equals(want.column(name)), name
            continue
        for a, b in zip(got.column(name).to_pylist(), want.column(name).to_pylist(), strict=True):
            if a == b:
                continue
            x, y = ds.kll_doubles_sketch.deserialize(a), ds.kll_doubles_sketch.deserialize(b)
            assert x.n == y.n
            if x.n <= 200:  # below k nothing was compacted: the same values
                assert sorted(x) == sorted(y)
                continue
            for q in (0.1, 0.5, 0.9):
                rank = x.get_rank(y.get_quantile(q, True), True)
                assert abs(rank - q) <= 2 * 0.0165 + 1 / x.n


def test_a_range_replaces_only_its_buckets(project: Project, first_run: list[TableReport]) -> None:
    before = sorted_rows(table_rows(project, "engagement__by_user_id"))
    day = datetime(2024, 1, 2, 7, tzinfo=UTC)  # widened to whole days: [01-02, 01-03)
    (report, _) = materialize(project.workspace, start=day, end=day.replace(hour=9))
    assert report.range == ("2024-01-02T00:00:00+00:00", "2024-01-03T00:00:00+00:00")
    assert report.carried_over_files > 0
    assert_same_tiles(sorted_rows(table_rows(project, "engagement__by_user_id")), before)


def test_a_crash_before_commit_leaves_the_table_as_it_was(
    project: Project, first_run: list[TableReport], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = project.workspace.project.config
    assert config is not None
    tables = TileTables(config.offline)
    snapshot = load_table(project, "engagement__by_user_id").current_snapshot().snapshot_id

    def crash(*_: object, **__: object) -> int:
        raise RuntimeError("killed between write and commit")

    monkeypatch.setattr(TileTables, "replace", crash)
    with pytest.raises(RuntimeError, match="killed"):
        materialize(project.workspace, ["engagement"])
    monkeypatch.undo()
    table = load_table(project, "engagement__by_user_id")
    assert table.current_snapshot().snapshot_id == snapshot
    runs = Path(table.location().removeprefix("file://")) / "runs"
    orphans = tables.clean_orphans(table)
    assert len(orphans) == 1 and not Path(orphans[0]).exists()
    assert all(p.is_dir() for p in runs.iterdir())


def test_a_changed_spec_is_refused_until_rebuilt(
    project: Project, first_run: list[TableReport]
) -> None:
    spec = project.root / "feature_defs" / "engagement.yaml"
    original = spec.read_text()
    spec.write_text(
        original.replace("{op: max, input: dwell_seconds", "{op: min, input: dwell_seconds")
    )
    try:
        project.reload()
        with pytest.raises(SpecChangedError, match="--rebuild"):
            materialize(project.workspace, ["engagement"])
        reports = materialize(project.workspace, ["engagement"], rebuild=True)
        assert all(r.version == project.workspace.plan.specs[0].hash for r in reports)
    finally:
        spec.write_text(original)
        project.reload()
        materialize(project.workspace, rebuild=True)


def test_changed_key_buckets_are_a_migration(
    project: Project, first_run: list[TableReport]
) -> None:
    """A new key bucket count is refused with what changed and the command that re-tiles; the
    rebuilt tiles sit in the new buckets and are otherwise the same tiles."""
    config = project.root / "robusta.yaml"
    original = config.read_text()
    exact = ["user_id", "granularity", "bucket_start", "events", "n_events", "clicks"]
    exact += ["dwell_min", "dwell_max", "first_item", "last_device", "first_items", "top_channels"]
    before = sorted_rows(table_rows(project, "engagement__by_user_id")).select(exact)
    config.write_text(
        original.replace("  warehouse: warehouse\n", "  warehouse: warehouse\n  key_buckets: 3\n")
    )
    try:
        project.reload()
        with pytest.raises(
            SpecChangedError, match=r"are in 8 key buckets and the spec now asks for 3.*--rebuild"
        ):
            materialize(project.workspace, ["engagement"])
        materialize(project.workspace, ["engagement"], rebuild=True)
        rows = sorted_rows(table_rows(project, "engagement__by_user_id"))
        buckets = rows.column("key_bucket").to_pylist()
        assert buckets == [key_bucket(u, 3) for u in rows.column("user_id").to_pylist()]
        assert set(buckets) == {0, 1, 2}
        assert_same_tiles(rows.select(exact), before)
    finally:
        config.write_text(original)
        project.reload()
        materialize(project.workspace, rebuild=True)


POSTGRES = "postgresql+psycopg2://root@127.0.0.1:5432/test"


def postgres_or_skip() -> None:
    """PostgreSQL on 127.0.0.1:5432: a failure in CI when it is not reachable, else a skip."""
    try:
        import sqlalchemy

        sqlalchemy.create_engine(POSTGRES).connect().close()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL must be running on 127.0.0.1:5432 in CI: {exc}")
        pytest.skip(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}")


def test_postgres_catalog(spark: Any, tmp_path: Path) -> None:
    postgres_or_skip()
    proj = make_project(tmp_path, POSTGRES)
    (report, _) = materialize(proj.workspace)
    assert report.events == proj.events.num_rows
    rows = table_rows(proj, "engagement__by_user_id")
    assert rows.num_rows == sum(report.tiles.values())


def sorted_rows(rows: pa.Table) -> pa.Table:
    keys = [
        c
        for c in ("user_id", "channel_id", "granularity", "bucket_start")
        if c in rows.column_names
    ]
    return rows.sort_by([(k, "ascending") for k in keys])


def test_cli_materialize_and_tiles(project: Project, first_run: list[TableReport]) -> None:
    from click.testing import CliRunner

    from robusta.cli.main import main

    config = str(project.root / "robusta.yaml")
    result = CliRunner().invoke(
        main, ["materialize", "--config", config, "--spec", "engagement", "--json"]
    )
    assert result.exit_code == 0, result.output
    reports = json.loads(result.output)
    assert {r["table"].split(".")[-1] for r in reports} == {
        "engagement__by_user_id",
        "engagement__by_channel_id__user_id",
    }
    user = Counter(project.events.column("user_id").drop_null().to_pylist()).most_common(1)[0][0]
    shown = CliRunner().invoke(
        main,
        [
            "tiles",
            "--config",
            config,
            "--spec",
            "engagement",
            "--key",
            user,
            "--granularity",
            "1d",
            "--limit",
            "2",
        ],
    )
    assert shown.exit_code == 0, shown.output
    assert "engagement__by_user_id: 2 tile(s)" in shown.output
    missing = CliRunner().invoke(
        main, ["tiles", "--config", config, "--spec", "nope", "--key", user]
    )
    assert missing.exit_code == 2 and 'no spec named "nope"' in missing.output
