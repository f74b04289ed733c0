"""Forward fill on both engines: served vectors logged to Iceberg are training rows as served
(``source="logged"``), and ``robusta consistency`` recomputes them with the PIT join at the
logged pointer: 100% exact on an untouched log, and a logged value corrupted by one ulp is
caught and shown. The embedded half needs no JVM (the command runs with a Java that does not
exist and never imports pyspark); the Spark half reads the same log and gives the same rows
and the same report.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from robusta.api.consistency import ConsistencyReport, consistency
from robusta.api.logged import NoLogError, log_files
from robusta.api.training import get_training_frame
from robusta.jobs.upload import upload
from robusta.serving import FeatureClient, FeatureVector
from robusta.serving.feature_log import FeatureLog
from robusta.spec.durations import from_micros
from robusta.store.feature_log import REQUEST_ID, REQUESTED
from robusta.store.files import normal
from robusta.store.online import open_online_store
from robusta.testing.compare import bits
from tests.engine.test_serving import Served, lookups, serving_project
from tests.store.test_online_contract import online_config

ENGINES = ["embedded", pytest.param("spark", marks=pytest.mark.spark)]
SINGLES, BATCH = 40, 20  # lookups of one entity each, and one batch lookup
CORRUPTED = "dwell_avg_1d"  # a float feature: one ulp off must be caught


@dataclass
class Logged:
    served: Served
    asked: list[tuple[dict[str, object], int]]  # the single lookups' (entity, time)
    singles: list[FeatureVector]
    batch: list[FeatureVector]  # looked up now: after every single lookup

    @property
    def spec(self) -> Any:
        return self.served.workspace.plan.spec("engagement")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """Tiles of the embedded engine (both engines read them), uploaded as of a time inside
    the data, and 60 lookups logged (rows of both tile groups)."""
    root = tmp_path_factory.mktemp("logged")
    served = serving_project(root, "embedded")
    config = served.workspace.project.config
    assert config is not None
    store = open_online_store(online_config("embedded", root), "test", create=True)
    upload(served.workspace, at=from_micros(served.at), store=store)
    log = FeatureLog(config.offline, flush_seconds=0.2)
    client = FeatureClient(served.workspace, store, log=log)  # closes the store too
    asked = lookups(served, SINGLES)
    singles = [client.get_features([e], None, at=from_micros(t))[0] for e, t in asked]
    batch = client.get_features([e for e, _ in asked[:BATCH]], ["engagement"], None)
    client.close()
    stats = log.stats()
    assert stats.logged == 2 * (SINGLES + BATCH) and stats.dropped == 0, stats
    return Logged(served, asked, singles, batch)


def use_engine(request: pytest.FixtureRequest, engine: str) -> None:
    if engine == "spark":  # one session per run; skips without Java
        # The PIT join keeps its rows cached, found again by plan: a log file corrupted in
        # place (data files are immutable otherwise) would be read from that cache.
        request.getfixturevalue("spark").catalog.clearCache()


def frame_rows(frame: Any) -> list[dict[str, Any]]:
    """A logged frame's rows by request id, floats by their bits, times as epoch micros."""
    table = frame if isinstance(frame, pa.Table) else frame.toArrow()
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            table = table.set_column(i, field.name, pc.cast(table.column(i), pa.int64()))
    return sorted((bits(r) for r in table.to_pylist()), key=lambda r: r[REQUEST_ID])


@pytest.mark.parametrize("engine", ENGINES)
def test_logged_rows_are_the_served_vectors(
    logged: Logged, engine: str, request: pytest.FixtureRequest
) -> None:
    """One row per request and entity with every feature of both groups as served, bit for
    bit; ``since`` keeps the requests from that time on (here the batch only)."""
    use_engine(request, engine)
    outputs = [o.name for o in logged.spec.outputs]
    workspace = logged.served.workspace
    frame = get_training_frame(None, ["engagement"], workspace=workspace, source="logged",
                               engine=engine)
    assert isinstance(frame, pa.Table) == (engine == "embedded")
    rows = frame_rows(frame)
    assert list(rows[0]) == [REQUEST_ID, "USER_ID", "CHANNEL_ID", "ts", "version_pointer",
                             *outputs]

    def vector(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["USER_ID"], r["CHANNEL_ID"], *(repr(r[o]) for o in outputs))

    def want(vectors: list[FeatureVector], entities: list[dict[str, object]]) -> list[Any]:
        return sorted(
            (e["USER_ID"], e["CHANNEL_ID"], *(repr(bits(v.values[o])) for o in outputs))
            for v, e in zip(vectors, entities, strict=True)
        )

    entities = [e for e, _ in logged.asked]
    everything = want([*logged.singles, *logged.batch], [*entities, *entities[:BATCH]])
    assert sorted(map(vector, rows)) == everything
    late = from_micros(max(t for _, t in logged.asked) + 1)
    recent = get_training_frame(None, ["engagement"], workspace=workspace, source="logged",
                                since=late, engine=engine)
    assert sorted(map(vector, frame_rows(recent))) == want(logged.batch, entities[:BATCH])


