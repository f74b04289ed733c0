"""Every kind of bad config or spec gets one clear, located message and exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from robusta.cli.main import main
from robusta.workspace import load_workspace
from tests.conftest import CONFIG, SPEC, MakeProject


def validate(config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["validate", "--config", str(config)])
    return result.exit_code, result.output


def test_valid_project_passes(make_project: MakeProject) -> None:
    code, output = validate(make_project())
    assert code == 0, output
    assert "1 spec(s), 2 output features" in output


# (case id, spec text, expected "line:column" in purchases.yaml, expected message fragment)
SPEC_CASES = [
    (
        "yaml-syntax",
        SPEC.replace("windows: [1h, 7d]", "windows: [1h, 7d"),
        "13:23",
        "YAML syntax error",
    ),
    (
        "unknown-top-key",
        SPEC.replace("owner: growth", "ownr: growth"),
        "2:1",
        'unknown key "ownr" in the spec (did you mean "owner"?)',
    ),
    ("missing-key", SPEC.replace("timestamp: ts\n", ""), "1:1", 'missing required key "timestamp"'),
    (
        "unknown-feature-key",
        SPEC.replace("    primary_selector", "    primary_selectr"),
        "14:5",
        'did you mean "primary_selector"?',
    ),
    (
        "sql-syntax",
        SPEC.replace("  FROM events", "  FROM events WHERE"),
        "5:15",
        'SQL syntax error near "WHERE"',
    ),
    (
        "unknown-source",
        SPEC.replace("  FROM events", "  FROM evnts"),
        "5:8",
        'FROM names unknown source "evnts" (did you mean "events"?)',
    ),
    ("unknown-query-column", SPEC.replace("SELECT user_id,", "SELECT usr_id,"), "4:10", "usr_id"),
    (
        "input-not-a-column",
        SPEC.replace("input: amount", "input: amont"),
        "11:12",
        'input "amont" is not an output column of the query (did you mean "amount"?)',
    ),
    (
        "timestamp-not-a-column",
        SPEC.replace("timestamp: ts", "timestamp: tss"),
        "6:12",
        'timestamp "tss" is not an output column',
    ),
    (
        "timestamp-wrong-type",
        SPEC.replace("timestamp: ts", "timestamp: qty"),
        "6:12",
        'timestamp "qty" is int, expected timestamp',
    ),
    (
        "selector-not-a-column",
        SPEC.replace("{user_id: USER_ID}", "{usr: USER_ID}").replace(
            "primary_selector: user_id", "primary_selector: usr"
        ),
        "13:26",
        'group-by selector "usr" is not an output column',
    ),
    (
        "unknown-op",
        SPEC.replace("op: sum", "op: summ"),
        "10:9",
        'unknown op "summ" (did you mean "sum"?)',
    ),
    (
        "bad-param",
        SPEC.replace("op: sum", "op: last_n\n    params: {n: 0}"),
        "11:14",
        "last_n n: must be between 1 and 10000",
    ),
    (
        "unknown-param",
        SPEC.replace("op: sum", "op: last_n\n    params: {m: 3}"),
        "11:14",
        'last_n has no parameter "m"',
    ),
    (
        "wrong-input-type",
        SPEC.replace("input: amount", "input: item_id"),
        "11:12",
        "sum needs a numeric input, got string",
    ),
    (
        "window-not-multiple",
        SPEC.replace("windows: [1h, 7d]", "windows: [1h, 7m]"),
        "12:19",
        "window 7m is not a whole multiple of the smallest granularity 5m",
    ),
    (
        "window-syntax",
        SPEC.replace("windows: [1h, 7d]", "windows: [1h, 7days]"),
        "12:19",
        '"7days" is not a duration',
    ),
    (
        "granularity-not-dividing",
        SPEC.replace("[1d, 1h, 5m]", "[1d, 1h, 7m]"),
        "7:25",
        "granularity 1h is not a whole multiple of 7m",
    ),
    (
        "undeclared-entity",
        SPEC.replace("{user_id: USER_ID}", "{user_id: USER}"),
        "13:35",
        'entity "USER" is not declared (did you mean "USER_ID"?)',
    ),
    (
        "primary-not-selector",
        SPEC.replace("primary_selector: user_id", "primary_selector: item_id"),
        "14:23",
        'primary_selector "item_id" is not among the group_by_selectors',
    ),
    (
        "duplicate-yaml-key",
        SPEC.replace("owner: growth", "owner: growth\nowner: ads"),
        "3:1",
        'duplicate key "owner"',
    ),
    (
        "not-a-list",
        SPEC.replace("windows: [1h, 7d]", "windows: 7d"),
        "12:14",
        '"windows" must be a list like [a, b], got text',
    ),
    ("needs-input", SPEC.replace("    input: amount\n", ""), "9:3", "needs an input column"),
    (
        "bucket-by-unknown",
        SPEC.replace(
            "primary_selector: user_id\n", "primary_selector: user_id\n    bucket_by: itme_id\n"
        ),
        "15:16",
        'bucket_by "itme_id" is not an output column of the query (did you mean "item_id"?)',
    ),
    (
        "max-buckets-zero",
        SPEC.replace(
            "primary_selector: user_id\n",
            "primary_selector: user_id\n    bucket_by: item_id\n    max_buckets: 0\n",
        ),
        "16:18",
        '"max_buckets" must be a whole number from 1 to 10000, got 0',
    ),
    (
        "key-buckets-zero",
        SPEC.replace("timestamp: ts", "timestamp: ts\nkey_buckets: 0"),
        "7:14",
        '"key_buckets" must be a whole number from 1 to 65536, got 0',
    ),
]


@pytest.mark.parametrize(
    ("case", "spec", "where", "message"), SPEC_CASES, ids=[c[0] for c in SPEC_CASES]
)
def test_bad_spec_is_located(
    make_project: MakeProject, case: str, spec: str, where: str, message: str
) -> None:
    config = make_project(purchases=spec)
    code, output = validate(config)
    assert code == 1, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "purchases.yaml:" in line]
    assert lines, output
    located = f"purchases.yaml:{where}:"
    assert any(located in line and message in line for line in lines), (case, output)


CONFIG_CASES = [
    (
        "cache-size-negative",
        CONFIG + "online: {type: embedded, cache_size: -1}\n",
        "12:38",
        '"cache_size" must be a whole number from 0 to 1048576, got -1',
    ),
    (
        "unknown-config-key",
        CONFIG.replace("feature_defs: feature_defs", "feature_def: feature_defs"),
        "2:1",
        'unknown key "feature_def" in robusta.yaml (did you mean "feature_defs"?)',
    ),
    (
        "unknown-format",
        CONFIG.replace("format: csv", "format: cvs"),
        "5:13",
        'unknown format "cvs" (did you mean "csv"?)',
    ),
    (
        "schema-syntax",
        CONFIG.replace("qty INT,", "qty,"),
        "8:61",
        'column "qty" needs a Spark type',
    ),
    (
        "csv-needs-schema",
        CONFIG.replace(
            '    schema: "user_id STRING, item_id STRING, amount DOUBLE, qty INT, ts TIMESTAMP"\n',
            "",
        ),
        "4:3",
        'needs a "schema"',
    ),
    (
        "bad-entity-type",
        CONFIG.replace("USER_ID: {type: string}", "USER_ID: {type: strng}"),
        "10:19",
        'unknown entity type "strng" (did you mean "string"?)',
    ),
    (
        "bad-serving-mode",
        CONFIG + "online: {type: embedded, modes: {purchases: cached}}\n",
        "12:45",
        'unknown serving mode "cached"',
    ),
    (
        "bad-online-margin",
        CONFIG + "online: {type: redis, margin: 2x}\n",
        "12:31",
        "margin:",
    ),
    (
        "bad-on-unavailable",
        CONFIG + "online: {type: redis, on_unavailable: zero}\n",
        "12:39",
        'on_unavailable must be one of "empty", "error"',
    ),
    (
        "unknown-catalog-type",
        CONFIG + "offline: {catalog: {type: rst, uri: x}}\n",
        "12:27",
        'unknown catalog type "rst" (did you mean "rest"?); types: "bigquery", "dynamodb", '
        '"glue", "hive", "rest", "sql"',
    ),
    (
        "unknown-spark-environment",
        CONFIG + "spark: {environment: packd}\n",
        "12:22",
        'unknown spark environment "packd" (did you mean "packed"?)',
    ),
    (
        "sql-catalog-needs-uri",
        CONFIG + "offline: {catalog: {type: sql}}\n",
        "12:20",
        'a SQL catalog needs a "uri"',
    ),
    (
        "key-buckets-not-whole",
        CONFIG + "offline: {key_buckets: 2.5}\n",
        "12:24",
        '"key_buckets" must be a whole number from 1 to 65536, got 2.5',
    ),
    (
        "join-memory-not-a-size",
        CONFIG + "offline: {join_memory: lots}\n",
        "12:24",
        '"join_memory" must be a size from 1 KiB to 1 TiB (bytes, or a number with KiB, '
        "MiB, GiB, KB, MB or GB), got 'lots'",
    ),
    (
        "retention-not-a-duration",
        CONFIG + "offline: {retention: forever}\n",
        "12:22",
        "retention: ",
    ),
]


@pytest.mark.parametrize(
    ("case", "config_text", "where", "message"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES]
)
def test_bad_config_is_located(
    make_project: MakeProject, case: str, config_text: str, where: str, message: str
) -> None:
    code, output = validate(make_project(config=config_text))
    assert code == 1, output
    assert any(
        f"robusta.yaml:{where}:" in line and message in line for line in output.splitlines()
    ), (case, output)


def test_duplicate_output_feature_across_specs(make_project: MakeProject) -> None:
    other = SPEC.replace("name: purchases", "name: purchases_copy")
    config = make_project(purchases=SPEC, purchases_copy=other)
    code, output = validate(config)
    assert code == 1
    # reported on both definitions, each naming the other file: the new spec shows it
    # whichever file sorts first
    lines = [line for line in output.splitlines() if 'feature "spend_1h"' in line]
    assert len(lines) == 2, output
    assert lines[0].startswith("feature_defs/purchases.yaml:") or "purchases.yaml:" in lines[0]
    assert 'is also defined by "spend" in ' in lines[0] and "purchases_copy.yaml;" in lines[0]
    assert "purchases_copy.yaml:" in lines[1] and lines[1].rstrip().endswith("all specs")
    assert "purchases.yaml;" in lines[1]
    assert 'spec name "purchases_copy"' not in output  # only the clash is reported


def test_all_problems_are_collected(make_project: MakeProject) -> None:
    spec = (
        SPEC.replace("op: sum", "op: summ")
        .replace("[1h, 7d]", "[1h, 7m]")
        .replace("{user_id: USER_ID}", "{user_id: USER}")
    )
    workspace = load_workspace(make_project(purchases=spec))
    messages = " | ".join(p.message for p in workspace.problems)
    assert 'unknown op "summ"' in messages
    assert "window 7m" in messages
    assert 'entity "USER"' in messages


def test_select_star_resolves_from_schema(make_project: MakeProject) -> None:
    spec = SPEC.replace("SELECT user_id, item_id, amount, qty, ts", "SELECT *")
    workspace = load_workspace(make_project(purchases=spec))
    assert workspace.ok, workspace.problems
    columns = [c.name for c in workspace.project.specs[0].columns]
    assert columns == ["user_id", "item_id", "amount", "qty", "ts"]
    bad = load_workspace(make_project(purchases=spec.replace("input: amount", "input: amt")))
    assert any('input "amt"' in p.message for p in bad.problems)


def test_json_output(make_project: MakeProject) -> None:
    config = make_project(purchases=SPEC.replace("op: sum", "op: summ"))
    result = CliRunner().invoke(main, ["validate", "--json", "--config", str(config)])
    assert result.exit_code == 1
    payload = json.loads(result.output)
    assert payload["ok"] is False
    (problem,) = payload["problems"]
    assert problem["line"] == 10 and problem["column"] == 9
    assert problem["file"].endswith("purchases.yaml")


def test_validate_one_file_still_checks_clashes(make_project: MakeProject) -> None:
    other = SPEC.replace("name: purchases", "name: purchases_copy")
    config = make_project(purchases=SPEC, purchases_copy=other)
    spec_file = config.parent / "feature_defs" / "purchases_copy.yaml"
    result = CliRunner().invoke(main, ["validate", str(spec_file), "--config", str(config)])
    assert result.exit_code == 1
    assert "purchases_copy.yaml" in result.output and "also defined" in result.output
    # the file that sorts first, validated alone, shows the clash too (it used not to)
    first = config.parent / "feature_defs" / "purchases.yaml"
    alone = CliRunner().invoke(main, ["validate", str(first), "--config", str(config)])
    assert alone.exit_code == 1
    [line] = [line for line in alone.output.splitlines() if 'spend_1h" is also' in line]
    assert "purchases.yaml:" in line and "purchases_copy.yaml;" in line


def test_missing_config_is_one_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml does not exist" in result.output
    assert "Traceback" not in result.output


NAME_CASES = [
    (
        "null-required-value",
        SPEC.replace("timestamp: ts", "timestamp:"),
        '"timestamp" needs a value',
    ),
    (
        "case-duplicate-feature",
        SPEC + "  Spend:\n    op: count\n    windows: [1d]\n"
        "    group_by_selectors: {user_id: USER_ID}\n",
        "differs from another feature only in case",
    ),
    (
        "duplicate-select",
        SPEC.replace(
            "SELECT user_id, item_id, amount, qty, ts",
            "SELECT user_id, item_id, amount, qty, ts, USER_ID",
        ),
        'two output columns named "USER_ID"',
    ),
    ("reserved-name", SPEC.replace("  spend:", "  events:"), "is also a column of its tile table"),
    (
        "entity-twice",
        SPEC.replace("{user_id: USER_ID}", "{user_id: USER_ID, item_id: USER_ID}"),
        'entity "USER_ID" is already used by another selector',
    ),
    (
        "top-k-capacity",
        SPEC.replace("op: sum", "op: top_k\n    params: {k: 10, capacity: 5}"),
        "capacity (5) must be at least k (10)",
    ),
    ("huge-window", SPEC.replace("[1h, 7d]", "[1h, 99999999d]"), "longer than 36600 days"),
    (
        "bucket-by-double",
        SPEC.replace(
            "primary_selector: user_id\n", "primary_selector: user_id\n    bucket_by: amount\n"
        ),
        'bucket_by "amount" is double, expected',
    ),
    (
        "max-buckets-alone",
        SPEC.replace(
            "primary_selector: user_id\n", "primary_selector: user_id\n    max_buckets: 5\n"
        ),
        "max_buckets bounds a map: add bucket_by: <column>",
    ),
    (
        "yaml-tag",
        SPEC.replace("owner: growth", "owner: !!python/object:os.system x"),
        "unsupported YAML tag",
    ),
]


@pytest.mark.parametrize(("case", "spec", "message"), NAME_CASES, ids=[c[0] for c in NAME_CASES])
def test_more_bad_specs(make_project: MakeProject, case: str, spec: str, message: str) -> None:
    code, output = validate(make_project(purchases=spec))
    assert code == 1, output
    assert message in output, (case, output)


def test_selector_spelling_follows_the_query(make_project: MakeProject) -> None:
    spec = SPEC.replace("{user_id: USER_ID}", "{User_Id: USER_ID}").replace(
        "primary_selector: user_id", "primary_selector: USER_ID"
    )
    workspace = load_workspace(make_project(purchases=spec)).require_valid()
    (group,) = workspace.plan.specs[0].groups
    assert group.layout.primary == "user_id" and group.layout.table == "purchases__by_user_id"


def test_yaml_merge_keys_work(make_project: MakeProject) -> None:
    spec = SPEC.replace("  spend:\n", "  spend: &base\n") + (
        "  top_spend:\n    <<: *base\n    op: max\n"
    )
    workspace = load_workspace(make_project(purchases=spec)).require_valid()
    ops = {f.name: f.op.name for f in workspace.plan.specs[0].features}
    assert ops == {"spend": "sum", "top_spend": "max"}


def test_sql_positions_in_a_folded_query_point_at_the_query(make_project: MakeProject) -> None:
    folded = SPEC.replace("query: |", "query: >").replace("  FROM events", "  FROM evnts")
    code, output = validate(make_project(purchases=folded))
    assert code == 1 and "purchases.yaml:3:8:" in output and 'unknown source "evnts"' in output


def test_unclosed_quote_is_located(make_project: MakeProject) -> None:
    spec = SPEC.replace("  FROM events", "  FROM events WHERE item_id = 'abc")
    code, output = validate(make_project(purchases=spec))
    assert code == 1 and "purchases.yaml:5:" in output and "unclosed quote" in output


def test_key_buckets_come_from_the_spec_else_the_project(make_project: MakeProject) -> None:
    other = SPEC.replace("name: purchases", "name: views").replace("spend:", "views:")
    config = make_project(
        config=CONFIG + "offline: {key_buckets: 4}\n",
        purchases=SPEC.replace("timestamp: ts", "timestamp: ts\nkey_buckets: 64"),
        views=other,
    )
    plan = load_workspace(config).require_valid().plan
    buckets = {s.name: s.groups[0].layout.key_buckets for s in plan.specs}
    assert buckets == {"purchases": 64, "views": 4}
    default = load_workspace(make_project(config=CONFIG)).require_valid().plan
    assert {s.groups[0].layout.key_buckets for s in default.specs} == {8}


@pytest.mark.parametrize(
    ("text", "size"),
    [("512MiB", 512 << 20), ("2 GiB", 2 << 30), ("1.5GB", 1_500_000_000), ("65536", 65536)],
)
def test_join_memory_takes_bytes_or_units(make_project: MakeProject, text: str, size: int) -> None:
    config = make_project(config=CONFIG + f'offline: {{join_memory: "{text}"}}\n')
    assert load_workspace(config).require_valid().config.offline.join_memory == size
    default = load_workspace(make_project(config=CONFIG)).require_valid()
    assert default.config.offline.join_memory == 1 << 30


@pytest.mark.parametrize(
    ("text", "every"),
    [(None, 3_600_000_000), ("30m", 1_800_000_000), ("off", None), ("false", None)],
)
def test_streaming_maintain_takes_a_duration_or_off(
    make_project: MakeProject, text: str | None, every: int | None
) -> None:
    extra = "" if text is None else f"streaming: {{maintain: {text}}}\n"
    config = make_project(config=CONFIG + extra)
    maintain = load_workspace(config).require_valid().config.streaming.maintain
    assert (None if maintain is None else maintain.micros) == every
