"""Benchmark: the retail log end to end, as a user runs it: `robusta materialize` and a
4,000-row `robusta backfill` from raw events, wall clock with process start, beside DuckDB
doing the same work, also as a fresh process.

The project is ``examples/retail`` (two specs: sum, count, last_n, approx_distinct,
approx_quantile, max and top_k; windows 1h .. 30d and lifetime; three granularities) copied
to a temporary folder with its source pointing at the real log,
``../shared/data/online-retail/by-day`` (541,909 events in 305 CSV files). Training rows:
4,000 (customer, item) pairs of the log at their event time plus a uniform 0-30 days.

Contenders, each a fresh process and a fresh store, ``--runs`` times (best and median):

- ``robusta materialize`` (embedded engine): tiles of both specs, rollups, Iceberg commits;
- DuckDB tiles: each spec's query and one ``GROUP BY key, bucket`` per granularity with
  DuckDB's aggregates (``bench/materialize.py``'s competitor), written as Parquet;
- ``robusta backfill`` of the rows, all 19 features, nothing materialized before (it
  materializes what it needs, then joins);
- DuckDB brute force: the rows joined to the raw events of their key, every feature one
  aggregate with a ``FILTER`` on its window, from the same tile-aligned window ends.

Before timing counts, the backfill's features are checked against the brute force: counts,
integer sums, max and last_n equal, float sums within 1e-9, distinct counts (HLL) within 5%
of the exact count.

    .venv/bin/python bench/retail.py
    .venv/bin/python bench/retail.py --key-buckets 32 --runs 3
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from pit import load_average
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "online-retail" / "by-day"
SPECS = ("customer_purchases", "item_sales")
TILES_CHILD = """\
import sys
from pathlib import Path
sys.path.insert(0, {bench!r})
from materialize import duckdb_tiles
from robusta.workspace import load_workspace
duckdb_tiles(load_workspace(Path({config!r})).require_valid(), Path({out!r}))
"""


def make_project(root: Path, key_buckets: int | None) -> Path:
    shutil.copytree(REPO / "examples" / "retail", root, dirs_exist_ok=True)
    config = root / "robusta.yaml"
    text = config.read_text().replace("../../../shared/data/online-retail/by-day", str(DATA))
    if key_buckets is not None:
        text = text.replace(
            "  namespace: robusta\n", f"  namespace: robusta\n  key_buckets: {key_buckets}\n"
        )
    config.write_text(text)
    return config


def make_rows(path: Path, count: int, seed: int = 15) -> None:
    """``count`` (customer, item) pairs of the log at their time plus a uniform 0-30 days."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SELECT setseed({1 / (seed + 1)})")
    con.execute(
        f"""COPY (
        SELECT row_number() OVER (ORDER BY InvoiceNo, StockCode, InvoiceDate) AS "row",
               CAST(CAST(CustomerID AS BIGINT) AS VARCHAR) AS CUSTOMER_ID, StockCode AS ITEM_ID,
               InvoiceDate + to_microseconds(CAST(floor(random() * 30 * 86400e6) AS BIGINT)) AS ts
        FROM (SELECT * FROM read_csv('{DATA}/*.csv', header = true,
                  types = {{'InvoiceDate': 'TIMESTAMP', 'CustomerID': 'DOUBLE',
                            'StockCode': 'VARCHAR'}})
              WHERE CustomerID IS NOT NULL ORDER BY InvoiceNo, StockCode, InvoiceDate)
        USING SAMPLE {count} ROWS (reservoir, {seed})
        ) TO '{path}' (HEADER)"""
    )


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def fresh(root: Path) -> None:
    for name in (".robusta", "duck", "features.parquet", "brute.parquet"):
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


ROBUSTA = str(REPO / ".venv" / "bin" / "robusta") if (REPO / ".venv").exists() else "robusta"


def robusta_materialize(root: Path) -> float:
    return timed([ROBUSTA, "materialize", "--engine", "embedded"], root)


def robusta_backfill(root: Path) -> float:
    command = [ROBUSTA, "backfill", "--engine", "embedded", "--input", "rows.csv"]
    command += ["--output", "features.parquet"]
    for spec in SPECS:
        command += ["--spec", spec]
    return timed(command, root)


def duckdb_tiles(root: Path) -> float:
    code = TILES_CHILD.format(
        bench=str(REPO / "bench"), config=str(root / "robusta.yaml"), out=str(root / "duck")
    )
    return timed([sys.executable, "-c", code], root)


