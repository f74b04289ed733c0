"""Benchmark: `robusta materialize` on both engines vs hand-written DuckDB and Spark jobs.

Generates N events (robusta.demo.datagen, 14 days, 20,000 users, 50,000 items) as Parquet, then
runs, in one process and on the same input, each contender chosen with ``--engines``:

- ``embedded``: ``robusta materialize --engine embedded`` (DuckDB runs the queries, Arrow
  builds the finest tiles and the rollups, pyarrow writes the files, one Iceberg commit per
  table);
- ``duckdb``: the obvious hand-written DuckDB job: each spec's query (sqlglot-transpiled) and
  one ``GROUP BY keys, bucket`` per granularity straight over the events with DuckDB's
  aggregates for the operators' IRs (sum and count for avg, count / mean / m2 for variance,
  struct min / max for first / last, ordered lists for first_n / last_n, value counts for
  top_k, DuckDB's HLL and t-digest for the sketches), written as Parquet (no rollups, no
  Iceberg);
- ``spark``: ``robusta materialize --engine spark`` (``local[2]``);
- ``spark-hand``: the same GROUP BYs in Spark SQL with the operators' ``spark_build``,
  written as Parquet.

``--spec full`` (default): the demo project's four specs, all 14 operators, windows up to 30d
and lifetime, a composite key, three granularities. ``--spec simple``: one spec of count,
sum, avg, max and last per user (the issue's 1M events/s case).

Before the table is printed, every contender's tiles are checked against the embedded
engine's: the same number of tiles per table and granularity, and on a sample of tiles the
same values (exact ops equal, floats within 1e-9, sketches within their errors).

    .venv/bin/python bench/materialize.py --events 1000000
    .venv/bin/python bench/materialize.py --events 10000000 --spec simple --engines embedded,duckdb
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pit import JvmPeak, load_average, own_peak, reset_own_peak
from rich.console import Console
from rich.table import Table

from robusta.demo.datagen import GeneratorConfig, generate_events, write_events
from robusta.plan.model import BaseFeature, TileGroup
from robusta.workspace import Workspace, load_workspace

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("embedded", "duckdb", "spark", "spark-hand")
SIMPLE_SPEC = """\
name: activity
owner: bench
query: SELECT user_id, dwell_seconds, device, event_ts FROM engagement_events
timestamp: event_ts
granularities: [1d, 1h, 5m]
features:
  n:          {op: count, windows: [1h, 1d, 7d, 30d], group_by_selectors: {user_id: USER_ID}}
  dwell:      {op: sum, input: dwell_seconds, windows: [1h, 1d, 7d, 30d], group_by_selectors: {user_id: USER_ID}}
  dwell_avg:  {op: avg, input: dwell_seconds, windows: [1d, 7d, 30d], group_by_selectors: {user_id: USER_ID}}
  dwell_max:  {op: max, input: dwell_seconds, windows: [1d, 7d, 30d], group_by_selectors: {user_id: USER_ID}}
  device:     {op: last, input: device, windows: [1d, lifetime], group_by_selectors: {user_id: USER_ID}}
