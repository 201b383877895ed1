"""The FastAPI app: routes, API-key and body-size guards, OpenAI-shaped errors.

    app = create_app(engine, ServeConfig(served_model_name="tiny"))  # owns an EngineThread
    app = create_app(engine_thread, config)                # a thread you start and stop

Every error, including bad JSON, unknown routes and anything unexpected, is answered as
{"error": {"message", "type", "param", "code"}}; unexpected ones are logged with a traceback
and answered 500 without taking the server down.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from autoglm_jax.serve import protocol as proto
from autoglm_jax.serve.config import ServeConfig
from autoglm_jax.serve.engine_thread import EngineThread
from autoglm_jax.serve.metrics import ServerMetrics
from autoglm_jax.serve.protocol import APIError, bad_request
from autoglm_jax.serve.serving import OpenAIServing

log = logging.getLogger("autoglm_jax.serve")


def _json_error(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(proto.error_body(status, message, param), status, headers=headers)


class _Guard:
    """ASGI middleware: the API key on /v1/*, and the request body limit (413) whether or
    not the client sends Content-Length."""

    def __init__(self, app: Any, api_key: str | None, max_body: int):
        self.app = app
        self.api_key = api_key
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope["path"].startswith("/v1"):
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.api_key.encode()
            ):
                response = _json_error(
                    401, "Invalid or missing API key (send Authorization: Bearer <key>)"
                )
                return await response(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return await _json_error(400, "invalid Content-Length header")(scope, receive, send)
            if too_big:
                return await self._too_large(scope, receive, send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise APIError(413, self._too_large_message())
            return message

        return await self.app(scope, limited_receive, send)

    def _too_large_message(self) -> str:
        return (
            f"request body is larger than the server's limit of {self.max_body} bytes "
            "(--max-request-body-bytes)"
        )

    async def _too_large(self, scope: dict, receive: Any, send: Any) -> None:
        await _json_error(413, self._too_large_message())(scope, receive, send)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise bad_request("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad_request(f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}")
    _check_json(body, "", 0)
    return body


MAX_JSON_DEPTH = 64  # no OpenAI request needs more; deeper bodies only exhaust the stack


def _check_json(value: Any, path: str, depth: int) -> None:
    """Refuse what valid JSON can carry but no request field can use: nesting deeper than
    MAX_JSON_DEPTH and strings with lone UTF-16 surrogates (text that is not Unicode)."""
    if depth > MAX_JSON_DEPTH:
        raise bad_request(
            f"the request body nests deeper than {MAX_JSON_DEPTH} levels", path or None
        )
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise bad_request(
                f"a string holds a lone UTF-16 surrogate ({e.object[e.start]!r}"
                f" at character {e.start}); send valid Unicode text",
                path or None,
            ) from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_json(k, path, depth + 1)
            _check_json(v, f"{path}.{k}" if path else str(k), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{path}[{i}]", depth + 1)


def create_app(engine_or_thread: Any, config: ServeConfig) -> FastAPI:
    """The app over an `Engine` (the app starts and stops its own EngineThread in its
    lifespan) or over an `EngineThread` the caller manages."""
    config.validate()
    if isinstance(engine_or_thread, EngineThread):
        thread, owned = engine_or_thread, False
        metrics = thread.metrics
        if metrics is None:
            metrics = thread.metrics = ServerMetrics(config.model_name)
    else:
        metrics = ServerMetrics(config.model_name)
        sizes = config.image_sizes()
        if sizes and getattr(engine_or_thread.model.config, "vision", None) is None:
            raise ValueError("--warmup-image-sizes: this model has no vision tower")
        thread = EngineThread(
            engine_or_thread, metrics, warmup=config.warmup, warmup_image_sizes=sizes
        )
        owned = True
    serving = OpenAIServing(thread, config)
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if owned:
            import anyio

            await anyio.to_thread.run_sync(thread.start)
        try:
            yield
        finally:
            if owned:
                import anyio

                await anyio.to_thread.run_sync(thread.shutdown)

    app = FastAPI(
        title="autoglm-jax OpenAI-compatible server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine_thread = thread
    app.state.serving = serving
    app.state.metrics = metrics

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> Response:
        if e.status >= 500:
            log.error("%s %s -> %d: %s", request.method, request.url.path, e.status, e.message)
        return _json_error(e.status, e.message, e.param, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> Response:
        message = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404:
            message = f"Not found: {request.method} {request.url.path}"
        return _json_error(e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> Response:
        return _json_error(400, str(e))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, e: ClientDisconnect) -> Response:
        return Response(status_code=499)  # the client left while sending; nobody to answer

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return _json_error(
            500, f"internal server error ({type(e).__name__}); the server logged the details"
        )

    async def parse(request: Request, schema: Any) -> Any:
        """The JSON body validated as `schema`; an OpenAI-shaped 400 otherwise."""
        body = await _json_body(request)
        try:
            return schema.model_validate(body)
        except ValidationError as e:
            raise proto.validation_error(e) from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serving.chat(request, await parse(request, proto.ChatCompletionRequest))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serving.completions(request, await parse(request, proto.CompletionRequest))

    def card() -> dict[str, Any]:
        return proto.model_card(
            config.model_name, config.model_name, started, serving.max_model_len
        )

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse({"object": "list", "data": [card()]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        serving.check_model(model_id)
        return JSONResponse(card())

    @app.get("/health")
    async def health() -> Response:
        if thread.alive:
            return Response(status_code=200)
        return _json_error(503, f"the engine is not running ({thread.dead_reason or 'stopped'})")

    @app.get("/metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(
            metrics.render(thread.stats), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.get("/version")
    async def version() -> Response:
        from autoglm_jax._version import __version__

        return JSONResponse({"version": __version__})

    app.add_middleware(_Guard, api_key=config.api_key, max_body=config.max_request_body_bytes)
    return app
