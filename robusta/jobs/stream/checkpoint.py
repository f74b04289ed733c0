"""A spec stream's checkpoint folder, ``<streaming.checkpoint>/<spec>/``:

- ``start.json``: the pointer the stream starts from and when it was fixed (once a batch was
  computed from it, it stays: replays of the first batch must see the same one);
- ``state/<N>/``: state version ``N``, published by batch ``N`` atomically (a rename): its
  ``meta.json`` (pointers, counts, the last batch that tiled anything: ``tiles_from``), and per
  group the full tiles of the (day, key) pairs the batch touched (``touched/<table>.parquet``,
  with ``__changed``) and the tiles it closed (``closing/<table>.parquet``);
- ``keyed/``: every open tile, keyed by day and key (``keyed.KeyedState``), the versions
  applied in order;
- ``online.json``: the online generation the stream writes to;
- ``spark/`` or ``embedded/``: the engine's own batch log (which input each batch holds).

Versions no replay can need are dropped (:meth:`Checkpoint.clean`); the progress shown by
``robusta stream --status`` is read from the latest one (:meth:`Checkpoint.status`). A version
written before the keyed state (``<table>/tiles.parquet``: every open tile) reads as one that
touched every key.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from robusta.plan.model import TileGroup
from robusta.plan.open_tiles import closed_between
from robusta.spec.durations import floor_to, from_micros, to_micros

KEEP_STATES = 3
TOUCHED = "touched"
CLOSING = "closing"


@dataclass
class SpecStatus:
    """Progress of one spec's stream (cumulative over restarts, from its checkpoint)."""

    spec: str
    batch: int | None = None
    rows: int = 0
    late: int = 0
    dropped: int = 0
    pointer: str | None = None
    max_event: str | None = None
    lag_seconds: float | None = None  # wall clock minus the pointer
    updated: str | None = None
    active: bool = False

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Checkpoint:
    """The checkpoint folder of one spec's stream (see the module docstring)."""

    def __init__(self, folder: Path, engine: str) -> None:
        self.folder = folder
        self.engine = engine
        self._read: dict[tuple[int, str, str], pa.Table | None] = {}  # versions: immutable

    # ---- the start ------------------------------------------------------------------------
    def fix_start(self, ends: Callable[[], Iterable[int | None]], gmin: int) -> None:
        """Write the start pointer: the latest of ``ends()`` (the online pointer, the ends of
        the Iceberg tiles' coverage) floored to ``gmin``; events before it are late (batch
        tiles have them). Kept as it is once a batch was computed from it."""
        path = self.folder / "start.json"
        if path.exists() and self.state_ids():
            return  # batches were computed from it: it stays
        # No batch computed yet: (re)read it, so a materialize or upload since an earlier
        # start that never got to a batch is not tiled a second time.
        known = [e for e in ends() if e is not None]
        pointer = floor_to(max(known), gmin) if known else None
        write_json(path, {"pointer": pointer, "created": iso(to_micros(datetime.now(UTC)))})
        self.__dict__.pop("start", None)  # read again by the batches

    @functools.cached_property
    def start(self) -> dict[str, Any]:
        """The start (pointer, creation time); fixed once :meth:`fix_start` ran."""
        start: dict[str, Any] = json.loads((self.folder / "start.json").read_text())
        return start

    def seeded(self, largest: int) -> bool:
        """Whether the stream starts inside a largest bucket that a batch run began."""
        pointer = self.start["pointer"]
        return pointer is not None and pointer % largest != 0

    def started_ms(self) -> int:
        """When the start was fixed, in epoch milliseconds (as snapshot timestamps)."""
        created = datetime.strptime(self.start["created"], "%Y-%m-%dT%H:%M:%SZ")
        return int(created.replace(tzinfo=UTC).timestamp() * 1000)

    # ---- state versions -------------------------------------------------------------------
    def state(self, batch_id: int) -> Path:
        return self.folder / "state" / str(batch_id)

    def state_ids(self) -> list[int]:
        root = self.folder / "state"
        if not root.is_dir():
            return []
        return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())

    def meta(self, batch_id: int) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((self.state(batch_id) / "meta.json").read_text())
        return meta

    def computed(self, batch_id: int) -> bool:
        return (self.state(batch_id) / "meta.json").exists()

    def previous(self, batch_id: int) -> dict[str, Any]:
        """Meta of the latest complete state before ``batch_id`` (or the start's)."""
        done = [i for i in self.state_ids() if i < batch_id]
        if done:
            return self.meta(max(done))
        return {
            "batch": None,
            "tiles_from": None,
            "pointer": self.start["pointer"],
            "max_ts": None,
            "rows": 0,
            "late": 0,
            "dropped": 0,
        }

    def touched(self, batch_id: int, group: TileGroup) -> pa.Table | None:
        """A version's full tiles of the (day, key) pairs its batch touched, with
        ``__changed`` (None when it touched none)."""
        return self._table(batch_id, group, TOUCHED)

    def closing(self, batch_id: int, group: TileGroup) -> pa.Table | None:
        """The tiles a version's batch closed (None when it closed none)."""
        return self._table(batch_id, group, CLOSING)

    def _table(self, batch_id: int, group: TileGroup, kind: str) -> pa.Table | None:
        """Read once: the state, offline and online steps use the same one."""
        key = (batch_id, group.layout.table, kind)
        if key not in self._read:
            version = self.state(batch_id)
            path = version / kind / f"{group.layout.table}.parquet"
            legacy = version / group.layout.table  # every open tile: as if all were touched
            table = None
            if path.is_file():
                table = pq.read_table(path)
            elif legacy.is_dir():
                table = pq.read_table(legacy)
                if kind == CLOSING:
                    meta = self.meta(batch_id)
                    table = closed_between(table, group, meta["pointer_before"], meta["pointer"])
            self._read[key] = table
        return self._read[key]

    def forget(self, batch_id: int) -> None:
        """A version's files are read again (they were rewritten)."""
        self._read = {k: v for k, v in self._read.items() if k[0] != batch_id}

    def forget_all_but(self, batch_id: int) -> None:
        """Only this version can be read again."""
        self._read = {k: v for k, v in self._read.items() if k[0] == batch_id}

    def clean(self, batch_id: int, applied: int | None) -> None:
        """Drop state versions no replay can need: the last few, and those not yet
        ``applied`` to the keyed state, stay."""
        ids = self.state_ids()
        keep = set(ids[-KEEP_STATES:])
        for i in ids:
            if i not in keep and i < batch_id and applied is not None and i <= applied:
                shutil.rmtree(self.state(i), ignore_errors=True)

    # ---- the engine's log and the online generation --------------------------------------
    def query_id(self) -> str:
        """The query id (Spark's, or the embedded log's): stable across restarts of the
        same checkpoint."""
        if self.engine == "embedded":
            return str(json.loads((self.folder / "embedded" / "metadata.json").read_text())["id"])
        metadata = self.folder / "spark" / "metadata"
        return str(json.loads(metadata.read_text().splitlines()[0])["id"])

    def online_generation(self) -> int | None:
        """The online generation the stream wrote to last (None before its first write)."""
        mine = self.folder / "online.json"
        return int(json.loads(mine.read_text())["generation"]) if mine.exists() else None

    def write_online_generation(self, generation: int) -> None:
        write_json(self.folder / "online.json", {"generation": generation})

    # ---- progress -------------------------------------------------------------------------
    def status(self, spec: str, *, active: bool = False) -> SpecStatus:
        ids = self.state_ids()
        if not ids:
            return SpecStatus(spec, active=active)
        meta = self.meta(ids[-1])
        pointer = meta["pointer"]
        now = to_micros(datetime.now(UTC))
        return SpecStatus(
            spec=spec,
            batch=meta["batch"],
            rows=meta["rows"],
            late=meta["late"],
            dropped=meta["dropped"],
            pointer=None if pointer is None else iso(pointer),
            max_event=None if meta["max_ts"] is None else iso(meta["max_ts"]),
            lag_seconds=None if pointer is None else round((now - pointer) / 1e6, 1),
            updated=iso(meta["written"]),
            active=active,
        )


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as ``path``, atomically (a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def iso(micros: int) -> str:
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%SZ")
