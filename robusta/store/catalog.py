"""The Iceberg SQL catalog named by robusta.yaml's ``offline`` section."""

from __future__ import annotations

from typing import Any

from robusta.errors import RobustaError
from robusta.spec.model import OfflineConfig


class CatalogError(RobustaError, OSError):
    """The Iceberg catalog cannot be opened."""


def open_catalog(offline: OfflineConfig) -> Any:
    """Open (creating on first use) the SQL catalog: SQLite by default, or PostgreSQL."""
    try:
        from pyiceberg.catalog.sql import SqlCatalog
    except ImportError as exc:
        raise CatalogError('pyiceberg is not installed: pip install "robusta[spark]"') from exc
    uri = str(offline.catalog.get("uri", ""))
    if uri.startswith("sqlite:///"):
        from pathlib import Path

        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    offline.warehouse.mkdir(parents=True, exist_ok=True)
    properties = {str(k): str(v) for k, v in dict(offline.catalog.get("properties") or {}).items()}
    warehouse = str(offline.catalog.get("warehouse") or offline.warehouse.resolve().as_uri())
    try:
        catalog = SqlCatalog("robusta", uri=uri, warehouse=warehouse, **properties)
        catalog.create_namespace_if_not_exists(offline.namespace)
    except Exception as exc:  # SQLAlchemy raises many types for an unreachable database
        raise CatalogError(
            f"cannot open the Iceberg catalog at {uri} ({type(exc).__name__}: {exc}); check "
            "offline.catalog.uri in robusta.yaml and that the database is running"
        ) from exc
    return catalog
