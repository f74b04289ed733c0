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
import pyarrow.parquet as pq
import pytest

from robusta.materialize import materialize
from robusta.testing.compare import bits
from robusta.training import BackfillReport, get_training_frame
from tests.engine.test_backfill import (
    assert_frame_matches_reference,
    backfill_project,
    training_rows,
)
from tests.engine.test_materialize import Project


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


def test_the_command_line_path_never_starts_a_jvm(embedded: Project, tmp_path: Path) -> None:
    """materialize, backfill, upload and lookup on the embedded engine, in one process with a
    Java that does not exist: all succeed and pyspark is never imported."""
    rows = training_rows(embedded.events, 30).select(["USER_ID", "CHANNEL_ID", "ts", "label"])
    pq.write_table(rows, tmp_path / "rows.parquet")
    script = textwrap.dedent(f"""\
        import sys
        from click.testing import CliRunner
        from robusta.cli.main import main
        runner = CliRunner()
        for args in (
            ["materialize"],
            ["backfill", "--input", "{tmp_path / "rows.parquet"}",
             "--output", "{tmp_path / "out.parquet"}"],
            ["upload"],
            ["lookup", "--entity", "USER_ID=u_000001", "--features", "n_events_1h"],
        ):
            result = runner.invoke(main, [*args, "--config", "{embedded.root / "robusta.yaml"}"])
            assert result.exit_code == 0, (args, result.output)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("pyspark", "py4j")))
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
                rows, None, workspace=project.workspace, version_column="served_at",
                materialize_missing=False, engine=reader,
            )
            table = frame if isinstance(frame, pa.Table) else frame.toArrow()
            frames[(writer, reader)] = [bits(v) for v in table.to_pylist()]
    exact = frames[("spark", "spark")]
    assert frames[("spark", "embedded")] == exact  # one table, two joins: the same bits
    assert frames[("embedded", "spark")] == frames[("embedded", "embedded")]
