"""The offline store on object storage: the warehouse on an S3 API server on loopback (moto)
and the catalog on PostgreSQL, configured only in robusta.yaml with pyiceberg's property
names. Materialize, backfill (to an S3 file and to an Iceberg table), upload and a stream
give exactly what the same project gives on local disk, and no warehouse file (tile, Iceberg
metadata, late event, training output) lands on the local disk."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from robusta.api.training import get_training_frame
from robusta.cli.main import main
from robusta.jobs.materialize import materialize
from robusta.jobs.stream import stream, stream_status
from robusta.jobs.upload import upload
from robusta.serving import FeatureClient
from robusta.spec.durations import from_micros
from robusta.store.files import Storage
from robusta.store.tiles import LEASE_SECONDS, TileTables
from robusta.workspace import load_workspace
from tests.engine.test_backfill import training_rows
from tests.engine.test_materialize import make_project
from tests.engine.test_streaming import (
    SMALL_SPEC,
    assert_lookups_equal_reference,
    by_time,
    land,
    streaming_project,
)
from tests.services import S3, postgres_database, s3_server

TABLE = "engagement__by_user_id"
WAREHOUSE_FILES = (".parquet", ".avro", ".metadata.json", ".lease")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server() as server:
        yield server


@pytest.fixture
def catalog_uri() -> Iterator[str]:
    with postgres_database() as uri:
        yield uri


def on_object_storage(root: Path, s3: S3, catalog_uri: str) -> str:
    """Point the project at ``s3`` (warehouse) and ``catalog_uri`` (PostgreSQL): robusta.yaml
    only. The warehouse URI, returned, is unique to the project."""
    config = root / "robusta.yaml"
    text = config.read_text()
    sqlite = f'{{type: sql, uri: "sqlite:///{root / "catalog.db"}"}}'
    assert sqlite in text and "  warehouse: warehouse\n" in text
    warehouse = f"s3://{s3.bucket}/{root.name}/warehouse"
    text = text.replace(sqlite, f'{{type: sql, uri: "{catalog_uri}", {s3.yaml()}}}')
    config.write_text(text.replace("  warehouse: warehouse\n", f"  warehouse: {warehouse}\n"))
    return warehouse


def local_warehouse_files(root: Path) -> list[Path]:
    """Files of a warehouse's kinds on the local disk under ``root``: the raw events, the
    training rows and a stream's checkpoint (the driver's state, not the warehouse) stay."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.name.endswith(WAREHOUSE_FILES)
        and not {"data", "checkpoints"} & set(p.relative_to(root).parts)
        and p.name != "rows.parquet"
    ]


def test_materialize_backfill_and_upload_on_s3_equal_local_disk(
    s3: S3, catalog_uri: str, tmp_path: Path
) -> None:
    remote = make_project(tmp_path / "remote", engine="embedded")
    warehouse = on_object_storage(remote.root, s3, catalog_uri)
    remote.reload()
    local = make_project(tmp_path / "local", engine="embedded")
    rows = training_rows(local.events, 120)
    pq.write_table(rows, remote.root / "rows.parquet")

    config = str(remote.root / "robusta.yaml")
    runner = CliRunner()
    done = runner.invoke(main, ["materialize", "--config", config])
    assert done.exit_code == 0, done.output
    output = f"{warehouse.rsplit('/', 1)[0]}/out/features.parquet"
    for target in (output, "iceberg:training.features"):
        done = runner.invoke(
            main,
            [
                *("backfill", "--config", config, "--input", str(remote.root / "rows.parquet")),
                *("--output", target, "--no-materialize", "--json"),
            ],
        )
        assert done.exit_code == 0, done.output
        assert json.loads(done.output)["output"] == target

    materialize(local.workspace)
    want: pa.Table = get_training_frame(rows, None, workspace=local.workspace)
    storage = TileTables(remote.workspace.config.offline).storage
    assert storage.read_table(output).equals(want)
    catalog = TileTables(remote.workspace.config.offline).catalog
    table = catalog.load_table("training.features")  # its files, as pyarrow reads them
    files = [task.file.file_path for task in table.scan().plan_files()]
    assert pa.concat_tables(storage.read_table(f) for f in files).equals(want)

    upload(remote.workspace)
    upload(local.workspace)
    pairs = rows.select(["USER_ID", "CHANNEL_ID"]).drop_null().to_pylist()
    entities = [dict(p) for p in sorted({tuple(p.items()) for p in pairs})]
    features = [c for c in want.column_names if c not in rows.column_names]
    at = from_micros(int(pc.max(pc.cast(local.events.column("event_ts"), pa.int64())).as_py()))
    lookups = []
    for project in (remote, local):
        with FeatureClient.from_config(project.root / "robusta.yaml") as client:
            lookups.append(client.get_features(entities, features, at))
    assert [v.values for v in lookups[0]] == [v.values for v in lookups[1]]

    keys = s3.keys(f"{remote.root.name}/warehouse/")
    assert any(f"/{TABLE}/runs/" in k and k.endswith(".parquet") for k in keys), keys[:5]
    assert any(k.endswith(".metadata.json") for k in keys)
    assert any(k.startswith(f"{remote.root.name}/out/") for k in s3.keys(remote.root.name))
    assert local_warehouse_files(remote.root) == []


