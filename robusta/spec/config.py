"""Loading and validating the project config, robusta.yaml."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from robusta.errors import ConfigNotFoundError, Location, Problem
from robusta.spec.checks import Checker
from robusta.spec.durations import Duration
from robusta.spec.model import (
    CATALOG_TYPES,
    DEFAULT_JOIN_MEMORY,
    DEFAULT_KEY_BUCKETS,
    DEFAULT_LATENESS,
    DEFAULT_RETENTION,
    DEFAULT_STREAM_MAINTAIN,
    ENGINES,
    MAX_CACHE_SIZE,
    MAX_JOIN_MEMORY,
    MAX_KEY_BUCKETS,
    MIN_JOIN_MEMORY,
    ONLINE_TYPES,
    SOURCE_FORMATS,
    SPARK_ENVIRONMENTS,
    STREAM_FORMATS,
    EntityConfig,
    MonitorConfig,
    OfflineConfig,
    OnlineConfig,
    ProjectConfig,
    SourceConfig,
    SparkConfig,
    StreamingConfig,
    StreamSourceConfig,
)
from robusta.spec.suggest import did_you_mean, one_of
from robusta.spec.types import (
    ENTITY_TYPES,
    Column,
    DataType,
    SchemaSyntaxError,
    parse_schema,
    schema_from_arrow,
)
from robusta.spec.yamldoc import YamlLoadError, load_yaml

CONFIG_NAME = "robusta.yaml"
_TOP = ("project",)
_TOP_OPTIONAL = (
    "feature_defs",
    "sources",
    "entities",
    "offline",
    "online",
    "spark",
    "streaming",
    "engine",
)
_STREAMING_KEYS = ("checkpoint", "trigger", "watermark", "sources", "maintain")
_STREAM_SOURCE_KEYS = ("format", "path", "options", "value_format")
DEFAULT_CHECKPOINT = ".robusta/checkpoints"
DEFAULT_TRIGGER = "1s"
DEFAULT_WATERMARK = "10m"
_SOURCE_KEYS = ("format", "path", "table", "options", "schema", "loader", "monitor")
# The key that says where each format's data is.
_LOCATOR = {"python": "loader", "iceberg": "table"}
_ONLINE_KEYS: dict[str, tuple[str, ...]] = {
    "embedded": ("path", "map_size_gb"),
    "redis": ("url", "password_env", "tls", "timeout_ms", "key_prefix"),
    "aerospike": ("hosts", "namespace", "set", "timeout_ms", "user_env", "password_env"),
}
# Keys every backend takes: serving mode per spec, retention margin, what lookups do when the
# store is down, feature logging.
_ONLINE_COMMON = ("modes", "margin", "on_unavailable", "log", "cache_size")
# online.log: served feature vectors to Iceberg (robusta.serving.feature_log); numbers > 0.
LOG_KEYS = {"flush_seconds": 5.0, "max_rows": 100_000, "batch_rows": 10_000}
SERVING_MODES = ("assemble", "preassembled")
ON_UNAVAILABLE = ("error", "empty")
_SCHEMA_REQUIRED = ("csv", "json", "python")


def find_config(start: Path | None = None) -> Path:
    """robusta.yaml in ``start`` (default: the working directory) or the nearest parent."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigNotFoundError(here)


