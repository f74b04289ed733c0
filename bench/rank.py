"""Benchmark: ranking requests, one user and N candidate items, on both online stores.

Three specs of 20 features each, every operator among them, windows 1h to 90d and lifetime:
keyed by the user, by the item, and by both (crosses). Events (Zipf-skewed users and items
over 90 days) become tiles in numpy (``robusta.testing.tiles``) written as the upload writes
them (tiles and head values), so no Spark runs. A request is ``FeatureClient.rank(user,
items, specs)`` at the pointer: per spec one store read of the head values the upload wrote
at its pointer or, on a second row (``heads=False``), of the tiles, then the vectorized
assembly of every window. Beside it, measured in the same run, the floor: the same three
store reads alone. Latencies are p50 / p99 over ``--requests`` calls, each for a random user
and ``--items`` random items (a tenth of them items the user had events with, so crosses
have tiles).

    .venv/bin/python bench/rank.py --users 20000 --items-total 50000 --events 2000000 --items 500
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from lookup import REDIS_URL, percentiles
from pit import DAY, T0
from rich.console import Console
from rich.table import Table

# name -> (op, input, params, windows): 20 outputs, every operator.
FEATURES: dict[str, tuple[str, str | None, str, list[str]]] = {
    "n": ("count", None, "", ["1h", "1d", "7d", "30d", "90d"]),
    "spend": ("sum", "amount", "", ["1d", "30d"]),
    "spend_avg": ("avg", "amount", "", ["7d"]),
    "low": ("min", "amount", "", ["30d"]),
    "top": ("max", "amount", "", ["lifetime"]),
    "spend_var": ("variance", "amount", "", ["30d"]),
    "spend_sd": ("stddev", "amount", "", ["90d"]),
    "first_other": ("first", "{other}", "", ["lifetime"]),
    "last_other": ("last", "{other}", "", ["1d"]),
    "first_others": ("first_n", "{other}", "{n: 3}", ["lifetime"]),
    "recent_others": ("last_n", "{other}", "{n: 5}", ["7d"]),
    "top_others": ("top_k", "{other}", "{k: 3}", ["30d"]),
    "others": ("approx_distinct", "{other}", "", ["7d", "90d"]),
    "spend_q": ("approx_quantile", "amount", "{q: [0.5]}", ["30d"]),
}
SPECS = {  # spec -> (feature prefix, selectors, the categorical input)
    "users": ("u", "{user_id: USER_ID}", "item_id"),
    "items": ("i", "{item_id: ITEM_ID}", "user_id"),
    "pairs": ("ui", "{user_id: USER_ID, item_id: ITEM_ID}", "channel"),
}
CONFIG = """\
project: bench
feature_defs: feature_defs
sources:
  events: {format: parquet, path: events, schema: "user_id STRING, item_id STRING, channel STRING, amount DOUBLE, ts TIMESTAMP"}
entities:
  USER_ID: {type: string}
  ITEM_ID: {type: string}
offline:
  catalog: {type: sql, uri: "sqlite:///catalog.db"}
  warehouse: warehouse
  namespace: bench
