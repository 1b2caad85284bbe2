"""A scripted OpenAI-compatible model server: fixed first-token latency and token rate.

Streams ``/v1/chat/completions`` as server-sent events. Each token's text carries the wall-clock
time it was sent (``~<ts>~``), so a subscriber can measure token → subscriber latency without
a shared clock service. Loopback only; the benchmarks start and stop it themselves.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route


def make_app(
    *, first_token_s: float, tokens: int, tokens_per_s: float, arrivals: list[float] | None = None
) -> Starlette:
    """``arrivals`` gets the wall-clock time each chat request arrived."""

    async def completions(request: Request):
        if arrivals is not None:
            arrivals.append(time.time())
        body = await request.json()
        model = body.get("model", "stub")

        async def events():
            await asyncio.sleep(first_token_s)
            gap = 1.0 / tokens_per_s
            start = time.monotonic()
            for i in range(tokens):
                # Keep to the schedule rather than drifting with each sleep's overshoot.
                delay = start + i * gap - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                chunk = {
                    "id": "stub",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": f"~{time.time():.6f}~ "}}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            done = {
                "id": "stub",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens},
            }
            yield f"data: {json.dumps(done)}\n\n"
            yield "data: [DONE]\n\n"

        if body.get("stream"):
            return StreamingResponse(events(), media_type="text/event-stream")
        await asyncio.sleep(first_token_s + tokens / tokens_per_s)
        return JSONResponse(
            {
                "id": "stub",
                "object": "chat.completion",
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens},
            }
        )

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/models", models),
        ]
    )


class StubServer:
    """Runs the stub in a background thread on a free loopback port."""

    def __init__(self, *, first_token_s: float = 0.2, tokens: int = 40, tokens_per_s: float = 100.0):
        self.first_token_s, self.tokens, self.tokens_per_s = first_token_s, tokens, tokens_per_s
        self.arrivals: list[float] = []  # when each chat request arrived
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(
            make_app(
                first_token_s=first_token_s, tokens=tokens, tokens_per_s=tokens_per_s, arrivals=self.arrivals
            ),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def call_seconds(self) -> float:
        """How long one streamed call takes at best (the critical path's unit)."""
        return self.first_token_s + self.tokens / self.tokens_per_s

    def __enter__(self) -> StubServer:
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("stub server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def stamps(text: str) -> list[float]:
    """The send times embedded in streamed text."""
    out = []
    for part in text.split("~"):
        try:
            value = float(part)
        except ValueError:
            continue
        if value > 1e9:
            out.append(value)
    return out
