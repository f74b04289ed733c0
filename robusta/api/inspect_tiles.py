"""`robusta tiles`: read back stored tiles of one key, finalized beside their IRs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa

from robusta.errors import RobustaError, UnknownFeatureError
from robusta.plan.keys import key_bucket
from robusta.plan.model import TileGroup
from robusta.store.tiles import TileTables
from robusta.workspace import Workspace


@dataclass
class TileView:
    """Stored tiles of one key in one tile table, newest first."""

    table: str
    group: TileGroup
    rows: pa.Table

    def finalized(self, feature: str) -> list[Any]:
        base = next(f for f in self.group.features if f.name == feature)
        values: list[Any] = base.op.finalize(
            base.op.from_arrow(self.rows.column(base.ir_column))
        ).to_pylist()
        return values


class NoTilesError(RobustaError, LookupError):
    """A tile table that has not been materialized yet."""


def read_tiles(
    workspace: Workspace, spec: str, key: str, granularity: str | None = None, limit: int = 50
) -> list[TileView]:
    """Tiles whose primary selector equals ``key`` (pruned to its key bucket), per group."""
    from pyiceberg import expressions

    config = workspace.config
    plan = workspace.plan.spec(spec)
    if plan is None:
        names = ", ".join(s.name for s in workspace.plan.specs)
        raise UnknownFeatureError(f'no spec named "{spec}" (specs: {names})')
    tables = TileTables(config.offline)
    views = []
    equal: Any = expressions.EqualTo  # pydantic models: untyped positionals
    for group in plan.groups:
        layout = group.layout
        table = tables.load(layout.table)
        if table is None:
            raise NoTilesError(
                f'table "{tables.identifier(layout.table)}" has no tiles yet: run '
                f"`robusta materialize --spec {spec}` first"
            )
        primary = next(k for k in layout.keys if k.column == layout.primary)
        value: Any = int(key) if primary.type.is_integer else key
        condition: Any = expressions.And(
            equal("key_bucket", key_bucket(value, layout.key_buckets)),
            equal(layout.primary, value),
        )
        if granularity is not None:
            condition = expressions.And(condition, equal("granularity", granularity))
        rows = table.scan(row_filter=condition).to_arrow()
        rows = rows.sort_by([("bucket_start", "descending"), ("granularity", "ascending")])
        views.append(TileView(tables.identifier(layout.table), group, rows.slice(0, limit)))
    return views


def describe_ir(value: Any, limit: int = 80) -> str:
    """A short, readable form of one IR value for the terminal."""
    text = readable(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def readable(value: Any) -> str:
    """One stored or finalized value as a person reads it: ISO UTC times, lists in brackets,
    structs as ``{field: value}``, sketches by their size; never a Python repr."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        spec = "%Y-%m-%dT%H:%M:%S.%f" if value.microsecond else "%Y-%m-%dT%H:%M:%S"
        return f"{value:{spec}}Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<sketch {len(value)} B>"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {readable(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(readable(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)
