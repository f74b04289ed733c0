"""The lookup client: feature values of entity keys now (or at a time), from the online store.

    from robusta.serving import FeatureClient
    client = FeatureClient.from_config("robusta.yaml")
    [vector] = client.get_features([{"CUSTOMER_ID": "17850"}], ["customer_spend_7d"])
    vector.values["customer_spend_7d"], vector.pointer

Per spec, one store read fetches the spec's state and the records of every requested key
(one round trip on Redis). Up to ``PER_KEY_MAX`` entities, windows are assembled key by key
(:mod:`robusta.plan.key_assembly`); larger batches take the vectorized assembler of the PIT
join (:mod:`robusta.plan.assembly`). Both pick the same tiles in the same order and merge
them with the same operator definitions, so a lookup equals the backfill row with the
returned version pointer, bit for bit. No JVM and no Iceberg on this path (feature logging,
``online.log``, writes to Iceberg from a background thread that imports pyiceberg there).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from robusta.errors import RobustaError
from robusta.plan.assembly import GroupAssembler, Rows, TileSet
from robusta.plan.derived import request_array
from robusta.plan.key_assembly import KeyAssembler
from robusta.plan.keys import record_key
from robusta.plan.model import KeyColumn, Plan, ServicePlan, TileGroup
from robusta.plan.selection import GroupRequest, resolve_features, services_in
from robusta.plan.services import derive
from robusta.serving.feature_log import FeatureLog
from robusta.serving.value_cache import DEFAULT_CACHE_SIZE, ValueCache, fresh
from robusta.spec.datatypes import DataType
from robusta.spec.durations import floor_to, from_micros, to_micros
from robusta.store.online import (
    OnlineStateError,
    OnlineStore,
    OnlineStoreError,
    SpecState,
    open_online_store,
)
from robusta.store.online.base import heads_table
from robusta.store.online.records import decode, tile_record_schema, value_record_schema
from robusta.store.online.value_records import (
    decode_value_columns,
    decode_values,
    encode_values,
)
from robusta.workspace import Workspace, load_workspace

Entity = Mapping[str, object]
# Up to this many entities a group is assembled key by key (pure Python per key); more take
# the vectorized assembler, whose fixed cost is then shared (measured: bench/lookup.py).
PER_KEY_MAX = 12


class LookupRequestError(RobustaError, ValueError):
    """A lookup request that cannot be answered as asked (missing entity, time out of range)."""


class MissingEntityError(LookupRequestError):
    """Requested features are keyed by entities the request does not give."""

    def __init__(self, spec: str, missing: Sequence[str], ask: str | None = None) -> None:
        self.spec, self.missing = spec, sorted(missing)
        ask = ask or f'give it in every entity, e.g. {{"{self.missing[0]}": ...}}'
        super().__init__(f"features of {spec} need entity {', '.join(self.missing)}; {ask}")


@dataclass(frozen=True, slots=True)
class FeatureVector:
    """One entity's feature values and, per spec, the version pointer they reflect."""

    entity: Entity
    values: dict[str, Any]
    pointers: dict[str, datetime | None]  # None: the store was down and defaults were served
    # with skip_unavailable: specs left out, each with why (not uploaded, an older version)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def pointer(self) -> datetime | None:
        """The version pointer, when every spec looked up shares it (see ``pointers``)."""
        distinct = set(self.pointers.values())
        if len(distinct) > 1:
            raise LookupRequestError(
                "the features come from specs with different version pointers; read "
                "FeatureVector.pointers"
            )
        return next(iter(distinct), None)


@dataclass(frozen=True)
class _Group:
    """A tile group's part of a request: its assembler and record schemas."""

    request: GroupRequest
    assembler: GroupAssembler
    key_assembler: KeyAssembler
    tiles_schema: pa.Schema
    empty: pa.RecordBatch
    values_schema: pa.Schema
    longest: int  # the longest bounded window requested, in micros (0 if none)
    cache: ValueCache  # values of recent per-key lookups (``value_cache``)
    memo: dict[str, Any] = field(default_factory=dict)  # the group's defaults, once known


