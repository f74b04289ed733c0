"""`robusta maintain` on a streamed table: its small files merged, snapshots past the retention
expired, unneeded files deleted; every tile, backfill and retained snapshot the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from robusta.api.training import get_training_frame
from robusta.demo.datagen import GeneratorConfig, generate_events
from robusta.jobs.maintain import maintain
from robusta.jobs.materialize import materialize
from robusta.jobs.stream import stream
from robusta.spec.durations import Duration
from robusta.store.files import normal
from robusta.store.maintenance import referenced_files
from robusta.store.tiles import TileTables, live_files
from robusta.testing.compare import bits
from tests.engine.test_backfill import training_rows
from tests.engine.test_streaming import (
    SMALL_SPEC,
    assert_iceberg_tiles_equal_reference,
    by_time,
    land,
    streaming_project,
)

ONE_FILE = "# one file per batch\n  sources:\n    events: {options: {maxFilesPerTrigger: 1}}\n"
BATCHES = 16


def _frame(workspace: object, rows: pa.Table) -> pa.Table:
    frame = get_training_frame(rows, None, workspace=workspace, engine="embedded")  # type: ignore[arg-type]
    assert isinstance(frame, pa.Table)
    return frame


def _bits(frame: pa.Table) -> dict[str, list[object]]:
    return {name: [bits(v) for v in frame.column(name).to_pylist()] for name in frame.column_names}


def test_maintain_keeps_the_retention_and_changes_no_backfill(tmp_path: Path) -> None:
    workspace = streaming_project(tmp_path, SMALL_SPEC, extra=ONE_FILE, engine="embedded")
    events = generate_events(
        GeneratorConfig(seed=21, days=2, events_per_day=900, users=25, items=40, channels=3)
    )
    for i, part in enumerate(by_time(events, BATCHES)):
        land(tmp_path / "data", part, f"part-{i:03d}", order=i)
    stream(workspace, available_now=True, engine="embedded")
    (plan,) = workspace.plan.specs
    (group,) = plan.groups
    tables = TileTables(workspace.config.offline)
    table = tables.load(group.layout.table)
    assert table is not None
    snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
    assert len(snapshots) >= BATCHES - 2  # one per closing micro-batch
    files_before = len(live_files(table))
    rows = training_rows(events, 120)
    rows = rows.filter(pc.is_valid(rows.column("ts")))
    before = _frame(workspace, rows)
    oldest_kept = snapshots[len(snapshots) // 2]
    kept_rows = table.scan(snapshot_id=oldest_kept.snapshot_id).to_arrow().num_rows

    # As if two hours later, with a retention reaching back to the middle snapshot: the
    # older half expires, and the files only it needed are old enough to go.
    later = datetime.now(UTC) + timedelta(hours=2)
    since = datetime.fromtimestamp(oldest_kept.timestamp_ms / 1000, UTC)
    retention = Duration((later - since) // timedelta(microseconds=1))
    reports = maintain(workspace, retention=retention, now=later)

    (report,) = [r for r in reports if r.table == group.layout.table]
    table = tables.load(group.layout.table)
    assert table is not None
    assert report.conflict is None
    assert report.files_before == files_before > report.files_after == len(live_files(table))
    retained = {s.snapshot_id for s in table.snapshots()}
    want = {s.snapshot_id for s in snapshots if s.timestamp_ms >= oldest_kept.timestamp_ms}
    assert retained == want | {table.current_snapshot().snapshot_id}
    assert report.expired == len(snapshots) - len(want) > 0 and report.deleted_files > 0
    # Every file left under the table is one a retained snapshot needs (leases aside).
    on_disk = {normal(str(p)) for p in Path(normal(table.location())).rglob("*") if p.is_file()}
    assert on_disk - referenced_files(table) == set()
    # Time travel within the retention still reads, and every backfill is the same.
    assert table.scan(snapshot_id=oldest_kept.snapshot_id).to_arrow().num_rows == kept_rows
    assert _bits(_frame(workspace, rows)) == _bits(before)
    # The next writer's cleanup of orphan run folders keeps the runs whose snapshots expired.
    assert tables.clean_orphans(table) == []
    assert _bits(_frame(workspace, rows)) == _bits(before)


def test_maintain_with_nothing_to_do_changes_nothing(tmp_path: Path) -> None:
    workspace = streaming_project(tmp_path, SMALL_SPEC, extra=ONE_FILE, engine="embedded")
    events = generate_events(
        GeneratorConfig(seed=22, days=1, events_per_day=300, users=10, items=20, channels=2)
    )
    land(tmp_path / "data", events, "part-000", order=0)
    materialize(workspace, engine="embedded")
    (report,) = [r for r in maintain(workspace) if r.table.startswith("engagement")]
    assert (report.expired, report.deleted_files) == (0, 0)
    assert report.files_before == report.files_after


def test_a_running_stream_maintains_its_tables_and_stays_exact(tmp_path: Path) -> None:
    """``streaming.maintain``: between micro-batches the stream compacts its tables; the
    tiles it commits after that are still each there once, equal to the reference."""
    config = ONE_FILE.replace("# one file per batch\n", "# maintained every second\n")
    workspace = streaming_project(
        tmp_path, SMALL_SPEC, extra=config + "  maintain: 1s\n", engine="embedded"
    )
    assert workspace.config.streaming.maintain == Duration(1_000_000)
    events = generate_events(
        GeneratorConfig(seed=23, days=2, events_per_day=600, users=20, items=30, channels=3)
    )
    for i, part in enumerate(by_time(events, BATCHES)):
        land(tmp_path / "data", part, f"part-{i:03d}", order=i)
    stream(workspace, available_now=True, engine="embedded")
    (plan,) = workspace.plan.specs
    (group,) = plan.groups
    table = TileTables(workspace.config.offline).load(group.layout.table)
    assert table is not None
    summaries = [s.summary.additional_properties for s in table.snapshots() if s.summary]
    assert any(p.get("robusta.maintain") == "compact" for p in summaries)
    assert_iceberg_tiles_equal_reference(workspace, events, group)
