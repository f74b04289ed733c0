"""materialize records event volumes; robusta monitor flags a segment cut to zero."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from robusta.cli.main import main
from robusta.demo.datagen import GeneratorConfig, generate_events, write_events
from robusta.jobs.materialize import materialize
from robusta.store.volumes import TOTAL
from robusta.workspace import load_workspace
from tests.engine.test_materialize import config_text

SPEC = """\
name: sessions
owner: tests
query: SELECT user_id, event_ts FROM events
timestamp: event_ts
features:
  n: {op: count, windows: [1d], group_by_selectors: {user_id: USER_ID}}
"""
MONITOR = """\
    monitor: {timestamp: event_ts, segments: [country, device], granularity: 1d}
"""


@pytest.mark.spark
def test_a_country_cut_to_zero_is_flagged_while_the_total_looks_normal(
    spark: Any, tmp_path: Path
) -> None:
    events = generate_events(
        GeneratorConfig(seed=5, days=9, events_per_day=1200, users=300, late_rate=0.0)
    )
    day = pc.floor_temporal(events.column("event_ts"), unit="day")
    last = pc.max(day)
    cut = pc.and_(pc.equal(day, last), pc.equal(events.column("country"), "GB"))
    events = events.filter(pc.invert(pc.fill_null(cut, False)))
    write_events(events, tmp_path / "data", "parquet")
    (tmp_path / "feature_defs").mkdir()
    (tmp_path / "feature_defs" / "sessions.yaml").write_text(SPEC)
    text = config_text(f"sqlite:///{tmp_path / 'catalog.db'}")
    text = text.replace('    schema: "', MONITOR + '    schema: "', 1)
    (tmp_path / "robusta.yaml").write_text(text)
    workspace = load_workspace(tmp_path / "robusta.yaml").require_valid()
    materialize(workspace)
    config = str(tmp_path / "robusta.yaml")
    result = CliRunner().invoke(main, ["monitor", "--config", config, "--json"])
    assert result.exit_code == 1, result.output
    volumes = json.loads(result.output)["volumes"]
    flagged = [(v["segment"], v["value"]) for v in volumes if v["flagged"]]
    assert flagged == [("country", "GB")]
    [total] = [v for v in volumes if v["segment"] == TOTAL]
    assert 0.8 < total["ratio"] < 1.2  # the total looks normal
    # The latest bucket's counts equal the events of that day, per segment value.
    counted = {(v["segment"], v["value"]): v["events"] for v in volumes}
    kept_days = pc.floor_temporal(events.column("event_ts"), unit="day")
    on_last = events.filter(pc.equal(kept_days, last))
    assert counted[(TOTAL, None)] == on_last.num_rows
    devices = pc.value_counts(on_last.column("device")).to_pylist()
    for item in devices:
        assert counted[("device", item["values"] or "(null)")] == item["counts"]
    # A rerun over a range replaces that range's counts (no double counting).
    start = last.as_py().replace(tzinfo=None)
    materialize(workspace, start=start, end=start.replace(day=start.day + 1))
    again = CliRunner().invoke(main, ["monitor", "--config", config, "--json"])
    assert json.loads(again.output)["volumes"] == volumes
    table = CliRunner().invoke(main, ["monitor", "--config", config])
    assert "GB" in table.output and "1 flagged" in table.output
    assert pa.types.is_timestamp(events.schema.field("event_ts").type)