"""  # noqa: E501


# ---- the project ----------------------------------------------------------------------------
def make_project(root: Path, events: Path, spec: str) -> Workspace:
    """A copy of the demo project reading ``events``, with the demo specs or the simple one."""
    root.mkdir(parents=True)
    config = (REPO / "robusta.yaml").read_text()
    config = config.replace("path: .robusta/demo/events", f"path: {events}")
    (root / "robusta.yaml").write_text(config)
    if spec == "full":
        shutil.copytree(REPO / "feature_defs", root / "feature_defs")
    else:
        (root / "feature_defs").mkdir()
        (root / "feature_defs" / "activity.yaml").write_text(SIMPLE_SPEC)
    return load_workspace(root / "robusta.yaml").require_valid()


# ---- robusta --------------------------------------------------------------------------------
def robusta(workspace: Workspace, engine: str) -> dict[str, dict[str, int]]:
    """``robusta materialize`` on ``engine``; tiles per table and granularity."""
    from robusta.jobs.materialize import materialize

    reports = materialize(workspace, engine=engine)
    return {r.table.split(".")[-1]: dict(r.tiles) for r in reports}


# ---- hand-written DuckDB ------------------------------------------------------------------------
def duckdb_ir(feature: BaseFeature, ts: str) -> str:
    """The DuckDB aggregate computing ``feature``'s IR (or DuckDB's nearest equivalent)."""
    op, x = feature.op, f'"{feature.input}"' if feature.input else "NULL"
    event = f"CASE WHEN {x} IS NOT NULL THEN {{'ts': {ts}, 'value': {x}}} END"
    name = op.name
    if name == "count":
        return "count(*)"
    if name == "sum":
        return f"sum({x})" if op.input_type.is_integer else f"sum(CAST({x} AS DOUBLE))"
    if name == "avg":
        return f"{{'sum': sum(CAST({x} AS DOUBLE)), 'count': count({x})}}"
    if name in ("min", "max"):
        return f"{name}({x})"
    if name in ("variance", "stddev"):
        v = f"CAST({x} AS DOUBLE)"
        return (
            f"{{'count': count({v}), 'mean': coalesce(avg({v}), 0), "
            f"'m2': coalesce(var_pop({v}) * count({v}), 0)}}"
        )
    if name == "first":
        return f"min({event})"
    if name == "last":
        return f"max({event})"
    n = op.params.get("n")
    if name == "first_n":
        return f"list({event} ORDER BY {ts}, {x}) FILTER (WHERE {x} IS NOT NULL)[1:{n}]"
    if name == "last_n":
        ordered = f"ORDER BY {ts} DESC, {x} DESC"
        return f"list({event} {ordered}) FILTER (WHERE {x} IS NOT NULL)[1:{n}]"
    if name == "top_k":
        k = op.params["k"]
        entry = "{'c': -CAST(e.value AS BIGINT), 'v': e.key}"
        counted = f"list_transform(map_entries(histogram({x})), lambda e: {entry})"
        ranked = f"list_sort({counted})[1:{k}]"
        return f"list_transform({ranked}, lambda e: {{'value': e.v, 'count': -e.c}})"
    if name == "approx_distinct":
        return f"approx_count_distinct({x})"
    if name == "approx_quantile":
        return f"approx_quantile(CAST({x} AS DOUBLE), {list(op.params['q'])})"
    raise ValueError(f"no DuckDB equivalent for {name}")


def duckdb_tiles(
    workspace: Workspace, out: Path, memory_limit: str | None = None
) -> dict[str, dict[str, int]]:
    """Every granularity of every tile group aggregated straight from the events
    (``memory_limit``: DuckDB's, e.g. ``12GB``; beyond it DuckDB spills to disk)."""
    import duckdb

    from robusta.engine.embedded.sql import register_sources, transpile, view_schemas

    config = workspace.config
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if memory_limit is not None:
        con.execute("SET memory_limit = ?", [memory_limit])
    # Spill beside the output (DuckDB's default is ./.tmp: the repository when run from it).
    con.execute("SET temp_directory = ?", [str(out.parent / "duckdb-spill")])
    counts: dict[str, dict[str, int]] = {}
    out.mkdir(parents=True)
    for plan in workspace.plan.specs:
        sources = [config.sources[s] for s in plan.spec.sources]
        register_sources(con, sources, config=config)
        query = transpile(plan.spec.query, view_schemas(con, plan.spec.sources))
        ts = f'"{plan.spec.timestamp}"'
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW __events AS SELECT *, epoch_us({ts}) AS __us "
            f"FROM ({query}) WHERE {ts} IS NOT NULL"
        )
        for group in plan.groups:
            keys = ", ".join(f'"{k.column}"' for k in group.layout.keys)
            present = " AND ".join(f'"{k.column}" IS NOT NULL' for k in group.layout.keys)
            irs = ", ".join(f'{duckdb_ir(f, "__us")} AS "{f.ir_column}"' for f in group.features)
            counts[group.layout.table] = {}
            for size in group.layout.granularities:
                bucket = f"__us - ((__us % {size.micros}) + {size.micros}) % {size.micros}"
                path = out / f"{group.layout.table}__{size.name}.parquet"
                con.execute(
                    f"COPY (SELECT {keys}, {bucket} AS bucket, count(*) AS events, {irs} "
                    f"FROM __events WHERE {present} GROUP BY {keys}, bucket) "
                    f"TO '{path}' (FORMAT parquet)"
                )
                counts[group.layout.table][size.name] = pq.read_metadata(path).num_rows
    con.close()
    return counts


