"""Send a run's report to chat: the run's own thread, and the configured webhook if any.

The thread that launched the run is ours (the pane shows a ``report_sent`` event as a message
in that run's thread); ``ORCH_CHAT_WEBHOOK_URL`` receives ``{run_id, title, markdown}`` as
JSON. A request id sends at most once: a repeat returns the first outcome, read back from the
``ReportSent`` event. Transient webhook failures (connection errors, timeouts, 429, 5xx) are
retried with a short backoff; the final outcome, good or bad, is recorded.

This lives in the API layer because the backend's facade leaves sending to its callers; it
appends the ``ReportSent`` event through the backend's log client, with the idempotency key
``<run_id>/report_sent/<request_id>``.
"""

from __future__ import annotations

import threading
import time
from pathlib import PurePath
from urllib.parse import urlsplit

import httpx

from events.types import ReportSent

RETRIES = 3
BACKOFF_S = (0.2, 0.6)
TIMEOUT_S = 10.0


class ChatSender:
    """Once-only sends; one lock per request id so a double click posts once."""

    def __init__(self, backend, webhook_url: str = ""):
        self.backend = backend
        self.webhook_url = webhook_url
        # Each lock with the count of its users: it goes when the last one is done (the send
        # is in the log by then), or every request id ever tried would be kept for ever.
        self._locks: dict[tuple[str, str], tuple[threading.Lock, list[int]]] = {}
        self._guard = threading.Lock()

    def send(self, run_id: str, request_id: str) -> dict:
        """Send once (blocking: call it from a worker thread). Raises ``NotFound`` or
        ``LaunchError(code="not_ready")`` before the report exists."""
        key = (run_id, request_id)
        with self._guard:
            lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                return self._send(run_id, request_id)
        finally:
            with self._guard:
                users[0] -= 1
                if not users[0]:
                    del self._locks[key]

    def _send(self, run_id: str, request_id: str) -> dict:
        state = self.backend.state(run_id)
        first = state.sent.get(request_id)
        if first is not None:
            return _outcome(first, seq=self._seq_of(run_id, request_id), repeated=True)
        markdown = self.backend.report(run_id, "md")
        target = f"thread:{state.request.thread or run_id}" if state.request else "thread"
        ok, detail = True, "shown in the run's thread"
        if self.webhook_url:
            target += f",webhook:{urlsplit(self.webhook_url).netloc}"
            ok, detail = self._post(
                {"run_id": run_id, "title": _title(state), "markdown": markdown}
            )
        event = ReportSent(
            run_id=run_id, ts=time.time(), request_id=request_id, target=target, ok=ok, detail=detail
        )
        (seq,) = self.backend.log.append([event], [f"{run_id}/report_sent/{request_id}"])
        return _outcome(event, seq=seq)

    def _seq_of(self, run_id: str, request_id: str) -> int:
        """The seq of the ``ReportSent`` that answered ``request_id`` first."""
        after = 0
        while page := self.backend.events(run_id, after, 1000):
            for rec in page:
                if isinstance(rec.event, ReportSent) and rec.event.request_id == request_id:
                    return rec.seq
            after = page[-1].seq
        return 0

    def _post(self, body: dict) -> tuple[bool, str]:
        last = ""
        for attempt in range(RETRIES):
            try:
                with httpx.Client(timeout=TIMEOUT_S) as client:
                    resp = client.post(self.webhook_url, json=body)
                if resp.status_code < 300:
                    return True, f"webhook answered {resp.status_code}"
                last = f"webhook answered {resp.status_code}"
                if resp.status_code != 429 and resp.status_code < 500:
                    return False, last  # the webhook refused it: retrying will not help
            except httpx.HTTPError as exc:
                last = f"webhook unreachable: {type(exc).__name__}: {exc}"
            if attempt < RETRIES - 1:
                time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
        return False, f"{last} (after {RETRIES} attempts)"


def _title(state) -> str:
    req = state.request
    name = PurePath(req.repo).name if req else ""
    title = f"{req.flow} of {name}" if req else state.run_id
    if state.plan is not None:
        title += f" ({state.plan.band})"
    if state.report is not None and state.report.recommendation:
        title += f": {state.report.recommendation}"
    return title


def _outcome(event: ReportSent, *, seq: int = 0, repeated: bool = False) -> dict:
    return {
        "run_id": event.run_id,
        "request_id": event.request_id,
        "target": event.target,
        "ok": event.ok,
        "detail": event.detail,
        "seq": seq,
        "repeated": repeated,
    }

