"""The online store contract, parametrised over every backend.

Embedded and Redis always run (Redis on 127.0.0.1:6379: a failure in CI when it is missing,
a skip elsewhere); Aerospike runs when ROBUSTA_AEROSPIKE_HOSTS is set, else skips saying so.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from robusta.spec.model import OnlineConfig
from robusta.store.online import OnlineConflictError, OnlineStore, SpecState, open_online_store

REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_PREFIXES: set[str] = set()  # this process's key prefixes: cleared when its tests end
BACKENDS = ["embedded", "redis", "aerospike"]


def redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except redis.exceptions.ConnectionError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis must run on 127.0.0.1:6379 in CI: {exc}")
        pytest.skip(f"no Redis on 127.0.0.1:6379 ({exc})")


def online_config(kind: str, tmp_path: Path) -> OnlineConfig:
    """A config of ``kind`` whose keys no other test run shares."""
    prefix = f"robusta-test:{uuid.uuid4().hex[:8]}:"
    if kind == "redis":
        redis_or_skip()
        REDIS_PREFIXES.add(prefix)
        return OnlineConfig("redis", {"url": REDIS_URL, "key_prefix": prefix, "timeout_ms": 500})
    if kind == "aerospike":
        hosts = os.environ.get("ROBUSTA_AEROSPIKE_HOSTS")
        if not hosts:
            pytest.skip("ROBUSTA_AEROSPIKE_HOSTS is not set (no Aerospike server here)")
        return OnlineConfig("aerospike", {"hosts": hosts, "set": prefix.replace(":", "_")[:60]})
    return OnlineConfig("embedded", {"path": str(tmp_path / f"online-{prefix[-9:-1]}")})


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    config = online_config(request.param, tmp_path)
    with open_online_store(config, "test", create=True) as opened:
        yield opened
        for spec in ("s", "t"):
            for generation in (1, 2, 3):
                opened.drop(spec, generation)


def state(generation: int, pointer: int = 1_000) -> SpecState:
    return SpecState(generation, pointer, "hash", "assemble", 0, 0)


KEYS = ["u1", "", "a\0b", "é|x", "3:abc|2:42|", "k" * 300]


def test_nothing_before_the_first_commit(store: OnlineStore) -> None:
    assert store.state("s") is None
    assert store.read("s", [("t", "u1")]) == (None, [None])
    store.write("s", 1, [("t", "u1", b"v")])
    assert store.read("s", [("t", "u1")]) == (None, [None])  # written, not yet live


def test_commit_makes_a_generation_live_with_binary_safe_keys(store: OnlineStore) -> None:
    records = [("t", key, f"value of {key!r}".encode() + b"\0\xff") for key in KEYS]
    assert store.write("s", 1, records) == len(KEYS)
    store.commit("s", state(1))
    got_state, values = store.read("s", [("t", k) for k in KEYS] + [("t", "missing"), ("x", "u1")])
    assert got_state == state(1)
    assert values == [r[2] for r in records] + [None, None]


def test_readers_see_the_old_generation_until_the_commit(store: OnlineStore) -> None:
    store.write("s", 1, [("t", "u1", b"old"), ("t", "gone", b"old")])
    store.commit("s", state(1, pointer=10))
    store.write("s", 2, [("t", "u1", b"new")])
    assert store.read("s", [("t", "u1"), ("t", "gone")]) == (state(1, 10), [b"old", b"old"])
    store.commit("s", state(2, pointer=20))
    assert store.read("s", [("t", "u1"), ("t", "gone")]) == (state(2, 20), [b"new", None])
    assert store.drop("s", 1) == 2
    store.commit("s", state(1, pointer=10))  # pointing back at a dropped generation: empty
    assert store.read("s", [("t", "u1")])[1] == [None]


def test_writes_are_idempotent_and_batched(store: OnlineStore) -> None:
    records = [("t", f"k{i}", i.to_bytes(4, "big")) for i in range(2_500)]
    store.write("s", 1, records)
    store.write("s", 1, records)
    store.commit("s", state(1))
    _, values = store.read("s", [(t, k) for t, k, _ in records])
    assert values == [v for _, _, v in records]
    assert store.drop("s", 1) == len(records)


def test_specs_do_not_see_each_other(store: OnlineStore) -> None:
    store.write("s", 1, [("t", "u1", b"s")])
    store.write("t", 1, [("t", "u1", b"t")])
    store.commit("s", state(1))
    store.commit("t", state(1, pointer=5))
    assert store.read("s", [("t", "u1")]) == (state(1), [b"s"])
    assert store.read("t", [("t", "u1")]) == (state(1, 5), [b"t"])


def test_apply_rewrites_live_records_and_the_state_together(store: OnlineStore) -> None:
    store.write("s", 1, [("t", "u1", b"old"), ("t", "u2", b"kept")])
    store.commit("s", state(1, pointer=10))
    records = [("t", "u1", b"new"), ("t", "u3", b"added")]
    assert store.apply("s", 1, records, state(1, 20), expected=state(1, 10)) == 2
    got = store.read("s", [("t", "u1"), ("t", "u2"), ("t", "u3")])
    assert got == (state(1, 20), [b"new", b"kept", b"added"])


def test_apply_is_idempotent_and_creates_the_first_state(store: OnlineStore) -> None:
    store.apply("s", 1, [("t", "u1", b"v")], state(1, 30), expected=None)
    # A replayed micro-batch writes the same full values again, from the state it finds.
    store.apply("s", 1, [("t", "u1", b"v")], state(1, 30), expected=state(1, 30))
    assert store.read("s", [("t", "u1")]) == (state(1, 30), [b"v"])
    assert store.apply("s", 1, [], state(1, 40), expected=state(1, 30)) == 0  # pointer alone
    assert store.state("s") == state(1, 40)


def test_apply_refuses_a_state_it_was_not_computed_from(store: OnlineStore) -> None:
    store.write("s", 1, [("t", "u1", b"streamed")])
    store.commit("s", state(1, pointer=10))
    store.write("s", 2, [("t", "u1", b"uploaded")])
    store.commit("s", state(2, pointer=50))  # an upload took over
    with pytest.raises(OnlineConflictError, match="expected generation 1, found generation 2"):
        store.apply("s", 1, [("t", "u1", b"late")], state(1, 20), expected=state(1, 10))
    with pytest.raises(OnlineConflictError, match="expected none, found generation 2"):
        store.apply("s", 1, [("t", "u1", b"late")], state(1, 20), expected=None)
    assert store.read("s", [("t", "u1")]) == (state(2, 50), [b"uploaded"])
    assert store.read("s", []) == (state(2, 50), [])
    assert store.state("s") == state(2, 50)


def test_redis_apply_catches_a_commit_made_while_it_writes(tmp_path: Path) -> None:
    """WATCH: an upload committing after the check but before the write aborts the apply."""
    config = online_config("redis", tmp_path)
    with (
        open_online_store(config, "test") as streamer,
        open_online_store(config, "test") as uploader,
    ):
        streamer.commit("s", state(1, pointer=10))

        def records() -> Iterator[tuple[str, str, bytes]]:
            yield ("t", "u1", b"streamed")
            uploader.commit("s", state(2, pointer=50))  # from another connection
            yield ("t", "u2", b"streamed")

        try:
            with pytest.raises(OnlineConflictError, match="found generation 2"):
                streamer.apply("s", 1, records(), state(1, 20), expected=state(1, 10))
            assert streamer.read("s", [("t", "u1"), ("t", "u2")]) == (state(2, 50), [None, None])
            assert streamer.read("s", []) == (state(2, 50), [])
        finally:
            for generation in (1, 2):
                streamer.drop("s", generation)


def test_claimed_generations_are_unique_and_above_the_live_one(store: OnlineStore) -> None:
    """Two writers claiming at once never get the same generation (so two uploads never
    write the same records), and every claim is above the live generation it names."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        claims = list(pool.map(lambda i: store.claim_generation("s", 5 if i % 2 else 0), range(40)))
    assert len(set(claims)) == len(claims)
    assert min(claims) >= 1
    assert store.claim_generation("s", 1_000) == 1_001  # a counter behind jumps past it
    assert store.claim_generation("s", 0) == 1_002


def clear_redis_prefixes(prefixes: set[str], url: str = REDIS_URL) -> int:
    """Delete the keys under ``prefixes`` (one pass over the test keys); how many."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    width = len(next(iter(prefixes)).encode())  # every prefix is "robusta-test:<8 hex>:"
    wanted = {p.encode() for p in prefixes}
    doomed = [
        k for k in client.scan_iter(match="robusta-test:*", count=5_000) if k[:width] in wanted
    ]
    for at in range(0, len(doomed), 1_000):
        client.unlink(*doomed[at : at + 1_000])
    return len(doomed)