def display_path(path: Path) -> str:
    """A path as users should see it in messages: relative to the working directory if inside."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def load_config(path: Path) -> tuple[ProjectConfig | None, list[Problem]]:
    """Parse and check robusta.yaml; returns the config (None if unusable) and every problem."""
    path = path.resolve()
    try:
        doc = load_yaml(path, display_path(path))
    except YamlLoadError as exc:
        return None, exc.problems
    check = Checker(doc)
    top = check.section((), _TOP, _TOP_OPTIONAL, what=CONFIG_NAME)
    if top is None:
        return None, check.problems
    root = path.parent
    project = check.text(("project",)) or ""
    feature_defs = root / (check.text(("feature_defs",)) or "feature_defs")
    sources = _sources(check, root)
    entities = _entities(check)
    offline = _offline(check, root)
    online = _online(check, root)
    spark = _spark(check)
    streaming = _streaming(check, root, sources)
    engine = _engine(check)
    config = ProjectConfig(
        file=path,
        project=project,
        feature_defs=feature_defs,
        sources=sources,
        entities=entities,
        offline=offline,
        online=online,
        spark=spark,
        streaming=streaming,
        engine=engine,
    )
    return config, check.problems


def _engine(check: Checker) -> str:
    name = check.text(("engine",))
    if name is None:
        return ENGINES[0]
    if name not in ENGINES:
        check.add(
            ("engine",),
            f'unknown engine "{name}"{did_you_mean(name, ENGINES)}; engines: {one_of(ENGINES)}',
        )
        return ENGINES[0]
    return name


def _sources(check: Checker, root: Path) -> dict[str, SourceConfig]:
    raw = check.mapping(("sources",)) or {}
    sources = (_source(check, root, name) for name in raw)
    return {source.name: source for source in sources if source is not None}


def _source(check: Checker, root: Path, name: str) -> SourceConfig | None:
    path = ("sources", name)
    body = check.section(path, ("format",), _SOURCE_KEYS[1:], what=f'source "{name}"')
    if body is None:
        return None
    fmt = (check.text((*path, "format")) or "").lower()
    if fmt and fmt not in SOURCE_FORMATS:
        check.add(
            (*path, "format"),
            f'unknown format "{fmt}"{did_you_mean(fmt, SOURCE_FORMATS)}; '
            f"formats: {one_of(SOURCE_FORMATS)}",
        )
    where = check.text((*path, "path"))
    loader = check.text((*path, "loader"))
    table = check.text((*path, "table"))
    needed = _LOCATOR.get(fmt, "path")
    if needed not in body and fmt:
        example = {"loader": '"package.module:function"', "table": "namespace.table"}
        check.add(
            path,
            f'source "{name}" ({fmt}) needs "{needed}"'
            + (f": {example[needed]}" if needed in example else " (a file or folder)"),
            key=True,
        )
    if table is not None and "." not in table:
        check.add((*path, "table"), f'table "{table}" must be "namespace.table"')
    if loader is not None and ":" not in loader:
        check.add((*path, "loader"), 'loader must look like "package.module:function"')
    schema = _schema(check, (*path, "schema"))
    if schema is None and fmt == "parquet" and where is not None:
        schema = _parquet_schema(root / where)
    if schema is None and fmt in _SCHEMA_REQUIRED and "schema" not in body:
        check.add(
            path,
            f'source "{name}" ({fmt}) needs a "schema", e.g. '
            '"user_id STRING, amount DOUBLE, ts TIMESTAMP"',
            key=True,
        )
    options = {
        str(k): _option_text(v) for k, v in (check.mapping((*path, "options")) or {}).items()
    }
    return SourceConfig(
        name=name,
        format=fmt,
        path=(root / where) if where else None,
        options=options,
        schema=schema,
        loader=loader,
        table=table,
        location=check.where(path, key=True),
        monitor=_monitor(check, path, schema) if "monitor" in body else None,
    )


def _monitor(
    check: Checker, source: tuple[str, ...], schema: tuple[Column, ...] | None
) -> MonitorConfig | None:
    """``sources.<name>.monitor: {timestamp: col, segments: [col, ...], granularity: 1d}``."""
    path = (*source, "monitor")
    body = check.section(path, ("timestamp",), ("segments", "granularity"), what="monitor")
    if body is None:
        return None
    timestamp = check.text((*path, "timestamp")) or ""
    segments = [str(s) for s in (check.sequence((*path, "segments")) or [])]
    known = {c.name.lower(): c.name for c in schema or ()}
    for i, column in enumerate([timestamp, *segments]):
        where: tuple[str | int, ...] = (
            (*path, "timestamp") if i == 0 else (*path, "segments", i - 1)
        )
        if known and column and column.lower() not in known:
            check.add(
                where,
                f'the source has no column "{column}"{did_you_mean(column, known.values())}',
            )
    try:
        granularity = Duration.parse(body.get("granularity", "1d"))
    except ValueError as exc:
        check.add((*path, "granularity"), f"granularity: {exc}")
        granularity = Duration.parse("1d")
    return MonitorConfig(timestamp, tuple(segments), granularity)


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _schema(check: Checker, path: tuple[str, ...]) -> tuple[Column, ...] | None:
    text = check.text(path)
    if text is None:
        return None
    try:
        columns = parse_schema(text)
    except SchemaSyntaxError as exc:
        base = check.where(path)
        style = check.doc.marks[path].style if path in check.doc.marks else None
        shift = exc.offset + (1 if style in ("'", '"') else 0)
        check.add_at(Location(base.file, base.line, base.column + shift), f"schema: {exc.message}")
        return None
    names = [c.name.lower() for c in columns]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        check.add(path, f"schema: column {', '.join(twice)} is declared twice (names ignore case)")
        return None
    return columns


def _parquet_schema(path: Path) -> tuple[Column, ...] | None:
    """The schema of existing Parquet files, so undeclared columns can still be checked."""
    import pyarrow.dataset  # imports pandas: only where a Parquet source is declared

    try:
        dataset = pyarrow.dataset.dataset(path, format="parquet")
        return schema_from_arrow(dataset.schema) if dataset.files else None
    except (OSError, ValueError, pyarrow.ArrowException):
        return None


def _entities(check: Checker) -> dict[str, EntityConfig]:
    raw = check.mapping(("entities",)) or {}
    out: dict[str, EntityConfig] = {}
    for name, body in raw.items():
        path = ("entities", name)
        kind = "string"
        if body is not None:
            if check.section(path, (), ("type", "description"), what=f'entity "{name}"') is None:
                continue
            kind = (check.text((*path, "type")) or "string").lower()
        if kind not in ENTITY_TYPES:
            check.add(
                (*path, "type"),
                f'unknown entity type "{kind}"'
                f"{did_you_mean(kind, ENTITY_TYPES)}; types: {one_of(ENTITY_TYPES)}",
            )
            kind = "string"
        out[name] = EntityConfig(name, ENTITY_TYPES.get(kind, DataType.STRING))
    return out


def _offline(check: Checker, root: Path) -> OfflineConfig:
    default_catalog = {"type": "sql", "uri": f"sqlite:///{root / '.robusta' / 'catalog.db'}"}
    if check.get(("offline",)) is None:
        return OfflineConfig(default_catalog, location(root, ".robusta/warehouse"), "robusta")
    check.section(
        ("offline",),
        (),
        (
            "catalog",
            "warehouse",
            "namespace",
            "allowed_lateness",
            "key_buckets",
            "join_memory",
            "retention",
        ),
    )
    catalog = dict(check.mapping(("offline", "catalog")) or default_catalog)
    if check.get(("offline", "catalog")) is not None:
        _catalog(check, catalog)
    uri = str(catalog.get("uri", ""))
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        catalog["uri"] = f"sqlite:///{root / uri.removeprefix('sqlite:///')}"
    warehouse = location(root, check.text(("offline", "warehouse")) or ".robusta/warehouse")
    namespace = check.text(("offline", "namespace")) or "robusta"
    lateness = _lateness(check, ("offline", "allowed_lateness"))
    buckets = check.whole(("offline", "key_buckets"), 1, MAX_KEY_BUCKETS)
    memory = check.size(("offline", "join_memory"), MIN_JOIN_MEMORY, MAX_JOIN_MEMORY)
    retention = _duration(check, ("offline", "retention"), DEFAULT_RETENTION.name)
    return OfflineConfig(
        catalog,
        warehouse,
        namespace,
        lateness,
        buckets or DEFAULT_KEY_BUCKETS,
        memory or DEFAULT_JOIN_MEMORY,
        retention,
    )


def _catalog(check: Checker, catalog: dict[str, Any]) -> None:
    """``offline.catalog``: pyiceberg catalog properties, handed to ``load_catalog`` as they
    are (``properties``, a nested mapping, is merged into them); checked here: a known
    ``type`` (or ``py-catalog-impl``), scalar values, and a SQL catalog's ``uri``."""
    path = ("offline", "catalog")
    kind = str(catalog.get("type", "" if "py-catalog-impl" in catalog else "sql")).lower()
    if kind and kind not in CATALOG_TYPES:
        check.add(
            (*path, "type"),
            f'unknown catalog type "{kind}"{did_you_mean(kind, CATALOG_TYPES)}; '
            f"types: {one_of(CATALOG_TYPES)}",
        )
    for key, value in catalog.items():
        if key == "properties":
            check.mapping((*path, "properties"))
        elif isinstance(value, dict | list):
            check.add((*path, key), f'catalog property "{key}" must be text or a number')
    if kind != "sql":
        return
    uri = str(catalog.get("uri", ""))
    if not uri:
        check.add(path, 'a SQL catalog needs a "uri": sqlite:///... or postgresql+psycopg2://...')
    elif not uri.startswith(("sqlite:///", "postgresql")):
        check.add(
            (*path, "uri"),
            f'catalog uri "{uri}" must start with '
            "sqlite:/// or postgresql:// (or postgresql+psycopg2://)",
        )