class FeatureClient:
    """Looks feature values up in the online store; see the module docstring."""

    def __init__(
        self,
        workspace: Workspace,
        store: OnlineStore,
        *,
        on_unavailable: str = "error",
        log: FeatureLog | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        heads: bool = True,
    ) -> None:
        """``cache_size``: per requested tile group, how many keys' assembled values are
        kept for repeats (``robusta.serving.value_cache``); 0 turns the cache off.
        ``heads``: lookups at or after an upload's pointer read the values it wrote as of
        it (``SpecState.heads_at``) instead of assembling tiles; False always assembles."""
        self.workspace = workspace.require_valid()
        self.cache_size = cache_size
        self.heads = heads
        self.plan: Plan = workspace.plan
        self.store = store
        self.on_unavailable = on_unavailable
        self.log = log  # served vectors go to Iceberg in the background (feature_log)
        self._groups: dict[tuple[str, ...] | None, list[_Group]] = {}
        self._states: dict[str, SpecState | None] = {}  # per spec, the last state read
        self._services: dict[tuple[str, ...], list[ServicePlan]] = {}

    @classmethod
    def from_config(
        cls, config: str | Path | None = None, *, store: OnlineStore | None = None
    ) -> FeatureClient:
        workspace = load_workspace(Path(config) if config else None)
        project = workspace.config
        online = store or open_online_store(project.online, project.project)
        mode = str(project.online.options.get("on_unavailable", "error"))
        size = int(project.online.options.get("cache_size", DEFAULT_CACHE_SIZE))
        options = dict(project.online.options.get("log") or {})
        log = None
        if options.pop("enabled", False):
            log = FeatureLog(project.offline, **options)
        return cls(workspace, online, on_unavailable=mode, log=log, cache_size=size)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        self.store.close()

    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- lookups --------------------------------------------------------------------------
    def get_features(
        self,
        entities: Sequence[Entity],
        features: Sequence[str] | str | None = None,
        at: datetime | None = None,
        *,
        skip_unavailable: bool = False,
        request: Mapping[str, Any] | None = None,
    ) -> list[FeatureVector]:
        """Per entity (a mapping of entity name to key value), the requested features
        (outputs, base features, specs or services; None: every feature the entities' keys
        serve) as of ``at`` (default now), capped by each spec's version pointer.

        A service also gives its derived features; ``request`` holds their request inputs,
        each one value for every entity or a list of one per entity. A service's entity
        mapping lets entities name keys as the service does.

        With ``skip_unavailable``, a spec the online store cannot serve (never uploaded, or
        uploaded at another version of the spec) is left out instead of failing the lookup;
        each vector's ``skipped`` says which and why."""
        if isinstance(features, str):
            features = [features]
        given = entities
        services = self._services_of(features)
        if services:
            entities = _mapped_entities(entities, services)
        groups = self._resolve(entities, features)
        t = to_micros(at if at is not None else datetime.now().astimezone())
        values: list[dict[str, Any]] | None = None
        pointers: dict[str, datetime | None] = {}
        by_spec: dict[str, list[_Group]] = {}
        for group in groups:
            by_spec.setdefault(group.request.spec.name, []).append(group)
        request_id = FeatureLog.new_request() if self.log is not None else ""
        skipped: dict[str, str] = {}
        for spec, members in by_spec.items():
            wanted = [
                (g.request.group.layout.table, _key_text(e, g.request.group))
                for g in members
                for e in entities
            ]
            heads = False
            try:
                state, raws, heads = self._read(spec, wanted, t)
            except OnlineStoreError:
                if self.on_unavailable != "empty":
                    raise
                state, raws = None, [None] * len(wanted)
            else:
                try:
                    self._check_state(spec, state, t, members)
                except OnlineStateError as exc:
                    if not skip_unavailable:
                        raise
                    skipped[spec] = str(exc)
                    continue
            pointers[spec] = None if state is None else from_micros(state.pointer)
            for i, group in enumerate(members):
                part = raws[i * len(entities) : (i + 1) * len(entities)]
                rows = self._assemble(group, state, part, t, heads)
                if self.log is not None:
                    pointer = None if state is None else state.pointer
                    self._log(self.log, request_id, group, entities, t, pointer, rows)
                if values is None:
                    values = rows
                else:
                    for row, more in zip(values, rows, strict=True):
                        row.update(more)
        rows = values or [{} for _ in entities]
        if services:
            _add_derived(rows, services, request or {})
        return [
            FeatureVector(e, v, dict(pointers), dict(skipped))
            for e, v in zip(given, rows, strict=True)
        ]

    def rank(
        self,
        user: Entity,
        items: Sequence[object] | pa.Array,
        features: Sequence[str] | str,
        at: datetime | None = None,
        *,
        item_entity: str | None = None,
        request: Mapping[str, Any] | None = None,
    ) -> pa.Table:
        """A ranking request: features of one user and each of N candidate items, one row
        per item (in order), as Arrow columns: the item keys, then every feature. Features
        keyed by the user are assembled once and repeated; by the item, per item; by user and
        item (crosses), per pair. Each spec's store is read once for all of them (``_read``);
        pointers are in the schema metadata (``robusta.pointers``, JSON). ``.to_pandas()`` or
        ``column.to_numpy()`` convert without a Python object per value.

        ``item_entity``: the items' entity, when the features have more than one entity
        beside the user's. ``request``: the derived features' inputs (one value, or one per
        item)."""
        if isinstance(features, str):
            features = [features]
        keys = items.to_pylist() if isinstance(items, (pa.Array, pa.ChunkedArray)) else list(items)
        services = self._services_of(features)
        [user] = _mapped_entities([user], services)
        groups = self._resolve_ranking(user, keys, features, item_entity)
        entity = groups[0][2]
        t = to_micros(at if at is not None else datetime.now().astimezone())
        n = len(keys)
        columns: dict[str, pa.Array] = {entity: pa.array(keys)}
        pointers: dict[str, str | None] = {}
        request_id = FeatureLog.new_request() if self.log is not None else ""
        for spec, members in _by_spec(groups).items():
            wanted = [
                (g.request.group.layout.table, text)
                for g, role, _ in members
                for text in (
                    [_key_text(user, g.request.group)]
                    if role == _USER
                    else _item_key_texts(user, keys, entity, g.request.group)
                )
            ]
            try:
                state, raws, heads = self._read(spec, wanted, t)  # a round trip, mostly
            except OnlineStoreError:
                if self.on_unavailable != "empty":
                    raise
                state, raws, heads = None, [None] * len(wanted), False  # the defaults
            else:
                self._check_state(spec, state, t, [g for g, _, _ in members])
            pointers[spec] = None if state is None else from_micros(state.pointer).isoformat()
            at_raw = 0
            for group, role, _ in members:
                count = 1 if role == _USER else n
                part = raws[at_raw : at_raw + count]
                table = self._group_table(group, state, part, t, heads)
                at_raw += count
                if role == _USER:  # one row, repeated for every item
                    table = table.take(pa.array(np.zeros(n, np.int64)))
                if self.log is not None:  # logged as a lookup of every (user, item) is
                    served = [{**user, entity: k} for k in keys]
                    pointer = None if state is None else state.pointer
                    rows = table.to_pylist(maps_as_pydicts="strict")
                    self._log(self.log, request_id, group, served, t, pointer, rows)
                for name in table.column_names:
                    columns[name] = table.column(name).combine_chunks()
        for service in services:
            inputs = {
                name: request_array(_per_entity(request[name], n, name), kind, name)
                for name, kind in service.requests.items()
                if request and name in request
            }
            columns.update(derive(service, columns, inputs, n))
        meta = {b"robusta.pointers": json.dumps(pointers).encode()}
        return pa.table(columns).replace_schema_metadata(meta)

    def _resolve_ranking(
        self,
        user: Entity,
        items: list[object],
        features: Sequence[str],
        item_entity: str | None,
    ) -> list[tuple[_Group, str, str]]:
        """Every group of the request with its role (user, item or cross) and the items'
        entity (given, or the one entity the features have beside the user's)."""
        requests = resolve_features(self.plan, features)
        others = {e for r in requests for e in _entities(r.group)} - set(user)
        if item_entity is None:
            if len(others) != 1:
                raise LookupRequestError(
                    "say which entity the items are with item_entity: the features have "
                    f"{', '.join(sorted(others)) or 'no entity'} beside the user's"
                )
            item_entity = next(iter(others))
        probe = {**user, item_entity: items[0] if items else ""}
        out = []
        for group in self._resolve([probe], features):
            entities = _entities(group.request.group)
            if entities <= set(user):
                out.append((group, _USER, item_entity))
            elif item_entity in entities and entities <= {*user, item_entity}:
                out.append((group, _ITEM, item_entity))
            else:
                raise LookupRequestError(
                    f"features of spec {group.request.spec.name} are keyed by "
                    f"{', '.join(sorted(entities))}: a ranking request gives "
                    f"{', '.join(sorted(user))} and items of {item_entity}"
                )
        return out

    def _read(
        self, spec: str, wanted: list[tuple[str, str]], t: int
    ) -> tuple[SpecState | None, list[bytes | None], bool]:
        """The spec's state and the ``(table, key)`` records wanted, in one round trip when
        the last state read foretells it: each key's head values (written by the upload as
        of its pointer) when they serve ``t`` (``t`` at or after the pointer, which no stream
        has moved since), its tiles otherwise. Returns (state, records, heads read)."""
        last = self._states.get(spec)
        guess = self.heads and (last is None or (last.heads_usable and t >= last.pointer))
        asked = [(heads_table(table), key) for table, key in wanted] if guess else wanted
        state, raws = self.store.read(spec, asked)
        self._states[spec] = state
        heads = self.heads and state is not None and state.heads_usable and t >= state.pointer
        if guess and not heads:  # the state moved on (a stream) or ``t`` is before it
            state, raws = self.store.read(spec, wanted)
            self._states[spec] = state
        return state, raws, guess and heads

    def _assemble(
        self,
        group: _Group,
        state: SpecState | None,
        raws: list[bytes | None],
        t: int,
        heads: bool = False,
    ) -> list[dict[str, Any]]:
        """One fresh mapping of feature name to value per record (``heads``: the records
        are values at the pointer, as in the pre-assembled mode)."""
        n = len(raws)
        if _values_read(state, heads):
            return _value_rows(group, raws, self._defaults(group))
        if n <= PER_KEY_MAX:
            end = _window_end(t, state, group)
            return [_key_values(group, raw, end) for raw in raws]
        records = [group.empty if r is None else decode(r, group.tiles_schema) for r in raws]
        table = _assembled_table(group, state, records, t)
        names = table.column_names
        columns = table.to_pydict(maps_as_pydicts="strict").values()
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]

    def _group_table(
        self,
        group: _Group,
        state: SpecState | None,
        raws: list[bytes | None],
        t: int,
        heads: bool = False,
    ) -> pa.Table:
        """The group's outputs for every record as columns (the vectorized assembler, or
        pre-assembled or head values with a key's defaults where it has none)."""
        if _values_read(state, heads):
            return self._value_table(group, raws)
        records = [group.empty if r is None else decode(r, group.tiles_schema) for r in raws]
        return _assembled_table(group, state, records, t)

    def _value_table(self, group: _Group, raws: list[bytes | None]) -> pa.Table:
        """The requested values of every record of values as columns, a key's defaults
        where it has none: the records present and the defaults' record (built once)
        decoded in one go, then one ``take``."""
        names = [o.name for o in group.request.outputs]
        present = [r for r in raws if r is not None]
        if len(present) == len(raws):
            return decode_values(present, group.values_schema, names)
        if "fill" not in group.memo:  # the defaults as a value record
            row = pa.Table.from_pylist([self._defaults(group)], schema=group.values_schema)
            group.memo["fill"] = encode_values(row)[0]
        rows = decode_values([*present, group.memo["fill"]], group.values_schema, names)
        found = np.fromiter((r is not None for r in raws), np.bool_, len(raws))
        index = np.full(len(raws), len(present), np.int64)
        index[found] = np.arange(len(present))
        return rows.take(pa.array(index))

    @staticmethod
    def _log(
        log: FeatureLog,
        request: str,
        group: _Group,
        entities: Sequence[Entity],
        t: int,
        pointer: int | None,
        rows: list[dict[str, Any]],
    ) -> None:
        layout = group.request.group.layout
        keys = [{k.entity: _key_value(e, k) for k in layout.keys} for e in entities]
        names = [o.name for o in group.request.outputs]
        log.record(request, group.request.spec, names, keys, t, pointer, rows)

    def _defaults(self, group: _Group) -> dict[str, Any]:
        """Values of a key without events (count 0, others null, maps empty): assembled
        once per group (callers copy them)."""
        if "defaults" not in group.memo:
            group.memo["defaults"] = self._assemble(group, None, [None], 0)[0]
        values: dict[str, Any] = group.memo["defaults"]
        return values

    def _check_state(
        self, spec: str, state: SpecState | None, t: int, members: list[_Group]
    ) -> None:
        if state is None:
            raise OnlineStateError(
                f"nothing of spec {spec} is in the online store: run `robusta upload --spec {spec}`"
            )
        plan = members[0].request.spec
        if state.plan_hash != plan.hash:
            raise OnlineStateError(
                f"the online store holds spec {spec} version {state.plan_hash}, the spec is now "
                f"version {plan.hash}: run `robusta materialize --spec {spec}` and "
                f"`robusta upload --spec {spec}`"
            )
        if state.mode == "preassembled":
            if t < state.pointer:
                raise LookupRequestError(
                    f"spec {spec} is served pre-assembled as of {_iso(state.pointer)}; earlier "
                    "times need `robusta backfill` (or the assemble serving mode)"
                )
            return
        gmin = members[0].request.group.layout.finest.micros
        end = min(floor_to(t, gmin), state.pointer)
        longest = max(g.longest for g in members)
        if end - longest < state.horizon:
            raise LookupRequestError(
                f"the online store holds spec {spec} from {_iso(state.horizon)}: lookups need "
                f"at >= {_iso(state.horizon + longest)}; use `robusta backfill` for earlier times"
            )

    # ---- request resolution ---------------------------------------------------------------
    def _services_of(self, features: Sequence[str] | None) -> list[ServicePlan]:
        if not features or not self.plan.services:
            return []
        key = tuple(features)
        found = self._services.get(key)
        if found is None:
            found = self._services[key] = services_in(self.plan, features)
        return found

    def _resolve(self, entities: Sequence[Entity], features: Sequence[str] | None) -> list[_Group]:
        if not entities:
            return []
        given = set(entities[0])
        cache_key = tuple(features) if features is not None else ("\0all", *sorted(given))
        cached = self._groups.get(cache_key)
        if cached is not None:
            for group in cached:  # the same features, maybe asked with fewer entities
                missing = _entities(group.request.group) - given
                if missing:
                    raise MissingEntityError(group.request.spec.name, sorted(missing))
            return cached
        requests = resolve_features(self.plan, features)
        if features is None:
            requests = [r for r in requests if _entities(r.group) <= given]
            if not requests:
                raise LookupRequestError(
                    f"no feature is keyed by {', '.join(sorted(given)) or 'nothing'}; "
                    "entities: "
                    + ", ".join(
                        sorted({e for s in self.plan.specs for g in s.groups for e in _entities(g)})
                    )
                )
        groups = []
        for request in requests:
            missing = _entities(request.group) - given
            if missing:
                raise MissingEntityError(request.spec.name, sorted(missing))
            tiles_schema = tile_record_schema(request.group)
            groups.append(
                _Group(
                    request,
                    GroupAssembler(request.group, request.outputs),
                    KeyAssembler(request.group, request.outputs),
                    tiles_schema,
                    pa.RecordBatch.from_pylist([], schema=tiles_schema),
                    value_record_schema([o for f in request.group.features for o in f.outputs]),
                    max(
                        (o.window.duration.micros for o in request.outputs if o.window.duration),
                        default=0,
                    ),
                    ValueCache(self.cache_size),
                )
            )
        self._groups[cache_key] = groups
        return groups


