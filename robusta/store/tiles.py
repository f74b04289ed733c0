"""Tile tables in Iceberg: one table per tile group, committed with pyiceberg.

Layout (one row per tile): the key columns, ``key_bucket`` (plan.keys), ``granularity`` (its
canonical name, e.g. ``5m``), ``bucket_start`` (UTC), ``events`` (events in the tile), one IR
column per base feature (typed by its operator), and ``spec_version``. Partitioned by
``granularity``, ``key_bucket`` and ``month(bucket_start)``; rows sorted by key and time.

Spark writes the Parquet files into a run folder of the table; one Iceberg *overwrite*
snapshot then removes the files a run replaces and adds the new ones, so readers see the old
tiles or the new ones, never a mix. Runs that die before committing leave only their run
folder, which a later run deletes (nothing references it) once its lease has expired: a
live run's folder is leased (:class:`Lease`), so concurrent writers never delete it.

Merge on read: a base feature added to a materialized spec gets its IR column computed over
the table's coverage into new files holding only the tile identity (keys, granularity,
bucket) and the new columns; the table's schema gains the columns, nothing is rewritten.
Readers (:func:`read_bucket`, and Spark through ``engine.spark.tiles.read_tiles``) join the
files' column sets on the tile identity; ``robusta compact`` folds them into whole files.
The table records each IR column's feature hash (``robusta.ir-columns``): a spec version
whose existing columns are unchanged and only adds columns is compatible.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from robusta.errors import RobustaError
from robusta.plan.keys import KeyPart
from robusta.plan.model import TileGroup
from robusta.plan.open_tiles import is_identity, run_offsets
from robusta.spec.model import OfflineConfig
from robusta.store.catalog import open_catalog, storage_of
from robusta.store.files import Storage, join, normal

VERSION_PROPERTY = "robusta.spec-version"
COLUMNS_PROPERTY = "robusta.ir-columns"  # JSON {ir column: feature hash} of the stored tiles
KEY_BUCKETS_PROPERTY = "robusta.key-buckets"
COVERAGE_PROPERTY = "robusta.coverage"  # JSON [[start, end], ...] in epoch micros; null = open
RUN_PROPERTY = "robusta.run-id"
LATEST_PROPERTY = "robusta.latest-event"  # epoch micros of the latest event a run tiled
_TABLE_LABELS = (VERSION_PROPERTY, LATEST_PROPERTY)  # run properties also set on the table
RUNS_FOLDER = "runs"
WRITTEN_PROPERTY = "robusta.batch-written-ms"
LEASE_SUFFIX = ".lease"
TS_TYPE = pa.timestamp("us", tz="UTC")
# A commit that finds the table changed must fail, not be replayed by pyiceberg on the new
# state: what a run replaces (its files, its coverage) was decided on the old one. The
# writer then recomputes (the stream) or says to rerun (materialize).
NO_COMMIT_RETRY = {"commit.retry.num-retries": "0"}


class CommitConflictError(RobustaError, RuntimeError):
    """Another writer committed to a tile table between this run's read and its commit."""


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


LEASE_SECONDS = 600.0  # a run folder whose lease is older than this is an orphan
BEAT_SECONDS = 20.0  # how often a live run renews its lease


class Lease:
    """A run folder's claim, so that another writer's cleanup never deletes a run still
    being written: a file beside the folder, rewritten by a daemon thread while the run
    lives (its modification time is the heartbeat, on local disks and object stores alike),
    removed when it ends. A writer killed outright leaves a lease that expires after
    :data:`LEASE_SECONDS`; its folder is an orphan from then on."""

    def __init__(self, path: str, storage: Storage) -> None:
        self.path = path
        self.storage = storage
        storage.write_bytes(path, b"")
        self._ended = threading.Event()
        name = path.rsplit("/", 1)[-1]
        threading.Thread(target=self._beat, name=f"lease {name}", daemon=True).start()

    def _beat(self) -> None:
        while not self._ended.wait(BEAT_SECONDS):
            try:
                self.storage.write_bytes(self.path, b"")
            except OSError:
                return  # the storage is gone: nothing left to claim

    def release(self) -> None:
        self._ended.set()
        self.storage.delete(self.path)