@pytest.mark.spark
def test_both_engines_read_the_same_logged_rows_and_report_the_same(
    logged: Logged, spark: Any
) -> None:
    """The Arrow reader equals Spark's, column for column and bit for bit, with a subset of
    features and with ``since``; on a corrupted log both engines give the same report."""
    workspace = logged.served.workspace
    with corrupted(logged):
        arrow_report = consistency(workspace, engine="embedded").to_json()
        spark.catalog.clearCache()  # see use_engine
        assert consistency(workspace, engine="spark").to_json() == arrow_report
    spark.catalog.clearCache()
    since = from_micros(logged.served.at)
    for features, start in ((None, None), (["n_events_1d", "pair_events_1h"], since)):
        frames = [
            get_training_frame(None, features, workspace=workspace, source="logged",
                               since=start, engine=engine)
            for engine in ("embedded", "spark")
        ]
        arrow, spark_rows = map(frame_rows, frames)
        assert arrow == spark_rows and len(arrow) > 0


def assert_consistent(report: ConsistencyReport, outputs: list[str]) -> None:
    wrong = [(f.feature, f.rows - f.matched, f.examples[:2]) for f in report.features]
    assert report.ok and report.rows == 2 * (SINGLES + BATCH), [w for w in wrong if w[1]]
    assert report.defaults == 0
    assert sorted(f.feature for f in report.features) == sorted(outputs)
    assert all(f.matched == f.rows > 0 for f in report.features), report.to_json()


@pytest.mark.parametrize("engine", ENGINES)
def test_consistency_passes_on_an_untouched_log(
    logged: Logged, engine: str, request: pytest.FixtureRequest
) -> None:
    use_engine(request, engine)
    report = consistency(logged.served.workspace, engine=engine)
    assert_consistent(report, [o.name for o in logged.spec.outputs])
    # Rows of one group requested only its features: n_events_1d by every lookup, the
    # pair feature (the other group) by every lookup too, each on its own logged row.
    counts = {f.feature: f.rows for f in report.features}
    assert counts["n_events_1d"] == counts["pair_events_1h"] == SINGLES + BATCH


@dataclass
class Corruption:
    user: Any
    ts: int
    pointer: int
    original: float
    corrupted: float


@contextlib.contextmanager
def corrupted(logged: Logged) -> Iterator[Corruption]:
    """One logged float value moved by one ulp in its Parquet file, restored afterwards."""
    offline = logged.served.workspace.config.offline
    files = [Path(normal(f)) for f in log_files(offline, logged.spec)]
    for path in files:
        table = pq.read_table(path)
        values = table.column(CORRUPTED).to_pylist()
        asked = [CORRUPTED in (r or []) for r in table.column(REQUESTED).to_pylist()]
        usable = [
            i for i, v in enumerate(values) if asked[i] and v is not None and not math.isnan(v)
        ]
        if usable:
            break
    else:
        raise AssertionError(f"no logged {CORRUPTED} value to corrupt")
    row, original = usable[0], values[usable[0]]
    changed = float(np.nextafter(original, np.inf))
    values[row] = changed
    kept = path.read_bytes()
    index = table.column_names.index(CORRUPTED)
    column = pa.array(values, table.schema.field(CORRUPTED).type)
    pq.write_table(table.set_column(index, table.schema.field(CORRUPTED), column), path)
    picked = table.slice(row, 1)
    ts, pointer = (pc.cast(picked.column(c), pa.int64())[0].as_py()
                   for c in ("ts", "version_pointer"))
    try:
        yield Corruption(picked.column("USER_ID")[0].as_py(), ts, pointer, original, changed)
    finally:
        path.write_bytes(kept)


