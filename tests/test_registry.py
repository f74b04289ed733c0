"""The feature registry on the example repository: listing, search, lineage, describe."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from robusta.api import registry
from robusta.cli.main import main
from robusta.workspace import load_workspace

ROOT = Path(__file__).resolve().parents[1]


def test_every_feature_of_every_spec_is_listed() -> None:
    workspace = load_workspace(ROOT / "robusta.yaml").require_valid()
    found = registry.entries(workspace)
    want = {(s.name, f.name) for s in workspace.plan.specs for f in s.features}
    assert {(e.spec, e.name) for e in found} == want
    owners = {e.owner for e in found}
    assert len(owners) >= 3  # several teams side by side


def test_search_filters_by_owner_entity_and_text() -> None:
    workspace = load_workspace(ROOT / "robusta.yaml").require_valid()
    every = registry.entries(workspace)
    by_owner = registry.search(every, owner="CREATOR-GROWTH")
    assert by_owner and {e.owner for e in by_owner} == {"creator-growth"}
    by_entity = registry.search(every, entity="channel_id")
    assert by_entity and all("CHANNEL_ID" in e.entities.values() for e in by_entity)
    assert any(len(e.entities) == 2 for e in by_entity)  # composite keys count too
    by_text = registry.search(every, text="DWELL")
    assert by_text and all(
        "dwell" in (e.name + e.description + e.spec_description + (e.input or "")).lower()
        for e in by_text
    )
    assert registry.search(every, owner="creator-growth", text="no such thing") == []


def test_lineage_follows_expressions_to_source_columns() -> None:
    workspace = load_workspace(ROOT / "robusta.yaml").require_valid()
    entry = registry.find(workspace, "item_views_1d")  # an output name finds its base
    assert entry.name == "item_views"
    traced = {item.role: item for item in registry.lineage(workspace, entry)}
    # is_view = CASE WHEN event_type = 'view' THEN 1 ELSE 0 END
    assert traced["input"].column == "is_view"
    assert traced["input"].sources == ["engagement_events.event_type"]
    assert traced["key"].sources == ["engagement_events.item_id"]
    assert traced["timestamp"].sources == ["engagement_events.event_ts"]


def isolated_config(tmp_path: Path) -> str:
    """The example project with its stores in ``tmp_path`` (describe opens them)."""
    text = (ROOT / "robusta.yaml").read_text()
    text = text.replace("feature_defs: feature_defs", f"feature_defs: {ROOT / 'feature_defs'}")
    text = text.replace("sqlite:///.robusta/catalog.db", f"sqlite:///{tmp_path / 'catalog.db'}")
    text = text.replace("warehouse: .robusta/warehouse", f"warehouse: {tmp_path / 'warehouse'}")
    text = text.replace("path: .robusta/online", f"path: {tmp_path / 'online'}")
    (tmp_path / "robusta.yaml").write_text(text)
    return str(tmp_path / "robusta.yaml")


def test_list_and_describe_commands(tmp_path: Path) -> None:
    config = isolated_config(tmp_path)
    runner = CliRunner()
    listed = runner.invoke(main, ["list", "--config", config, "--entity", "USER_ID", "--json"])
    assert listed.exit_code == 0, listed.output
    names = [f["name"] for f in json.loads(listed.output)["features"]]
    assert "user_dwell_avg" in names and "item_views" not in names
    table = runner.invoke(main, ["list", "--config", config, "--search", "dwell"])
    assert table.exit_code == 0 and "user_dwell_avg" in table.output
    shown = runner.invoke(main, ["describe", "user_dwell_avg_7d", "--config", config, "--json"])
    assert shown.exit_code == 0, shown.output
    payload = json.loads(shown.output)
    assert payload["spec"] == "user_engagement" and payload["op"] == "avg"
    assert payload["defined_at"].endswith(".yaml:" + payload["defined_at"].split(":")[-1])
    assert {item["role"] for item in payload["lineage"]} == {"input", "key", "timestamp"}
    assert payload["freshness"]["materialized_until"] is None  # nothing stored yet
    assert payload["freshness"]["version_pointer"] is None
    assert (tmp_path / "catalog.db").exists()
    view = runner.invoke(main, ["describe", "user_dwell_avg", "--config", config])
    assert view.exit_code == 0 and "lineage" in view.output and "freshness" in view.output
    missing = runner.invoke(main, ["describe", "user_dwel", "--config", config])
    assert missing.exit_code == 2
    assert 'no feature named "user_dwel"' in missing.output and "did you mean" in missing.output
    assert "Traceback" not in missing.output
