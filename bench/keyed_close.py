"""Benchmark: the close of buckets holding every key of the embedded stream's keyed state.

A throwaway project (the spec of ``bench/freshness.py``: count and sum per user, granularities
[1d, 1h, 5m]) and a keyed state (``robusta.jobs.stream.keyed``) in a temporary folder. The
first batch puts one event of each of ``--keys`` users in the first 5-minute bucket of a day,
as the first file of ``bench/freshness.py --active-keys N`` does; a second batch of
``--events`` events of users among them lands in the hour's last bucket. Then the close of
the hour and the close of the day run as a micro-batch runs them
(``batch.closing_tiles``: the keys from the index, their stored tiles, the closing ones; then
written as the version's closing file, what the offline step commits), the day's also
applied to the keyed state (which drops the closed day).

Each phase prints its seconds and peak resident memory (VmHWM, reset before each phase;
LMDB's pages read through its memory map count too). ``--profile`` runs the hour close under
cProfile and prints the top functions.

    PYTHONPATH=. .venv/bin/python bench/keyed_close.py --keys 1000000
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
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
    from robusta.plan.model import SpecPlan, TileGroup

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


def batch(
    state: KeyedState, plan: SpecPlan, group: TileGroup, rows: pa.Table, version: int
) -> pa.Table:
    """A micro-batch's touched path (read the pairs, merge), applied as ``version``."""
    from robusta.engine.embedded.tiles import finest_tiles
    from robusta.plan.open_tiles import advance

    partial = finest_tiles(rows, plan, group).partial
    starts = partial.append_column("bucket_start", partial.column("__bucket"))
    stored = state.read(group, state.day_keys(group, starts))
    touched = advance(group, plan.hash, stored, partial)
    state.apply(version, {group.layout.table: touched}, None)
    return touched


def close(
    state: KeyedState,
    group: TileGroup,
    touched: pa.Table | None,
    bounds: tuple[int, int],
    folder: Path,
) -> int:
    """The close of ``(before, after]`` as a batch runs it; the number of closing tiles."""
    from robusta.jobs.stream.batch import closing_tiles, write_version_tiles

    closing = closing_tiles(state, group, touched, *bounds)
    write_version_tiles(closing, folder, group)
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
    parser.add_argument("--events", type=int, default=2000, help="events of the second batch")
    parser.add_argument("--profile", action="store_true", help="cProfile the hour close")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="robusta-keyed-close-"))
    try:
        plan = plan_of(root)
        (group,) = plan.groups
        state = KeyedState(root / "keyed", plan)
        rng = np.random.default_rng(1)
        print(f"{args.keys:,} keys in one 5-minute bucket")
        print(f"{'phase':<34}{'seconds':>9}{'peak MiB':>10}{'RSS MiB':>9}")
        first = events(np.arange(args.keys), T0, rng)
        phase("first batch (every key)", lambda: batch(state, plan, group, first, 0))
        users = rng.integers(0, args.keys, args.events)
        later = events(users, T0 + 55 * MIN, rng)
        touched = phase("batch of --events", lambda: batch(state, plan, group, later, 1))
        hour = (T0 + 55 * MIN, T0 + 60 * MIN)
        run = lambda: close(state, group, touched, hour, root / "hour")  # noqa: E731
        if args.profile:
            profiler = cProfile.Profile()
            tiles = phase("hour close (profiled)", lambda: profiler.runcall(run))
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        else:
            tiles = phase("hour close", run)
        print(f"  {tiles:,} closing tiles")
        day = (T0 + DAY - 5 * MIN, T0 + DAY)
        tiles = phase("day close", lambda: close(state, group, None, day, root / "day"))
        print(f"  {tiles:,} closing tiles")
        phase("day dropped (apply)", lambda: state.apply(2, {}, T0 + DAY))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
