"""The Spark engine behind the engine seam (``engine.base.TileEngine``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robusta.engine.counts import Range, TileCounts
from robusta.engine.spark.session import spark_session
from robusta.engine.spark.sources import register_sources
from robusta.engine.spark.tiles import TileJob, read_tiles, write_tiles
from robusta.plan.model import SpecPlan, TileGroup
from robusta.spec.model import ProjectConfig, SourceConfig
from robusta.store.catalog import storage_of


class SparkTileEngine:
    name = "spark"
    parallel_groups = 1

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config
        self.spark = spark_session(config.spark)
        self.storage = storage_of(config.offline)
        self._registered: set[str] = set()

    def write_tiles(
        self,
        plan: SpecPlan,
        group: TileGroup,
        window: Range,
        folder: str,
        carried: Sequence[Any] = (),
    ) -> TileCounts:
        if plan.name not in self._registered:
            register_sources(self.spark, self.config, plan.spec.sources)
            self._registered.add(plan.name)
        job = TileJob(self.spark, plan, group, window)
        try:
            tiles = job.tiles()
            if carried:
                tiles = tiles.unionByName(self._outside(carried, window, group))
            write_tiles(tiles, group, self.storage, folder)
            return job.counts(job.tiles())  # the cached tiles: no recomputation
        finally:
            job.release()

    def _outside(self, files: Sequence[Any], window: Range, group: TileGroup) -> Any:
        """Tiles outside ``window`` in data ``files`` (column sets merged)."""
        frame = read_tiles(self.spark, self.storage, [f.file_path for f in files], group)
        inside = (
            f"unix_micros(bucket_start) >= {window.start} "
            f"AND unix_micros(bucket_start) < {window.end}"
        )
        return frame.where(f"NOT ({inside})")

    def rewrite(self, files: Sequence[Any], group: TileGroup, folder: str) -> None:
        tiles = read_tiles(self.spark, self.storage, [f.file_path for f in files], group)
        write_tiles(tiles, group, self.storage, folder)

    def record_volumes(self, source: SourceConfig, start: int | None, end: int | None) -> None:
        from robusta.engine.spark.volumes import record_volumes

        register_sources(self.spark, self.config, [source.name])
        record_volumes(self.spark, self.config.offline, source, start, end)

    def done_with(self, plan: SpecPlan) -> None:
        self.spark.catalog.dropTempView(f"__robusta_events_{plan.name}")  # and its cache
        self._registered.discard(plan.name)
