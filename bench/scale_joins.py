"""The joins of ``bench/scale.py`` over a size's project left on disk by a run that stopped
after its materialize (killed, or out of time): the same two point-in-time joins, the same
columns, and the tiles counted from the files' Parquet footers.

    PYTHONPATH=. .venv/bin/python bench/scale_joins.py /tmp/robusta-scale-100000000-XXXX \\
        --events 100000000 --materialize-seconds 1428.8 --materialize-peak 14172
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
import pit as pit_bench
import scale

from robusta.spec.checks import parse_size
from robusta.workspace import load_workspace


def main() -> None:
    parser = argparse.ArgumentParser(description="the joins of a scale run, resumed")
    parser.add_argument("root", type=Path)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--budget", default="256MiB")
    parser.add_argument("--materialize-seconds", type=float, required=True)
    parser.add_argument("--materialize-peak", type=int, required=True, help="MiB")
    parser.add_argument(
        "--budgeted-only", action="store_true", help="skip the default-budget join"
    )
    args = parser.parse_args()
    budget = parse_size(args.budget)
    if budget is None:
        parser.error(f"--budget {args.budget!r} is not a size")
    console = Console(width=220)
    workspace = load_workspace(args.root / "robusta.yaml").require_valid()
    files = list((args.root / "warehouse").rglob("*.parquet"))
    tiles = scale.Tiles(files=len(files), bytes=sum(f.stat().st_size for f in files))
    width = {g.layout.table: len(g.features) for s in workspace.plan.specs for g in s.groups}
    for f in files:
        rows = pq.ParquetFile(f).metadata.num_rows
        tiles.tiles += rows
        tiles.cells += rows * next(w for t, w in width.items() if t in str(f))
    console.print(f"{args.events:,} events resumed (load {pit_bench.load_average()})")
    rows = args.root / "rows.parquet"
    steps = {
        "materialize": scale.Step(args.materialize_seconds, args.materialize_peak),
        "duckdb": scale.Step(float("nan"), 0, skipped=True),
    }
    steps["join budget"] = scale.join(scale.with_budget(workspace, budget), rows)
    console.print(f"  join ({args.budget}): {steps['join budget']}")
    steps["join"] = scale.Step(float("nan"), 0, skipped=True)
    if not args.budgeted_only:
        steps["join"] = scale.join(workspace, rows)
        console.print(f"  join (default budget): {steps['join']}")
    console.print(f"  done (load {pit_bench.load_average()})")
    console.print(scale.table({args.events: steps}, 200_000, budget))
    console.print(scale.tiles_table({args.events: tiles}))


if __name__ == "__main__":
    main()
