"""Tile tables in Iceberg: one table per tile group, committed with pyiceberg.

Layout (one row per tile): the key columns, ``key_bucket`` (plan.keys), ``granularity`` (its
canonical name, e.g. ``5m``), ``bucket_start`` (UTC), ``events`` (events in the tile), one IR
column per base feature (typed by its operator), and ``spec_version``. Partitioned by
``granularity``, ``key_bucket`` and ``month(bucket_start)``; rows sorted by key and time.

Spark writes the Parquet files into a run folder of the table; one Iceberg *overwrite*
snapshot then removes the files a run replaces and adds the new ones, so readers see the old
tiles or the new ones, never a mix. Runs that die before committing leave only their run
folder, which the next run deletes (nothing references it).
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from robusta.errors import RobustaError
from robusta.plan.model import TileGroup
from robusta.spec.model import OfflineConfig
from robusta.store.catalog import open_catalog

VERSION_PROPERTY = "robusta.spec-version"
COVERAGE_PROPERTY = "robusta.coverage"  # JSON [[start, end], ...] in epoch micros; null = open
RUN_PROPERTY = "robusta.run-id"
RUNS_FOLDER = "runs"
TS_TYPE = pa.timestamp("us", tz="UTC")


class SpecChangedError(RobustaError, ValueError):
    """Stored tiles were written by another version of the spec."""


def tile_schema(group: TileGroup) -> pa.Schema:
    """The Arrow schema of a tile group's table (and of the files Spark writes for it)."""
    keys = [pa.field(k.column, k.type.arrow()) for k in group.layout.keys]
    fixed = [
        pa.field("key_bucket", pa.int32()),
        pa.field("granularity", pa.string()),
        pa.field("bucket_start", TS_TYPE),
        pa.field("events", pa.int64()),
    ]
    irs = [pa.field(f.ir_column, f.ir_type) for f in group.features]
    return pa.schema([*keys, *fixed, *irs, pa.field("spec_version", pa.string())])


@dataclass(frozen=True)
class Run:
    """One materialization of one table: where its files go, and its id."""

    id: str
    folder: Path


