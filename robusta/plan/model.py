"""The compiled plan: what every engine and assembler reads instead of raw specs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from robusta.ops import Operator
from robusta.ops.bucketed import Bucketed
from robusta.spec.durations import Duration, Window
from robusta.spec.model import FeatureSpec
from robusta.spec.service import ServiceDef

if TYPE_CHECKING:  # the evaluator (sqlglot, Arrow compute) loads with the first service
    from robusta.plan.derived import Expression, Kind
from robusta.spec.types import DataType


@dataclass(frozen=True, slots=True)
class OutputFeature:
    """One feature column users get: a base feature over one window."""

    name: str  # <base>_<window>
    base: str
    window: Window
    type: pa.DataType


@dataclass(frozen=True, slots=True)
class BaseFeature:
    """An operator over an input column; its IR is one tile-table column named like it."""

    name: str
    op: Operator
    input: str | None
    input_type: DataType
    windows: tuple[Window, ...]
    outputs: tuple[OutputFeature, ...]
    owner: str
    description: str
    hash: str  # of everything that decides this feature's IR
    bucket_by: str | None = None  # a map per value of this column (``ops.bucketed``)

    @property
    def ir_column(self) -> str:
        return self.name

    def op_input(self, column: Callable[[str], pa.Array]) -> pa.Array | None:
        """What the operator builds from, given ``column(name)`` of the rows in build order:
        the input column, or for a map the struct of bucket values and inputs."""
        values = None if self.input is None else column(self.input)
        if self.bucket_by is None:
            return values
        if not isinstance(self.op, Bucketed):
            raise TypeError(f"feature {self.name} has bucket_by but a plain operator")
        return self.op.input_struct(column(self.bucket_by), values)

    @property
    def ir_type(self) -> pa.DataType:
        return self.op.ir_type


@dataclass(frozen=True, slots=True)
class KeyColumn:
    column: str
    entity: str
    type: DataType


@dataclass(frozen=True, slots=True)
class BucketBy:
    """A group of map features: one map entry per value of ``column`` (``ops.bucketed``)."""

    column: str
    max_buckets: int


@dataclass(frozen=True, slots=True)
class TileLayout:
    """How one group of base features (same group-by keys) is tiled and stored."""

    table: str  # tile table name within the offline namespace
    keys: tuple[KeyColumn, ...]
    primary: str  # key column that shards tiles (key_bucket) and aligns the bucketed join
    granularities: tuple[Duration, ...]  # largest first
    key_buckets: int
    bucket: BucketBy | None = None  # every feature of the group is a map by this column

    @property
    def finest(self) -> Duration:
        return self.granularities[-1]


@dataclass(frozen=True, slots=True)
class TileGroup:
    layout: TileLayout
    features: tuple[BaseFeature, ...]


@dataclass(frozen=True, slots=True)
class SpecPlan:
    spec: FeatureSpec
    groups: tuple[TileGroup, ...]
    hash: str  # the spec version: changes whenever stored tiles would differ

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def features(self) -> tuple[BaseFeature, ...]:
        return tuple(f for g in self.groups for f in g.features)

    @property
    def outputs(self) -> tuple[OutputFeature, ...]:
        return tuple(o for f in self.features for o in f.outputs)


@dataclass(frozen=True)
class DerivedFeature:
    name: str
    expression: Expression

    @property
    def type(self) -> pa.DataType:
        return self.expression.type


@dataclass(frozen=True)
class ServicePlan:
    name: str
    outputs: tuple[OutputFeature, ...]  # the features it names, resolved, in order
    derived: tuple[DerivedFeature, ...]  # in definition order (later ones may read earlier)
    entities: Mapping[str, str]  # spec entity -> the name requests and rows give it
    requests: Mapping[str, Kind]  # request input -> type
    version: str
    definition: ServiceDef

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Every column the service gives: its features, then the derived ones."""
        return (*(o.name for o in self.outputs), *(d.name for d in self.derived))


@dataclass(frozen=True, slots=True)
class Plan:
    specs: tuple[SpecPlan, ...]
    services: tuple[ServicePlan, ...] = ()

    def spec(self, name: str) -> SpecPlan | None:
        return next((s for s in self.specs if s.name == name), None)

    def service(self, name: str) -> ServicePlan | None:
        return next((s for s in self.services if s.name == name), None)
