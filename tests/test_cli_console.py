"""The console of Spark commands, run as real processes: Spark's output goes to a log file, and
SIGINT / SIGTERM to the process group end a command with one line, never a traceback."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from robusta.demo.datagen import GeneratorConfig, generate_events, write_events
from robusta.demo.demo import STREAM_SPEC

REPO = Path(__file__).resolve().parents[1]
ROBUSTA = [sys.executable, "-c", "from robusta.cli.main import main; main()"]
NOISE = (
    "Using incubator modules",
    "setLogLevel",
    "Setting default log level",
    "restricted mode",
    "Traceback",
    "py4j",
    "at org.apache",
    "please report",
)

pytestmark = [pytest.mark.spark, pytest.mark.long]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _project(tmp_path_factory.mktemp("console"))


def _project(root: Path) -> Path:
    """The demo project with a few generated events (no `robusta demo` run)."""
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java 17+ found")
    # On the Spark engine: what these tests check is Spark's console output and its stop.
    config = (REPO / "robusta.yaml").read_text()
    (root / "robusta.yaml").write_text(f"{config}engine: spark\n")
    shutil.copytree(REPO / "feature_defs", root / "feature_defs")
    events = generate_events(
        GeneratorConfig(seed=3, days=2, events_per_day=2000, users=50, items=80, channels=5)
    )
    write_events(events, root / ".robusta" / "demo" / "events", "parquet")
    return root


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    env.pop("ROBUSTA_DEBUG", None)
    return env


class Running:
    """A robusta command in its own process group, its stderr collected line by line."""

    def __init__(self, root: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*ROBUSTA, *args],
            cwd=root,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, f"ended early: {self.lines}"
            assert time.monotonic() < deadline, f"no {text!r} in {self.lines}"
            time.sleep(0.2)

    def signal_group(self, signum: int) -> tuple[int, str, list[str]]:
        os.killpg(self.proc.pid, signum)
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read()
        code = self.proc.wait(timeout=120)
        self._reader.join(timeout=10)
        return code, stdout, self.lines


def _robusta(root: Path, *args: str, columns: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ROBUSTA, *args],
        cwd=root,
        env={**_env(), "COLUMNS": str(columns)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _spark_log(lines: list[str]) -> Path:
    [line] = [line for line in lines if line.startswith("Spark log: ")]
    return Path(line.removeprefix("Spark log: "))


def test_spark_output_goes_to_the_log_file(project: Path) -> None:
    run = _robusta(project, "materialize", "--spec", "user_engagement", "--verbose")
    assert run.returncode == 0, run.stderr
    console = run.stdout + run.stderr
    for noise in NOISE:
        assert noise not in console, console
    assert "user_engagement" in run.stdout
    log = _spark_log(run.stderr.splitlines())
    assert log.parent == project / ".robusta" / "logs"
    assert "Using incubator modules" in log.read_text()


@pytest.mark.parametrize("after", [1.0, 6.0], ids=["starting", "computing"])
def test_sigint_to_the_group_stops_materialize_in_one_line(tmp_path: Path, after: float) -> None:
    running = Running(_project(tmp_path), "materialize", "--verbose")
    running.wait_for("Spark log: ")  # the JVM is up; the SparkContext starts, then the job
    time.sleep(after)
    code, stdout, lines = running.signal_group(signal.SIGINT)
    assert code == 130, lines
    assert lines[-1] == "robusta: stopped by SIGINT", lines
    assert [line for line in lines if not line.startswith("Spark log: ")] == [lines[-1]]
    for noise in NOISE:
        assert noise not in stdout + "\n".join(lines)


def test_sigterm_to_the_group_stops_a_stream_in_one_line(tmp_path: Path) -> None:
    root = _project(tmp_path)
    (root / "feature_defs" / "user_activity.yaml").write_text(STREAM_SPEC)  # streamable
    running = Running(root, "stream", "--spec", "user_activity", "--trigger", "1s", "-v")
    running.wait_for("user_activity: batch")  # a progress report: the stream runs
    code, stdout, lines = running.signal_group(signal.SIGTERM)
    assert code == 143, lines
    assert lines[-1] == "robusta: stopped by SIGTERM after the current micro-batch", lines
    for noise in NOISE:
        assert noise not in stdout + "\n".join(lines)


def test_tiles_show_readable_values(project: Path) -> None:
    """After the materialize above: ISO times, lists and structs, no Python reprs."""
    args = ("tiles", "--spec", "user_engagement", "--key", "u_000000", "--limit", "3")
    run = _robusta(project, *args, columns=200)
    assert run.returncode == 0, run.stderr
    for python in ("datetime.datetime(", "Decimal(", "{'", "b'", "None"):
        assert python not in run.stdout, run.stdout
    assert re.search(r"bucket_start\s+│ 2024-01-0\dT\d\d:\d\d:00Z", run.stdout), run.stdout
    assert re.search(r"IR \[\{ts: 2024-01-0\dT[\d:.]+Z, value: i_\d+\}", run.stdout), run.stdout
    assert "<sketch " in run.stdout
    assert all(len(line) <= 200 for line in run.stdout.splitlines())


def test_lookup_without_features_skips_specs_not_uploaded(project: Path) -> None:
    """user_engagement uploaded, channel_stats (also keyed by the entities given) not."""
    upload = _robusta(project, "upload", "--spec", "user_engagement", "--at", "2024-01-03T00:00Z")
    assert upload.returncode == 0, upload.stderr
    entity = ["--entity", "USER_ID=u_000000", "--entity", "CHANNEL_ID=ch_000"]
    lookup = _robusta(project, "lookup", *entity, "--at", "2024-01-02T12:00:00+01:00")
    assert lookup.returncode == 0, lookup.stderr
    assert "user_events_1h" in lookup.stdout
    skipped = [line for line in lookup.stderr.splitlines() if line.startswith("skipped")]
    assert [line.split(":")[0] for line in skipped] == [
        "skipped channel_stats",
        "skipped user_channel_affinity",
    ], lookup.stderr
    assert "robusta upload --spec channel_stats" in lookup.stderr
    named = _robusta(project, "lookup", *entity, "--features", "channel_top_items_1d")
    assert named.returncode == 2  # asked by name: not uploaded is an error
    assert "robusta upload --spec channel_stats" in named.stderr
    missing = _robusta(project, "lookup", "--entity", "USER_ID=u_000000", "--features",
                       "user_channel_views_1d")
    assert missing.returncode == 2
    assert "need entity CHANNEL_ID; give --entity CHANNEL_ID=..." in missing.stderr
    assert "{" not in missing.stderr
