"""``robusta serve``: the feature server, an HTTP front of :class:`FeatureClient`.

    POST /features   {"entities": [{"USER_ID": "17850"}], "features": [...],
                      "at": ..., "request": {...}}
    POST /rank       {"user": {"USER_ID": "17850"}, "items": [...], "features": [...], ...}
    GET  /health     the store answers, and each spec's pointer
    GET  /metrics    Prometheus text
    GET  /openapi.json

Starlette on uvicorn (uvloop, httptools): measured against the alternatives in
``bench/serve.py``. Lookups run in a small thread pool, each bounded by the configured
timeout, so a slow store answers 503 in time instead of holding the event loop (the
embedded store's local reads run on the loop: no thread handoff). Every
error is a JSON ``{"error": message}`` with a 4xx status (503 for the store), never a
stack trace.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from robusta.errors import UnknownFeatureError, ValidationError
from robusta.plan.derived import DerivedInputError
from robusta.serving.client import FeatureClient, FeatureVector, LookupRequestError
from robusta.serving.http_body import (
    ARROW_STREAM,
    MAX_BODY_BYTES,
    BadRequestError,
    arrow_answer,
    columns_answer,
    feature_types,
    json_answer,
    openapi,
    parse_body,
    parse_rank_body,
    table_stream,
)
from robusta.store.online import OnlineStateError, OnlineStoreError

_log = logging.getLogger(__name__)
JSON = "application/json"
_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BAD_REQUEST = (BadRequestError, LookupRequestError, UnknownFeatureError, DerivedInputError)


@dataclass(frozen=True)
class Post:
    """A lookup request as the server reads it: the headers it looks at, and the body (None:
    larger than ``MAX_BODY_BYTES``)."""

    content_type: str
    accept: str
    body: bytes | None


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    media_type: str = JSON


class _Disconnected(Exception):
    """The client went away before its request's body arrived."""


def refusal(status: int, message: str) -> Answer:
    return Answer(status, orjson.dumps({"error": message}))


def response(answer: Answer) -> Response:
    """An Answer as Starlette's Response (for the routes Starlette serves)."""
    return Response(answer.body, answer.status, media_type=answer.media_type)


def error(status: int, message: str) -> Response:
    return response(refusal(status, message))


