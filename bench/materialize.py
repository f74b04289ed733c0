"""Benchmark: `robusta materialize` end to end vs hand-written Spark aggregations.

Generates N events (robusta.demo.datagen), then in one Spark session, on the same Parquet input:

- robusta: the demo project's four specs (all 14 operators), read -> transform -> finest tiles
  -> rollups -> Parquet -> one Iceberg commit per table;
- hand-written: the same specs' queries aggregated straight from the events at every
  granularity (one scan per granularity, Parquet out, no Iceberg), the obvious Spark job.

    .venv/bin/python bench/materialize.py [--events 1000000]

Prints wall time, events/s, the ratio and peak memory (Python driver and Spark JVM).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from robusta.demo.datagen import GeneratorConfig, generate_events, write_events
from robusta.engine.spark.session import spark_session
from robusta.engine.spark.sources import register_sources
from robusta.engine.spark.tiles import q
from robusta.jobs.materialize import materialize
from robusta.workspace import load_workspace

REPO = Path(__file__).resolve().parents[1]


def hand_written(spark: object, workspace: object, out: Path) -> None:
    """Every granularity aggregated directly from the events with the operators' build SQL."""
    for plan in workspace.plan.specs:  # type: ignore[attr-defined]
        register_sources(spark, workspace.project.config, plan.spec.sources)  # type: ignore[attr-defined]
        spark.sql(plan.spec.query).createOrReplaceTempView("events")  # type: ignore[attr-defined]
        for group in plan.groups:
            keys = ", ".join(q(k.column) for k in group.layout.keys)
            irs = ", ".join(
                f"{f.op.spark_build(q(f.input) if f.input else 'NULL', '__ts')} AS {q(f.name)}"
                for f in group.features
            )
            for size in group.layout.granularities:
                micros = f"unix_micros(CAST({q(plan.spec.timestamp)} AS TIMESTAMP))"
                bucket = f"{micros} - pmod({micros}, {size.micros})"
                spark.sql(  # type: ignore[attr-defined]
                    f"SELECT {keys}, {bucket} AS b, count(1) AS events, {irs} FROM "
                    f"(SELECT *, CAST({q(plan.spec.timestamp)} AS TIMESTAMP) AS __ts "
                    f"FROM events) GROUP BY {keys}, {bucket}"
                ).write.mode("overwrite").parquet(str(out / f"{group.layout.table}_{size.name}"))


def main() -> None:
    parser = argparse.ArgumentParser(description="materialize benchmark")
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="robusta-bench-"))
    try:
        shutil.copytree(REPO / "feature_defs", root / "feature_defs")
        shutil.copy(REPO / "robusta.yaml", root / "robusta.yaml")
        days = 14
        events = generate_events(
            GeneratorConfig(
                days=days, users=20_000, items=50_000, events_per_day=args.events // days
            )
        )
        write_events(events, root / ".robusta" / "demo" / "events", "parquet")
        workspace = load_workspace(root / "robusta.yaml").require_valid()
        config = workspace.project.config
        assert config is not None
        spark = spark_session(config.spark)
        started = time.perf_counter()
        reports = materialize(workspace)
        ours = time.perf_counter() - started
        started = time.perf_counter()
        hand_written(spark, workspace, root / "hand")
        theirs = time.perf_counter() - started
        spark.stop()
        jvm_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        py_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        n = events.num_rows
        table = Table(title=f"materialize: {n:,} events, 4 specs, 14 operators, 3 granularities")
        for column in ("run", "seconds", "events/s", "vs hand-written", "tiles"):
            table.add_column(column, justify="right")
        tiles = sum(sum(r.tiles.values()) for r in reports)
        table.add_row(
            "robusta (tiles + rollups + Iceberg commit)",
            f"{ours:.1f}",
            f"{n / ours:,.0f}",
            f"{theirs / ours:.2f}x",
            f"{tiles:,}",
        )
        table.add_row(
            "hand-written Spark (per granularity, Parquet only)",
            f"{theirs:.1f}",
            f"{n / theirs:,.0f}",
            "1.00x",
            "",
        )
        console = Console(width=140)
        console.print(table)
        console.print(f"peak RSS: Python driver {py_peak:,.0f} MiB, Spark JVM {jvm_peak:,.0f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
