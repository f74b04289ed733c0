"""Deterministic synthetic engagement events: the data the demo, tests and benchmarks run on.

The generator models a content app's event log (users viewing, clicking and sharing items that
belong to channels) with the properties that make feature computation hard in practice:

- **Skewed keys.** Users start sessions and items are picked with bounded Zipf weights
  (``p(rank) ∝ rank^-a`` over ``1..N``), so a few hot keys hold thousands of events. Hot keys stress
  shuffles, tile sizes and lookup latency; the rank -> id mapping is shuffled so hot ids are not
  simply the smallest ones.
- **Sessions.** A user's events come in bursts a few seconds to minutes apart: a session opens with
  a view, later events are mostly views with clicks and shares of the last viewed item. Bursts
  put many events of one key in one 5-minute bucket.
- **A daily cycle.** Sessions start more often in the evening (UTC) than at night, so buckets are
  unevenly filled and some are empty.
- **Dirty input.** Exact duplicate rows (same ``event_id`` and every field), late arrivals
  (``ingest_ts`` up to ``max_lateness`` after ``event_ts``), null user ids and null event times,
  event times exactly on 5-minute boundaries (the ``end`` of a window excludes them) and ties
  (several events of one user sharing a timestamp). Every correctness test of the platform has
  to survive these.

Rows come in arrival order (sorted by ``ingest_ts``) as a streaming source would see them. The
output depends only on :class:`GeneratorConfig`; each aspect draws from its own child random
stream, so the same config always gives the same table. Generation is vectorised with numpy
(no per-event Python loop), so tens of millions of events are practical for benchmarks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

__all__ = [
    "EVENT_SCHEMA",
    "EVENT_SCHEMA_DDL",
    "GeneratorConfig",
    "generate_events",
    "write_events",
]

EVENT_SCHEMA_DDL = (
    "event_id STRING, user_id STRING, item_id STRING, channel_id STRING, event_type STRING, "
    "dwell_seconds DOUBLE, device STRING, country STRING, event_ts TIMESTAMP, ingest_ts TIMESTAMP"
)

_TS = pa.timestamp("us", tz="UTC")
EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("channel_id", pa.string()),
        ("event_type", pa.string()),
        ("dwell_seconds", pa.float64()),
        ("device", pa.string()),
        ("country", pa.string()),
        ("event_ts", _TS),
        ("ingest_ts", _TS),
    ]
)
"""The Arrow schema of :func:`generate_events`, matching :data:`EVENT_SCHEMA_DDL`."""

Int64Array = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_US = 1_000_000
_DAY_US = 86_400 * _US
_HOUR_US = 3_600 * _US
_BUCKET_US = 300 * _US  # the finest default granularity (5m)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TS_TEXT = "%Y-%m-%d %H:%M:%S"  # Arrow renders %S with the microsecond fraction

# Relative session starts per UTC hour: quiet at night, a peak in the evening.
_HOUR_WEIGHTS = np.array(
    [0.45, 0.30, 0.22, 0.18, 0.18, 0.22, 0.35, 0.55, 0.75, 0.85, 0.90, 0.95,
     1.00, 1.00, 0.95, 0.95, 1.00, 1.10, 1.30, 1.50, 1.60, 1.50, 1.15, 0.75]
)  # fmt: skip

_EVENT_TYPES = ("view", "click", "share")
_LATER_TYPE_P = (0.65, 0.27, 0.08)  # event types after a session's opening view
_DEVICES = ("ios", "android", "web")
_DEVICE_P = (0.45, 0.35, 0.20)
_DEVICE_LOYALTY = 0.9  # share of a user's events on their usual device
_COUNTRIES = ("US", "IN", "BR", "GB", "DE", "FR", "JP", "MX", "CA", "NG")
_COUNTRY_P = (0.30, 0.18, 0.10, 0.08, 0.07, 0.06, 0.06, 0.06, 0.05, 0.04)
_CHANNEL_ZIPF_A = 0.8  # channel sizes are mildly skewed

_MEAN_SESSION = 6.0  # events per session (geometric)
_MAX_SESSION = 50
_GAP_MEDIAN_S, _GAP_SIGMA, _GAP_MIN_S, _GAP_MAX_S = 15.0, 1.2, 0.2, 600.0
_TIE_RATE = 0.04  # share of in-session gaps that are zero: same user, same timestamp
_BOUNDARY_RATE = 0.01  # share of event times floored to a 5-minute boundary
_VIEW_DWELL = (6.0, 0.9)  # lognormal (median seconds, sigma)
_CLICK_DWELL = (40.0, 1.0)
_DELAY_MEDIAN_S, _DELAY_MIN_S, _DELAY_MAX_S = 2.0, 0.05, 30.0  # on-time ingestion delay
_LATE_MIN = timedelta(minutes=1)  # late events arrive at least this late (capped by max)


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate; equal configs give equal tables.

    ``days * events_per_day`` distinct events are generated, plus about ``duplicate_rate`` of
    them again as exact duplicates. Rates are per-event probabilities.
    """

    seed: int = 7
    users: int = 2_000
    items: int = 5_000
    channels: int = 50
    days: int = 14
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    events_per_day: int = 20_000
    zipf_a: float = 1.0
    duplicate_rate: float = 0.01
    late_rate: float = 0.02
    max_lateness: timedelta = timedelta(hours=6)
    null_rate: float = 0.005

    def __post_init__(self) -> None:
        for name in ("users", "items", "channels", "days", "events_per_day"):
            if getattr(self, name) < 1:
                raise ValueError(f"GeneratorConfig.{name} must be at least 1")
        for name in ("duplicate_rate", "late_rate", "null_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"GeneratorConfig.{name} must be within [0, 1], got {rate}")
        if not (math.isfinite(self.zipf_a) and self.zipf_a >= 0):
            raise ValueError(f"GeneratorConfig.zipf_a must be >= 0, got {self.zipf_a}")
        if self.start.tzinfo is None:
            raise ValueError("GeneratorConfig.start must be timezone-aware (UTC)")
        if self.max_lateness <= timedelta(0):
            raise ValueError("GeneratorConfig.max_lateness must be positive")


def generate_events(config: GeneratorConfig) -> pa.Table:
    """Generate the event table for ``config``, in arrival (``ingest_ts``) order."""
    streams = np.random.SeedSequence(config.seed).spawn(8)
    r_sess, r_time, r_user, r_gap, r_item, r_type, r_attr, r_fault = (
        np.random.default_rng(s) for s in streams
    )
    n = config.days * config.events_per_day
    start_us = (config.start - _EPOCH) // timedelta(microseconds=1)
    end_us = start_us + config.days * _DAY_US

    # Sessions, ordered by start time so event ids roughly follow time.
    lengths = _session_lengths(r_sess, n)
    n_sessions = len(lengths)
    starts = np.sort(_session_starts(r_time, n_sessions, start_us, config.days))
    session_user = _zipf_keys(r_user, config.users, config.zipf_a, n_sessions)

    # Expand to events: position in session and offset from the session start.
    offsets = np.cumsum(lengths) - lengths
    session_of = np.repeat(np.arange(n_sessions), lengths)
    pos = np.arange(n, dtype=np.int64) - offsets[session_of]
    gaps = _lognormal_us(r_gap, _GAP_MEDIAN_S, _GAP_SIGMA, _GAP_MIN_S, _GAP_MAX_S, n)
    gaps[(pos == 0) | (r_gap.random(n) < _TIE_RATE)] = 0
    elapsed = np.cumsum(gaps)
    elapsed -= elapsed[offsets][session_of]
    # A session running past the end ends at its drawn start instead, keeping event_ts < end.
    duration = elapsed[offsets + lengths - 1]
    starts = np.where(starts + duration >= end_us, starts - duration, starts)
    event_ts = starts[session_of] + elapsed
    on_boundary = r_time.random(n) < _BOUNDARY_RATE
    floored = event_ts - np.mod(event_ts, _BUCKET_US)
    # (may put an event before its predecessor in the session, as clock skew would)
    event_ts = np.where(on_boundary & (floored >= start_us), floored, event_ts)

    # What happens: a view opens each session; clicks and shares act on the last viewed item.
    type_idx = np.searchsorted(np.cumsum(_LATER_TYPE_P), r_type.random(n), side="right")
    type_idx = np.minimum(type_idx, len(_EVENT_TYPES) - 1)
    type_idx[pos == 0] = 0
    is_view = type_idx == 0
    last_view = np.maximum.accumulate(np.where(is_view, np.arange(n), 0))
    event_item = _zipf_keys(r_item, config.items, config.zipf_a, n)[last_view]
    item_channel = _zipf_keys(r_item, config.channels, _CHANNEL_ZIPF_A, config.items)
    dwell = np.where(
        is_view,
        _lognormal(r_type, *_VIEW_DWELL, n),
        _lognormal(r_type, *_CLICK_DWELL, n),
    )
    dwell = np.maximum(np.round(dwell, 3), 0.001)  # millisecond precision, always positive
    no_dwell = type_idx == 2

    # Who: each user has a country and a usual device.
    user_device = _choice(r_attr, _DEVICE_P, config.users)
    user_country = _choice(r_attr, _COUNTRY_P, config.users)
    event_user = session_user[session_of]
    device = np.where(
        r_attr.random(n) < _DEVICE_LOYALTY, user_device[event_user], _choice(r_attr, _DEVICE_P, n)
    )

    # Arrival: a few seconds after the event, or late for late_rate of events.
    delay = _lognormal_us(r_fault, _DELAY_MEDIAN_S, 1.0, _DELAY_MIN_S, _DELAY_MAX_S, n)
    max_late_us = config.max_lateness // timedelta(microseconds=1)
    min_late_us = min(_LATE_MIN // timedelta(microseconds=1), max_late_us)
    late_delay = min_late_us + (r_fault.random(n) * (max_late_us - min_late_us)).astype(np.int64)
    ingest_ts = event_ts + np.where(r_fault.random(n) < config.late_rate, late_delay, delay)
    null_user = r_fault.random(n) < config.null_rate
    null_ts = r_fault.random(n) < config.null_rate

    # Exact duplicates repeat whole rows; then rows go in arrival order (duplicates adjacent).
    rows = np.repeat(np.arange(n), 1 + (r_fault.random(n) < config.duplicate_rate))
    rows = rows[np.argsort(ingest_ts[rows], kind="stable")]

    user, item = event_user[rows], event_item[rows]
    columns = [
        pc.binary_join_element_wise("e_", pc.cast(pa.array(rows), pa.string()), ""),
        _names("u_", config.users, 6).take(pa.array(user, mask=null_user[rows])),
        _names("i_", config.items, 6).take(pa.array(item)),
        _names("ch_", config.channels, 3).take(pa.array(item_channel[item])),
        pa.array(_EVENT_TYPES).take(pa.array(type_idx[rows])),
        pa.array(dwell[rows], mask=no_dwell[rows]),
        pa.array(_DEVICES).take(pa.array(device[rows])),
        pa.array(_COUNTRIES).take(pa.array(user_country[user])),
        pa.array(event_ts[rows], type=_TS, mask=null_ts[rows]),
        pa.array(ingest_ts[rows], type=_TS),
    ]
    return pa.Table.from_arrays(columns, schema=EVENT_SCHEMA)


def write_events(
    table: pa.Table,
    out_dir: Path,
    fmt: Literal["csv", "parquet", "json"],
    by: Literal["day", "none"] = "day",
) -> list[Path]:
    """Write ``table`` to ``out_dir``: one ``YYYY-MM-DD.<ext>`` per ingest day or ``events.<ext>``.

    CSV has a header; CSV and JSON (one object per line) render timestamps as UTC text
    ``YYYY-MM-DD HH:MM:SS.ffffff`` without an offset, which Spark reads back with
    :data:`EVENT_SCHEMA_DDL` when its session time zone is UTC. Returns the paths written, in
    day order.
    """
    if fmt not in ("csv", "parquet", "json"):
        raise ValueError(f"unknown format {fmt!r}; use csv, parquet or json")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if by == "none":
        parts = [("events", table)]
    elif by == "day":
        parts = _split_by_ingest_day(table)
    else:
        raise ValueError(f"unknown split {by!r}; use day or none")
    paths = []
    for stem, part in parts:
        path = out_dir / f"{stem}.{fmt}"
        if fmt == "parquet":
            pq.write_table(part, path, coerce_timestamps="us")
        elif fmt == "csv":
            pacsv.write_csv(_timestamps_as_text(part), path)
        else:
            _write_json_lines(part, path)
        paths.append(path)
    return paths


# --- sampling helpers ---


def _zipf_keys(rng: np.random.Generator, n_keys: int, a: float, size: int) -> Int64Array:
    """Key indices with P(rank r) ∝ r^-a over ranks 1..n_keys, ranks mapped to shuffled keys."""
    cdf = np.cumsum(np.arange(1, n_keys + 1, dtype=np.float64) ** -a)
    cdf /= cdf[-1]
    ranks = np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_keys - 1)
    return rng.permutation(n_keys).astype(np.int64)[ranks]


def _choice(rng: np.random.Generator, p: tuple[float, ...], size: int) -> Int64Array:
    idx = np.searchsorted(np.cumsum(p) / sum(p), rng.random(size), side="right")
    return np.minimum(idx, len(p) - 1).astype(np.int64)


def _lognormal(rng: np.random.Generator, median: float, sigma: float, size: int) -> FloatArray:
    return rng.lognormal(math.log(median), sigma, size)


def _lognormal_us(
    rng: np.random.Generator, median_s: float, sigma: float, lo_s: float, hi_s: float, size: int
) -> Int64Array:
    seconds = np.clip(_lognormal(rng, median_s, sigma, size), lo_s, hi_s)
    return (seconds * _US).astype(np.int64)


def _session_lengths(rng: np.random.Generator, total: int) -> Int64Array:
    """Geometric session lengths (capped) whose sum is exactly ``total``."""
    chunks: list[Int64Array] = []
    drawn = 0
    while drawn < total:
        size = int((total - drawn) / _MEAN_SESSION * 1.1) + 16
        chunk = np.minimum(rng.geometric(1 / _MEAN_SESSION, size), _MAX_SESSION).astype(np.int64)
        chunks.append(chunk)
        drawn += int(chunk.sum())
    lengths = np.concatenate(chunks)
    ends = np.cumsum(lengths)
    last = int(np.searchsorted(ends, total))  # first session reaching the total
    lengths = lengths[: last + 1]
    lengths[-1] -= int(ends[last]) - total
    return lengths


def _session_starts(rng: np.random.Generator, size: int, start_us: int, days: int) -> Int64Array:
    """Start times in [start, start + days) following the daily cycle of ``_HOUR_WEIGHTS``."""
    day = rng.integers(0, days, size, dtype=np.int64)
    hour = _choice(rng, tuple(_HOUR_WEIGHTS), size)
    in_hour = rng.integers(0, _HOUR_US, size, dtype=np.int64)
    midnight = start_us - start_us % _DAY_US
    ts = midnight + day * _DAY_US + hour * _HOUR_US + in_hour
    # A start that is not midnight: times before it wrap to the same time of day on the last day.
    return np.where(ts < start_us, ts + days * _DAY_US, ts)


def _names(prefix: str, count: int, digits: int) -> pa.Array:
    width = max(digits, len(str(count - 1)))
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(count)], pa.string())