def assert_caught(found: dict[str, Any], corruption: Corruption) -> None:
    """The report (as JSON) flags one row of the corrupted feature, shown as an example."""
    assert found["ok"] is False
    by_feature = {f["feature"]: f for f in found["features"]}
    bad = by_feature.pop(CORRUPTED)
    assert bad["rows"] - bad["matched"] == 1, bad
    [example] = bad["examples"]
    assert example["served"] == corruption.corrupted
    assert example["recomputed"] == corruption.original
    assert example["USER_ID"] == corruption.user
    assert example["ts"] == from_micros(corruption.ts).replace(tzinfo=None).isoformat()
    assert example["version_pointer"] == (
        from_micros(corruption.pointer).replace(tzinfo=None).isoformat()
    )
    assert all(f["matched"] == f["rows"] for f in by_feature.values())


@pytest.mark.parametrize("engine", ENGINES)
def test_a_corrupted_logged_value_is_caught(
    logged: Logged, engine: str, request: pytest.FixtureRequest
) -> None:
    """One ulp off in one logged float: exactly that row is reported, with its keys, time,
    pointer, the served and the recomputed value; the restored log passes again."""

    def check(max_mismatch: float = 0.0) -> ConsistencyReport:
        use_engine(request, engine)
        return consistency(logged.served.workspace, max_mismatch=max_mismatch, engine=engine)

    with corrupted(logged) as corruption:
        assert_caught(check().to_json(), corruption)
        assert check(max_mismatch=0.1).ok  # 1 row of 60
    assert_consistent(check(), [o.name for o in logged.spec.outputs])


def test_the_consistency_command_needs_no_jvm(logged: Logged) -> None:
    """`robusta consistency --engine embedded` in a process with a Java that does not exist:
    it exits 1 on the corrupted log, reports the row, and never imports pyspark."""
    config = logged.served.root / "robusta.yaml"
    script = textwrap.dedent(f"""\
        import sys
        from click.testing import CliRunner
        from robusta.cli.main import main
        args = ["consistency", "--engine", "embedded", "--json", "--config", "{config}"]
        result = CliRunner().invoke(main, args)
        print(result.exit_code)
        print(result.output.strip().replace("\\n", " "))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("pyspark", "py4j")))
        """)
    env = {**os.environ, "JAVA_HOME": "/nonexistent-java"}
    with corrupted(logged) as corruption:
        done = subprocess.run(
            [sys.executable, "-c", script], check=False, env=env, capture_output=True,
            text=True, timeout=300,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    code, output, modules = done.stdout.strip().splitlines()[-3:]
    assert (code, modules) == ("1", "[]"), output
    assert_caught(json.loads(output[output.index("{"):]), corruption)


def test_a_since_after_every_lookup_finds_nothing_to_compare(logged: Logged) -> None:
    late = datetime.now(UTC) + timedelta(days=1)
    with pytest.raises(NoLogError, match="no logged lookups since"):
        consistency(logged.served.workspace, since=late, engine="embedded")


def test_ranking_requests_are_logged_as_served(tmp_path: Path) -> None:
    """A ranking request logs its rows as lookups do: the user's once, each item's (here
    user x channel pairs) per item, with the values it answered."""
    served = serving_project(tmp_path, "embedded")
    config = served.workspace.project.config
    assert config is not None
    store = open_online_store(online_config("embedded", tmp_path), "test", create=True)
    upload(served.workspace, at=from_micros(served.at), store=store)
    log = FeatureLog(config.offline, flush_seconds=0.2)
    client = FeatureClient(served.workspace, store, log=log)
    user = {"USER_ID": str(lookups(served, 1)[0][0]["USER_ID"])}
    channels = sorted({c for c in served.events.column("channel_id").to_pylist() if c})[:3]
    ranked = client.rank(user, channels, ["n_events_1d", "pair_events_1h"])
    client.close()
    assert log.stats().logged == 2 * len(channels) and log.stats().dropped == 0
    frame = get_training_frame(None, ["engagement"], workspace=served.workspace, source="logged")
    rows = sorted(frame.to_pylist(), key=lambda r: str(r["CHANNEL_ID"]))
    assert [(r["USER_ID"], r["CHANNEL_ID"]) for r in rows] == [
        (user["USER_ID"], c) for c in channels
    ]
    for name in ("n_events_1d", "pair_events_1h"):
        assert [r[name] for r in rows] == ranked.column(name).to_pylist(), name
