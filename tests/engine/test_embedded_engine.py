"""The embedded engine end to end (no JVM): materialize and backfill equal the reference;
the whole command-line path never imports pyspark nor starts a Java process; tables written
by one engine are backfilled by the other with the same results."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from robusta.api.training import BackfillReport, get_training_frame, to_arrow
from robusta.jobs.materialize import compact, materialize
from robusta.jobs.upload import upload
from robusta.serving import FeatureClient
from robusta.spec.durations import floor_to, from_micros
from robusta.store.tiles import TileTables, coverage, merge_spans
from robusta.testing.compare import bits
from tests.engine.test_backfill import (
    assert_frame_matches_reference,
    backfill_project,
    training_rows,
    with_join_memory,
)
from tests.engine.test_embedded_tiles import assert_same_tiles
from tests.engine.test_materialize import Project
from tests.engine.test_streaming import tile_rows

DAY = 86_400_000_000
HOUR = 3_600_000_000
GMIN = 300_000_000
TS = pa.timestamp("us", tz="UTC")
ADDED = (
    "  late_clicks: {op: sum, input: is_click, windows: [1h, 1d, lifetime], "
    "group_by_selectors: {user_id: USER_ID}}\n"
)

pytestmark = pytest.mark.long


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    yield backfill_project(tmp_path_factory.mktemp("embedded"), "embedded")


def test_backfill_from_raw_events_equals_the_reference(embedded: Project) -> None:
    """Materialized on the way (missing tiles), joined on Arrow: every feature of every row
    (nulls, pointers, unknown and hot keys, times outside the data) equals the reference."""
    rows = training_rows(embedded.events)
    report = BackfillReport()
    got = get_training_frame(
        rows, None, workspace=embedded.workspace, version_column="served_at", report=report
    )
    assert isinstance(got, pa.Table)  # the embedded engine's frame: Arrow, no Spark
    assert report.materialized == ["engagement"]
    assert got.column("label").to_pylist() == rows.column("label").to_pylist()
    assert_frame_matches_reference(embedded, rows, got)


def tile_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(distinct keys, Arrow bytes) of every tile table the point-in-time join loads from
    now on."""
    from robusta.engine.pit_join import GroupJoin

    loads: list[tuple[int, int]] = []
    real = GroupJoin._tiles

    def recorded(self: GroupJoin, bucket: int, part: int, assembler: Any) -> pa.Table:
        tiles = real(self, bucket, part, assembler)
        keys = tiles.column(self.group.layout.primary).unique()
        loads.append((len(keys), tiles.nbytes))
        return tiles

    monkeypatch.setattr(GroupJoin, "_tiles", recorded)
    return loads


