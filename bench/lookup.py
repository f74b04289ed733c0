"""Benchmark: online lookup latency, assembled at lookup time, embedded and Redis.

One spec with 5 ops (count, sum, max, last, approx_distinct) x 4 windows (1h, 1d, 7d, 30d) =
20 features over ``--keys`` keys (events over 30 days: 70% uniform, 30% Zipf-skewed). Tiles
are built in numpy (``robusta.testing.tiles``, defined like the Spark job's) and written as
the upload writes them, so the run needs no Spark. Each lookup is
``FeatureClient.get_features`` for random keys at the version pointer: one store read plus
window assembly of every feature.

Beside each figure, measured in the same run: the floor, one pipelined redis-py read of the
same records (and, for the embedded store, one LMDB read of them). Latencies are p50 / p99 /
p99.9 over ``--lookups`` calls.

    .venv/bin/python bench/lookup.py --keys 100000 --events 2000000
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pit import CONFIG as PIT_CONFIG  # the PIT benchmark's spec: 5 ops x 4 windows
from pit import SPEC
from rich.console import Console
from rich.table import Table

MIN = 60_000_000
DAY = 1440 * MIN
T0 = 1_717_200_000_000_000  # 2024-06-01 00:00 UTC
REDIS_URL = "redis://127.0.0.1:6379/0"
PREFIX = "robusta-bench:"
SPEC_NAME = "activity"
CONFIG = PIT_CONFIG + "online: {type: embedded, path: online}\n"
TARGETS = {  # (store, entities) -> (p50 ms, p99 ms) from the brief
    ("embedded", 1): (0.2, 1.0),
    ("redis", 1): (0.5, 2.0),
    ("embedded", 100): (None, 10.0),
    ("redis", 100): (None, 10.0),
}


def build(root: Path, keys: int, events: int, console: Console) -> tuple[Any, list[str], int]:
    """The project, its tiles written to both stores; returns (workspace, keys, pointer)."""
    from robusta.spec.model import OnlineConfig
    from robusta.store.online import SpecState, open_online_store
    from robusta.store.online.records import tile_records
    from robusta.testing.tiles import build_tiles
    from robusta.workspace import load_workspace

    (root / "feature_defs").mkdir(parents=True)
    (root / "feature_defs" / "activity.yaml").write_text(SPEC)
    (root / "robusta.yaml").write_text(CONFIG)
    workspace = load_workspace(root / "robusta.yaml").require_valid()
    [spec] = workspace.plan.specs
    [group] = spec.groups
    rng = np.random.default_rng(7)
    names = np.array([f"u{i:06d}" for i in range(keys)])
    # Every key active, a few hot: 70% of events uniform over the keys, 30% Zipf-skewed.
    skewed = (rng.zipf(1.3, events) - 1) % keys
    users = names[np.where(rng.random(events) < 0.7, rng.integers(0, keys, events), skewed)]
    ts = T0 + rng.integers(0, 30 * DAY, events)
    started = time.perf_counter()
    tiles = build_tiles(
        group,
        {"user_id": pa.array(users)},
        pa.array(ts, pa.int64()),
        {
            "amount": pa.array(np.round(rng.gamma(2.0, 20.0, events), 2)),
            "item_id": pa.array(np.char.add("i", rng.integers(0, 50_000, events).astype(str))),
        },
    )
    records = [(group.layout.table, k, v) for k, v in tile_records(group, tiles)]
    console.print(
        f"{events:,} events -> {tiles.num_rows:,} tiles, {len(records):,} keys "
        f"({time.perf_counter() - started:.0f} s)"
    )
    pointer = T0 + 30 * DAY
    state = SpecState(1, pointer, spec.hash, "assemble", T0 - DAY, pointer)
    for config in (
        OnlineConfig("embedded", {"path": str(root / "online")}),
        OnlineConfig("redis", {"url": REDIS_URL, "key_prefix": PREFIX}),
    ):
        with open_online_store(config, "bench", create=True) as store:
            store.drop(spec.name, 1)
            store.write(spec.name, 1, records)
            store.commit(spec.name, state)
    return workspace, [k for _, k, _ in records], pointer


def percentiles(samples: Sequence[float]) -> tuple[float, float, float]:
    ms = np.asarray(samples) * 1e3
    return tuple(float(np.percentile(ms, q)) for q in (50, 99, 99.9))  # type: ignore[return-value]


def timed(call: Callable[[], Any], repeat: int) -> list[float]:
    for _ in range(min(200, repeat)):
        call()  # warm up
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def lookups(
    client: Any, picks: list[list[dict[str, str]]], features: list[str], at: Any
) -> Callable[[], Any]:
    batches = iter(picks)
    return lambda: client.get_features(next(batches), features, at)


def pipelined_reads(raw: Any, ids: list[list[bytes]]) -> Callable[[], Any]:
    """The floor: one pipelined redis-py read of the same records."""
    batches = iter(ids)

    def read() -> Any:
        pipe = raw.pipeline(transaction=False)
        for key in next(batches):
            pipe.get(key)
        return pipe.execute()

    return read


def main() -> None:
    parser = argparse.ArgumentParser(description="online lookup latency benchmark")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--lookups", type=int, default=5_000)
    args = parser.parse_args()
    console = Console(width=150)
    root = Path(tempfile.mkdtemp(prefix="robusta-lookup-"))
    try:
        run(root, args, console)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for batch in client.scan_iter(match=PREFIX + "*", count=5_000):
            client.unlink(batch)


def run(root: Path, args: argparse.Namespace, console: Console) -> None:
    import redis

    from robusta.serving import FeatureClient
    from robusta.spec.durations import from_micros
    from robusta.spec.model import OnlineConfig
    from robusta.store.online import open_online_store
    from robusta.store.online.base import record_id

    workspace, keys, pointer = build(root, args.keys, args.events, console)
    features = [o.name for o in workspace.plan.specs[0].outputs]
    table_name = workspace.plan.specs[0].groups[0].layout.table
    at = from_micros(pointer)
    rng = random.Random(3)
    raw = redis.Redis.from_url(REDIS_URL)
    stores = {
        "embedded": open_online_store(
            OnlineConfig("embedded", {"path": str(root / "online")}), "bench"
        ),
        "redis": open_online_store(
            OnlineConfig("redis", {"url": REDIS_URL, "key_prefix": PREFIX}), "bench"
        ),
    }
    results = Table(
        title=f"Lookup latency, ms: 1 spec, 20 features (5 ops x 4 windows) assembled at lookup, "
        f"{len(keys):,} keys, {args.lookups:,} lookups per row"
    )
    for column in (
        "store",
        "entities",
        "p50",
        "p99",
        "p99.9",
        "floor p50",
        "floor p99",
        "p50 / floor",
        "target p50 / p99",
        "met",
    ):
        results.add_column(column, justify="right")
    for (kind, n), (want50, want99) in TARGETS.items():
        client = FeatureClient(workspace, stores[kind])
        repeat = args.lookups if n == 1 else max(200, args.lookups // 10)
        picks = [[{"USER_ID": rng.choice(keys)} for _ in range(n)] for _ in range(repeat + 200)]
        ours = percentiles(timed(lookups(client, picks, features, at), repeat))
        ids = [
            [PREFIX.encode() + record_id(SPEC_NAME, 1, table_name, e["USER_ID"]) for e in p]
            for p in picks
        ]
        floor = percentiles(timed(pipelined_reads(raw, ids), repeat))
        met = (want50 is None or ours[0] <= want50) and ours[1] <= want99
        results.add_row(
            kind,
            str(n),
            *(f"{v:.3f}" for v in ours),
            f"{floor[0]:.3f}",
            f"{floor[1]:.3f}",
            f"{ours[0] / floor[0]:.1f}x",
            f"{want50 or '-'} / {want99}",
            "yes" if met else "NO",
        )
    console.print(results)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    console.print(f"peak RSS {peak:,} MiB (tiles built in this process)")
    command = f"bench/lookup.py --keys {args.keys} --events {args.events}"
    console.print(f"command: {command} --lookups {args.lookups}")


if __name__ == "__main__":
    main()
