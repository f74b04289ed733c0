"""The Spark engine through Spark Connect: a Connect server from the pyspark package runs on
loopback (its own JVM, ``local[2]``), and ``spark.remote`` alone in robusta.yaml points the
jobs at it. As fresh processes, ``robusta materialize``, ``robusta backfill`` (rows read and
the output written by this process, as for a server on another host) and ``robusta upload``
(Redis, written by the server's executors) give the embedded engine's features (exact values
equal, float sums within 1e-9, KLL quantiles aside). A stream is refused with what to do
instead, and a server that is not there is one message, at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from robusta.api.training import get_training_frame
from robusta.jobs.materialize import materialize
from robusta.jobs.upload import upload
from tests.engine.test_backfill import training_rows
from tests.engine.test_cluster import (
    _all_agree,
    _free_port,
    _java_home,
    _robusta,
    _wait_for,
    _with_redis,
    assert_served_alike,
)
from tests.engine.test_materialize import Project, make_project

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Spark Connect server on loopback; yields its ``sc://`` URL."""
    import pyspark

    root = tmp_path_factory.mktemp("connect")
    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1"}
    env["JAVA_HOME"] = _java_home()
    env["PYSPARK_PYTHON"] = sys.executable  # the server's workers: this environment
    port = _free_port()
    log = root / "server.log"
    server = subprocess.Popen(
        [
            str(home / "bin" / "spark-submit"),
            "--class",
            "org.apache.spark.sql.connect.service.SparkConnectServer",
            "--master",
            "local[2]",
            "--conf",
            "spark.connect.grpc.binding.address=127.0.0.1",
            "--conf",
            f"spark.connect.grpc.binding.port={port}",
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            "spark.sql.shuffle.partitions=4",
            "spark-internal",
        ],
        env=env,
        cwd=root,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for(log, "Spark Connect server started", 1, seconds=120)
        yield f"sc://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def _through_connect(project: Project, url: str) -> None:
    config = project.root / "robusta.yaml"
    config.write_text(config.read_text() + f'spark:\n  remote: "{url}"\n')
    project.reload()


@pytest.mark.heavy
def test_jobs_through_spark_connect_equal_the_embedded_engine(
    connect_server: str, tmp_path: Path
) -> None:
    remote = make_project(tmp_path / "remote", engine="spark")
    _with_redis(remote, tmp_path)
    _through_connect(remote, connect_server)
    local = make_project(tmp_path / "local", engine="embedded")
    rows = training_rows(local.events, 120)
    rows = rows.filter(pc.is_valid(rows.column("ts")))
    pq.write_table(rows, tmp_path / "rows.parquet")
    out = tmp_path / "out" / "features"
    for args in (
        ("materialize",),
        ("backfill", "--input", str(tmp_path / "rows.parquet"), "--output", str(out)),
        ("upload", "--json"),
    ):
        done = _robusta(remote, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    uploaded = json.loads(done.stdout)
    assert all(s["executor_tasks"] > 0 for s in uploaded["specs"]), uploaded

    materialize(local.workspace)
    want: pa.Table = get_training_frame(rows, None, workspace=local.workspace)
    got = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("*.parquet")))
    features = [c for c in want.column_names if c not in rows.column_names]
    _all_agree(got.sort_by("label"), want.sort_by("label"), features)

    upload(local.workspace)
    assert_served_alike(remote, local, rows, features)


@pytest.mark.heavy
def test_a_stream_through_spark_connect_says_what_to_do(
    connect_server: str, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "p", engine="spark")
    _through_connect(project, connect_server)
    done = _robusta(project, "stream", "--available-now")
    assert done.returncode != 0
    assert "does not run through Spark Connect" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_connect_server_that_is_not_there_is_one_message_at_once(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", engine="spark")
    _through_connect(project, f"sc://127.0.0.1:{_free_port()}")
    started = time.monotonic()
    done = _robusta(project, "materialize")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "cannot reach the Spark Connect server at 127.0.0.1:" in output
    assert "Traceback" not in output
    assert time.monotonic() - started < 60
