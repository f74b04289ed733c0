"""Feature logging ("forward fill"): every served feature vector, to an Iceberg table per spec.

    online:
      type: redis
      log: {flush_seconds: 5, max_rows: 100000, batch_rows: 10000}   # or: log: true

A lookup only appends its values to an in-memory queue (a few microseconds); a background
thread writes them to ``<namespace>.feature_log__<spec>`` with pyiceberg, every
``flush_seconds`` or once ``batch_rows`` are waiting. Memory is bounded: past ``max_rows``
waiting rows new ones are dropped and counted, and a write that fails drops that spec's
batch and counts it (other specs' batches are written), so logging never slows down or fails
a lookup. :meth:`FeatureLog.stats` tells what happened.

A logged row holds the entity keys, the lookup time ``ts``, the spec's ``version_pointer``,
the features ``requested`` and their values (null for features not requested), plus a
``request_id`` shared by the rows of one ``get_features`` call and entity, so rows of several
specs can be joined back into the vector that was served. Logged rows are training rows
(``get_training_frame(None, features, source="logged")``) and the input of
``robusta consistency``, which recomputes them with the PIT join at the logged pointer.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from robusta.plan.model import SpecPlan
from robusta.spec.model import OfflineConfig
from robusta.store.catalog import storage_of
from robusta.store.feature_log import (
    LOG_TIME,
    LOGGED_AT,
    REQUEST_ID,
    REQUESTED,
    TS,
    VERSION_POINTER,
    entity_types,
    log_schema,
    open_log_table,
)
from robusta.store.files import join


@dataclass
class LogStats:
    """Rows logged (written to Iceberg), dropped (queue full or a failed write), waiting."""

    logged: int = 0
    dropped: int = 0
    pending: int = 0
    writes: int = 0
    failed_writes: int = 0
    last_error: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Entry:
    spec: SpecPlan
    outputs: tuple[str, ...]
    request: str
    keys: list[dict[str, object]]  # per entity: entity name -> key value
    t: int
    pointer: int | None
    values: list[tuple[Any, ...]]  # per entity, in ``outputs`` order


class FeatureLog:
    """The background logger a :class:`robusta.serving.FeatureClient` feeds."""

    def __init__(
        self,
        offline: OfflineConfig,
        *,
        flush_seconds: float = 5.0,
        max_rows: int = 100_000,
        batch_rows: int = 10_000,
    ) -> None:
        self.offline = offline
        self.storage = storage_of(offline)
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self.batch_rows = batch_rows
        self._queue: deque[_Entry] = deque()
        self._waiting = 0
        self._stats = LogStats()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer at a time (thread or flush())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tables: dict[str, Any] = {}

    # ---- the lookup side: never blocks, never raises ------------------------------------
    def record(
        self,
        request: str,
        spec: SpecPlan,
        outputs: Sequence[str],
        keys: list[dict[str, object]],
        t: int,
        pointer: int | None,
        rows: Sequence[dict[str, Any]],
    ) -> None:
        """Queue one group's served values (``rows[i]`` for entity ``keys[i]``) of the
        ``get_features`` call ``request`` (:meth:`new_request`)."""
        n = len(rows)
        with self._lock:
            if self._waiting + n > self.max_rows or self._stop.is_set():
                self._stats.dropped += n  # full, or closed: nothing would write it
                return
            self._waiting += n
        names = tuple(outputs)
        # Lists are copied: callers own the served vectors and may change them.
        values = [
            tuple(list(v) if isinstance(v, list) else v for v in map(row.__getitem__, names))
            for row in rows
        ]
        entry = _Entry(spec, names, request, keys, t, pointer, values)
        self._queue.append(entry)  # deque appends are atomic
        if self._thread is None:
            self._start()
        if self._waiting >= self.batch_rows:
            self._wake.set()

    @staticmethod
    def new_request() -> str:
        return uuid.uuid4().hex

    # ---- the writer side -----------------------------------------------------------------
    def stats(self) -> LogStats:
        with self._lock:
            return LogStats(**{**asdict(self._stats), "pending": self._waiting})

    def flush(self) -> None:
        """Write everything queued now (the background thread does this by itself)."""
        with self._write_lock:
            entries = []
            while self._queue:
                entries.append(self._queue.popleft())
            if not entries:
                return
            for spec, batch in _by_spec(entries):
                self._write(spec, batch)

    def _write(self, spec: SpecPlan, batch: Sequence[_Entry]) -> None:
        """One spec's batch; a failure drops (and counts) that batch only."""
        count = sum(len(e.values) for e in batch)
        try:
            self._append(spec, _rows(spec, batch))
        except Exception as exc:  # a background writer must survive any store error
            with self._lock:
                self._stats.dropped += count
                self._stats.failed_writes += 1
                self._stats.last_error = f"{spec.name}: {type(exc).__name__}: {exc}"
                self._waiting -= count
            return
        with self._lock:
            self._stats.logged += count
            self._stats.writes += 1
            self._waiting -= count

    def close(self) -> None:
        """Stop the background thread and write what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.flush()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="robusta-feature-log", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def _append(self, spec: SpecPlan, rows: pa.Table) -> None:
        """One Parquet file written by pyarrow, committed with ``add_files`` (pyiceberg's own
        writer stores a null list as an empty one, which would change logged values)."""
        table = self._tables.get(spec.name)
        if table is None:
            table = self._tables[spec.name] = open_log_table(self.offline, spec)
        path = join(table.location(), "data", f"{uuid.uuid4().hex}.parquet")
        self.storage.write_parquet(rows, path)
        try:
            table.add_files([path])
        except Exception:
            self.storage.delete(path)  # nothing committed points at it
            raise


def _by_spec(entries: Sequence[_Entry]) -> list[tuple[SpecPlan, list[_Entry]]]:
    by_spec: dict[str, list[_Entry]] = {}
    for entry in entries:
        by_spec.setdefault(entry.spec.name, []).append(entry)
    return [(group[0].spec, group) for group in by_spec.values()]


def _rows(spec: SpecPlan, entries: Sequence[_Entry]) -> pa.Table:
    schema = log_schema(spec)
    now = time.time_ns() // 1000
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    outputs = [o.name for o in spec.outputs]
    entities = list(entity_types(spec))
    for entry in entries:
        position = {name: i for i, name in enumerate(entry.outputs)}
        for i, (keys, values) in enumerate(zip(entry.keys, entry.values, strict=True)):
            for name in entities:
                columns[name].append(keys.get(name))
            columns[REQUEST_ID].append(f"{entry.request}-{i}")
            columns[TS].append(entry.t)
            columns[VERSION_POINTER].append(entry.pointer)
            columns[LOGGED_AT].append(now)
            columns[REQUESTED].append(list(entry.outputs))
            for name in outputs:
                at = position.get(name)
                columns[name].append(None if at is None else values[at])
    arrays = []
    for field in schema:
        if field.type == LOG_TIME:
            arrays.append(pa.array(columns[field.name], pa.int64()).cast(LOG_TIME))
        else:
            arrays.append(pa.array(columns[field.name], field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
