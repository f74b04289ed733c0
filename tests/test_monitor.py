"""Drop detection on recorded volumes (pure: no Spark, no store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robusta.api.monitor import Count, find_drops
from robusta.store.volumes import TOTAL

DAY = 86_400_000_000


def series(days: int, per_day: dict[tuple[str, str | None], list[int] | int]) -> list[Count]:
    out: list[Count] = []
    for (segment, value), counts in per_day.items():
        values = counts if isinstance(counts, list) else [counts] * days
        for day, n in enumerate(values):
            if n:
                out.append(("events", segment, value, day * DAY, DAY, n))
    return out


def test_a_segment_cut_to_zero_is_flagged_while_the_total_is_not() -> None:
    counts = series(
        8,
        {
            (TOTAL, None): [1000] * 7 + [960],
            ("country", "US"): [600] * 7 + [600],
            ("country", "IN"): [360] * 7 + [360],
            ("country", "NG"): [40] * 7 + [0],  # stopped: missing from the last bucket
        },
    )
    found = {(v.segment, v.value): v for v in find_drops(counts)}
    assert found[("country", "NG")].flagged and found[("country", "NG")].events == 0
    assert found[("country", "NG")].baseline == 40
    assert not found[(TOTAL, None)].flagged and found[(TOTAL, None)].ratio == 0.96
    assert not found[("country", "US")].flagged
    assert [v.bucket for v in found.values()] == ["1970-01-08T00:00:00+00:00"] * 4


def test_small_levels_and_earlier_buckets() -> None:
    counts = series(
        8,
        {
            (TOTAL, None): [100] * 8,
            ("device", "web"): [10] * 7 + [0],  # below min_events: noise, not flagged
            ("device", "ios"): [50, 50, 50, 50, 0, 50, 50, 50],
        },
    )
    found = {(v.segment, v.value): v for v in find_drops(counts, min_events=20)}
    assert not found[("device", "web")].flagged
    at_gap = {(v.segment, v.value): v for v in find_drops(counts, at=4 * DAY + 5, baseline=3)}
    assert at_gap[("device", "ios")].flagged and at_gap[("device", "ios")].events == 0
    assert not find_drops(counts, drop=0.0)[0].flagged  # drop 0 flags nothing


def test_streamed_batches_add_up_once(tmp_path: Path) -> None:
    """add_volumes: counts of one micro-batch are added once, however often it is replayed."""
    import pyarrow as pa

    from robusta.spec.model import OfflineConfig
    from robusta.store.catalog import open_catalog
    from robusta.store.volumes import VOLUMES_SCHEMA, VOLUMES_TABLE, add_volumes, volume_rows

    offline = OfflineConfig({"uri": f"sqlite:///{tmp_path / 'c.db'}"}, str(tmp_path / "w"), "m")

    def batch(counts: list[tuple[int, str, str | None, int]]) -> pa.Table:
        table = pa.table(
            {
                "bucket": pa.array([c[0] for c in counts], pa.int64()),
                "segment": [c[1] for c in counts],
                "value": pa.array([c[2] for c in counts], pa.string()),
                "events": pa.array([c[3] for c in counts], pa.int64()),
            }
        )
        return volume_rows("events", table, DAY)

    first = batch([(0, TOTAL, None, 5), (0, "device", "ios", 3), (0, "device", None, 2)])
    assert add_volumes(offline, "events", first, "s:0")
    assert not add_volumes(offline, "events", first, "s:0")  # a replay adds nothing
    second = batch([(0, TOTAL, None, 4), (DAY, TOTAL, None, 1)])
    assert add_volumes(offline, "events", second, "s:1")
    table = open_catalog(offline).load_table(f"m.{VOLUMES_TABLE}")
    snapshots = len(table.snapshots())
    # A replay is known from the table's mark, in O(1): no snapshot is listed (expired ones
    # could not be), for this batch or an earlier one.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(table), "snapshots", lambda _: pytest.fail("snapshots listed"))
        assert not add_volumes(offline, "events", second, "s:1")
        assert not add_volumes(offline, "events", first, "s:0")
    table = open_catalog(offline).load_table(f"m.{VOLUMES_TABLE}")
    assert len(table.snapshots()) == snapshots
    stored = table.scan().to_arrow()
    assert stored.schema.names == VOLUMES_SCHEMA.names
    got = {
        (r["segment"], r["value"], r["bucket_start"].day): r["events"] for r in stored.to_pylist()
    }
    assert got == {
        (TOTAL, None, 1): 9,
        ("device", "ios", 1): 3,
        ("device", "(null)", 1): 2,
        (TOTAL, None, 2): 1,
    }
