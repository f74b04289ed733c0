"""Online = offline: lookups equal backfill rows with the returned version pointer.

The materialize tests' project (every operator, a composite key, hot users, nulls) with
windows [10m, 1h, 1d, lifetime] is materialized once, uploaded to the embedded store and to
Redis as of a time inside the data (so lifetime windows use the uploaded prefix tiles), and
looked up at random keys and times: on 5m/1h/1d boundaries, at event times, after the version
pointer, for hot, unknown and composite keys. Every value must equal, bit for bit, the backfill
of the same (key, time) with the lookup's pointer; backfills are themselves checked against
the reference evaluator in test_backfill.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from robusta.api.training import get_training_frame
from robusta.demo.datagen import GeneratorConfig, generate_events, write_events
from robusta.jobs.materialize import materialize
from robusta.jobs.upload import upload
from robusta.serving import FeatureClient, FeatureVector, LookupRequestError
from robusta.spec.durations import floor_to, from_micros
from robusta.spec.model import OnlineConfig
from robusta.store.online import OnlineStore, OnlineStoreError, open_online_store
from robusta.store.online.base import generation_prefix
from robusta.testing.compare import bits
from robusta.workspace import Workspace, load_workspace
from tests.engine.test_materialize import SPEC, config_text
from tests.store.test_online_contract import online_config

pytestmark = pytest.mark.spark

MIN = 60_000_000
DAY = 1440 * MIN


@dataclass
class Served:
    root: Path
    workspace: Workspace
    events: pa.Table
    at: int  # the upload's time (epoch micros)


def serving_project(root: Path, engine: str = "spark") -> Served:
    """Generated events and the every-operator spec with windows up to lifetime, materialized
    on ``engine``; ``at`` (the time to upload as of) inside the last day, mid-bucket."""
    events = generate_events(
        GeneratorConfig(seed=21, days=4, events_per_day=1500, users=60, items=150, channels=5)
    )
    write_events(events, root / "data", "parquet")
    (root / "feature_defs").mkdir()
    spec = SPEC.replace("windows: [1h]", "windows: [10m, 1h, 1d, lifetime]")
    (root / "feature_defs" / "engagement.yaml").write_text(spec)
    (root / "robusta.yaml").write_text(config_text(f"sqlite:///{root / 'catalog.db'}", engine))
    workspace = load_workspace(root / "robusta.yaml").require_valid()
    materialize(workspace)
    times = pc.cast(events.column("event_ts"), pa.int64()).drop_null()
    at = int(pc.max(times).as_py()) - 7 * 60 * MIN + 123
    return Served(root, workspace, events, at)


@pytest.fixture(scope="module")
def served(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Served:
    return serving_project(tmp_path_factory.mktemp("serving"))


@pytest.fixture(params=["embedded", "redis"])
def store(request: pytest.FixtureRequest, served: Served, tmp_path: Path) -> Iterator[OnlineStore]:
    with open_online_store(online_config(request.param, tmp_path), "test", create=True) as s:
        yield s


def lookups(served: Served, count: int) -> list[tuple[dict[str, object], int]]:
    """(entity, time) pairs the online store can answer (at least a day after its horizon):
    shortly after a recent event of the pair, on 5m/1h boundaries, after the pointer, and for
    hot and unknown users."""
    rng = random.Random(4)
    low = floor_to(served.at, DAY)  # horizon (at - 1d window - 1d margin) + 1d
    recent = served.events.filter(
        pc.greater_equal(pc.cast(served.events.column("event_ts"), pa.int64()), low)
    ).drop_null()
    users = recent.column("user_id").to_pylist()
    hot = max(set(users), key=users.count)
    out = []
    for i in range(count):
        event = recent.slice(rng.randrange(recent.num_rows), 1).to_pylist()[0]
        user, channel = event["user_id"], event["channel_id"]
        t = int(pa.scalar(event["event_ts"]).cast(pa.int64()).as_py())
        kind = i % 6
        if kind == 0:
            t += rng.choice([0, 1, 5 * MIN, 7 * MIN])
        elif kind == 1:
            t = t // (60 * MIN) * 60 * MIN
        elif kind == 2:
            t = served.at + rng.choice([0, 5 * MIN, 3 * 60 * MIN, DAY])  # after the pointer
        elif kind == 3:
            t = t // (5 * MIN) * 5 * MIN + rng.choice([-1, 1])
        elif kind == 4:
            user = rng.choice([hot, "nobody"])
        out.append(({"USER_ID": user, "CHANNEL_ID": channel}, max(t, low)))
    return out


def backfill_rows(
    served: Served, asked: list[tuple[dict[str, object], int]], got: list[FeatureVector]
) -> list[dict[str, Any]]:
    rows = pa.table(
        {
            "USER_ID": pa.array([e["USER_ID"] for e, _ in asked], pa.string()),
            "CHANNEL_ID": pa.array([e["CHANNEL_ID"] for e, _ in asked], pa.string()),
            "ts": pa.array([t for _, t in asked], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "served_at": pa.array([v.pointer for v in got], pa.timestamp("us", tz="UTC")),
        }
    )
    frame = get_training_frame(
        rows.to_pandas(),
        None,
        workspace=served.workspace,
        version_column="served_at",
        materialize_missing=False,
    )
    return list(frame.toArrow().to_pylist())


def test_lookups_equal_backfills_with_the_returned_pointer(
    served: Served, store: OnlineStore
) -> None:
    upload(served.workspace, at=from_micros(served.at), store=store)
    client = FeatureClient(served.workspace, store)
    asked = lookups(served, 60)
    got = [client.get_features([e], None, at=from_micros(t))[0] for e, t in asked]
    pointer = floor_to(served.at, 5 * MIN)
    assert {v.pointer for v in got} == {from_micros(pointer)}
    want = backfill_rows(served, asked, got)
    names = [o.name for s in served.workspace.plan.specs for o in s.outputs]
    assert set(got[0].values) == set(names)
    filled = dict.fromkeys(names, 0)
    for (entity, t), vector, row in zip(asked, got, want, strict=True):
        for name in names:
            assert bits(vector.values[name]) == bits(row[name]), (name, entity, t)
            filled[name] += vector.values[name] not in (None, 0, [])
    empty = sorted(n for n, k in filled.items() if k == 0)
    assert not empty, empty  # no feature is trivially empty


def test_one_batch_equals_single_lookups(served: Served, store: OnlineStore) -> None:
    upload(served.workspace, at=from_micros(served.at), store=store)
    client = FeatureClient(served.workspace, store)
    asked = lookups(served, 30)
    at = from_micros(served.at + DAY)
    batch = client.get_features([e for e, _ in asked], None, at=at)
    singles = [client.get_features([e], None, at=at)[0] for e, _ in asked]
    assert [bits(v.values) for v in batch] == [bits(v.values) for v in singles]


def test_preassembled_values_equal_the_backfill_at_the_pointer(
    served: Served, tmp_path: Path
) -> None:
    config = served.root / "preassembled.yaml"
    text = (served.root / "robusta.yaml").read_text()
    config.write_text(
        text + f"online: {{type: embedded, path: {tmp_path / 'pre'}, "
        "modes: {engagement: preassembled}}\n"
    )
    workspace = load_workspace(config).require_valid()
    upload(workspace, at=from_micros(served.at))
    asked = lookups(served, 20)
    with FeatureClient.from_config(config) as client:
        got = [client.get_features([e], None)[0] for e, _ in asked]
        with pytest.raises(LookupRequestError, match="pre-assembled"):
            client.get_features([asked[0][0]], None, at=from_micros(served.at - DAY))
    pointer = floor_to(served.at, 5 * MIN)
    at_pointer = [(e, pointer) for e, _ in asked]
    want = backfill_rows(served, at_pointer, got)
    for vector, row in zip(got, want, strict=True):
        for name, value in vector.values.items():
            assert bits(value) == bits(row[name]), name


def test_lookups_before_the_horizon_say_to_backfill(served: Served, store: OnlineStore) -> None:
    upload(served.workspace, at=from_micros(served.at), store=store)
    client = FeatureClient(served.workspace, store)
    entity = {"USER_ID": "u", "CHANNEL_ID": "c"}
    too_early = from_micros(served.at) - timedelta(days=3)
    with pytest.raises(LookupRequestError, match="robusta backfill"):
        client.get_features([entity], None, at=too_early)
    with pytest.raises(LookupRequestError, match="CHANNEL_ID"):
        client.get_features([{"USER_ID": "u"}], "engagement", at=from_micros(served.at))


class CrashingStore:
    """Wraps a store; dies (raises) after ``limit`` records, as a killed upload would."""

    def __init__(self, inner: OnlineStore, limit: int) -> None:
        self.inner, self.limit = inner, limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write(self, spec: str, generation: int, records: Any) -> int:
        def until_crash() -> Iterator[Any]:
            for i, record in enumerate(records):
                if i == self.limit:
                    raise KeyboardInterrupt("killed mid-upload")
                yield record

        return self.inner.write(spec, generation, until_crash())


class RacingStore(CrashingStore):
    """Wraps a store; every upload's first write waits until both racers are writing."""

    def __init__(self, inner: OnlineStore, barrier: threading.Barrier) -> None:
        super().__init__(inner, limit=-1)
        self.barrier = barrier

    def write(self, spec: str, generation: int, records: Any) -> int:
        self.barrier.wait(timeout=60)
        return self.inner.write(spec, generation, records)


