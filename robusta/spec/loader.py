"""Loading and validating feature spec files (feature_defs/*.yaml)."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

from robusta.errors import Location, Problem
from robusta.spec.checks import Checker
from robusta.spec.config import display_path
from robusta.spec.durations import Duration, DurationSyntaxError, Window
from robusta.spec.embedded_sql import embedded_problems
from robusta.spec.model import (
    DEFAULT_MAX_BUCKETS,
    MAX_BUCKETS_LIMIT,
    MAX_KEY_BUCKETS,
    FeatureDef,
    FeatureSpec,
    ProjectConfig,
)
from robusta.spec.sql import QueryProblem, analyze_query
from robusta.spec.suggest import did_you_mean, one_of
from robusta.spec.types import Column, DataType
from robusta.spec.yamldoc import YamlDoc, YamlLoadError, load_yaml

SPEC_REQUIRED = ("name", "query", "timestamp", "features")
SPEC_OPTIONAL = ("owner", "description", "granularities", "key_buckets")
FEATURE_REQUIRED = ("op", "windows", "group_by_selectors")
FEATURE_OPTIONAL = (
    "input",
    "params",
    "primary_selector",
    "description",
    "bucket_by",
    "max_buckets",
)
# What a bucket_by column may hold: types whose text is the same on both engines.
BUCKET_TYPES = {DataType.STRING, DataType.INT, DataType.BIGINT, DataType.BOOLEAN, DataType.DATE}
DEFAULT_GRANULARITIES = ("1d", "1h", "5m")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def spec_files(folder: Path) -> list[Path]:
    """Spec files of a feature_defs folder, in a stable order."""
    if not folder.is_dir():
        return []
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def load_spec(path: Path, config: ProjectConfig) -> tuple[FeatureSpec | None, list[Problem]]:
    """Parse and check one spec file against the project config."""
    try:
        doc = load_yaml(path, display_path(path))
    except YamlLoadError as exc:
        return None, exc.problems
    check = Checker(doc)
    body = check.section((), SPEC_REQUIRED, SPEC_OPTIONAL, what="the spec")
    if body is None:
        return None, check.problems
    name = _identifier(check, ("name",), "spec name") or path.stem
    query = check.text(("query",)) or ""
    analysis = analyze_query(query, config.sources) if query.strip() else None
    if analysis is not None:
        for qp in analysis.problems or engine_problems(query, analysis.sources, config):
            check.add_at(_query_location(doc, qp), qp.message)
    columns = analysis.columns if analysis is not None else ()
    known = analysis is not None and analysis.columns_known and not analysis.problems
    ctx = _SpecContext(check, config, {c.name.lower(): c.type for c in columns}, known)
    ctx.spelling = {c.name.lower(): c.name for c in columns}
    _duplicate_columns(check, columns)
    timestamp = ctx.canonical(check.text(("timestamp",)) or "")
    if timestamp:
        ctx.require_column(("timestamp",), timestamp, "timestamp", {DataType.TIMESTAMP})
    granularities = _granularities(check)
    features = _features(ctx, granularities[-1] if granularities else None)
    spec = FeatureSpec(
        name=name,
        owner=check.text(("owner",)) or "",
        description=check.text(("description",)) or "",
        query=query,
        timestamp=timestamp,
        granularities=granularities,
        features=features,
        file=path.resolve(),
        sources=analysis.sources if analysis is not None else (),
        columns=columns,
        location=Location(doc.file, 1, 1),
        key_buckets=check.whole(("key_buckets",), 1, MAX_KEY_BUCKETS),
    )
    return spec, check.problems


def engine_problems(
    query: str, sources: tuple[str, ...], config: ProjectConfig, engine: str | None = None
) -> list[QueryProblem]:
    """What ``engine`` (default: the project's) cannot run of the query (Spark runs all)."""
    if (engine or config.engine) != "embedded":
        return []
    declared = [config.sources[s].schema for s in sources]
    schemas = {
        name: {c.name: c.sql_type for c in schema}
        for name, schema in zip(sources, declared, strict=True)
        if schema is not None
    }
    return embedded_problems(query, schemas if len(schemas) == len(sources) else None)


class _SpecContext:
    """What checks of one spec's features need: the checker, config and query columns."""

    def __init__(
        self, check: Checker, config: ProjectConfig, columns: dict[str, DataType], known: bool
    ) -> None:
        self.check = check
        self.config = config
        self.columns = columns
        self.known = known
        self.spelling: dict[str, str] = {}

    def column_type(self, name: str) -> DataType:
        return self.columns.get(name.lower(), DataType.UNKNOWN)

    def canonical(self, name: str) -> str:
        """A column name as the query spells it (Spark matches names ignoring case)."""
        return self.spelling.get(name.lower(), name)

    def require_column(
        self,
        path: tuple[str | int, ...],
        name: str,
        role: str,
        types: set[DataType] | None = None,
    ) -> None:
        if not self.known:
            return
        if name.lower() not in self.columns:
            hint = did_you_mean(name, self.columns) or f"; query columns: {one_of(self.columns)}"
            self.check.add(path, f'{role} "{name}" is not an output column of the query{hint}')
            return
        actual = self.columns[name.lower()]
        if types and actual.is_known and actual not in types:
            wanted = " or ".join(sorted(t.value for t in types))
            self.check.add(
                path, f'{role} "{name}" is {actual.value}, expected {wanted}; CAST it in the query'
            )


def _duplicate_columns(check: Checker, columns: tuple[Column, ...]) -> None:
    seen: set[str] = set()
    for column in columns:
        if column.name.lower() in seen:
            check.add(
                ("query",),
                f'the query has two output columns named "{column.name}" '
                "(Spark ignores case in names); alias one of them",
            )
        seen.add(column.name.lower())


def _identifier(check: Checker, path: tuple[str | int, ...], role: str) -> str | None:
    value = check.text(path)
    if value is not None and not IDENTIFIER.match(value):
        check.add(
            path, f'{role} "{value}" must be letters, digits and _ (not starting with a digit)'
        )
        return None
    return value


def _granularities(check: Checker) -> tuple[Duration, ...]:
    raw = check.sequence(("granularities",))
    texts = list(DEFAULT_GRANULARITIES) if raw is None else raw
    if raw is not None and not raw:
        check.add(
            ("granularities",), "granularities must list at least one size, e.g. [1d, 1h, 5m]"
        )
        return tuple(Duration.parse(t) for t in DEFAULT_GRANULARITIES)
    parsed: list[tuple[Duration, int]] = []
    for i, text in enumerate(texts):
        try:
            parsed.append((Duration.parse(text), i))
        except DurationSyntaxError as exc:
            check.add(("granularities", i), f"granularity {exc}")
    parsed.sort(key=lambda d: -d[0].micros)
    for (big, _), (small, i) in pairwise(parsed):
        if big == small:
            check.add(("granularities", i), f"granularity {small} is listed twice")
        elif big.micros % small.micros:
            check.add(
                ("granularities", i),
                f"granularity {big} is not a whole multiple of {small}; each size must "
                "divide the next larger one (e.g. [1d, 1h, 5m])",
            )
    return tuple(dict.fromkeys(d for d, _ in parsed))


def _features(ctx: _SpecContext, finest: Duration | None) -> tuple[FeatureDef, ...]:
    check = ctx.check
    raw = check.mapping(("features",))
    if raw is None:
        return ()
    if not raw:
        check.add(("features",), "features must define at least one feature")
    out = []
    seen: set[str] = set()
    for name in raw:
        if name.lower() in seen:
            check.add(
                ("features", name),
                f'feature "{name}" differs from another feature only in '
                "case; Spark column names ignore case, so rename one",
                key=True,
            )
        seen.add(name.lower())
        feature = _feature(ctx, name, finest)
        if feature is not None:
            out.append(feature)
    return tuple(out)


def _feature(ctx: _SpecContext, name: str, finest: Duration | None) -> FeatureDef | None:
    check = ctx.check
    path: tuple[str | int, ...] = ("features", name)
    if not IDENTIFIER.match(name):
        check.add(path, f'feature name "{name}" must be letters, digits and _', key=True)
    body = check.section(path, FEATURE_REQUIRED, FEATURE_OPTIONAL, what=f'feature "{name}"')
    if body is None:
        return None
    op = (check.text((*path, "op")) or "").strip().lower()
    input_col = check.text((*path, "input"))
    if input_col is not None:
        ctx.require_column((*path, "input"), input_col, "input")
        input_col = ctx.canonical(input_col)
    params = check.mapping((*path, "params")) or {}
    bucket_by = check.text((*path, "bucket_by"))
    if bucket_by is not None:
        ctx.require_column((*path, "bucket_by"), bucket_by, "bucket_by", BUCKET_TYPES)
        bucket_by = ctx.canonical(bucket_by)
    max_buckets = check.whole((*path, "max_buckets"), 1, MAX_BUCKETS_LIMIT)
    if max_buckets is not None and bucket_by is None:
        check.add((*path, "max_buckets"), "max_buckets bounds a map: add bucket_by: <column>")
    windows = _windows(check, path, finest)
    selectors = _selectors(ctx, path)
    primary = check.text((*path, "primary_selector"))
    primary = ctx.canonical(primary) if primary is not None else None
    if primary is None and len(selectors) == 1:
        primary = next(iter(selectors))
    elif primary is None and selectors:
        check.add(
            path,
            f'feature "{name}" groups by several selectors: name one as '
            f"primary_selector ({one_of(selectors)})",
            key=True,
        )
    elif primary is not None and selectors and primary not in selectors:
        check.add(
            (*path, "primary_selector"),
            f'primary_selector "{primary}" is not among the '
            f"group_by_selectors{did_you_mean(primary, selectors)}; choose one of "
            f"{one_of(selectors)}",
        )
    locations = {
        part: check.where((*path, part)) for part in (*FEATURE_REQUIRED, *FEATURE_OPTIONAL)
    }
    locations[""] = check.where(path, key=True)
    locations.update({f"params.{k}": check.where((*path, "params", k), key=True) for k in params})
    return FeatureDef(
        name=name,
        op=op,
        input=input_col,
        params=dict(params),
        windows=windows,
        group_by_selectors=selectors,
        primary_selector=primary or "",
        description=check.text((*path, "description")) or "",
        locations=locations,
        bucket_by=bucket_by,
        max_buckets=max_buckets or DEFAULT_MAX_BUCKETS,
    )


def _windows(
    check: Checker, path: tuple[str | int, ...], finest: Duration | None
) -> tuple[Window, ...]:
    raw = check.sequence((*path, "windows"))
    if raw is None:
        return ()
    if not raw:
        check.add((*path, "windows"), "windows must list at least one window, e.g. [1h, 7d]")
    out: list[Window] = []
    for i, text in enumerate(raw):
        try:
            window = Window.parse(text)
        except DurationSyntaxError as exc:
            check.add((*path, "windows", i), f"window {exc} (or lifetime)")
            continue
        if (
            finest is not None
            and window.duration is not None
            and window.duration.micros % finest.micros
        ):
            check.add(
                (*path, "windows", i),
                f"window {window} is not a whole multiple of the smallest granularity {finest}",
            )
            continue
        if window in out:
            check.add((*path, "windows", i), f"window {window} is listed twice")
            continue
        out.append(window)
    return tuple(sorted(out, key=lambda w: w.sort_key))


def _selectors(ctx: _SpecContext, path: tuple[str | int, ...]) -> dict[str, str]:
    check = ctx.check
    raw = check.mapping((*path, "group_by_selectors"))
    if raw is None:
        return {}
    if not raw:
        check.add(
            (*path, "group_by_selectors"),
            "group_by_selectors needs at least one column: entity pair, e.g. {user_id: USER_ID}",
        )
    out: dict[str, str] = {}
    entities = ctx.config.entities
    for column, entity in raw.items():
        where = (*path, "group_by_selectors", column)
        if ctx.known and column.lower() not in ctx.columns:
            hint = did_you_mean(column, ctx.columns) or f"; query columns: {one_of(ctx.columns)}"
            check.add(
                where,
                f'group-by selector "{column}" is not an output column of the query{hint}',
                key=True,
            )
        entity_name = str(entity)
        declared = entities.get(entity_name)
        if declared is None:
            hint = did_you_mean(entity_name, entities) or (
                f"; declared entities: {one_of(entities)}"
                if entities
                else '; declare it under "entities:" in robusta.yaml'
            )
            check.add(where, f'entity "{entity_name}" is not declared{hint}')
        elif (
            ctx.column_type(column).is_known
            and ctx.column_type(column) != declared.type
            and not (ctx.column_type(column).is_integer and declared.type.is_integer)
        ):
            check.add(
                where,
                f'column "{column}" is {ctx.column_type(column).value} but entity '
                f'"{entity_name}" is {declared.type.value}; CAST it in the query',
            )
        if entity_name in out.values():
            check.add(
                where,
                f'entity "{entity_name}" is already used by another selector of '
                "this feature; training rows carry one column per entity",
            )
        out[ctx.canonical(column)] = entity_name
    return out


def _query_location(doc: YamlDoc, problem: QueryProblem) -> Location:
    """Map a position inside the query text to the spec file."""
    return doc.place(("query",)).at(problem.line, problem.column)


def query_location(spec_file: Path, problem: QueryProblem) -> Location:
    """Where ``problem`` (a position inside a spec's query) is in the spec file."""
    return _query_location(load_yaml(spec_file, display_path(spec_file)), problem)
