"""Online stores: one contract (:mod:`.base`), one module per backend."""

from __future__ import annotations

from pathlib import Path

from robusta.spec.model import OnlineConfig
from robusta.store.online.base import (
    OnlineConflictError,
    OnlineStateError,
    OnlineStore,
    OnlineStoreError,
    Record,
    SpecState,
)


def open_online_store(config: OnlineConfig, project: str, *, create: bool = False) -> OnlineStore:
    """The configured backend; ``create`` lets the embedded store start an empty folder."""
    options = config.options
    if config.type == "redis":
        from robusta.store.online.redis import RedisStore

        return RedisStore(options, project)
    if config.type == "aerospike":
        from robusta.store.online.aerospike import AerospikeStore

        return AerospikeStore(options)
    from robusta.store.online.embedded import EmbeddedStore

    return EmbeddedStore(
        Path(str(options["path"])),
        map_size_gb=int(options.get("map_size_gb", 64)),
        create=create,
    )


__all__ = [
    "OnlineConflictError",
    "OnlineStateError",
    "OnlineStore",
    "OnlineStoreError",
    "Record",
    "SpecState",
    "open_online_store",
]
