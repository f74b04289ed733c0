"""The Redis online store (redis-py): one string per record, one Lua call per lookup batch.

A lookup runs one server-side script that reads the spec's state and then the records of
its live generation, so the state and the values always match and a batch costs one round
trip. Connection problems surface as :class:`OnlineStoreError` within the configured timeout
(one retry on a fresh connection, for a server that restarted).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

from robusta.store.online.base import (
    OnlineStore,
    OnlineStoreError,
    Record,
    SpecState,
    generation_prefix,
    record_id,
)

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_TIMEOUT_MS = 200
_WRITE_BATCH = 1_000
_READ = """
local state = redis.call('GET', KEYS[1])
if not state then return {false} end
local base = ARGV[1] .. cjson.decode(state)['generation'] .. '\\0'
local out = {state}
for i = 2, #ARGV do out[i] = redis.call('GET', base .. ARGV[i]) end
return out
"""


class RedisStore(OnlineStore):
    kind = "redis"

    def __init__(self, options: Mapping[str, Any], project: str) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = str(options.get("url", DEFAULT_URL))
        self.timeout = float(options.get("timeout_ms", DEFAULT_TIMEOUT_MS)) / 1000
        self.prefix = str(options.get("key_prefix", f"robusta:{project}:")).encode()
        password = _secret(options.get("password_env"))
        extra: dict[str, Any] = {"ssl": True} if options.get("tls") else {}
        self.client = redis.Redis.from_url(
            self.url,
            password=password,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[redis.exceptions.ConnectionError],
            **extra,
        )
        self.script = self.client.register_script(_READ)

    def _state_key(self, spec: str) -> bytes:
        return self.prefix + b"state\0" + spec.encode()

    def read(
        self, spec: str, wanted: Sequence[tuple[str, str]]
    ) -> tuple[SpecState | None, list[bytes | None]]:
        base = self.prefix + spec.encode() + b"\0"
        suffixes = [t.encode() + b"\0" + k.encode("utf-8") for t, k in wanted]
        reply = self._call(self.script, keys=[self._state_key(spec)], args=[base, *suffixes])
        if reply[0] is None:
            return None, [None] * len(wanted)
        values = list(reply[1:]) + [None] * (len(wanted) + 1 - len(reply))
        return SpecState.from_bytes(reply[0]), values

    def state(self, spec: str) -> SpecState | None:
        raw = self._call(self.client.get, self._state_key(spec))
        return None if raw is None else SpecState.from_bytes(raw)

    def write(self, spec: str, generation: int, records: Iterable[Record]) -> int:
        written = 0
        items = iter(records)
        while batch := list(islice(items, _WRITE_BATCH)):
            pipe = self.client.pipeline(transaction=False)
            for table, key, value in batch:
                pipe.set(self.prefix + record_id(spec, generation, table, key), value)
            self._call(pipe.execute)
            written += len(batch)
        return written

    def commit(self, spec: str, state: SpecState) -> None:
        self._call(self.client.set, self._state_key(spec), state.to_bytes())

    def drop(self, spec: str, generation: int) -> int:
        pattern = _glob_escape(self.prefix + generation_prefix(spec, generation)) + b"*"
        dropped = 0
        keys = self.client.scan_iter(match=pattern, count=1_000)
        while batch := list(islice(keys, _WRITE_BATCH)):
            dropped += int(self._call(self.client.unlink, *batch))
        return dropped

    def close(self) -> None:
        self.client.close()

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return method(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise OnlineStoreError(
                f"Redis at {self.url} did not answer within {self.timeout * 1000:.0f} ms "
                f"({exc}); check that it is running and reachable, or raise online.timeout_ms"
            ) from exc


def _secret(variable: object) -> str | None:
    """A password from the environment variable the config names (never from YAML)."""
    if variable is None:
        return None
    value = os.environ.get(str(variable))
    if value is None:
        raise OnlineStoreError(
            f"online.password_env names ${variable}, which is not set: export it"
        )
    return value


def _glob_escape(raw: bytes) -> bytes:
    out = bytearray()
    for byte in raw:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)