def _lateness(check: Checker, path: tuple[str, ...]) -> Duration:
    """A duration that may also be zero (``0``, ``0s``: buckets are final at once)."""
    text = check.text(path)
    if text is not None and re.fullmatch(r"\s*0+\s*[smhdw]?\s*", text):
        return Duration(0)
    return _duration(check, path, DEFAULT_LATENESS.name)


def _online(check: Checker, root: Path) -> OnlineConfig:
    if check.get(("online",)) is None:
        return OnlineConfig("embedded", {"path": str(root / ".robusta" / "online")})
    body = check.mapping(("online",)) or {}
    kind = str(body.get("type", "embedded"))
    if kind not in ONLINE_TYPES:
        check.add(
            ("online", "type"),
            f'unknown online store "{kind}"'
            f"{did_you_mean(kind, ONLINE_TYPES)}; stores: {one_of(ONLINE_TYPES)}",
        )
        return OnlineConfig("embedded", {})
    check.section(
        ("online",), (), ("type", *_ONLINE_KEYS[kind], *_ONLINE_COMMON), what=f"online ({kind})"
    )
    options = {k: v for k, v in body.items() if k != "type"}
    for spec, mode in (check.mapping(("online", "modes")) or {}).items():
        if mode not in SERVING_MODES:
            check.add(
                ("online", "modes", spec),
                f'unknown serving mode "{mode}"; modes: {one_of(SERVING_MODES)}',
            )
    if "margin" in body:
        try:
            Duration.parse(body["margin"])
        except ValueError as exc:
            check.add(("online", "margin"), f"margin: {exc}")
    if body.get("on_unavailable", "error") not in ON_UNAVAILABLE:
        check.add(
            ("online", "on_unavailable"),
            f"on_unavailable must be one of {one_of(ON_UNAVAILABLE)}",
        )
    if "cache_size" in body:
        check.whole(("online", "cache_size"), 0, MAX_CACHE_SIZE)
    if "log" in body:
        options["log"] = _log_options(check)
    if kind == "embedded":
        options["path"] = str(root / str(options.get("path", ".robusta/online")))
    return OnlineConfig(kind, options)


