"""The one door into a running Orchestrator, for the CLI and the API.

``Orchestrator`` starts (or joins) Ray, the event-log actor, the model deployment and the agent
pool; it validates and pins a launch before anything is written, appends the run's first
events, and hands the run to a ``FlowRun`` actor. Reads (runs, events, reports, analytics) come
from the log and its projections. Every method is synchronous and safe to call from a thread;
the API calls them through ``run_in_threadpool``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from actors.config import Settings


class LaunchRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a client asks for when it launches a flow (REST body, WebSocket frame, CLI)."""

    flow: str
    repo: str
    band: str | None = None
    base: str | None = None
    focus: str = ""
    symptom: str = ""
    text: str = ""
    paths: tuple[str, ...] = ()
    personas: tuple[str, ...] = ()
    engine: str | None = None
    model: str | None = None
    origin: str = "api"
    thread: str = ""


class LaunchError(ValueError):
    """A launch was refused before anything was written (unknown flow, bad band, missing repo,
    unknown ref, repository outside the configured roots…). ``code`` is stable for clients."""

    def __init__(self, message: str, code: str = "bad_request"):
        super().__init__(message)
        self.code = code


class NotFound(LookupError):
    """No run with that id."""


__all__ = ["LaunchError", "LaunchRequest", "NotFound", "Orchestrator", "Settings"]


def __getattr__(name: str) -> Any:
    # The implementation pulls in Ray; import it only when someone asks for it.
    if name == "Orchestrator":
        from actors.orchestrator import Orchestrator

        return Orchestrator
    raise AttributeError(name)