async def read_post(scope: Scope, receive: Receive) -> Post:
    """The request's content type, accepted types and body, straight from ASGI (the
    server lowercases header names); a body over the limit is not read further."""
    kind, accept, size = JSON, "", b""
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind = value.decode("latin-1")
        elif name == b"accept":
            accept = value.decode("latin-1")
        elif name == b"content-length":
            size = value
    if size.isdigit() and int(size) > MAX_BODY_BYTES:
        return Post(kind, accept, None)
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            return Post(kind, accept, None)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return Post(kind, accept, b"".join(chunks))


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "robusta_requests", "HTTP requests", ["path", "status"], registry=self.registry
        )
        self.seconds = Histogram(
            "robusta_request_seconds",
            "Time to answer a request",
            ["path"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.entities = Counter("robusta_entities", "Entities looked up", registry=self.registry)
        self.in_flight = Gauge("robusta_in_flight", "Lookups running", registry=self.registry)


class FeatureServer:
    """The ASGI app around one client (see the module docstring)."""

    def __init__(self, client: FeatureClient, *, timeout_ms: int = 1000, threads: int = 4) -> None:
        self.client = client
        self.timeout = timeout_ms / 1000
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="lookup")
        self.types = feature_types(client.plan)
        self.metrics = _Metrics()
        # The lookups are answered straight from ASGI (``__call__``): Starlette's middleware,
        # routing, request and response objects cost more than a one-key lookup. Their
        # routes stay for what the router answers itself (a GET of them gets its 405).
        self.lookups = {
            "/features": self._timed("/features", self.features),
            "/rank": self._timed("/rank", self.rank),
        }
        self._health = self._timed("/health", self._states)
        routes = [
            Route("/features", self._answered_in_call, methods=["POST"]),
            Route("/rank", self._answered_in_call, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]
        handlers: Any = {HTTPException: self._http_error, Exception: self._internal}
        self.app = Starlette(routes=routes, exception_handlers=handlers)
        self._openapi = orjson.dumps(openapi())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app: lookups go straight to their handler, the rest through Starlette."""
        lookup = None
        if scope["type"] == "http" and scope["method"] == "POST":
            lookup = self.lookups.get(scope["path"])
        if lookup is None:
            await self.app(scope, receive, send)
            return
        try:
            answer = await lookup(await read_post(scope, receive))
        except _Disconnected:
            return
        except Exception as exc:
            _log.exception("%s %s failed", scope["method"], scope["path"])
            answer = refusal(500, _internal_message(exc))
        headers = [
            (b"content-type", answer.media_type.encode()),
            (b"content-length", str(len(answer.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _timed(
        self, path: str, handler: Callable[..., Awaitable[Answer]]
    ) -> Callable[..., Awaitable[Answer]]:
        seconds = self.metrics.seconds.labels(path)  # label children bound once: µs per request
        counts: dict[int, Any] = {}

        async def run(*args: Any) -> Answer:
            started = time.perf_counter()
            answer = await handler(*args)
            seconds.observe(time.perf_counter() - started)
            status = answer.status
            count = counts.get(status)
            if count is None:
                count = counts[status] = self.metrics.requests.labels(path, str(status))
            count.inc()
            return answer

        return run

    async def _answered_in_call(self, request: Request) -> Response:  # pragma: no cover
        raise HTTPException(405)  # POSTs never reach the router (see ``__call__``)

    # ---- endpoints ----------------------------------------------------------------------
    @staticmethod
    def _json_body(post: Post) -> Any:
        """The decoded JSON body, or the Answer that refuses it."""
        kind = post.content_type.split(";")[0].strip().lower()
        if kind != JSON:
            return refusal(415, f"send the body as {JSON}, not {kind}")
        if post.body is None:
            return refusal(413, f"the body is larger than {MAX_BODY_BYTES >> 20} MiB")
        try:
            return orjson.loads(post.body)
        except orjson.JSONDecodeError as exc:
            return refusal(400, f"the body is not valid JSON: {exc}")

    async def features(self, post: Post) -> Answer:
        data = self._json_body(post)
        if isinstance(data, Answer):
            return data
        try:
            body = parse_body(data)
        except BadRequestError as exc:
            return refusal(400, str(exc))
        self.metrics.entities.inc(len(body.entities))

        def lookup() -> list[FeatureVector]:
            return self.client.get_features(
                body.entities, body.features, body.at, request=body.request
            )

        vectors = await self._bounded(lookup)
        if isinstance(vectors, Answer):
            return vectors
        if ARROW_STREAM in post.accept:
            return Answer(200, arrow_answer(vectors, self.types), ARROW_STREAM)
        return Answer(200, orjson.dumps(json_answer(vectors)))

    async def rank(self, post: Post) -> Answer:
        data = self._json_body(post)
        if isinstance(data, Answer):
            return data
        try:
            body = parse_rank_body(data)
        except BadRequestError as exc:
            return refusal(400, str(exc))
        self.metrics.entities.inc(len(body.items))

        def ranked() -> pa.Table:
            return self.client.rank(
                body.user,
                body.items,
                body.features,
                body.at,
                item_entity=body.item_entity,
                request=body.request,
            )

        table = await self._bounded(ranked)
        if isinstance(table, Answer):
            return table
        if ARROW_STREAM in post.accept:
            return Answer(200, table_stream(table), ARROW_STREAM)
        return Answer(200, orjson.dumps(columns_answer(table)))

    async def health(self, request: Request) -> Response:
        return response(await self._health())

    async def _states(self) -> Answer:
        def states() -> dict[str, Any]:
            specs = {}
            for spec in self.client.plan.specs:
                state = self.client.store.state(spec.name)
                specs[spec.name] = {
                    "uploaded": state is not None,
                    "current": state is not None and state.plan_hash == spec.hash,
                    "pointer_micros": None if state is None else state.pointer,
                }
            return {"status": "ok", "specs": specs}

        answer = await self._bounded(states)
        return answer if isinstance(answer, Answer) else Answer(200, orjson.dumps(answer))

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type="text/plain")

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, media_type=JSON)

    # ---- errors -------------------------------------------------------------------------
    async def _bounded(self, work: Callable[[], Any]) -> Any:
        """``work()`` within the timeout (in the pool; on the loop for a local store, whose
        reads cannot hang and take less than a thread handoff); an Answer when it failed."""
        loop = asyncio.get_running_loop()
        self.metrics.in_flight.inc()
        try:
            if self.client.store.local:
                return work()
            return await asyncio.wait_for(loop.run_in_executor(self.pool, work), self.timeout)
        except TimeoutError:
            waited = f"{self.timeout * 1000:g} ms"
            return refusal(503, f"the online store did not answer within {waited}")
        except (OnlineStoreError, OnlineStateError) as exc:
            return refusal(503, str(exc))
        except UnknownFeatureError as exc:
            return refusal(400, str(exc.args[0]) if exc.args else str(exc))
        except (*_BAD_REQUEST, ValidationError) as exc:
            return refusal(400, str(exc))
        finally:
            self.metrics.in_flight.dec()

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 400
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        return error(status, f"{request.method} {request.url.path}: {detail}")

    async def _internal(self, request: Request, exc: Exception) -> Response:
        return error(500, _internal_message(exc))


def _internal_message(exc: Exception) -> str:
    # A bug, not the request: the type only (the log has the rest), never a stack trace.
    return f"internal error: {type(exc).__name__}"


class _OneSendTransport:
    """A transport whose writes in one step of the event loop leave in one send. uvicorn
    writes a response's head and its body apart: two system calls, and two wake-ups of the
    client, where one does (a tenth of a one-key lookup's time on loopback). The first
    write waits for the next (a body follows its head at once) or for the loop's next turn,
    whichever comes first; everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if len(self._pending) > 1:
            self.flush()
        else:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _one_send_httptools() -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol on :class:`_OneSendTransport`."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class OneSendHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(_OneSendTransport(transport))  # type: ignore[arg-type]

    return OneSendHttpToolsProtocol


def run_server(
    client: FeatureClient,
    host: str,
    port: int,
    *,
    timeout_ms: int,
    threads: int,
    loop: str = "uvloop",
    http: str = "httptools",
) -> None:
    """Serve until interrupted (uvicorn; uvloop and httptools unless ``loop``/``http``
    say otherwise: bench/serve.py compares them)."""
    import uvicorn

    server = FeatureServer(client, timeout_ms=timeout_ms, threads=threads)
    # What exists now (the plan, the store, the libraries) lives as long as the server:
    # frozen, the collector's full passes skip it, so they no longer stall requests.
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(
            server,
            host=host,
            port=port,
            loop=loop,
            http=_one_send_httptools() if http == "httptools" else http,
            log_level="warning",
            access_log=False,
        )
    finally:
        server.close()
