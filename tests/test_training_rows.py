"""Training rows from any reasonable writer: every time unit, tz-aware or naive, dates and
ISO strings all reach the engine as the same ``timestamp[us, UTC]``; bad rows get one
message before any engine starts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robusta.api.training_rows import (
    TIME_TYPE,
    TrainingInputError,
    normalize_times,
    stage_rows,
    to_utc_micros,
)
from robusta.spec.model import OfflineConfig

OFFLINE = OfflineConfig({}, "unused", "robusta")
TIMES = [
    datetime(2024, 1, 14, 10, 0, 0, 123456, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch: floors
    datetime(2024, 2, 29, 0, 0, tzinfo=UTC),
]


MICROS = [(t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) for t in TIMES]
PER_TICK = {"s": 1_000_000, "ms": 1_000, "us": 1}


def _rows(unit: str, tz: str | None) -> pa.Table:
    """TIMES in ``unit`` (floored), tz-aware or naive (the UTC wall time)."""
    ticks = [m * 1_000 if unit == "ns" else m // PER_TICK[unit] for m in MICROS]
    ts = pa.array(ticks, pa.int64()).cast(pa.timestamp(unit, tz=tz))
    return pa.table({"USER_ID": ["a", "b", None], "ts": ts})


def _expected(unit: str) -> pa.ChunkedArray:
    """What a time of that unit can hold: coarser units floor the microseconds."""
    per = PER_TICK.get(unit, 1)
    return pa.chunked_array([pa.array([m // per * per for m in MICROS]).cast(TIME_TYPE)])


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", None])
def test_every_unit_and_zone_reaches_utc_micros(unit: str, tz: str | None) -> None:
    rows = _rows(unit, tz)
    got = normalize_times(rows, ["ts"]).column("ts")
    assert got.type == TIME_TYPE
    assert got.combine_chunks().equals(_expected(unit).combine_chunks())


def test_nulls_stay_null_and_dates_are_midnight_utc() -> None:
    days = pa.chunked_array([pa.array([datetime(2024, 1, 14).date(), None], pa.date32())])
    got = to_utc_micros(days, "ts").to_pylist()
    assert got == [datetime(2024, 1, 14, tzinfo=UTC), None]


def test_iso_strings_with_offsets_and_naive_as_utc() -> None:
    texts = pa.chunked_array(
        [
            [
                "2024-01-14 10:00:00+00:00",
                "2024-01-14T12:00:00+02:00",
                "2024-01-14T10:00:00Z",
                "2024-01-14 10:00:00",
                "2024-01-14",
                None,
            ]
        ]
    )
    got = to_utc_micros(texts, "ts").to_pylist()
    ten = datetime(2024, 1, 14, 10, tzinfo=UTC)
    assert got == [ten, ten, ten, ten, datetime(2024, 1, 14, tzinfo=UTC), None]
    with pytest.raises(TrainingInputError, match='holds "yesterday"'):
        to_utc_micros(pa.chunked_array([["2024-01-14", "yesterday"]]), "ts")


def test_other_types_are_refused_with_what_to_give() -> None:
    with pytest.raises(TrainingInputError, match="give timestamps, dates or ISO-8601"):
        to_utc_micros(pa.chunked_array([[1.5]]), "ts")


def _writers(tmp_path: Path) -> dict[str, Path]:
    """The same rows written by pandas (ns), Polars (us and ms), DuckDB and pyarrow (s)."""
    import duckdb
    import pandas as pd
    import polars as pl

    paths: dict[str, Path] = {}
    times = pd.to_datetime(["2024-01-14 10:00:00", "2024-01-15 00:00:00"], utc=True)
    frame = pd.DataFrame({"USER_ID": ["a", "b"], "ts": times})
    frame.to_parquet(paths.setdefault("pandas", tmp_path / "pandas.parquet"))
    frame.assign(ts=frame.ts.dt.tz_localize(None)).to_parquet(
        paths.setdefault("pandas-naive", tmp_path / "naive.parquet")
    )
    polars = pl.from_pandas(frame)
    for unit in ("us", "ms"):
        path = paths.setdefault(f"polars-{unit}", tmp_path / f"polars-{unit}.parquet")
        polars.with_columns(pl.col("ts").dt.cast_time_unit(unit)).write_parquet(path)
    path = paths.setdefault("duckdb", tmp_path / "duckdb.parquet")
    relation = duckdb.sql(
        "SELECT * FROM (VALUES ('a', TIMESTAMPTZ '2024-01-14 10:00:00+00'), "
        "('b', TIMESTAMPTZ '2024-01-15 00:00:00+00')) AS t(USER_ID, ts)"
    )
    assert relation is not None
    relation.write_parquet(str(path))
    seconds = pa.table(
        {"USER_ID": ["a", "b"], "ts": pa.array([1705226400, 1705276800], pa.timestamp("s"))}
    )
    pq.write_table(seconds, paths.setdefault("seconds", tmp_path / "seconds.parquet"))
    csv = paths.setdefault("csv", tmp_path / "rows.csv")
    csv.write_text("USER_ID,ts\na,2024-01-14T12:00:00+02:00\nb,2024-01-15\n")
    return paths


def _staged_times(rows: object) -> list[datetime]:
    staged, kinds = stage_rows(rows, OFFLINE, ["ts"])
    assert kinds["ts"] == "time" and kinds["USER_ID"] == "text"
    if staged.table is not None:
        return list(staged.table.column("ts").to_pylist())
    assert staged.path is not None  # Spark reads it as it is: a us/ms UTC timestamp
    column = pq.read_table(staged.path).column("ts")
    assert column.type.tz is not None and column.type.unit in ("ms", "us")
    return list(to_utc_micros(column, "ts").to_pylist())


def test_files_from_every_writer_give_the_same_times(tmp_path: Path) -> None:
    want = [datetime(2024, 1, 14, 10, tzinfo=UTC), datetime(2024, 1, 15, tzinfo=UTC)]
    for writer, path in _writers(tmp_path).items():
        assert _staged_times(str(path)) == want, writer
    import pandas as pd
    import polars as pl

    frame = pd.read_parquet(tmp_path / "pandas.parquet")
    assert _staged_times(frame) == want
    assert _staged_times(pl.from_pandas(frame)) == want
    eastern = frame.assign(ts=frame.ts.dt.tz_convert(timezone(timedelta(hours=-5))))
    assert _staged_times(eastern) == want


def test_nanosecond_parquet_is_normalized_not_handed_to_spark(tmp_path: Path) -> None:
    path = _writers(tmp_path)["pandas"]
    staged, _ = stage_rows(str(path), OFFLINE, ["ts"])
    assert staged.path is None and staged.table is not None
    assert staged.table.schema.field("ts").type == TIME_TYPE


def test_missing_inputs_get_one_message(tmp_path: Path) -> None:
    with pytest.raises(TrainingInputError, match="no training rows at"):
        stage_rows(str(tmp_path / "nope.parquet"), OFFLINE, ["ts"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingInputError, match="no Parquet files under"):
        stage_rows(str(tmp_path / "empty"), OFFLINE, ["ts"])
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(TrainingInputError, match="cannot read training rows"):
        stage_rows(str(tmp_path / "junk.parquet"), OFFLINE, ["ts"])
    with pytest.raises(TrainingInputError, match="not supported"):
        stage_rows(42, OFFLINE, ["ts"])
