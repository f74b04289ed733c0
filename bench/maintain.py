"""Benchmark: `robusta maintain` on a table a stream committed to ``--batches`` times.

A throwaway streaming project (the test suite's small spec: count, sum, last_n and
approx_distinct over 1h, 1d and lifetime, granularities [1d, 1h, 5m]) streams ``--batches``
files on the embedded engine, one micro-batch each, every one closing a bucket: as many
snapshots and small files. Then maintain runs with a retention reaching back to the middle
snapshot. Printed: snapshots, live files and files on disk before and after, maintain's
time and peak memory, how long planning a backfill takes before and after, and whether
every backfill (a training frame read at the current snapshot, and the oldest retained
snapshot's tiles) is identical. The competitor is the same table without maintenance:
planning its scan, measured in the same run.

    .venv/bin/python bench/maintain.py --batches 1000
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).parents[1]))

from robusta.api.training import get_training_frame
from robusta.demo.datagen import GeneratorConfig, generate_events
from robusta.jobs.maintain import maintain
from robusta.jobs.stream import stream
from robusta.spec.durations import Duration
from robusta.store.tiles import TileTables, live_files
from tests.engine.test_backfill import training_rows
from tests.engine.test_streaming import SMALL_SPEC, by_time, land, streaming_project

ONE_FILE = "# one file per batch\n  sources:\n    events: {options: {maxFilesPerTrigger: 1}}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--events-per-day", type=int, default=20_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="robusta-maintain-"))
    workspace = streaming_project(root, SMALL_SPEC, extra=ONE_FILE, engine="embedded")
    days = max(1, args.batches * 5 // 1440 + 1)  # 5-minute buckets: one closes per file
    events = generate_events(
        GeneratorConfig(seed=3, days=days, events_per_day=args.events_per_day, users=500, items=200)
    )
    for i, part in enumerate(by_time(events, args.batches)):
        land(root / "data", part, f"part-{i:05d}", order=i)
    started = time.perf_counter()
    stream(workspace, available_now=True, engine="embedded")
    streamed = time.perf_counter() - started
    (plan,) = workspace.plan.specs
    (group,) = plan.groups
    tables = TileTables(workspace.config.offline)
    table = tables.load(group.layout.table)
    assert table is not None
    snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
    rows = training_rows(events, 2000)
    rows = rows.filter(pc.is_valid(rows.column("ts")))
    plan_before = _plan_seconds(table)
    frame_before = get_training_frame(rows, None, workspace=workspace, engine="embedded")
    middle = snapshots[len(snapshots) // 2]
    middle_rows = table.scan(snapshot_id=middle.snapshot_id).to_arrow().sort_by("bucket_start")
    files_before = len(live_files(table))
    disk_before = _disk(table)

    later = datetime.now(UTC) + timedelta(hours=2)  # files an hour old may be deleted
    since = datetime.fromtimestamp(middle.timestamp_ms / 1000, UTC)
    retention = Duration((later - since) // timedelta(microseconds=1))
    started = time.perf_counter()
    (report,) = [
        r for r in maintain(workspace, retention=retention, now=later) if r.table.startswith("eng")
    ]
    took = time.perf_counter() - started
    table = tables.load(group.layout.table)
    assert table is not None
    plan_after = _plan_seconds(table)
    frame_after = get_training_frame(rows, None, workspace=workspace, engine="embedded")
    middle_after = table.scan(snapshot_id=middle.snapshot_id).to_arrow().sort_by("bucket_start")
    print(f"{args.batches} micro-batches streamed in {streamed:.0f} s")
    print(f"{'':<26}{'before':>10}{'after':>10}")
    print(f"{'snapshots':<26}{len(snapshots):>10}{len(table.snapshots()):>10}")
    print(f"{'live data files':<26}{files_before:>10}{report.files_after:>10}")
    print(f"{'files under the table':<26}{disk_before:>10}{_disk(table):>10}")
    print(f"{'scan planning s':<26}{plan_before:>10.2f}{plan_after:>10.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(
        f"maintain: {took:.1f} s, peak RSS {peak} MiB; "
        f"expired {report.expired}, deleted {report.deleted_files} files"
    )
    print(f"backfill identical: {frame_before.equals(frame_after)}")
    print(f"middle snapshot identical: {middle_rows.equals(middle_after)}")


def _plan_seconds(table: object) -> float:
    started = time.perf_counter()
    list(table.scan().plan_files())  # type: ignore[attr-defined]
    return time.perf_counter() - started


def _disk(table: object) -> int:
    location = str(table.location()).removeprefix("file://")  # type: ignore[attr-defined]
    return sum(1 for p in Path(location).rglob("*") if p.is_file())


if __name__ == "__main__":
    main()
