"""The FastAPI application: REST under ``/api``, the WebSocket ``/ws``, the pane at ``/``.

``create_app(backend, settings)`` takes the backend (an ``actors.service.Orchestrator`` or
anything with its methods); the lifespan holds it, with the settings, the repository roots and
the chat sender, and hands them to every request as ``request.state``. On shutdown it stops
accepting launches and closes the backend (which checkpoints the log).

Errors are always JSON, ``{"error": {"code", "message"}}``: bad input is a 4xx with a stable
code and writes nothing; only a genuine fault of the server is a 5xx.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from actors.config import Settings
from actors.service import LaunchError, NotFound
from api.chat import ChatSender
from api.routes import SCHEMA_TYPES, router
from api.routes.shapes import ApiError, ErrorBody, ErrorDetail
from api.security import Guard, is_loopback, repo_roots, tidy_origin
from api.ws import Hub, websocket_endpoint

log = logging.getLogger("orchestrator.api")

STATIC_DIR = Path(__file__).parent / "static"
HEARTBEAT_S = 15.0
# LaunchError codes that are not "your input is invalid" (422).
_LAUNCH_STATUS = {"not_ready": 409, "not_supported": 409, "not_found": 404, "model_unavailable": 503}


class Gate:
    """Whether launches are still accepted (``serve`` closes it on SIGINT/SIGTERM)."""

    def __init__(self) -> None:
        self.closing = False


def error_response(status: int, code: str, message: str) -> Response:
    body = msgspec.json.encode(ErrorBody(error=ErrorDetail(code=code, message=message)))
    return Response(body, status_code=status, media_type="application/json")


def create_app(
    backend: Any,
    settings: Settings,
    *,
    close_backend: bool = True,
    heartbeat: float = HEARTBEAT_S,
    engine: str | None = None,
    allow_origins: tuple[str, ...] = (),
    gate: Gate | None = None,
) -> FastAPI:
    """The application around ``backend``.

    ``close_backend``: close it when the app shuts down (the server owns it); tests that share
    one backend between apps pass False. ``allow_origins``: other web origins (a chat app
    embedding the pane's components) allowed to call the API and open the WebSocket.
    """
    roots = repo_roots(settings)
    # Guard and the CORS middleware must agree on what is allowed.
    allow_origins = tuple(dict.fromkeys(map(tidy_origin, allow_origins)))
    gate = gate or Gate()
    chat = ChatSender(backend, settings.chat_webhook_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        hub = Hub(backend)
        await hub.start()
        yield {
            "hub": hub,
            "backend": backend,
            "settings": settings,
            "roots": roots,
            "gate": gate,
            "chat": chat,
            "heartbeat": heartbeat,
            "engine": engine or settings.engine,
        }
        gate.closing = True
        await hub.stop()
        if close_backend:
            await run_in_threadpool(backend.close)

    app = FastAPI(
        title="Orchestrator",
        version="0.1.0",
        summary="Read-only multi-agent analysis flows over a repository",
        lifespan=lifespan,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.include_router(router)
    app.add_api_websocket_route("/ws", websocket_endpoint)
    _add_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(_Headers)
    app.add_middleware(
        Guard,
        token=settings.token,
        loopback=is_loopback(settings.host),
        max_body=settings.max_request_bytes,
        allow_origins=allow_origins,
    )
    if allow_origins:  # outside Guard, so a chat app can read its refusals (401, 413) too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(allow_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Content-Disposition"],
        )
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="pane")
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(LaunchError)
    async def _launch_error(request: Request, exc: LaunchError):
        return error_response(_LAUNCH_STATUS.get(exc.code, 422), exc.code, str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return error_response(404, "not_found", str(exc) or "no such run")

    @app.exception_handler(RequestValidationError)
    async def _bad_params(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "invalid_parameter", "; ".join(parts) or "invalid parameters")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception):
        # A genuine fault of the server (or of the backend behind it): say so clearly.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        if type(exc).__module__.startswith("ray"):
            return error_response(503, "backend_unavailable", f"the backend failed: {type(exc).__name__}")
        return error_response(500, "internal", f"unexpected server error ({type(exc).__name__}); see the server log")


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document, with our msgspec schemas as components and our error shape."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    _, components = msgspec.json.schema_components(
        SCHEMA_TYPES, ref_template="#/components/schemas/{name}"
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas.update(components)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            for status, resp in op.get("responses", {}).items():
                if status.startswith(("4", "5")):
                    resp["content"] = error
                    if status == "422":
                        resp["description"] = "The request is well-formed but invalid"
    if not schemas:
        doc["components"].pop("schemas")
    app.openapi_schema = doc
    return doc


class _Headers:
    """Hardening headers on every HTTP response; a strict CSP on the pane's pages."""

    PANE_CSP = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'"
    )

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        pane = not scope.get("path", "").startswith("/api")

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                if pane and b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", self.PANE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
