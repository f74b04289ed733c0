"""Benchmark: the close of buckets holding every key of the embedded stream's keyed state.

A throwaway project (the spec of ``bench/freshness.py``: count and sum per user, granularities
[1d, 1h, 5m]) and a keyed state (``robusta.jobs.stream.keyed``) in a temporary folder, fed as
``bench/freshness.py --active-keys N`` feeds it: the first micro-batch puts one event of each
of ``--keys`` users in the first 5-minute bucket of a day, and each later one ``--events``
events of users among them in the next bucket, closing the bucket before. A batch here is
the keyed-state work of one (``micro_batch``: the touched pairs read and merged, the closing
tiles as ``batch.closing_tiles`` finds them, the version's files written, the version
applied), without the query, the Iceberg commit and the online write. Timed: the first
batch, the median of the ten 5-minute batches after it, the batch that closes the hour
(every key's hour tile) and one that closes the day (every key's day tile; the day dropped).

Each phase prints its seconds and peak resident memory (VmHWM, reset before each phase;
LMDB's pages read through its memory map count too). ``--no-closes`` stops before the hour
closes; ``--profile`` runs the hour close under cProfile and prints the top functions.

    PYTHONPATH=. .venv/bin/python bench/keyed_close.py --keys 1000000
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import statistics
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from robusta.jobs.stream.keyed import KeyedState
    from robusta.plan.model import SpecPlan

MIN = 60_000_000
DAY = 24 * 60 * MIN
T0 = 1_717_200_000_000_000  # 2024-06-01 00:00 UTC
SPEC = """\
name: activity
owner: bench
query: |
  SELECT user_id, amount, ts FROM events
timestamp: ts
granularities: [1d, 1h, 5m]
features:
  n_events: {op: count, windows: [1h, lifetime], group_by_selectors: {user_id: USER_ID}}
  spend: {op: sum, input: amount, windows: [1h, lifetime], group_by_selectors: {user_id: USER_ID}}
"""
CONFIG = """\
project: keyed_close
sources:
  events:
    format: parquet
    path: landing
    schema: "user_id STRING, amount DOUBLE, ts TIMESTAMP"
entities:
  USER_ID: {type: string}
"""
T = TypeVar("T")


def events(users: np.ndarray, start: int, rng: np.random.Generator) -> pa.Table:
    """One event of each of ``users`` in the 5-minute bucket at ``start``."""
    return pa.table(
        {
            "user_id": pa.array([f"u{k}" for k in users.tolist()], pa.string()),
            "amount": pa.array(rng.random(len(users)) * 10, pa.float64()),
            "ts": pa.array(start + rng.integers(0, 5 * MIN, len(users)), pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
        }
    )


def plan_of(root: Path) -> SpecPlan:
    from robusta.workspace import load_workspace

    (root / "feature_defs").mkdir()
    (root / "landing").mkdir()
    (root / "feature_defs" / "activity.yaml").write_text(SPEC)
    (root / "robusta.yaml").write_text(textwrap.dedent(CONFIG))
    (plan,) = load_workspace(root / "robusta.yaml").require_valid().plan.specs
    return plan


def micro_batch(
    state: KeyedState,
    plan: SpecPlan,
    rows: pa.Table | None,
    version: int,
    bounds: tuple[int | None, int],
    folder: Path,
) -> int:
    """Version ``version`` as a micro-batch computes and applies it (keyed-state work only:
    the touched pairs read and merged, the closing tiles, the version's files, the apply);
    the number of closing tiles."""
    from robusta.engine.embedded.tiles import finest_tiles
    from robusta.jobs.stream.batch import closing_tiles, write_version_tiles
    from robusta.plan.open_tiles import advance, open_only

    (group,) = plan.groups
    before, after = bounds
    touched = None
    if rows is not None:
        partial = finest_tiles(rows, plan, group).partial
        starts = partial.append_column("bucket_start", partial.column("__bucket"))
        stored = state.read(group, state.day_keys(group, starts))
        if stored is not None:
            stored = open_only(stored, group, before)
        touched = advance(group, plan.hash, stored, partial)
    closing = closing_tiles(state, group, touched, before, after)
    files = folder / f"version-{version}"
    files.mkdir()
    write_version_tiles(touched, files / "touched", group)
    write_version_tiles(closing, files / "closing", group)
    state.apply(version, {} if touched is None else {group.layout.table: touched}, after)
    shutil.rmtree(files)
    return 0 if closing is None else closing.num_rows


def phase(name: str, run: Callable[[], T]) -> T:
    """``run()`` timed, with the peak resident memory it reached."""
    reset = _reset_peak()
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    peak = f"{_status('VmHWM'):>10.0f}" if reset else f"{'-':>10}"
    print(f"{name:<34}{seconds:>9.2f}{peak}{_status('VmRSS'):>9.0f}", flush=True)
    return result


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status(field: str) -> float:
    """A ``/proc/self/status`` memory field in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    from robusta.jobs.stream.keyed import KeyedState

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000, help="keys in the first bucket")
    parser.add_argument("--events", type=int, default=2000, help="events of each later batch")
    parser.add_argument(
        "--closes", action=argparse.BooleanOptionalAction, default=True, help="the hour and day"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the hour close")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="robusta-keyed-close-"))
    try:
        plan = plan_of(root)
        state = KeyedState(root / "keyed", plan)
        rng = np.random.default_rng(1)
        print(f"{args.keys:,} keys in one 5-minute bucket, later batches of {args.events:,} events")
        print(f"{'phase':<34}{'seconds':>9}{'peak MiB':>10}{'RSS MiB':>9}")
        first = events(np.arange(args.keys), T0, rng)
        bounds: tuple[int | None, int] = (None, T0 + 5 * MIN)
        phase("first batch (every key)", lambda: micro_batch(state, plan, first, 0, bounds, root))
        seconds = []
        for i in range(1, 11):  # each closes its own bucket
            rows = events(rng.integers(0, args.keys, args.events), T0 + i * 5 * MIN, rng)
            started = time.perf_counter()
            micro_batch(state, plan, rows, i, (T0 + i * 5 * MIN, T0 + (i + 1) * 5 * MIN), root)
            seconds.append(time.perf_counter() - started)
        print(f"{'5-minute batches (median of 10)':<34}{statistics.median(seconds):>9.2f}")
        if not args.closes:
            return
        rows = events(rng.integers(0, args.keys, args.events), T0 + 55 * MIN, rng)
        hour = (T0 + 55 * MIN, T0 + 60 * MIN)
        run = lambda: micro_batch(state, plan, rows, 11, hour, root)  # noqa: E731
        if args.profile:
            profiler = cProfile.Profile()
            tiles = phase("hour close (profiled)", lambda: profiler.runcall(run))
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        else:
            tiles = phase("hour close batch", run)
        print(f"  {tiles:,} closing tiles")
        day = (T0 + 60 * MIN, T0 + DAY)  # no events: every bucket of the day closes
        tiles = phase(
            "day close batch (day dropped)", lambda: micro_batch(state, plan, None, 12, day, root)
        )
        print(f"  {tiles:,} closing tiles")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
