"""`robusta stream` adds each micro-batch's event volumes of a monitored source, once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from robusta.datagen import GeneratorConfig, generate_events
from robusta.monitor import TOTAL, VOLUMES_TABLE
from robusta.store.catalog import open_catalog
from robusta.streaming import stream
from robusta.workspace import load_workspace
from tests.engine.test_streaming import SMALL_SPEC, by_time, land, streaming_project

MONITOR = "    monitor: {timestamp: event_ts, segments: [device], granularity: 1h}\n"


def stored_volumes(root: Path) -> dict[tuple[str, str | None, int], int]:
    workspace = load_workspace(root / "robusta.yaml").require_valid()
    config = workspace.project.config
    assert config is not None
    table = open_catalog(config.offline).load_table(f"{config.offline.namespace}.{VOLUMES_TABLE}")
    rows = table.scan().to_arrow()
    starts = pc.cast(rows.column("bucket_start"), pa.int64()).to_pylist()
    return {
        (r["segment"], r["value"], s): r["events"]
        for r, s in zip(rows.to_pylist(), starts, strict=True)
    }


def expected(events: pa.Table) -> dict[tuple[str, str | None, int], int]:
    hour = 60 * 60_000_000
    ts = pc.cast(events.column("event_ts"), pa.int64()).to_pylist()
    devices = events.column("device").to_pylist()
    out: Counter[tuple[str, str | None, int]] = Counter()
    for t, device in zip(ts, devices, strict=True):
        if t is None:
            continue
        out[(TOTAL, None, t - t % hour)] += 1
        out[("device", device if device is not None else "(null)", t - t % hour)] += 1
    return dict(out)


def test_streamed_volumes_equal_the_landed_events(engine: str, tmp_path: Path) -> None:
    streaming_project(tmp_path, spec=SMALL_SPEC, engine=engine)
    config = tmp_path / "robusta.yaml"
    config.write_text(config.read_text().replace('    schema: "', MONITOR + '    schema: "', 1))
    workspace = load_workspace(config).require_valid()
    events = generate_events(GeneratorConfig(seed=4, days=1, events_per_day=600, users=20))
    first, second = by_time(events, 2)
    land(tmp_path / "data", first, "part-0", order=0)
    stream(workspace, available_now=True)
    assert stored_volumes(tmp_path) == expected(first)
    stream(workspace, available_now=True)  # nothing new landed: nothing added
    assert stored_volumes(tmp_path) == expected(first)
    land(tmp_path / "data", second, "part-1", order=1)
    stream(workspace, available_now=True)
    assert stored_volumes(tmp_path) == expected(events)
