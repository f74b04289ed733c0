"""Benchmark: online lookup latency, head values and assembled tiles, embedded and Redis.

Two data sets (``--data``):

- ``retail`` (the product's lookup bar): the real Online Retail log
  (``../shared/data/online-retail``, 406,829 events with a customer over a year) and
  ``bench/pit.py``'s full spec: all 14 ops (count, sum, avg, min, max, variance, stddev,
  first, last, first_n, last_n, top_k, approx_distinct, approx_quantile) over windows 1h ..
  90d and lifetime, 33 features per customer. Tiles are built as a user builds them:
  ``materialize`` on the embedded engine, then ``upload`` to each store (records from the
  horizon, lifetime prefix tiles);
- ``generated``: the earlier runs' spec (count, sum, max, last, approx_distinct x 1h, 1d, 7d,
  30d = 20 features; ``--spec full`` for the 14-op one) over ``--keys`` keys (events over 30
  days: 70% uniform, 30% Zipf-skewed), tiles built in numpy (``robusta.testing.tiles``) and
  written as the upload writes them, so the run needs no Spark.

Each lookup is ``FeatureClient.get_features`` for random keys at the version pointer, on two
rows: one store read of the values the upload wrote at its pointer (head values: what lookups
at or after the pointer read until a stream moves it), and one store read of the tiles plus
window assembly of every feature (``heads=False``: lookups at earlier times, streamed specs).
Beside each, measured in the same run on the same keys: the floor, the store's raw read of the
same records (``OnlineStore.read``: one LMDB transaction, or one Redis round trip; no
decoding, no assembly). A last table runs the tiles through the value cache with
Zipf-drawn keys. Before timing counts, the
per-key path (up to ``PER_KEY_MAX`` entities) is checked equal, bit for bit, to the vectorized
one on a sample of keys. Latencies are p50 / p99 / p99.9 over ``--lookups`` calls.

    .venv/bin/python bench/lookup.py --data retail --lookups 5000
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pit import CONFIG as PIT_CONFIG  # the PIT benchmark's project and specs
from pit import FIVE, FULL, load_average, spec_yaml
from rich.console import Console
from rich.table import Table

MIN = 60_000_000
DAY = 1440 * MIN
T0 = 1_717_200_000_000_000  # 2024-06-01 00:00 UTC
REDIS_URL = "redis://127.0.0.1:6379/0"
PREFIX = "robusta-bench:"
SPECS = {"five": FIVE, "full": FULL}
CONFIG = PIT_CONFIG + "online: {type: embedded, path: online}\n"
RETAIL = Path(__file__).resolve().parents[2] / "shared" / "data" / "online-retail" / "by-day"
RETAIL_CONFIG = f"""\
project: bench
feature_defs: feature_defs
sources:
  retail_events:
    format: csv
    path: {RETAIL}
    options: {{header: "true"}}
    schema: "InvoiceNo STRING, StockCode STRING, Description STRING, Quantity INT, InvoiceDate TIMESTAMP, UnitPrice DOUBLE, CustomerID DOUBLE, Country STRING"
entities:
  USER_ID: {{type: string}}
offline:
  catalog: {{type: sql, uri: "sqlite:///catalog.db"}}
  warehouse: warehouse
  namespace: bench
