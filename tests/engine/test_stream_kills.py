"""`robusta stream` killed with SIGKILL at every phase of a batch and at a random time, on
both engines: nothing lost, nothing doubled (docs/streaming.md, "Guarantees"). A file of its
own: its Spark case runs for minutes (six JVMs), and test files are what the test workers
share out. The Spark case is ``heavy`` (`make test-heavy`): `make test` runs the embedded one.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from robusta.demo.datagen import GeneratorConfig, generate_events
from robusta.jobs.stream import FAULT_ENV, stream_status
from robusta.spec.durations import floor_to, from_micros
from robusta.workspace import Workspace
from tests.conftest import started_engine
from tests.engine.test_streaming import (
    GMIN,
    MIN,
    SMALL_SPEC,
    assert_iceberg_tiles_equal_reference,
    assert_lookups_equal_reference,
    by_time,
    land,
    streaming_project,
)

pytestmark = pytest.mark.long


@pytest.fixture(
    scope="module",
    params=["embedded", pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.heavy])],
)
def engine(request: pytest.FixtureRequest) -> str:
    return started_engine(request)


KILL_WINDOW = {"spark": (6.0, 14.0), "embedded": (0.8, 3.0)}  # seconds after start
KILL_CONFIG = """\
  sources:
    events: {options: {maxFilesPerTrigger: 1}}
spark: {master: "local[2]", conf: {spark.sql.shuffle.partitions: "2"}}
"""


def run_stream(root: Path, fault: str | None = None, kill_after: float | None = None) -> int:
    """`robusta stream --available-now` in a subprocess; SIGKILL at ``fault`` (phase:batch,
    by the job's hook) or after ``kill_after`` seconds (its whole process group, JVM too)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    command = [sys.executable, "-m", "robusta.cli.main", "stream", "--available-now", "--json"]
    process = subprocess.Popen(
        [*command, "--config", str(root / "robusta.yaml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        code = process.wait(timeout=kill_after if kill_after is not None else 120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        code = process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # a JVM outliving its killed driver
    return code


def stop_when_caught_up(root: Path, workspace: Workspace, rows: int, pointer: int) -> int:
    """`robusta stream` (continuous) until its checkpoint counts ``rows``, its pointer is at
    ``pointer`` (on Spark buckets close in the micro-batch after the one whose events passed
    them) and it has reported progress (so it runs its loop, not still starting); then
    SIGTERM."""
    at = from_micros(pointer).strftime("%Y-%m-%dT%H:%M:%SZ")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop(FAULT_ENV, None)
    command = [sys.executable, "-m", "robusta.cli.main", "stream", "--trigger", "1s"]
    log = root / "stream.err"
    with log.open("wb") as errors:
        process = subprocess.Popen(
            [*command, "--config", str(root / "robusta.yaml")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            stream_status(workspace)[0].rows < rows
            or (stream_status(workspace)[0].pointer or "") < at
            or b": batch " not in log.read_bytes()
        ):
            assert process.poll() is None, "the stream stopped by itself"
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_sigkill_at_any_point_loses_and_doubles_nothing(engine: str, tmp_path: Path) -> None:
    workspace = streaming_project(tmp_path, SMALL_SPEC, extra=KILL_CONFIG, engine=engine)
    events = generate_events(
        GeneratorConfig(seed=13, days=2, events_per_day=700, users=30, items=60, channels=4)
    )
    parts = by_time(events, 6)
    rng = random.Random(7)
    # With one file per micro-batch, batch i holds part i. Each run lands more parts and is
    # killed inside the job after a phase, at a random new batch: after the tiles were
    # written but not yet published (`tiles`), after the state version was published
    # (`computed`), after the Iceberg commit (`offline`), after the online write but before
    # Spark committed the batch (`online`); then one run is killed at a random time (JVM
    # start included). Every restart replays the batch the kill interrupted.
    phases = ["tiles", "computed", "offline", "online"]
    rng.shuffle(phases)
    landed, fresh = 0, 0  # parts landed; the first batch never computed
    for run, phase in enumerate([*phases, None]):
        for i in range(landed, 2 if run == 0 else landed + 1):
            land(tmp_path / "data", parts[i], f"part-{i}", order=i)
        landed = 2 if run == 0 else landed + 1
        if phase is None:
            # A random time in the run (JVM start included on Spark).
            run_stream(tmp_path, None, rng.uniform(*KILL_WINDOW[engine]))
            continue
        batch = rng.randrange(fresh, landed)
        code = run_stream(tmp_path, f"{phase}:{batch}")
        assert code == -signal.SIGKILL, f"the fault {phase}:{batch} was not reached"
        fresh = batch if phase == "tiles" else batch + 1
    # The final restart runs until it has caught up, then stops gracefully on SIGTERM.
    last = int(pc.max(pc.cast(events.column("event_ts"), pa.int64())).as_py())
    caught_up = stop_when_caught_up(
        tmp_path, workspace, events.num_rows, floor_to(last - 10 * MIN, GMIN)
    )
    assert caught_up == 128 + signal.SIGTERM
    (status,) = stream_status(workspace)
    assert status.rows == events.num_rows  # each row counted once in the job's own totals
    (plan,) = workspace.plan.specs
    (group,) = plan.groups
    assert_iceberg_tiles_equal_reference(workspace, events, group)
    assert_lookups_equal_reference(workspace, tmp_path, events, group)