def lease_alive(storage: Storage, path: str, now: float | None = None) -> bool:
    """Whether the lease file ``path`` exists and was renewed within :data:`LEASE_SECONDS`."""
    renewed = storage.modified(path)
    if renewed is None:
        return False
    return (now if now is not None else time.time()) - renewed < LEASE_SECONDS


@dataclass(frozen=True)
class Run:
    """One materialization of one table: where its files go, its id, and its lease (release
    it when the run has committed or failed: :meth:`end`)."""

    id: str
    folder: str  # a URI (a plain path on local disks)
    lease: Lease | None = None

    def end(self) -> None:
        if self.lease is not None:
            self.lease.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *_: object) -> None:
        self.end()


class TileTables:
    """Tile tables of one offline store (catalog + warehouse + namespace)."""

    def __init__(self, offline: OfflineConfig) -> None:
        self.offline = offline
        self.catalog = open_catalog(offline)
        self.storage = storage_of(offline)

    def identifier(self, table: str) -> str:
        return f"{self.offline.namespace}.{table}"

    def load(self, table: str) -> Any | None:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self.catalog.load_table(self.identifier(table))
        except NoSuchTableError:
            return None

    def ensure(self, group: TileGroup, version: str, *, rebuild: bool = False) -> Any:
        """The group's table, created if missing; refuses tiles of another spec version
        unless that version only adds IR columns (see :func:`new_features`), or ``rebuild``
        (the run then replaces every tile and the layout in one commit: :meth:`rebuild`)."""
        table = self.load(group.layout.table)
        if table is None:
            return self._create(group, version)
        if not NO_COMMIT_RETRY.items() <= table.properties.items():  # tables made before
            with table.transaction() as tx:
                tx.set_properties(**NO_COMMIT_RETRY)
            table = self.catalog.load_table(self.identifier(group.layout.table))
        if not rebuild and table_state(table, group, version) == STALE:
            raise SpecChangedError(
                f'the tiles in table "{self.identifier(group.layout.table)}" '
                f"{stale_reason(table, group, version)}: rerun `robusta materialize` with "
                "--rebuild to recompute every tile of it"
            )
        return table

    def add_columns(
        self, table: Any, group: TileGroup, version: str, run: Run, features: Sequence[Any]
    ) -> int:
        """Commit a run holding only ``features``' IR columns: the schema gains them and the
        run's files are added beside the existing ones, in one snapshot."""
        with table.update_schema() as update:
            update.union_by_name(tile_schema(group))
        table = self.catalog.load_table(self.identifier(group.layout.table))
        stored = json.loads(table.properties.get(COLUMNS_PROPERTY) or "{}")
        stored.update({f.ir_column: f.hash for f in features})
        new_paths = self.storage.files(run.folder, ".parquet")
        added = ",".join(f.ir_column for f in features)
        summary = {VERSION_PROPERTY: version, RUN_PROPERTY: run.id, "robusta.added": added}
        properties = {COLUMNS_PROPERTY: json.dumps(stored, sort_keys=True)}
        labels = {**properties, VERSION_PROPERTY: version, **_written()}
        swap_files(table, [], new_paths, summary, labels)
        return self._snapshot_id(table)

    def _create(self, group: TileGroup, version: str) -> Any:
        from pyiceberg.transforms import MonthTransform

        table = self.catalog.create_table(
            self.identifier(group.layout.table),
            schema=tile_schema(group),
            properties={
                VERSION_PROPERTY: version,
                COLUMNS_PROPERTY: json.dumps(column_hashes(group), sort_keys=True),
                KEY_BUCKETS_PROPERTY: str(group.layout.key_buckets),
                **NO_COMMIT_RETRY,
            },
        )
        with table.update_spec() as update:
            update.add_identity("granularity")
            update.add_identity("key_bucket")
            update.add_field("bucket_start", MonthTransform(), "bucket_month")
        return self.catalog.load_table(self.identifier(group.layout.table))

    # ---- runs -------------------------------------------------------------------------------
    def start_run(self, table: Any) -> Run:
        """A fresh, leased folder for a run's files; deletes folders of runs that never
        committed and whose lease expired (their writer died)."""
        self.clean_orphans(table)
        run_id = uuid.uuid4().hex[:12]
        runs = join(table.location(), RUNS_FOLDER)
        lease = Lease(join(runs, f"{run_id}{LEASE_SUFFIX}"), self.storage)  # claimed first
        return Run(run_id, join(runs, run_id), lease)

    def clean_orphans(self, table: Any) -> list[str]:
        """Delete run folders that no snapshot mentions and no live lease claims: a run
        that died before its commit. A folder another writer is still filling is leased."""
        storage = self.storage
        runs = join(table.location(), RUNS_FOLDER)
        held = storage.children(runs)
        if not held:
            return []
        folders = {name for name, is_folder in held if is_folder}
        now = time.time()
        # A stream's run is committed by the stream itself (its replay finds the folder).
        unleased = [
            name
            for name in sorted(folders)
            if not name.startswith("stream-")
            and not lease_alive(storage, join(runs, f"{name}{LEASE_SUFFIX}"), now)
        ]
        # The snapshots are read after the leases, from the catalog afresh: a writer commits,
        # then ends its lease, so a run whose lease was seen ended is named by what is read
        # now (``table`` may predate that commit, and is left as its caller read it).
        fresh = self.catalog.load_table(table.name()) if unleased else table
        committed = {
            s.summary.additional_properties.get(RUN_PROPERTY)
            for s in fresh.snapshots()
            if s.summary is not None
        }
        removed = [join(runs, name) for name in unleased if name not in committed]
        table = fresh
        if removed:  # a run whose snapshot expired (robusta maintain) may still hold files
            held_files = _runs_of(referenced_data_files(table), runs)
            committed |= held_files
            removed = [f for f in removed if f.rsplit("/", 1)[-1] not in held_files]
        for folder in removed:
            storage.delete_folder(folder)
        folders -= {folder.rsplit("/", 1)[-1] for folder in removed}
        for name, is_folder in held:  # leases of writers killed after their commit
            run_id = name.removesuffix(LEASE_SUFFIX)
            lease = join(runs, name)
            if (
                not is_folder
                and name.endswith(LEASE_SUFFIX)
                and (run_id in committed or run_id not in folders)
                and not lease_alive(storage, lease, now)
            ):
                storage.delete(lease)
        return removed

    def overlapping_files(self, table: Any, start: int | None, end: int | None) -> list[Any]:
        """Data files that may hold tiles with ``start <= bucket_start < end`` (None: open),
        by the files' ``bucket_start`` bounds: the manifests read directly, as evaluating
        pyiceberg's scan expressions per file cost more than reading the manifests."""
        field_id = table.schema().find_field("bucket_start").field_id

        def may_hold(data_file: Any) -> bool:
            low = data_file.lower_bounds.get(field_id)
            high = data_file.upper_bounds.get(field_id)
            if low is None or high is None:
                return True
            first, last = (int.from_bytes(b, "little", signed=True) for b in (low, high))
            return (start is None or last >= start) and (end is None or first < end)

        return [f for f in live_files(table) if may_hold(f)]

    def with_partition_mates(self, table: Any, files: Sequence[Any]) -> list[Any]:
        """``files`` and every other file of the same partitions: a run replacing part of a
        partition must replace all of its column sets (merge on read) together."""
        if not files:
            return list(files)
        partitions = {tuple(f.partition) for f in files}
        everything = self.overlapping_files(table, None, None)
        chosen = {f.file_path for f in files}
        return [
            *files,
            *(
                f
                for f in everything
                if tuple(f.partition) in partitions and f.file_path not in chosen
            ),
        ]

    def files_by_bucket(
        self, table: Any, start: int | None, end: int | None
    ) -> dict[int, list[str]]:
        """URIs of :meth:`overlapping_files`, by the ``key_bucket`` they hold."""
        return self.bucket_files(table, start, end)[0]

    def bucket_files(
        self, table: Any, start: int | None, end: int | None
    ) -> tuple[dict[int, list[str]], dict[int, int]]:
        """:meth:`files_by_bucket`, and the bytes of each bucket's files."""
        files: dict[int, list[str]] = {}
        sizes: dict[int, int] = {}
        spec, schema = table.spec(), table.schema()
        source = schema.find_field("key_bucket").field_id
        position = next(i for i, f in enumerate(spec.fields) if f.source_id == source)
        for data_file in self.overlapping_files(table, start, end):
            bucket = int(data_file.partition[position])
            files.setdefault(bucket, []).append(normal(data_file.file_path))
            sizes[bucket] = sizes.get(bucket, 0) + int(data_file.file_size_in_bytes)
        return files, sizes

    def replace(
        self,
        table: Any,
        old_files: Sequence[Any],
        run: Run,
        properties: dict[str, str],
        covered: Span | None = None,
        group: TileGroup | None = None,
        marks: dict[str, str] | None = None,
    ) -> int:
        """One overwrite snapshot: ``old_files`` out, every Parquet file of ``run`` in.

        ``covered`` (the time range the run made complete) joins the table's coverage in the
        same commit; with ``group`` (a run writing all of its columns) the table is labelled
        with the run's spec version and exactly the group's column hashes; ``marks`` are
        table properties set in the same commit (what a stream has committed).
        """
        new_paths = self.storage.files(run.folder, ".parquet")
        summary = {**properties, RUN_PROPERTY: run.id}
        extra = {}
        if group is not None:
            extra[COLUMNS_PROPERTY] = json.dumps(column_hashes(group), sort_keys=True)
            if VERSION_PROPERTY in properties:
                extra[VERSION_PROPERTY] = properties[VERSION_PROPERTY]
        extra.update({k: v for k, v in properties.items() if k == LATEST_PROPERTY})
        if covered is not None:
            extra[COVERAGE_PROPERTY] = json.dumps(merge_spans([*coverage(table), covered]))
        extra.update(marks if marks is not None else _written())
        swap_files(table, old_files, new_paths, summary, extra)
        return self._snapshot_id(table)

    def _snapshot_id(self, table: Any) -> int:
        """The table's current snapshot id as the catalog has it now (after a commit)."""
        snapshot = self.catalog.load_table(self.identifier(table.name()[-1])).current_snapshot()
        return int(snapshot.snapshot_id) if snapshot is not None else 0

    def rebuild(
        self,
        table: Any,
        run: Run,
        properties: dict[str, str],
        covered: Span | None,
        group: TileGroup,
    ) -> int:
        """One commit that makes ``run`` the whole table: every stored file out, the run's
        files in, the schema, column hashes, key bucketing and coverage those of ``group``.
        Until it lands, readers see the previous tiles, complete; a run stopped before it
        leaves only an orphan run folder (see :meth:`clean_orphans`)."""
        old_files = self.overlapping_files(table, None, None)
        new_paths = self.storage.files(run.folder, ".parquet")
        summary = {**properties, RUN_PROPERTY: run.id, "robusta.rebuild": "true"}
        labels = {
            **{k: v for k, v in properties.items() if k in _TABLE_LABELS},
            COLUMNS_PROPERTY: json.dumps(column_hashes(group), sort_keys=True),
            KEY_BUCKETS_PROPERTY: str(group.layout.key_buckets),
            COVERAGE_PROPERTY: json.dumps(merge_spans([covered] if covered else [])),
            **_written(),
        }
        swap_files(table, old_files, new_paths, summary, labels, relayout=tile_schema(group))
        return self._snapshot_id(table)


