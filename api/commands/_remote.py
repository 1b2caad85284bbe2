"""``orchestrator run`` through a running server, while ``serve`` holds the data directory.

DuckDB lets one process write the file, and the server's event log holds it; so the run is
launched with the server's REST API, watched on its WebSocket (the same events, folded the same
way as a local run) and its report fetched over REST. The run is the server's: interrupting
this command stops the watching, not the run (``orchestrator cancel RUN`` stops that).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from api.commands import CommandError

RECONNECTS = 5  # a dropped WebSocket is resumed from the last seq this many times in a row


class RemoteRuns:
    """The two things ``run`` needs of an Orchestrator, from the server at ``url``."""

    def __init__(self, url: str, token: str = ""):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        # The server is this machine's (server.json): no proxy between us.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def launch(self, body: dict[str, Any]) -> str:
        return self._call("POST", "/api/runs", body)["run_id"]

    def report(self, run_id: str, fmt: str) -> str:
        query = urllib.parse.urlencode({"format": fmt})
        return self._call("GET", f"/api/runs/{urllib.parse.quote(run_id)}/report?{query}", raw=True)

    async def subscribe(self, run_id: str, after: int) -> AsyncIterator[list]:
        """The run's committed events from ``after`` on, as lists of ``Record`` (what a
        local subscription gives); resumed from the last one seen if the line drops."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        from api.ws import BatchFrame, ErrorFrame, EventFrame, ServerFrame
        from events.log import Record

        decode = msgspec.json.Decoder(ServerFrame).decode
        ws_url = "ws" + self.url[len("http"):] + "/ws"
        failures = 0
        while True:
            try:
                async with connect(ws_url, additional_headers=self.headers, proxy=None,
                                   max_size=None) as ws:
                    await ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": after}))
                    async for message in ws:
                        frame = decode(message)
                        frames = frame.frames if isinstance(frame, BatchFrame) else [frame]
                        error = next((f for f in frames if isinstance(f, ErrorFrame)), None)
                        if error is not None:
                            raise CommandError(f"the server refused to show run {run_id}: {error.message}")
                        records = [Record(f.seq, f.event) for f in frames if isinstance(f, EventFrame)]
                        if records:
                            failures = 0
                            after = records[-1].seq
                            yield records
            except (ConnectionClosed, InvalidHandshake, OSError) as exc:
                failures += 1
                if failures > RECONNECTS:
                    raise CommandError(
                        f"lost the server at {self.url} ({exc}); run {run_id} goes on there when "
                        f"it is back: `orchestrator show {run_id}`"
                    ) from None
                await asyncio.sleep(0.5 * failures)

    def _call(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers, **({"Content-Type": "application/json"} if data else {}))
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with self._http.open(request, timeout=120) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            hint = " (set ORCH_TOKEN to the server's token)" if exc.code == 401 else ""
            raise CommandError(f"the server refused: {_message(exc)}{hint}", 2 if exc.code < 500 else 1) from None
        except (urllib.error.URLError, OSError) as exc:
            raise CommandError(f"cannot reach the server at {self.url}: {exc}") from None
        return text if raw else json.loads(text)


def _message(exc: urllib.error.HTTPError) -> str:
    """The API's own words for a refusal (``{"error": {"code", "message"}}``)."""
    try:
        return json.loads(exc.read())["error"]["message"]
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {exc.code} {exc.reason}"
