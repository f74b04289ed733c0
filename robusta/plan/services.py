"""Feature services compiled against the plan: the outputs they name, their derived
features (type-checked, :mod:`robusta.plan.derived`) and a version.

A service's version is a hash of what it resolves to: each output's name, window and base
feature hash (what decides its values), the derived expressions in canonical SQL with their
types, the entity mapping and the request inputs. Editing a spec in a way that changes a
served value changes the version; reformatting an expression does not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from robusta.errors import Problem
from robusta.plan.derived import (
    REQUEST,
    REQUEST_TYPES,
    DerivedExpressionError,
    DerivedInputError,
    cast_request_column,
    compile_expression,
)
from robusta.plan.model import DerivedFeature, OutputFeature, ServicePlan, SpecPlan
from robusta.spec.service import ServiceDef
from robusta.spec.suggest import did_you_mean


def feature_index(specs: Iterable[SpecPlan]) -> dict[str, list[OutputFeature]]:
    """Outputs by every name that selects them: output, base feature and spec names."""
    known: dict[str, list[OutputFeature]] = {}
    for spec in specs:
        known.setdefault(spec.name, []).extend(spec.outputs)
        for feature in spec.features:
            known.setdefault(feature.name, []).extend(feature.outputs)
            for output in feature.outputs:
                known.setdefault(output.name, []).append(output)
    return known


def compile_services(
    specs: Sequence[SpecPlan], services: Sequence[ServiceDef]
) -> tuple[tuple[ServicePlan, ...], list[Problem]]:
    """Resolve and type-check every service; every problem located in its file."""
    problems: list[Problem] = []
    known = feature_index(specs)
    taken = {name.lower(): f"{what}" for name, what in _names_taken(specs).items()}
    plans = []
    derived_owner: dict[str, str] = {}
    for service in services:
        clash = taken.get(service.name.lower())
        if clash is not None:
            problems.append(
                Problem(service.location, f'service name "{service.name}" is already {clash}')
            )
            continue
        taken[service.name.lower()] = f"the service in {service.location.file}"
        plan = _compile(service, specs, known, taken, derived_owner, problems)
        if plan is not None:
            plans.append(plan)
    return tuple(plans), problems


def _names_taken(specs: Sequence[SpecPlan]) -> dict[str, str]:
    out = {}
    for spec in specs:
        out[spec.name] = f"a spec ({spec.spec.file.name})"
        for feature in spec.features:
            out[feature.name] = f"a base feature of spec {spec.name}"
            for output in feature.outputs:
                out[output.name] = f"a feature of spec {spec.name}"
    return out


def _compile(
    service: ServiceDef,
    specs: Sequence[SpecPlan],
    known: Mapping[str, list[OutputFeature]],
    taken: dict[str, str],
    derived_owner: dict[str, str],
    problems: list[Problem],
) -> ServicePlan | None:
    before = len(problems)
    outputs: dict[str, OutputFeature] = {}
    for name, where in zip(service.features, service.feature_locations, strict=True):
        chosen = known.get(name)
        if chosen is None:
            problems.append(
                Problem(
                    where,
                    f'no feature, base feature or spec named "{name}"{did_you_mean(name, known)}'
                    "; `robusta plan` lists them",
                )
            )
            continue
        outputs.update((o.name, o) for o in chosen)
    _check_entities(service, specs, outputs, problems)
    requests = {name: REQUEST_TYPES[kind] for name, kind in service.requests.items()}
    types: dict[str, pa.DataType] = {o.name: o.type for o in outputs.values()}
    derived = []
    for item in service.derived:
        lowered = item.name.lower()
        if lowered in taken or lowered in {t.lower() for t in types}:
            what = taken.get(lowered, "a feature of this service")
            problems.append(
                Problem(item.location, f'derived feature "{item.name}" is already {what}')
            )
            continue
        owner = derived_owner.setdefault(lowered, service.name)
        if owner != service.name:
            problems.append(
                Problem(
                    item.location,
                    f'derived feature "{item.name}" is already defined by service {owner}; '
                    "derived names are unique in a project (a request may name both services)",
                )
            )
            continue
        try:
            expression = compile_expression(item.expression, types, requests)
        except DerivedExpressionError as exc:
            problems.append(Problem(item.place.at(exc.line, exc.column), exc.message))
            continue
        derived.append(DerivedFeature(item.name, expression))
        types[item.name] = expression.type  # later expressions may read it
    if len(problems) > before:
        return None
    resolved = tuple(outputs.values())
    return ServicePlan(
        service.name,
        resolved,
        tuple(derived),
        dict(service.entities),
        requests,
        _version(service, resolved, derived, specs),
        service,
    )


def _check_entities(
    service: ServiceDef,
    specs: Sequence[SpecPlan],
    outputs: Mapping[str, OutputFeature],
    problems: list[Problem],
) -> None:
    """Mapped entities must key some of the service's features."""
    keyed = {
        key.entity
        for spec in specs
        for group in spec.groups
        for feature in group.features
        if any(o.name in outputs for o in feature.outputs)
        for key in group.layout.keys
    }
    for entity in service.entities:
        if entity not in keyed:
            where = service.locations.get(f"entities.{entity}", service.location)
            problems.append(
                Problem(
                    where,
                    f'entity "{entity}" keys none of the service\'s features'
                    f"{did_you_mean(entity, keyed)}; their entities: {', '.join(sorted(keyed))}",
                )
            )


