"""Benchmark: streaming freshness, from a file landing to its events being visible in lookups.

A throwaway project streams a landing folder of Parquet files (one spec: count and sum per
user, windows 1h and lifetime, granularities [1d, 1h, 5m], watermark 1s, trigger ``--trigger``)
into the embedded online store; the stream runs in this process, lookups too (no JVM on the
lookup path: ``FeatureClient``).

Every ``--interval`` seconds one file lands (written under a hidden name, then renamed, as
producers must). File ``i`` holds ``--events`` events of random users in 5-minute bucket ``i``
of synthetic event time, one event of a probe user in that bucket, and events at the start
of bucket ``i + 1`` (a file carries events up to its landing time), so the watermark passes
bucket ``i`` when file ``i`` is processed. *Visible* means ``get_features`` for the probe user
returns ``n_events_lifetime == i + 1``: the file's bucket is behind the version pointer and
its events are in the values. Latency = visible time - landing time (polled every 10 ms);
p50/p95 over the files after ``--warmup`` (the first micro-batches compile Spark code).

``--active-keys N`` sets how many keys the open day holds: the first file (not timed) adds
one event of each of N users, landed as files of at most 500,000 users that the stream
takes a file a micro-batch (``maxFilesPerTrigger: 1``, for every file), and every later
file's events are of users among them. A
micro-batch must cost what it touches, not what the open day holds: per-batch time (each
``run_batch``) and the driver's resident memory before and after the timed files are printed
per engine. ``--engines`` runs the stream on each engine in turn, each in a process of its
own (its memory its own), in the same run.

The competitor is the same platform without a stream, what a batch-only feature store
offers: after each file lands, ``robusta materialize`` over its day and ``robusta upload``
(in the same process and Spark session, after the stream stopped), timed the same way over
``--batch-files`` files. Peak memory: the driver's peak RSS and the Spark JVM's (VmHWM).

    PYTHONPATH=. .venv/bin/python bench/freshness.py --files 40 --interval 1.5
    PYTHONPATH=. .venv/bin/python bench/freshness.py --active-keys 1000000 --batch-files 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from robusta.workspace import Workspace

MIN = 60_000_000
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


FIRST_FILE_KEYS = 500_000
# More Spark settings for the stream's session (e.g. `, spark.sql...: "false"`), to compare.
SPARK_CONF = os.environ.get("FRESHNESS_SPARK_CONF", "")


def config(trigger: str, engine: str) -> str:
    return textwrap.dedent(f"""\
        project: freshness
        engine: {engine}
        sources:
          events:
            format: parquet
            path: landing
            schema: "user_id STRING, amount DOUBLE, ts TIMESTAMP"
            options: {{maxFilesPerTrigger: "1"}}
        entities:
          USER_ID: {{type: string}}
        streaming:
          checkpoint: checkpoints
          trigger: {trigger}
          watermark: 1s
        spark: {{master: "local[2]", conf: {{spark.sql.shuffle.partitions: "2"{SPARK_CONF}}}}}
        """)


def file_events(
    i: int, n: int, users: int, rng: np.random.Generator, every_user: bool = False
) -> pa.Table:
    """File ``i``: ``n`` events of random users among ``users`` (with ``every_user``, one
    event of each of them instead), the probe's, and the next bucket's first events."""
    start = T0 + i * 5 * MIN
    picked = np.arange(users) if every_user else rng.integers(0, users, n)
    ts = np.concatenate(
        [
            start + rng.integers(0, 5 * MIN, len(picked)),
            [start + 60_000_000],  # the probe
            start + 5 * MIN + rng.integers(2_000_000, 3_000_000, 3),  # the next bucket began
        ]
    )
    names = [f"u{k}" for k in picked.tolist()] + ["probe"] + ["tick"] * 3
    return pa.table(
        {
            "user_id": pa.array(names, pa.string()),
            "amount": pa.array(rng.random(len(names)) * 10, pa.float64()),
            "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }
    )


def first_files(first: pa.Table, users: int) -> list[pa.Table]:
    """The first file's events (one of every user, then the probe's and the ticks) as files
    of at most :data:`FIRST_FILE_KEYS` users, the probe and the ticks in the last: a stream
    catches up a file a micro-batch (``maxFilesPerTrigger``), and a batch's touched tiles
    reach the Spark driver at once, which at 5M keys is more than its memory."""
    starts = list(range(0, users, FIRST_FILE_KEYS)) or [0]
    ends = [*starts[1:], first.num_rows]
    return [first.slice(a, b - a) for a, b in zip(starts, ends, strict=True)]


def land(folder: Path, table: pa.Table, name: str) -> None:
    hidden = folder / f".{name}.parquet"
    pq.write_table(table, hidden, coerce_timestamps="us")
    hidden.rename(folder / f"{name}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--interval", type=float, default=1.5, help="seconds between files")
    parser.add_argument("--events", type=int, default=2000, help="events per file")
    parser.add_argument("--active-keys", type=int, default=5000, help="keys in the open day")
    parser.add_argument("--engines", default="embedded,spark")
    parser.add_argument("--trigger", default="1s")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-files", type=int, default=6, help="files for the batch path")
    parser.add_argument("--one-engine", help=argparse.SUPPRESS)  # a child process's engine
    args = parser.parse_args()
    if args.one_engine:
        print(json.dumps(stream_path(args, args.one_engine)))
        return

    results = {engine: child(engine) for engine in args.engines.split(",")}
    batched = timed_files(batch_path(args), 1) if args.batch_files else []
    print(
        f"{args.active_keys:,} keys in the open day, files of {args.events} events, one every "
        f"{args.interval}s, trigger {args.trigger}"
    )
    print(
        f"{'path':<30}{'files':>6}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'batch p50 s':>13}"
        f"{'events/s':>10}{'RSS MiB before':>16}{'after':>7}{'peak':>7}{'JVM peak':>10}"
        f"{'anon MiB before':>17}{'after':>7}"
    )
    for engine, r in results.items():
        p50, p95, worst = percentiles(timed_files(r["latencies"], args.warmup))
        batch = statistics.median(r["batch_seconds"][args.warmup :])
        # Sustained: the timed files' events over the time every batch took (those without
        # data included: on Spark a bucket closes in the batch after its events').
        rate = (args.events + 4) * args.files / max(sum(r["batch_seconds"]), 1e-9)
        print(
            f"{'robusta stream (' + engine + ')':<30}{len(r['latencies']) - args.warmup:>6}"
            f"{p50:>8.2f}{p95:>8.2f}{worst:>8.2f}{batch:>13.2f}{rate:>10.0f}"
            f"{r['rss_before']:>16.0f}{r['rss_after']:>7.0f}{r['peak']:>7.0f}"
            f"{r['jvm_peak']:>10.0f}{r['anon_before']:>17.0f}{r['anon_after']:>7.0f}"
        )
    for engine, r in results.items():
        if r.get("phases"):
            parts = ", ".join(f"{name} {ms:.0f}" for name, ms in sorted(r["phases"].items()))
            print(f"{engine} micro-batch, median ms: {parts}")
    if batched:
        p50, p95, worst = percentiles(batched)
        print(f"{'materialize + upload':<30}{len(batched):>6}{p50:>8.2f}{p95:>8.2f}{worst:>8.2f}")
        for engine, r in results.items():
            ratio = p50 / percentiles(timed_files(r["latencies"], args.warmup))[0]
            print(f"the stream ({engine}) is {ratio:.1f}x fresher than batch at p50")


def child(engine: str) -> dict[str, Any]:
    """The stream path on ``engine`` in a process of its own (this script, ``--one-engine``)."""
    command = [sys.executable, *sys.argv, "--one-engine", engine]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {engine} stream failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def project(trigger: str, engine: str = "embedded") -> tuple[Path, Workspace]:
    from robusta.workspace import load_workspace

    root = Path(tempfile.mkdtemp(prefix="robusta-freshness-"))
    (root / "feature_defs").mkdir()
    (root / "landing").mkdir()
    (root / "feature_defs" / "activity.yaml").write_text(SPEC)
    (root / "robusta.yaml").write_text(config(trigger, engine))
    return root, load_workspace(root / "robusta.yaml").require_valid()


def stream_path(args: argparse.Namespace, engine: str) -> dict[str, Any]:
    """Landing -> visible through `robusta stream` on ``engine``, per file; each batch's
    time; the driver's resident memory before and after the timed files, and its peak."""
    from robusta.jobs.stream import stream
    from robusta.jobs.stream.runners import SparkQuery
    from robusta.jobs.stream.spec import SpecStream
    from robusta.serving import FeatureClient

    batch_seconds: list[float] = []
    # A batch, whole: embedded, the query over its files and the three steps; Spark, the
    # state operator's job (foreachBatch collects it) and the steps.
    owner: Any = SpecStream if engine == "embedded" else SparkQuery
    name = "run_batch" if engine == "embedded" else "handle"
    real = getattr(owner, name)

    def timed_batch(self: Any, rows: Any, batch_id: int) -> None:
        started = time.perf_counter()
        real(self, rows, batch_id)
        batch_seconds.append(time.perf_counter() - started)

    setattr(owner, name, timed_batch)
    root, workspace = project(args.trigger, engine)
    try:
        rng = np.random.default_rng(1)
        stop = threading.Event()
        runner = threading.Thread(target=lambda: stream(workspace, stop=stop), daemon=True)
        # The first file starts the engine and fills the open day; it is not timed.
        first = file_events(0, args.events, args.active_keys, rng, every_user=True)
        for j, part in enumerate(first_files(first, args.active_keys)):
            land(root / "landing", part, f"f0000-{j:03d}")
        runner.start()
        deadline = time.perf_counter() + 1800
        while not (root / ".robusta" / "online" / "data.mdb").exists():
            if time.perf_counter() > deadline or not runner.is_alive():
                raise SystemExit("the stream did not start; run with ROBUSTA_DEBUG=1")
            time.sleep(0.2)
        client = FeatureClient.from_config(root / "robusta.yaml")
        wait_visible(client, 1, 1800, runner)
        batch_seconds.clear()
        rss_before, anon_before = rss_mib(), rss_mib("RssAnon")
        latencies = []
        for i in range(1, args.files + 1):
            landed = time.perf_counter()
            events = file_events(i, args.events, args.active_keys, rng)
            land(root / "landing", events, f"f{i:04d}")
            wait_visible(client, i + 1, 120, runner)
            latencies.append(time.perf_counter() - landed)
            time.sleep(max(0.0, args.interval - (time.perf_counter() - landed)))
        rss_after, anon_after = rss_mib(), rss_mib("RssAnon")
        phases = spark_phases(args.files) if engine == "spark" else {}
        stop.set()
        runner.join(timeout=120)
        return {
            "latencies": latencies,
            "batch_seconds": batch_seconds,
            "rss_before": rss_before,
            "rss_after": rss_after,
            "anon_before": anon_before,
            "anon_after": anon_after,
            "peak": peak_driver_mib(),
            "jvm_peak": peak_jvm_mib() if engine == "spark" else 0.0,
            "phases": phases,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def batch_path(args: argparse.Namespace) -> list[float]:
    """Landing -> visible through `materialize` of the file's day and `upload`, per file."""
    from robusta.jobs.materialize import materialize
    from robusta.jobs.upload import upload
    from robusta.serving import FeatureClient
    from robusta.spec.durations import from_micros

    root, workspace = project(args.trigger)
    try:
        rng = np.random.default_rng(2)
        latencies = []
        client = None
        for i in range(args.batch_files + 1):
            landed = time.perf_counter()
            events = file_events(i, args.events, args.active_keys, rng, every_user=i == 0)
            land(root / "landing", events, f"f{i:04d}")
            if i == 0:  # lifetime windows: the first upload needs tiles of all time
                materialize(workspace)
            else:  # then the file's day (the smallest range batch rewrites)
                start = from_micros(T0 + i * 5 * MIN)
                materialize(workspace, start=start, end=start + timedelta(minutes=5))
            upload(workspace)
            client = client or FeatureClient.from_config(root / "robusta.yaml")
            wait_visible(client, i + 1, 60)
            latencies.append(time.perf_counter() - landed)
        return latencies
    finally:
        shutil.rmtree(root, ignore_errors=True)


def spark_phases(batches: int) -> dict[str, float]:
    """Median ms of each part of the spec query's last ``batches`` micro-batches, from
    Spark's own progress reports (``durationMs``, and the state operator's metrics)."""
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.getOrCreate()  # the stream's session (made in its thread)
    query = next((q for q in spark.streams.active if (q.name or "").startswith("robusta_")), None)
    if query is None:
        return {}
    samples: dict[str, list[float]] = {}
    for progress in query.recentProgress[-2 * batches :]:
        for name, ms in (progress.durationMs or {}).items():
            samples.setdefault(name, []).append(float(ms))
        for operator in progress.stateOperators or []:
            for name in ("allUpdatesTimeMs", "allRemovalsTimeMs", "commitTimeMs"):
                samples.setdefault(f"state.{name}", []).append(float(getattr(operator, name)))
    return {name: statistics.median(values) for name, values in samples.items()}


def timed_files(latencies: list[float], warmup: int) -> list[float]:
    return sorted(latencies[warmup:])


def percentiles(timed: list[float]) -> tuple[float, float, float]:
    p95 = timed[min(len(timed) - 1, round(0.95 * (len(timed) - 1)))]
    return statistics.median(timed), p95, max(timed)


def peak_driver_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmRSS``; ``RssAnon``: without file-backed
    pages such as the embedded state's LMDB map, which the kernel can drop)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_jvm_mib() -> float:
    """The Spark JVM's peak resident memory (VmHWM), 0 if unknown."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    process = getattr(gateway, "proc", None)
    if process is None:
        return 0.0
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_visible(
    client: object, count: int, timeout: float, runner: threading.Thread | None = None
) -> None:
    """Until the probe's ``count``-th event is visible; stops at once if the stream died
    (its error is on stderr: Python prints a thread's uncaught exception)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if runner is not None and not runner.is_alive():
            raise SystemExit(f"the stream stopped before the probe's event {count} was visible")
        try:
            [vector] = client.get_features(  # type: ignore[attr-defined]
                [{"USER_ID": "probe"}], ["n_events_lifetime"], at=None
            )
        except Exception:  # nothing committed yet
            time.sleep(0.05)
            continue
        if vector.values["n_events_lifetime"] == count:
            return
        time.sleep(0.01)
    raise TimeoutError(f"the probe's event {count} did not become visible in {timeout}s")


if __name__ == "__main__":
    main()
