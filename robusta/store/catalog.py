"""The Iceberg SQL catalog named by robusta.yaml's ``offline`` section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robusta.errors import RobustaError
from robusta.spec.model import OfflineConfig
from robusta.store.files import Storage, is_local


class CatalogError(RobustaError, OSError):
    """The Iceberg catalog cannot be opened."""


def open_catalog(offline: OfflineConfig) -> Any:
    """The catalog of ``offline.catalog``, handed to pyiceberg's ``load_catalog`` as written
    (``properties`` merged in; ``warehouse`` defaulting to ``offline.warehouse``), with the
    namespace created on first use. SQL catalogs default to SQLite in the project."""
    try:
        from pyiceberg.catalog import load_catalog
    except ImportError as exc:
        raise CatalogError("pyiceberg is not installed: pip install robusta") from exc
    properties = catalog_properties(offline)
    uri = properties.get("uri", "")
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if is_local(offline.warehouse):
        Path(offline.warehouse).mkdir(parents=True, exist_ok=True)
    kind = properties.get("type", "py-catalog-impl")
    try:
        catalog = load_catalog("robusta", **properties)
        catalog.create_namespace_if_not_exists(offline.namespace)
    except Exception as exc:  # SQLAlchemy, HTTP and cloud clients raise many types
        hint = (
            "check offline.catalog.uri in robusta.yaml and that the database is running"
            if kind == "sql"
            else f"check offline.catalog in robusta.yaml (a {kind} catalog; its client may "
            f'need an extra: pip install "pyiceberg[{kind}]")'
        )
        where = uri or kind
        raise CatalogError(
            f"cannot open the Iceberg catalog at {where} ({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    return catalog


def catalog_properties(offline: OfflineConfig) -> dict[str, str]:
    """``offline.catalog`` as pyiceberg properties (text values)."""
    raw = dict(offline.catalog)
    nested = dict(raw.pop("properties", None) or {})
    properties = {str(k): _text(v) for k, v in {**raw, **nested}.items()}
    if "py-catalog-impl" not in properties:
        properties.setdefault("type", "sql")
    warehouse = offline.warehouse
    local = is_local(warehouse)
    properties.setdefault("warehouse", Path(warehouse).as_uri() if local else warehouse)
    return properties


def storage_of(offline: OfflineConfig) -> Storage:
    """The storage of the offline store's files: its filesystems are configured from the
    catalog properties (pyiceberg's ``s3.*``, ``gcs.*``, ``adls.*``, ``hdfs.*`` names)."""
    return Storage.of(catalog_properties(offline))


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