def _log_options(check: Checker) -> dict[str, Any]:
    """``online.log``: ``true`` or a mapping of LOG_KEYS (plus ``enabled``), checked."""
    value = check.get(("online", "log"))
    if isinstance(value, bool):
        return {"enabled": value, **LOG_KEYS}
    body = check.section(("online", "log"), (), ("enabled", *LOG_KEYS), what="online.log")
    if body is None:
        return {"enabled": False}
    options: dict[str, Any] = {"enabled": bool(body.get("enabled", True))}
    for key, default in LOG_KEYS.items():
        raw = body.get(key, default)
        if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
            check.add(("online", "log", key), f"online.log {key} must be a number above 0")
            raw = default
        options[key] = type(default)(raw)
    return options


def _spark(check: Checker) -> SparkConfig:
    if check.get(("spark",)) is None:
        return SparkConfig("local[2]", {})
    check.section(("spark",), (), ("master", "conf", "environment", "remote"))
    master = check.text(("spark", "master")) or "local[2]"
    remote = check.text(("spark", "remote"))
    if remote is not None and not remote.startswith("sc://"):
        check.add(
            ("spark", "remote"),
            f'spark.remote "{remote}" must be a Spark Connect URL: sc://host:port',
        )
        remote = None
    if remote is not None and check.get(("spark", "master")) is not None:
        check.add(
            ("spark", "master"),
            "give spark.master or spark.remote, not both: a Spark Connect server has its own "
            "master",
        )
    conf = {str(k): _option_text(v) for k, v in (check.mapping(("spark", "conf")) or {}).items()}
    environment = check.text(("spark", "environment")) or SPARK_ENVIRONMENTS[0]
    if environment not in SPARK_ENVIRONMENTS:
        check.add(
            ("spark", "environment"),
            f'unknown spark environment "{environment}"'
            f"{did_you_mean(environment, SPARK_ENVIRONMENTS)}; one of {one_of(SPARK_ENVIRONMENTS)}",
        )
        environment = SPARK_ENVIRONMENTS[0]
    return SparkConfig(master, conf, environment, remote)


