"""The tile contract on generated edge cases (hypothesis), for both engines.

Events drawn to hit what breaks tilers: times on bucket boundaries (and one microsecond
either side), ties in time, null keys, null times and null values, a hot key, negative and
half-way values, empty batches. Fast tier: the embedded builder's every tile, at every
granularity and for all 14 operators and a composite key, equals the brute-force reference
over the raw events. ``spark`` tier: the Spark tile job over the same rows gives the same
tiles (exact IRs identical, floats within 1e-12, sketches with equal estimates).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robusta.engine.embedded.tiles import build_tiles
from robusta.plan.model import SpecPlan
from robusta.testing.reference import reference_value
from tests.engine.test_embedded_tiles import assert_same_tiles
from tests.engine.test_materialize import (
    Project,
    assert_close,
    events_by_key,
    finalize_one,
    make_project,
)

MIN = 60_000_000
BASE = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z: a day, hour and 5m boundary
TS = pa.timestamp("us", tz="UTC")
DDL = (
    "user_id STRING, item_id STRING, channel_id STRING, device STRING, dwell_seconds DOUBLE, "
    "is_click INT, event_type STRING, event_ts TIMESTAMP"
)
FIXTURES = [HealthCheck.function_scoped_fixture]  # module-scoped ones, reused safely
SIZES = {"1d": 1440 * MIN, "1h": 60 * MIN, "5m": 5 * MIN}

times = st.one_of(
    st.none(),
    st.builds(  # a boundary of some bucket, or one microsecond either side of it
        lambda n, size, nudge: BASE + n * size + nudge,
        st.integers(-3, 30),
        st.sampled_from([5 * MIN, 60 * MIN, 1440 * MIN]),
        st.sampled_from([0, 0, -1, 1]),
    ),
    st.integers(BASE - 2 * 1440 * MIN, BASE + 2 * 1440 * MIN),
)
event = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["hot", "hot", "hot", "u1", "u2", None]),
        "item_id": st.sampled_from(["i1", "i2", "i3", "", None]),
        "channel_id": st.sampled_from(["c1", "c2", None]),
        "device": st.sampled_from(["ios", "web", None]),
        "dwell_seconds": st.sampled_from([0.5, -1.5, 2.5, 0.0, 1e9, 3.25, None]),
        "event_type": st.sampled_from(["click", "view", None]),
        "event_ts": times,
    }
)
batches = st.lists(event, max_size=40).map(
    lambda rows: [*rows, dict(rows[0])] if rows else rows  # an exact duplicate: a tie
)


def query_rows(rows: list[dict[str, Any]]) -> pa.Table:
    """The spec query's rows for ``rows`` (what DuckDB or Spark hands the tiler)."""

    def column(name: str) -> list[Any]:
        return [r[name] for r in rows]

    clicks = [1 if r["event_type"] == "click" else 0 for r in rows]
    return pa.table(
        {
            "user_id": pa.array(column("user_id"), pa.string()),
            "item_id": pa.array(column("item_id"), pa.string()),
            "channel_id": pa.array(column("channel_id"), pa.string()),
            "device": pa.array(column("device"), pa.string()),
            "dwell_seconds": pa.array(column("dwell_seconds"), pa.float64()),
            "is_click": pa.array(clicks, pa.int32()),
            "event_type": pa.array(column("event_type"), pa.string()),
            "event_ts": pa.array(column("event_ts"), pa.int64()).cast(TS),
        }
    )


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> SpecPlan:
    project: Project = make_project(Path(tmp_path_factory.mktemp("contract")), engine="embedded")
    (spec,) = project.workspace.plan.specs
    return spec


def assert_tiles_equal_reference(events: pa.Table, plan: SpecPlan) -> None:
    for group in plan.groups:
        tiles, counts = build_tiles(events, plan, group)
        keys = [k.column for k in group.layout.keys]
        per_count = events_by_key(events, keys, "__count")
        expected = {
            (key, name, t - t % size)
            for key, values in per_count.items()
            for t, _ in values
            for name, size in SIZES.items()
        }
        starts = pc.cast(tiles.column("bucket_start"), pa.int64()).to_pylist()
        grains = tiles.column("granularity").to_pylist()
        found = [
            (tuple(tiles.column(k)[i].as_py() for k in keys), grains[i], starts[i])
            for i in range(tiles.num_rows)
        ]
        assert set(found) == expected and len(found) == len(expected)
        assert counts.events == events.num_rows
        for feature in group.features:
            per_key = events_by_key(events, keys, feature.input or "__count")
            for i, (key, grain, start) in enumerate(found):
                end = start + SIZES[grain]
                inside = [(t, v) for t, v in per_key[key] if start <= t < end]
                want = reference_value(feature.op.name, feature.op.params, inside, start, end)
                got = finalize_one(feature, tiles.column(feature.ir_column).slice(i, 1))
                assert_close(feature.op, got, want, [v for _, v in inside])


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES)
@given(rows=batches)
def test_embedded_tiles_equal_the_reference(plan: SpecPlan, rows: list[dict[str, Any]]) -> None:
    assert_tiles_equal_reference(query_rows(rows), plan)


@pytest.mark.spark
@settings(max_examples=8, deadline=None, suppress_health_check=FIXTURES)
@given(rows=batches.filter(bool))
def test_spark_tiles_equal_the_embedded_tiles(
    spark: Any, plan: SpecPlan, rows: list[dict[str, Any]]
) -> None:
    events = query_rows(rows)
    for group, theirs in spark_tiles(spark, plan, events):
        mine, _ = build_tiles(events, plan, group)
        assert_same_tiles(mine, theirs, group)


def spark_tiles(spark: Any, plan: SpecPlan, events: pa.Table) -> Iterator[tuple[Any, pa.Table]]:
    """Per tile group, the Spark tile job's tiles of ``events`` (the spec query's rows)."""
    from robusta.engine.spark.tiles import Range, TileJob

    view = "__contract_events"
    spark.createDataFrame(events.to_pandas(), schema=DDL).createOrReplaceTempView(view)
    for group in plan.groups:
        job = TileJob(spark, plan, group, Range(), events=view)
        try:
            yield group, job.tiles().toArrow()
        finally:
            job.release()


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(rows=batches)
def test_file_ordered_builds_hold_the_same_tiles(
    plan: SpecPlan, rows: list[dict[str, Any]]
) -> None:
    """A build led by file (key bucket, month), which the writer then stores without a
    gather, holds exactly the tiles of the plain build, and in the writer's file order."""
    from robusta.engine.embedded.tiles import finest_tiles
    from robusta.plan.open_tiles import CHANGED, advance

    events = query_rows(rows)
    for group in plan.groups:
        ordered, _ = build_tiles(events, plan, group)
        plain = advance(group, plan.hash, None, finest_tiles(events, plan, group).partial)
        keys = [*(k.column for k in group.layout.keys), "granularity", "bucket_start"]
        by = [(c, "ascending") for c in keys]
        assert ordered.sort_by(by).equals(
            plain.drop_columns([CHANGED]).select(ordered.column_names).sort_by(by)
        )
        month = pc.strftime(ordered.column("bucket_start"), "%Y%m")
        file_of = [
            f"{g}/{b}/{m}"
            for g, b, m in zip(
                ordered.column("granularity").to_pylist(),
                ordered.column("key_bucket").to_pylist(),
                month.to_pylist(),
                strict=True,
            )
        ]
        runs = [f for i, f in enumerate(file_of) if i == 0 or f != file_of[i - 1]]
        assert len(runs) == len(set(runs))  # each file's tiles are contiguous
