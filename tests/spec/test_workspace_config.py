"""``Workspace.config``: the validated config, or the project's problems raised."""

from __future__ import annotations

import pytest

from robusta.errors import ValidationError
from robusta.jobs.materialize import materialize
from robusta.workspace import load_workspace
from tests.conftest import SPEC, MakeProject


def test_a_valid_project_gives_its_config(make_project: MakeProject) -> None:
    workspace = load_workspace(make_project())
    config = workspace.config
    assert config is workspace.project.config
    assert config.offline.namespace and "events" in config.sources
    assert workspace.require_valid() is workspace


def test_a_project_with_problems_raises_them(make_project: MakeProject) -> None:
    workspace = load_workspace(make_project(purchases=SPEC.replace("op: sum", "op: summ")))
    assert workspace.problems
    with pytest.raises(ValidationError) as raised:
        _ = workspace.config
    assert raised.value.problems == tuple(workspace.problems)
    assert "summ" in str(raised.value)


def test_a_job_on_an_invalid_project_reports_its_problems(make_project: MakeProject) -> None:
    """No job works from a config that failed validation: it raises the problems (no
    AssertionError, which ``python -O`` would drop)."""
    workspace = load_workspace(make_project(purchases=SPEC.replace("op: sum", "op: summ")))
    with pytest.raises(ValidationError, match="summ"):
        materialize(workspace)