def _version(
    service: ServiceDef,
    outputs: Sequence[OutputFeature],
    derived: Sequence[DerivedFeature],
    specs: Sequence[SpecPlan],
) -> str:
    base_hash = {f.name: f.hash for s in specs for f in s.features}
    identity: Any = {
        "outputs": [[o.name, o.window.name, base_hash.get(o.base, "")] for o in outputs],
        "derived": [[d.name, d.expression.normalized, str(d.type)] for d in derived],
        "entities": sorted(service.entities.items()),
        "request": sorted(service.requests.items()),
    }
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def derive(
    service: ServicePlan,
    columns: Mapping[str, pa.Array],
    requests: Mapping[str, pa.Array],
    rows: int,
) -> dict[str, pa.Array]:
    """The service's derived columns over ``rows`` rows: ``columns`` holds its features,
    ``requests`` its request inputs (already of their declared types). The one evaluation
    of derived features: training frames (both engines) and lookups call it."""
    inputs: dict[str, pa.Array] = dict(columns)
    for name in service.requests:
        if name in requests:
            inputs[f"{REQUEST}.{name}"] = requests[name]
    out: dict[str, pa.Array] = {}
    for item in service.derived:
        missing = [n for n in item.expression.requests if f"{REQUEST}.{n}" not in inputs]
        if missing:
            raise DerivedInputError(
                f"derived feature {item.name} of service {service.name} needs request input "
                f"{', '.join(missing)}: give it with the request (online) or as a column of "
                "the training rows"
            )
        value = item.expression.evaluate(inputs, rows)
        inputs[item.name] = out[item.name] = value
    return out


def derived_columns(
    data: pa.Table | pa.RecordBatch, services: Sequence[ServicePlan]
) -> list[tuple[str, pa.Array]]:
    """Every service's derived columns over training rows that hold its features and, as
    columns named like them, its request inputs (cast to their declared types)."""
    present = set(data.schema.names)

    def column(name: str) -> pa.Array:
        values = data.column(name)
        return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values

    out: list[tuple[str, pa.Array]] = []
    for service in services:
        columns = {o.name: column(o.name) for o in service.outputs}
        requests = {
            n: cast_request_column(column(n), kind, n)
            for n, kind in service.requests.items()
            if n in present
        }
        out.extend(derive(service, columns, requests, data.num_rows).items())
    return out


def service_versions(services: Sequence[ServicePlan]) -> dict[str, str]:
    return {s.name: s.version for s in services}
