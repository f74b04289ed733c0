"""Frozen, typed models of the project config (robusta.yaml) and feature specs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robusta.errors import Location
from robusta.spec.durations import Duration, Window
from robusta.spec.types import Column, DataType

SOURCE_FORMATS = ("csv", "json", "parquet", "iceberg", "python")
ONLINE_TYPES = ("embedded", "redis", "aerospike")
ENGINES = ("embedded", "spark")  # the first is the default
SPARK_ENVIRONMENTS = ("packed", "preinstalled")  # spark.environment; the first is the default
STREAM_FORMATS = ("csv", "json", "parquet", "kafka")
DEFAULT_LATENESS = Duration(3_600_000_000)  # offline.allowed_lateness: 1h
DEFAULT_KEY_BUCKETS = 8  # offline.key_buckets
DEFAULT_RETENTION = Duration(7 * 86_400_000_000)  # offline.retention: 7d
DEFAULT_STREAM_MAINTAIN = Duration(3_600_000_000)  # streaming.maintain: 1h
# offline.catalog.type: pyiceberg's catalog types, minus "in-memory" (it keeps nothing
# between two opens, and every job opens the catalog anew).
CATALOG_TYPES = ("sql", "rest", "hive", "glue", "dynamodb", "bigquery")
MAX_KEY_BUCKETS = 65_536
# offline.join_memory: the tiles one point-in-time join task holds at a time
DEFAULT_JOIN_MEMORY = 1 << 30
MIN_JOIN_MEMORY, MAX_JOIN_MEMORY = 1 << 10, 1 << 40
# online.cache_size: assembled values kept per requested tile group (serving.value_cache)
DEFAULT_CACHE_SIZE, MAX_CACHE_SIZE = 4_096, 1 << 20
# A feature's bucket_by map keeps at most max_buckets entries (default, largest allowed).
DEFAULT_MAX_BUCKETS, MAX_BUCKETS_LIMIT = 100, 10_000


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Event volumes to record for a source: per time bucket, in total and per value of each
    segment column (``robusta monitor`` flags a segment falling far below its recent level)."""

    timestamp: str  # the source column giving each event's time
    segments: tuple[str, ...]  # columns whose values are segments (e.g. device, country)
    granularity: Duration  # bucket size of the counts


@dataclass(frozen=True, slots=True)
class SourceConfig:
    name: str
    format: str
    path: Path | None  # file or folder, resolved against the config file's folder
    options: Mapping[str, str]
    schema: tuple[Column, ...] | None  # None: not declared (parquet/iceberg may omit it)
    loader: str | None = None  # python sources: "module:function" returning a DataFrame
    table: str | None = None  # iceberg sources: "namespace.table" in the offline catalog
    location: Location | None = None
    monitor: MonitorConfig | None = None


@dataclass(frozen=True, slots=True)
class EntityConfig:
    name: str
    type: DataType


@dataclass(frozen=True, slots=True)
class OfflineConfig:
    catalog: Mapping[str, Any]
    # A URI (s3://bucket/path, gs://..., abfs://..., hdfs://...) or an absolute local path.
    warehouse: str
    namespace: str
    # A batch run covers whole buckets up to floor(latest event - allowed_lateness, gmin):
    # events landing within it never change a bucket behind a pointer that was served.
    allowed_lateness: Duration = DEFAULT_LATENESS
    # Key buckets of every tile table unless a spec sets its own (docs/spec.md: sizing).
    key_buckets: int = DEFAULT_KEY_BUCKETS
    # Bytes of tiles a point-in-time join task holds at once: a key bucket whose tiles would
    # exceed it is split by key hash into parts that fit (docs/training.md).
    join_memory: int = DEFAULT_JOIN_MEMORY
    # Snapshots younger than this are kept by `robusta maintain` (time travel within it).
    retention: Duration = DEFAULT_RETENTION


@dataclass(frozen=True, slots=True)
class OnlineConfig:
    type: str
    options: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SparkConfig:
    master: str
    conf: Mapping[str, str]
    # On a cluster: "packed" ships Robusta and its dependencies with every session;
    # "preinstalled" trusts the workers' image to hold them.
    environment: str = "packed"
    # Spark Connect: "sc://host:port" of a Connect server; then ``master`` is the server's.
    remote: str | None = None


@dataclass(frozen=True, slots=True)
class StreamSourceConfig:
    """Where the stream reads one source: a landing folder (csv/json/parquet) or Kafka."""

    name: str
    format: str  # csv | json | parquet | kafka
    path: Path | None  # landing folder (file formats)
    options: Mapping[str, str]  # passed to Spark's readStream (Kafka: kafka.* and subscribe)
    value_format: str = "json"  # kafka: how the message value is encoded (json | csv)


@dataclass(frozen=True, slots=True)
class StreamingConfig:
    """The ``streaming`` section: checkpoints, trigger, watermarks, source overrides."""

    checkpoint: Path
    trigger: Duration
    watermark: Duration  # default lateness allowed before a bucket is final
    watermarks: Mapping[str, Duration] = field(default_factory=dict)  # per spec
    sources: Mapping[str, StreamSourceConfig] = field(default_factory=dict)
    # A running stream maintains its tables (`robusta maintain`) this often; None: never.
    maintain: Duration | None = DEFAULT_STREAM_MAINTAIN

    def watermark_of(self, spec: str) -> Duration:
        return self.watermarks.get(spec, self.watermark)


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    file: Path
    project: str
    feature_defs: Path
    sources: Mapping[str, SourceConfig]
    entities: Mapping[str, EntityConfig]
    offline: OfflineConfig
    online: OnlineConfig
    spark: SparkConfig
    streaming: StreamingConfig
    engine: str = ENGINES[0]  # which engine computes: ENGINES

    @property
    def root(self) -> Path:
        return self.file.parent


@dataclass(frozen=True, slots=True)
class FeatureDef:
    """One base feature: an operator over an input column, for several windows."""

    name: str
    op: str
    input: str | None
    params: Mapping[str, Any]
    windows: tuple[Window, ...]
    group_by_selectors: Mapping[str, str]  # query column -> entity
    primary_selector: str
    description: str = ""
    # where each part was written, for messages raised by later stages (plan, ops)
    locations: Mapping[str, Location] = field(default_factory=dict)
    # a query column: the feature is a map {its value: the op's value} (ops.bucketed)
    bucket_by: str | None = None
    max_buckets: int = DEFAULT_MAX_BUCKETS

    def where(self, part: str) -> Location | None:
        return self.locations.get(part) or self.locations.get("")

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}_{w.name}" for w in self.windows)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """A feature spec file: a query over sources plus base features aggregated from it."""

    name: str
    owner: str
    description: str
    query: str
    timestamp: str
    granularities: tuple[Duration, ...]  # largest first
    features: tuple[FeatureDef, ...]
    file: Path
    sources: tuple[str, ...]  # source names the query reads
    columns: tuple[Column, ...]  # the query's output columns (types UNKNOWN when not derivable)
    location: Location | None = None
    key_buckets: int | None = None  # None: the project's offline.key_buckets

    @property
    def finest(self) -> Duration:
        return self.granularities[-1]

    def column(self, name: str) -> Column | None:
        lowered = name.lower()
        return next((c for c in self.columns if c.name.lower() == lowered), None)
