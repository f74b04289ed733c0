"""The online store contract: every backend stores the same records the same way.

Layout (one record per spec, generation, tile table and key; binary-safe keys):

- *records*: the bytes of one key's tiles (or, for pre-assembled specs, its feature values),
  encoded by :mod:`robusta.store.online.records`; written under a *generation* number;
- *state*: per spec, the live generation, its version pointer, plan hash, serving mode and
  horizon (:class:`SpecState`).

A stream (:meth:`OnlineStore.apply`) rewrites records of the live generation with the full
values of the tiles a micro-batch touched and advances the pointer in the same atomic write.

An upload writes a new generation's records (idempotent: a rerun overwrites the same keys),
then :meth:`OnlineStore.commit` switches the spec's state to it in one atomic write, then the
previous generation is dropped. Readers read the state and the records of its generation in
one consistent read, so they see the old generation or the new one, never a mix; a crash
before the commit leaves the previous generation served.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

from robusta.errors import RobustaError

Record = tuple[str, str, bytes]  # (tile table, key text, value)


class OnlineStoreError(RobustaError, ConnectionError):
    """The online store cannot be reached or answered too late."""


class OnlineStateError(RobustaError, LookupError):
    """The online store holds nothing (or something unusable) for a spec."""


class OnlineConflictError(OnlineStateError):
    """A conditional write found another state than the one it was computed from."""

    def __init__(self, spec: str, expected: SpecState | None, found: SpecState | None) -> None:
        def text(state: SpecState | None) -> str:
            return "none" if state is None else f"generation {state.generation}"

        super().__init__(
            f"the online state of spec {spec} changed during the write (expected "
            f"{text(expected)}, found {text(found)}): another writer (an upload) took over"
        )
        self.spec = spec
        self.expected = expected
        self.found = found


@dataclass(frozen=True, slots=True)
class SpecState:
    """What a spec's live generation holds; written atomically by an upload's commit."""

    generation: int
    pointer: int  # version pointer: end of the last fully ingested bucket (epoch micros)
    plan_hash: str
    mode: str  # "assemble" (tiles) or "preassembled" (values as of the pointer)
    horizon: int  # the oldest bucket start stored (epoch micros); lifetime prefixes before it
    uploaded_at: int  # epoch micros
    # assemble mode: the pointer at which the upload also wrote every key's values (its head
    # records, ``heads_table``); lookups at or after the pointer read those while it holds
    heads_at: int | None = None

    @property
    def heads_usable(self) -> bool:
        """Whether the head records hold the values as of the current pointer."""
        return self.mode == "assemble" and self.heads_at == self.pointer

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> SpecState:
        return _parse_state(bytes(raw, "utf-8") if isinstance(raw, str) else bytes(raw))


@lru_cache(maxsize=64)
def _parse_state(raw: bytes) -> SpecState:
    """Parsed once per distinct state: every lookup reads the state, which changes only at
    uploads."""
    return SpecState(**json.loads(raw))


def require_state(spec: str, expected: SpecState | None, found: SpecState | None) -> None:
    """The check of :meth:`OnlineStore.apply`: the stored state is the one expected."""
    if found != expected:
        raise OnlineConflictError(spec, expected, found)


_HEADS = "#heads"


def heads_table(table: str) -> str:
    """Where an upload writes a tile table's keys' values as of its pointer (assemble mode)."""
    return f"{table}{_HEADS}"


def is_heads_table(table: str) -> bool:
    return table.endswith(_HEADS)


def record_id(spec: str, generation: int, table: str, key: str) -> bytes:
    """The store key of one record; NUL-separated, so no part can run into the next."""
    return b"\0".join(
        (spec.encode(), str(generation).encode(), table.encode(), key.encode("utf-8"))
    )


def generation_prefix(spec: str, generation: int) -> bytes:
    return spec.encode() + b"\0" + str(generation).encode() + b"\0"


class OnlineStore(ABC):
    """One online key-value store; see the module docstring for the layout and guarantees."""

    kind: str
    # Reads are local (memory-mapped files): they cannot hang on a network, so a server may
    # run them on its event loop instead of a bounded thread.
    local: bool = False

    @abstractmethod
    def read(
        self, spec: str, wanted: Sequence[tuple[str, str]]
    ) -> tuple[SpecState | None, list[bytes | None]]:
        """The spec's state and the records ``(table, key)`` of its live generation, in one
        consistent round trip; None for a missing record (or everything, without a state)."""

    @abstractmethod
    def state(self, spec: str) -> SpecState | None:
        """The spec's live state, or None before its first upload."""

    @abstractmethod
    def write(self, spec: str, generation: int, records: Iterable[Record]) -> int:
        """Store records of a (not yet live) generation; returns how many were written."""

    @abstractmethod
    def commit(self, spec: str, state: SpecState) -> None:
        """Make ``state`` (and its generation's records) live, atomically."""

    @abstractmethod
    def claim_generation(self, spec: str, above: int) -> int:
        """A generation number above ``above`` that no other writer of the spec has been or
        will be given (an atomic counter): concurrent uploads never write the same records."""

    def apply(
        self,
        spec: str,
        generation: int,
        records: Iterable[Record],
        state: SpecState,
        *,
        expected: SpecState | None,
    ) -> int:
        """Overwrite records of the *live* generation and commit ``state``, provided the
        stored state still equals ``expected`` (the one the records were computed from),
        else :class:`OnlineConflictError` and nothing written; the streaming job's write.

        Backends with transactions check and write atomically. This default checks, writes
        the records, then the state: safe for readers (a stream only rewrites tiles after
        the live pointer, so a reader holding the old state finds the same values in old
        and new records), but an upload committing between the check and the write is not
        caught. Returns records written."""
        require_state(spec, expected, self.state(spec))
        written = self.write(spec, generation, records)
        self.commit(spec, state)
        return written

    @abstractmethod
    def drop(self, spec: str, generation: int) -> int:
        """Delete every record of a generation that is no longer live; returns how many."""

    def close(self) -> None:  # noqa: B027 - backends without resources need nothing
        """Release connections or handles."""

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
