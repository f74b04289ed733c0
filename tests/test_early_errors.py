"""Obvious mistakes are reported before any engine starts: one clear line within about 2 s,
a non-zero exit, and no JVM ever launched (the commands run with a Java that does not exist,
and their child processes are watched). The bound is on the command's CPU time, which is
what it costs; its wall time also depends on what else the machine runs."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import SPEC, MakeProject

# "Within about 2 s" of CPU when the bound was set (1.2-1.9 s measured). On 2026-12-07 the
# same commands of the then-previous commit took 2.5-3.3 s of CPU on a quiet machine (this
# one's cores are slower now: imports alone, pyiceberg with sqlalchemy and pandas through
# pyarrow.dataset, take 2 s), so the bound leaves that headroom; no JVM is the real check.
BOUND_SECONDS = 3.5


def _children(pid: int) -> list[str]:
    """Command lines of the live descendants of ``pid``."""
    found, parents = [], {pid}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid in parents:
            found.append(cmdline)
    return found


def run_early(root: Path, *args: str) -> tuple[int, str, float, list[str]]:
    """Run the CLI; returns exit code, stderr + stdout, seconds, and any java children."""
    env = {**os.environ, "JAVA_HOME": "/nonexistent-java", "ROBUSTA_DEBUG": ""}
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "robusta.cli.main", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    javas: list[str] = []
    while process.poll() is None and time.perf_counter() - started < 60:
        javas += [c for c in _children(process.pid) if "java" in c.split(" ")[0]]
        time.sleep(0.02)
    out, err = process.communicate(timeout=60)
    wall = time.perf_counter() - started
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = done.ru_utime - used.ru_utime + done.ru_stime - used.ru_stime
    return process.returncode, f"{(err + out).decode()}(wall {wall:.2f} s)", cpu, javas


@pytest.fixture
def project(make_project: MakeProject) -> Path:
    config = make_project()
    root = config.parent
    (root / "data").mkdir()
    (root / "data" / "events.csv").write_text(
        "user_id,item_id,amount,qty,ts\nu1,i1,2.5,1,2024-01-01 10:00:00\n"
    )
    return root


def _assert_early(result: tuple[int, str, float, list[str]], message: str) -> None:
    code, text, seconds, javas = result
    assert code != 0, text
    assert message in text, text
    assert "Traceback" not in text, text
    assert len(text.strip().splitlines()) <= 2, text
    assert not javas, javas
    assert seconds < BOUND_SECONDS, f"{seconds:.2f} s of CPU: {text}"


def test_a_missing_input_file(project: Path) -> None:
    result = run_early(project, "backfill", "--input", "nope.parquet", "--output", "out.parquet")
    _assert_early(result, "no training rows at nope.parquet")


def test_a_missing_entity_column(project: Path) -> None:
    rows = pa.table({"user": ["u1"], "ts": pa.array([0], pa.timestamp("us", tz="UTC"))})
    pq.write_table(rows, project / "rows.parquet")
    result = run_early(project, "backfill", "--input", "rows.parquet", "--output", "o.parquet")
    _assert_early(result, 'no USER_ID entity column "USER_ID"')
    assert "--entity-column USER_ID=COLUMN" in result[1]


def test_a_missing_timestamp_column_from_pandas_csv(project: Path) -> None:
    (project / "rows.csv").write_text("USER_ID,when\nu1,2024-01-01T00:00:00Z\n")
    result = run_early(project, "backfill", "--input", "rows.csv", "--output", "o.parquet")
    _assert_early(result, 'no timestamp column "ts"')


def test_a_stale_spec_version(project: Path) -> None:
    from robusta.store.tiles import TileTables
    from robusta.workspace import load_workspace

    workspace = load_workspace(project / "robusta.yaml").require_valid()
    assert workspace.project.config is not None
    (group,) = workspace.plan.specs[0].groups
    TileTables(workspace.project.config.offline).ensure(group, workspace.plan.specs[0].hash)
    spec = project / "feature_defs" / "purchases.yaml"
    spec.write_text(SPEC.replace("op: sum", "op: max"))  # the stored column is computed anew
    rows = pa.table({"USER_ID": ["u1"], "ts": pa.array([0], pa.timestamp("ns", tz="UTC"))})
    pq.write_table(rows, project / "rows.parquet")
    result = run_early(project, "backfill", "--input", "rows.parquet", "--output", "o.parquet")
    _assert_early(result, "robusta materialize --spec purchases --rebuild")


def test_consistency_with_logging_off(project: Path) -> None:
    result = run_early(project, "consistency")
    _assert_early(result, "online.log is off in robusta.yaml")


def test_a_window_function_is_refused_by_the_stream(make_project: MakeProject) -> None:
    from tests.conftest import CONFIG

    query = "SELECT user_id, amount, ts, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts) AS n"
    spec = SPEC.replace("SELECT user_id, item_id, amount, qty, ts", query)
    config = make_project(CONFIG + "streaming: {checkpoint: checkpoints}\n", purchases=spec)
    (config.parent / "data").mkdir()
    result = run_early(config.parent, "stream", "--available-now")
    _assert_early(result, "is a window function, which a stream cannot run")
    assert "error: feature_defs/purchases.yaml:4:" in result[1]  # the query's first line