online: {{type: embedded, path: online}}
"""  # noqa: E501
# The full spec's columns from the retail log: a customer's purchase lines.
RETAIL_QUERY = (
    "query: SELECT CAST(CAST(CustomerID AS BIGINT) AS STRING) AS user_id, "
    "Quantity * UnitPrice AS amount, StockCode AS item_id, InvoiceDate AS ts "
    "FROM retail_events WHERE CustomerID IS NOT NULL"
)
TARGETS = {  # (store, entities) -> (p50 ms, p99 ms) from the brief
    ("embedded", 1): (0.2, 1.0),
    ("redis", 1): (0.5, 2.0),
    ("embedded", 100): (None, 10.0),
    ("redis", 100): (None, 10.0),
}


@dataclass(frozen=True)
class Built:
    """A project whose tiles are in both stores."""

    workspace: Any
    keys: list[str]
    pointer: int
    stores: dict[str, Any]  # kind -> OnlineStore
    title: str


def store_configs(root: Path) -> dict[str, Any]:
    from robusta.spec.model import OnlineConfig

    return {
        "embedded": OnlineConfig("embedded", {"path": str(root / "online")}),
        "redis": OnlineConfig("redis", {"url": REDIS_URL, "key_prefix": PREFIX}),
    }


def build_generated(root: Path, args: argparse.Namespace, console: Console) -> Built:
    """Generated events, tiles built in numpy, written to both stores."""
    from robusta.jobs.upload import value_records_at
    from robusta.store.online import SpecState, open_online_store
    from robusta.store.online.base import heads_table
    from robusta.store.online.records import tile_records
    from robusta.testing.tiles import build_tiles
    from robusta.workspace import load_workspace

    keys, events = args.keys, args.events
    (root / "feature_defs").mkdir(parents=True)
    (root / "feature_defs" / "activity.yaml").write_text(spec_yaml(SPECS[args.spec]))
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
    keys_count = len(records)
    pointer = T0 + 30 * DAY
    # as an upload writes them: the tiles, and every key's values at the pointer (heads)
    heads = value_records_at(group, tiles, pointer)
    records += [(heads_table(group.layout.table), k, v) for k, v in heads]
    console.print(
        f"{events:,} events -> {tiles.num_rows:,} tiles, {keys_count:,} keys "
        f"({time.perf_counter() - started:.0f} s)"
    )
    state = SpecState(1, pointer, spec.hash, "assemble", T0 - DAY, pointer, pointer)
    stores = {}
    for kind, config in store_configs(root).items():
        store = open_online_store(config, "bench", create=True)
        store.drop(spec.name, 1)
        store.write(spec.name, 1, records)
        store.commit(spec.name, state)
        stores[kind] = store
    title = f"{keys_count:,} generated keys ({events:,} events over 30 days)"
    return Built(workspace, [k for _, k, _ in records[:keys_count]], pointer, stores, title)


def build_retail(root: Path, args: argparse.Namespace, console: Console) -> Built:
    """The retail log materialized (embedded engine) and uploaded to both stores."""
    import duckdb

    from robusta.jobs.materialize import materialize
    from robusta.jobs.upload import upload
    from robusta.spec.durations import to_micros
    from robusta.store.online import open_online_store
    from robusta.workspace import load_workspace

    (root / "feature_defs").mkdir(parents=True)
    spec = spec_yaml(SPECS[args.spec]).splitlines()
    spec[2], spec[3] = RETAIL_QUERY, "timestamp: ts"
    (root / "feature_defs" / "activity.yaml").write_text("\n".join(spec) + "\n")
    (root / "robusta.yaml").write_text(RETAIL_CONFIG)
    workspace = load_workspace(root / "robusta.yaml").require_valid()
    started = time.perf_counter()
    [report] = materialize(workspace, engine="embedded")
    console.print(f"materialize: {report.to_json()} ({time.perf_counter() - started:.1f} s)")
    stores, pointer = {}, 0
    for kind, config in store_configs(root).items():
        started = time.perf_counter()
        store = open_online_store(config, "bench", create=True)
        [done] = upload(workspace, store=store).specs
        console.print(f"upload to {kind}: {done} ({time.perf_counter() - started:.1f} s)")
        pointer = to_micros(_parse_iso(done.pointer))
        stores[kind] = store
    rows = duckdb.connect().execute(
        f"SELECT DISTINCT CAST(CAST(CustomerID AS BIGINT) AS VARCHAR) FROM read_csv("
        f"'{RETAIL}/*.csv', header = true, types = {{'CustomerID': 'DOUBLE'}}) "
        "WHERE CustomerID IS NOT NULL ORDER BY 1"
    ).fetchall()
    keys = [r[0] for r in rows]
    title = f"retail log, {len(keys):,} customers"
    return Built(workspace, keys, pointer, stores, title)


def _parse_iso(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00"))


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


def store_reads(store: Any, spec: str, wanted: list[list[tuple[str, str]]]) -> Callable[[], Any]:
    """The floor: the store's read of the same records, nothing decoded."""
    batches = iter(wanted)
    return lambda: store.read(spec, next(batches))


def check_paths(client: Any, keys: list[str], features: list[str], at: Any) -> int:
    """The per-key path (one entity per call) equals the vectorized one (all at once),
    bit for bit, on ``keys``; returns the number of values compared."""
    from robusta.serving.client import PER_KEY_MAX
    from robusta.testing.compare import bits

    assert len(keys) > PER_KEY_MAX
    entities = [{"USER_ID": k} for k in keys]
    together = client.get_features(entities, features, at)
    for entity, want in zip(entities, together, strict=True):
        [got] = client.get_features([entity], features, at)
        for name in features:
            assert bits(got.values[name]) == bits(want.values[name]), (entity, name)
    return len(keys) * len(features)


