"""The ``streaming`` section of robusta.yaml: defaults, per-spec watermarks, overrides, and
located messages for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from robusta.cli.main import main
from robusta.spec.durations import Duration
from robusta.workspace import load_workspace
from tests.conftest import CONFIG, MakeProject


def test_defaults(make_project: MakeProject) -> None:
    config = load_workspace(make_project()).require_valid().project.config
    assert config is not None
    streaming = config.streaming
    assert streaming.checkpoint == config.root / ".robusta" / "checkpoints"
    assert streaming.trigger == Duration.parse("1s")
    assert streaming.watermark_of("purchases") == Duration.parse("10m")
    assert streaming.sources == {}


def test_per_spec_watermarks_and_source_overrides(make_project: MakeProject) -> None:
    text = CONFIG + (
        "streaming:\n"
        "  checkpoint: ckpt\n"
        "  trigger: 5s\n"
        "  watermark: {default: 2m, purchases: 1h}\n"
        "  sources:\n"
        "    events: {path: landing, options: {maxFilesPerTrigger: 10}}\n"
    )
    config = load_workspace(make_project(config=text)).require_valid().project.config
    assert config is not None
    streaming = config.streaming
    assert streaming.checkpoint == config.root / "ckpt"
    assert streaming.trigger == Duration.parse("5s")
    assert streaming.watermark_of("purchases") == Duration.parse("1h")
    assert streaming.watermark_of("other") == Duration.parse("2m")
    events = streaming.sources["events"]
    assert (events.format, events.path) == ("csv", config.root / "landing")
    assert events.options == {"header": "true", "maxFilesPerTrigger": "10"}  # csv's kept


CASES = [
    ("unknown-key", "streaming: {trigerr: 1s}\n", "12:13", 'unknown key "trigerr"'),
    ("bad-trigger", "streaming: {trigger: soon}\n", "12:22", "trigger:"),
    ("bad-watermark", "streaming: {watermark: {purchases: 0m}}\n", "12:36", "longer than zero"),
    (
        "unknown-source",
        "streaming: {sources: {evnts: {path: x}}}\n",
        "12:23",
        'streaming source "evnts" is not a source of robusta.yaml (did you mean "events"?)',
    ),
    (
        "iceberg-cannot-stream",
        "streaming: {sources: {events: {format: iceberg}}}\n",
        "12:40",
        'format "iceberg" cannot be streamed',
    ),
    (
        "kafka-needs-topic",
        "streaming: {sources: {events: {format: kafka}}}\n",
        "12:23",
        'needs options "kafka.bootstrap.servers" and "subscribe"',
    ),
]


@pytest.mark.parametrize(("case", "extra", "where", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_streaming_config_is_located(
    make_project: MakeProject, case: str, extra: str, where: str, message: str
) -> None:
    result = CliRunner().invoke(
        main, ["validate", "--config", str(make_project(config=CONFIG + extra))]
    )
    assert result.exit_code == 1, result.output
    assert any(
        f"robusta.yaml:{where}:" in line and message in line for line in result.output.splitlines()
    ), (case, result.output)


def test_status_before_any_stream_needs_no_spark(make_project: MakeProject) -> None:
    result = CliRunner().invoke(
        main, ["stream", "--status", "--json", "--config", str(make_project())]
    )
    assert result.exit_code == 0, result.output
    assert '"spec": "purchases"' in result.output and '"batch": null' in result.output


def test_a_bad_trigger_is_a_usage_error(make_project: MakeProject, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["stream", "--trigger", "fast", "--config", str(make_project())]
    )
    assert result.exit_code == 2 and "--trigger" in result.output
    assert "Traceback" not in result.output
