"""Benchmark: point-in-time features, Robusta on both engines vs DuckDB (and Spark SQL).

Generated events (keys Zipf-skewed over ``--keys``, ``--days`` days) and training rows at
uniform random times, features by the brief's definition (``end = floor(t, 5m)``, window
``[end - W, end)``, lifetime ``[-inf, end)``). Two specs (``--spec``):

- ``full`` (default): every operator (count, sum, avg, min, max, variance, stddev, first,
  last, first_n, last_n, top_k, approx_distinct, approx_quantile) over windows from 1h to 90d
  and lifetime, 34 features;
- ``five``: count, sum, max, last, approx_distinct x 1h, 1d, 7d, 30d (the earlier runs').

In one run, on the same Parquet inputs, every contender chosen with ``--engines`` writes its
frame to Parquet:

- ``embedded``: ``materialize --engine embedded`` then ``get_training_frame`` (end to end),
  and ``get_training_frame`` over those tiles (from tiles), no JVM;
- ``spark``: the same on the Spark engine (``local[2]``);
- ``duckdb``: one ``RANGE BETWEEN W PRECEDING AND 1 PRECEDING`` window query over the union of
  events and rows (rows ordered at their window end), 2 threads;
- ``spark-sql`` (``--spec five`` only): the same window in Spark SQL, and a range join of rows
  to events on key and ``[end - 30d, end)``.

Results are checked equal on a sample of rows before the times are printed: exact ops
identical, float folds within 1e-9 (variances 1e-6), sketches within their errors against
DuckDB's exact or approximate values.

    .venv/bin/python bench/pit.py --events 1000000 --rows 100000 --keys 10000
    .venv/bin/python bench/pit.py --events 10000000 --rows 1000000 --keys 100000 \
        --engines embedded,duckdb
"""

from __future__ import annotations

import argparse
import functools
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

MIN = 60_000_000
DAY = 1440 * MIN
GMIN = 5 * MIN
T0 = 1_717_200_000_000_000  # 2024-06-01 00:00 UTC
WINDOW_MICROS: dict[str, int | None] = {
    "1h": 60 * MIN, "1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY, "90d": 90 * DAY, "lifetime": None,
}  # fmt: skip