# ---- the brute force: every feature straight from the raw events ------------------------------
READ = f"""read_csv('{DATA}/*.csv', header = true,
    types = {{'InvoiceDate': 'TIMESTAMP', 'CustomerID': 'DOUBLE', 'StockCode': 'VARCHAR',
              'Quantity': 'INTEGER', 'UnitPrice': 'DOUBLE', 'InvoiceNo': 'VARCHAR'}})"""
# (output, aggregate over events e, window in days or None for lifetime)
Outputs = list[tuple[str, str, float | None]]
CUSTOMER: Outputs = [
    *(
        (f"customer_spend_{w}", "sum(e.amount)", d)
        for w, d in (("1h", 1 / 24), ("1d", 1), ("7d", 7), ("30d", 30))
    ),
    *(
        (f"customer_lines_{w}", "count(e.ts)", d)
        for w, d in (("1d", 1), ("30d", 30), ("lifetime", None))
    ),
    *(
        (
            f"customer_recent_items_{w}",
            "list(e.item_id ORDER BY e.ts DESC, e.item_id DESC) {f}[1:5]",
            d,
        )
        for w, d in (("7d", 7), ("lifetime", None))
    ),
    *(
        (f"customer_distinct_items_{w}", "count(DISTINCT e.item_id)", d)
        for w, d in (("30d", 30), ("lifetime", None))
    ),
    ("customer_basket_quantity_30d", "approx_quantile(e.quantity, [0.5, 0.95])", 30),
]
ITEM: Outputs = [
    *((f"item_units_{w}", "sum(e.quantity)", d) for w, d in (("1d", 1), ("7d", 7), ("30d", 30))),
    *(
        (f"item_cancellations_{w}", "sum(e.is_cancellation)", d)
        for w, d in (("7d", 7), ("30d", 30))
    ),
    ("item_price_max_30d", "max(e.unit_price)", 30),
    ("item_top_countries_30d", "approx_top_k(e.country, 3)", 30),
]
BRUTE_CHILD = """\
import duckdb
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute({sql!r})
"""


def brute_sql(out: Path) -> str:
    def features(rows: str, events: str, key: str, outputs: Outputs) -> str:
        columns = []
        for name, aggregate, days in outputs:
            since = (
                "TRUE" if days is None else f"e.ts >= r.__end - INTERVAL {round(days * 24)} HOUR"
            )
            where = f"FILTER (WHERE {since})"
            filtered = aggregate.format(f=where) if "{f}" in aggregate else f"{aggregate} {where}"
            columns.append(f'{filtered} AS "{name}"')
        return (
            f"SELECT r.__row, {', '.join(columns)} FROM {rows} r LEFT JOIN {events} e "
            f"ON e.{key} = r.{key} AND e.ts < r.__end GROUP BY r.__row"
        )

    events = f"""
        customer_events AS (
            SELECT CAST(CAST(CustomerID AS BIGINT) AS VARCHAR) AS customer_id, StockCode AS item_id,
                   Quantity * UnitPrice AS amount, Quantity AS quantity, InvoiceDate AS ts
            FROM {READ} WHERE CustomerID IS NOT NULL),
        item_events AS (
            SELECT StockCode AS item_id, Country AS country, Quantity AS quantity,
                   UnitPrice AS unit_price,
                   CASE WHEN InvoiceNo LIKE 'C%' THEN 1 ELSE 0 END AS is_cancellation,
                   InvoiceDate AS ts
            FROM {READ}),
        rows AS (
            SELECT "row" AS __row, CUSTOMER_ID AS customer_id,
                   ITEM_ID AS item_id, ts, time_bucket(INTERVAL 5 MINUTE, ts) AS __end
            FROM read_csv('rows.csv', header = true, types = {{'CUSTOMER_ID': 'VARCHAR',
                          'ITEM_ID': 'VARCHAR', 'ts': 'TIMESTAMP', 'row': 'BIGINT'}}))"""
    return (
        f"COPY (WITH {events}, "
        f"c AS ({features('rows', 'customer_events', 'customer_id', CUSTOMER)}), "
        f"i AS ({features('rows', 'item_events', 'item_id', ITEM)}) "
        f"SELECT * FROM rows JOIN c USING (__row) JOIN i USING (__row) ORDER BY __row) "
        f"TO '{out}' (FORMAT parquet)"
    )


