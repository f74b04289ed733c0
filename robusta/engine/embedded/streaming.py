"""The streaming job's embedded side: landing folders polled into micro-batches, no JVM.

:class:`FileBatches` is the embedded counterpart of Spark's file stream source and its
checkpoint: each micro-batch's files are written to ``offsets/<id>.json`` before the batch
runs, and ``commits/<id>`` once it is handled. A restart first replays a batch with an offset
but no commit, with the same files, so the job's idempotent steps see the same input (as
Spark replays a batch). New files are taken in modification-time order (then by name), at
most ``maxFilesPerTrigger`` per source and batch; hidden names (``.`` or ``_``) are skipped,
so producers land a file under a hidden name and rename it.

:class:`EmbeddedMicroBatch` runs the spec's query over a batch's files in DuckDB and tiles
its on-time rows with the batch engine's own builder (``engine.embedded.tiles``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from robusta.engine.embedded.sql import (
    EmbeddedSourceError,
    UnsupportedSourceError,
    connect,
    register_sources,
    run_query,
    visible_files,
)
from robusta.engine.embedded.tiles import finest_tiles, utc_micros
from robusta.engine.microbatch import BatchStats
from robusta.plan.model import SpecPlan, TileGroup
from robusta.spec.model import ProjectConfig, SourceConfig
from robusta.store.files import Storage, join

MAX_FILES = "maxfilespertrigger"  # Spark's file source option, honoured here too
STREAM_ONLY_OPTIONS = {MAX_FILES, "recursivefilelookup"}


@dataclass(frozen=True)
class Batch:
    """A micro-batch: its id and the files of each source it holds."""

    id: int
    files: Mapping[str, Sequence[Path]]


def stream_sources(config: ProjectConfig, names: Sequence[str]) -> list[SourceConfig]:
    """The sources as the stream reads them: landing folders (``streaming.sources``
    overrides applied), checked before anything runs."""
    out = []
    for name in names:
        source = config.sources[name]
        override = config.streaming.sources.get(name)
        if override is not None:
            if override.format == "kafka":
                raise UnsupportedSourceError(
                    f'source "{name}" streams from Kafka, which the embedded engine does not '
                    "read; set engine: spark (or --engine spark) for this stream"
                )
            source = replace(
                source, format=override.format, path=override.path, options=override.options
            )
        if source.format not in ("csv", "json", "parquet"):
            raise EmbeddedSourceError(
                f'source "{name}" ({source.format}) cannot be streamed: give it a landing '
                "folder in streaming.sources (csv, json or parquet)"
            )
        if source.schema is None:
            raise EmbeddedSourceError(
                f'source "{name}" has no schema: a stream needs one declared in robusta.yaml '
                '(schema: "col TYPE, ...")'
            )
        if source.path is None or not source.path.is_dir():
            raise EmbeddedSourceError(
                f'source "{name}": the landing folder {source.path} does not exist; create it '
                "(the stream picks up files landed there) or set streaming.sources in "
                "robusta.yaml"
            )
        out.append(source)
    return out


class FileBatches:
    """The micro-batches of some landing folders, logged in ``folder`` (see the module doc)."""

    def __init__(self, folder: Path, sources: Sequence[SourceConfig]) -> None:
        self.folder = folder
        self.sources = list(sources)
        self.offsets = folder / "offsets"
        self.commits = folder / "commits"
        self._seen: set[str] | None = None

    @property
    def query_id(self) -> str:
        """The stream's id, fixed when its checkpoint is created (as Spark's query id)."""
        path = self.folder / "metadata.json"
        if not path.exists():
            _write_json(path, {"id": str(uuid.uuid4())})
        return str(json.loads(path.read_text())["id"])

    def next(self, among: Mapping[str, set[str]] | None = None) -> Batch | None:
        """The batch to run next: an unfinished one (replayed as it was), else one of the
        files landed since (only those in ``among``, when given), else None."""
        logged = self._logged_ids()
        if logged and not (self.commits / str(logged[-1])).exists():
            return self._read(logged[-1])
        files = self._new_files(among)
        if not any(files.values()):
            return None
        batch = Batch(logged[-1] + 1 if logged else 0, files)
        _write_json(
            self.offsets / f"{batch.id}.json",
            {"files": {name: [str(p) for p in paths] for name, paths in files.items()}},
        )
        self._mark_seen(batch)
        return batch

    def commit(self, batch: Batch) -> None:
        self.commits.mkdir(parents=True, exist_ok=True)
        (self.commits / str(batch.id)).touch()

    def landed(self) -> dict[str, set[str]]:
        """Every visible file of each source now (``--available-now`` stops after them)."""
        return {s.name: {str(p) for p in visible_files(_folder(s))} for s in self.sources}

    def _new_files(self, among: Mapping[str, set[str]] | None) -> dict[str, list[Path]]:
        seen = self._seen_files()
        out: dict[str, list[Path]] = {}
        for source in self.sources:
            fresh = [
                p
                for p in visible_files(_folder(source))
                if str(p) not in seen and (among is None or str(p) in among.get(source.name, ()))
            ]
            fresh.sort(key=lambda p: (p.stat().st_mtime_ns, str(p)))
            limit = _max_files(source)
            out[source.name] = fresh[:limit] if limit else fresh
        return out

    def _seen_files(self) -> set[str]:
        if self._seen is None:
            self._seen = set()
            for batch_id in self._logged_ids():
                self._mark_seen(self._read(batch_id))
        return self._seen

    def _mark_seen(self, batch: Batch) -> None:
        if self._seen is not None:
            self._seen.update(str(p) for paths in batch.files.values() for p in paths)

    def _read(self, batch_id: int) -> Batch:
        logged = json.loads((self.offsets / f"{batch_id}.json").read_text())
        files = {name: [Path(p) for p in paths] for name, paths in logged["files"].items()}
        return Batch(batch_id, files)

    def _logged_ids(self) -> list[int]:
        if not self.offsets.is_dir():
            return []
        return sorted(int(p.stem) for p in self.offsets.glob("*.json") if p.stem.isdigit())


class EmbeddedMicroBatch:
    """A batch's query rows (DuckDB over its files) as an ``engine.microbatch.MicroBatch``."""

    def __init__(
        self, plan: SpecPlan, sources: Sequence[SourceConfig], batch: Batch, pointer: int | None
    ) -> None:
        self.plan = plan
        con = connect()
        try:
            register_sources(con, [batch_source(s) for s in sources], batch.files)
            self.rows = run_query(con, plan.spec.query, plan.spec.timestamp, plan.spec.sources)
        finally:
            con.close()
        self.ts = utc_micros(self.rows.column(plan.spec.timestamp))
        late = pc.fill_null(pc.less(self.ts, pointer), False) if pointer is not None else None
        self.late = pa.array(np.zeros(self.rows.num_rows, np.bool_)) if late is None else late

    def stats(self) -> BatchStats:
        keys = sorted({k.column for g in self.plan.groups for k in g.layout.keys})
        null_key = pa.array(np.zeros(self.rows.num_rows, np.bool_))
        for key in keys:
            null_key = pc.or_(null_key, pc.is_null(self.rows.column(key)))
        newest = pc.max(self.ts).as_py()
        return BatchStats(
            rows=self.rows.num_rows,
            late=int(pc.sum(self.late).as_py() or 0),
            null_keys=int(pc.sum(null_key).as_py() or 0),
            null_timestamps=self.ts.null_count,
            max_ts=None if newest is None else int(newest),
        )

    def write_late(self, storage: Storage, folder: str) -> None:
        # One file of one name: a replay of the batch writes it again, whole.
        storage.write_parquet(self.rows.filter(self.late), join(folder, "part-00000.parquet"))

    def finest_tiles(self, group: TileGroup) -> pa.Table:
        on_time = self.rows.filter(pc.invert(self.late))
        return finest_tiles(on_time, self.plan, group).partial

    def release(self) -> None:
        self.rows = self.rows.slice(0, 0)


def batch_source(source: SourceConfig) -> SourceConfig:
    """The source without the options only the file listing uses."""
    options = {k: v for k, v in source.options.items() if k.lower() not in STREAM_ONLY_OPTIONS}
    return replace(source, options=options)


def _max_files(source: SourceConfig) -> int | None:
    for key, value in source.options.items():
        if key.lower() == MAX_FILES:
            try:
                return max(1, int(value))
            except ValueError:
                raise EmbeddedSourceError(
                    f'source "{source.name}": maxFilesPerTrigger must be a whole number, '
                    f'not "{value}"'
                ) from None
    return None


def _folder(source: SourceConfig) -> Path:
    if source.path is None:  # stream_sources checked it
        raise EmbeddedSourceError(f'source "{source.name}" has no landing folder')
    return source.path


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
