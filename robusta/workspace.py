"""A loaded project: config, specs and compiled plan, with every problem found on the way.

This is what the CLI and later the training and serving APIs open first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from robusta.errors import ConfigNotFoundError, Problem, ValidationError
from robusta.plan.compiler import compile_plan
from robusta.plan.model import Plan
from robusta.spec.config import find_config
from robusta.spec.project import Project, load_project


@dataclass
class Workspace:
    project: Project
    plan: Plan
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def require_valid(self) -> Workspace:
        if self.problems:
            raise ValidationError(self.problems)
        return self


def load_workspace(config: Path | None = None, specs: Sequence[Path] = ()) -> Workspace:
    """Load and check the project at ``config`` (default: found from the working directory)."""
    path = config if config is not None else find_config()
    if not path.is_file():
        raise ConfigNotFoundError(path)
    project = load_project(path, specs)
    if project.config is None:
        return Workspace(project, Plan(()), list(project.problems))
    plan, problems = compile_plan(project.config, project.specs)
    everything = sorted([*project.problems, *problems], key=lambda p: p.location)
    return Workspace(project, plan, everything)