def _written() -> dict[str, str]:
    """The table property a batch writer's commit sets: when (a stream that started before it
    must look for its tiles in the buckets it closes), kept whatever snapshots expire."""
    return {WRITTEN_PROPERTY: str(int(time.time() * 1000))}


def written_ms(table: Any) -> int | None:
    """When a batch writer (not a stream) last committed to ``table`` (epoch ms), if known."""
    raw = table.properties.get(WRITTEN_PROPERTY)
    return None if raw is None else int(raw)


def referenced_data_files(table: Any) -> set[str]:
    """The data files any retained snapshot names (each manifest read once)."""
    io = table.io
    manifests: set[str] = set()
    named: set[str] = set()
    for snapshot in table.snapshots():
        for manifest in snapshot.manifests(io):
            if manifest.manifest_path in manifests:
                continue
            manifests.add(manifest.manifest_path)
            named.update(
                entry.data_file.file_path
                for entry in manifest.fetch_manifest_entry(io, discard_deleted=False)
            )
    return named


def _runs_of(paths: set[str], runs: str) -> set[str]:
    """The run folders (names under ``runs``) holding any of ``paths``."""
    prefix = normal(runs).rstrip("/") + "/"
    return {
        normal(p)[len(prefix) :].split("/", 1)[0] for p in paths if normal(p).startswith(prefix)
    }


