"""The project's error hierarchy.

Every error Robusta raises on purpose derives from :class:`RobustaError`; each subclass also
inherits the built-in exception it resembles, so callers can catch either. Messages say what
to do about the problem, not only what it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class RobustaError(Exception):
    """Root of every error Robusta raises on purpose."""


@dataclass(frozen=True, slots=True, order=True)
class Location:
    """A place in a user's file; line and column are 1-based."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a user's input, located where possible."""

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.location.file,
            "line": self.location.line,
            "column": self.location.column,
            "message": self.message,
        }


class ValidationError(RobustaError, ValueError):
    """User input (config, spec, request) is invalid; carries every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(str(p) for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) found:\n{lines}")


class ConfigNotFoundError(RobustaError, FileNotFoundError):
    """No robusta.yaml was found."""

    def __init__(self, start: Path) -> None:
        if start.suffix in (".yaml", ".yml"):
            message = f"{start} does not exist (or is not a file); check --config"
        else:
            message = (
                f"no robusta.yaml found in {start} or any parent folder; "
                "run from inside a project or pass --config PATH"
            )
        super().__init__(message)


class UnknownFeatureError(RobustaError, KeyError):
    """A feature or spec name that no spec defines."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown feature"


class OperatorError(RobustaError, ValueError):
    """An operator was given data it cannot aggregate (wrong type or shape)."""


class UnknownOperatorError(OperatorError):
    """A spec names an operator that does not exist."""
