"""A whole project: its config and every spec, checked together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from robusta.errors import Location, Problem
from robusta.spec.config import display_path, load_config
from robusta.spec.loader import load_spec, spec_files
from robusta.spec.model import FeatureDef, FeatureSpec, ProjectConfig
from robusta.spec.service import ServiceDef, is_service, load_service
from robusta.spec.yamldoc import YamlLoadError, load_yaml


@dataclass
class Project:
    """Parsed config and specs, plus every problem found (empty when valid)."""

    config: ProjectConfig | None
    specs: tuple[FeatureSpec, ...]
    problems: list[Problem] = field(default_factory=list)
    services: tuple[ServiceDef, ...] = ()

    @property
    def ok(self) -> bool:
        return self.config is not None and not self.problems


def load_project(config_path: Path, only: Sequence[Path] = ()) -> Project:
    """Load robusta.yaml and its specs (or just ``only``), collecting all problems.

    Cross-spec rules (unique spec names, unique output feature names) always consider every
    spec of the project, so validating one file still catches a clash with another.
    """
    config, problems = load_config(config_path)
    if config is None:
        return Project(None, (), problems)
    files = spec_files(config.feature_defs)
    if not files and not only:
        problems.append(
            Problem(
                Location(display_path(config.file)),
                f"no spec files (*.yaml) in {display_path(config.feature_defs)}",
            )
        )
    selected = {p.resolve() for p in only}
    for extra in selected - {f.resolve() for f in files}:
        files.append(extra)
    specs: list[FeatureSpec] = []
    services: list[ServiceDef] = []
    for file in files:
        if not file.is_file():
            problems.append(Problem(Location(display_path(file)), "spec file not found"))
            continue
        service, found = _service(file)
        if service is None and not found:
            spec, found = load_spec(file, config)
            if spec is not None:
                specs.append(spec)
        elif service is not None and (not selected or file.resolve() in selected):
            services.append(service)
        if not selected or file.resolve() in selected:
            problems.extend(found)
    problems.extend(_clashes(specs, selected))
    # A service checked alone still resolves against every spec.
    chosen = [s for s in specs if not selected or services or s.file in selected]
    return Project(
        config, tuple(chosen), sorted(problems, key=lambda p: p.location), tuple(services)
    )


def _service(file: Path) -> tuple[ServiceDef | None, list[Problem]]:
    """The service a file defines; (None, []) when it is a spec (or not YAML: the spec
    loader reports that)."""
    try:
        doc = load_yaml(file, display_path(file))
    except YamlLoadError:
        return None, []
    return load_service(doc, file) if is_service(doc) else (None, [])


def _clashes(specs: list[FeatureSpec], selected: set[Path]) -> list[Problem]:
    problems: list[Problem] = []
    seen_specs: dict[str, FeatureSpec] = {}
    outputs: dict[str, list[tuple[FeatureSpec, FeatureDef, str]]] = {}
    for spec in specs:
        report = not selected or spec.file in selected
        first = seen_specs.setdefault(spec.name.lower(), spec)
        if first is not spec and report and spec.location is not None:
            problems.append(
                Problem(
                    spec.location,
                    f'spec name "{spec.name}" is already used by '
                    f"{first.location}; spec names must be unique",
                )
            )
        for feature in spec.features:
            for output in feature.output_names:
                defined = outputs.setdefault(output.lower(), [])
                if not any(s is spec and f.name == feature.name for s, f, _ in defined):
                    defined.append((spec, feature, output))
    # An output clash is reported on every definition involved, each naming another one: the
    # new spec shows it (whichever file sorts first), and so does `validate` of any one file.
    for defined in outputs.values():
        if len(defined) < 2:
            continue
        for i, (spec, feature, output) in enumerate(defined):
            where = feature.where("")
            if where is None or (selected and spec.file not in selected):
                continue
            other_spec, other, _ = defined[1] if i == 0 else defined[0]
            other_file = other_spec.location.file if other_spec.location else other_spec.name
            problems.append(
                Problem(
                    where,
                    f'feature "{output}" is also defined by "{other.name}" in {other_file}; '
                    "output feature names must be unique across all specs",
                )
            )
    return problems
