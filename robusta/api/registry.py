"""The feature registry: every feature of every spec, searchable, with lineage and freshness.

Specs of several teams live side by side in ``feature_defs``; a feature is referenced by its
name (base feature, or ``<base>_<window>`` for one window) from any team's training or
serving code. The registry is read from the compiled plan (nothing to keep in sync), the
lineage from the spec's SQL (sqlglot), and freshness from the tile tables (pyiceberg) and the
online store, each optional: a store that cannot be reached is reported, not fatal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from robusta.errors import Location, RobustaError, UnknownFeatureError
from robusta.plan.model import BaseFeature, SpecPlan, TileGroup
from robusta.spec.durations import from_micros
from robusta.spec.model import OfflineConfig, OnlineConfig, SourceConfig
from robusta.spec.suggest import did_you_mean
from robusta.store.online.base import OnlineStateError
from robusta.workspace import Workspace


@dataclass(frozen=True)
class FeatureEntry:
    """One base feature as the registry lists it."""

    name: str
    spec: str
    owner: str
    description: str
    spec_description: str
    op: str
    params: dict[str, Any]
    input: str | None
    input_type: str
    windows: list[str]
    outputs: list[str]
    entities: dict[str, str]  # query column -> entity
    primary: str
    spec_version: str
    defined_at: str  # file:line of the feature's definition
    tile_table: str
    bucket_by: str | None = None  # a map per value of this query column

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def entries(workspace: Workspace) -> list[FeatureEntry]:
    """Every base feature of the project, by spec then feature name."""
    out = []
    for spec in workspace.plan.specs:
        for group in spec.groups:
            for feature in group.features:
                out.append(_entry(spec, group, feature))
    return sorted(out, key=lambda e: (e.spec, e.name))


def _entry(spec: SpecPlan, group: TileGroup, feature: BaseFeature) -> FeatureEntry:
    definition = next(f for f in spec.spec.features if f.name == feature.name)
    return FeatureEntry(
        name=feature.name,
        spec=spec.name,
        owner=feature.owner,
        description=feature.description,
        spec_description=spec.spec.description,
        op=feature.op.label,
        params=dict(feature.op.params),
        input=feature.input,
        input_type=str(feature.input_type),
        windows=[w.name for w in feature.windows],
        outputs=[o.name for o in feature.outputs],
        entities={k.column: k.entity for k in group.layout.keys},
        primary=group.layout.primary,
        spec_version=spec.hash,
        defined_at=_where(definition.locations.get(""), str(spec.spec.file)),
        tile_table=group.layout.table,
        bucket_by=feature.bucket_by,
    )


def _where(location: Location | None, fallback: str) -> str:
    if location is None or not location.line:
        return fallback
    return f"{location.file}:{location.line}"


def search(
    found: Sequence[FeatureEntry],
    owner: str | None = None,
    entity: str | None = None,
    text: str | None = None,
) -> list[FeatureEntry]:
    """Entries of ``owner`` (the feature's or its spec's), keyed by ``entity``, and matching
    ``text`` in a name, description, spec, operator or input (all case-insensitive)."""
    out = []
    for e in found:
        if owner is not None and owner.lower() != e.owner.lower():
            continue
        if entity is not None and entity.upper() not in {v.upper() for v in e.entities.values()}:
            continue
        if text is not None and not _matches(e, text.lower()):
            continue
        out.append(e)
    return out


def _matches(entry: FeatureEntry, text: str) -> bool:
    fields = [entry.name, entry.description, entry.spec_description, entry.spec, entry.op]
    fields.append(entry.input or "")
    return any(text in f.lower() for f in [*fields, *entry.outputs])


def find(workspace: Workspace, name: str) -> FeatureEntry:
    """The entry of a base feature, or of the base feature behind an output name."""
    by_name: dict[str, FeatureEntry] = {}
    for e in entries(workspace):
        by_name[e.name] = e
        for output in e.outputs:
            by_name[output] = e
    if name not in by_name:
        raise UnknownFeatureError(
            f'no feature named "{name}"{did_you_mean(name, by_name)}; `robusta list` shows them'
        )
    return by_name[name]


# ---- lineage ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Lineage:
    """Where a query output column comes from: ``source.column`` names (SQL as written)."""

    column: str
    role: str  # "input", "key" or "timestamp"
    sources: list[str]


def lineage(workspace: Workspace, entry: FeatureEntry) -> list[Lineage]:
    """Source columns behind the feature's input, keys and timestamp, traced through the
    spec's SQL by sqlglot (CTEs, subqueries and expressions included)."""
    spec = _spec(workspace, entry.spec)
    schema = _schemas(workspace.config.sources, spec.spec.sources)
    wanted = [(c, "key") for c in entry.entities]
    if entry.input is not None:
        wanted.insert(0, (entry.input, "input"))
    if entry.bucket_by is not None:
        wanted.append((entry.bucket_by, "bucket_by"))
    wanted.append((spec.spec.timestamp, "timestamp"))
    return [Lineage(c, role, _sources(spec.spec.query, c, schema)) for c, role in wanted]


