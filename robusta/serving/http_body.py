"""The feature server's request and response bodies: parsing with one clear message per
mistake, the JSON and Arrow answers, and the OpenAPI document that describes them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from robusta.errors import RobustaError
from robusta.plan.model import Plan
from robusta.serving.client import FeatureVector
from robusta.spec.suggest import did_you_mean

MAX_ENTITIES = 10_000
MAX_BODY_BYTES = 8 << 20
ARROW_STREAM = "application/vnd.apache.arrow.stream"
POINTERS_METADATA = b"robusta.pointers"
_KEYS = ("entities", "features", "at", "request")
_EARLIEST, _LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)
Scalar = str | int | float | bool | None


class BadRequestError(RobustaError, ValueError):
    """A request body the server cannot answer as written (HTTP 400)."""


@dataclass(frozen=True)
class LookupBody:
    entities: list[dict[str, object]]
    features: list[str] | None
    at: datetime | None
    request: dict[str, Any]


def parse_body(data: object) -> LookupBody:
    """A decoded JSON body checked: what is wrong is said, naming the key."""
    if not isinstance(data, dict):
        raise BadRequestError('the body must be a JSON object: {"entities": [...], ...}')
    for key in data:
        if key not in _KEYS:
            hint = did_you_mean(str(key), _KEYS) or f" (keys: {', '.join(_KEYS)})"
            raise BadRequestError(f'unknown key "{key}"{hint}')
    return LookupBody(
        _entities(data.get("entities")),
        _features(data.get("features")),
        _time(data.get("at")),
        _request(data.get("request")),
    )


@dataclass(frozen=True)
class RankBody:
    user: dict[str, object]
    items: list[object]
    features: list[str]
    item_entity: str | None
    at: datetime | None
    request: dict[str, Any]


_RANK_KEYS = ("user", "items", "features", "item_entity", "at", "request")


def parse_rank_body(data: object) -> RankBody:
    """A ranking request's body checked (see :func:`parse_body`)."""
    if not isinstance(data, dict):
        raise BadRequestError('the body must be a JSON object: {"user": {...}, "items": [...]}')
    for key in data:
        if key not in _RANK_KEYS:
            hint = did_you_mean(str(key), _RANK_KEYS) or f" (keys: {', '.join(_RANK_KEYS)})"
            raise BadRequestError(f'unknown key "{key}"{hint}')
    [user] = _entities([data.get("user")]) if isinstance(data.get("user"), dict) else [None]
    if user is None:
        raise BadRequestError('"user" must be an object of entity name to key')
    items = data.get("items")
    if not isinstance(items, list) or len(items) > MAX_ENTITIES:
        raise BadRequestError(f'"items" must be a list of at most {MAX_ENTITIES} item keys')
    if any(isinstance(i, bool) or not isinstance(i, (str, int)) for i in items):
        raise BadRequestError('"items" holds string or integer keys')
    features = _features(data.get("features"))
    if not features:
        raise BadRequestError('"features" must name the features to rank with')
    entity = data.get("item_entity")
    if entity is not None and not isinstance(entity, str):
        raise BadRequestError('"item_entity" must be an entity name')
    return RankBody(
        user, list(items), features, entity, _time(data.get("at")), _request(data.get("request"))
    )


def _entities(value: object) -> list[dict[str, object]]:
    if not isinstance(value, list) or not value:
        raise BadRequestError('"entities" must be a non-empty list, e.g. [{"USER_ID": "17850"}]')
    if len(value) > MAX_ENTITIES:
        raise BadRequestError(f'"entities" holds {len(value)} entities; at most {MAX_ENTITIES}')
    out = []
    for i, entity in enumerate(value):
        if not isinstance(entity, dict) or not entity:
            raise BadRequestError(f"entities[{i}] must be an object of entity name to key")
        for name, key in entity.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise BadRequestError(
                    f"entities[{i}].{name} must be a string or an integer key, not {_kind(key)}"
                )
        out.append(dict(entity))
    return out


