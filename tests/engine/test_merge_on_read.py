"""Merge on read: a feature added to a materialized spec computes only its IR columns, as new
files; backfills and lookups merge them; compaction changes no value."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from robusta.api.training import get_training_frame
from robusta.cli.main import main
from robusta.demo.datagen import GeneratorConfig, generate_events, write_events
from robusta.jobs.materialize import compact, materialize
from robusta.jobs.upload import upload
from robusta.serving import FeatureClient
from robusta.spec.durations import from_micros
from robusta.store.files import normal
from robusta.store.online import open_online_store
from robusta.store.tiles import TileTables
from robusta.testing.compare import assert_matches_reference, bits
from robusta.workspace import load_workspace
from tests.engine.test_backfill import reference_cases, training_rows
from tests.engine.test_materialize import config_text
from tests.store.test_online_contract import online_config

pytestmark = [pytest.mark.spark, pytest.mark.long]

MIN = 60_000_000
GMIN = 5 * MIN
SPEC = """\
name: activity
owner: tests
query: SELECT user_id, channel_id, item_id, dwell_seconds, event_ts FROM events
timestamp: event_ts
granularities: [1d, 1h, 5m]
features:
  n_events: {op: count, windows: [1h, lifetime], group_by_selectors: {user_id: USER_ID}}
  dwell_sum: {op: sum, input: dwell_seconds, windows: [1d], group_by_selectors: {user_id: USER_ID}}
  pair_n: {op: count, windows: [1d], group_by_selectors: {user_id: USER_ID, channel_id: CHANNEL_ID}, primary_selector: user_id}
"""  # noqa: E501
ADDED = """\
  dwell_max: {op: max, input: dwell_seconds, windows: [1h, 1d], group_by_selectors: {user_id: USER_ID}}
  recent_items: {op: last_n, input: item_id, params: {n: 3}, windows: [1d, lifetime], group_by_selectors: {user_id: USER_ID}}
"""  # noqa: E501


def data_files(tables: TileTables, name: str) -> dict[str, list[str]]:
    table = tables.load(name)
    assert table is not None
    paths = [normal(f.file_path) for f in tables.overlapping_files(table, None, None)]
    return {p: pq.read_schema(p).names for p in paths}


def test_an_added_feature_writes_only_its_columns_and_compaction_changes_nothing(
    spark: Any, tmp_path: Path
) -> None:
    events = generate_events(GeneratorConfig(seed=11, days=3, events_per_day=900, users=40))
    write_events(events, tmp_path / "data", "parquet")
    (tmp_path / "feature_defs").mkdir()
    spec_file = tmp_path / "feature_defs" / "activity.yaml"
    spec_file.write_text(SPEC)
    # 32 key buckets for 40 users: the ranged rerun below leaves partitions (buckets without
    # events that day) whose column sets only compaction folds.
    text = config_text(f"sqlite:///{tmp_path / 'catalog.db'}")
    text = text.replace("  warehouse: warehouse\n", "  warehouse: warehouse\n  key_buckets: 32\n")
    (tmp_path / "robusta.yaml").write_text(text)
    workspace = load_workspace(tmp_path / "robusta.yaml").require_valid()
    materialize(workspace)
    config = workspace.project.config
    assert config is not None
    tables = TileTables(config.offline)
    before = data_files(tables, "activity__by_user_id")
    rows = training_rows(events, count=120).to_pandas()
    old = get_training_frame(rows, None, workspace=workspace, version_column="served_at")
    old_rows = old.toArrow()

    spec_file.write_text(SPEC + ADDED)
    workspace = load_workspace(tmp_path / "robusta.yaml").require_valid()
    reports = {r.table.split(".")[-1]: r for r in materialize(workspace)}
    assert reports["activity__by_user_id"].added_columns == ["dwell_max", "recent_items"]
    after = data_files(tables, "activity__by_user_id")
    assert set(before) < set(after)  # nothing rewritten, files added
    for path in set(after) - set(before):
        assert "dwell_max" in after[path] and "recent_items" in after[path]
        assert "n_events" not in after[path] and "dwell_sum" not in after[path]

    merged = get_training_frame(
        rows, None, workspace=workspace, version_column="served_at"
    ).toArrow()
    for name in old_rows.column_names:  # the old features are untouched
        assert [bits(v) for v in merged.column(name).to_pylist()] == [
            bits(v) for v in old_rows.column(name).to_pylist()
        ], name
    check_added_features(workspace, events, pa.Table.from_pandas(rows), merged)
    last = max(pc.cast(events.column("event_ts"), pa.int64()).drop_null().to_pylist())
    at = from_micros(last)
    served = lookups(workspace, tmp_path / "online-1", at)  # the pair group's table is fresh

    # A ranged rerun after the addition rewrites whole partitions, every column set at once.
    day = from_micros(last - last % (1440 * MIN)).replace(tzinfo=None)
    materialize(workspace, start=day, end=day + timedelta(days=1))
    ranged = get_training_frame(
        rows, None, workspace=workspace, version_column="served_at"
    ).toArrow()
    for name in merged.column_names:
        assert [bits(v) for v in ranged.column(name).to_pylist()] == [
            bits(v) for v in merged.column(name).to_pylist()
        ], name
    after = data_files(tables, "activity__by_user_id")

    result = CliRunner().invoke(main, ["compact", "--config", str(tmp_path / "robusta.yaml")])
    assert result.exit_code == 0, result.output
    compacted = data_files(tables, "activity__by_user_id")
    assert not set(compacted) & set(after)
    assert all("dwell_max" in names and "n_events" in names for names in compacted.values())
    again = get_training_frame(rows, None, workspace=workspace, version_column="served_at")
    again_rows = again.toArrow()
    for name in merged.column_names:
        assert [bits(v) for v in again_rows.column(name).to_pylist()] == [
            bits(v) for v in merged.column(name).to_pylist()
        ], name
    assert lookups(workspace, tmp_path / "online-2", at) == served
    assert compact(workspace)[0].snapshot_id is None  # already compact: no commit


def check_added_features(workspace: Any, events: pa.Table, rows: pa.Table, got: pa.Table) -> None:
    (plan,) = workspace.plan.specs
    checked = 0
    added = ("dwell_max", "recent_items")
    for op, value, inside in reference_cases(plan, events, rows, got, added):
        if inside is None:
            continue
        assert_matches_reference(op, value, inside)
        checked += 1
    assert checked > 300


def lookups(workspace: Any, folder: Path, at: Any) -> list[Any]:
    with open_online_store(online_config("embedded", folder), "test", create=True) as store:
        upload(workspace, at=at, store=store)
        client = FeatureClient(workspace, store)
        users = ["u_000001", "u_000002", "u_000003", "nobody"]
        vectors = client.get_features([{"USER_ID": u} for u in users], None, at=at)
        assert vectors[0].values["recent_items_lifetime"]  # the added columns are served
        return [bits(v.values) for v in vectors]