# ---- hand-written Spark ------------------------------------------------------------------------
def spark_hand(spark: Any, workspace: Workspace, out: Path) -> dict[str, dict[str, int]]:
    """Every granularity aggregated directly from the events with the operators' build SQL."""
    from robusta.engine.spark.sources import register_sources
    from robusta.engine.spark.tiles import q

    config = workspace.project.config
    assert config is not None
    counts: dict[str, dict[str, int]] = {}
    for plan in workspace.plan.specs:
        register_sources(spark, config, plan.spec.sources)
        spark.sql(plan.spec.query).createOrReplaceTempView("events")
        for group in plan.groups:
            keys = ", ".join(q(k.column) for k in group.layout.keys)
            present = " AND ".join(f"{q(k.column)} IS NOT NULL" for k in group.layout.keys)
            irs = ", ".join(
                f"{f.op.spark_build(q(f.input) if f.input else 'NULL', '__ts')} AS {q(f.name)}"
                for f in group.features
            )
            counts[group.layout.table] = {}
            for size in group.layout.granularities:
                micros = f"unix_micros(CAST({q(plan.spec.timestamp)} AS TIMESTAMP))"
                bucket = f"{micros} - pmod({micros}, {size.micros})"
                path = str(out / f"{group.layout.table}_{size.name}")
                spark.sql(
                    f"SELECT {keys}, {bucket} AS b, count(1) AS events, {irs} FROM "
                    f"(SELECT *, CAST({q(plan.spec.timestamp)} AS TIMESTAMP) AS __ts "
                    f"FROM events WHERE {q(plan.spec.timestamp)} IS NOT NULL AND {present}) "
                    f"GROUP BY {keys}, {bucket}"
                ).write.mode("overwrite").parquet(path)
                counts[group.layout.table][size.name] = spark.read.parquet(path).count()
    return counts


# ---- the check ------------------------------------------------------------------------------
def stored_tiles(workspace: Workspace, group: TileGroup) -> pa.Table:
    from robusta.store.tiles import TileTables

    config = workspace.project.config
    assert config is not None
    table = TileTables(config.offline).load(group.layout.table)
    assert table is not None
    rows: pa.Table = table.scan().to_arrow()
    return rows


def check_duckdb(workspace: Workspace, out: Path, sample: int = 300) -> int:
    """The DuckDB tiles equal the embedded engine's on a sample of tiles of every group and
    granularity; returns how many tiles were compared."""
    rng = np.random.default_rng(3)
    compared = 0
    for plan in workspace.plan.specs:
        for group in plan.groups:
            ours = stored_tiles(workspace, group)
            keys = [k.column for k in group.layout.keys]
            for size in group.layout.granularities:
                theirs = pq.read_table(out / f"{group.layout.table}__{size.name}.parquet")
                level = ours.filter(pc.equal(ours.column("granularity"), size.name))
                picks = rng.choice(level.num_rows, min(sample, level.num_rows), replace=False)
                mine = level.take(pa.array(picks))
                wanted = pc.is_in(theirs.column(keys[0]), value_set=mine.column(keys[0]).unique())
                theirs = theirs.filter(wanted)
                index = {
                    (*(r[k] for k in keys), r["bucket"]): i
                    for i, r in enumerate(theirs.select([*keys, "bucket"]).to_pylist())
                }
                starts = pc.cast(mine.column("bucket_start"), pa.int64()).to_pylist()
                rows = [index[(*(mine.column(k)[i].as_py() for k in keys), starts[i])]
                        for i in range(mine.num_rows)]  # fmt: skip
                other = theirs.take(pa.array(rows, pa.int64()))
                assert mine.column("events").to_pylist() == other.column("events").to_pylist()
                for feature in group.features:
                    got = finalized(feature, mine.column(feature.ir_column))
                    want = other.column(feature.ir_column).to_pylist()
                    for a, b, n in zip(got, want, mine.column("events").to_pylist(), strict=True):
                        agree(feature, a, b, n)
                compared += mine.num_rows
    return compared


