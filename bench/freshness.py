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

The competitor is the same platform without a stream, what a batch-only feature store
offers: after each file lands, ``robusta materialize`` over its day and ``robusta upload``
(in the same process and Spark session, after the stream stopped), timed the same way over
``--batch-files`` files. Peak memory: the driver's peak RSS and the Spark JVM's (VmHWM).

    PYTHONPATH=. .venv/bin/python bench/freshness.py --files 40 --interval 1.5
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

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


def config(trigger: str) -> str:
    return textwrap.dedent(f"""\
        project: freshness
        sources:
          events:
            format: parquet
            path: landing
            schema: "user_id STRING, amount DOUBLE, ts TIMESTAMP"
        entities:
          USER_ID: {{type: string}}
        streaming:
          checkpoint: checkpoints
          trigger: {trigger}
          watermark: 1s
        spark: {{master: "local[2]", conf: {{spark.sql.shuffle.partitions: "2"}}}}
        """)


def file_events(i: int, n: int, users: int, rng: np.random.Generator) -> pa.Table:
    start = T0 + i * 5 * MIN
    ts = np.concatenate(
        [
            start + rng.integers(0, 5 * MIN, n),
            [start + 60_000_000],  # the probe
            start + 5 * MIN + rng.integers(2_000_000, 3_000_000, 3),  # the next bucket began
        ]
    )
    names = [f"u{k}" for k in rng.integers(0, users, n)] + ["probe"] + ["tick"] * 3
    return pa.table(
        {
            "user_id": pa.array(names, pa.string()),
            "amount": pa.array(rng.random(len(names)) * 10, pa.float64()),
            "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }
    )


def land(folder: Path, table: pa.Table, name: str) -> None:
    hidden = folder / f".{name}.parquet"
    pq.write_table(table, hidden, coerce_timestamps="us")
    hidden.rename(folder / f"{name}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--interval", type=float, default=1.5, help="seconds between files")
    parser.add_argument("--events", type=int, default=2000, help="events per file")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--trigger", default="1s")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-files", type=int, default=6, help="files for the batch path")
    args = parser.parse_args()

    streamed = timed_files(stream_path(args), args.warmup)
    batched = timed_files(batch_path(args), 1)
    print(f"{'path':<28}{'files':>6}{'p50 s':>9}{'p95 s':>9}{'max s':>9}")
    for name, latencies in (("robusta stream", streamed), ("materialize + upload", batched)):
        p50, p95, worst = percentiles(latencies)
        print(f"{name:<28}{len(latencies):>6}{p50:>9.2f}{p95:>9.2f}{worst:>9.2f}")
    ratio = percentiles(batched)[0] / percentiles(streamed)[0]
    print(
        f"files of {args.events} events, one every {args.interval}s, trigger {args.trigger}: "
        f"the stream is {ratio:.1f}x fresher than batch at p50"
    )
    print(f"peak RSS: driver {peak_driver_mib():.0f} MiB, Spark JVM {peak_jvm_mib():.0f} MiB")


def project(trigger: str) -> tuple[Path, Workspace]:
    from robusta.workspace import load_workspace

    root = Path(tempfile.mkdtemp(prefix="robusta-freshness-"))
    (root / "feature_defs").mkdir()
    (root / "landing").mkdir()
    (root / "feature_defs" / "activity.yaml").write_text(SPEC)
    (root / "robusta.yaml").write_text(config(trigger))
    return root, load_workspace(root / "robusta.yaml").require_valid()


def stream_path(args: argparse.Namespace) -> list[float]:
    """Landing -> visible through `robusta stream`, per file."""
    from robusta.jobs.stream import stream
    from robusta.serving import FeatureClient

    root, workspace = project(args.trigger)
    try:
        rng = np.random.default_rng(1)
        stop = threading.Event()
        runner = threading.Thread(
            target=lambda: stream(workspace, stop=stop),
            daemon=True,
        )
        # The first file starts Spark and the query; it is not timed.
        land(root / "landing", file_events(0, args.events, args.users, rng), "f0000")
        runner.start()
        deadline = time.perf_counter() + 300
        while not (root / ".robusta" / "online" / "data.mdb").exists():
            if time.perf_counter() > deadline or not runner.is_alive():
                raise SystemExit("the stream did not start; run with ROBUSTA_DEBUG=1")
            time.sleep(0.2)
        client = FeatureClient.from_config(root / "robusta.yaml")
        wait_visible(client, 1, 300)
        latencies = []
        for i in range(1, args.files + 1):
            landed = time.perf_counter()
            land(root / "landing", file_events(i, args.events, args.users, rng), f"f{i:04d}")
            wait_visible(client, i + 1, 60)
            latencies.append(time.perf_counter() - landed)
            time.sleep(max(0.0, args.interval - (time.perf_counter() - landed)))
        stop.set()
        runner.join(timeout=60)
        return latencies
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
            land(root / "landing", file_events(i, args.events, args.users, rng), f"f{i:04d}")
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


def timed_files(latencies: list[float], warmup: int) -> list[float]:
    return sorted(latencies[warmup:])


def percentiles(timed: list[float]) -> tuple[float, float, float]:
    p95 = timed[min(len(timed) - 1, round(0.95 * (len(timed) - 1)))]
    return statistics.median(timed), p95, max(timed)


def peak_driver_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def wait_visible(client: object, count: int, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
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
