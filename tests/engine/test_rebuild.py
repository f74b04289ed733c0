"""`materialize --rebuild` never loses stored tiles: the new tiles are written beside the old
and swapped in with one commit (schema, labels, coverage and files together). A failure,
SIGINT or SIGKILL at any point leaves the previous table readable and complete."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pyarrow as pa
import pytest

from robusta.jobs.materialize import materialize
from robusta.store.tiles import VERSION_PROPERTY, TileTables, coverage
from tests.engine.test_materialize import Project, make_project

pytestmark = pytest.mark.long

EXACT = {"granularity", "bucket_start", "events", "n_events", "clicks", "dwell_min", "first_item"}
EXACT |= {"last_device", "first_items", "last_items", "top_channels"}
TABLE = "engagement__by_user_id"
# Where each engine writes a run's tile files (a crash there is a Ctrl-C while writing).
WRITER = {
    "spark": "robusta.engine.spark.job.write_tiles",
    "embedded": "robusta.engine.embedded.job.write_tile_files",
}
# When a kill may land: any time from process start to past the commit.
KILL_WINDOW = {"spark": (3.0, 14.0), "embedded": (0.5, 3.0)}
# max -> avg: the IR column dwell_max changes type (a value -> (sum, count)) under its name.
OLD, NEW = "dwell_max: {op: max, input: dwell_seconds", "dwell_max: {op: avg, input: dwell_seconds"


def _state(project: Project) -> tuple[str | None, int | None, list[Any], pa.Table]:
    """Everything a reader sees: version, snapshot, coverage and every tile."""
    config = project.workspace.project.config
    assert config is not None
    table = TileTables(config.offline).load(TABLE)
    assert table is not None
    snapshot = table.current_snapshot()
    tiles = table.scan().to_arrow()
    order = [(c, "ascending") for c in ("user_id", "granularity", "bucket_start")]
    return (
        table.properties.get(VERSION_PROPERTY),
        None if snapshot is None else snapshot.snapshot_id,
        coverage(table),
        tiles.sort_by(order),
    )


@pytest.fixture(scope="module")
def built(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = make_project(tmp_path_factory.mktemp("rebuild"), engine=engine)
    materialize(project.workspace, ["engagement"])
    return project


def _change_spec(project: Project, old: str, new: str) -> None:
    spec = project.root / "feature_defs" / "engagement.yaml"
    spec.write_text(spec.read_text().replace(old, new))
    project.reload()


def test_a_failed_rebuild_leaves_the_table_as_it_was(
    engine: str, built: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _state(built)
    _change_spec(built, OLD, NEW)
    try:
        for target in ("write_tiles", "TileTables.rebuild"):

            def crash(*_: object, **__: object) -> None:
                raise KeyboardInterrupt  # Ctrl-C while writing, or just before the commit

            if target == "write_tiles":
                monkeypatch.setattr(WRITER[engine], crash)
            else:
                monkeypatch.setattr(TileTables, "rebuild", crash)
            with pytest.raises(KeyboardInterrupt):
                materialize(built.workspace, ["engagement"], rebuild=True)
            monkeypatch.undo()
            after = _state(built)
            assert after[:3] == before[:3], target
            assert after[3].equals(before[3]), target
    finally:
        _change_spec(built, NEW, OLD)


def test_a_rebuild_swaps_layout_and_tiles_in_one_commit(built: Project) -> None:
    version, snapshot, spans, tiles = _state(built)
    assert pa.types.is_floating(tiles.schema.field("dwell_max").type)
    _change_spec(built, OLD, NEW)
    try:
        (report, _) = materialize(built.workspace, ["engagement"], rebuild=True)
        new_version, new_snapshot, new_spans, new_tiles = _state(built)
        assert new_version == report.version != version
        assert new_snapshot == report.snapshot_id != snapshot
        assert new_spans == spans  # the same events: the same coverage
        assert pa.types.is_struct(new_tiles.schema.field("dwell_max").type)  # avg's (sum, n)
        assert new_tiles.num_rows == tiles.num_rows
        # The exact IRs are the same tiles (float sums and KLL sketches are not bit-stable
        # across Spark reruns: docs/spec.md).
        keep = [c for c in tiles.column_names if c in EXACT or c.startswith(("user_id", "key"))]
        assert new_tiles.select(keep).equals(tiles.select(keep))
        config = built.workspace.project.config
        assert config is not None
        table = TileTables(config.offline).load(TABLE)
        assert table is not None
        history = table.snapshots()
        assert history[-2].snapshot_id == snapshot  # one commit after the old state
        old = table.scan(snapshot_id=snapshot).to_arrow()  # time travel still reads it
        assert old.num_rows == tiles.num_rows
    finally:
        _change_spec(built, NEW, OLD)
        materialize(built.workspace, ["engagement"], rebuild=True)


def test_sigint_and_sigkill_during_a_rebuild_leave_the_table_complete(
    engine: str, built: Project
) -> None:
    """Kill `robusta materialize --rebuild` at random points: the table is the old one,
    or, once the commit landed, the new one; never empty, never a mix."""
    before = _state(built)
    _change_spec(built, OLD, NEW)
    rng = random.Random(int(os.environ.get("ROBUSTA_TEST_SEED", "17")))
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    command = [sys.executable, "-m", "robusta.cli.main", "materialize", "--rebuild"]
    try:
        for sig in (signal.SIGINT, signal.SIGKILL, signal.SIGINT):
            process = subprocess.Popen(
                command,
                cwd=built.root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            time.sleep(rng.uniform(*KILL_WINDOW[engine]))
            os.killpg(process.pid, sig)
            _, err = process.communicate(timeout=120)
            after = _state(built)
            # A zero exit after SIGKILL: the run finished before the signal, so it committed.
            assert process.returncode != 0 or sig == signal.SIGINT or after[0] != before[0]
            if after[0] == before[0]:  # not committed: exactly as before
                assert after[1:3] == before[1:3], sig
                assert after[3].equals(before[3]), sig
            else:  # committed: complete and of the new version
                assert after[2] == before[2] and after[3].num_rows == before[3].num_rows
                return
            assert b"Traceback" not in err, err.decode()[-2000:]
    finally:
        _change_spec(built, NEW, OLD)
        materialize(built.workspace, ["engagement"], rebuild=True)