def live_files(table: Any) -> list[Any]:
    """Every data file of the table's current snapshot (tile tables hold no delete files)."""
    from pyiceberg.manifest import ManifestContent

    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    return [
        entry.data_file
        for manifest in snapshot.manifests(table.io)
        if manifest.content == ManifestContent.DATA
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
    ]


def files_where(table: Any, condition: Any) -> list[Any]:
    """The data files whose partition and column statistics may match ``condition`` (a
    pyiceberg expression); none for a table without a snapshot."""
    if table.current_snapshot() is None:
        return []
    return [task.file for task in table.scan(row_filter=condition).plan_files()]


def swap_files(
    table: Any,
    old_files: Sequence[Any],
    new_paths: Sequence[str],
    summary: dict[str, str] | None = None,
    properties: dict[str, str] | None = None,
    *,
    relayout: pa.Schema | None = None,
) -> None:
    """One overwrite snapshot removing ``old_files`` and adding the Parquet ``new_paths``
    (pyiceberg ``add_files`` style: no rewrite), with table ``properties`` set in the same
    commit; readers see the old files or the new ones, never a mix. ``relayout``: the
    table's schema becomes this one in the same commit (a rebuild)."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.table import TableProperties

    try:
        with table.transaction() as tx:
            if properties:
                tx.set_properties(**properties)
            if relayout is not None:
                _relayout(tx, relayout)
            if relayout is not None or tx.table_metadata.name_mapping() is None:
                mapping = tx.table_metadata.schema().name_mapping.model_dump_json()
                tx.set_properties(**{TableProperties.DEFAULT_NAME_MAPPING: mapping})
            with tx.update_snapshot(snapshot_properties=summary or {}).overwrite() as overwrite:
                for data_file in old_files:
                    overwrite.delete_data_file(data_file)
                for data_file in data_files(table.io, tx.table_metadata, new_paths):
                    overwrite.append_data_file(data_file)
    except CommitFailedException as exc:
        raise CommitConflictError(
            f"another writer (a stream or a second run) committed to {table.name()[-1]} while "
            f"this run wrote it; nothing of this run was committed: rerun it ({exc})"
        ) from None


def data_files(io: Any, metadata: Any, paths: Sequence[str]) -> list[Any]:
    """Iceberg data files of Parquet ``paths``, as pyiceberg's ``parquet_files_to_data_files``
    makes them (footer statistics, partition from the bounds), with what is the same for
    every file done once: the schema check (per distinct file schema), the statistics plan
    and the column mapping. A run writes a file per partition, about a thousand small ones
    per table; pyiceberg's per-file schema conversion cost more than the rest of the commit.

    Value bounds and counts are kept for the columns scans filter on (keys, key bucket,
    granularity, bucket start, events); IR columns (sketch bytes, lists, structs), which no
    scan filters on, keep their sizes only: truncating sketch bytes into bounds was most of
    the statistics' cost."""
    from pyiceberg.io.pyarrow import (
        MetricModeTypes,
        MetricsMode,
        _check_pyarrow_schema_compatible,
        compute_statistics_plan,
        data_file_statistics_from_parquet_metadata,
        parquet_path_to_id_mapping,
    )
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat

    schema = metadata.schema()
    names = [f.name for f in schema.fields]
    filtered = set(names[: names.index("events") + 1]) if "events" in names else set(names)
    plan = {
        field_id: collector
        if collector.column_name.split(".")[0] in filtered
        else replace(collector, mode=MetricsMode(MetricModeTypes.NONE))
        for field_id, collector in compute_statistics_plan(schema, metadata.properties).items()
    }
    mapping = parquet_path_to_id_mapping(schema)
    spec = metadata.spec()
    checked: set[bytes] = set()
    out = []
    for path in paths:
        input_file = io.new_input(path)
        with input_file.open() as stream:
            footer = pq.read_metadata(stream)
        arrow_schema = footer.schema.to_arrow_schema()
        shape = arrow_schema.serialize().to_pybytes()
        if shape not in checked:
            _check_pyarrow_schema_compatible(
                schema, arrow_schema, format_version=metadata.format_version
            )
            checked.add(shape)
        statistics = data_file_statistics_from_parquet_metadata(
            parquet_metadata=footer, stats_columns=plan, parquet_column_mapping=mapping
        )
        out.append(
            DataFile.from_args(
                content=DataFileContent.DATA,
                file_path=path,
                file_format=FileFormat.PARQUET,
                partition=statistics.partition(spec, schema),
                file_size_in_bytes=len(input_file),
                sort_order_id=None,
                spec_id=metadata.default_spec_id,
                equality_ids=None,
                key_metadata=None,
                **statistics.to_serialized_dict(),
            )
        )
    return out


