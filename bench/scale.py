"""Benchmark: how materialize and the point-in-time join grow with the data, and what one
join task holds in memory, with and without a memory budget.

For each ``--sizes`` (events), the PIT benchmark's generated data (``bench/pit.py``: keys
Zipf-skewed, one key per 100 events, 120 days) and its full spec (every operator, windows
1h .. 90d and lifetime), on the embedded engine:

- materialize, beside the hand-written DuckDB tiles query (``bench/materialize.py``) on the
  same events, as a ratio;
- the point-in-time join of ``--rows`` training rows from those tiles, with the default
  ``offline.join_memory`` and with ``--budget``: seconds, and the largest tile table one task
  loaded (Arrow bytes: what a Spark task would hold);
- peak RSS of this process for each step (``VmHWM``, reset before each).

Growth is linear when seconds per event (and the unbudgeted task's tiles per key) stay flat
from the smallest size to the largest; the budgeted task's tiles stay under the budget
whatever the size (a single key's tiles are the floor).

    .venv/bin/python bench/scale.py --sizes 10000000,30000000 --rows 200000
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
import materialize as materialize_bench
import pit as pit_bench

from robusta.spec.checks import parse_size, show_size
from robusta.workspace import Workspace, load_workspace


@dataclasses.dataclass
class Step:
    seconds: float
    peak_mib: int
    task_tiles: int = 0  # largest tile table one join task loaded (bytes)
    skipped: bool = False  # a competitor not run at this size (--competitor-max)


def timed(job: Callable[[], Any]) -> Step:
    pit_bench.reset_own_peak()
    started = time.perf_counter()
    job()
    return Step(round(time.perf_counter() - started, 1), pit_bench.own_peak())


def with_budget(workspace: Workspace, budget: int) -> Workspace:
    config = workspace.config
    offline = dataclasses.replace(config.offline, join_memory=budget)
    project = dataclasses.replace(
        workspace.project, config=dataclasses.replace(config, offline=offline)
    )
    return dataclasses.replace(workspace, project=project)


def join(workspace: Workspace, rows: Path) -> Step:
    """The PIT join from tiles, recording the largest tile table a task loads."""
    from robusta.engine.pit_join import GroupJoin
    from robusta.training import get_training_frame

    largest = [0]
    real = GroupJoin._tiles

    def recorded(self: GroupJoin, bucket: int, part: int, assembler: Any) -> pa.Table:
        tiles = real(self, bucket, part, assembler)
        largest[0] = max(largest[0], tiles.nbytes)
        return tiles

    GroupJoin._tiles = recorded  # type: ignore[method-assign]
    try:
        step = timed(
            lambda: get_training_frame(
                str(rows), None, workspace=workspace, engine="embedded", materialize_missing=False
            )
        )
    finally:
        GroupJoin._tiles = real  # type: ignore[method-assign]
    step.task_tiles = largest[0]
    return step


@dataclasses.dataclass
class Tiles:
    tiles: int = 0
    files: int = 0
    bytes: int = 0  # of the tile files
    cells: int = 0  # feature IRs stored: tiles x features of their group


def run_size(
    root: Path,
    events: int,
    rows: int,
    days: int,
    budget: int,
    tiles: Tiles,
    duckdb_memory: str | None = None,
    compete: bool = True,
    key_buckets: int | None = None,
) -> dict[str, Step]:
    from robusta.jobs.materialize import materialize

    pit_bench.generate(root, events, rows, max(1, events // 100), days, "full")
    if key_buckets:  # the sizing rule's count for this size (docs/spec.md), not the default
        config = root / "robusta.yaml"
        text = config.read_text().replace(
            "  namespace: bench\n", f"  namespace: bench\n  key_buckets: {key_buckets}\n"
        )
        config.write_text(text)
    workspace = load_workspace(root / "robusta.yaml").require_valid()
    out = root / "duckdb"

    def build() -> None:
        reports = materialize(workspace, engine="embedded")
        tiles.tiles = sum(sum(r.tiles.values()) for r in reports)
        files = list((root / "warehouse").rglob("*.parquet"))
        tiles.files, tiles.bytes = len(files), sum(f.stat().st_size for f in files)
        width = {g.layout.table: len(g.features) for s in workspace.plan.specs for g in s.groups}
        tiles.cells = sum(sum(r.tiles.values()) * width[r.table.split(".")[-1]] for r in reports)

    steps = {"materialize": timed(build)}
    print(f"  materialize: {steps['materialize']}", flush=True)  # kept if a later step dies
    steps["duckdb"] = (
        competitor(lambda: materialize_bench.duckdb_tiles(workspace, out, duckdb_memory))
        if compete
        else Step(float("nan"), 0, skipped=True)
    )
    print(f"  DuckDB: {steps['duckdb']}", flush=True)
    # The budgeted join first: the unbudgeted one is the step that may outgrow the machine.
    steps["join budget"] = join(with_budget(workspace, budget), root / "rows.parquet")
    print(f"  join ({show_size(budget)}): {steps['join budget']}", flush=True)
    steps["join"] = join(workspace, root / "rows.parquet")
    print(f"  join (default budget): {steps['join']}", flush=True)
    return steps


def competitor(job: Callable[[], Any]) -> Step:
    """The DuckDB query timed; one that runs out of memory (its list and sketch aggregates
    do not spill) is recorded as failed (no seconds) with its peak, and the run goes on."""
    import duckdb

    started = time.perf_counter()
    try:
        return timed(job)
    except duckdb.OutOfMemoryException as exc:
        print(f"  DuckDB ran out of memory after {time.perf_counter() - started:.0f} s: {exc}")
        return Step(float("nan"), pit_bench.own_peak())


def main() -> None:
    parser = argparse.ArgumentParser(description="scaling benchmark")
    parser.add_argument("--sizes", default="10000000,30000000", help="events, comma-separated")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument(
        "--budget", default="256MiB", help="offline.join_memory of the budgeted run"
    )
    parser.add_argument(
        "--duckdb-memory",
        default=None,
        help="the competitor's memory_limit (DuckDB's default: 80%% of RAM); it spills beyond",
    )
    parser.add_argument(
        "--competitor-max",
        type=int,
        default=None,
        help="run the DuckDB competitor only at sizes up to this many events (at 30M its "
        "list and sketch aggregates exceed what 24 GiB holds beside this process)",
    )
    parser.add_argument(
        "--key-buckets",
        default=None,
        help="offline.key_buckets per size, comma-separated like --sizes (default: the "
        "project default, 8); the sizing rule (docs/spec.md) asks about 32 at 100M",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    buckets: list[int | None] = [None] * len(sizes)
    if args.key_buckets:
        buckets = [int(b) for b in args.key_buckets.split(",")]
        if len(buckets) != len(sizes):
            parser.error("--key-buckets needs one count per size")
    budget = parse_size(args.budget)
    if budget is None:
        parser.error(f"--budget {args.budget!r} is not a size")
    console = Console(width=220)
    results: dict[int, dict[str, Step]] = {}
    stored: dict[int, Tiles] = {}
    for size, key_buckets in zip(sizes, buckets, strict=True):
        root = Path(tempfile.mkdtemp(prefix=f"robusta-scale-{size}-"))
        try:
            console.print(
                f"[bold]{size:,} events[/], key buckets {key_buckets or 'default'} "
                f"(load {pit_bench.load_average()})"
            )
            stored[size] = Tiles()
            results[size] = run_size(
                root,
                size,
                args.rows,
                args.days,
                budget,
                stored[size],
                args.duckdb_memory,
                compete=args.competitor_max is None or size <= args.competitor_max,
                key_buckets=key_buckets,
            )
            console.print(f"  done (load {pit_bench.load_average()})")
            # Each size as soon as it is done: the largest may not finish in the time at hand.
            console.print(table({size: results[size]}, args.rows, budget))
            console.print(tiles_table({size: stored[size]}))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    console.print(table(results, args.rows, budget))
    console.print(tiles_table(stored))


def tiles_table(stored: dict[int, Tiles]) -> Table:
    out = Table(title="Tiles written (every granularity and tile group)")
    for column in ("events", "tiles", "files", "MiB", "bytes/tile", "bytes/tile/feature IR"):
        out.add_column(column, justify="right")
    for size, t in stored.items():
        per_tile = t.bytes / max(1, t.tiles)
        out.add_row(
            f"{size:,}",
            f"{t.tiles:,}",
            f"{t.files:,}",
            f"{t.bytes / (1 << 20):,.1f}",
            f"{per_tile:.1f}",
            f"{t.bytes / max(1, t.cells):.2f}",
        )
    return out


def table(results: dict[int, dict[str, Step]], rows: int, budget: int) -> Table:
    out = Table(title=f"Scaling: embedded engine, full spec, {rows:,} training rows")
    for column in (
        "events",
        "materialize s",
        "us/event",
        "DuckDB tiles s",
        "ours vs DuckDB",
        "peak MiB",
        "join s",
        "task tiles",
        f"join s ({show_size(budget)})",
        f"task tiles ({show_size(budget)})",
        "join peak MiB",
    ):
        out.add_column(column, justify="right")
    for size, steps in results.items():
        mat, duck, whole, split = (
            steps[k] for k in ("materialize", "duckdb", "join", "join budget")
        )
        ratio = duck.seconds / mat.seconds
        versus = f"{ratio:.2f}x {'faster' if ratio >= 1 else 'slower'}"
        failed = "not run" if duck.skipped else "out of memory"
        out.add_row(
            f"{size:,}",
            f"{mat.seconds:.1f}",
            f"{mat.seconds / size * 1e6:.2f}",
            failed if math.isnan(duck.seconds) else f"{duck.seconds:.1f}",
            "-" if math.isnan(duck.seconds) else versus,
            f"{mat.peak_mib:,} / {'-' if duck.skipped else f'{duck.peak_mib:,}'}",
            f"{whole.seconds:.1f}",
            show_mib(whole.task_tiles),
            f"{split.seconds:.1f}",
            show_mib(split.task_tiles),
            f"{whole.peak_mib:,} / {split.peak_mib:,}",
        )
    return out


def show_mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"


if __name__ == "__main__":
    main()
