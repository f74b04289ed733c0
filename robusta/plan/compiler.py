"""Compile validated specs into a plan: operators, IR columns, tile layouts, versions."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlglot

from robusta.errors import Location, OperatorError, Problem, UnknownOperatorError
from robusta.ops import Operator, ParamError, make_operator
from robusta.ops.bucketed import Bucketed
from robusta.plan.model import (
    BaseFeature,
    BucketBy,
    KeyColumn,
    OutputFeature,
    Plan,
    SpecPlan,
    TileGroup,
    TileLayout,
)
from robusta.plan.services import compile_services
from robusta.spec.config import display_path
from robusta.spec.model import FeatureDef, FeatureSpec, ProjectConfig
from robusta.spec.service import ServiceDef
from robusta.spec.types import DataType

TILE_COLUMNS = ("key_bucket", "granularity", "bucket_start", "events", "spec_version")


def compile_plan(
    config: ProjectConfig, specs: Iterable[FeatureSpec], services: Sequence[ServiceDef] = ()
) -> tuple[Plan, list[Problem]]:
    """Compile every spec, then every service against them; problems (unknown ops, bad
    params, wrong input types, unknown names in services) are located. A spec's tables have
    its own ``key_buckets``, else the project's ``offline.key_buckets``."""
    problems: list[Problem] = []
    plans = [
        _compile_spec(config, spec, spec.key_buckets or config.offline.key_buckets, problems)
        for spec in specs
    ]
    problems.extend(_table_clashes(plans))
    compiled, service_problems = compile_services(plans, services)
    return Plan(tuple(plans), compiled), [*problems, *service_problems]


def _table_clashes(plans: list[SpecPlan]) -> list[Problem]:
    seen: dict[str, str] = {}
    problems = []
    for plan in plans:
        for group in plan.groups:
            owner = seen.setdefault(group.layout.table, plan.name)
            if owner != plan.name and plan.spec.location is not None:
                problems.append(
                    Problem(
                        plan.spec.location,
                        (
                            f'tile table "{group.layout.table}" of spec "{plan.name}" is also '
                            f'the table of spec "{owner}"; rename one of the specs'
                        ),
                    )
                )
    return problems


def _reserved(feature: FeatureDef) -> str | None:
    """A message when a feature's name would collide with a column of its tile table."""
    taken = {c.lower() for c in (*TILE_COLUMNS, *feature.group_by_selectors)}
    if feature.name.lower() in taken:
        return (
            f'feature name "{feature.name}" is also a column of its tile table '
            f"({', '.join(sorted(taken))}); rename the feature"
        )
    return None


GroupKey = tuple[tuple[tuple[str, str], ...], BucketBy | None]


def _compile_spec(
    config: ProjectConfig, spec: FeatureSpec, key_buckets: int, problems: list[Problem]
) -> SpecPlan:
    by_keys: dict[GroupKey, list[BaseFeature]] = {}
    primaries: dict[tuple[tuple[str, str], ...], str] = {}
    for feature in spec.features:
        if not feature.op:
            continue  # the spec checks already said the op is missing or not text
        compiled = _compile_feature(spec, feature, problems)
        if compiled is None:
            continue
        keys = tuple(sorted(feature.group_by_selectors.items()))
        bucket = _bucket(feature)
        by_keys.setdefault((keys, bucket), []).append(compiled)
        if feature.primary_selector not in feature.group_by_selectors:
            continue  # already reported by the spec checks
        first = primaries.setdefault(keys, feature.primary_selector)
        if first != feature.primary_selector:
            problems.append(
                Problem(
                    feature.where("primary_selector") or Location(display_path(spec.file)),
                    f'features grouped by the same keys must share a primary_selector: "{first}" '
                    f'is used by another feature of this spec, here "{feature.primary_selector}"',
                )
            )
    groups = []
    for (keys, bucket), features in by_keys.items():
        columns = tuple(
            KeyColumn(col, entity, _key_type(config, spec, col, entity)) for col, entity in keys
        )
        # Named by spec and keys, so adding a feature with other keys never renames a table.
        table = f"{spec.name}__by_{'__'.join(c for c, _ in keys)}".lower()
        if bucket is not None:  # maps: a table per bucket column and bound
            table += f"__per_{bucket.column}_{bucket.max_buckets}".lower()
        primary = primaries.get(keys, keys[0][0] if keys else "")
        layout = TileLayout(table, columns, primary, spec.granularities, key_buckets, bucket)
        groups.append(TileGroup(layout, tuple(features)))
    return SpecPlan(spec, tuple(groups), _spec_hash(spec, groups, key_buckets))


