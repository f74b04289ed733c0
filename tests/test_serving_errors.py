"""Serving commands given nothing to serve: one clear message naming the command to run,
a non-zero exit and no traceback (no Spark needed)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from robusta.cli import main as cli
from robusta.errors import UnknownFeatureError
from robusta.jobs.upload import UploadError, upload
from robusta.serving import FeatureClient
from robusta.store.online import OnlineStateError
from robusta.workspace import load_workspace
from tests.conftest import MakeProject


def test_upload_before_materialize_names_the_command(make_project: MakeProject) -> None:
    config = make_project()
    workspace = load_workspace(config).require_valid()
    with pytest.raises(UploadError, match=r"run `robusta materialize --spec purchases`"):
        upload(workspace)
    with pytest.raises(UnknownFeatureError, match=r'no spec named "purchase".*purchases'):
        upload(workspace, ["purchase"])
    result = CliRunner().invoke(cli.main, ["upload", "--config", str(config)])
    assert result.exit_code != 0
    assert "robusta materialize --spec purchases" in result.output
    assert "Traceback" not in result.output


def test_lookup_before_upload_names_the_command(make_project: MakeProject) -> None:
    config = make_project()
    with pytest.raises(OnlineStateError, match="run `robusta upload` first"):
        FeatureClient.from_config(config)
    result = CliRunner().invoke(
        cli.main, ["lookup", "--config", str(config), "--entity", "USER_ID=u1"]
    )
    assert result.exit_code != 0
    assert "robusta upload" in result.output and "Traceback" not in result.output
