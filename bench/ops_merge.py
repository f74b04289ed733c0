"""Benchmark: merging tile IRs into windows, vectorized fold vs the obvious alternatives.

Every assembler (PIT join, online lookup) spends its time in ``Operator.merge_segments``. This
measures it on the shapes a 7d window over [1d, 1h, 5m] tiles produces (1..41 tiles a row),
beside two competitors computed in the same run on the same data:

- a hand-written pure-Python loop per row (what a naive online assembler would do), and
- numpy's ``ufunc.reduceat`` where one exists (count, sum, max): the fastest numpy primitive,
  which however does not fix the float summation order.

    .venv/bin/python bench/ops_merge.py [--rows 100000]

Prints rows/s, ratios and peak memory (tracemalloc); results are checked equal first.
"""

from __future__ import annotations

import argparse
import itertools
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from robusta.ops import make_operator
from robusta.spec.types import DataType

Loop = Callable[[list[float], list[int]], list[Any]]


def loop_count(values: list[float], bounds: list[int]) -> list[Any]:
    # Each tile IR of a count is its event count; here every tile holds one event.
    counts = [1] * len(values)
    return [sum(counts[lo:hi]) for lo, hi in itertools.pairwise(bounds)]


def loop_sum(values: list[float], bounds: list[int]) -> list[Any]:
    out = []
    for lo, hi in itertools.pairwise(bounds):
        total = 0.0
        for v in values[lo:hi]:
            total += v
        out.append(total)
    return out


def loop_max(values: list[float], bounds: list[int]) -> list[Any]:
    return [max(values[lo:hi]) for lo, hi in itertools.pairwise(bounds)]


def loop_avg(values: list[float], bounds: list[int]) -> list[Any]:
    return [
        s / (hi - lo)
        for s, lo, hi in zip(loop_sum(values, bounds), bounds, bounds[1:], strict=False)
    ]


LOOPS: dict[str, Loop] = {"count": loop_count, "sum": loop_sum, "max": loop_max, "avg": loop_avg}
REDUCEAT: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "count": np.add.reduceat,  # over the per-tile counts, like ours
    "sum": np.add.reduceat,
    "max": np.maximum.reduceat,
}


def measure(run: Callable[[], Any]) -> tuple[float, int, Any]:
    """Best wall time of 3 runs, then peak traced memory of one more (tracing slows numpy)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak, result


def main() -> None:
    parser = argparse.ArgumentParser(description="merge_segments benchmark")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 42, size=args.rows))])
    n = int(offsets[-1])
    ts = np.sort(rng.integers(0, 30 * 86_400_000_000, size=n))
    raw = rng.normal(50, 20, size=n)
    values, as_list, bounds = pa.array(raw), raw.tolist(), offsets.tolist()
    table = Table(title=f"merge_segments: {args.rows:,} rows from {n:,} tile IRs")
    for column in (
        "op",
        "robusta rows/s",
        "python loop rows/s",
        "vs loop",
        "numpy reduceat rows/s",
        "vs reduceat",
        "peak MiB robusta / loop",
    ):
        table.add_column(column, justify="right")
    for name, loop in LOOPS.items():
        op = make_operator(name, DataType.DOUBLE)
        state = op.lift(ts, values)
        ours, ours_peak, merged = measure(partial(op.merge_segments, state, offsets))
        theirs, loop_peak, looped = measure(partial(loop, as_list, bounds))
        assert np.allclose(op.finalize(merged).to_numpy(zero_copy_only=False), looped), name
        rate, loop_rate = args.rows / ours, args.rows / theirs
        reduce_cells = ["-", "-"]
        if name in REDUCEAT:
            data = np.ones(n, np.int64) if name == "count" else raw
            numpy_time, _, reduced = measure(partial(REDUCEAT[name], data, offsets[:-1]))
            assert np.allclose(op.finalize(merged).to_numpy(zero_copy_only=False), reduced), name
            reduce_cells = [f"{args.rows / numpy_time:,.0f}", f"{numpy_time / ours:.2f}x"]
        table.add_row(
            name,
            f"{rate:,.0f}",
            f"{loop_rate:,.0f}",
            f"{theirs / ours:.1f}x",
            *reduce_cells,
            f"{ours_peak / 2**20:,.1f} / {loop_peak / 2**20:,.1f}",
        )
    console = Console(width=140)
    console.print(table)
    Console().print(
        "ratios > 1x mean robusta is faster; reduceat sums in numpy's pairwise order "
        "and so cannot promise bit-identical results across paths."
    )


if __name__ == "__main__":
    main()
