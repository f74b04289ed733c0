"""The engine seam: what the jobs ask of an engine, and how one is chosen.

Two engines implement :class:`TileEngine`: ``embedded`` (DuckDB + Arrow on one machine, no
JVM; ``engine.embedded.job``) and ``spark`` (``engine.spark.job``). Both write the same tile
files (``store.tiles.tile_schema``), which the jobs then commit the same way, so a table
written by one engine is read, extended and compacted by the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from robusta.engine.counts import Range, TileCounts
from robusta.errors import RobustaError
from robusta.plan.model import SpecPlan, TileGroup
from robusta.spec.model import ENGINES, ProjectConfig, SourceConfig
from robusta.spec.suggest import did_you_mean, one_of


class EngineError(RobustaError, ValueError):
    """An engine that does not exist, or a job it cannot run yet."""


class TileEngine(Protocol):
    """Computes tiles and event counts; the jobs commit what it writes."""

    name: str
    # How many tile groups a job may have this engine build at once (from threads): the
    # embedded engine's builds and writes leave a core idle; Spark schedules its own tasks.
    parallel_groups: int

    def write_tiles(
        self,
        plan: SpecPlan,
        group: TileGroup,
        window: Range,
        folder: str,
        carried: Sequence[Any] = (),
    ) -> TileCounts:
        """The group's tiles of the spec's events in ``window`` (every granularity), plus the
        tiles outside it held by the data files ``carried`` (which a commit will replace),
        written as Parquet into ``folder``."""

    def rewrite(self, files: Sequence[Any], group: TileGroup, folder: str) -> None:
        """The tiles of data ``files`` (column sets merged) as whole files into ``folder``."""

    def record_volumes(self, source: SourceConfig, start: int | None, end: int | None) -> None:
        """Count a monitored source's events of ``[start, end)`` into its volumes table."""

    def done_with(self, plan: SpecPlan) -> None:
        """Release what the engine keeps for a spec (its events, cached)."""


def choose_engine(config: ProjectConfig, name: str | None = None) -> str:
    """``name`` (a ``--engine`` option) or the project's ``engine``, checked."""
    chosen = name or config.engine
    if chosen not in ENGINES:
        raise EngineError(
            f'unknown engine "{chosen}"{did_you_mean(chosen, ENGINES)}; engines: {one_of(ENGINES)}'
        )
    return chosen


def open_engine(config: ProjectConfig, name: str | None = None) -> TileEngine:
    """The chosen engine, started (the Spark engine starts a session)."""
    if choose_engine(config, name) == "embedded":
        from robusta.engine.embedded.job import EmbeddedTileEngine

        return EmbeddedTileEngine(config)
    from robusta.engine.spark.job import SparkTileEngine

    return SparkTileEngine(config)