def _streaming(check: Checker, root: Path, sources: dict[str, SourceConfig]) -> StreamingConfig:
    """``streaming:``: checkpoint folder, trigger interval, watermark (one duration, or a
    mapping of spec name to duration with an optional ``default``), per-source overrides."""
    body = check.mapping(("streaming",)) or {}
    if body:
        check.section(("streaming",), (), _STREAMING_KEYS, what="streaming")
    checkpoint = root / (check.text(("streaming", "checkpoint")) or DEFAULT_CHECKPOINT)
    trigger = _duration(check, ("streaming", "trigger"), DEFAULT_TRIGGER)
    watermark = Duration.parse(DEFAULT_WATERMARK)
    per_spec: dict[str, Duration] = {}
    raw = body.get("watermark")
    if isinstance(raw, dict):
        for spec in raw:
            parsed = _duration(check, ("streaming", "watermark", str(spec)), DEFAULT_WATERMARK)
            if spec == "default":
                watermark = parsed
            else:
                per_spec[str(spec)] = parsed
    elif raw is not None:
        watermark = _duration(check, ("streaming", "watermark"), DEFAULT_WATERMARK)
    overrides: dict[str, StreamSourceConfig] = {}
    for name in check.mapping(("streaming", "sources")) or {}:
        override = _stream_source(check, root, str(name), sources)
        if override is not None:
            overrides[override.name] = override
    return StreamingConfig(
        checkpoint, trigger, watermark, per_spec, overrides, _stream_maintain(check)
    )


def _stream_maintain(check: Checker) -> Duration | None:
    """``streaming.maintain``: how often a running stream maintains its tables; ``off``
    (YAML may read it as false) never."""
    path = ("streaming", "maintain")
    raw = check.get(path)
    if raw is False or (isinstance(raw, str) and raw.strip().lower() == "off"):
        return None
    if raw is None:
        return DEFAULT_STREAM_MAINTAIN
    return _duration(check, path, DEFAULT_STREAM_MAINTAIN.name)


def _duration(check: Checker, path: tuple[str, ...], default: str) -> Duration:
    text = check.text(path)
    if text is None:
        return Duration.parse(default)
    try:
        return Duration.parse(text)
    except ValueError as exc:
        check.add(path, f"{path[-1]}: {exc}")
        return Duration.parse(default)


def _stream_source(
    check: Checker, root: Path, name: str, sources: dict[str, SourceConfig]
) -> StreamSourceConfig | None:
    path = ("streaming", "sources", name)
    what = f'streaming source "{name}"'
    if name not in sources:
        check.add(
            path,
            f"{what} is not a source of robusta.yaml{did_you_mean(name, list(sources))}; "
            "streaming.sources overrides where a declared source is read from",
            key=True,
        )
        return None
    body = check.section(path, (), _STREAM_SOURCE_KEYS, what=what)
    if body is None:
        return None
    base = sources[name]
    fmt = (check.text((*path, "format")) or base.format).lower()
    if fmt not in STREAM_FORMATS:
        check.add(
            (*path, "format") if "format" in body else path,
            f'{what}: format "{fmt}" cannot be streamed; formats: {one_of(STREAM_FORMATS)}',
            key="format" not in body,
        )
        return None
    where = check.text((*path, "path"))
    if fmt != "kafka" and where is None and base.path is None:
        check.add(path, f'{what} needs a "path": the landing folder to watch', key=True)
    options = {
        str(k): _option_text(v) for k, v in (check.mapping((*path, "options")) or {}).items()
    }
    if fmt == "kafka" and not any(
        k in options for k in ("subscribe", "subscribePattern", "assign")
    ):
        check.add(
            path,
            f'{what} (kafka) needs options "kafka.bootstrap.servers" and "subscribe" '
            '(or "subscribePattern"/"assign")',
            key=True,
        )
    value_format = (check.text((*path, "value_format")) or "json").lower()
    if value_format not in ("json", "csv"):
        check.add((*path, "value_format"), 'value_format must be "json" or "csv"')
    return StreamSourceConfig(
        name=name,
        format=fmt,
        path=(root / where) if where else base.path,
        options={**(base.options if fmt == base.format else {}), **options},
        value_format=value_format,
    )


def location(root: Path, text: str) -> str:
    """A configured location as Robusta stores it: URIs (``s3://...``) as written, local
    paths and ``file:`` URIs as absolute paths, relative ones against ``root``."""
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return str(Path(parsed.path))
    if parsed.scheme and "://" in text:
        return text
    return str((root / text).resolve())