class TileTables:
    """Tile tables of one offline store (catalog + warehouse + namespace)."""

    def __init__(self, offline: OfflineConfig) -> None:
        self.offline = offline
        self.catalog = open_catalog(offline)

    def identifier(self, table: str) -> str:
        return f"{self.offline.namespace}.{table}"

    def load(self, table: str) -> Any | None:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self.catalog.load_table(self.identifier(table))
        except NoSuchTableError:
            return None

    def ensure(self, group: TileGroup, version: str, *, rebuild: bool = False) -> Any:
        """The group's table, created if missing; refuses tiles of another spec version."""
        table = self.load(group.layout.table)
        if table is not None and rebuild:
            self.catalog.drop_table(self.identifier(group.layout.table))
            table = None
        if table is None:
            return self._create(group, version)
        stored = table.properties.get(VERSION_PROPERTY)
        if stored != version:
            raise SpecChangedError(
                f'the tiles in table "{self.identifier(group.layout.table)}" were written by '
                f"spec version {stored}, the spec is now version {version}: rerun "
                "`robusta materialize` with --rebuild to recompute every tile of it"
            )
        return table

    def _create(self, group: TileGroup, version: str) -> Any:
        from pyiceberg.transforms import MonthTransform

        table = self.catalog.create_table(
            self.identifier(group.layout.table),
            schema=tile_schema(group),
            properties={VERSION_PROPERTY: version},
        )
        with table.update_spec() as update:
            update.add_identity("granularity")
            update.add_identity("key_bucket")
            update.add_field("bucket_start", MonthTransform(), "bucket_month")
        return self.catalog.load_table(self.identifier(group.layout.table))

    # ---- runs -------------------------------------------------------------------------------
    def start_run(self, table: Any) -> Run:
        """A fresh folder for a run's files; deletes folders of runs that never committed."""
        self.clean_orphans(table)
        run_id = uuid.uuid4().hex[:12]
        folder = _local_path(table.location()) / RUNS_FOLDER / run_id
        folder.parent.mkdir(parents=True, exist_ok=True)
        return Run(run_id, folder)

    def clean_orphans(self, table: Any) -> list[Path]:
        """Delete run folders that no snapshot mentions (a run died before its commit)."""
        runs = _local_path(table.location()) / RUNS_FOLDER
        if not runs.is_dir():
            return []
        committed = {
            s.summary.additional_properties.get(RUN_PROPERTY)
            for s in table.snapshots()
            if s.summary is not None
        }
        removed = [f for f in runs.iterdir() if f.is_dir() and f.name not in committed]
        for folder in removed:
            shutil.rmtree(folder)
        return removed

    def overlapping_files(self, table: Any, start: int | None, end: int | None) -> list[Any]:
        """Data files that may hold tiles with ``start <= bucket_start < end`` (None: open)."""
        from pyiceberg import expressions

        if table.current_snapshot() is None:
            return []
        condition: Any = expressions.AlwaysTrue()
        at_least: Any = expressions.GreaterThanOrEqual  # pydantic models: untyped positionals
        below: Any = expressions.LessThan
        if start is not None:
            condition = expressions.And(condition, at_least("bucket_start", start))
        if end is not None:
            condition = expressions.And(condition, below("bucket_start", end))
        return [task.file for task in table.scan(row_filter=condition).plan_files()]

    def files_by_bucket(
        self, table: Any, start: int | None, end: int | None
    ) -> dict[int, list[str]]:
        """Local paths of :meth:`overlapping_files`, by the ``key_bucket`` they hold."""
        files: dict[int, list[str]] = {}
        spec, schema = table.spec(), table.schema()
        source = schema.find_field("key_bucket").field_id
        position = next(i for i, f in enumerate(spec.fields) if f.source_id == source)
        for data_file in self.overlapping_files(table, start, end):
            bucket = int(data_file.partition[position])
            files.setdefault(bucket, []).append(str(_local_path(data_file.file_path)))
        return files

    def replace(
        self,
        table: Any,
        old_files: Sequence[Any],
        run: Run,
        properties: dict[str, str],
        covered: Span | None = None,
    ) -> int:
        """One overwrite snapshot: ``old_files`` out, every Parquet file of ``run`` in.

        ``covered`` (the time range the run made complete) joins the table's coverage in the
        same commit.
        """
        new_paths = sorted(str(p) for p in run.folder.rglob("*.parquet"))
        summary = {**properties, RUN_PROPERTY: run.id}
        extra = {}
        if covered is not None:
            extra[COVERAGE_PROPERTY] = json.dumps(merge_spans([*coverage(table), covered]))
        swap_files(table, old_files, new_paths, summary, extra)
        refreshed = self.catalog.load_table(self.identifier(table.name()[-1]))
        snapshot = refreshed.current_snapshot()
        return int(snapshot.snapshot_id) if snapshot is not None else 0


def swap_files(
    table: Any,
    old_files: Sequence[Any],
    new_paths: Sequence[str],
    summary: dict[str, str] | None = None,
    properties: dict[str, str] | None = None,
) -> None:
    """One overwrite snapshot removing ``old_files`` and adding the Parquet ``new_paths``
    (pyiceberg ``add_files`` style: no rewrite), with table ``properties`` set in the same
    commit; readers see the old files or the new ones, never a mix."""
    from pyiceberg.io.pyarrow import parquet_files_to_data_files
    from pyiceberg.table import TableProperties

    with table.transaction() as tx:
        if properties:
            tx.set_properties(**properties)
        if tx.table_metadata.name_mapping() is None:
            mapping = tx.table_metadata.schema().name_mapping.model_dump_json()
            tx.set_properties(**{TableProperties.DEFAULT_NAME_MAPPING: mapping})
        with tx.update_snapshot(snapshot_properties=summary or {}).overwrite() as overwrite:
            for data_file in old_files:
                overwrite.delete_data_file(data_file)
            for data_file in parquet_files_to_data_files(
                table.io, tx.table_metadata, iter(new_paths)
            ):
                overwrite.append_data_file(data_file)


