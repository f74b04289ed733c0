"""The Aerospike online store (the official client): one record per spec, generation, table
and key, bins ``spec``, ``gen`` and ``v``.

Untested here: no Aerospike server can run on the dev and CI machines. The shared contract
tests run against it when ``ROBUSTA_AEROSPIKE_HOSTS`` is set (``host:port,host:port``).
A lookup reads the spec's state, then its records in one batch read (two round trips).
A stream's :meth:`apply` uses the contract's default (records, then state): Aerospike has no
multi-record transaction before 8.0, and readers stay exact because a stream only rewrites
tiles after the live pointer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from robusta.store.online.base import (
    OnlineStore,
    OnlineStoreError,
    Record,
    SpecState,
    record_id,
)

DEFAULT_TIMEOUT_MS = 200


def _errors() -> Any:
    """The client's exception module (untyped in its stubs)."""
    import importlib

    return importlib.import_module("aerospike.exception")


def parse_hosts(hosts: object) -> list[tuple[str, int]]:
    """``"a:3000,b:3000"`` or a list of ``host:port`` texts -> [(host, port)]."""
    items = hosts.split(",") if isinstance(hosts, str) else list(hosts or [])  # type: ignore[call-overload]
    out = []
    for item in items:
        host, _, port = str(item).strip().partition(":")
        out.append((host, int(port or 3000)))
    return out


class AerospikeStore(OnlineStore):
    kind = "aerospike"

    def __init__(self, options: Mapping[str, Any]) -> None:
        import aerospike

        hosts = parse_hosts(options.get("hosts") or os.environ.get("ROBUSTA_AEROSPIKE_HOSTS"))
        self.namespace = str(options.get("namespace", "test"))
        self.set = str(options.get("set", "robusta"))
        timeout = int(options.get("timeout_ms", DEFAULT_TIMEOUT_MS))
        config: dict[str, Any] = {
            "hosts": hosts,
            "policies": {
                "read": {"total_timeout": timeout},
                "batch": {"total_timeout": timeout},
                "write": {"total_timeout": timeout * 5},
            },
        }
        user, password = options.get("user_env"), options.get("password_env")
        if user and password:
            config["user"] = os.environ.get(str(user), "")
            config["password"] = os.environ.get(str(password), "")
        try:
            self.client = aerospike.client(config).connect()
        except _errors().AerospikeError as exc:
            raise OnlineStoreError(f"cannot connect to Aerospike at {hosts}: {exc}") from exc

    def _key(self, user_key: bytes) -> tuple[str, str, bytearray]:
        return (self.namespace, self.set, bytearray(user_key))

    def _state_key(self, spec: str) -> tuple[str, str, bytearray]:
        return self._key(b"state\0" + spec.encode())

    def read(
        self, spec: str, wanted: Sequence[tuple[str, str]]
    ) -> tuple[SpecState | None, list[bytes | None]]:
        state = self.state(spec)
        if state is None:
            return None, [None] * len(wanted)
        keys = [self._key(record_id(spec, state.generation, t, k)) for t, k in wanted]
        batch = self._call(self.client.batch_read, keys, ["v"])
        values = [
            None if r.record is None else bytes(r.record[2]["v"]) for r in batch.batch_records
        ]
        return state, values

    def state(self, spec: str) -> SpecState | None:

        try:
            _, _, bins = self.client.get(self._state_key(spec))
        except _errors().RecordNotFound:
            return None
        except _errors().AerospikeError as exc:
            raise OnlineStoreError(f"Aerospike read failed: {exc}") from exc
        return SpecState.from_bytes(bytes(bins["v"]))

    def write(self, spec: str, generation: int, records: Iterable[Record]) -> int:
        written = 0
        for table, key, value in records:
            bins = {"spec": spec, "gen": generation, "v": bytearray(value)}
            self._call(self.client.put, self._key(record_id(spec, generation, table, key)), bins)
            written += 1
        return written

    def claim_generation(self, spec: str, above: int) -> int:
        from aerospike_helpers.operations import operations

        key = self._key(b"claimed\0" + spec.encode())
        ops = [operations.increment("n", 1), operations.read("n")]
        claimed = int(self._call(self.client.operate, key, ops)[2]["n"])
        if claimed <= above:  # a counter behind the live generation (a store from before)
            ops = [operations.increment("n", above - claimed + 1), operations.read("n")]
            claimed = int(self._call(self.client.operate, key, ops)[2]["n"])
        return claimed

    def commit(self, spec: str, state: SpecState) -> None:
        self._call(self.client.put, self._state_key(spec), {"v": bytearray(state.to_bytes())})

    def drop(self, spec: str, generation: int) -> int:
        from aerospike_helpers import expressions as exp

        query = self.client.query(self.namespace, self.set)
        condition = exp.And(
            exp.Eq(exp.StrBin("spec"), spec), exp.Eq(exp.IntBin("gen"), generation)
        ).compile()
        doomed: list[Any] = []
        query.foreach(lambda record: doomed.append(record[0]), {"expressions": condition})
        for key in doomed:
            self._call(self.client.remove, key)
        return len(doomed)

    def close(self) -> None:
        self.client.close()

    def _call(self, method: Any, *args: Any) -> Any:

        try:
            return method(*args)
        except _errors().AerospikeError as exc:
            raise OnlineStoreError(
                f"Aerospike did not answer ({exc}); check the hosts and online.timeout_ms"
            ) from exc
