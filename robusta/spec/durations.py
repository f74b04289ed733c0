"""Durations, windows and epoch-aligned time arithmetic (all in integer microseconds, UTC)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MICROS_PER_SECOND = 1_000_000
UNITS: dict[str, int] = {
    "s": MICROS_PER_SECOND,
    "m": 60 * MICROS_PER_SECOND,
    "h": 3600 * MICROS_PER_SECOND,
    "d": 86400 * MICROS_PER_SECOND,
    "w": 7 * 86400 * MICROS_PER_SECOND,
}
# Canonical names use days at most, so "7d" stays "7d" (not "1w") and "24h" becomes "1d".
_CANONICAL_UNITS = ("d", "h", "m", "s")
_PATTERN = re.compile(r"^\s*([0-9]+)\s*([smhdw])\s*$", re.ASCII)
MAX_DAYS = 36_600  # a century: far beyond any window, far below int64 microseconds
LIFETIME = "lifetime"


class DurationSyntaxError(ValueError):
    """Internal: text is not a duration; the spec layer turns it into a located problem."""


@dataclass(frozen=True, slots=True, order=True)
class Duration:
    """A positive whole number of microseconds."""

    micros: int

    @classmethod
    def parse(cls, text: object) -> Duration:
        match = _PATTERN.match(str(text)) if isinstance(text, str | int) else None
        if match is None:
            raise DurationSyntaxError(
                f'"{text}" is not a duration; write a whole number and a unit, e.g. 5m, 1h, 7d '
                "(units: s, m, h, d, w)"
            )
        amount = int(match.group(1))
        if amount <= 0:
            raise DurationSyntaxError(f'"{text}" must be longer than zero')
        micros = amount * UNITS[match.group(2)]
        if micros > MAX_DAYS * UNITS["d"]:
            raise DurationSyntaxError(f'"{text}" is longer than {MAX_DAYS} days; use lifetime')
        return cls(micros)

    @property
    def name(self) -> str:
        unit = next(u for u in _CANONICAL_UNITS if self.micros % UNITS[u] == 0)  # "s" always fits
        return f"{self.micros // UNITS[unit]}{unit}"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Window:
    """A sliding window: a duration, or ``lifetime`` (everything before the window end)."""

    duration: Duration | None  # None means lifetime

    @classmethod
    def parse(cls, text: object) -> Window:
        if isinstance(text, str) and text.strip().lower() == LIFETIME:
            return cls(None)
        return cls(Duration.parse(text))

    @property
    def is_lifetime(self) -> bool:
        return self.duration is None

    @property
    def name(self) -> str:
        return LIFETIME if self.duration is None else self.duration.name

    @property
    def sort_key(self) -> int:
        return self.duration.micros if self.duration is not None else 2**63 - 1

    def __str__(self) -> str:
        return self.name


def latest(a: int | None, b: int | None) -> int | None:
    """The later of two optional times (None: unknown)."""
    return b if a is None else a if b is None else max(a, b)


def floor_to(t: int, size: int) -> int:
    """Largest multiple of ``size`` that is <= ``t`` (epoch-aligned, works for negatives)."""
    return t - (t % size)


def to_micros(value: datetime) -> int:
    """A datetime as UTC epoch microseconds (naive datetimes are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * MICROS_PER_SECOND + delta.microseconds


def from_micros(micros: int) -> datetime:
    """UTC datetime from epoch microseconds."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
