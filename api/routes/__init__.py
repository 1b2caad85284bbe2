"""REST under ``/api``: thin adapters that decode a Struct, call the backend, encode a Struct.

Every backend call is synchronous (it talks to Ray actors), so each goes through
``run_in_threadpool``. The backend, the settings and the repository roots come from the
lifespan state (``request.state``), never from module globals.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from actors.config import ENGINES
from api.routes.shapes import (
    ApiError,
    CancelBody,
    Cancelled,
    ErrorBody,
    EventPage,
    Info,
    LaunchBody,
    Launched,
    RunDetail,
    RunList,
    SendBody,
    Sent,
    decode_body,
    past_end,
    to_launch_request,
)
from events.types import RunStatus

router = APIRouter(prefix="/api")

RunId = Annotated[str, Path(min_length=1, max_length=128, description="A run id")]
REPORT_TYPES = {
    "md": "text/markdown; charset=utf-8",
    "json": "application/json",
    "html": "text/html; charset=utf-8",
}

# Struct types published in the OpenAPI components (see ``api.app.openapi``).
SCHEMA_TYPES = (
    ErrorBody, LaunchBody, Launched, CancelBody, Cancelled, SendBody, Sent,
    RunList, RunDetail, EventPage, Info,
)  # fmt: skip


def json_response(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


_ERROR_TEXT = {
    400: "Malformed request (bad JSON, bad parameter)",
    401: "A token is required",
    403: "Refused (origin, or a repository outside the roots)",
    404: "No such run",
    409: "Not possible now (no report yet, shutting down)",
    413: "Request body too large",
    415: "The body must be application/json",
    422: "The request is well-formed but invalid",
    502: "The chat webhook could not be reached",
    503: "The server is shutting down or the backend is unavailable",
}


def _doc(status: int, schema: str | None, *errors: int, media: str = "application/json") -> dict:
    """OpenAPI ``responses``: the success shape and every error status the route may return."""
    ok: dict[str, Any] = {"description": "Success"}
    if schema is not None:
        ok["content"] = {media: {"schema": _ref(schema)}}
    out: dict[int | str, Any] = {status: ok}
    for code in (401, 500, *errors):
        out[code] = {
            "description": _ERROR_TEXT.get(code, "Server fault"),
            "content": {"application/json": {"schema": _ref("ErrorBody")}},
        }
    return out


def _body_doc(schema: str, required: bool = True) -> dict:
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": _ref(schema)}},
        }
    }


async def _body(request: Request, type_: type, *, empty_ok: bool = False):
    raw = await request.body()
    if raw.strip():
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    return decode_body(raw, type_, empty_ok=empty_ok)


def _backend(request: Request):
    return request.state.backend


def _accepting(request: Request) -> None:
    if request.state.gate.closing:
        raise ApiError(503, "shutting_down", "the server is shutting down; launch again once it is back")


# --- runs ----------------------------------------------------------------------------------


@router.post(
    "/runs",
    status_code=201,
    response_class=Response,
    summary="Launch a flow against a repository",
    openapi_extra=_body_doc("LaunchBody"),
    responses=_doc(201, "Launched", 400, 403, 413, 415, 422, 503),
)
async def launch(request: Request) -> Response:
    body = await _body(request, LaunchBody)
    req = to_launch_request(body, request.state.roots, origin="api")
    _accepting(request)
    run_id = await run_in_threadpool(_backend(request).launch, req)
    return json_response(Launched(run_id=run_id, repo=req.repo), 201)


@router.get(
    "/runs",
    response_class=Response,
    summary="List runs (history), newest first, with filters",
    responses=_doc(200, "RunList", 422),
)
async def list_runs(
    request: Request,
    flow: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[RunStatus | None, Query()] = None,
    repo: Annotated[str | None, Query(max_length=4096)] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11, description="created at or after (epoch s)")] = None,
    until: Annotated[float | None, Query(ge=0, le=1e11, description="created before (epoch s)")] = None,
    q: Annotated[str | None, Query(max_length=500, description="text search")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    rows = await run_in_threadpool(
        _backend(request).runs,
        flow=flow or None,
        status=status,
        repo=repo or None,
        since=since,
        until=until,
        text=q or None,
        limit=limit,
        offset=offset,
    )
    return json_response(msgspec.convert({"runs": rows, "limit": limit, "offset": offset}, RunList))


@router.get(
    "/runs/{run_id}",
    response_class=Response,
    summary="One run: its projection row and its steps",
    responses=_doc(200, "RunDetail", 404, 422),
)
async def get_run(request: Request, run_id: RunId) -> Response:
    detail = await run_in_threadpool(_backend(request).run, run_id)
    return json_response(msgspec.convert(detail, RunDetail))


@router.get(
    "/runs/{run_id}/events",
    response_class=Response,
    summary="A run's committed events after a seq, in order",
    responses=_doc(200, "EventPage", 404, 422),
)
async def run_events(
    request: Request,
    run_id: RunId,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> Response:
    backend = _backend(request)
    records = await run_in_threadpool(backend.events, run_id, after, limit + 1)
    if not records and after:
        # Polling from a seq this log never reached would wait for ever, silently.
        head = await run_in_threadpool(backend.log.max_seq)
        if after > head:
            raise ApiError(422, "after_past_end", past_end(after, head))
    more = len(records) > limit
    records = records[:limit]
    page = EventPage(
        run_id=run_id,
        records=records,
        last_seq=records[-1].seq if records else after,
        more=more,
    )
    return json_response(page)


def _filename(run_id: str, ext: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id) + f"-report.{ext}"


@router.get(
    "/runs/{run_id}/report",
    response_class=Response,
    summary="The run's report as Markdown, JSON or HTML",
    responses={
        **_doc(200, None, 404, 409, 422),
        200: {
            "description": "The report",
            "content": {
                "text/markdown": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
                "text/html": {"schema": {"type": "string"}},
            },
        },
    },
)
async def run_report(
    request: Request,
    run_id: RunId,
    format: Annotated[Literal["md", "json", "html"], Query()] = "md",
    download: Annotated[bool, Query(description="as an attachment (save file)")] = False,
) -> Response:
    text = await run_in_threadpool(_backend(request).report, run_id, format)
    headers = {}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{_filename(run_id, format)}"'
    if format == "html":
        # Opened directly, the report runs no script and loads nothing.
        headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    return Response(text, media_type=REPORT_TYPES[format], headers=headers)


@router.post(
    "/runs/{run_id}/cancel",
    response_class=Response,
    summary="Cancel a run (false if it had already ended)",
    openapi_extra=_body_doc("CancelBody", required=False),
    responses=_doc(200, "Cancelled", 400, 404, 413, 415, 422),
)
async def cancel_run(request: Request, run_id: RunId) -> Response:
    body = await _body(request, CancelBody, empty_ok=True)
    done = await run_in_threadpool(_backend(request).cancel, run_id, body.reason or "cancelled from the API")
    return json_response(Cancelled(run_id=run_id, cancelled=bool(done)))


@router.post(
    "/runs/{run_id}/send",
    response_class=Response,
    summary="Send the report to chat (once per request_id)",
    openapi_extra=_body_doc("SendBody"),
    responses=_doc(200, "Sent", 400, 404, 409, 413, 415, 422),
)
async def send_run(request: Request, run_id: RunId) -> Response:
    body = await _body(request, SendBody)
    result = await run_in_threadpool(request.state.chat.send, run_id, body.request_id)
    return json_response(msgspec.convert(result, Sent))


# --- catalogs and analytics ------------------------------------------------------------------


@router.get("/flows", response_class=Response, summary="The flows one can launch", responses=_doc(200, None))
async def flows(request: Request) -> Response:
    return json_response(await run_in_threadpool(_backend(request).flows))


@router.get("/personas", response_class=Response, summary="The personas", responses=_doc(200, None))
async def personas(request: Request) -> Response:
    return json_response(await run_in_threadpool(_backend(request).personas))


@router.get(
    "/analytics", response_class=Response, summary="Run history aggregates", responses=_doc(200, None)
)
async def analytics(request: Request) -> Response:
    return json_response(await run_in_threadpool(_backend(request).analytics))


@router.get("/info", response_class=Response, summary="About this server", responses=_doc(200, "Info"))
async def info(request: Request) -> Response:
    settings = request.state.settings
    roots = request.state.roots
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("orchestrator")
    except PackageNotFoundError:
        ver = "0"
    return json_response(
        Info(
            version=ver,
            default_repo=str(roots[0]) if roots else "",
            repo_roots=[str(r) for r in roots],
            engines=list(ENGINES),
            engine=request.state.engine,
            model=settings.model,
            auth=bool(settings.token),
            heartbeat_seconds=request.state.heartbeat,
            chat_webhook=bool(settings.chat_webhook_url),
        )
    )


@router.get(
    "/schema",
    response_class=Response,
    summary="JSON Schema of the WebSocket frames and the events",
    responses=_doc(200, None),
)
async def schema(request: Request) -> Response:
    from api.ws import schema_document

    return json_response(schema_document())