# Never re-created by a rebuild: the partition spec is defined on them.
_LAYOUT_FIXED = ("key_bucket", "granularity", "bucket_start", "events", "spec_version")


def _relayout(tx: Any, schema: pa.Schema) -> None:
    """Stage ``schema`` as the table's schema: every column but the fixed ones is dropped and
    added again (a rebuilt column may change type), keys first, in the transaction ``tx``."""
    with tx.update_schema(allow_incompatible_changes=True) as drop:
        for field in tx.table_metadata.schema().fields:
            if field.name not in _LAYOUT_FIXED:
                drop.delete_column(field.name)
    with tx.update_schema() as add:
        add.union_by_name(schema)
        for name in reversed(schema.names[: schema.names.index("key_bucket")]):
            add.move_first(name)


def column_hashes(group: TileGroup) -> dict[str, str]:
    return {f.ir_column: f.hash for f in group.features}


FRESH, ADD, STALE = "fresh", "add", "stale"


def table_state(table: Any, group: TileGroup, version: str) -> str:
    """FRESH: the table holds every column of ``group`` as the spec computes it now; ADD:
    it lacks only added features' columns (merge on read); STALE: some stored column is
    computed differently now, or the key bucketing changed (rebuild)."""
    if table.properties.get(VERSION_PROPERTY) == version:
        return FRESH
    missing = new_features(table, group)
    if missing is None:
        return STALE
    return ADD if missing else FRESH


