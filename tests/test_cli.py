"""The CLI end to end: demo, error mapping, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from robusta.cli import main as cli
from robusta.datagen import EVENT_SCHEMA
from tests.conftest import SPEC, MakeProject

REPO = Path(__file__).resolve().parents[1]


def demo_project(tmp_path: Path) -> Path:
    shutil.copy(REPO / "robusta.yaml", tmp_path / "robusta.yaml")
    shutil.copytree(REPO / "feature_defs", tmp_path / "feature_defs")
    return tmp_path / "robusta.yaml"


def test_demo_generates_data_and_materializes(spark: Any, tmp_path: Path) -> None:
    config = demo_project(tmp_path)
    result = CliRunner().invoke(cli.main, ["demo", "--days", "1", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "Validated 4 specs" in result.output
    assert "user_engagement" in result.output and "Materialized tiles" in result.output
    files = sorted((tmp_path / ".robusta" / "demo" / "events").glob("*.parquet"))
    assert len(files) >= 2
    assert pq.read_schema(files[0]).names == EVENT_SCHEMA.names
    assert "assembled from" in result.output
    assert "5. Streaming" in result.output


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