def test_two_uploads_at_once_leave_one_whole_generation_live(
    served: Served, store: OnlineStore
) -> None:
    """Two uploads of one spec write at the same moment: they write different generations,
    one commits (compare and set) and the other is refused with nothing of it live; the
    lookups then equal those of one upload alone."""
    from robusta.jobs.upload import UploadError

    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def racer(at: int) -> None:
        try:
            racing: Any = RacingStore(store, barrier)
            outcomes.append(upload(served.workspace, at=from_micros(at), store=racing))
        except UploadError as exc:
            outcomes.append(exc)

    earlier = served.at - DAY // 2
    threads = [threading.Thread(target=racer, args=(t,)) for t in (earlier, served.at)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    refused = [o for o in outcomes if isinstance(o, UploadError)]
    assert len(outcomes) == 2 and len(refused) == 1, outcomes
    assert all("another upload of spec engagement" in str(e) for e in refused)
    client = FeatureClient(served.workspace, store)
    entities = [e for e, _ in lookups(served, 12)]
    raced = client.get_features(entities, None)
    live = store.state("engagement")
    assert live is not None
    upload(served.workspace, at=from_micros(live.pointer), store=store)  # the same, alone
    alone = client.get_features(entities, None)
    assert [v.pointer for v in raced] == [v.pointer for v in alone]
    assert [bits(v.values) for v in raced] == [bits(v.values) for v in alone]


def test_a_crash_during_upload_keeps_the_previous_pointer_and_values(
    served: Served, store: OnlineStore
) -> None:
    earlier = served.at - DAY // 2
    upload(served.workspace, at=from_micros(earlier), store=store)
    client = FeatureClient(served.workspace, store)
    entities = [e for e, _ in lookups(served, 12)]
    before = client.get_features(entities, None)
    with pytest.raises(KeyboardInterrupt):
        upload(served.workspace, at=from_micros(served.at), store=CrashingStore(store, 25))  # type: ignore[arg-type]
    after = client.get_features(entities, None)
    assert [v.pointer for v in after] == [from_micros(floor_to(earlier, 5 * MIN))] * len(after)
    assert [bits(v.values) for v in after] == [bits(v.values) for v in before]
    upload(served.workspace, at=from_micros(served.at), store=store)  # the rerun completes
    assert client.get_features(entities[:1], None)[0].pointer == from_micros(
        floor_to(served.at, 5 * MIN)
    )


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """A redis-server of the test's own (append-only file, so a restart keeps the data);
    yields a control taking "stop" or "start"."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary to start and stop")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(tmp_path),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ]
    process: list[subprocess.Popen[bytes]] = []

    def control(action: str) -> None:
        if action == "stop":
            stopped = process.pop()
            stopped.terminate()
            stopped.wait(10)
            return
        process.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    control("start")
    control.port = port  # type: ignore[attr-defined]
    yield control
    for p in process:
        p.terminate()


def test_redis_down_gives_a_clear_error_in_time_and_recovers(
    served: Served, private_redis: Any
) -> None:
    options = {"url": f"redis://127.0.0.1:{private_redis.port}/0", "timeout_ms": 200}
    store = open_online_store(OnlineConfig("redis", options), "test")
    upload(served.workspace, at=from_micros(served.at), store=store)
    client = FeatureClient(served.workspace, store)
    fallback = FeatureClient(served.workspace, store, on_unavailable="empty")
    entities = [e for e, _ in lookups(served, 5)]
    before = client.get_features(entities, None)
    private_redis("stop")
    started = time.monotonic()
    with pytest.raises(OnlineStoreError, match="did not answer within 200 ms"):
        client.get_features(entities, None)
    assert time.monotonic() - started < 2.0  # never a hang
    defaults = fallback.get_features(entities, None)
    assert all(v.pointer is None for v in defaults)
    assert {v.values["n_events_1d"] for v in defaults} == {0}
    user = {"USER_ID": entities[0]["USER_ID"]}
    ranked = fallback.rank(user, ["c1", "c2"], ["n_events_1d", "pair_events_1h"])
    assert json.loads(ranked.schema.metadata[b"robusta.pointers"]) == {"engagement": None}
    assert ranked.column("pair_events_1h").to_pylist() == [0, 0]
    with pytest.raises(OnlineStoreError):
        client.rank(user, ["c1"], ["pair_events_1h"])
    private_redis("start")
    again = client.get_features(entities, None)
    assert [bits(v.values) for v in again] == [bits(v.values) for v in before]


def test_upload_and_lookup_commands(served: Served) -> None:
    from click.testing import CliRunner

    from robusta.cli.main import main

    config = str(served.root / "robusta.yaml")
    at = from_micros(served.at).strftime("%Y-%m-%dT%H:%M:%S")
    runner = CliRunner()
    done = runner.invoke(main, ["upload", "--config", config, "--at", at, "--json"])
    assert done.exit_code == 0, done.output
    [report] = json.loads(done.output)["specs"]
    assert report["spec"] == "engagement" and report["keys"] > 0
    entity, _ = lookups(served, 1)[0]
    args = ["lookup", "--config", config, "--at", at]
    args += [f"--entity={k}={v}" for k, v in entity.items()]
    shown = runner.invoke(main, [*args, "--json"])
    assert shown.exit_code == 0, shown.output
    payload = json.loads(shown.output)
    with FeatureClient.from_config(config) as client:
        [vector] = client.get_features([entity], None, at=from_micros(served.at))
    assert payload["values"] == json.loads(json.dumps(vector.values, default=str))
    table = runner.invoke(main, args)  # the rich table
    assert table.exit_code == 0 and "version pointer" in table.output
    for bad, message in (
        (["--entity", "USER_ID"], "is not ENTITY=VALUE"),
        (["--entity", "USER_ID=u", "--features", "nope"], "no feature, base feature, spec or"),
        (["--entity", "USER_ID=u", "--features", "pair_events_1h"], "need entity CHANNEL_ID"),
    ):
        failed = runner.invoke(main, ["lookup", "--config", config, "--at", at, *bad])
        assert failed.exit_code != 0 and message in failed.output, failed.output
        assert "Traceback" not in failed.output


def test_describe_shows_tiles_and_version_pointer(served: Served) -> None:
    from click.testing import CliRunner

    from robusta.cli.main import main

    upload(served.workspace, at=from_micros(served.at))
    config = str(served.root / "robusta.yaml")
    shown = CliRunner().invoke(main, ["describe", "n_events_1d", "--config", config, "--json"])
    assert shown.exit_code == 0, shown.output
    fresh = json.loads(shown.output)["freshness"]
    assert fresh["problems"] == []
    pointer = from_micros(floor_to(served.at, 5 * MIN)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert fresh["version_pointer"] == pointer
    assert fresh["online_mode"] == "assemble"
    assert fresh["tile_records"] > 0 and fresh["tile_files"] > 0 and fresh["tile_bytes"] > 0
    assert fresh["materialized_until"] >= pointer


def test_uploads_say_why_they_serve_nothing_or_less(served: Served, store: OnlineStore) -> None:
    """0 records comes with the reason; an --at past the coverage serves up to its end."""
    times = pc.cast(served.events.column("event_ts"), pa.int64()).drop_null()
    first, last = int(pc.min(times).as_py()), int(pc.max(times).as_py())
    (empty,) = upload(served.workspace, at=from_micros(first - 10 * DAY), store=store).specs
    assert empty.records == 0 and "lookups will find no values" in empty.note
    (late,) = upload(served.workspace, at=from_micros(last + DAY), store=store).specs
    covered = floor_to(last - 60 * MIN, 5 * MIN)  # the latest event - allowed lateness (1h)
    assert late.pointer == from_micros(covered).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert late.records > 0 and "is after the complete tiles" in late.note


def _with_online(workspace: Workspace, online: OnlineConfig) -> Workspace:
    config = workspace.config
    project = dataclasses.replace(
        workspace.project, config=dataclasses.replace(config, online=online)
    )
    return dataclasses.replace(workspace, project=project)


def _live_records(online: OnlineConfig, spec: str) -> dict[bytes, bytes]:
    """The records of the spec's live generation, by store key without the generation."""
    import redis

    with open_online_store(online, "test") as store:
        state = store.state(spec)
    assert state is not None
    prefix = str(online.options["key_prefix"]).encode() + generation_prefix(spec, state.generation)
    client = redis.Redis.from_url(str(online.options["url"]))
    keys = sorted(client.scan_iter(match=prefix + b"*", count=1_000))
    values = client.mget(keys) if keys else []
    return {k[len(prefix) :]: v for k, v in zip(keys, values, strict=True) if isinstance(v, bytes)}


def test_an_upload_from_the_executors_writes_the_records_this_process_writes(
    served: Served, tmp_path: Path
) -> None:
    online = online_config("redis", tmp_path)
    workspace = _with_online(served.workspace, online)
    spec = workspace.plan.specs[0].name
    here = upload(workspace, at=from_micros(served.at), engine="embedded")
    assert here.specs[0].executor_tasks == 0
    written_here = _live_records(online, spec)
    there = upload(workspace, at=from_micros(served.at), engine="spark")
    buckets = workspace.config.offline.key_buckets
    assert 1 < there.specs[0].executor_tasks <= buckets * len(workspace.plan.specs[0].groups)
    assert (there.specs[0].keys, there.specs[0].records) == (
        here.specs[0].keys,
        here.specs[0].records,
    )
    assert here.specs[0].records > 0
    assert _live_records(online, spec) == written_here  # the same bytes under the same keys
    assert len(written_here) == here.specs[0].records