def stale_reason(table: Any, group: TileGroup, version: str) -> str:
    """Why a STALE table's tiles cannot be read as ``group`` (ends a "the tiles ..." clause):
    a change of key buckets is a layout migration, anything else a spec change."""
    buckets = table.properties.get(KEY_BUCKETS_PROPERTY)
    if buckets is not None and buckets != str(group.layout.key_buckets):
        return (
            f"are in {buckets} key buckets and the spec now asks for "
            f"{group.layout.key_buckets} (key_buckets in the spec or offline.key_buckets; "
            f"set it back to {buckets} to keep them)"
        )
    stored = table.properties.get(VERSION_PROPERTY)
    return f"were written by spec version {stored}, the spec is now version {version}"


def new_features(table: Any, group: TileGroup) -> list[Any] | None:
    """The group's features whose IR columns the table lacks, when every column it has is
    still computed the same way (same feature hash) and the key bucketing is unchanged; None
    when the stored tiles are of an incompatible spec version (or of an older table format)."""
    stored = table.properties.get(COLUMNS_PROPERTY)
    buckets = table.properties.get(KEY_BUCKETS_PROPERTY)
    if stored is None or buckets != str(group.layout.key_buckets):
        return None
    hashes: dict[str, str] = json.loads(stored)
    wanted = column_hashes(group)
    if any(hashes[c] != h for c, h in wanted.items() if c in hashes):
        return None
    return [f for f in group.features if f.ir_column not in hashes]


_SHARED = ("key_bucket", "events", "spec_version")  # written with every column set


def tile_identity(group: TileGroup) -> list[str]:
    """The columns naming one tile: its keys, granularity and bucket."""
    return [*(k.column for k in group.layout.keys), "granularity", "bucket_start"]


