"""Tiles built in plain numpy, the way the Spark tile job defines them (test support).

Finest tiles build each (key, bucket)'s IR from its events; each coarser granularity merges
its children in time order, as the Spark rollups do. Lets assembler tests run without Spark;
the engine tests check the Spark tiles against the reference evaluator separately.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.plan.keys import key_bucket
from robusta.plan.model import TileGroup

TS_TYPE = pa.timestamp("us", tz="UTC")


def build_tiles(
    group: TileGroup, keys: Mapping[str, pa.Array], ts: pa.Array, inputs: Mapping[str, pa.Array]
) -> pa.Table:
    """Tiles of every granularity for events with key columns ``keys`` (by layout column),
    timestamps ``ts`` (int64 microseconds, nulls dropped) and input columns ``inputs``."""
    layout = group.layout
    names = [k.column for k in layout.keys]
    valid = pc.is_valid(ts)
    for name in names:
        valid = pc.and_(valid, pc.is_valid(keys[name]))
    keep = pc.filter(pa.array(np.arange(len(ts))), valid)
    key_cols = [pc.take(keys[n], keep) for n in names]
    micros = np.asarray(pc.take(ts, keep).to_numpy(zero_copy_only=False), np.int64)
    sizes = sorted(g.micros for g in layout.granularities)
    by_size = {g.micros: g.name for g in layout.granularities}
    codes = _codes(key_cols)
    bucket = micros - np.mod(micros, sizes[0])
    order = np.lexsort((micros, bucket, codes))
    starts = _run_starts(codes[order], bucket[order])
    offsets = np.append(starts, len(order)).astype(np.int64)
    first = order[starts]
    events = np.diff(offsets)
    states = {}
    for f in group.features:
        values = f.op_input(lambda name: pc.take(pc.take(inputs[name], keep), pa.array(order)))
        states[f.name] = f.op.build(micros[order], values, offsets)
    levels = [(sizes[0], codes[first], bucket[first], first, events, states)]
    for size in sizes[1:]:
        _, c_codes, c_bucket, c_first, c_events, c_states = levels[-1]
        parent = c_bucket - np.mod(c_bucket, size)
        p_starts = _run_starts(c_codes, parent)  # children are sorted by (key, bucket)
        p_offsets = np.append(p_starts, len(c_codes)).astype(np.int64)
        merged = {f.name: f.op.merge_segments(c_states[f.name], p_offsets) for f in group.features}
        p_events = np.add.reduceat(c_events, p_starts) if len(p_starts) else c_events[:0]
        levels.append(
            (size, c_codes[p_starts], parent[p_starts], c_first[p_starts], p_events, merged)
        )
    parts = []
    for size, _, starts_us, rep, events_n, level_states in levels:
        columns: dict[str, pa.Array] = {
            n: pc.take(col, pa.array(rep)) for n, col in zip(names, key_cols, strict=True)
        }
        primary = columns[layout.primary].to_pylist()
        columns["key_bucket"] = pa.array(
            [key_bucket(k, layout.key_buckets) for k in primary], pa.int32()
        )
        columns["granularity"] = pa.array([by_size[size]] * len(rep), pa.string())
        columns["bucket_start"] = pa.array(starts_us, pa.int64()).cast(TS_TYPE)
        columns["events"] = pa.array(events_n, pa.int64())
        for f in group.features:
            columns[f.ir_column] = f.op.to_arrow(level_states[f.name])
        parts.append(pa.table(columns))
    return pa.concat_tables(parts)


def _codes(columns: list[pa.Array]) -> np.ndarray:
    combined = np.zeros(len(columns[0]) if columns else 0, np.int64)
    for column in columns:
        codes = np.asarray(pc.dictionary_encode(column).indices.to_numpy(), np.int64)
        combined = np.unique(combined * (codes.max(initial=0) + 1) + codes, return_inverse=True)[
            1
        ].astype(np.int64)
    return combined


def _run_starts(codes: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """First index of each run of equal (code, bucket) in sorted arrays."""
    if len(codes) == 0:
        return np.zeros(0, np.int64)
    change = (np.diff(codes) != 0) | (np.diff(buckets) != 0)
    return np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)


__all__ = ["build_tiles"]
