"""Checkers for operator parameters (return a message when a value is not allowed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def int_between(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be a whole number between {low} and {high}, got {value!r}"
        if not low <= value <= high:
            return f"must be between {low} and {high}, got {value}"
        return None

    return check


def optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda value: None if value is None else check(value)


def quantile_list(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return f"must be a non-empty list of fractions in [0, 1], e.g. [0.5, 0.9], got {value!r}"
    for q in value:
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 <= float(q) <= 1.0:
            return f"every quantile must be a number in [0, 1], got {q!r}"
    return None
