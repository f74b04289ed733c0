"""A loaded project: config, specs and compiled plan, with every problem found on the way.

This is what the CLI, the jobs and the APIs open first. They take the validated config from
:attr:`Workspace.config` (which raises the project's problems instead of handing out a config
that failed validation) and pass the lower layers only the pieces they need
(``config.offline``, ``config.online``, ``config.streaming``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from robusta.errors import ConfigNotFoundError, Location, Problem, ValidationError
from robusta.plan.compiler import compile_plan
from robusta.plan.model import Plan
from robusta.spec.config import find_config
from robusta.spec.model import ProjectConfig
from robusta.spec.project import Project, load_project


@dataclass
class Workspace:
    project: Project
    plan: Plan
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def config(self) -> ProjectConfig:
        """The validated project config: a project with problems raises them
        (:class:`ValidationError`), so nothing works from a config that failed its checks."""
        if self.problems:
            raise ValidationError(self.problems)
        if self.project.config is None:  # no config, yet no problem said why
            where = Location("robusta.yaml")
            raise ValidationError([Problem(where, "the project has no config: check --config")])
        return self.project.config

    def require_valid(self) -> Workspace:
        """This workspace; raises :class:`ValidationError` with every problem unless valid."""
        _ = self.config
        return self


def load_workspace(config: Path | None = None, specs: Sequence[Path] = ()) -> Workspace:
    """Load and check the project at ``config`` (default: found from the working directory)."""
    path = config if config is not None else find_config()
    if not path.is_file():
        raise ConfigNotFoundError(path)
    project = load_project(path, specs)
    if project.config is None:
        return Workspace(project, Plan(()), list(project.problems))
    plan, problems = compile_plan(project.config, project.specs, project.services)
    everything = sorted([*project.problems, *problems], key=lambda p: p.location)
    return Workspace(project, plan, everything)