def duckdb_brute(root: Path) -> float:
    code = BRUTE_CHILD.format(sql=brute_sql(root / "brute.parquet"))
    return timed([sys.executable, "-c", code], root)


def check(root: Path) -> int:
    """The backfill's features against the brute force, row by row (input order)."""
    ours = pq.read_table(root / "features.parquet").sort_by("row")
    theirs = pq.read_table(root / "brute.parquet").sort_by("__row")
    assert ours.num_rows == theirs.num_rows, (ours.num_rows, theirs.num_rows)
    checked = 0
    for name, aggregate, _ in [*CUSTOMER, *ITEM]:
        a, b = ours.column(name).to_pylist(), theirs.column(name).to_pylist()
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            agree(name, aggregate, x, y, i)
            checked += 1
    return checked


def agree(name: str, aggregate: str, ours: Any, theirs: Any, row: int) -> None:
    where = f"{name} row {row}: robusta {ours!r}, DuckDB {theirs!r}"
    if aggregate.startswith("count(e."):
        assert (ours or 0) == (theirs or 0), where
    elif aggregate.startswith(("approx_quantile", "approx_top_k")):
        return  # sketches: KLL and Misra-Gries against t-digest and DuckDB's top-k
    elif aggregate.startswith("count(DISTINCT"):
        assert abs((ours or 0) - (theirs or 0)) <= max(2, 0.05 * (theirs or 0)), where
    elif aggregate.startswith("sum(e.amount)"):
        assert (ours is None) == (theirs is None), where
        assert ours is None or math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-6), where
    elif aggregate.startswith("list"):
        assert (ours or []) == (theirs or []), where
    else:
        assert ours == theirs, where


def peak_children_mib() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--key-buckets", type=int, default=None, help="default: the project's")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"the retail log is not at {DATA}")
    console = Console(width=110)
    root = Path(tempfile.mkdtemp(prefix="robusta-retail-"))
    try:
        make_project(root, args.key_buckets)
        make_rows(root / "rows.csv", args.rows)
        contenders = {
            "robusta materialize (embedded)": (robusta_materialize, "materialize"),
            "DuckDB tiles (GROUP BY per granularity, Parquet)": (duckdb_tiles, "materialize"),
            f"robusta backfill, {args.rows:,} rows from raw events": (robusta_backfill, "backfill"),
            f"DuckDB brute force, {args.rows:,} rows": (duckdb_brute, "backfill"),
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        with console.status("running") as status:
            for run in range(args.runs):
                for name, (job, _) in contenders.items():
                    status.update(f"run {run + 1}/{args.runs}: {name}")
                    fresh(root)
                    times[name].append(job(root))
                    if name.startswith("DuckDB brute") and run == 0:
                        robusta_backfill(root)
                        checked = check(root)
        print_results(console, args, times, contenders, checked)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def print_results(
    console: Console,
    args: argparse.Namespace,
    times: dict[str, list[float]],
    contenders: dict[str, tuple[Any, str]],
    checked: int,
) -> None:
    table = Table(title=f"retail log, wall clock with process start, {args.runs} runs each")
    for column in ("contender", "best s", "median s", "robusta is (median)", "target"):
        table.add_column(column, justify="right")
    ours = {
        kind: statistics.median(times[n])
        for n, (_, kind) in contenders.items()
        if n.startswith("robusta")
    }
    for name, (_, kind) in contenders.items():
        median = statistics.median(times[name])
        mine = name.startswith("robusta")
        ratio = median / ours[kind]
        versus = (
            "-" if mine else (f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower")
        )
        target = "<= 5 s" if mine else ""
        table.add_row(name, f"{min(times[name]):.2f}", f"{median:.2f}", versus, target)
    console.print(table)
    console.print(f"checked: {checked:,} feature values of the backfill against the brute force")
    console.print(f"peak RSS of any contender process: {peak_children_mib():,} MiB")
    console.print(f"load average after: {load_average()}; cpus: {os.cpu_count()}")
    buckets = f" --key-buckets {args.key_buckets}" if args.key_buckets else ""
    console.print(f"command: bench/retail.py --runs {args.runs} --rows {args.rows}{buckets}")


if __name__ == "__main__":
    pa.set_cpu_count(os.cpu_count() or 2)
    main()