def cached_lookups(built: Built, args: argparse.Namespace, features: list[str], at: Any) -> Table:
    """Single-entity lookups of tiles through the client's value cache (the default), keys
    drawn Zipf-skewed as live traffic repeats them (hot users): hits skip the decode and the
    assembly; the hit rate says how many. A fresh client per store."""
    from robusta.serving import FeatureClient

    rng = np.random.default_rng(11)
    out = Table(
        title=f"Single-entity lookups with the value cache (default size), keys Zipf({ZIPF}) "
        f"over {len(built.keys):,}, {args.lookups:,} lookups per row, ms"
    )
    for column in ("store", "p50", "p99", "p99.9", "hit rate", "hit p50", "miss p50"):
        out.add_column(column, justify="right")
    for kind, store in built.stores.items():
        client = FeatureClient(built.workspace, store, heads=False)  # the cache before tiles
        ranks = (rng.zipf(ZIPF, args.lookups) - 1) % len(built.keys)
        order = rng.permutation(len(built.keys))
        picks = [[{"USER_ID": built.keys[order[r]]}] for r in ranks]
        samples, hit = [], []
        for entities in picks:
            before = _hits(client)
            started = time.perf_counter()
            client.get_features(entities, features, at)
            samples.append(time.perf_counter() - started)
            hit.append(_hits(client) > before)
        hits = np.asarray(hit)
        ms = np.asarray(samples) * 1e3
        p50, p99, p999 = percentiles(samples)
        out.add_row(
            kind,
            f"{p50:.3f}",
            f"{p99:.3f}",
            f"{p999:.3f}",
            f"{hits.mean():.0%}",
            f"{np.median(ms[hits]):.3f}" if hits.any() else "-",
            f"{np.median(ms[~hits]):.3f}" if (~hits).any() else "-",
        )
    return out


ZIPF = 1.2


def _hits(client: Any) -> int:
    return sum(g.cache.hits for groups in client._groups.values() for g in groups)


def main() -> None:
    parser = argparse.ArgumentParser(description="online lookup latency benchmark")
    parser.add_argument("--data", choices=["generated", "retail"], default="generated")
    parser.add_argument("--spec", choices=sorted(SPECS), help="default: full on retail")
    parser.add_argument("--keys", type=int, default=100_000, help="generated data only")
    parser.add_argument("--events", type=int, default=2_000_000, help="generated data only")
    parser.add_argument("--lookups", type=int, default=5_000)
    args = parser.parse_args()
    args.spec = args.spec or ("full" if args.data == "retail" else "five")
    console = Console(width=150)
    root = Path(tempfile.mkdtemp(prefix="robusta-lookup-"))
    built = None
    try:
        build = build_retail if args.data == "retail" else build_generated
        built = build(root, args, console)
        run(built, args, console)
    finally:
        for store in built.stores.values() if built else ():
            store.close()
        shutil.rmtree(root, ignore_errors=True)
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for batch in client.scan_iter(match=PREFIX + "*", count=5_000):
            client.unlink(batch)


def run(built: Built, args: argparse.Namespace, console: Console) -> None:
    from robusta.serving import FeatureClient
    from robusta.spec.durations import from_micros
    from robusta.store.online.base import heads_table

    workspace, keys = built.workspace, built.keys
    [spec] = workspace.plan.specs
    features = [o.name for o in spec.outputs]
    table_name = spec.groups[0].layout.table
    at = from_micros(built.pointer)
    rng = random.Random(3)
    sample = rng.sample(keys, min(len(keys), 200))
    compared = check_paths(FeatureClient(workspace, built.stores["embedded"]), sample, features, at)
    console.print(f"per-key path equals the vectorized one: {compared:,} values, bit for bit")
    ops = len({f.op.name for g in spec.groups for f in g.features})
    results = Table(
        title=f"Lookup latency, ms: 1 spec, {len(features)} features ({ops} ops) assembled at "
        f"lookup, {built.title}, {args.lookups:,} lookups per row"
    )
    for column in (
        "store",
        "entities",
        "records read",
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
        repeat = args.lookups if n == 1 else max(200, args.lookups // 10)
        picks = [[{"USER_ID": rng.choice(keys)} for _ in range(n)] for _ in range(repeat + 200)]
        # head values: what the upload wrote at its pointer (lookups at or after it, until a
        # stream moves it); tiles: assembled at lookup (earlier times, streamed specs). The
        # value cache is off in both (it has its own table).
        for heads in (True, False):
            client = FeatureClient(workspace, built.stores[kind], cache_size=0, heads=heads)
            ours = percentiles(timed(lookups(client, picks, features, at), repeat))
            table = heads_table(table_name) if heads else table_name
            wanted = [[(table, e["USER_ID"]) for e in p] for p in picks]
            floor = percentiles(timed(store_reads(built.stores[kind], spec.name, wanted), repeat))
            met = (want50 is None or ours[0] <= want50) and ours[1] <= want99
            results.add_row(
                kind,
                str(n),
                "head values" if heads else "tiles",
                *(f"{v:.3f}" for v in ours),
                f"{floor[0]:.3f}",
                f"{floor[1]:.3f}",
                f"{ours[0] / floor[0]:.1f}x",
                f"{want50 or '-'} / {want99}",
                "yes" if met else "NO",
            )
    console.print(results)
    console.print(cached_lookups(built, args, features, at))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    console.print(f"peak RSS {peak:,} MiB (tiles built in this process); load {load_average()}")
    command = f"bench/lookup.py --data {args.data} --spec {args.spec}"
    if args.data == "generated":
        command += f" --keys {args.keys} --events {args.events}"
    console.print(f"command: {command} --lookups {args.lookups}")


if __name__ == "__main__":
    main()
