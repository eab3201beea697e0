"""The ASGI app: one engine behind the native, OpenAI-compatible and metrics routes.

Owns `create_app(engine, api_key)`: the routers, the API key check (every route but
`/health`; `Authorization: Bearer <key>` or `x-api-key: <key>`), and how exceptions become
answers (BadRequest -> 400 naming the field, EngineFailure and anything unexpected -> 500,
in OpenAI's error shape under /v1 and SGLang's elsewhere). The app never shuts the engine
down: whoever made the engine owns it. Knows nothing of sockets or threads (`serve.py`).
"""

from __future__ import annotations

import logging
import secrets

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from lmnb.runtime import Engine
from lmnb.server import metrics, native, openai_api
from lmnb.server.errors import BadRequest, EngineFailure, error_response

OPEN_PATHS = frozenset({"/health"})
log = logging.getLogger("lmnb.server")


def create_app(engine: Engine, api_key: str | None = None) -> FastAPI:
    """A FastAPI app serving `engine`; with `api_key`, every route but /health requires it."""
    app = FastAPI(title="lmnb", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.live = {}  # rid -> handle of /generate requests in flight (for /abort_request)
    for module in (native, openai_api, metrics):
        app.include_router(module.router)
    app.add_exception_handler(BadRequest, _bad_request)
    app.add_exception_handler(EngineFailure, _engine_failure)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    if api_key:
        app.add_middleware(ApiKeyAuth, api_key=api_key)
    return app


async def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BadRequest)
    return error_response(request.url.path, 400, exc.message, exc.param)


async def _engine_failure(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request.url.path, 500, str(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(request.url.path, exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return error_response(request.url.path, 500, f"internal server error: {exc!r}")


class ApiKeyAuth:
    """Pure ASGI middleware (it does not wrap response streams, so disconnects still reach
    the routes): a 401 unless the request carries the key."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(scope["path"], 401, "missing or invalid API key: send the "
                                  "header 'Authorization: Bearer <key>'", code="invalid_api_key")
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return given is not None and secrets.compare_digest(given, self.api_key)
