"""Benchmark: the feature server under load on loopback, beside the in-process client.

The lookup benchmark's project (``bench/lookup.py``; by default the retail log with the
spec of every operator and windows 1h to 90d and lifetime, materialized and uploaded) is
served by ``robusta serve`` in a process of its own, once per ASGI stack compared (uvicorn
with uvloop + httptools, the default, and with asyncio + h11). A bounded open-loop
generator (uvloop, a protocol per keep-alive connection, its sends paced by a thread) sends
``--rate`` requests/s of 1 random entity for ``--seconds``; latency runs from each request's
scheduled time to its complete answer, so a stall counts against every request it delays.
Beside it, the same lookups in-process (``FeatureClient.get_features``), measured in the
same run, each server's peak RSS and CPU per request (server, and the load generator's own).

    .venv/bin/python bench/serve.py --rate 1000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import uvloop
from lookup import (
    PREFIX,
    REDIS_URL,
    SPECS,
    build_generated,
    build_retail,
    percentiles,
    timed,
)
from rich.console import Console
from rich.table import Table

STACKS = {
    "uvicorn+uvloop+httptools": ("uvloop", "httptools"),
    "uvicorn+asyncio+h11": ("asyncio", "h11"),
}
CONNECTIONS = 32
TARGET_P99_MS = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(config: Path, loop: str, http: str, port: int) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from robusta.serving import FeatureClient; "
        "from robusta.serving.server import run_server; "
        "client = FeatureClient.from_config(sys.argv[1]); "
        "run_server(client, '127.0.0.1', int(sys.argv[2]), timeout_ms=1000, threads=4, "
        "loop=sys.argv[3], http=sys.argv[4])"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(config), str(port), loop, http])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start within 60 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a request out, its whole answer read back, then
    ``done(self, status)``. A protocol, not streams: a line-by-line reader costs the
    generator more CPU than the server spends on a request, on the same two cores."""

    def __init__(self, done: Callable[[Connection, int], None]) -> None:
        self.done = done
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.due = 0.0  # when the request in flight was due

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # the server's keep-alive timeout, or its end

    def send(self, request: bytes, due: float) -> None:
        if self.transport is None:
            raise RuntimeError("the server closed a connection the load generator needs")
        self.due = due
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        self.done(self, int(head[9:12]))