online: {type: embedded, path: online}
"""  # noqa: E501
PREFIX = "robusta-bench-rank:"  # its own: other benchmarks clear theirs when they end
TARGETS = {"embedded": 15.0, "redis": 25.0}  # p99 ms, 1 user + 500 items


def spec_yaml(name: str) -> str:
    prefix, selectors, other = SPECS[name]
    lines = [
        f"name: {name}",
        "query: SELECT user_id, item_id, channel, amount, ts FROM events",
        "timestamp: ts",
        "granularities: [1d, 1h, 5m]",
        "features:",
    ]
    for feature, (op, column, params, windows) in FEATURES.items():
        parts = [f"op: {op}"]
        if column:
            parts.append(f"input: {column.format(other=other)}")
        if params:
            parts.append(f"params: {params}")
        parts.append(f"windows: [{', '.join(windows)}]")
        parts.append(f"group_by_selectors: {selectors}")
        if "," in selectors:
            parts.append("primary_selector: user_id")
        lines.append(f"  {prefix}_{feature}: {{{', '.join(parts)}}}")
    return "\n".join(lines) + "\n"


def build(root: Path, args: argparse.Namespace) -> tuple[np.ndarray, int]:
    """The project and its tiles in both stores; returns (events, pointer). Runs in a
    process of its own (``built``), so the memory it takes to build is not held while
    requests are timed (held, it pushed the embedded store's pages out of memory)."""
    from robusta.jobs.upload import value_records_at
    from robusta.spec.model import OnlineConfig
    from robusta.store.online import SpecState, open_online_store
    from robusta.store.online.base import heads_table
    from robusta.store.online.records import tile_records
    from robusta.testing.tiles import build_tiles
    from robusta.workspace import load_workspace

    (root / "feature_defs").mkdir(parents=True)
    for name in SPECS:
        (root / "feature_defs" / f"{name}.yaml").write_text(spec_yaml(name))
    (root / "robusta.yaml").write_text(CONFIG)
    workspace = load_workspace(root / "robusta.yaml").require_valid()
    console = Console(width=150)
    rng = np.random.default_rng(11)
    n = args.events
    users = (rng.zipf(1.2, n) - 1) % args.users
    items = (rng.zipf(1.2, n) - 1) % args.items_total
    columns = {
        "user_id": pa.array(np.char.add("u", users.astype(str))),
        "item_id": pa.array(np.char.add("i", items.astype(str))),
        "channel": pa.array(np.char.add("c", rng.integers(0, 40, n).astype(str))),
        "amount": pa.array(np.round(rng.gamma(2.0, 20.0, n), 2)),
    }
    ts = pa.array(T0 + rng.integers(0, 90 * DAY, n), pa.int64())
    pointer = T0 + 90 * DAY
    stores = [
        OnlineConfig("embedded", {"path": str(root / "online")}),
        OnlineConfig("redis", {"url": REDIS_URL, "key_prefix": PREFIX}),
    ]
    for spec in workspace.plan.specs:
        started = time.perf_counter()
        [group] = spec.groups
        keys = {k.column: columns[k.column] for k in group.layout.keys}
        tiles = build_tiles(group, keys, ts, columns)
        records = [(group.layout.table, k, v) for k, v in tile_records(group, tiles)]
        keys_count = len(records)
        # as an upload writes them: the tiles, and every key's values at the pointer (heads)
        heads = value_records_at(group, tiles, pointer)
        records += [(heads_table(group.layout.table), k, v) for k, v in heads]
        state = SpecState(1, pointer, spec.hash, "assemble", T0 - DAY, pointer, pointer)
        for config in stores:
            with open_online_store(config, "bench", create=True) as store:
                store.drop(spec.name, 1)
                store.write(spec.name, 1, records)
                store.commit(spec.name, state)
        console.print(
            f"{spec.name}: {tiles.num_rows:,} tiles, {keys_count:,} keys "
            f"({time.perf_counter() - started:.0f} s)"
        )
    return np.stack([users, items]), pointer


def built(root: Path, args: argparse.Namespace) -> tuple[Any, np.ndarray, int]:
    """:func:`build` in a child process; returns (workspace, events, pointer)."""
    from robusta.workspace import load_workspace

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pairs, pointer = pool.submit(build, root, args).result()
    return load_workspace(root / "robusta.yaml").require_valid(), pairs, pointer


def requests(pairs: np.ndarray, args: argparse.Namespace) -> list[tuple[dict[str, str], list[str]]]:
    """(user, items) per request: a tenth of the items from the user's own events."""
    rng = np.random.default_rng(3)
    out = []
    for _ in range(args.requests):
        user = int(pairs[0][rng.integers(0, pairs.shape[1])])
        own = np.unique(pairs[1][pairs[0] == user])[: args.items // 10]
        others = rng.integers(0, args.items_total, args.items - len(own))
        items = [f"i{i}" for i in [*own.tolist(), *others.tolist()]]
        out.append(({"USER_ID": f"u{user}"}, items))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="ranking request benchmark")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items-total", type=int, default=50_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--items", type=int, default=500, help="candidates per request")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    console = Console(width=150)
    root = Path(tempfile.mkdtemp(prefix="robusta-rank-"))
    try:
        run(root, args, console)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=PREFIX + "*", count=5_000):
            client.unlink(key)


def run(root: Path, args: argparse.Namespace, console: Console) -> None:
    from robusta.serving import FeatureClient
    from robusta.spec.durations import from_micros
    from robusta.spec.model import OnlineConfig
    from robusta.store.online import open_online_store

    workspace, pairs, pointer = built(root, args)
    asked = requests(pairs, args)
    at = from_micros(pointer)
    specs = list(SPECS)
    table = Table(
        title=f"Ranking requests: 1 user + {args.items} items, 3 specs x 20 features "
        f"(user, item, user x item), {args.requests} requests"
    )
    for column in (
        "store",
        "records read",
        "p50 ms",
        "p99 ms",
        "floor p50 / p99 ms",
        "p99 / floor",
        "target p99",
    ):
        table.add_column(column, justify="right")
    configs = {
        "embedded": OnlineConfig("embedded", {"path": str(root / "online")}),
        "redis": OnlineConfig("redis", {"url": REDIS_URL, "key_prefix": PREFIX}),
    }
    for name, config in configs.items():
        # heads: the values the upload wrote at its pointer (a request at the pointer);
        # tiles: assembled at request time (earlier times, or a stream moved the pointer)
        for heads in (True, False):
            with open_online_store(config, "bench") as store:
                client = FeatureClient(workspace, store, heads=heads, cache_size=0)
                for user, items in asked[:20]:
                    client.rank(user, items, specs, at)  # warm up
                times, floors = [], []
                for user, items in asked:
                    started = time.perf_counter()
                    ranked = client.rank(user, items, specs, at)
                    times.append(time.perf_counter() - started)
                    floors.append(_floor(store, workspace, user, items, heads))
                assert ranked.num_rows == args.items
            p50, p99, _ = percentiles(times)
            f50, f99, _ = percentiles(floors)
            ok = "yes" if p99 <= TARGETS[name] else "NO"
            table.add_row(
                name,
                "head values" if heads else "tiles (assembled)",
                f"{p50:.2f}",
                f"{p99:.2f}",
                f"{f50:.2f} / {f99:.2f}",
                f"{p99 / f99:.1f}x",
                f"{TARGETS[name]:g} ms: {ok}",
            )
    console.print(table)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(f"peak RSS {peak:,.0f} MiB (this process; the tiles were built in another)")


def _floor(
    store: Any, workspace: Any, user: dict[str, str], items: list[str], heads: bool
) -> float:
    """The raw store reads of one request: per spec, the records it needs."""
    from robusta.serving.client import _key_text
    from robusta.store.online.base import heads_table

    wanted = {}
    for spec in workspace.plan.specs:
        [group] = spec.groups
        entities = {k.entity for k in group.layout.keys}
        rows = [user] if entities == {"USER_ID"} else [{**user, "ITEM_ID": i} for i in items]
        table = heads_table(group.layout.table) if heads else group.layout.table
        wanted[spec.name] = [(table, _key_text(e, group)) for e in rows]
    started = time.perf_counter()
    for spec, keys in wanted.items():
        store.read(spec, keys)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