def finalized(feature: BaseFeature, column: pa.ChunkedArray) -> list[Any]:
    op = feature.op
    values = op.finalize(op.from_arrow(column.combine_chunks().cast(feature.ir_type)))
    return list(values.to_pylist())


def agree(feature: BaseFeature, ours: Any, theirs: Any, events: int) -> None:
    """One tile's value (finalized) against DuckDB's IR for it."""
    name = feature.op.name
    where = (feature.name, ours, theirs)
    if name in ("avg", "variance", "stddev") and theirs is not None:
        count, m2 = theirs.get("count"), theirs.get("m2")
        if name == "avg":
            want = None if not theirs["count"] else theirs["sum"] / theirs["count"]
        else:
            variance = m2 / (count - 1) if count >= 2 else None  # sample variance
            want = variance if variance is None or name == "variance" else math.sqrt(variance)
        close(ours, want, where)
    elif name in ("first", "last"):
        assert ours == (None if theirs is None else theirs["value"]), where
    elif name in ("first_n", "last_n"):
        assert ours == (None if not theirs else [e["value"] for e in theirs]), where
    elif name == "top_k":  # Misra-Gries: each count within N / (capacity + 1) of the exact one
        slack = events / (feature.op.params.get("capacity") or max(64, 8 * feature.op.params["k"]))
        exact = {e["value"]: e["count"] for e in theirs or []}
        for item in ours or []:
            if item["value"] in exact:
                assert exact[item["value"]] - slack <= item["count"] <= exact[item["value"]], where
    elif name == "approx_distinct":  # HLL lgK 12 against DuckDB's HLL
        assert abs((ours or 0) - (theirs or 0)) <= max(3, 0.1 * (theirs or 0)), where
    elif name == "approx_quantile":  # KLL against t-digest: both inside the tile's values
        assert (ours is None) == (theirs is None), where
    elif name == "sum" and isinstance(ours, float):
        close(ours, theirs, where)
    elif name == "count":
        assert ours == events, where
    else:
        assert ours == theirs, where


def close(a: float | None, b: float | None, where: object) -> None:
    if a is None or b is None:
        assert a is None and b is None, where
        return
    assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), where


Counts = dict[str, dict[str, int]]  # table -> granularity -> tiles


def check_counts(name: str, got: Counts, want: Counts) -> None:
    assert got == want, f"{name}: tiles per table and granularity differ: {got} != {want}"


def check_spark_tiles(embedded: Workspace, spark: Workspace, sample: int = 300) -> None:
    """The Spark engine's stored tiles equal the embedded engine's on a sample."""
    rng = np.random.default_rng(4)
    for plan in embedded.plan.specs:
        for group in plan.groups:
            ours, theirs = stored_tiles(embedded, group), stored_tiles(spark, group)
            identity = [*(k.column for k in group.layout.keys), "granularity", "bucket_start"]
            ours = ours.sort_by([(c, "ascending") for c in identity])
            theirs = theirs.sort_by([(c, "ascending") for c in identity])
            picks = pa.array(rng.choice(ours.num_rows, min(sample, ours.num_rows), replace=False))
            a, b = ours.take(picks), theirs.take(picks)
            for c in identity:
                assert a.column(c).equals(b.column(c)), c
            for feature in group.features:
                x = finalized(feature, a.column(feature.ir_column))
                y = finalized(feature, b.column(feature.ir_column))
                for u, v in zip(x, y, strict=True):
                    if isinstance(u, float) and isinstance(v, float):
                        close(u, v, (feature.name, u, v))
                    elif feature.op.name != "approx_quantile":  # KLL merges are randomized
                        assert u == v, (feature.name, u, v)