# The features of each spec: name -> (op, input, params, windows).
FeatureDef = tuple[str, str | None, dict[str, Any], list[str]]
FIVE: dict[str, FeatureDef] = {
    "n": ("count", None, {}, ["1h", "1d", "7d", "30d"]),
    "spend": ("sum", "amount", {}, ["1h", "1d", "7d", "30d"]),
    "top": ("max", "amount", {}, ["1h", "1d", "7d", "30d"]),
    "last_item": ("last", "item_id", {}, ["1h", "1d", "7d", "30d"]),
    "items": ("approx_distinct", "item_id", {}, ["1h", "1d", "7d", "30d"]),
}
FULL: dict[str, FeatureDef] = {
    "n": ("count", None, {}, ["1h", "1d", "7d", "30d", "90d", "lifetime"]),
    "spend": ("sum", "amount", {}, ["1d", "7d", "30d", "90d", "lifetime"]),
    "spend_avg": ("avg", "amount", {}, ["7d", "90d"]),
    "low": ("min", "amount", {}, ["30d"]),
    "top": ("max", "amount", {}, ["1d", "30d", "lifetime"]),
    "spend_var": ("variance", "amount", {}, ["30d"]),
    "spend_sd": ("stddev", "amount", {}, ["90d"]),
    "first_item": ("first", "item_id", {}, ["lifetime"]),
    "last_item": ("last", "item_id", {}, ["1h", "1d", "lifetime"]),
    "first_items": ("first_n", "item_id", {"n": 3}, ["lifetime"]),
    "recent_items": ("last_n", "item_id", {"n": 5}, ["1d", "7d"]),
    "top_items": ("top_k", "item_id", {"k": 3}, ["7d", "30d"]),
    "items": ("approx_distinct", "item_id", {}, ["1d", "7d", "30d", "90d"]),
    "spend_q": ("approx_quantile", "amount", {"q": [0.5]}, ["30d"]),
}
SPECS = {"five": FIVE, "full": FULL}
# The five-op spec's names for the Spark SQL contenders.
WINDOWS = {"1h": 60 * MIN, "1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
OPS = ("count", "sum", "max", "last", "distinct")
NAMES = {"count": "n", "sum": "spend", "max": "top", "last": "last_item", "distinct": "items"}


def spec_yaml(features: dict[str, FeatureDef]) -> str:
    lines = [
        "name: activity",
        "owner: bench",
        "query: SELECT user_id, amount, item_id, ts FROM events",
        "timestamp: ts",
        "granularities: [1d, 1h, 5m]",
        "features:",
    ]
    for name, (op, column, params, windows) in features.items():
        parts = [f"op: {op}"]
        if column:
            parts.append(f"input: {column}")
        if params:
            parts.append("params: {" + ", ".join(f"{k}: {v}" for k, v in params.items()) + "}")
        parts += [f"windows: [{', '.join(windows)}]", "group_by_selectors: {user_id: USER_ID}"]
        lines.append(f"  {name}: {{{', '.join(parts)}}}")
    return "\n".join(lines) + "\n"


def outputs(features: dict[str, FeatureDef]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Output column -> (op, window, params)."""
    return {
        f"{name}_{w}": (op, w, params)
        for name, (op, _, params, windows) in features.items()
        for w in windows
    }


SPEC = spec_yaml(FIVE)  # bench/lookup.py's spec
CONFIG = """\
project: bench
feature_defs: feature_defs
sources:
  events: {format: parquet, path: events, schema: "user_id STRING, amount DOUBLE, item_id STRING, ts TIMESTAMP"}
entities:
  USER_ID: {type: string}
offline:
  catalog: {type: sql, uri: "sqlite:///catalog.db"}
  warehouse: warehouse
  namespace: bench
spark: {master: "local[2]", conf: {}}
"""  # noqa: E501


def generate(root: Path, events: int, rows: int, keys: int, days: int, spec: str) -> None:
    rng = np.random.default_rng(7)
    span = days * 1440 * MIN
    weights = 1.0 / (np.arange(keys) + 100.0)  # Zipf-like: hot keys, long tail
    users = rng.choice(keys, events, p=weights / weights.sum())
    table = pa.table(
        {
            "user_id": pa.array([f"u{u}" for u in users.tolist()]),
            "amount": pa.array(np.round(rng.gamma(2.0, 20.0, events), 2)),
            "item_id": pa.array([f"i{i}" for i in rng.integers(0, 50_000, events).tolist()]),
            "ts": pa.array(T0 + rng.integers(0, span, events)).cast(pa.timestamp("us", "UTC")),
        }
    )
    (root / "events").mkdir(parents=True)
    pq.write_table(table, root / "events" / "part-0.parquet", row_group_size=1_000_000)
    row_users = rng.integers(0, keys + keys // 20, rows)  # ~5% keys without events
    training = pa.table(
        {
            "row_id": pa.array(np.arange(rows)),
            "USER_ID": pa.array([f"u{u}" for u in row_users.tolist()]),
            "ts": pa.array(T0 + rng.integers(0, span + 1440 * MIN, rows)).cast(
                pa.timestamp("us", "UTC")
            ),
        }
    )
    pq.write_table(training, root / "rows.parquet", row_group_size=1_000_000)
    (root / "feature_defs").mkdir()
    (root / "feature_defs" / "activity.yaml").write_text(spec_yaml(SPECS[spec]))
    (root / "robusta.yaml").write_text(CONFIG)


def window_select(over: Callable[[str, int], str], last: str, distinct: str) -> str:
    """The 20 window aggregates of the SQL contenders over the union (``is_event`` marks).

    ``over(window, micros)`` names the frame; ``last`` and ``distinct`` are the dialect's
    aggregates for the value of the latest event and the approximate distinct count.
    """
    parts = []
    for w, m in WINDOWS.items():
        frame = over(w, m)
        parts += [
            f"sum(is_event) OVER {frame} AS {feature('count', w)}",
            f"sum(amount) OVER {frame} AS {feature('sum', w)}",
            f"max(amount) OVER {frame} AS {feature('max', w)}",
            f"{last} OVER {frame} AS {feature('last', w)}",
            f"{distinct} OVER {frame} AS {feature('distinct', w)}",
        ]
    return ",\n".join(parts)


def range_frame(_: str, micros: int) -> str:
    return f"(PARTITION BY k ORDER BY o RANGE BETWEEN {micros} PRECEDING AND 1 PRECEDING)"


def feature(op: str, window: str) -> str:
    return f"{NAMES[op]}_{window}"


UNION = f"""
    SELECT user_id AS k, unix_micros(ts) AS o, amount, item_id, 1 AS is_event,
           CAST(NULL AS BIGINT) AS row_id FROM ev
    UNION ALL
    SELECT USER_ID AS k, unix_micros(ts) - pmod(unix_micros(ts), {GMIN}) AS o,
           CAST(NULL AS DOUBLE), CAST(NULL AS STRING), 0, row_id FROM rows
"""


def spark_window(spark: Any, out: Path) -> None:
    windows = ", ".join(f"w_{w} AS {range_frame(w, m)}" for w, m in WINDOWS.items())
    aggregates = window_select(
        lambda w, _: f"w_{w}",
        "max(CASE WHEN item_id IS NOT NULL THEN struct(o, item_id) END)",
        "approx_count_distinct(item_id, 0.01)",
    )
    last = ", ".join(
        f"{feature(op, w)}" if op != "last" else f"{feature(op, w)}.item_id AS {feature(op, w)}"
        for w in WINDOWS
        for op in OPS
    )
    sql = f"""
        SELECT row_id, {last} FROM (
          SELECT row_id, is_event, {aggregates}
          FROM ({UNION}) AS u
          WINDOW {windows}
        ) WHERE is_event = 0
    """
    spark.sql(sql).write.mode("overwrite").parquet(str(out))


def spark_range_join(spark: Any, out: Path) -> None:
    longest = max(WINDOWS.values())
    parts = []
    for w, m in WINDOWS.items():
        inside = f"e.o >= r.e - {m}"
        parts += [
            f"count(CASE WHEN {inside} THEN 1 END) AS {feature('count', w)}",
            f"sum(CASE WHEN {inside} THEN e.amount END) AS {feature('sum', w)}",
            f"max(CASE WHEN {inside} THEN e.amount END) AS {feature('max', w)}",
            f"max(CASE WHEN {inside} AND e.item_id IS NOT NULL THEN struct(e.o, e.item_id) END)"
            f".item_id AS {feature('last', w)}",
            f"approx_count_distinct(CASE WHEN {inside} THEN e.item_id END, 0.01) "
            f"AS {feature('distinct', w)}",
        ]
    sql = f"""
        SELECT r.row_id, {", ".join(parts)}
        FROM (SELECT row_id, USER_ID AS k,
                     unix_micros(ts) - pmod(unix_micros(ts), {GMIN}) AS e FROM rows) AS r
        LEFT JOIN (SELECT user_id AS k, unix_micros(ts) AS o, amount, item_id FROM ev) AS e
          ON r.k = e.k AND e.o >= r.e - {longest} AND e.o < r.e
        GROUP BY r.row_id
    """
    spark.sql(sql).write.mode("overwrite").parquet(str(out))


def duckdb_frame(window: str) -> str:
    micros = WINDOW_MICROS[window]
    start = "UNBOUNDED PRECEDING" if micros is None else f"{micros} PRECEDING"
    return f"(PARTITION BY k ORDER BY o RANGE BETWEEN {start} AND 1 PRECEDING)"


def duckdb_aggregate(op: str, params: dict[str, Any], frame: str) -> str:
    """DuckDB's window aggregate for one feature (exact where DuckDB has the aggregate)."""
    simple = {
        "sum": "sum(amount)", "avg": "avg(amount)", "min": "min(amount)", "max": "max(amount)",
        "variance": "var_samp(amount)", "stddev": "stddev_samp(amount)",
        "first": "arg_min(item_id, {'o': o, 'v': item_id})",
        "last": "arg_max(item_id, {'o': o, 'v': item_id})",
        "approx_distinct": "approx_count_distinct(item_id)",
    }  # fmt: skip
    if op == "count":
        return f"coalesce(sum(is_event) OVER {frame}, 0)"
    if op in simple:
        return f"{simple[op]} OVER {frame}"
    events = "FILTER (WHERE is_event = 1)"  # the rows' own (null) values are not events
    if op == "first_n":
        return f"(list(item_id) {events} OVER {frame})[1:{params['n']}]"
    if op == "last_n":
        return f"list_reverse(list(item_id) {events} OVER {frame})[1:{params['n']}]"
    if op == "top_k":  # value counts; their top k are read in Python
        return f"map_entries(histogram(item_id) {events} OVER {frame})"
    if op == "approx_quantile":  # exact quantiles at q - 5%, q, q + 5% (KLL's rank band)
        qs = [round(min(max(q + d, 0.0), 1.0), 6) for q in params["q"] for d in (-0.05, 0, 0.05)]
        return f"quantile_disc(amount, {qs}) OVER {frame}"
    raise ValueError(op)


def duckdb_window(root: Path, out: Path, features: dict[str, FeatureDef]) -> None:
    import duckdb

    con = duckdb.connect()
    ACTIVE_DUCKDB[:] = [con]
    con.execute("SET threads TO 2")
    con.execute(f"SET temp_directory = '{root / 'duckdb.tmp'}'")
    aggregates = ",\n".join(
        f"{duckdb_aggregate(op, params, duckdb_frame(w))} AS {name}"
        for name, (op, w, params) in outputs(features).items()
    )
    micros = "epoch_us(ts)"
    sql = f"""
        COPY (
          SELECT * EXCLUDE (is_event) FROM (
            SELECT row_id, is_event, {aggregates} FROM (
              SELECT user_id AS k, {micros} AS o, amount, item_id, 1 AS is_event,
                     CAST(NULL AS BIGINT) AS row_id
              FROM read_parquet('{root / "events" / "*.parquet"}')
              UNION ALL
              SELECT USER_ID, {micros} - ({micros} % {GMIN}), NULL, NULL, 0, row_id
              FROM read_parquet('{root / "rows.parquet"}')
            )
          ) WHERE is_event = 0
        ) TO '{out}' (FORMAT parquet)
    """
    try:
        con.execute(sql)
    finally:
        ACTIVE_DUCKDB.clear()
        con.close()


def robusta_frame(root: Path, out: Path, engine: str) -> None:
    from robusta.training import get_training_frame
    from robusta.workspace import load_workspace

    workspace = load_workspace(root / "robusta.yaml").require_valid()
    rows = str(root / "rows.parquet")
    frame = get_training_frame(rows, None, workspace=workspace, engine=engine)
    if isinstance(frame, pa.Table):
        out.mkdir(parents=True)
        pq.write_table(frame, out / "part-0.parquet")
    else:
        frame.write.mode("overwrite").parquet(str(out))


def prepare(root: Path, engine: str) -> None:
    from robusta.jobs.materialize import materialize
    from robusta.workspace import load_workspace

    materialize(load_workspace(root / "robusta.yaml").require_valid(), rebuild=True, engine=engine)


def robusta_end_to_end(root: Path, out: Path, engine: str) -> None:
    from robusta.jobs.materialize import materialize
    from robusta.workspace import load_workspace

    materialize(load_workspace(root / "robusta.yaml").require_valid(), rebuild=True, engine=engine)
    robusta_frame(root, out, engine)


def run_with_timeout(spark: Any, job: Callable[[], None], seconds: float) -> bool:
    """Run ``job``; cancel its Spark jobs (or DuckDB query) after ``seconds``. False: cancelled."""
    import duckdb

    expired = threading.Event()

    def cancel() -> None:
        expired.set()
        if spark is not None:
            spark.sparkContext.cancelAllJobs()
        if ACTIVE_DUCKDB:
            ACTIVE_DUCKDB[0].interrupt()

    timer = threading.Timer(seconds, cancel)
    timer.start()
    try:
        job()
    except (duckdb.InterruptException, Exception):
        if not expired.is_set():
            raise
    finally:
        timer.cancel()
    return not expired.is_set()


ACTIVE_DUCKDB: list[Any] = []


class JvmPeak:
    """Peak RSS of the Spark JVM (a child process), sampled from /proc."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import os

        me = os.getpid()
        while not self._stop.wait(0.5):
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    text = status.read_text()
                except OSError:
                    continue
                if f"PPid:\t{me}\n" in text and "VmRSS" in text:
                    rss = int(text.split("VmRSS:")[1].split()[0]) // 1024
                    self.peak = max(self.peak, rss)

    def take(self) -> int:
        peak, self.peak = self.peak, 0
        return peak


def reset_own_peak() -> None:
    """Restart this process's peak-RSS count (Linux: ``VmHWM`` after ``clear_refs`` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def own_peak() -> int:
    """This process's peak RSS in MiB since :func:`reset_own_peak`."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) // 1024


def load_average() -> str:
    """The 1, 5 and 15-minute load averages (the machine is shared: say how busy it was)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def check_equal(
    written: dict[str, Path], features: dict[str, FeatureDef], reference: str, sample: int = 500
) -> None:
    """Every contender equals ``reference`` (robusta from tiles) on a sample of rows."""
    rng = np.random.default_rng(1)
    table = pq.read_table(written[reference])
    ids = set(rng.choice(table.num_rows, min(sample, table.num_rows), replace=False).tolist())
    want = {r["row_id"]: r for r in table.to_pylist() if r["row_id"] in ids}
    columns = outputs(features)
    for name, path in written.items():
        got = {r["row_id"]: r for r in pq.read_table(path).to_pylist() if r["row_id"] in ids}
        assert set(got) == set(want), f"{name}: rows differ"
        for row_id, row in want.items():
            for col, (op, _, params) in columns.items():
                agree(name, op, params, row[col], got[row_id][col], (name, row_id, col))


def agree(contender: str, op: str, params: dict[str, Any], a: Any, b: Any, where: Any) -> None:
    """robusta's value ``a`` against a contender's ``b`` for one feature of one row."""
    if op == "count":
        assert (a or 0) == (b or 0), where  # a range join counts 0 where a window gives 0
    elif op == "approx_distinct":
        # Different sketches: HLL lgK 12 (1.6%), Spark's HLL++ at rsd 1%, and DuckDB's
        # coarser HLL; each within 3 sigma of its error.
        slack = 0.2 if contender.startswith("DuckDB") else 0.06
        assert abs((a or 0) - (b or 0)) <= max(3, slack * (a or 0)), where
    elif op in ("sum", "avg", "variance", "stddev") and a is not None and b is not None:
        tolerance = 1e-6 if op in ("variance", "stddev") else 1e-9
        assert math.isclose(a, b, rel_tol=tolerance, abs_tol=1e-6), where
    elif op == "top_k" and contender.startswith("DuckDB"):
        # Misra-Gries (capacity 64) against exact counts: each count within N / 65 of its
        # value's exact count, and the values are among the most frequent.
        exact = {e["key"]: e["value"] for e in b} if b else {}
        assert (a is None) == (not exact), where
        total = sum(exact.values())
        for item in a or []:
            assert exact.get(item["value"], 0) - total / 65 <= item["count"], where
            assert item["count"] <= exact.get(item["value"], 0), where
    elif op == "approx_quantile" and contender.startswith("DuckDB"):
        # KLL (k 200, ~1.65% rank error) within exact quantiles 5% of rank either side (DuckDB's
        # discrete quantile is KLL's inclusive rule: exact while KLL keeps every value).
        assert (a is None) == (b is None), where
        for i, x in enumerate(a or []):
            assert b[3 * i] <= x <= b[3 * i + 2], (where, a, b)
    else:
        assert a == b, where


def print_results(
    console: Console,
    args: argparse.Namespace,
    results: dict[str, tuple[float, int, int]],
    timed_out: dict[str, int],
    reference: str,
) -> None:
    ours = results[reference][0]
    n = len(outputs(SPECS[args.spec]))
    table = Table(
        title=f"PIT: {args.events:,} events, {args.rows:,} rows, {args.keys:,} keys, "
        f"{args.days} days, spec {args.spec} ({n} features; checked equal on a sample)"
    )
    for column in ("contender", "seconds", "rows/s", f"{reference} is", "peak RSS MiB (py / JVM)"):
        table.add_column(column, justify="right")
    for name, (seconds, peak, jvm) in results.items():
        ratio = seconds / ours
        table.add_row(
            name,
            f"{seconds:.1f}",
            f"{args.rows / seconds:,.0f}",
            _ratio(name == reference, ratio),
            f"{peak:,} / {jvm:,}" if jvm else f"{peak:,}",
        )
    for name, jvm in timed_out.items():
        table.add_row(
            name,
            f"> {args.timeout:.0f}",
            f"< {args.rows / args.timeout:,.0f}",
            f"> {args.timeout / ours:.1f}x faster",
            f"- / {jvm:,}" if jvm else "-",
        )
    console.print(table)
    console.print(f"load average after: {load_average()}")
    console.print(
        f"command: bench/pit.py --events {args.events} --rows {args.rows} --keys {args.keys} "
        f"--days {args.days} --spec {args.spec} --engines {args.engines}"
    )


ENGINES = ("embedded", "spark", "duckdb", "spark-sql")


def _ratio(same: bool, ratio: float) -> str:
    if same:
        return "-"
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def contenders(
    root: Path, spark: Any, engines: list[str], features: dict[str, FeatureDef]
) -> dict[str, Callable[[Path], None]]:
    runs: dict[str, Callable[[Path], None]] = {}
    for engine in ("embedded", "spark"):
        if engine in engines:
            runs[f"{engine} end to end"] = functools.partial(
                lambda out, e: robusta_end_to_end(root, out, e), e=engine
            )
            runs[f"{engine} from tiles"] = functools.partial(
                lambda out, e: robusta_frame(root, out, e), e=engine
            )
    if "duckdb" in engines:
        runs["DuckDB window"] = lambda out: duckdb_window(root, out, features)
    if "spark-sql" in engines:
        runs["Spark SQL window"] = lambda out: spark_window(spark, out)
        runs["Spark SQL range join"] = lambda out: spark_range_join(spark, out)
    return runs


def main() -> None:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description="PIT join benchmark")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--spec", choices=sorted(SPECS), default="full")
    parser.add_argument(
        "--engines",
        default="embedded,spark,duckdb",
        help=f"comma-separated, of {', '.join(ENGINES)}",
    )
    parser.add_argument("--skip", default="", help="comma-separated contenders to skip")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per contender")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if set(engines) - set(ENGINES) or not {"embedded", "spark"} & set(engines):
        parser.error(f"--engines: of {', '.join(ENGINES)}, with embedded or spark")
    if "spark-sql" in engines and args.spec != "five":
        parser.error("the Spark SQL contenders compute the five-op spec only: add --spec five")
    root = Path(tempfile.mkdtemp(prefix="robusta-pit-"))
    console = Console(width=150)
    features = SPECS[args.spec]
    try:
        generate(root, args.events, args.rows, args.keys, args.days, args.spec)
        import os

        os.chdir(root)  # the project's relative paths
        spark = None
        if {"spark", "spark-sql"} & set(engines):
            from robusta.engine.spark.session import spark_session
            from robusta.spec.model import SparkConfig

            spark = spark_session(SparkConfig("local[2]", {}))
            spark.read.parquet(str(root / "events")).createOrReplaceTempView("ev")
            spark.read.parquet(str(root / "rows.parquet")).createOrReplaceTempView("rows")
        jvm = JvmPeak()
        skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        results: dict[str, tuple[float, int, int]] = {}
        timed_out: dict[str, int] = {}
        written: dict[str, Path] = {}
        for name, run in contenders(root, spark, engines, features).items():
            if name in skip:
                continue
            engine = name.split()[0]
            if name.endswith("from tiles") and f"{engine} end to end" not in results:
                console.print(f"materializing on {engine} first (not timed) ...")
                prepare(root, engine)
            out = root / "out" / name.replace(" ", "_")
            console.print(f"running {name} ... (load average {load_average()})")
            jvm.take()
            reset_own_peak()
            started = time.perf_counter()
            if not run_with_timeout(spark, functools.partial(run, out), args.timeout):
                timed_out[name] = jvm.take()
                console.print(f"  stopped after {args.timeout:.0f} s")
                continue
            results[name] = (time.perf_counter() - started, own_peak(), jvm.take())
            written[name] = out
            console.print(f"  {results[name][0]:.1f} s")
        reference = next(n for n in ("embedded from tiles", "spark from tiles") if n in results)
        check_equal(written, features, reference)
        print_results(console, args, results, timed_out, reference)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
