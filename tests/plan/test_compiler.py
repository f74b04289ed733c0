"""The compiled plan: outputs, IR types, tile groups and versions."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from click.testing import CliRunner

from robusta.cli.main import main
from robusta.ops import OPERATORS
from robusta.plan.keys import key_bucket, spark_key_bucket
from robusta.workspace import load_workspace
from tests.conftest import SPEC, MakeProject

REPO = Path(__file__).resolve().parents[2]


def test_outputs_types_and_versions(make_project: MakeProject) -> None:
    workspace = load_workspace(make_project()).require_valid()
    (spec,) = workspace.plan.specs
    (feature,) = spec.features
    assert [o.name for o in feature.outputs] == ["spend_1h", "spend_7d"]
    assert feature.ir_type == pa.float64()
    (group,) = spec.groups
    assert group.layout.table == "purchases__by_user_id" and group.layout.primary == "user_id"
    assert [g.name for g in group.layout.granularities] == ["1d", "1h", "5m"]

    # Windows change assembly only: same version. An op change makes new tiles: new version.
    more_windows = SPEC.replace("windows: [1h, 7d]", "windows: [1h, 7d, 30d]")
    same = load_workspace(make_project(purchases=more_windows)).plan.specs[0]
    assert same.hash == spec.hash
    other_op = SPEC.replace("op: sum", "op: max")
    assert load_workspace(make_project(purchases=other_op)).plan.specs[0].hash != spec.hash


def test_integer_sum_keeps_integers(make_project: MakeProject) -> None:
    text = SPEC.replace("input: amount", "input: qty")
    feature = load_workspace(make_project(purchases=text)).plan.specs[0].features[0]
    assert feature.ir_type == pa.int64()


def test_composite_keys_form_their_own_tile_group(make_project: MakeProject) -> None:
    text = (
        SPEC
        + """\
  pair_count:
    op: count
    windows: [1d]
    group_by_selectors: {user_id: USER_ID, item_id: ITEM_ID}
    primary_selector: user_id
"""
    )
    spec = load_workspace(make_project(purchases=text)).require_valid().plan.specs[0]
    tables = sorted(g.layout.table for g in spec.groups)
    assert tables == ["purchases__by_item_id__user_id", "purchases__by_user_id"]


def test_examples_cover_every_operator_and_a_composite_key() -> None:
    ops: set[str] = set()
    composite = False
    for config in (REPO / "robusta.yaml", REPO / "examples" / "retail" / "robusta.yaml"):
        workspace = load_workspace(config)
        assert workspace.ok, workspace.problems
        for spec in workspace.plan.specs:
            ops |= {f.op.name for f in spec.features}
            composite |= any(len(g.layout.keys) > 1 for g in spec.groups)
    assert ops == set(OPERATORS)
    assert composite


def test_key_bucket_is_stable_and_spark_expressible() -> None:
    # Stored tiles depend on this hash: pin it to CRC-32's published check value.
    assert key_bucket("123456789", 1 << 32) == 0xCBF43926
    assert key_bucket("123456789", 32) == 0xCBF43926 % 32
    assert key_bucket(17850, 32) == key_bucket("17850", 32)
    assert spark_key_bucket("customer_id", 32) == (
        "CAST(pmod(crc32(CAST(customer_id AS STRING)), 32) AS INT)"
    )


def test_plan_json(make_project: MakeProject) -> None:
    result = CliRunner().invoke(main, ["plan", "--json", "--config", str(make_project())])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    (group,) = payload["specs"][0]["tile_groups"]
    assert group["features"][0]["outputs"][1] == {
        "name": "spend_7d",
        "window": "7d",
        "type": "double",
    }


def test_plan_refuses_invalid_project(make_project: MakeProject) -> None:
    config = make_project(purchases=SPEC.replace("op: sum", "op: nope"))
    result = CliRunner().invoke(main, ["plan", "--config", str(config)])
    assert result.exit_code == 1
    assert 'unknown op "nope"' in result.output


def test_version_ignores_comments_and_explicit_defaults(make_project: MakeProject) -> None:
    base = load_workspace(make_project()).plan.specs[0].hash
    commented = SPEC.replace("  FROM events", "  -- where the events come from\n  FROM events")
    assert load_workspace(make_project(purchases=commented)).plan.specs[0].hash == base
    last_n = SPEC.replace("op: sum", "op: last_n")
    implicit = load_workspace(make_project(purchases=last_n)).plan.specs[0].hash
    explicit = last_n.replace("op: last_n", "op: last_n\n    params: {n: 5}")
    assert load_workspace(make_project(purchases=explicit)).plan.specs[0].hash == implicit
    renamed = SPEC.replace("  spend:", "  spent:")  # a new IR column: new tiles
    assert load_workspace(make_project(purchases=renamed)).plan.specs[0].hash != base


def test_parquet_schema_is_read_from_files(make_project: MakeProject, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    pq.write_table(
        pa.table(
            {
                "user_id": ["u"],
                "qty": pa.array([1], pa.int32()),
                "ts": pa.array([0], pa.timestamp("us", tz="UTC")),
            }
        ),
        tmp_path / "data" / "part.parquet",
    )
    config = CONFIG_PARQUET
    text = SPEC.replace("SELECT user_id, item_id, amount, qty, ts", "SELECT *").replace(
        "input: amount", "input: qty"
    )
    workspace = load_workspace(make_project(config=config, purchases=text)).require_valid()
    feature = workspace.plan.specs[0].features[0]
    assert feature.input_type.value == "int" and feature.ir_type == pa.int64()


def test_unknown_input_type_is_a_problem(make_project: MakeProject) -> None:
    workspace = load_workspace(make_project(config=CONFIG_PARQUET))  # no files yet: no schema
    (problem,) = workspace.problems
    assert 'cannot tell the type of input "amount"' in problem.message


CONFIG_PARQUET = """\
project: test
sources:
  events: {format: parquet, path: data}
entities:
  USER_ID: {type: string}
"""
