"""What a tile job reports, whichever engine ran it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TileCounts:
    events: int
    null_keys: int
    null_timestamps: int
    tiles: dict[str, int]
    last_bucket: int | None = None  # start of the latest finest tile (epoch micros)
    last_event: int | None = None  # the latest event time with a key (epoch micros)