# --- writing helpers ---


def _split_by_ingest_day(table: pa.Table) -> list[tuple[str, pa.Table]]:
    if "ingest_ts" not in table.column_names:
        raise ValueError('by="day" needs an ingest_ts column')
    ingest = pc.cast(_as_utc(table.column("ingest_ts")), pa.int64())
    if ingest.null_count:
        raise ValueError('by="day" needs ingest_ts on every row')
    day_ix = np.asarray(ingest.to_numpy(), dtype=np.int64) // _DAY_US
    parts = []
    for d in np.unique(day_ix):
        name = (_EPOCH + timedelta(days=int(d))).strftime("%Y-%m-%d")
        parts.append((name, table.filter(pa.array(day_ix == d))))
    return parts


def _as_utc(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.cast(column, _TS)  # naive timestamps are taken as UTC


def _timestamps_as_text(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            text = pc.strftime(_as_utc(table.column(i)), format=_TS_TEXT)
            table = table.set_column(i, field.name, text)
    return table


def _write_json_lines(table: pa.Table, path: Path) -> None:
    """JSON lines built column-wise with Arrow kernels; the line buffers are written as is."""
    with path.open("wb") as out:
        for batch in _timestamps_as_text(table).to_batches(max_chunksize=200_000):
            if batch.num_rows == 0:
                continue
            members = [
                pc.binary_join_element_wise(json.dumps(name) + ":", _json_values(col), "")
                for name, col in zip(batch.schema.names, batch.columns, strict=True)
            ]
            body = pc.binary_join_element_wise(*members, ",")
            _write_string_buffer(pc.binary_join_element_wise("{", body, "}\n", ""), out)


def _json_values(col: pa.Array) -> pa.Array:
    """Each value as JSON text; nulls (and non-finite floats) as ``null``."""
    kind = col.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if pc.any(pc.match_substring_regex(col, r"[\x00-\x1f]")).as_py():
            text = pa.array([None if v is None else json.dumps(v) for v in col.to_pylist()])
        else:
            escaped = pc.replace_substring(pc.replace_substring(col, "\\", "\\\\"), '"', '\\"')
            text = pc.binary_join_element_wise('"', escaped, '"', "")
    elif pa.types.is_floating(kind):
        finite = pc.is_finite(col)
        text = pc.if_else(finite, pc.cast(col, pa.string()), pa.scalar(None, pa.string()))
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        text = pc.cast(col, pa.string())
    else:
        raise TypeError(f"cannot write {kind} columns as JSON")
    return pc.fill_null(pc.cast(text, pa.string()), "null")


def _write_string_buffer(lines: pa.Array, out: BinaryIO) -> None:
    """Write the concatenated values of a string array straight from its data buffer."""
    lines = pc.cast(lines, pa.string())
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[
        lines.offset : lines.offset + len(lines) + 1
    ]
    data = lines.buffers()[2]
    chunk = memoryview(data)[int(offsets[0]) : int(offsets[-1])]
    out.write(chunk)