_USER, _ITEM = "user", "item"  # a ranking group's role: once, or per item (crosses too)


def _by_spec(
    groups: list[tuple[_Group, str, str]],
) -> dict[str, list[tuple[_Group, str, str]]]:
    out: dict[str, list[tuple[_Group, str, str]]] = {}
    for member in groups:
        out.setdefault(member[0].request.spec.name, []).append(member)
    return out


def _assembled_table(
    group: _Group, state: SpecState | None, records: list[pa.RecordBatch], t: int
) -> pa.Table:
    """The vectorized assembler over tile records (record ``i`` is row ``i``)."""
    n = len(records)
    assembler = group.assembler
    index = TileSet.from_records(group.request.group, records, assembler.sizes)
    rows = Rows(
        keys=(),
        ts=np.full(n, t, np.int64),
        ts_valid=np.ones(n, np.bool_),
        pointer=None if state is None else np.full(n, state.pointer, np.int64),
        pointer_valid=None if state is None else np.ones(n, np.bool_),
    )
    return assembler.assemble(index, rows, codes=np.arange(n, dtype=np.int64))


def _mapped_entities(entities: Sequence[Entity], services: Sequence[ServicePlan]) -> list[Entity]:
    """Entities as the specs name their keys: a service maps a spec entity to the name its
    requests use (``entities: {CUSTOMER_ID: SHOPPER}``)."""
    mapping: dict[str, str] = {}
    for service in services:
        for entity, name in service.entities.items():
            if mapping.setdefault(entity, name) != name:
                raise LookupRequestError(
                    f"services map entity {entity} to both {mapping[entity]} and {name}; "
                    "look them up in separate calls"
                )
    if not mapping:
        return list(entities)
    return [
        {**e, **{entity: e[name] for entity, name in mapping.items() if name in e}}
        for e in entities
    ]


