"""The synthetic event generator: determinism, schema, realism and the deliberate edge cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

from robusta.demo.datagen import (
    EVENT_SCHEMA,
    EVENT_SCHEMA_DDL,
    GeneratorConfig,
    generate_events,
    write_events,
)

DEFAULT = GeneratorConfig()
SMALL = GeneratorConfig(days=3, events_per_day=2_000, null_rate=0.02)
ARROW_TYPES = {
    "STRING": pa.string(),
    "DOUBLE": pa.float64(),
    "TIMESTAMP": pa.timestamp("us", "UTC"),
}
MINUTE_US = 60_000_000
BUCKET_US = 5 * MINUTE_US


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return generate_events(DEFAULT)


@pytest.fixture(scope="module")
def small() -> pa.Table:
    return generate_events(SMALL)


def _micros(column: pa.ChunkedArray) -> npt.NDArray[np.int64]:
    """Timestamps as int64 microseconds; the caller filters nulls first."""
    return np.asarray(pc.cast(column, pa.int64()).to_numpy(), dtype=np.int64)


def _lag_us(table: pa.Table) -> npt.NDArray[np.int64]:
    valid = table.filter(pc.is_valid(table.column("event_ts")))
    return _micros(valid.column("ingest_ts")) - _micros(valid.column("event_ts"))


# --- determinism and shape ---


def test_same_config_gives_identical_table(events: pa.Table) -> None:
    assert generate_events(DEFAULT).equals(events)


def test_different_seed_gives_different_data(small: pa.Table) -> None:
    other = generate_events(GeneratorConfig(**{**SMALL.__dict__, "seed": SMALL.seed + 1}))
    assert not other.equals(small)
    assert other.column("user_id").to_pylist()[:50] != small.column("user_id").to_pylist()[:50]


def test_schema_matches_ddl(events: pa.Table) -> None:
    declared = [part.split() for part in EVENT_SCHEMA_DDL.split(", ")]
    assert events.column_names == [name for name, _ in declared]
    assert [f.type for f in events.schema] == [ARROW_TYPES[kind] for _, kind in declared]
    assert events.schema.equals(EVENT_SCHEMA)


def test_one_row_per_event_plus_duplicates(events: pa.Table, small: pa.Table) -> None:
    distinct = pc.count_distinct(events.column("event_id")).as_py()
    assert distinct == DEFAULT.days * DEFAULT.events_per_day
    assert small.num_rows > SMALL.days * SMALL.events_per_day
    # Duplicates repeat whole rows: dropping identical rows leaves one per event id.
    deduplicated = small.group_by(small.column_names, use_threads=False).aggregate([])
    assert deduplicated.num_rows == SMALL.days * SMALL.events_per_day


def test_rows_in_arrival_order(events: pa.Table) -> None:
    assert events.column("ingest_ts").null_count == 0
    assert np.all(np.diff(_micros(events.column("ingest_ts"))) >= 0)


def test_event_times_within_range(events: pa.Table) -> None:
    ts = events.column("event_ts")
    start = DEFAULT.start
    assert pc.min(ts).as_py() >= start
    assert pc.max(ts).as_py() < start + timedelta(days=DEFAULT.days)


def test_start_off_midnight_stays_within_range() -> None:
    start = datetime(2024, 3, 10, 13, 27, 11, tzinfo=UTC)
    table = generate_events(GeneratorConfig(days=2, events_per_day=1_000, start=start))
    assert pc.min(table.column("event_ts")).as_py() >= start
    assert pc.max(table.column("event_ts")).as_py() < start + timedelta(days=2)


def test_ids_and_values(events: pa.Table) -> None:
    patterns = {
        "event_id": r"^e_\d+$",
        "user_id": r"^u_\d{6}$",
        "item_id": r"^i_\d{6}$",
        "channel_id": r"^ch_\d{3}$",
    }
    for column, pattern in patterns.items():
        values = events.column(column).drop_null()
        assert pc.all(pc.match_substring_regex(values, pattern)).as_py(), column
    assert set(events.column("device").to_pylist()) == {"ios", "android", "web"}
    assert 3 <= len(set(events.column("country").to_pylist())) <= 12
    assert events.column("country").null_count == 0


def test_each_item_belongs_to_one_channel(events: pa.Table) -> None:
    per_item = events.group_by("item_id").aggregate([("channel_id", "count_distinct")])
    assert pc.max(per_item.column("channel_id_count_distinct")).as_py() == 1


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="timezone"):
        GeneratorConfig(start=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="late_rate"):
        GeneratorConfig(late_rate=1.5)
    with pytest.raises(ValueError, match="users"):
        GeneratorConfig(users=0)


# --- realism ---


def test_keys_are_zipf_skewed(events: pa.Table) -> None:
    for column, keys in (("user_id", DEFAULT.users), ("item_id", DEFAULT.items)):
        counts = np.sort(np.asarray(pc.value_counts(events.column(column).drop_null()).field(1)))
        top = counts[::-1][: max(1, keys // 100)]
        assert top.sum() / events.num_rows > 0.15, column
        assert top[0] > 1_000, column


def test_events_cluster_in_sessions(events: pa.Table) -> None:
    valid = events.filter(pc.field("user_id").is_valid() & pc.field("event_ts").is_valid())
    ordered = valid.sort_by([("user_id", "ascending"), ("event_ts", "ascending")])
    users = ordered.column("user_id").to_numpy(zero_copy_only=False)
    gaps = np.diff(_micros(ordered.column("event_ts")))[users[1:] == users[:-1]]
    # Most of a user's events follow the previous one within minutes, not hours.
    assert np.mean(gaps <= 10 * MINUTE_US) > 0.6
    assert np.median(gaps) < 5 * MINUTE_US


def test_daily_cycle_peaks_in_the_evening(events: pa.Table) -> None:
    hours = np.asarray(pc.hour(events.column("event_ts")).drop_null())
    per_hour = np.bincount(hours, minlength=24)
    assert per_hour[18:22].sum() > 3 * per_hour[2:6].sum()


def test_event_types_and_dwell(events: pa.Table) -> None:
    types = dict(zip(*pc.value_counts(events.column("event_type")).flatten(), strict=True))
    counts = {str(k): int(v.as_py()) for k, v in types.items()}
    assert set(counts) == {"view", "click", "share"}
    assert counts["view"] > counts["click"] > counts["share"] > 0
    is_share = pc.equal(events.column("event_type"), "share")
    dwell = events.column("dwell_seconds")
    assert pc.all(pc.equal(pc.is_null(dwell), is_share)).as_py()
    assert pc.min(dwell).as_py() > 0


# --- deliberate edge cases ---


def test_exact_duplicates_present(events: pa.Table) -> None:
    duplicates = events.num_rows - pc.count_distinct(events.column("event_id")).as_py()
    assert 0.5 * DEFAULT.duplicate_rate < duplicates / events.num_rows < 2 * DEFAULT.duplicate_rate


def test_late_events_present(events: pa.Table) -> None:
    lag = _lag_us(events)
    assert lag.min() >= 0
    assert lag.max() <= DEFAULT.max_lateness // timedelta(microseconds=1)
    late = np.mean(lag > MINUTE_US)
    assert 0.5 * DEFAULT.late_rate < late < 2 * DEFAULT.late_rate
    assert np.median(lag) < 10_000_000  # on-time events arrive within seconds


def test_nulls_present(events: pa.Table) -> None:
    n = events.num_rows
    user_nulls = events.column("user_id").null_count
    ts_nulls = events.column("event_ts").null_count
    for nulls in (user_nulls, ts_nulls):
        assert 0.5 * DEFAULT.null_rate < nulls / n < 2 * DEFAULT.null_rate
    both = pc.and_(pc.is_null(events.column("user_id")), pc.is_null(events.column("event_ts")))
    assert pc.sum(both).as_py() < min(user_nulls, ts_nulls)  # drawn independently


def test_bucket_boundaries_present(events: pa.Table) -> None:
    ts = _micros(events.column("event_ts").drop_null())
    assert np.mean(ts % BUCKET_US == 0) > 0.005


def test_ties_within_a_user(events: pa.Table) -> None:
    valid = events.filter(pc.field("user_id").is_valid() & pc.field("event_ts").is_valid())
    per_ts = valid.group_by(["user_id", "event_ts"]).aggregate([("event_id", "count_distinct")])
    assert pc.sum(pc.greater(per_ts.column("event_id_count_distinct"), 1)).as_py() > 10


# --- writing ---


def test_write_parquet_by_day(small: pa.Table, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "parquet"
    paths = write_events(small, out, "parquet")
    assert paths == sorted(paths)
    assert [p.name for p in paths[:2]] == ["2024-01-01.parquet", "2024-01-02.parquet"]
    for path in paths:
        days = pc.strftime(pq.read_table(path).column("ingest_ts"), format="%Y-%m-%d")
        assert set(days.to_pylist()) == {path.stem}
    assert pa.concat_tables(pq.read_table(p) for p in paths).equals(small)


def test_write_single_file(small: pa.Table, tmp_path: Path) -> None:
    paths = write_events(small, tmp_path, "parquet", by="none")
    assert paths == [tmp_path / "events.parquet"]
    assert pq.read_table(paths[0]).equals(small)


def test_write_csv_round_trip(small: pa.Table, tmp_path: Path) -> None:
    paths = write_events(small, tmp_path, "csv")
    assert paths[0].read_text().splitlines()[0].split(",")[0] == '"event_id"'
    # The text has no offset: read it as naive timestamps, then declare it UTC.
    naive = pa.schema(
        [
            f.with_type(pa.timestamp("us")) if pa.types.is_timestamp(f.type) else f
            for f in EVENT_SCHEMA
        ]
    )
    options = pacsv.ConvertOptions(column_types=naive, strings_can_be_null=True)
    read = pa.concat_tables(pacsv.read_csv(p, convert_options=options) for p in paths)
    assert read.cast(EVENT_SCHEMA).equals(small)
    assert read.column("user_id").null_count == small.column("user_id").null_count > 0


def test_write_json_round_trip(small: pa.Table, tmp_path: Path) -> None:
    paths = write_events(small, tmp_path, "json", by="day")
    first = paths[0].read_text().splitlines()[0]
    assert first.startswith('{"event_id":"e_') and first.endswith("}")
    assert '"event_ts":"2024-01-01 ' in first or '"event_ts":null' in first
    options = pajson.ParseOptions(explicit_schema=EVENT_SCHEMA)
    read = pa.concat_tables(pajson.read_json(p, parse_options=options) for p in paths)
    assert read.equals(small)
    assert read.column("event_ts").null_count == small.column("event_ts").null_count > 0
