"""The ``scripted`` engine: a deterministic test double behind the same interface.

It streams set text and tool calls at a set latency and token rate, picked from a script by
what the request holds (the request's tag or message text, and the turn), and can fail at a
set point with a retryable or a fatal error. ``auto`` never selects it.

A script (JSON file, dict or ``Script``)::

    {"tokens_per_s": 200, "replies": [
        {"match": "security", "turn": 0, "json": {"tool": "grep", "args": {"pattern": "eval"}}},
        {"match": ["security", "run-7"], "text": "{\\"final\\": {}}", "fail_at": 3},
        {"text": "{\\"final\\": {\\"findings\\": []}}"}
    ]}

The first reply that matches wins. ``match`` is looked for in the request's tag (the step
runner sends ``persona/step/run``) and message text; a list must all be found. ``turn`` counts
the assistant messages already in the conversation; a partial answer being continued does not.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import msgspec

from actors.engines.base import ChatRequest, Delta, EngineError, ToolCallDelta, Usage, check_request

_PIECE = re.compile(r"\s*\S+\s*|\s+")


class ScriptError(ValueError):
    """A script that cannot be used; the message says why."""


class ScriptedCall(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    arguments: Any = {}  # a dict (sent as JSON text) or JSON text
    id: str = ""


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    # Found in the request's tag or message text ("" matches every request); a list must all be.
    match: str | list[str] = ""
    turn: int | None = None  # assistant turns already in the conversation; None: any turn
    text: str = ""
    json: Any = None  # when set, the text is this value written as JSON
    tool_calls: list[ScriptedCall] = []
    fail_at: int | None = None  # fail after streaming this many tokens
    fail: Literal["retryable", "fatal"] = "retryable"
    fail_times: int = 1  # fail on this many uses of the reply, then succeed; -1: always
    first_token_s: float | None = None  # overrides the script's
    tokens_per_s: float | None = None

    @property
    def body(self) -> str:
        return self.text if self.json is None else json.dumps(self.json)


class Script(msgspec.Struct, frozen=True, kw_only=True):
    replies: list[Reply]
    first_token_s: float = 0.0
    tokens_per_s: float = 0.0  # 0: as fast as possible
    model: str = "scripted"
    supports_tools: bool = False
    supports_continue: bool = True


def load_script(source: Script | dict[str, Any] | str | Path) -> Script:
    """A script from a ``Script``, a dict, JSON text, or the path of a JSON file."""
    if isinstance(source, Script):
        return source
    where = "script"
    try:
        if isinstance(source, dict):
            return msgspec.convert(source, Script)
        text = str(source)
        if not text.lstrip().startswith("{"):
            where = text
            text = Path(text).expanduser().read_text(encoding="utf-8")
        return msgspec.json.decode(text, type=Script)
    except OSError as exc:
        raise ScriptError(f"cannot read the script {where}: {exc.strerror or exc}") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ScriptError(f"bad script {where}: {exc}") from None


def _turn(req: ChatRequest) -> int:
    messages = req.messages[:-1] if req.continue_final else req.messages
    return sum(1 for m in messages if m.get("role") == "assistant")


def _haystack(req: ChatRequest) -> str:
    parts = [req.tag]
    for m in req.messages:
        content = m.get("content")
        parts.append(content if isinstance(content, str) else json.dumps(content))
    return "\n".join(parts)


class ScriptedEngine:
    name = "scripted"

    def __init__(self, script: Script | dict[str, Any] | str | Path):
        self.script = load_script(script)
        self.model = self.script.model
        self.supports_tools = self.script.supports_tools
        self.supports_continue = self.script.supports_continue
        self._uses: dict[int, int] = {}
        self.requests: list[ChatRequest] = []  # what it was asked, for tests

    def pick(self, req: ChatRequest) -> tuple[int, Reply]:
        turn, haystack = _turn(req), _haystack(req)
        for i, reply in enumerate(self.script.replies):
            wanted = [reply.match] if isinstance(reply.match, str) else reply.match
            if (reply.turn is None or reply.turn == turn) and all(m in haystack for m in wanted):
                return i, reply
        raise EngineError(f"scripted: no reply matches turn {turn} of request {req.tag!r}")

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        check_request(self, req)
        self.requests.append(req)
        index, reply = self.pick(req)
        uses = self._uses[index] = self._uses.get(index, 0) + 1
        text = reply.body
        if req.continue_final:
            partial = req.messages[-1].get("content") or ""
            if not text.startswith(partial):
                raise EngineError("scripted: the partial answer does not begin the scripted reply")
            text = text[len(partial) :]
        fatal = reply.fail == "fatal"
        failing = reply.fail_at is not None and (reply.fail_times < 0 or uses <= reply.fail_times)
        first = self.script.first_token_s if reply.first_token_s is None else reply.first_token_s
        rate = self.script.tokens_per_s if reply.tokens_per_s is None else reply.tokens_per_s
        await asyncio.sleep(first)
        start, sent = time.monotonic(), 0
        for piece in _PIECE.findall(text):
            if failing and sent >= (reply.fail_at or 0):
                raise EngineError(f"scripted failure after {sent} tokens", not fatal)
            if rate > 0:  # keep to the schedule rather than drifting with each sleep
                await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
            else:
                await asyncio.sleep(0)
            sent += 1
            yield Delta(text=piece, tokens=1)
        if failing:
            raise EngineError(f"scripted failure after {sent} tokens", not fatal)
        calls = [
            ToolCallDelta(
                id=c.id or f"call-{index}-{i}",
                name=c.name,
                arguments=c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments),
            )
            for i, c in enumerate(reply.tool_calls)
            if req.tool_choice != "none"  # as real servers do: no calls when none are allowed
        ]
        prompt = sum(len(p) for p in _haystack(req)) // 4
        yield Delta(
            tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop",
            usage=Usage(prompt_tokens=prompt, completion_tokens=sent),
        )

    async def close(self) -> None:
        return None
