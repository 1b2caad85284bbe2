"""Checks on a run request before anything is written: a clear error, or nothing.

What cannot be known without the repository (does it exist, does the base ref resolve, does
the document exist) is checked when the snapshot is pinned and the run planned.

>>> from conductor.flows import FLOWS
>>> from events.types import RunRequested
>>> validate(RunRequested(run_id="r", ts=0.0, flow="investigate", repo="."), FLOWS)
Traceback (most recent call last):
...
conductor.requests.RequestError: investigate needs a symptom: what goes wrong, as you would tell a colleague
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from conductor.flows import BANDS, Flow
from events.types import RunRequested

__all__ = ["RequestError", "validate"]

_CHECKED_FIELDS = ("focus", "symptom", "base", "paths")  # 'text' is welcome in every flow


class RequestError(ValueError):
    """A request that cannot run; ``code`` is stable for clients."""

    def __init__(self, message: str, code: str = "bad_request"):
        super().__init__(message)
        self.code = code


def validate(
    request: RunRequested, flows: Mapping[str, Flow], personas: Collection[str] | None = None
) -> None:
    """Raise ``RequestError`` for a request that cannot run. ``personas``, the names of the
    personas there are, checks the ones the request names (a caller that cannot know them,
    a client ahead of its server, leaves them to the server)."""
    flow = flows.get(request.flow)
    if flow is None:
        known = ", ".join(sorted(flows))
        raise RequestError(f"unknown flow {request.flow!r}; known flows: {known}", "unknown_flow")
    if request.band is not None and request.band not in BANDS:
        raise RequestError(
            f"band {request.band!r} is not one of {', '.join(BANDS)} (leave it out to size the "
            "run from the code)",
            "bad_band",
        )
    if not str(request.repo).strip():
        raise RequestError("a repository is required", "missing_input")
    for spec in flow.inputs:
        if spec.required and not _given(getattr(request, spec.field)):
            raise RequestError(f"{flow.name} needs a {spec.name}: {spec.help}", "missing_input")
    taken = {spec.field for spec in flow.inputs}
    for field in _CHECKED_FIELDS:
        if field not in taken and _given(getattr(request, field)):
            names = ", ".join(spec.name for spec in flow.inputs)
            raise RequestError(
                f"{flow.name} does not take a {field} (it takes: {names})", "bad_input"
            )
    if personas is not None:
        # A mistyped name would otherwise run without the specialist the user asked for.
        unknown = [n.strip() for n in request.personas if n.strip() and n.strip().lower() not in personas]
        if unknown:
            noun = "persona" if len(unknown) == 1 else "personas"
            raise RequestError(
                f"unknown {noun} {', '.join(map(repr, unknown))} (`orchestrator personas` lists "
                "the personas there are)",
                "unknown_persona",
            )
    for path in request.paths:
        if not path.strip() or path.startswith("/") or ".." in path.replace("\\", "/").split("/"):
            raise RequestError(
                f"path {path!r} must be relative to the repository and stay inside it", "bad_input"
            )


def _given(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return bool(value)
