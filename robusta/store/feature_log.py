"""The feature-log tables: one Iceberg table per spec, ``<namespace>.feature_log__<spec>``.

The online client writes them (``serving.feature_log``: a background writer), the training
and consistency APIs read them (``api.logged``, ``api.consistency``); both use the name and
schema defined here. A logged row holds the entity keys, the lookup time ``ts``, the spec's
``version_pointer``, the time it was logged, the features ``requested`` and every output's
value (null for features not requested), plus a ``request_id`` shared by the rows of one
``get_features`` call and entity.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from robusta.plan.model import SpecPlan
from robusta.spec.model import OfflineConfig

REQUEST_ID = "request_id"
TS = "ts"
VERSION_POINTER = "version_pointer"
LOGGED_AT = "logged_at"
REQUESTED = "requested"
LOG_TIME = pa.timestamp("us", tz="UTC")


LOG_PREFIX = "feature_log__"


def log_table(spec: str) -> str:
    return f"{LOG_PREFIX}{spec}"


def entity_types(spec: SpecPlan) -> dict[str, pa.DataType]:
    """The spec's entities (every group's keys) and their key types."""
    entities: dict[str, pa.DataType] = {}
    for group in spec.groups:
        for key in group.layout.keys:
            entities.setdefault(key.entity, pa.int64() if key.type.is_integer else pa.string())
    return entities


def log_schema(spec: SpecPlan) -> pa.Schema:
    """Entity columns (named like the entities), request columns, then every output."""
    fields = [pa.field(name, kind) for name, kind in entity_types(spec).items()]
    fields += [
        pa.field(REQUEST_ID, pa.string()),
        pa.field(TS, LOG_TIME),
        pa.field(VERSION_POINTER, LOG_TIME),
        pa.field(LOGGED_AT, LOG_TIME),
        pa.field(REQUESTED, pa.list_(pa.string())),
    ]
    return pa.schema([*fields, *(pa.field(o.name, o.type) for o in spec.outputs)])


def open_log_table(offline: OfflineConfig, spec: SpecPlan) -> Any:
    """The spec's log table, created on first use; new outputs are added to its schema."""
    from pyiceberg.exceptions import NoSuchTableError

    from robusta.store.catalog import open_catalog

    catalog = open_catalog(offline)
    identifier = f"{offline.namespace}.{log_table(spec.name)}"
    schema = log_schema(spec)
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        return catalog.create_table(identifier, schema=schema)
    known = {f.name for f in table.schema().fields}
    if any(name not in known for name in schema.names):
        with table.update_schema() as update:
            update.union_by_name(schema)
    return table
