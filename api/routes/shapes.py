"""The shapes the REST API reads and writes: msgspec Structs, the single definition.

Bodies are decoded here (not by FastAPI) so that a bad body gets our error shape and a
stable code; their JSON Schema is what the OpenAPI document publishes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from actors.config import ENGINES
from actors.service import LaunchRequest
from api.security import RepoRefused, resolve_repo
from events.log import Record
from projections.rows import RunRow, StepRow

Short = Annotated[str, msgspec.Meta(max_length=200)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
PathText = Annotated[str, msgspec.Meta(max_length=4096)]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


def past_end(after: int, head: int) -> str:
    """Why a read from ``after`` was refused: the log never reached that seq."""
    return f"after={after} is past the end of the event log (its last seq is {head}): start from a seq this server sent"


class ApiError(Exception):
    """A refusal with an HTTP status, a stable ``code`` and a message for a person."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ErrorDetail(msgspec.Struct, frozen=True):
    """What went wrong: ``code`` is stable for programs, ``message`` is for people."""

    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    """Every error the API returns."""

    error: ErrorDetail


class LaunchBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Launch a flow against a repository (a directory under the configured roots)."""

    flow: Name
    repo: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    band: Literal["small", "medium", "large", "auto"] | None = None
    base: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    focus: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    symptom: Annotated[str, msgspec.Meta(max_length=4000)] = ""
    text: Annotated[str, msgspec.Meta(max_length=20000)] = ""
    paths: Annotated[list[PathText], msgspec.Meta(max_length=200)] = []
    personas: Annotated[list[Name], msgspec.Meta(max_length=32)] = []
    model: Short | None = None
    engine: Literal[ENGINES] | None = None  # type: ignore[valid-type]
    thread: Short = ""
    origin: Annotated[str, msgspec.Meta(max_length=32)] = ""


class Launched(msgspec.Struct, frozen=True):
    """A run was accepted: its id, and the repository it pinned (resolved)."""

    run_id: str
    repo: str


class CancelBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Why the run is being cancelled (optional)."""

    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class Cancelled(msgspec.Struct, frozen=True):
    """``cancelled`` is false when the run had already ended."""

    run_id: str
    cancelled: bool


class SendBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Send a run's report to chat; the same ``request_id`` never sends twice."""

    request_id: RequestId


class Sent(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a send (a repeated request id returns the first outcome)."""

    run_id: str
    request_id: str
    target: str
    ok: bool
    detail: str = ""
    seq: int = 0
    repeated: bool = False


class RunList(msgspec.Struct, frozen=True):
    """A page of runs, newest first."""

    runs: list[RunRow]
    limit: int
    offset: int


class RunDetail(msgspec.Struct, frozen=True):
    """One run's projection rows; ``seq`` is the log position they were read at."""

    run: RunRow
    steps: list[StepRow]
    seq: int


class EventPage(msgspec.Struct, frozen=True):
    """Events of a run after a ``seq``; ask again with ``after=last_seq`` for more."""

    run_id: str
    records: list[Record]
    last_seq: int
    more: bool


class Info(msgspec.Struct, frozen=True, kw_only=True):
    """What the pane needs to know about this server."""

    version: str
    default_repo: str
    repo_roots: list[str]
    engines: list[str]
    engine: str
    model: str
    auth: bool
    heartbeat_seconds: float
    chat_webhook: bool


def decode_body(body: bytes, type_: type, *, empty_ok: bool = False):
    """Decode a JSON body into ``type_`` or raise ``ApiError`` (400 bad JSON, 422 bad fields)."""
    if not body.strip():
        if empty_ok:
            return type_()
        raise ApiError(400, "bad_json", "the request body is empty; send a JSON object")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "invalid_body", f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "bad_json", f"the request body is not valid JSON: {exc}") from None


def to_launch_request(body: LaunchBody, roots: tuple[Path, ...], *, origin: str) -> LaunchRequest:
    """The backend's ``LaunchRequest``, with the repository checked against the roots."""
    try:
        repo = resolve_repo(body.repo, roots)
    except RepoRefused as exc:
        status = 403 if exc.code == "repo_outside_roots" else 422
        raise ApiError(status, exc.code, str(exc)) from None
    return LaunchRequest(
        flow=body.flow,
        repo=repo,
        band=None if body.band in (None, "auto") else body.band,
        base=body.base or None,
        focus=body.focus,
        symptom=body.symptom,
        text=body.text,
        paths=tuple(body.paths),
        personas=tuple(body.personas),
        engine=body.engine,
        model=body.model or None,
        origin=body.origin or origin,
        thread=body.thread,
    )
