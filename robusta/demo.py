"""The end-to-end demo: generate events, validate and plan the specs, preview the tiles.

Later stages (materialize, backfill, upload, lookup, stream) extend :func:`run_demo`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from robusta.datagen import GeneratorConfig, generate_events, write_events
from robusta.errors import RobustaError

if TYPE_CHECKING:
    from robusta.materialize import TableReport
    from robusta.serving import FeatureVector
    from robusta.serving.upload import UploadReport
from robusta.plan.model import Plan, TileGroup
from robusta.plan.windows import TileRef, decompose
from robusta.spec.durations import floor_to, from_micros
from robusta.workspace import Workspace, load_workspace

DEMO_SOURCE = "engagement_events"


class DemoError(RobustaError, RuntimeError):
    """The demo project is not set up as expected."""


@dataclass(frozen=True)
class DataSummary:
    events: int
    files: int
    users: int
    items: int
    first: datetime
    last: datetime
    duplicates: int
    late: int
    null_keys: int
    null_timestamps: int


@dataclass(frozen=True)
class TileEstimate:
    """Tiles a group will write per granularity, counted on the generated events."""

    table: str
    per_granularity: dict[str, int]


@dataclass(frozen=True)
class WindowExample:
    feature: str
    at: datetime
    tiles: list[TileRef]


@dataclass
class DemoResult:
    workspace: Workspace
    data: DataSummary
    estimates: list[TileEstimate] = field(default_factory=list)
    examples: list[WindowExample] = field(default_factory=list)
    materialized: list[TableReport] = field(default_factory=list)
    training: list[dict[str, Any]] = field(default_factory=list)  # sampled PIT rows
    uploaded: UploadReport | None = None
    lookups: list[FeatureVector] = field(default_factory=list)  # online, for a few users
    streamed: list[StreamStep] = field(default_factory=list)  # files landed -> lookups


@dataclass(frozen=True)
class StreamStep:
    """One file replayed into the streaming demo's landing folder, and a lookup after it."""

    events: int
    first: datetime
    last: datetime
    user: str
    feature: str
    value: Any
    pointer: datetime | None


TRAINING_FEATURES = (
    "user_events_1h",
    "user_clicks_1d",
    "user_dwell_avg_7d",
    "user_distinct_items_7d",
    "user_recent_items_1d",
)


Step = Callable[[str], None]


def run_demo(
    config: Path, days: int = 14, step: Step = lambda _: None, *, materialize_tiles: bool = True
) -> DemoResult:
    """Generate the demo events, validate and plan the specs, then materialize their tiles."""
    first = load_workspace(config)
    first.require_valid()  # show the config's own problems before anything else
    target = _demo_folder(first)
    step(f"generating {days} days of engagement events")
    events = generate_events(GeneratorConfig(days=days))
    step(f"writing Parquet files to {target}")
    _clear(target)
    files = write_events(events, target, "parquet", by="day")
    step("validating specs and compiling the plan")
    workspace = load_workspace(config).require_valid()
    step("estimating tiles")
    result = DemoResult(workspace, _summary(events, len(files)))
    result.estimates = _estimates(workspace.plan, events)
    result.examples = _examples(workspace.plan, events)
    if materialize_tiles:
        from robusta.materialize import materialize

        # The demo owns its tables: a changed example spec is simply rebuilt.
        result.materialized = materialize(workspace, rebuild=True, step=step)
        step("building a training frame for sampled rows")
        result.training = _training_rows(workspace, events, step)
        result.uploaded, result.lookups = _lookups(workspace, events, step)
        result.streamed = _stream_replay(workspace, events, step)
    return result


STREAM_SPEC = """\
name: user_activity
owner: demo
description: Streamed engagement per user (robusta stream)
query: |
  SELECT user_id, dwell_seconds, event_ts FROM engagement_events
timestamp: event_ts
granularities: [1d, 1h, 5m]
features:
  user_stream_events:
    op: count
    windows: [1h, 1d]
    group_by_selectors: {user_id: USER_ID}
  user_stream_dwell:
    op: sum
    input: dwell_seconds
    windows: [1d]
    group_by_selectors: {user_id: USER_ID}
"""


