"""The CLI end to end: demo, error mapping, never a traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from robusta.cli import main as cli
from robusta.demo.datagen import EVENT_SCHEMA
from tests.conftest import SPEC, MakeProject

REPO = Path(__file__).resolve().parents[1]


def demo_project(tmp_path: Path) -> Path:
    shutil.copy(REPO / "robusta.yaml", tmp_path / "robusta.yaml")
    shutil.copytree(REPO / "feature_defs", tmp_path / "feature_defs")
    return tmp_path / "robusta.yaml"


@pytest.mark.spark
def test_demo_generates_data_and_materializes(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = demo_project(tmp_path)
    # The console reads COLUMNS when robusta.cli.main is first imported (by any test).
    monkeypatch.setattr(cli.out, "width", 120)
    result = CliRunner().invoke(cli.main, ["demo", "--days", "1", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "Validated 4 specs" in result.output
    assert "user_engagement" in result.output and "Materialized tiles" in result.output
    files = sorted((tmp_path / ".robusta" / "demo" / "events").glob("*.parquet"))
    assert len(files) >= 2
    assert pq.read_schema(files[0]).names == EVENT_SCHEMA.names
    assert "assembled from" in result.output
    assert "8. Streaming" in result.output
    # each section numbered once, in order; table names whole, never cut
    numbers = re.findall(r"^\s*(\d)\. ", result.output, re.MULTILINE)
    assert numbers == [str(n) for n in range(1, 9)], numbers
    assert "…" not in result.output
    for table in ("user_channel_affinity__by_channel_id__user_id", "user_engagement__by_user_id"):
        assert f"robusta.{table}" in result.output


def test_demo_without_its_source_says_what_to_do(make_project: MakeProject) -> None:
    result = CliRunner().invoke(cli.main, ["demo", "--config", str(make_project())])
    assert result.exit_code == 2
    assert 'needs a source "engagement_events"' in result.output
    assert "Traceback" not in result.output


def test_demo_never_writes_outside_its_folder(tmp_path: Path) -> None:
    config = demo_project(tmp_path)
    text = (
        config.read_text()
        .replace("format: parquet", "format: csv")
        .replace("path: .robusta/demo/events", "path: mydata")
    )
    config.write_text(text)
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "important.csv").write_text("keep me")
    result = CliRunner().invoke(cli.main, ["demo", "--config", str(config)])
    assert result.exit_code == 2 and "nothing was written" in result.output
    assert [p.name for p in (tmp_path / "mydata").iterdir()] == ["important.csv"]


def test_unexpected_errors_are_one_line(
    make_project: MakeProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "load_workspace", broken)
    monkeypatch.delenv("ROBUSTA_DEBUG", raising=False)
    result = CliRunner().invoke(cli.main, ["plan", "--config", str(make_project())])
    assert result.exit_code == 70
    assert "internal error: RuntimeError: disk on fire" in result.output
    assert "Traceback" not in result.output


def test_no_config_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, ["validate"])
    assert result.exit_code == 2
    assert "no robusta.yaml found" in result.output


def test_json_errors_stay_json(tmp_path: Path, make_project: MakeProject) -> None:
    missing = CliRunner().invoke(
        cli.main, ["validate", "--json", "--config", str(tmp_path / "none" / "robusta.yaml")]
    )
    assert missing.exit_code == 2
    assert json.loads(missing.output)["ok"] is False
    config = make_project(purchases=SPEC.replace("op: sum", "op: nope"))
    invalid = CliRunner().invoke(cli.main, ["plan", "--json", "--config", str(config)])
    assert invalid.exit_code == 1
    assert json.loads(invalid.output)["problems"][0]["message"].startswith('unknown op "nope"')


def _plan_output(tmp_path: Path, columns: int) -> str:
    config = demo_project(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": str(columns)}
    run = subprocess.run(
        [sys.executable, "-c", "from robusta.cli.main import main; main()", "plan"],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.parametrize("columns", [80, 150, 200])
def test_tables_fit_the_width_without_cutting_words(tmp_path: Path, columns: int) -> None:
    """COLUMNS is honoured for piped output; no line is wider, no name broken or cut."""
    from robusta.workspace import load_workspace

    output = _plan_output(tmp_path, columns)
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert max(len(line) for line in lines) > columns * 0.7  # the room is used
    assert "…" not in output
    plan = load_workspace(tmp_path / "robusta.yaml").plan
    words = set(re.findall(r"[\w<>:.,-]+", output))
    for spec in plan.specs:
        assert spec.name in words
        for group in spec.groups:
            assert group.layout.table in words, group.layout.table
            for feature in group.features:
                assert feature.name in words
                for o in feature.outputs:
                    assert o.name in words or f"{o.name}," in words, o.name


def test_times_take_utc_offsets_and_z(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import robusta.jobs.materialize
    import robusta.jobs.upload

    seen: list[object] = []

    def fake(_workspace: object, *args: object, **_: object) -> list[object]:
        seen.extend(args)
        return []

    monkeypatch.setattr(robusta.jobs.materialize, "materialize", fake)
    config = demo_project(tmp_path)
    start, end = "2024-01-14 10:00:00+02:00", "2024-01-15T00:00:00Z"
    args = ["materialize", "--start", start, "--end", end, "--config", str(config), "--json"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert seen[1:3] == [
        datetime(2024, 1, 14, 8, tzinfo=UTC),
        datetime(2024, 1, 15, tzinfo=UTC),
    ]
    seen.clear()
    monkeypatch.setattr(robusta.jobs.upload, "upload", fake)
    monkeypatch.setattr(cli, "_report", lambda *_: None)
    for text, expected in (
        ("2024-01-14", datetime(2024, 1, 14, tzinfo=UTC)),
        ("2024-01-14T10:30", datetime(2024, 1, 14, 10, 30, tzinfo=UTC)),
        ("2024-01-14T10:00:00-05:00", datetime(2024, 1, 14, 15, tzinfo=UTC)),
    ):
        result = CliRunner().invoke(cli.main, ["upload", "--at", text, "--config", str(config)])
        assert result.exit_code == 0, result.output
        assert seen.pop() == expected
    bad = CliRunner().invoke(cli.main, ["upload", "--at", "yesterday", "--config", str(config)])
    assert bad.exit_code == 2 and '"yesterday" is not a time' in bad.output