def _sources(query: str, column: str, schema: dict[str, dict[str, str]]) -> list[str]:
    from sqlglot import exp
    from sqlglot.errors import SqlglotError
    from sqlglot.lineage import lineage as trace

    try:
        root = trace(column, query, schema=schema, dialect="spark")
    except (SqlglotError, ValueError, KeyError) as exc:
        return [f"(not traced: {exc})"]
    names = _case_map(schema)
    found = []
    for node in root.walk():
        if not node.downstream and isinstance(node.source, exp.Table):
            found.append(names.get(node.name.lower(), node.name))
    return sorted(set(found)) or ["(constant)"]


def _schemas(
    sources: Mapping[str, SourceConfig], names: Sequence[str]
) -> dict[str, dict[str, str]]:
    return {
        name: {c.name: str(c.type) for c in (sources[name].schema or ())}
        for name in names
        if name in sources and sources[name].schema
    }


def _case_map(schema: dict[str, dict[str, str]]) -> dict[str, str]:
    """sqlglot lower-cases identifiers; map ``table.column`` back to the declared spelling."""
    return {f"{t}.{c}".lower(): f"{t}.{c}" for t, columns in schema.items() for c in columns}


def _spec(workspace: Workspace, name: str) -> SpecPlan:
    spec = workspace.plan.spec(name)
    if spec is None:
        raise UnknownFeatureError(f'no spec named "{name}"')
    return spec


# ---- freshness --------------------------------------------------------------------------
@dataclass
class Freshness:
    """What is stored for a feature's spec, offline and online (None: nothing yet)."""

    materialized_until: str | None = None  # end of the tile table's coverage
    latest_event: str | None = None  # the latest event time the tiles hold
    tile_table_version: str | None = None  # the spec version that wrote the tiles
    tile_files: int | None = None
    tile_records: int | None = None
    tile_bytes: int | None = None
    committed_at: str | None = None
    version_pointer: str | None = None  # online
    online_mode: str | None = None
    uploaded_at: str | None = None
    problems: list[str] = field(default_factory=list)  # stores that could not be read


def freshness(workspace: Workspace, entry: FeatureEntry) -> Freshness:
    out = Freshness()
    config = workspace.config
    try:
        _offline(out, config.offline, entry.tile_table)
    except (RobustaError, OSError) as exc:
        out.problems.append(f"offline: {exc}")
    try:
        _online(out, config.online, config.project, entry.spec)
    except OnlineStateError:
        pass  # an embedded store nothing was uploaded to yet: no pointer
    except (RobustaError, OSError) as exc:
        out.problems.append(f"online: {exc}")
    return out


def _offline(out: Freshness, offline: OfflineConfig, table_name: str) -> None:
    from robusta.store.tiles import VERSION_PROPERTY, TileTables, coverage, latest_event

    table = TileTables(offline).load(table_name)
    if table is None:
        return
    ends = [b for _, b in coverage(table) if b is not None]
    out.materialized_until = _iso(max(ends)) if ends else None
    latest = latest_event(table)
    out.latest_event = None if latest is None else _iso(latest)
    out.tile_table_version = table.properties.get(VERSION_PROPERTY)
    snapshot = table.current_snapshot()
    if snapshot is None:
        return
    summary = snapshot.summary
    out.tile_files = _int(summary, "total-data-files")
    out.tile_records = _int(summary, "total-records")
    out.tile_bytes = _int(summary, "total-files-size")
    out.committed_at = _iso(snapshot.timestamp_ms * 1000)


def _online(out: Freshness, online: OnlineConfig, project: str, spec: str) -> None:
    from robusta.store.online import open_online_store

    with open_online_store(online, project) as store:
        state = store.state(spec)
    if state is None:
        return
    out.version_pointer = _iso(state.pointer)
    out.online_mode = state.mode
    out.uploaded_at = _iso(state.uploaded_at)


def _int(summary: Any, key: str) -> int | None:
    value = summary.additional_properties.get(key) if summary is not None else None
    return int(value) if value is not None else None


def _iso(micros: int) -> str:
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%SZ")
