"""Online tile records updated by a stream: a key's stored tiles with new full values merged in.

A micro-batch gives, for every key it touched, the full values of some tiles (all
granularities). Each key's record (:mod:`robusta.store.online.records`: tiles sorted by level and
bucket start) is read from the live generation, the tiles with the same (level, bucket start)
are replaced, new ones inserted, and the record is encoded again. Replacing by full values
makes a replayed batch write the same bytes again.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.plan.assembly import levels
from robusta.plan.key_assembly import BUCKET_START, LEVEL
from robusta.plan.keys import record_keys
from robusta.plan.model import TileGroup
from robusta.store.online import OnlineStateError, OnlineStore, Record
from robusta.store.online.records import (
    decode,
    encode,
    key_runs,
    one_batch,
    own_slices,
    tile_record_schema,
)

_KEY = "__key"
_NEW = "__new"


def merge_tile_records(
    store: OnlineStore, spec: str, generation: int, group: TileGroup, tiles: pa.Table
) -> list[Record]:
    """The records of the keys in ``tiles`` (tile-table columns) with those tiles merged in."""
    if tiles.num_rows == 0:
        return []
    tiles = tiles.drop_columns([c for c in tiles.column_names if c.startswith("__")])
    schema = tile_record_schema(group)
    keys = record_keys([tiles.column(k.column).combine_chunks() for k in group.layout.keys])
    micros = tiles.column(BUCKET_START).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    new = {
        _KEY: keys,
        LEVEL: pa.array(levels(tiles.column("granularity"), group), pa.int8()),
        BUCKET_START: micros.combine_chunks(),
        **{f.ir_column: tiles.column(f.ir_column).cast(f.ir_type) for f in group.features},
        _NEW: pa.array(np.ones(tiles.num_rows, np.int8)),
    }
    parts = [pa.table(new)]
    table = group.layout.table
    distinct = pc.unique(keys).to_pylist()
    live, raws = store.read(spec, [(table, k) for k in distinct])
    if live is not None and live.generation != generation:
        raise OnlineStateError(
            f"an upload replaced the online generation of spec {spec} while it was streamed; "
            "restart the stream with a fresh checkpoint"
        )
    for key, raw in zip(distinct, raws, strict=True):
        if raw is None:
            continue
        old = pa.Table.from_batches([decode(raw, schema)])
        n = old.num_rows
        parts.append(
            old.add_column(0, _KEY, pa.array([key] * n, pa.string())).append_column(
                _NEW, pa.array(np.zeros(n, np.int8))
            )
        )
    body = pa.concat_tables(parts, promote_options="permissive").sort_by(
        [
            (_KEY, "ascending"),
            (LEVEL, "ascending"),
            (BUCKET_START, "ascending"),
            (_NEW, "descending"),
        ]
    )
    body = body.filter(_first_of_each_tile(body))
    out: list[Record] = []
    runs = key_runs(body.column(_KEY).combine_chunks())
    data = pa.Table.from_arrays(
        [body.column(name).combine_chunks().cast(schema.field(name).type) for name in schema.names],
        schema=schema,
    )
    key_column = body.column(_KEY).combine_chunks()
    for a, batch in zip(runs[:-1].tolist(), own_slices(one_batch(data), runs), strict=True):
        out.append((table, str(key_column[a].as_py()), encode(batch)))
    return out


def _first_of_each_tile(body: pa.Table) -> pa.Array:
    """Rows that start a run of equal (key, level, bucket start): the new value, if any."""
    n = body.num_rows
    keep = np.ones(n, np.bool_)
    if n > 1:
        same = np.ones(n - 1, np.bool_)
        for name in (_KEY, LEVEL, BUCKET_START):
            column = body.column(name).combine_chunks()
            same &= pc.equal(column[1:], column[:-1]).to_numpy(zero_copy_only=False)
        keep[1:] = ~same
    return pa.array(keep)