def test_a_join_memory_budget_splits_buckets_and_keeps_every_value(
    embedded: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget far below a key bucket's tiles splits every bucket by key hash: a task reads
    the tiles of a few of the bucket's keys at a time (a single key's tiles are the floor),
    only the slices its rows need, and every feature of every row is bit-identical."""
    rows = training_rows(embedded.events)
    loads = tile_loads(monkeypatch)
    whole = get_training_frame(rows, None, workspace=embedded.workspace, version_column="served_at")
    bucket_loads = list(loads)
    loads.clear()
    steps: list[str] = []
    split = get_training_frame(
        rows,
        None,
        workspace=with_join_memory(embedded.workspace, 4 << 10),
        version_column="served_at",
        step=steps.append,
    )
    assert isinstance(whole, pa.Table) and isinstance(split, pa.Table)
    assert any("split in" in s for s in steps), steps
    assert max(k for k, _ in loads) * 3 <= max(k for k, _ in bucket_loads)
    assert sum(b for _, b in loads) < sum(b for _, b in bucket_loads)
    for name in whole.column_names:
        got = [bits(v) for v in split.column(name).to_pylist()]
        assert got == [bits(v) for v in whole.column(name).to_pylist()], name
    assert_frame_matches_reference(embedded, rows, split)


def test_the_command_line_path_never_starts_a_jvm(embedded: Project, tmp_path: Path) -> None:
    """Every command that computes, on the embedded engine, in one process with a Java that
    does not exist and pyspark made unimportable: all succeed, so none reaches for Spark."""
    rows = training_rows(embedded.events, 30).select(["USER_ID", "CHANNEL_ID", "ts", "label"])
    pq.write_table(rows, tmp_path / "rows.parquet")
    script = textwrap.dedent(f"""\
        import sys
        sys.modules["pyspark"] = sys.modules["py4j"] = None  # any import of them fails
        from click.testing import CliRunner
        from robusta.cli.main import main
        runner = CliRunner()
        for args in (
            ["materialize"],
            ["backfill", "--input", "{tmp_path / "rows.parquet"}",
             "--output", "{tmp_path / "out.parquet"}"],
            ["upload"],
            ["lookup", "--entity", "USER_ID=u_000001", "--features", "n_events_1h"],
            ["compact"],
            ["stream", "--available-now"],
            ["stream", "--status"],
        ):
            result = runner.invoke(main, [*args, "--config", "{embedded.root / "robusta.yaml"}"])
            assert result.exit_code == 0, (args, result.output)
        loaded = [m for m, module in sys.modules.items() if module is not None]
        print(sorted(m for m in loaded if m.split(".")[0] in ("pyspark", "py4j")))
        """)
    env = {**os.environ, "JAVA_HOME": "/nonexistent-java"}
    command = [sys.executable, "-c", script]
    done = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.num_rows == rows.num_rows and "n_events_1h" in out.column_names


@pytest.mark.spark
def test_tables_cross_engines(spark: Any, tmp_path: Path) -> None:
    """Tiles written by each engine, backfilled by both: identical frames, bit for bit (the
    two engines' tiles themselves are compared in test_embedded_tiles)."""
    rows = None
    frames: dict[tuple[str, str], list[Any]] = {}
    for writer in ("embedded", "spark"):
        project = backfill_project(tmp_path / writer, writer)
        rows = rows if rows is not None else training_rows(project.events)
        materialize(project.workspace)
        for reader in ("embedded", "spark"):
            frame = get_training_frame(
                rows,
                None,
                workspace=project.workspace,
                version_column="served_at",
                materialize_missing=False,
                engine=reader,
            )
            table = frame if isinstance(frame, pa.Table) else frame.toArrow()
            frames[(writer, reader)] = [bits(v) for v in table.to_pylist()]
    exact = frames[("spark", "spark")]
    assert frames[("spark", "embedded")] == exact  # one table, two joins: the same bits
    assert frames[("embedded", "spark")] == frames[("embedded", "embedded")]


@pytest.mark.spark
def test_one_table_written_by_both_engines(spark: Any, tmp_path: Path) -> None:
    """The embedded engine writes the table, Spark rewrites a day of it and adds a feature's
    column (merge on read), the embedded engine compacts it: its tiles are those the embedded
    engine writes alone (the tile contract). Uploaded, its lookups are what backfills on
    both engines compute at the lookups' pointers, bit for bit (online = offline)."""
    mixed = backfill_project(tmp_path / "mixed", "embedded")
    alone = backfill_project(tmp_path / "alone", "embedded")
    times = pc.cast(mixed.events.column("event_ts"), pa.int64())
    first, last = int(pc.min(times).as_py()), int(pc.max(times).as_py())
    day = floor_to(first, DAY) + DAY
    materialize(mixed.workspace)  # all of it, then Spark redoes the second day over it
    materialize(mixed.workspace, start=from_micros(day), end=from_micros(day + DAY), engine="spark")
    for project in (mixed, alone):  # a feature added later: its column is added on read
        spec = project.root / "feature_defs" / "engagement.yaml"
        spec.write_text(spec.read_text() + ADDED)
        project.reload()
    materialize(mixed.workspace, engine="spark")
    compacted = compact(mixed.workspace, engine="embedded")
    assert any(c.files_after < c.files_before for c in compacted)
    materialize(alone.workspace)
    (plan,) = mixed.workspace.plan.specs
    for group in plan.groups:
        assert_same_tiles(
            tile_rows(mixed.workspace, group.layout.table),
            tile_rows(alone.workspace, group.layout.table),
            group,
        )

    upload(mixed.workspace, at=from_micros(last + 1))
    pairs = sorted(
        {
            (u, c)
            for u, c in zip(
                mixed.events.column("user_id").to_pylist(),
                mixed.events.column("channel_id").to_pylist(),
                strict=True,
            )
            if u and c
        }
    )[::7][:30]
    names = [o.name for o in plan.outputs]
    entities = [{"USER_ID": u, "CHANNEL_ID": c} for u, c in pairs]
    with FeatureClient.from_config(mixed.root / "robusta.yaml") as client:
        vectors = client.get_features(entities, names, from_micros(last))
    rows = pa.table(
        {
            "USER_ID": pa.array([u for u, _ in pairs], pa.string()),
            "CHANNEL_ID": pa.array([c for _, c in pairs], pa.string()),
            "ts": pa.array([last] * len(pairs), pa.int64()).cast(TS),
            "served_at": pa.array([v.pointer for v in vectors], TS),
        }
    )
    for engine in ("embedded", "spark"):
        frame = get_training_frame(
            rows,
            names,
            workspace=mixed.workspace,
            version_column="served_at",
            materialize_missing=False,
            engine=engine,
        )
        for vector, row in zip(vectors, to_arrow(frame).to_pylist(), strict=True):
            for name in names:
                assert bits(vector.values[name]) == bits(row[name]), (engine, name, vector.entity)


def test_day_by_day_runs_cover_the_days_whole(tmp_path: Path) -> None:
    """A range run before the latest event is complete up to its end: materializing day by
    day leaves no gap in the coverage at the days' ends (only the last run's coverage ends
    at the data)."""
    project = backfill_project(tmp_path, "embedded")
    times = pc.cast(project.events.column("event_ts"), pa.int64())
    first, last = int(pc.min(times).as_py()), int(pc.max(times).as_py())
    day = floor_to(first, DAY)
    for start in (day, day + DAY, day + 2 * DAY):
        materialize(project.workspace, start=from_micros(start), end=from_micros(start + DAY))
    config = project.workspace.project.config
    assert config is not None
    table = TileTables(config.offline).load("engagement__by_user_id")
    assert table is not None
    assert merge_spans(coverage(table)) == [(day, floor_to(last - HOUR, GMIN))]
