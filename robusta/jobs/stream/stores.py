"""The stores a spec stream writes: its tile tables and the online store, opened when first
used (``robusta stream --status`` reads the checkpoint alone and opens neither)."""

from __future__ import annotations

from robusta.spec.model import OfflineConfig, OnlineConfig
from robusta.store.online import OnlineStore, open_online_store
from robusta.store.tiles import TileTables


class StreamStores:
    def __init__(self, offline: OfflineConfig, online: OnlineConfig, project: str) -> None:
        self.offline = offline
        self.online = online
        self.project = project
        self._tables: TileTables | None = None
        self._store: OnlineStore | None = None

    @property
    def tables(self) -> TileTables:
        if self._tables is None:
            self._tables = TileTables(self.offline)
        return self._tables

    @property
    def store(self) -> OnlineStore:
        if self._store is None:
            self._store = open_online_store(self.online, self.project, create=True)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