def _bucket(feature: FeatureDef) -> BucketBy | None:
    if feature.bucket_by is None:
        return None
    return BucketBy(feature.bucket_by, feature.max_buckets)


def _compile_feature(
    spec: FeatureSpec, feature: FeatureDef, problems: list[Problem]
) -> BaseFeature | None:
    fallback = feature.where("") or Location(display_path(spec.file))
    clash = _reserved(feature)
    if clash is not None:
        problems.append(Problem(fallback, clash))
        return None
    input_type = DataType.UNKNOWN
    if feature.input is not None:
        column = spec.column(feature.input)
        input_type = column.type if column is not None else DataType.UNKNOWN
    try:
        op = make_operator(feature.op, input_type, feature.params)
    except ParamError as exc:
        problems.append(
            Problem(
                feature.where(f"params.{exc.key}") or feature.where("params") or fallback, str(exc)
            )
        )
        return None
    except UnknownOperatorError as exc:
        problems.append(Problem(feature.where("op") or fallback, str(exc)))
        return None
    except OperatorError as exc:  # the input column's type does not suit the operator
        problems.append(Problem(feature.where("input") or fallback, str(exc)))
        return None
    known_column = feature.input is not None and spec.column(feature.input) is not None
    if op.needs_input and known_column and not input_type.is_known:
        problems.append(
            Problem(
                feature.where("input") or fallback,
                f'cannot tell the type of input "{feature.input}": declare the schema of the '
                "source in robusta.yaml, or CAST the column in the query",
            )
        )
        return None
    if op.needs_input and feature.input is None:
        problems.append(
            Problem(
                fallback,
                f'feature "{feature.name}" ({op.name}) needs an input column: add input: <column>',
            )
        )
        return None
    if feature.bucket_by is not None:
        op = Bucketed(op, feature.max_buckets)
    outputs = tuple(
        OutputFeature(f"{feature.name}_{w.name}", feature.name, w, op.result_type)
        for w in feature.windows
    )
    return BaseFeature(
        name=feature.name,
        op=op,
        input=feature.input,
        input_type=input_type,
        windows=feature.windows,
        outputs=outputs,
        owner=spec.owner,
        description=feature.description,
        hash=_digest(_feature_identity(spec, feature, op)),
        bucket_by=feature.bucket_by,
    )


def _key_type(config: ProjectConfig, spec: FeatureSpec, column: str, entity: str) -> DataType:
    declared = config.entities.get(entity)
    if declared is not None:
        return declared.type
    found = spec.column(column)
    return found.type if found is not None else DataType.STRING


def _normalized_query(query: str) -> str:
    """The query as sqlglot prints it, without comments: formatting edits keep the version."""
    try:
        return sqlglot.transpile(query, read="spark", write="spark", comments=False)[0]
    except sqlglot.errors.SqlglotError:
        return query.strip()


def _feature_identity(spec: FeatureSpec, feature: FeatureDef, op: Operator) -> Any:
    """Everything that decides the stored IR column of a feature.

    Windows and descriptions are left out on purpose: they change assembly or docs, not tiles.
    Params are the operator's normalized ones, so writing a default out changes nothing.
    """
    identity: dict[str, Any] = {
        "query": _normalized_query(spec.query),
        "timestamp": spec.timestamp,
        "granularities": [g.micros for g in spec.granularities],
        "keys": sorted(feature.group_by_selectors.items()),
        "primary": feature.primary_selector,
        "ir_column": feature.name,
        "op": op.name,
        "input": feature.input,
        "input_type": op.input_type.value,
        "params": op.params,
    }
    if isinstance(op, Bucketed):  # only then: the versions of other features stay as they were
        identity["bucket_by"] = feature.bucket_by
        identity["max_buckets"] = op.max_buckets
        identity["op"] = op.inner.name
    return identity


def _spec_hash(spec: FeatureSpec, groups: list[TileGroup], key_buckets: int) -> str:
    return _digest(
        {
            "name": spec.name,
            "key_buckets": key_buckets,
            "features": sorted(f.hash for g in groups for f in g.features),
        }
    )


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
