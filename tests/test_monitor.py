"""Drop detection on recorded volumes (pure: no Spark, no store)."""

from __future__ import annotations

from robusta.monitor import TOTAL, Count, find_drops

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