def write_tile_files(tiles: pa.Table, group: TileGroup, folder: str, storage: Storage) -> list[str]:
    """Tiles (tile-table columns) as Parquet with pyarrow, one file per (granularity,
    key_bucket, month) like the Spark writer, rows sorted by key and time: the embedded
    engine's writer, and how the stream writes the few tiles a micro-batch closes.

    Files are ``granularity=G/key_bucket=B/month=YYYY-MM.parquet`` (Iceberg keeps the paths;
    the partition comes from the files' bounds); they are written by a few threads, as
    pyarrow releases the GIL while writing and a run holds about a thousand small files."""
    import pyarrow.compute as pc

    schema = tile_schema(group)
    tiles = tiles.select(schema.names).cast(schema)
    if tiles.num_rows == 0:
        return []
    starts = tiles.column("bucket_start")
    month = pc.add(pc.multiply(pc.year(starts), 100), pc.month(starts))  # YYYYMM
    tagged = tiles.append_column("__month", month)
    keys = [k.column for k in group.layout.keys]
    # Granularities in order of appearance (a build's blocks), not by name: the order within
    # a file is the same either way, and a build's tiles then often need no gather at all.
    tagged = tagged.append_column(
        "__g", pc.dictionary_encode(tagged.column("granularity").combine_chunks()).indices
    )
    partition = ["granularity", "key_bucket", "__month"]
    # One sort puts every partition's rows together, in key and time order: slices, not masks.
    by = ["__g", "key_bucket", "__month", *keys, "bucket_start"]
    order = pc.sort_indices(tagged.select(by), sort_keys=[(c, "ascending") for c in by])
    if not is_identity(order):
        tagged = tagged.take(order)
    tagged = tagged.drop_columns(["__g"])
    rows = tagged.drop_columns(["__month"])
    bounds = run_offsets(tagged, partition)
    names = zip(*(tagged.column(c).take(bounds[:-1]).to_pylist() for c in partition), strict=True)
    jobs: list[tuple[pa.Table, str]] = []
    for (begin, end), (g, b, m) in zip(itertools.pairwise(bounds.tolist()), names, strict=True):
        path = join(folder, f"granularity={g}", f"key_bucket={b}", f"month={_month(m)}.parquet")
        jobs.append((rows.slice(begin, end - begin), path))
    with ThreadPoolExecutor(_WRITERS) as pool:
        list(pool.map(lambda job: storage.write_parquet(*job), jobs))
    return [path for _, path in jobs]


_WRITERS = 4  # threads writing tile files (file creation is most of a small file's cost)


def _month(code: int) -> str:
    return f"{code // 100:04d}-{code % 100:02d}"


def read_bucket(
    storage: Storage,
    paths: Sequence[str],
    bucket: int,
    since: int | None = None,
    end: int | None = None,
    columns: list[str] | None = None,
    identity: Sequence[str] = (),
    part: KeyPart | None = None,
) -> pa.Table:
    """The tiles of one key bucket in ``paths`` with ``since <= bucket_start < end``
    (None: open), as the PIT join and the upload read them; with ``part``, only its slice of
    the bucket's keys, read batch by batch so that memory holds the slice, not the bucket.
    Files holding different column sets (added features) are merged on the tile
    ``identity`` (:func:`tile_identity`)."""
    import pyarrow.dataset as ds

    condition = ds.field("key_bucket") == bucket
    if since is not None:
        condition = condition & (ds.field("bucket_start") >= pa.scalar(since, TS_TYPE))
    if end is not None:
        condition = condition & (ds.field("bucket_start") < pa.scalar(end, TS_TYPE))
    groups = files_by_columns(storage, paths)
    if len(groups) <= 1:
        return _read_part(storage.dataset(paths), columns, condition, part)
    if not identity:
        raise ValueError("tile files of several column sets need the tile identity to merge")
    parts = []
    for names, files in groups:
        keep = [c for c in (columns or names) if c in names]
        parts.append(_read_part(storage.dataset(files), keep, condition, part))
    return merge_tiles(parts, identity, columns)


