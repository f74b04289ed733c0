"""Concurrent writers of one tile table: run folders are leased, so a writer's cleanup never
deletes a run another process is still writing, and of two runs racing to commit the same
tiles one commits and the other is refused cleanly (nothing of it committed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robusta.jobs.materialize import materialize
from robusta.store.tiles import LEASE_SECONDS, TileTables, lease_alive
from tests.engine.test_materialize import Project, make_project, sorted_rows

TABLE = "engagement__by_user_id"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path, engine="embedded")


def test_a_leased_run_survives_another_writers_cleanup(project: Project) -> None:
    materialize(project.workspace)
    tables = TileTables(project.workspace.config.offline)
    table = tables.load(TABLE)
    with tables.start_run(table) as run:
        folder = Path(run.folder)
        folder.mkdir(parents=True)
        (folder / "part.parquet").write_bytes(b"being written")
        assert run.lease is not None and lease_alive(tables.storage, run.lease.path)
        other = tables.start_run(table)  # another writer starts: its cleanup runs
        other.end()
        assert folder.is_dir()
    assert not Path(run.lease.path).exists()  # the run ended (here without a commit)
    assert tables.clean_orphans(table) == [run.folder] and not folder.exists()


def test_a_killed_writers_run_is_cleaned_once_its_lease_expires(project: Project) -> None:
    materialize(project.workspace)
    tables = TileTables(project.workspace.config.offline)
    table = tables.load(TABLE)
    run = tables.start_run(table)
    Path(run.folder).mkdir(parents=True)
    assert run.lease is not None
    run.lease._ended.set()  # the writer is killed: nobody renews the lease from now on
    assert tables.clean_orphans(table) == []
    expired = time.time() - LEASE_SECONDS - 1
    os.utime(run.lease.path, (expired, expired))
    assert tables.clean_orphans(table) == [run.folder]
    assert not Path(run.folder).exists() and not Path(run.lease.path).exists()


def test_two_materializes_at_once_lose_nothing_and_double_nothing(project: Project) -> None:
    """Two processes materialize the same spec (two tables) at the same moment: each run's
    folder survives the other's cleanup; of two commits to one table the second is refused
    with what to do (so each process may win one table and lose the other); every table
    then holds each tile once, and a rerun completes what was refused."""
    materialize(project.workspace)
    stored = TileTables(project.workspace.config.offline).load(TABLE)
    assert stored is not None
    want = sorted_rows(stored.scan().to_arrow())
    command = [sys.executable, "-m", "robusta.cli.main", "materialize", "--rebuild"]
    command += ["--config", str(project.root / "robusta.yaml")]
    racers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [racer.communicate(timeout=300)[0] for racer in racers]
    codes = [racer.returncode for racer in racers]
    for code, output in zip(codes, outputs, strict=True):
        assert "Traceback" not in output, output
        if code:
            assert "another writer" in output and "rerun it" in output, output
    if all(codes):  # each won one table: the rerun the message asks for completes the spec
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    table = TileTables(project.workspace.config.offline).load(TABLE)
    assert table is not None
    got = sorted_rows(table.scan().to_arrow())  # every file the snapshot names is there
    assert got.num_rows == want.num_rows
    keys = ["user_id", "granularity", "bucket_start", "events", "n_events", "clicks"]
    assert got.select(keys).equals(want.select(keys))


def test_a_run_committed_after_the_table_was_read_is_not_an_orphan(project: Project) -> None:
    """The race two materializes ran into: a cleanup holding the table as it was before
    another writer committed (and then ended its lease) must not take that writer's run for
    an orphan: the snapshots are read after the leases."""
    materialize(project.workspace)
    tables = TileTables(project.workspace.config.offline)
    stale = tables.load(TABLE)
    assert stale is not None
    materialize(project.workspace, rebuild=True)  # commits a new run, then ends its lease
    assert tables.clean_orphans(stale) == []
    table = tables.load(TABLE)
    assert table is not None
    assert sorted_rows(table.scan().to_arrow()).num_rows > 0  # every file it names is there