def _features(value: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadRequestError('"features" must be a list of feature, spec or service names')
    return list(value) or None


def _time(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequestError('"at" must be an ISO time, e.g. "2011-12-09T12:00:00Z"')
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequestError(f'"at" is not an ISO time: "{value}"') from None
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    if not _EARLIEST <= at < _LATEST:
        raise BadRequestError(f'"at" must be between 1970 and 2200, not {value}')
    return at


def _request(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequestError('"request" must be an object of request input to value')
    for name, item in value.items():
        values = item if isinstance(item, list) else [item]
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
            raise BadRequestError(
                f"request.{name} must be a value, or a list of one value per entity"
            )
    return dict(value)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", float: "a number"}.get(type(value), "null")


# ---- answers ---------------------------------------------------------------------------------
def json_answer(vectors: Sequence[FeatureVector]) -> dict[str, Any]:
    return {
        "results": [
            {
                "values": v.values,
                "pointers": {s: p.isoformat() if p else None for s, p in v.pointers.items()},
            }
            for v in vectors
        ]
    }


def columns_answer(table: pa.Table) -> dict[str, Any]:
    """A ranking answer as JSON: columns of values, and the specs' pointers."""
    import orjson

    pointers = orjson.loads((table.schema.metadata or {}).get(POINTERS_METADATA, b"{}"))
    return {"columns": table.to_pydict(maps_as_pydicts="strict"), "pointers": pointers}


def table_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def feature_types(plan: Plan) -> dict[str, pa.DataType]:
    """The Arrow type of every name a result may hold: outputs and derived features."""
    types = {o.name: o.type for s in plan.specs for o in s.outputs}
    types.update((d.name, d.type) for s in plan.services for d in s.derived)
    return types


def arrow_answer(vectors: Sequence[FeatureVector], types: Mapping[str, pa.DataType]) -> bytes:
    """One row per entity, one typed column per feature; the specs' pointers (one per spec
    for a whole request) in the schema metadata as JSON."""
    import orjson

    names = list(vectors[0].values) if vectors else []
    columns = [pa.array([v.values[n] for v in vectors], types.get(n)) for n in names]
    pointers = vectors[0].pointers if vectors else {}
    meta = {
        POINTERS_METADATA: orjson.dumps(
            {s: p.isoformat() if p else None for s, p in pointers.items()}
        )
    }
    return table_stream(pa.Table.from_arrays(columns, names=names).replace_schema_metadata(meta))


# ---- OpenAPI -----------------------------------------------------------------------------
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_POINTERS = {"type": "object", "additionalProperties": {"type": ["string", "null"]}}
_SCALAR = {"type": ["string", "number", "integer", "boolean", "null"]}
_ENTITY = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": {"type": ["string", "integer"]},
}
_AT = {"type": ["string", "null"], "format": "date-time"}
_REQUEST = {
    "type": ["object", "null"],
    "additionalProperties": {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}]},
}


def openapi() -> dict[str, Any]:
    """The server's OpenAPI 3.1 document (served at /openapi.json)."""
    errors = {
        code: {
            "description": why,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code, why in (
            ("400", "the request cannot be answered as written (the message says why)"),
            ("413", "the body is too large"),
            ("415", "the body is not JSON"),
            ("503", "the online store is unavailable or did not answer in time"),
        )
    }
    lookup = {
        "type": "object",
        "additionalProperties": False,
        "required": ["entities"],
        "properties": {
            "entities": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_ENTITIES,
                "items": _ENTITY,
            },
            "features": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}},
            "at": _AT,
            "request": _REQUEST,
        },
    }
    rank = {
        "type": "object",
        "additionalProperties": False,
        "required": ["user", "items", "features"],
        "properties": {
            "user": _ENTITY,
            "items": {
                "type": "array",
                "maxItems": MAX_ENTITIES,
                "items": {"type": ["string", "integer"]},
            },
            "features": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "minLength": 1},
            },
            "item_entity": {"type": ["string", "null"]},
            "at": _AT,
            "request": _REQUEST,
        },
    }
    result = {
        "type": "object",
        "required": ["values", "pointers"],
        "properties": {
            "values": {"type": "object"},
            "pointers": _POINTERS,
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Robusta feature server", "version": "1"},
        "paths": {
            "/features": {
                "post": {
                    "summary": "Feature values of entities, as of now or a time",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/LookupRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "one result per entity, in request order",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/LookupResponse"}
                                },
                                ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}},
                            },
                        },
                        **errors,
                    },
                }
            },
            "/rank": {
                "post": {
                    "summary": "A ranking request: one user and candidate items, as columns",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RankRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "one row per item: the item keys, then every feature",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/RankResponse"}
                                },
                                ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}},
                            },
                        },
                        **errors,
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Whether the online store answers, and each spec's pointer",
                    "responses": {
                        "200": {
                            "description": "healthy",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "503": errors["503"],
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "LookupRequest": lookup,
                "LookupResponse": {
                    "type": "object",
                    "required": ["results"],
                    "properties": {"results": {"type": "array", "items": result}},
                },
                "RankRequest": rank,
                "RankResponse": {
                    "type": "object",
                    "required": ["columns", "pointers"],
                    "properties": {
                        "columns": {"type": "object", "additionalProperties": {"type": "array"}},
                        "pointers": _POINTERS,
                    },
                },
                "Error": _ERROR,
            }
        },
    }
