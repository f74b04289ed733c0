"""What a tile job is asked (a range) and reports (counts), whichever engine runs it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TileCounts:
    events: int
    null_keys: int
    null_timestamps: int
    tiles: dict[str, int]
    last_bucket: int | None = None  # start of the latest finest tile (epoch micros)
    # The latest event time with a key in the source, also after a run's range (epoch
    # micros): what the run's coverage ends at (``materialize._covered``).
    last_event: int | None = None


@dataclass(frozen=True)
class Range:
    """Whole buckets ``[start, end)`` in epoch microseconds; None means all data."""

    start: int | None = None
    end: int | None = None

    @property
    def bounded(self) -> bool:
        return self.start is not None and self.end is not None
