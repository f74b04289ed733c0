"""Derived features on a Spark training frame: the same evaluator as everywhere else
(:func:`robusta.plan.services.derive` over Arrow batches, in ``mapInArrow``), so Spark SQL's
own semantics (ANSI mode, its rounding) never decide a derived value."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from robusta.plan.model import ServicePlan
from robusta.plan.services import derived_columns

_SPARK_TYPES = {
    pa.float64(): "DOUBLE",
    pa.int64(): "BIGINT",
    pa.bool_(): "BOOLEAN",
    pa.string(): "STRING",
}
SERVICE_KEY = "robusta.service"
VERSION_KEY = "robusta.service_version"


def with_derived(frame: Any, services: Sequence[ServicePlan]) -> Any:
    """``frame`` plus every service's derived columns; each service column carries the
    service name and version as column metadata (kept when the frame is written)."""
    from pyspark.sql.types import StructField, StructType, _parse_datatype_string

    derived = [d for s in services for d in s.derived]
    if derived:
        added = [StructField(d.name, _parse_datatype_string(_SPARK_TYPES[d.type])) for d in derived]
        schema = StructType([*frame.schema.fields, *added])  # a copy: .add would mutate
        plans = list(services)

        def batches(parts: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in parts:
                yield _derived_batch(batch, plans)

        frame = frame.mapInArrow(batches, schema)
    for service in services:
        for name in service.feature_names:
            meta = {SERVICE_KEY: service.name, VERSION_KEY: service.version}
            frame = frame.withMetadata(name, meta)
    return frame


def _derived_batch(batch: pa.RecordBatch, services: Sequence[ServicePlan]) -> pa.RecordBatch:
    added = derived_columns(batch, services)
    names = [*batch.schema.names, *(name for name, _ in added)]
    return pa.RecordBatch.from_arrays([*batch.columns, *(v for _, v in added)], names=names)