def _add_derived(
    rows: list[dict[str, Any]], services: Sequence[ServicePlan], request: Mapping[str, Any]
) -> None:
    """Each service's derived values added to ``rows``: the features read become Arrow
    columns of their served types and go through the one evaluator the training frames use
    (:func:`robusta.plan.services.derive`)."""
    n = len(rows)
    for service in services:
        if not service.derived:
            continue
        types = {o.name: o.type for o in service.outputs}
        read = {f for d in service.derived for f in d.expression.features if f in types}
        columns = {f: pa.array([row.get(f) for row in rows], types[f]) for f in read}
        inputs = {
            name: request_array(_per_entity(request[name], n, name), kind, name)
            for name, kind in service.requests.items()
            if name in request
        }
        for name, array in derive(service, columns, inputs, n).items():
            for row, value in zip(rows, array.to_pylist(), strict=True):
                row[name] = value


def _per_entity(value: Any, n: int, name: str) -> list[Any]:
    """One request input value per entity: a list of ``n`` values, or one for all."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise LookupRequestError(
                f"request input {name} has {len(value)} values for {n} entities: give one "
                "value for all, or one per entity"
            )
        return list(value)
    return [value] * n


def _values_read(state: SpecState | None, heads: bool) -> bool:
    """Whether the records read are values (head records, or a pre-assembled spec's)."""
    return heads or (state is not None and state.mode == "preassembled")


def _key_values(group: _Group, raw: bytes | None, end: int) -> dict[str, Any]:
    """One key's values at ``end`` from its record: from the cache when the same record was
    assembled at the same end before, else decoded and assembled (and kept)."""
    key = ValueCache.key(raw, end)
    cached = group.cache.get(key)
    if cached is not None:
        return cached
    record = group.empty if raw is None else decode(raw, group.tiles_schema)
    values = group.key_assembler.assemble(record, end)
    group.cache.put(key, values)
    return values


def _window_end(t: int, state: SpecState | None, group: _Group) -> int:
    """The brief's ``end = min(floor(t, gmin), p)`` (the pointer floored like in backfills)."""
    gmin = group.key_assembler.sizes[0]
    end = t - t % gmin
    if state is None:
        return end
    return min(end, state.pointer - state.pointer % gmin)


def _entities(group: TileGroup) -> set[str]:
    return {k.entity for k in group.layout.keys}


def _key_text(entity: Entity, group: TileGroup) -> str:
    parts = [_key_value(entity, k) for k in group.layout.keys]
    if len(parts) == 1 and isinstance(parts[0], str):
        return parts[0]  # what record_key makes of one text
    return record_key(parts)


def _item_key_texts(user: Entity, items: list[object], entity: str, group: TileGroup) -> list[str]:
    """:func:`_key_text` of ``{**user, entity: item}`` for every item: the user's parts
    are made once, the items' without a mapping per item."""
    parts: list[list[str] | str] = [
        _part_texts(items, key) if key.entity == entity else str(_key_value(user, key))
        for key in group.layout.keys
    ]
    if len(parts) == 1:
        return [parts[0]] * len(items) if isinstance(parts[0], str) else parts[0]
    framed = [
        f"{len(part)}:{part}|" if isinstance(part, str) else [f"{len(t)}:{t}|" for t in part]
        for part in parts
    ]
    per_item = [[f] * len(items) if isinstance(f, str) else f for f in framed]
    return ["".join(texts) for texts in zip(*per_item, strict=True)]


def _part_texts(values: list[object], key: KeyColumn) -> list[str]:
    """The text :func:`_key_value` makes of each of ``values`` as ``key``'s part."""
    if key.type in (DataType.BIGINT, DataType.INT):
        return [str(_key_value({key.entity: v}, key)) for v in values]
    return [v if isinstance(v, str) else str(v) for v in values]


def _key_value(entity: Entity, key: KeyColumn) -> object:
    if key.entity not in entity:
        raise LookupRequestError(f"an entity lacks {key.entity}: every entity needs it")
    value = entity[key.entity]
    if key.type in (DataType.BIGINT, DataType.INT):
        try:
            return int(str(value))
        except ValueError:
            raise LookupRequestError(
                f'{key.entity} keys are integers; "{value}" is not one'
            ) from None
    return value if isinstance(value, str) else str(value)


def _value_rows(
    group: _Group, raws: list[bytes | None], defaults: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Per record of values (None: the key has none), the requested values as fresh
    mappings: the records present decoded at once and converted a column at a time."""
    names = [o.name for o in group.request.outputs]
    present = [r for r in raws if r is not None]
    columns: list[list[Any]] = []
    if present:
        columns = list(decode_value_columns(present, group.values_schema, names).values())
    found = zip(*columns, strict=True)
    return [
        {n: fresh(defaults[n]) for n in names}
        if raw is None
        else dict(zip(names, next(found), strict=True))
        for raw in raws
    ]


def _iso(micros: int) -> str:
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%SZ")
