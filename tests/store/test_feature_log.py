"""The feature log's guarantees without Spark: bounded memory, typed rows, failures counted."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from robusta.serving.feature_log import FeatureLog
from robusta.spec.model import OfflineConfig
from robusta.store.catalog import open_catalog
from robusta.store.feature_log import log_table
from robusta.workspace import load_workspace

ROOT = Path(__file__).resolve().parents[2]


def offline(tmp_path: Path, uri: str | None = None) -> OfflineConfig:
    catalog = {"type": "sql", "uri": uri or f"sqlite:///{tmp_path / 'catalog.db'}"}
    return OfflineConfig(catalog, str(tmp_path / "warehouse"), "logs")


def spec_and_outputs() -> tuple[object, list[str]]:
    spec = load_workspace(ROOT / "robusta.yaml").require_valid().plan.spec("channel_stats")
    assert spec is not None
    return spec, [o.name for o in spec.outputs]


def test_rows_past_the_bound_are_dropped_and_the_rest_written_typed(tmp_path: Path) -> None:
    spec, outputs = spec_and_outputs()
    log = FeatureLog(offline(tmp_path), flush_seconds=3600, max_rows=5)
    row = dict.fromkeys(outputs)  # nulls everywhere: top_k's list stays null, not []
    row["channel_dwell_variance_1d"] = 2.5
    keys = [{"CHANNEL_ID": "c1"}] * 3
    t, pointer = 1_700_000_000_000_000, 1_699_999_800_000_000
    log.record("r1", spec, outputs, keys, t, pointer, [row] * 3)  # type: ignore[arg-type]
    log.record("r2", spec, outputs, keys, t, pointer, [row] * 3)  # type: ignore[arg-type]
    log.record("r3", spec, outputs[:1], keys[:2], t, None, [row] * 2)  # type: ignore[arg-type]
    assert log.stats().pending == 5 and log.stats().dropped == 3
    log.close()
    stats = log.stats()
    assert (stats.logged, stats.dropped, stats.pending, stats.writes) == (5, 3, 0, 1)
    table = open_catalog(offline(tmp_path)).load_table(f"logs.{log_table('channel_stats')}")
    [path] = [task.file.file_path for task in table.scan().plan_files()]
    rows = pq.read_table(path.removeprefix("file://")).to_pylist()
    assert [r["request_id"] for r in rows] == ["r1-0", "r1-1", "r1-2", "r3-0", "r3-1"]
    assert rows[0]["channel_top_items_1d"] is None
    assert rows[0]["channel_dwell_variance_1d"] == 2.5
    assert rows[3]["requested"] == outputs[:1] and rows[3]["version_pointer"] is None
    assert rows[3]["channel_dwell_variance_1d"] is None  # not requested in r3


def test_a_failing_store_is_counted_never_raised(tmp_path: Path) -> None:
    spec, outputs = spec_and_outputs()
    unreachable = "postgresql+psycopg2://nobody@127.0.0.1:1/none"
    log = FeatureLog(offline(tmp_path, unreachable), flush_seconds=3600)
    log.record("r", spec, outputs, [{"CHANNEL_ID": "c"}], 0, 0, [dict.fromkeys(outputs)])  # type: ignore[arg-type]
    log.close()  # flushes; must not raise
    stats = log.stats()
    assert stats.logged == 0 and stats.dropped == 1 and stats.failed_writes == 1
    assert stats.last_error and "catalog" in stats.last_error.lower()


@pytest.mark.parametrize("value", [True, {"flush_seconds": 1, "max_rows": 10}])
def test_log_config_is_read(tmp_path: Path, value: object) -> None:
    import yaml

    text = (ROOT / "robusta.yaml").read_text()
    config = yaml.safe_load(text)
    config["feature_defs"] = str(ROOT / "feature_defs")
    config["online"] = {"type": "embedded", "path": str(tmp_path / "online"), "log": value}
    (tmp_path / "robusta.yaml").write_text(yaml.safe_dump(config))
    workspace = load_workspace(tmp_path / "robusta.yaml").require_valid()
    assert workspace.project.config is not None
    options = workspace.project.config.online.options["log"]
    assert options["enabled"] is True and options["max_rows"] in (100_000, 10)


def test_bad_log_config_is_located(tmp_path: Path) -> None:
    import yaml

    from robusta.errors import ValidationError

    config = yaml.safe_load((ROOT / "robusta.yaml").read_text())
    config["feature_defs"] = str(ROOT / "feature_defs")
    config["online"] = {"type": "embedded", "log": {"max_rows": -1, "flush_every": 2}}
    (tmp_path / "robusta.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValidationError) as caught:
        load_workspace(tmp_path / "robusta.yaml").require_valid()
    messages = [str(p) for p in caught.value.problems]
    assert any("max_rows must be a number above 0" in m for m in messages), messages
    assert any('unknown key "flush_every"' in m for m in messages), messages
    assert all("robusta.yaml:" in m for m in messages)
