"""`robusta stream`: streamed tiles, online values and Iceberg tiles against the reference.

Generated events (every operator, a composite key, null keys and times) are landed in a few
files; the stream runs in ``available-now`` mode after each landing, in this process, on the
test session. Online lookups must equal the reference evaluator at the pointer they return,
and every Iceberg tile the stream committed must equal the reference over its bucket.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from robusta.datagen import GeneratorConfig, generate_events
from robusta.serving import FeatureClient
from robusta.spec.durations import floor_to, from_micros
from robusta.streaming import stream, stream_status
from robusta.testing.reference import reference_value, window_bounds
from robusta.workspace import Workspace, load_workspace
from tests.engine.test_materialize import (
    SPEC,
    assert_close,
    config_text,
    events_by_key,
    finalize_one,
    load_table,
)

pytestmark = pytest.mark.spark

MIN = 60_000_000
GMIN = 5 * MIN
DAY = 1440 * MIN
STREAM_SPEC = SPEC.replace("windows: [1h]", "windows: [1h, 1d, lifetime]")


@dataclass
class Streamed:
    root: Path
    workspace: Workspace
    events: pa.Table  # every landed event


def streaming_project(root: Path, watermark: str = "10m") -> Workspace:
    (root / "feature_defs").mkdir(parents=True)
    (root / "feature_defs" / "engagement.yaml").write_text(STREAM_SPEC)
    config = config_text(f"sqlite:///{root / 'catalog.db'}") + textwrap.dedent(f"""\
        streaming:
          checkpoint: checkpoints
          watermark: {watermark}
        """)
    (root / "robusta.yaml").write_text(config)
    (root / "data").mkdir()
    return load_workspace(root / "robusta.yaml").require_valid()


def land(folder: Path, events: pa.Table, name: str) -> None:
    """Write a file the way producers must: under a hidden name, then renamed."""
    hidden = folder / f".{name}.parquet"
    pq.write_table(events, hidden, coerce_timestamps="us")
    hidden.rename(folder / f"{name}.parquet")


def by_time(events: pa.Table, parts: int) -> list[pa.Table]:
    """Events split into ``parts`` consecutive time ranges (null times in the first)."""
    ts = pc.cast(events.column("event_ts"), pa.int64())
    order = pc.sort_indices(ts, null_placement="at_start")
    ordered = events.take(order)
    size = -(-ordered.num_rows // parts)
    return [ordered.slice(i * size, size) for i in range(parts)]


@pytest.fixture(scope="module")
def streamed(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Streamed:
    root = tmp_path_factory.mktemp("stream")
    workspace = streaming_project(root)
    events = generate_events(
        GeneratorConfig(seed=8, days=2, events_per_day=1200, users=40, items=90, channels=5)
    )
    for i, part in enumerate(by_time(events, 3)):
        land(root / "data", part, f"part-{i}")
        stream(workspace, available_now=True)
    return Streamed(root, workspace, events)


def test_status_counts_every_row_once(streamed: Streamed) -> None:
    (status,) = stream_status(streamed.workspace)
    assert status.rows == streamed.events.num_rows
    assert status.late == 0
    ts = pc.cast(streamed.events.column("event_ts"), pa.int64())
    newest = int(pc.max(ts).as_py())
    assert status.pointer == from_micros(floor_to(newest - 10 * MIN, GMIN)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def test_iceberg_tiles_equal_the_reference(streamed: Streamed) -> None:
    (plan,) = streamed.workspace.plan.specs
    for group in plan.groups:
        rows = load_table(streamed, group.layout.table).scan().to_arrow()
        keys = [k.column for k in group.layout.keys]
        sizes = {g.name: g.micros for g in group.layout.granularities}
        starts = pc.cast(rows.column("bucket_start"), pa.int64()).to_pylist()
        seen = {
            (tuple(rows.column(k)[i].as_py() for k in keys), rows.column("granularity")[i].as_py(), s)
            for i, s in enumerate(starts)
        }
        assert len(seen) == rows.num_rows  # no tile committed twice
        for feature in group.features:
            per_key = events_by_key(streamed.events, keys, feature.input or "__count")
            for i in range(0, rows.num_rows, max(1, rows.num_rows // 150)):
                key = tuple(rows.column(k)[i].as_py() for k in keys)
                start = starts[i]
                end = start + sizes[rows.column("granularity")[i].as_py()]
                inside = [(t, v) for t, v in per_key[key] if start <= t < end]
                want = reference_value(feature.op.name, feature.op.params, inside, start, end)
                got = finalize_one(feature, rows.column(feature.ir_column).slice(i, 1))
                assert_close(feature.op, got, want, [v for _, v in inside])


def test_lookups_equal_the_reference_at_the_pointer(streamed: Streamed) -> None:
    (plan,) = streamed.workspace.plan.specs
    group = next(g for g in plan.groups if len(g.layout.keys) == 1)
    per_feature = {
        f.name: events_by_key(streamed.events, ["user_id"], f.input or "__count")
        for f in group.features
    }
    users = sorted({k for (k,) in per_feature["n_events"]})
    ts = pc.cast(streamed.events.column("event_ts"), pa.int64())
    last = int(pc.max(ts).as_py())
    with FeatureClient.from_config(streamed.root / "robusta.yaml") as client:
        for t in (last, last - 3 * 60 * MIN + 7, floor_to(last, 60 * MIN)):
            vectors = client.get_features(
                [{"USER_ID": u} for u in users], [f.name for f in group.features], from_micros(t)
            )
            for user, vector in zip(users, vectors, strict=True):
                pointer = int(pa.scalar(vector.pointer).cast(pa.int64()).as_py())
                for feature in group.features:
                    for output in feature.outputs:
                        start, end = window_bounds(t, output.window, GMIN, pointer)
                        events = per_feature[feature.name][(user,)]
                        inside = [(e, v) for e, v in events if (start is None or start <= e) and e < end]
                        want = reference_value(
                            feature.op.name, feature.op.params, inside, start, end
                        )
                        got = vector.values[output.name]
                        assert_close(feature.op, got, want, [v for _, v in inside])

