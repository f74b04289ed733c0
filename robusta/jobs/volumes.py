"""Event volumes written by the jobs: which sources are monitored, and the stream's counts.

``robusta materialize`` has its engine count the monitored sources it reads
(``TileEngine.record_volumes``: a range's buckets replaced); ``robusta stream`` adds each
micro-batch's counts once, as a Spark query of its own per source (:func:`stream_volumes`) or
polled on the embedded engine (:class:`EmbeddedVolumes`). The table: ``store.volumes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robusta.engine.embedded.volumes import count_events
from robusta.plan.model import SpecPlan
from robusta.spec.model import OfflineConfig, ProjectConfig, SourceConfig
from robusta.store.volumes import add_volumes, monitor_of, volume_rows


def monitored_sources(
    sources: Mapping[str, SourceConfig], plans: Sequence[SpecPlan]
) -> list[SourceConfig]:
    """The sources with a monitor section that ``plans`` read, each once."""
    names = dict.fromkeys(name for plan in plans for name in plan.spec.sources)
    found = [sources.get(name) for name in names]
    return [s for s in found if s is not None and s.monitor is not None]


def stream_volumes(
    spark: Any,
    config: ProjectConfig,
    source: SourceConfig,
    checkpoint: str,
    trigger: str | None,
    available_now: bool,
) -> Any:
    """Start a streaming query adding ``source``'s micro-batch counts to the volumes table."""
    from robusta.engine.spark.sources import read_stream

    writer = (
        read_stream(spark, config, source.name)
        .writeStream.queryName(f"robusta_volumes_{source.name}")
        .option("checkpointLocation", checkpoint)
        .foreachBatch(VolumeBatches(config.offline, source, checkpoint))
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    elif trigger is not None:
        writer = writer.trigger(processingTime=trigger)
    return writer.start()


@dataclass(frozen=True)
class VolumeBatches:
    """The ``foreachBatch`` function of :func:`stream_volumes` (picklable: no Spark state)."""

    offline: OfflineConfig
    source: SourceConfig
    stream: str  # the checkpoint: names the stream across restarts

    def __call__(self, batch: Any, batch_id: int) -> None:
        from robusta.engine.spark.volumes import count_sql

        size = monitor_of(self.source).granularity.micros
        view = f"__robusta_volumes_{self.source.name}"
        batch.createOrReplaceTempView(view)
        try:
            counts = batch.sparkSession.sql(count_sql(self.source, None, None, view)).toArrow()
        finally:
            batch.sparkSession.catalog.dropTempView(view)
        rows = volume_rows(self.source.name, counts, size)
        add_volumes(self.offline, self.source.name, rows, f"{self.stream}:{batch_id}")


class EmbeddedVolumes:
    """A monitored source's stream on the embedded engine: each :meth:`step` adds the counts
    of one micro-batch of its landing folder (``engine.embedded.streaming.FileBatches``
    in ``folder``), once."""

    def __init__(self, config: ProjectConfig, source: SourceConfig, folder: Path) -> None:
        from robusta.engine.embedded.streaming import FileBatches, stream_sources

        self.offline = config.offline
        (self.source,) = stream_sources(config, [source.name])
        self.stream = str(folder)
        self.batches = FileBatches(folder / "embedded", [self.source])

    def landed(self) -> dict[str, set[str]]:
        return self.batches.landed()

    def step(self, among: dict[str, set[str]] | None) -> bool:
        """Add one batch's counts; False when there was none."""
        from robusta.engine.embedded.sql import connect, monitor_sql, register_sources
        from robusta.engine.embedded.streaming import batch_source

        monitor = self.source.monitor
        batch = self.batches.next(among)
        if batch is None or monitor is None:
            return False
        con = connect()
        try:
            register_sources(con, [batch_source(self.source)], batch.files)
            rows = con.sql(monitor_sql(self.source)).to_arrow_table()
        finally:
            con.close()
        counts, _, _ = count_events(rows, monitor, None, None)
        volumes = volume_rows(self.source.name, counts, monitor.granularity.micros)
        add_volumes(self.offline, self.source.name, volumes, f"{self.stream}:{batch.id}")
        self.batches.commit(batch)
        return True