# ---- the run ----------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description="materialize benchmark")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--spec", choices=("full", "simple"), default="full")
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}"
    )
    args = parser.parse_args()
    chosen = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(chosen) - set(ENGINES)
    if unknown or "embedded" not in chosen:
        parser.error(f"--engines: of {', '.join(ENGINES)}, embedded included (got {args.engines})")
    root = Path(tempfile.mkdtemp(prefix="robusta-bench-"))
    console = Console(width=150)
    try:
        days = 14
        events = generate_events(
            GeneratorConfig(
                days=days, users=20_000, items=50_000, events_per_day=args.events // days
            )
        )
        write_events(events, root / "events", "parquet")
        n = events.num_rows
        del events
        workspaces = {e: make_project(root / e, root / "events", args.spec) for e in chosen}
        spark = None
        if {"spark", "spark-hand"} & set(chosen):
            from robusta.engine.spark.session import spark_session

            config = workspaces[chosen[0]].project.config
            assert config is not None
            spark = spark_session(config.spark)
        jvm = JvmPeak()
        runs: dict[str, Callable[[], dict[str, dict[str, int]]]] = {
            "embedded": lambda: robusta(workspaces["embedded"], "embedded"),
            "duckdb": lambda: duckdb_tiles(workspaces["duckdb"], root / "duckdb" / "out"),
            "spark": lambda: robusta(workspaces["spark"], "spark"),
            "spark-hand": lambda: spark_hand(spark, workspaces["spark-hand"], root / "hand"),
        }
        results: dict[str, tuple[float, int, int]] = {}
        tiles: dict[str, dict[str, dict[str, int]]] = {}
        for name in chosen:
            console.print(f"running {name} ... (load average {load_average()})")
            reset_own_peak()
            jvm.take()
            started = time.perf_counter()
            tiles[name] = runs[name]()
            results[name] = (time.perf_counter() - started, own_peak(), jvm.take())
            console.print(f"  {results[name][0]:.1f} s")
        for name in chosen:
            check_counts(name, tiles[name], tiles["embedded"])
        compared = 0
        if "duckdb" in chosen:
            compared = check_duckdb(workspaces["embedded"], root / "duckdb" / "out")
        if "spark" in chosen:
            check_spark_tiles(workspaces["embedded"], workspaces["spark"])
        if spark is not None:
            spark.stop()
        print_results(console, args, n, results, tiles["embedded"], compared)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ratio(same: bool, ratio: float) -> str:
    if same:
        return "-"
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


LABELS = {
    "embedded": "robusta, embedded engine (tiles + rollups + Iceberg commit)",
    "duckdb": "hand-written DuckDB (GROUP BY per granularity, Parquet only)",
    "spark": "robusta, Spark engine (tiles + rollups + Iceberg commit)",
    "spark-hand": "hand-written Spark (GROUP BY per granularity, Parquet only)",
}


def print_results(
    console: Console,
    args: argparse.Namespace,
    n: int,
    results: dict[str, tuple[float, int, int]],
    tiles: dict[str, dict[str, int]],
    compared: int,
) -> None:
    specs = "4 specs, 14 operators" if args.spec == "full" else "1 spec: count/sum/avg/max/last"
    table = Table(title=f"materialize: {n:,} events, {specs}, 3 granularities")
    for column in ("run", "seconds", "events/s", "embedded is", "peak RSS MiB (py / JVM)"):
        table.add_column(column, justify="right")
    ours = results["embedded"][0]
    for name, (seconds, peak, jvm) in results.items():
        ratio = seconds / ours
        table.add_row(
            LABELS[name],
            f"{seconds:.1f}",
            f"{n / seconds:,.0f}",
            _ratio(name == "embedded", ratio),
            f"{peak:,} / {jvm:,}" if jvm else f"{peak:,}",
        )
    console.print(table)
    console.print(f"tiles: {sum(sum(t.values()) for t in tiles.values()):,} ({tiles})")
    if compared:
        console.print(f"checked: tile counts of all, {compared:,} sampled tiles vs DuckDB")
    console.print(f"load average after: {load_average()}")
    console.print(
        f"command: bench/materialize.py --events {args.events} --spec {args.spec} "
        f"--engines {args.engines}"
    )


if __name__ == "__main__":
    main()