def test_a_dead_runs_folder_on_s3_is_cleaned_once_its_lease_expires(
    s3: S3, catalog_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "leases", engine="embedded")
    on_object_storage(project.root, s3, catalog_uri)
    project.reload()
    materialize(project.workspace)
    tables = TileTables(project.workspace.config.offline)
    table = tables.load(TABLE)
    run = tables.start_run(table)
    tables.storage.write_bytes(f"{run.folder}/part.parquet", b"being written")
    assert run.lease is not None
    run.lease._ended.set()  # the writer dies: nobody renews the lease from now on
    assert tables.clean_orphans(table) == []  # still leased
    later = time.time() + LEASE_SECONDS + 1
    monkeypatch.setattr(time, "time", lambda: later)  # the lease has expired by now
    assert tables.clean_orphans(table) == [run.folder]
    assert not tables.storage.exists(f"{run.folder}/part.parquet")
    assert not tables.storage.exists(run.lease.path)


def test_a_stream_on_s3_commits_tiles_and_late_events_there(
    s3: S3, catalog_uri: str, tmp_path: Path
) -> None:
    root = tmp_path / "stream"
    root.mkdir()
    streaming_project(root, SMALL_SPEC, engine="embedded")
    warehouse = on_object_storage(root, s3, catalog_uri)
    workspace = load_workspace(root / "robusta.yaml").require_valid()
    from robusta.demo.datagen import GeneratorConfig, generate_events

    events = generate_events(
        GeneratorConfig(seed=17, days=2, events_per_day=700, users=30, items=60, channels=4)
    )
    early, middle, recent = by_time(events, 3)
    late = early.slice(0, 40)  # arrive after the pointer passed them
    on_time = pa.concat_tables([early.slice(40), middle])
    land(root / "data", on_time, "part-0")
    stream(workspace, available_now=True)
    land(root / "data", pa.concat_tables([late, recent]), "part-1")
    stream(workspace, available_now=True)
    (status,) = stream_status(workspace)
    valid_late = pc.sum(pc.is_valid(late.column("event_ts"))).as_py()
    assert status.late == valid_late > 0
    storage: Storage = TileTables(workspace.config.offline).storage
    late_files = storage.files(f"{warehouse}/late_events/engagement", ".parquet")
    assert sum(storage.read_table(f).num_rows for f in late_files) == valid_late
    (plan,) = workspace.plan.specs
    (group,) = plan.groups
    assert_lookups_equal_reference(workspace, root, pa.concat_tables([on_time, recent]), group)
    table: Any = TileTables(workspace.config.offline).load(group.layout.table)
    assert table is not None and table.scan().to_arrow().num_rows > 0
    assert local_warehouse_files(root) == []