def request_bytes(port: int, body: bytes) -> bytes:
    head = (
        f"POST /features HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def load(port: int, bodies: list[bytes], rate: float) -> tuple[list[float], int]:
    """Open loop: request ``i`` is due at ``i / rate`` s; latency from that due time to its
    answer, read whole. A request finding every connection busy waits for the first free.

    A thread paces the sends (``time.sleep``: tens of microseconds late at most) and hands
    each to the event loop as it falls due; the loop's own timers wait in whole
    milliseconds (epoll), which would add up to a millisecond of the generator's to every
    request's latency."""
    loop = asyncio.get_running_loop()
    requests = [request_bytes(port, body) for body in bodies]
    latencies: list[float] = []
    failures = 0
    idle: collections.deque[Connection] = collections.deque()  # first in, first out: each
    # connection is used in turn, so none idles past the server's keep-alive timeout
    waiting: collections.deque[tuple[bytes, float]] = collections.deque()
    finished = loop.create_future()

    def done(connection: Connection, status: int) -> None:
        nonlocal failures
        latencies.append(time.perf_counter() - connection.due)
        failures += status != 200
        if waiting:
            connection.send(*waiting.popleft())
        else:
            idle.append(connection)
        if len(latencies) == len(requests) and not finished.done():
            finished.set_result(None)

    def fire(request: bytes, due: float) -> None:
        if idle:
            idle.popleft().send(request, due)
        else:
            waiting.append((request, due))

    def pace() -> None:
        started = time.perf_counter()
        for i, request in enumerate(requests):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(fire, request, due)

    for _ in range(CONNECTIONS):
        _, connection = await loop.create_connection(lambda: Connection(done), "127.0.0.1", port)
        idle.append(connection)
    connections = list(idle)
    await asyncio.to_thread(pace)
    await asyncio.wait_for(finished, timeout=60)
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    return latencies, failures


def main() -> None:
    parser = argparse.ArgumentParser(description="feature server load benchmark")
    parser.add_argument("--keys", type=int, default=100_000, help="generated data only")
    parser.add_argument("--events", type=int, default=2_000_000, help="generated data only")
    parser.add_argument("--data", choices=["retail", "generated"], default="retail")
    parser.add_argument("--spec", choices=sorted(SPECS), help="default: full on retail")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration (bounded)")
    args = parser.parse_args()
    args.spec = args.spec or ("full" if args.data == "retail" else "five")
    console = Console(width=150)
    root = Path(tempfile.mkdtemp(prefix="robusta-serve-"))
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

    build = build_retail if args.data == "retail" else build_generated
    built = build(root, args, console)
    for store in built.stores.values():
        store.close()
    workspace, keys, pointer = built.workspace, built.keys, built.pointer
    features = [o.name for s in workspace.plan.specs for o in s.outputs]
    entity = next(
        iter(k.entity for s in workspace.plan.specs for g in s.groups for k in g.layout.keys)
    )
    at = from_micros(pointer)
    rng = random.Random(5)
    count = min(int(args.rate * args.seconds), 200_000)
    picks = [rng.choice(keys) for _ in range(count)]
    bodies = [
        json.dumps({"entities": [{entity: k}], "features": features, "at": at.isoformat()}).encode()
        for k in picks
    ]
    with FeatureClient.from_config(root / "robusta.yaml") as client:
        calls = iter(picks * 2)
        inproc = percentiles(
            timed(
                lambda: client.get_features([{entity: next(calls)}], features, at),
                min(count, 5_000),
            )
        )
    rows = []
    for name, (loop_kind, http) in STACKS.items():
        port = free_port()
        server = start(root / "robusta.yaml", loop_kind, http, port)
        try:
            uvloop.run(load(port, bodies[: min(500, count)], args.rate))  # warm up
            started, cpu = time.perf_counter(), cpu_seconds(server.pid)
            own = time.process_time()
            latencies, failures = uvloop.run(load(port, bodies, args.rate))
            elapsed = time.perf_counter() - started
            server_us = (cpu_seconds(server.pid) - cpu) / len(bodies) * 1e6
            client_us = (time.process_time() - own) / len(bodies) * 1e6
            rss = peak_rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(10)
        p50, p99, p999 = percentiles(latencies)
        rows.append(
            (name, len(latencies) / elapsed, failures, p50, p99, p999, rss, server_us, client_us)
        )
    table = Table(
        title=f"robusta serve: 1 entity x {len(features)} features, {count:,} requests "
        f"at {args.rate:,.0f}/s (open loop)"
    )
    for column in (
        "stack",
        "achieved req/s",
        "non-200",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "in-process p50 / p99 ms",
        "p99 HTTP / in-process",
        f"p99 <= {TARGET_P99_MS} ms",
        "server peak RSS MiB",
        "CPU us/request server / load client",
    ):
        table.add_column(column, justify="right")
    for name, achieved, failures, p50, p99, p999, rss, server_us, client_us in rows:
        table.add_row(
            name,
            f"{achieved:,.0f}",
            str(failures),
            f"{p50:.2f}",
            f"{p99:.2f}",
            f"{p999:.2f}",
            f"{inproc[0]:.3f} / {inproc[1]:.3f}",
            f"{p99 / inproc[1]:.1f}x",
            "yes" if p99 <= TARGET_P99_MS else "NO",
            f"{rss:,.0f}",
            f"{server_us:,.0f} / {client_us:,.0f}",
        )
    console.print(table)
    console.print(
        f"bench process peak RSS {peak_rss_mib(os.getpid()):,.0f} MiB; "
        f"load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