def _stream_replay(workspace: Workspace, events: pa.Table, step: Step) -> list[StreamStep]:
    """Replay the last days of events, a file at a time, into a landing folder streamed by a
    small project of its own (``.robusta/demo/stream``), looking the busiest user up after
    each file."""
    import shutil

    import pyarrow.parquet as pq

    from robusta.serving import FeatureClient
    from robusta.streaming import stream

    config = workspace.project.config
    assert config is not None
    root = config.root / ".robusta" / "demo" / "stream"
    shutil.rmtree(root, ignore_errors=True)
    (root / "landing").mkdir(parents=True)
    (root / "feature_defs").mkdir()
    (root / "feature_defs" / "user_activity.yaml").write_text(STREAM_SPEC)
    source = config.sources[DEMO_SOURCE]
    schema = ", ".join(f"{c.name} {c.sql_type}" for c in source.schema or ())
    (root / "robusta.yaml").write_text(
        "project: demo-stream\n"
        f'sources:\n  {DEMO_SOURCE}: {{format: parquet, path: landing, schema: "{schema}"}}\n'
        "entities:\n  USER_ID: {type: string}\n"
        f'spark: {{master: "{config.spark.master}"}}\n'
        "streaming: {checkpoint: checkpoints, watermark: 10m}\n"
    )
    streaming = load_workspace(root / "robusta.yaml").require_valid()
    micros = pc.cast(events.column("event_ts"), pa.int64())
    last = pc.max(micros).as_py()
    recent = events.filter(pc.greater_equal(micros, last - 3 * 86_400_000_000))
    recent = recent.take(pc.sort_indices(recent, [("event_ts", "ascending")]))
    counts = pc.value_counts(recent.column("user_id").drop_null())
    user = pa.Table.from_struct_array(counts).sort_by([("counts", "descending")])["values"][0]
    out = []
    size = -(-recent.num_rows // 2)
    for i in range(2):
        part = recent.slice(i * size, size)
        step(f"streaming: file {i + 1}/2 landed, running `robusta stream --available-now`")
        hidden = root / "landing" / f".part-{i}.parquet"
        pq.write_table(part, hidden, coerce_timestamps="us")
        hidden.rename(root / "landing" / f"part-{i}.parquet")
        stream(streaming, available_now=True)
        with FeatureClient.from_config(root / "robusta.yaml") as client:
            [vector] = client.get_features([{"USER_ID": user.as_py()}], ["user_stream_events_1d"])
        times = part.column("event_ts").drop_null()
        out.append(
            StreamStep(
                events=part.num_rows,
                first=pc.min(times).as_py(),
                last=pc.max(times).as_py(),
                user=str(user.as_py()),
                feature="user_stream_events_1d",
                value=vector.values["user_stream_events_1d"],
                pointer=vector.pointer,
            )
        )
    return out


def _lookups(
    workspace: Workspace, events: pa.Table, step: Step
) -> tuple[UploadReport, list[FeatureVector]]:
    """Upload tiles as of the end of the data, then look a few users up online."""
    from robusta.serving import FeatureClient
    from robusta.serving.upload import upload
    from robusta.store.online import open_online_store

    end = pc.max(events.column("event_ts")).as_py()
    report = upload(workspace, at=end, step=step)
    step("looking users up in the online store")
    counts = pc.value_counts(events.column("user_id").drop_null())
    ranked = pa.Table.from_struct_array(counts).sort_by([("counts", "descending")])
    busiest = ranked.column("values")[:3].to_pylist()
    outputs = {o.name for s in workspace.plan.specs for o in s.outputs}
    features = [f for f in TRAINING_FEATURES if f in outputs]
    entities = [{"USER_ID": user} for user in [*busiest, "nobody"]]
    config = workspace.project.config
    assert config is not None
    store = open_online_store(config.online, config.project)
    with FeatureClient(workspace, store) as client:
        return report, client.get_features(entities, features or None, at=end)


def _training_rows(workspace: Workspace, events: pa.Table, step: Step) -> list[dict[str, Any]]:
    """Features as of sampled (user, time) rows, from the tiles just materialized."""
    import numpy as np

    from robusta.training import get_training_frame

    plan = workspace.plan
    wanted = [
        f for f in TRAINING_FEATURES if any(o.name == f for s in plan.specs for o in s.outputs)
    ]
    if not wanted:
        return []
    rng = np.random.default_rng(5)
    users = events.column("user_id").drop_null()
    times = events.column("event_ts").drop_null()
    picks = rng.integers(0, len(users), 6).tolist()
    at = rng.integers(0, len(times), 6).tolist()
    rows = pa.table(
        {
            "USER_ID": pa.array([users[i].as_py() for i in picks] + ["nobody"]),
            "ts": pa.array([times[i].as_py() for i in at] + [times[at[0]].as_py()]),
        }
    )
    frame = get_training_frame(rows, wanted, workspace=workspace, step=step)
    if isinstance(frame, pa.Table):  # the embedded engine
        return list(frame.to_pylist())
    return [row.asDict() for row in frame.collect()]


def _demo_folder(workspace: Workspace) -> Path:
    """Where the demo may write: its Parquet source, inside the project's .robusta folder."""
    config = workspace.project.config
    assert config is not None
    source = config.sources.get(DEMO_SOURCE)
    if source is None or source.path is None:
        raise DemoError(
            f'the demo needs a source "{DEMO_SOURCE}" with a path in {config.file}; run it '
            "from the repository root, where robusta.yaml defines it"
        )
    own = (config.root / ".robusta").resolve()
    target = source.path.resolve()
    if source.format != "parquet" or own not in target.parents:
        raise DemoError(
            f'the demo writes generated Parquet only inside {own}; source "{DEMO_SOURCE}" is '
            f"{source.format} at {target}, so nothing was written"
        )
    if target.exists() and not target.is_dir():
        raise DemoError(f"{target} is a file; the demo needs a folder there")
    return target


def _clear(folder: Path) -> None:
    if folder.is_dir():
        for old in folder.iterdir():
            if old.is_file() and old.suffix in (".parquet", ".csv", ".json"):
                old.unlink()


def _summary(events: pa.Table, files: int) -> DataSummary:
    ts = events.column("event_ts")
    ids = events.column("event_id")
    late = pc.greater(
        pc.subtract(events.column("ingest_ts"), ts), pa.scalar(60_000_000, pa.duration("us"))
    )
    return DataSummary(
        events=events.num_rows,
        files=files,
        users=pc.count_distinct(events.column("user_id")).as_py(),
        items=pc.count_distinct(events.column("item_id")).as_py(),
        first=pc.min(ts).as_py(),
        last=pc.max(ts).as_py(),
        duplicates=events.num_rows - pc.count_distinct(ids).as_py(),
        late=pc.sum(pc.fill_null(late, False)).as_py() or 0,
        null_keys=events.column("user_id").null_count,
        null_timestamps=ts.null_count,
    )


def _estimates(plan: Plan, events: pa.Table) -> list[TileEstimate]:
    out = []
    micros = pc.cast(events.column("event_ts"), pa.int64())
    for spec in plan.specs:
        for group in spec.groups:
            keys = [k.column for k in group.layout.keys]
            if not all(k in events.column_names for k in keys):
                continue
            out.append(TileEstimate(group.layout.table, _count_tiles(group, events, keys, micros)))
    return out


def _count_tiles(
    group: TileGroup, events: pa.Table, keys: list[str], micros: pa.ChunkedArray
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for granularity in group.layout.granularities:
        size = granularity.micros
        # Event times are after 1970, so integer division floors to the bucket start.
        bucket = pc.multiply(pc.divide(micros, size), size)
        table = pa.table({**{k: events.column(k) for k in keys}, "bucket": bucket})
        table = table.filter(pc.is_valid(table.column("bucket")))
        for k in keys:
            table = table.filter(pc.is_valid(table.column(k)))
        counts[granularity.name] = table.group_by([*keys, "bucket"]).aggregate([]).num_rows
    return counts


def _examples(plan: Plan, events: pa.Table) -> list[WindowExample]:
    last = pc.max(pc.cast(events.column("event_ts"), pa.int64())).as_py()
    at = last - 7 * 3_600_000_000 - 13 * 60_000_000  # an instant off every bucket edge
    out = []
    for spec in plan.specs[:2]:
        for feature in spec.features[:1]:
            window = max(
                (w for w in feature.windows if not w.is_lifetime),
                key=lambda w: w.sort_key,
                default=None,
            )
            if window is None or window.duration is None:
                continue
            sizes = [g.micros for g in spec.spec.granularities]
            end = floor_to(at, sizes[-1])
            tiles = decompose(end - window.duration.micros, end, sizes)
            out.append(WindowExample(f"{feature.name}_{window.name}", from_micros(at), tiles))
    return out
