"""Iceberg table upkeep: snapshots past the retention expired, and the files that no retained
snapshot needs deleted.

Every commit adds a snapshot (a stream one per closing micro-batch), a manifest list, a
manifest and a metadata file; they are what time travel reads, so they are kept for
``offline.retention``. Expiring a snapshot only removes it from the table's metadata;
:func:`delete_unreferenced` then removes the files under the table's location that neither a
retained snapshot nor the metadata log names. A file written in the last
:data:`GRACE_SECONDS` may belong to a commit still in flight (a writer writes its files
before it commits), and a leased run folder to a run still writing: both are left alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from robusta.store.files import Storage, join, normal
from robusta.store.tiles import (
    LEASE_SUFFIX,
    RUNS_FOLDER,
    CommitConflictError,
    lease_alive,
    referenced_data_files,
)

GRACE_SECONDS = 3600.0


@dataclass(frozen=True)
class Upkeep:
    """What :func:`expire_snapshots` and :func:`delete_unreferenced` did to one table."""

    expired: int  # snapshots
    kept: int  # snapshots retained
    deleted_files: int
    deleted_bytes: int


def expire_snapshots(table: Any, before_ms: int) -> tuple[int, int]:
    """Expire the snapshots older than ``before_ms`` (epoch ms), never the current one;
    ``(expired, kept)``."""
    current = table.current_snapshot()
    keep = None if current is None else current.snapshot_id
    every = table.snapshots()
    expired = [s.snapshot_id for s in every if s.timestamp_ms < before_ms and s.snapshot_id != keep]
    if expired:
        from pyiceberg.exceptions import CommitFailedException

        try:
            table.maintenance.expire_snapshots().by_ids(expired).commit()
        except CommitFailedException as exc:
            raise CommitConflictError(
                f"another writer committed to {table.name()[-1]} while its snapshots were "
                f"expired; nothing was expired: run robusta maintain again ({exc})"
            ) from None
    return len(expired), len(every) - len(expired)


def referenced_files(table: Any) -> set[str]:
    """Every file a retained snapshot or the metadata log names: data files, manifests,
    manifest lists and metadata files (normalized URIs)."""
    io = table.io
    named: set[str] = {table.metadata_location}
    named.update(entry.metadata_file for entry in table.metadata.metadata_log)
    for snapshot in table.snapshots():
        named.add(snapshot.manifest_list)
        named.update(m.manifest_path for m in snapshot.manifests(io))
    named |= referenced_data_files(table)
    return {normal(p) for p in named}


def delete_unreferenced(
    table: Any, storage: Storage, now: float | None = None, grace: float = GRACE_SECONDS
) -> tuple[int, int]:
    """Delete the files under the table's location that :func:`referenced_files` does not
    name, older than ``grace`` seconds and outside live leased run folders; ``(files,
    bytes)`` deleted."""
    now = time.time() if now is None else now
    named = referenced_files(table)
    runs = join(table.location(), RUNS_FOLDER) + "/"
    deleted = size = 0
    for uri in _unnamed(storage.files(table.location()), named):
        if uri.startswith(runs):
            run = uri[len(runs) :].split("/", 1)[0]
            lease = f"{runs}{run}{LEASE_SUFFIX}"
            if run.endswith(LEASE_SUFFIX) or lease_alive(storage, lease, now):
                continue  # a lease file, or a run still writing
        modified = storage.modified(uri)
        if modified is None or now - modified < grace:
            continue
        filesystem, path = storage.locate(uri)
        size += int(filesystem.get_file_info(path).size or 0)
        storage.delete(uri)
        deleted += 1
    return deleted, size


def _unnamed(uris: Iterable[str], named: set[str]) -> list[str]:
    return [u for u in uris if normal(u) not in named]
