"""The one calling convention of the model: a chat request in, streamed deltas out.

Every engine (vllm, openai, embedded, scripted) takes a ``ChatRequest`` and yields ``Delta``s;
``Guard`` adds what every engine needs around it: a bound on concurrent streams (excess callers
wait), timeouts, and retries of transient failures that happen before anything was streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

import msgspec


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One chat completion, OpenAI-style."""

    messages: list[dict[str, Any]]
    # OpenAI function specs.
    tools: list[dict[str, Any]] | None = None  # sent natively where the engine has tool calls
    # "auto" (None), "none", "required" or {"type": "function", "function": {"name": ...}}.
    tool_choice: str | dict[str, Any] | None = None
    # Constrain the output to this JSON Schema (bound every array and string for small models).
    response_schema: dict[str, Any] | None = None
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int | None = None
    # The last message is a partial assistant answer: continue it, don't start a new one.
    continue_final: bool = False
    stop: list[str] | None = None
    # Who is asking (e.g. "run/step"), for logs and for keying a scripted reply.
    tag: str = ""


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ToolCallDelta(msgspec.Struct, frozen=True, kw_only=True):
    """One whole tool call: engines assemble streamed fragments before handing it on."""

    id: str = ""
    name: str = ""
    arguments: str = ""  # JSON text, as the model wrote it


class Delta(msgspec.Struct, frozen=True, kw_only=True):
    """A streamed piece of an answer; the last one carries ``finish_reason`` and ``usage``."""

    text: str = ""
    tokens: int = 0  # tokens this piece holds
    tool_calls: list[ToolCallDelta] = []
    finish_reason: str | None = None
    usage: Usage | None = None


class EngineError(Exception):
    """The model failed. ``retryable``: a transient failure (connection, timeout, 5xx, 429);
    ``retry_after``: the seconds the server asked us to wait before trying again, if it did."""

    def __init__(self, message: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after

    def __reduce__(self):  # keep ``retryable`` across processes
        return (type(self), (self.message, self.retryable, self.retry_after))

    def __str__(self) -> str:
        return self.message


@runtime_checkable
class Engine(Protocol):
    name: str
    model: str
    supports_tools: bool  # native OpenAI tool calls
    supports_continue: bool  # ``continue_final`` works

    def stream(self, req: ChatRequest) -> AsyncIterator[Delta]: ...

    async def close(self) -> None: ...


def check_request(engine: Engine, req: ChatRequest) -> None:
    """Refuse what the engine cannot do, before any work, with a clear message."""
    if req.continue_final:
        last = req.messages[-1] if req.messages else {}
        if last.get("role") != "assistant":
            raise EngineError("continue_final needs a partial assistant message last")
        if not engine.supports_continue:
            raise EngineError(f"the {engine.name} engine cannot continue a partial answer")


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: attempt 0 → up to ``base`` seconds."""
    return random.uniform(0, min(cap, base * 2**attempt))


class Guard:
    """An engine with concurrency limits, timeouts and retries; itself an ``Engine``.

    - At most ``max_streams`` streams run at once; more callers wait their turn (backpressure).
    - ``first_token_timeout`` bounds the wait for the first delta, ``timeout`` the whole stream
      (both start once the stream has its slot): a timeout is a retryable ``EngineError``.
    - A retryable failure before any delta was yielded is retried up to ``attempts`` times with
      jittered exponential backoff, or as long as the server's ``Retry-After`` asks, up to
      ``max_retry_after`` seconds. After a delta was yielded it is raised (still retryable):
      the caller holds the text so far and decides whether to continue it.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_streams: int,
        timeout: float,
        first_token_timeout: float | None = None,
        attempts: int = 4,
        backoff_base: float = 0.25,
        backoff_cap: float = 4.0,
        max_retry_after: float = 8.0,
    ):
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, not {max_streams}")
        if timeout <= 0:
            raise ValueError(f"the model timeout must be positive, not {timeout}")
        self.engine = engine
        self.name, self.model = engine.name, engine.model
        self.supports_tools = engine.supports_tools
        self.supports_continue = engine.supports_continue
        # An engine that serialises its work (one llama.cpp context) gets no more slots.
        limit = getattr(engine, "max_concurrency", None) or max_streams
        self.max_streams = min(max_streams, limit)
        self._slots = asyncio.Semaphore(self.max_streams)
        self.timeout = timeout
        self.first_token_timeout = min(first_token_timeout or timeout, timeout)
        self.attempts = max(1, attempts)
        self._base, self._cap = backoff_base, backoff_cap
        # A server's Retry-After is honoured up to this: a step does not sleep for minutes.
        self.max_retry_after = max_retry_after
        self.active = 0  # streams holding a slot now (for tests and metrics)
        self.waiting = 0

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        check_request(self.engine, req)
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            for attempt in range(self.attempts):
                yielded = False
                try:
                    # aclosing: a consumer that leaves closes the engine's stream now, not
                    # whenever the garbage collector gets to it.
                    async with contextlib.aclosing(self._timed(req)) as deltas:
                        async for delta in deltas:
                            yielded = True
                            yield delta
                    return
                except EngineError as exc:
                    if not exc.retryable or yielded or attempt + 1 >= self.attempts:
                        raise
                    wait = backoff(attempt, self._base, self._cap)
                    if exc.retry_after is not None:
                        wait = max(wait, min(exc.retry_after, self.max_retry_after))
                await asyncio.sleep(wait)
        finally:
            self.active -= 1
            self._slots.release()

    async def _timed(self, req: ChatRequest) -> AsyncIterator[Delta]:
        start = time.monotonic()
        it = aiter(self.engine.stream(req))
        first = True
        try:
            while True:
                limit = self.first_token_timeout if first else self.timeout
                left = start + limit - time.monotonic()
                try:
                    async with asyncio.timeout(max(left, 0.0)):
                        delta = await anext(it)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    what = "no first token" if first else "the answer did not finish"
                    raise EngineError(
                        f"{self.name}: {what} within {limit:g}s", retryable=True
                    ) from None
                first = False
                yield delta
        finally:
            await _close(it)

    async def close(self) -> None:
        await self.engine.close()


async def _close(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()
