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


def error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status, media_type=JSON)


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
        # The lookups are answered straight from ASGI (``__call__``): Starlette's middleware
        # and routing cost more than a one-key lookup. The routes stay for what the router
        # answers itself (a GET of them gets its 405).
        self.lookups = {
            "/features": self._timed("/features", self.features),
            "/rank": self._timed("/rank", self.rank),
        }
        routes = [
            Route("/features", self.lookups["/features"], methods=["POST"]),
            Route("/rank", self.lookups["/rank"], methods=["POST"]),
            Route("/health", self._timed("/health", self.health), methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]
        handlers: Any = {HTTPException: self._http_error, Exception: self._internal}
        self.app = Starlette(routes=routes, exception_handlers=handlers)
        self._openapi = orjson.dumps(openapi())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app: lookups go straight to their handler, the rest through Starlette."""
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.lookups.get(scope["path"])
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except Exception as exc:
            _log.exception("%s %s failed", scope["method"], scope["path"])
            response = await self._internal(request, exc)
        await response(scope, receive, send)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _timed(
        self, path: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        seconds = self.metrics.seconds.labels(path)  # label children bound once: µs per request
        counts: dict[int, Any] = {}

        async def run(request: Request) -> Response:
            started = time.perf_counter()
            response = await handler(request)
            seconds.observe(time.perf_counter() - started)
            status = response.status_code
            count = counts.get(status)
            if count is None:
                count = counts[status] = self.metrics.requests.labels(path, str(status))
            count.inc()
            return response

        return run

    # ---- endpoints ----------------------------------------------------------------------
    async def _json_body(self, request: Request) -> Any:
        """The decoded JSON body, or the Response that refuses it."""
        kind = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
        if kind != JSON:
            return error(415, f"send the body as {JSON}, not {kind}")
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
            return error(413, f"the body is larger than {MAX_BODY_BYTES >> 20} MiB")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return error(413, f"the body is larger than {MAX_BODY_BYTES >> 20} MiB")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return error(400, f"the body is not valid JSON: {exc}")

    async def features(self, request: Request) -> Response:
        data = await self._json_body(request)
        if isinstance(data, Response):
            return data
        try:
            body = parse_body(data)
        except BadRequestError as exc:
            return error(400, str(exc))
        self.metrics.entities.inc(len(body.entities))

        def lookup() -> list[FeatureVector]:
            return self.client.get_features(
                body.entities, body.features, body.at, request=body.request
            )

        vectors = await self._bounded(lookup)
        if isinstance(vectors, Response):
            return vectors
        if ARROW_STREAM in request.headers.get("accept", ""):
            return Response(arrow_answer(vectors, self.types), media_type=ARROW_STREAM)
        return Response(orjson.dumps(json_answer(vectors)), media_type=JSON)

    async def rank(self, request: Request) -> Response:
        data = await self._json_body(request)
        if isinstance(data, Response):
            return data
        try:
            body = parse_rank_body(data)
        except BadRequestError as exc:
            return error(400, str(exc))
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
        if isinstance(table, Response):
            return table
        if ARROW_STREAM in request.headers.get("accept", ""):
            return Response(table_stream(table), media_type=ARROW_STREAM)
        return Response(orjson.dumps(columns_answer(table)), media_type=JSON)

    async def health(self, request: Request) -> Response:
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
        if isinstance(answer, Response):
            return answer
        return Response(orjson.dumps(answer), media_type=JSON)

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type="text/plain")

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, media_type=JSON)

    # ---- errors -------------------------------------------------------------------------
    async def _bounded(self, work: Callable[[], Any]) -> Any:
        """``work()`` within the timeout (in the pool; on the loop for a local store, whose
        reads cannot hang and take less than a thread handoff); a Response when it failed."""
        loop = asyncio.get_running_loop()
        self.metrics.in_flight.inc()
        try:
            if self.client.store.local:
                return work()
            return await asyncio.wait_for(loop.run_in_executor(self.pool, work), self.timeout)
        except TimeoutError:
            return error(503, f"the online store did not answer within {self.timeout * 1000:g} ms")
        except (OnlineStoreError, OnlineStateError) as exc:
            return error(503, str(exc))
        except UnknownFeatureError as exc:
            return error(400, str(exc.args[0]) if exc.args else str(exc))
        except (*_BAD_REQUEST, ValidationError) as exc:
            return error(400, str(exc))
        finally:
            self.metrics.in_flight.dec()

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 400
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        return error(status, f"{request.method} {request.url.path}: {detail}")

    async def _internal(self, request: Request, exc: Exception) -> Response:
        # A bug, not the request: the type only (the log has the rest), never a stack trace.
        return error(500, f"internal error: {type(exc).__name__}")


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
