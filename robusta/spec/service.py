"""Feature service files (feature_defs/*.yaml whose top-level key is ``service``).

    service: shopper_ranking
    description: what the ranking model reads
    features: [shopper_revenue_7d, shopper_lines_30d, item_popularity]
    entities: {CUSTOMER_ID: SHOPPER}      # optional: a spec entity -> its name in requests
    request: {discount: double}           # optional: request-time inputs and their types
    derived:                              # optional: Spark SQL over the above
      revenue_per_line: shopper_revenue_7d / NULLIF(shopper_lines_30d, 0)

Here the file is checked as YAML (keys, names, types), located; the feature names and
derived expressions are resolved and type-checked against the compiled plan
(:mod:`robusta.plan.services`), located through the marks kept here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from robusta.errors import Location, Problem
from robusta.spec.checks import Checker
from robusta.spec.suggest import did_you_mean, one_of
from robusta.spec.yamldoc import TextPlace, YamlDoc

SERVICE_KEY = "service"
SERVICE_REQUIRED = (SERVICE_KEY, "features")
SERVICE_OPTIONAL = ("description", "owner", "entities", "request", "derived")
REQUEST_TYPES = ("double", "bigint", "string", "boolean")
_IDENTIFIER_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass(frozen=True, slots=True)
class DerivedDef:
    name: str
    expression: str
    place: TextPlace  # locates positions inside the expression
    location: Location  # of the name


@dataclass(frozen=True, slots=True)
class ServiceDef:
    """A named set of features for one model, plus derived features."""

    name: str
    features: tuple[str, ...]
    feature_locations: tuple[Location, ...]
    entities: Mapping[str, str]  # spec entity -> the name requests and rows give it
    requests: Mapping[str, str]  # request input -> type (REQUEST_TYPES)
    derived: tuple[DerivedDef, ...]
    file: Path
    location: Location
    description: str = ""
    owner: str = ""
    locations: Mapping[str, Location] = field(default_factory=dict)  # of entities/request keys


def is_service(doc: YamlDoc) -> bool:
    return isinstance(doc.data, dict) and SERVICE_KEY in doc.data


def load_service(doc: YamlDoc, path: Path) -> tuple[ServiceDef | None, list[Problem]]:
    """Check a service file's YAML; the plan resolves what it names."""
    check = Checker(doc)
    body = check.section((), SERVICE_REQUIRED, SERVICE_OPTIONAL, what="the service")
    if body is None:
        return None, check.problems
    name = _identifier(check, (SERVICE_KEY,), "service name") or path.stem
    features, places = _feature_names(check)
    entities = _names(check, "entities", "entity")
    requests = _request_inputs(check)
    derived = _derived(check, doc)
    locations = {
        f"{part}.{key}": check.where((part, key), key=True)
        for part in ("entities", "request")
        for key in (body.get(part) or {})
        if isinstance(body.get(part), dict)
    }
    service = ServiceDef(
        name=name,
        features=features,
        feature_locations=places,
        entities=entities,
        requests=requests,
        derived=derived,
        file=path.resolve(),
        location=check.where((SERVICE_KEY,)),
        description=check.text(("description",)) or "",
        owner=check.text(("owner",)) or "",
        locations=locations,
    )
    return service, check.problems


def _identifier(check: Checker, path: tuple[str | int, ...], role: str) -> str | None:
    value = check.text(path)
    if value is None:
        return None
    if not _is_name(value):
        check.add(path, f'{role} "{value}" must be a name: letters, digits and _')
        return None
    return value


def _is_name(text: str) -> bool:
    return bool(text) and set(text) <= _IDENTIFIER_CHARS and not text[0].isdigit()


def _feature_names(check: Checker) -> tuple[tuple[str, ...], tuple[Location, ...]]:
    items = check.sequence(("features",))
    if items is None:
        return (), ()
    if not items:
        check.add(("features",), "a service lists at least one feature, base feature or spec")
    names, places = [], []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            check.add(("features", i), "each feature is a name (an output, base feature or spec)")
            continue
        names.append(item.strip())
        places.append(check.where(("features", i)))
    return tuple(names), tuple(places)


def _names(check: Checker, part: str, role: str) -> dict[str, str]:
    """A mapping of names to names (``entities``)."""
    if check.get((part,)) is None:
        return {}
    mapping = check.mapping((part,))
    out: dict[str, str] = {}
    for key in mapping or {}:
        value = _identifier(check, (part, key), f"the name of {role} {key}")
        if value is not None:
            out[str(key)] = value
    return out


def _request_inputs(check: Checker) -> dict[str, str]:
    if check.get(("request",)) is None:
        return {}
    mapping = check.mapping(("request",))
    out: dict[str, str] = {}
    for key, kind in (mapping or {}).items():
        text = str(kind).lower() if isinstance(kind, str) else ""
        if text not in REQUEST_TYPES:
            check.add(
                ("request", key),
                f'request input {key} has type "{kind}"{did_you_mean(text, REQUEST_TYPES)}; '
                f"types: {one_of(REQUEST_TYPES)}",
            )
            continue
        if not _is_name(str(key)):
            check.add(("request", key), f'request input "{key}" must be a name', key=True)
            continue
        out[str(key)] = text
    return out


def _derived(check: Checker, doc: YamlDoc) -> tuple[DerivedDef, ...]:
    if check.get(("derived",)) is None:
        return ()
    mapping = check.mapping(("derived",))
    out = []
    for key, value in (mapping or {}).items():
        if not isinstance(value, str) or not value.strip():
            check.add(("derived", key), f"derived feature {key} needs a Spark SQL expression")
            continue
        if not _is_name(str(key)):
            check.add(("derived", key), f'derived feature "{key}" must be a name', key=True)
            continue
        place = doc.place(("derived", key))
        out.append(DerivedDef(str(key), value, place, check.where(("derived", key), key=True)))
    return tuple(out)
