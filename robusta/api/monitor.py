"""Data-volume monitors: event counts per source and segment, and drops against recent levels.

A source with a ``monitor`` section in ``robusta.yaml``

    sources:
      engagement_events:
        ...
        monitor: {timestamp: event_ts, segments: [device, country], granularity: 1d}

gets its events counted by every ``robusta materialize`` that reads it: per time bucket, in
total and per value of each segment column, into the Iceberg table ``<namespace>.event_volumes``
(a rerun over a range replaces that range's counts), and by ``robusta stream``, which adds each
micro-batch's counts exactly once (the batch is recorded in the commit's snapshot summary and
checked before adding; a later batch ``materialize`` of the range replaces them, as it
replaces streamed tiles). ``robusta monitor`` then compares each
segment's latest bucket with the median of its previous ``baseline`` buckets and flags the
segments that fell below ``drop`` times that level: a country whose events stop is flagged even
while the total, carried by the other countries, looks normal.

This module only reads: the counts are written by the jobs (``jobs.volumes``, through the
engines' counters) into ``store.volumes``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from statistics import median
from typing import Any

from robusta.errors import RobustaError
from robusta.spec.durations import floor_to, to_micros
from robusta.spec.model import ProjectConfig
from robusta.store.volumes import TOTAL, iso, volumes_table


class MonitorError(RobustaError, LookupError):
    """Nothing to monitor (no source has a monitor section, or nothing was recorded)."""


@dataclass
class Volume:
    """One segment value's latest bucket against its recent level."""

    source: str
    segment: str
    value: str | None
    bucket: str
    events: int
    baseline: float  # median of the previous buckets (missing ones count 0)
    flagged: bool

    @property
    def ratio(self) -> float | None:
        return self.events / self.baseline if self.baseline else None


@dataclass
class MonitorReport:
    drop: float
    baseline_buckets: int
    min_events: int
    volumes: list[Volume] = field(default_factory=list)

    @property
    def flagged(self) -> list[Volume]:
        return [v for v in self.volumes if v.flagged]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.flagged,
            "drop": self.drop,
            "baseline_buckets": self.baseline_buckets,
            "min_events": self.min_events,
            "volumes": [{**asdict(v), "ratio": v.ratio} for v in self.volumes],
        }


Count = tuple[str, str, str | None, int, int, int]  # source, segment, value, bucket, size, n


def find_drops(
    counts: Iterable[Count],
    *,
    drop: float = 0.5,
    baseline: int = 7,
    min_events: int = 20,
    at: int | None = None,
) -> list[Volume]:
    """Per source, each segment value's count in the bucket holding ``at`` (default: the
    latest complete bucket, one that ended by now) against the median of the ``baseline``
    buckets before it; flagged when below ``drop`` times a median of at least
    ``min_events``. Pure: no store access."""
    by_source: dict[str, dict[tuple[str, str | None], dict[int, int]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    sizes: dict[str, int] = {}
    for source, segment, value, bucket, size, n in counts:
        by_source[source][(segment, value)][bucket] = n
        sizes[source] = size
    out = []
    for source, series in sorted(by_source.items()):
        size = sizes[source]
        total = series.get((TOTAL, None), {})
        if not total:
            continue
        if at is not None:
            latest = floor_to(at, size)
        else:  # a bucket still filling up would look like a drop
            now = to_micros(datetime.now(UTC))
            complete = [b for b in total if b + size <= now]
            if not complete:
                continue
            latest = max(complete)
        previous = [latest - k * size for k in range(1, baseline + 1)]
        for (segment, value), buckets in sorted(series.items(), key=lambda kv: _order(kv[0])):
            level = median(buckets.get(b, 0) for b in previous)
            now = buckets.get(latest, 0)
            flagged = level >= min_events and now < drop * level
            out.append(
                Volume(source, segment, value, iso(latest), now, float(level), flagged)
            )
    return out


def _order(key: tuple[str, str | None]) -> tuple[int, str, str]:
    segment, value = key
    return (0 if segment == TOTAL else 1, segment, value or "")


def check_volumes(
    config: ProjectConfig,
    sources: Sequence[str] = (),
    *,
    drop: float = 0.5,
    baseline: int = 7,
    min_events: int = 20,
    at: datetime | None = None,
) -> MonitorReport:
    """Read the recorded volumes and :func:`find_drops` in them."""
    monitored = [s.name for s in config.sources.values() if s.monitor is not None]
    if not monitored:
        raise MonitorError(
            "no source has a monitor section: add `monitor: {timestamp: <column>, segments: "
            "[<column>, ...]}` to a source in robusta.yaml, then run `robusta materialize`"
        )
    unknown = [s for s in sources if s not in monitored]
    if unknown:
        raise MonitorError(
            f"not monitored: {', '.join(unknown)}; monitored: {', '.join(monitored)}"
        )
    table = volumes_table(config.offline, create=False)
    if table is None:
        raise MonitorError("no event volumes recorded yet: run `robusta materialize`")
    wanted = set(sources or monitored)
    sizes = {  # counts of an earlier granularity setting are not comparable
        s.name: s.monitor.granularity.micros for s in config.sources.values() if s.monitor
    }
    rows = table.scan().to_arrow().to_pylist()
    counts = [
        (
            r["source"],
            r["segment"],
            r["value"],
            to_micros(r["bucket_start"]),
            int(r["granularity_us"]),
            int(r["events"]),
        )
        for r in rows
        if r["source"] in wanted and int(r["granularity_us"]) == sizes[r["source"]]
    ]
    report = MonitorReport(drop, baseline, min_events)
    report.volumes = find_drops(
        counts,
        drop=drop,
        baseline=baseline,
        min_events=min_events,
        at=None if at is None else to_micros(at),
    )
    return report

