"""Tile-table commits are optimistic: a writer that read the table before another writer
committed fails with nothing written (pyiceberg's replay on the new state is turned off),
so a stream or a materialize never commits a plan made on a stale table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from robusta.plan.model import TileGroup
from robusta.spec.model import OfflineConfig
from robusta.spec.types import DataType
from robusta.store.files import LOCAL
from robusta.store.tiles import (
    NO_COMMIT_RETRY,
    CommitConflictError,
    Run,
    TileTables,
    coverage,
    write_tile_files,
)
from tests.plan.test_assembly import GMIN, T0, group_for, tiles_of


def offline(root: Path) -> OfflineConfig:
    return OfflineConfig({"uri": f"sqlite:///{root / 'catalog.db'}"}, str(root / "warehouse"), "t")


def run_of(tables: TileTables, table: Any, group: TileGroup, key: str, step: int) -> Run:
    """A run holding the tiles of one event of ``key`` at 5-minute step ``step``."""
    tiles = tiles_of(group, [(key, T0 + step * GMIN, f"v{step}")])
    tiles = tiles.append_column("spec_version", pa.array(["v1"] * tiles.num_rows, pa.string()))
    run = tables.start_run(table)
    write_tile_files(tiles, group, run.folder, tables.storage)
    return run


def test_a_commit_on_a_stale_table_fails_with_nothing_written(tmp_path: Path) -> None:
    tables = TileTables(offline(tmp_path))
    group = group_for("count", DataType.STRING, {})
    first = tables.ensure(group, "v1")
    stale = tables.ensure(group, "v1")  # a second writer read the table too
    tables.replace(first, [], run_of(tables, first, group, "a", 1), {}, covered=(T0, T0 + GMIN))
    theirs = run_of(tables, tables.ensure(group, "v1"), group, "b", 2)
    with pytest.raises(CommitConflictError, match="nothing of this run was committed"):
        tables.replace(stale, [], theirs, {}, covered=(T0, T0 + 2 * GMIN))
    now = tables.ensure(group, "v1")
    assert set(now.scan().to_arrow().column("k").to_pylist()) == {"a"}
    assert coverage(now) == [(T0, T0 + GMIN)]  # the loser's coverage is not there either
    # Reading the table again, the same commit goes through.
    tables.replace(now, [], theirs, {}, covered=(T0, T0 + 2 * GMIN))
    assert set(tables.ensure(group, "v1").scan().to_arrow().column("k").to_pylist()) == {"a", "b"}


def test_tables_made_before_get_the_setting(tmp_path: Path) -> None:
    tables = TileTables(offline(tmp_path))
    group = group_for("count", DataType.STRING, {})
    table = tables.ensure(group, "v1")
    with table.transaction() as tx:
        tx.remove_properties(*NO_COMMIT_RETRY)
    before = tables.load(group.layout.table)
    assert before is not None
    assert not NO_COMMIT_RETRY.items() <= before.properties.items()
    assert NO_COMMIT_RETRY.items() <= tables.ensure(group, "v1").properties.items()


def test_data_files_are_pyiceberg_s_with_ir_bounds_left_out(tmp_path: Path) -> None:
    """``data_files`` makes what pyiceberg's ``parquet_files_to_data_files`` makes for every
    file (partition, counts, sizes, offsets, the bounds scans prune on), except bounds and
    counts of IR columns, which it leaves out."""
    from pyiceberg.io.pyarrow import parquet_files_to_data_files

    from robusta.store.tiles import data_files

    tables = TileTables(offline(tmp_path))
    group = group_for("last_n", DataType.STRING, {"n": 2})
    table = tables.ensure(group, "v1")
    events: list[tuple[Any, int | None, Any]] = [
        (key, T0 + step * GMIN + 7, f"v{step}") for key in "abc" for step in range(40)
    ]
    tiles = tiles_of(group, events)
    tiles = tiles.append_column("spec_version", pa.array(["v1"] * tiles.num_rows, pa.string()))
    paths = write_tile_files(tiles, group, str(tmp_path / "run"), LOCAL)
    assert len(paths) > 3
    ours = data_files(table.io, table.metadata, paths)
    theirs = list(parquet_files_to_data_files(table.io, table.metadata, iter(paths)))
    schema = table.metadata.schema()
    pruned = {
        f.field_id
        for f in schema.fields
        if f.name in ("k", "key_bucket", "granularity", "bucket_start", "events")
    }
    ir = {schema.find_field(group.features[0].ir_column).field_id}
    for mine, pyiceberg in zip(ours, theirs, strict=True):
        assert mine.partition == pyiceberg.partition
        assert (mine.file_path, mine.record_count, mine.file_size_in_bytes) == (
            pyiceberg.file_path,
            pyiceberg.record_count,
            pyiceberg.file_size_in_bytes,
        )
        assert mine.column_sizes == pyiceberg.column_sizes
        assert mine.split_offsets == pyiceberg.split_offsets
        for stats in ("lower_bounds", "upper_bounds", "value_counts", "null_value_counts"):
            got, want = getattr(mine, stats), getattr(pyiceberg, stats)
            assert {i: got[i] for i in pruned} == {i: want[i] for i in pruned}
            assert not ir & set(got)
