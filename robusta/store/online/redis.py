"""The Redis online store (redis-py): one string per record, one round trip per lookup batch.

A lookup sends one pipeline: MGET of the records under the generation the client last saw,
then GET of the spec's state. When the state names that generation, the records are its
records (see ``read``); when it names another (only after an upload), the read is repeated
once with it. The pipeline is a MULTI/EXEC transaction, because a stream rewrites records of
the live generation together with the state (one MULTI/EXEC, :meth:`RedisStore.apply`); a
plain pipeline could read records from before such a write and the state from after it. (A
server-side Lua script doing both was measured slower: 2.5 ms against 1.0 ms for 100 records
of 6 KB.) Connection problems
surface as :class:`OnlineStoreError` within the configured timeout (one retry on a fresh
connection, for a server that restarted).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

from robusta.store.online.base import (
    OnlineConflictError,
    OnlineStore,
    OnlineStoreError,
    Record,
    SpecState,
    generation_prefix,
    record_id,
    require_state,
)

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_TIMEOUT_MS = 200
_WRITE_BATCH = 1_000


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
        self.generations: dict[str, int] = {}  # spec -> the generation last seen live

    def _state_key(self, spec: str) -> bytes:
        return self.prefix + b"state\0" + spec.encode()

    def read(
        self, spec: str, wanted: Sequence[tuple[str, str]]
    ) -> tuple[SpecState | None, list[bytes | None]]:
        generation = self.generations.get(spec)
        for _ in range(3):
            # Records first, then the state: if the state still names the generation read,
            # that generation was live after the records were read, so none of them had been
            # dropped (a generation is dropped only after a newer one is committed).
            # MULTI/EXEC: a stream's apply (also MULTI/EXEC) rewrites records of the live
            # generation with the state; a transaction never sees half of it.
            pipe = self.client.pipeline(transaction=True)
            if generation is not None and wanted:
                pipe.mget([self.prefix + record_id(spec, generation, t, k) for t, k in wanted])
            pipe.get(self._state_key(spec))
            replies = self._call(pipe.execute)
            if replies[-1] is None:
                return None, [None] * len(wanted)
            state = SpecState.from_bytes(replies[-1])
            if state.generation == generation or not wanted:
                return state, list(replies[0]) if wanted else []
            generation = self.generations[spec] = state.generation
        raise OnlineStoreError(f"the state of spec {spec} kept changing while it was read")

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

    def claim_generation(self, spec: str, above: int) -> int:
        counter = self.prefix + b"claimed\0" + spec.encode()
        claimed = int(self._call(self.client.incr, counter))
        if claimed <= above:  # a counter behind the live generation (a store from before)
            claimed = int(self._call(self.client.incrby, counter, above - claimed + 1))
        return claimed  # every INCR / INCRBY returns a value no other call gets

    def commit(self, spec: str, state: SpecState) -> None:
        self._call(self.client.set, self._state_key(spec), state.to_bytes())

    def apply(
        self,
        spec: str,
        generation: int,
        records: Iterable[Record],
        state: SpecState,
        *,
        expected: SpecState | None,
    ) -> int:
        """Records and state in one MULTI/EXEC transaction (lookups read in one too), under
        WATCH of the state key: a commit by anyone else in between aborts it."""
        import redis

        state_key = self._state_key(spec)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                self._call(pipe.watch, state_key)
                raw = self._call(pipe.get, state_key)
                require_state(spec, expected, None if raw is None else SpecState.from_bytes(raw))
                pipe.multi()
                written = 0
                for table, key, value in records:  # still under WATCH: caught at EXEC
                    pipe.set(self.prefix + record_id(spec, generation, table, key), value)
                    written += 1
                pipe.set(state_key, state.to_bytes())
                self._call(pipe.execute)
            except redis.exceptions.WatchError:
                raise OnlineConflictError(spec, expected, self.state(spec)) from None
        return written

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