def _read_part(
    dataset: Any, columns: list[str] | None, condition: Any, part: KeyPart | None
) -> pa.Table:
    if part is None or part.count == 1:
        return dataset.to_table(columns=columns, filter=condition)
    scanner = dataset.scanner(columns=columns, filter=condition)
    kept = [
        batch.filter(pa.array(part.holds(batch.column(part.column))))
        for batch in scanner.to_batches()
    ]
    return pa.Table.from_batches(kept, schema=scanner.projected_schema)


def read_tile_files(storage: Storage, paths: Sequence[str], group: TileGroup) -> pa.Table:
    """Every tile in ``paths`` in the table's columns (``tile_schema``), files of added
    columns merged on the tile identity; columns no file holds are null."""
    schema = tile_schema(group)
    groups = files_by_columns(storage, paths)
    if not groups:
        return schema.empty_table()
    # Read in the table's own field types: the engines' writers differ in nullability.
    parts = [
        storage.dataset(files, schema=file_schema(storage, names, files[0], schema)).to_table()
        for names, files in groups
    ]
    merged = parts[0] if len(parts) == 1 else merge_tiles(parts, tile_identity(group))
    columns = {
        f.name: merged.column(f.name).cast(f.type)
        if f.name in merged.column_names
        else pa.nulls(merged.num_rows, f.type)
        for f in schema
    }
    return pa.table(columns, schema=schema)


def file_schema(storage: Storage, names: Sequence[str], path: str, schema: pa.Schema) -> pa.Schema:
    """The columns ``names`` of a tile file, typed as ``schema`` has them (others as in
    the file at ``path``)."""
    own = storage.read_schema(path)
    return pa.schema([schema.field(n) if n in schema.names else own.field(n) for n in names])


def files_by_columns(storage: Storage, paths: Sequence[str]) -> list[tuple[list[str], list[str]]]:
    """``paths`` grouped by the set of columns their files hold (one footer read each)."""
    groups: dict[frozenset[str], tuple[list[str], list[str]]] = {}
    for path in paths:
        names = storage.read_schema(path).names
        groups.setdefault(frozenset(names), (names, []))[1].append(path)
    return list(groups.values())


def merge_tiles(
    parts: Sequence[pa.Table], identity: Sequence[str], columns: list[str] | None = None
) -> pa.Table:
    """One row per tile of any part; each column from the first part holding a non-null
    value of it for that tile (as Spark's ``read_tiles`` coalesces). Acero joins cannot carry
    list or struct columns, so the join finds row numbers only and the columns follow with
    ``take``.
    """
    import numpy as np

    ids = list(identity)
    tiles = pa.concat_tables([p.select(ids) for p in parts]).group_by(ids).aggregate([])
    rows: list[np.ndarray] = []
    for i, part in enumerate(parts):
        numbered = part.select(ids).append_column(f"__row{i}", pa.array(np.arange(part.num_rows)))
        tiles = tiles.join(numbered, keys=ids, join_type="left outer")
    for i in range(len(parts)):
        column = tiles.column(f"__row{i}")
        rows.append(np.asarray(column.fill_null(-1).to_numpy(zero_copy_only=False), np.int64))
    names = columns or [c for p in parts for c in p.column_names]
    out = {}
    for name in dict.fromkeys(names):
        if name in identity:
            out[name] = tiles.column(name)
            continue
        holders = [i for i, p in enumerate(parts) if name in p.column_names]
        if not holders:
            continue
        columns_held = [parts[i].column(name).combine_chunks() for i in holders]
        values = pa.concat_arrays(columns_held)
        index = np.full(tiles.num_rows, -1, np.int64)
        offset = 0
        for i, held in zip(holders, columns_held, strict=True):
            has_row = rows[i] >= 0
            valid = np.asarray(held.is_valid().to_numpy(zero_copy_only=False), np.bool_)
            usable = has_row & valid[np.where(has_row, rows[i], 0)] if len(held) else has_row
            free = (index < 0) & usable
            index[free] = rows[i][free] + offset
            offset += parts[i].num_rows
        out[name] = values.take(pa.array(index, mask=index < 0))
    return pa.table(out)


Span = tuple[int | None, int | None]  # [start, end) in epoch micros; None = unbounded


def latest_event(table: Any) -> int | None:
    """The latest event time any run of the table tiled (epoch micros), if recorded."""
    text = table.properties.get(LATEST_PROPERTY)
    return None if not text else int(text)


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