def write_tile_files(tiles: pa.Table, group: TileGroup, folder: Path) -> list[Path]:
    """Tiles (tile-table columns) as Parquet with pyarrow, one file per (granularity,
    key_bucket, month) like the Spark writer, rows sorted by key and time: how the stream
    writes the few tiles a micro-batch closes (no Spark job for a handful of rows)."""
    import pyarrow.compute as pc

    schema = tile_schema(group)
    tiles = tiles.select(schema.names).cast(schema)
    if tiles.num_rows == 0:
        return []
    month = pc.strftime(tiles.column("bucket_start"), format="%Y-%m")
    tagged = tiles.append_column("__month", month)
    keys = [k.column for k in group.layout.keys]
    parts = tagged.group_by(["granularity", "key_bucket", "__month"]).aggregate([])
    written = []
    for g, b, m in zip(*(parts.column(c).to_pylist() for c in parts.column_names), strict=True):
        mask = pc.and_(
            pc.and_(pc.equal(tagged["granularity"], g), pc.equal(tagged["key_bucket"], b)),
            pc.equal(tagged["__month"], m),
        )
        part = tiles.filter(mask).sort_by([(k, "ascending") for k in [*keys, "bucket_start"]])
        path = folder / f"granularity={g}" / f"key_bucket={b}" / f"month={m}" / "tiles.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, path)
        written.append(path)
    return written


def read_bucket(
    paths: Sequence[str],
    bucket: int,
    since: int | None = None,
    end: int | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """The tiles of one key bucket in ``paths`` with ``since <= bucket_start < end``
    (None: open), as the PIT join and the upload read them."""
    import pyarrow.dataset as ds

    condition = ds.field("key_bucket") == bucket
    if since is not None:
        condition = condition & (ds.field("bucket_start") >= pa.scalar(since, TS_TYPE))
    if end is not None:
        condition = condition & (ds.field("bucket_start") < pa.scalar(end, TS_TYPE))
    return ds.dataset(list(paths), format="parquet").to_table(columns=columns, filter=condition)


def local_path(location: str) -> Path:
    """A file URI or path as a local path (tile tables live on local or mounted storage)."""
    return _local_path(location)


Span = tuple[int | None, int | None]  # [start, end) in epoch micros; None = unbounded


def coverage(table: Any) -> list[Span]:
    """The time ranges whose tiles the table holds for its spec version (merged, sorted)."""
    text = table.properties.get(COVERAGE_PROPERTY)
    if not text:
        return []
    return [(a, b) for a, b in json.loads(text)]


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    """Union of half-open spans, as few sorted spans."""
    low = -(2**63)
    high = 2**63
    ordered = sorted(((low if a is None else a), (high if b is None else b)) for a, b in spans)
    merged: list[list[int]] = []
    for a, b in ordered:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(None if a == low else a, None if b == high else b) for a, b in merged]


def uncovered(spans: Sequence[Span], wanted: Span) -> bool:
    """Whether ``wanted`` is not inside one of the (merged) ``spans``."""
    low, high = -(2**63), 2**63
    a = low if wanted[0] is None else wanted[0]
    b = high if wanted[1] is None else wanted[1]
    for start, end in merge_spans(spans):
        if (low if start is None else start) <= a and b <= (high if end is None else end):
            return False
    return True


def _local_path(location: str) -> Path:
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        raise RobustaError(f"tile tables must live on a local or mounted path, got {location}")
    return Path(parsed.path)
