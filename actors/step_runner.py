"""One agent step: stream the model, let it call read-only tools, write every fact to the log.

Plain asyncio, no Ray: ``AgentStep`` (the actor) is a thin shell around ``run_step``. A step is
rebuilt from its own committed events whenever an agent picks it up, so picking it up again
after a crash or a dead agent is the same code path as starting it:

- completed tool calls are replayed from the log (their results are never asked for again);
- the text of the turn that was streaming is continued from its last committed character
  when the engine can continue a partial answer (``StepStarted.continued_from`` says where,
  and the new ``OutputDelta``s start at that offset), so no committed token is generated twice;
- otherwise, if that turn had text, the step starts a new attempt, visibly: the earlier
  attempt's text stays in the log and the fold keeps it as superseded. Tool results the
  earlier attempt had are replayed for the same calls rather than run again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec

from events.log import Record
from events.types import (
    AgentEvent,
    OutputDelta,
    StepFailed,
    StepFinished,
    StepStarted,
    ToolCalled,
    ToolDenied,
    ToolResult,
)

Append = Callable[[Sequence[AgentEvent], Sequence[str]], Awaitable[list[int]]]
ReadStep = Callable[[str, str], Awaitable[list[Record]]]


class StepSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything an agent needs to run one attempt of one step."""

    run_id: str
    step_id: str
    persona: str
    role: str
    attempt: int
    resume: bool = False
    messages: list[dict[str, Any]]
    final_schema: dict[str, Any] | None = None
    max_tokens: int = 512
    turn_limit: int = 6
    # Where the pinned snapshot lives, so the tools read the same commit on any agent.
    repo: str
    commit: str
    work_dir: str
    # Coalescing of output deltas: flush after this long or this many characters.
    flush_seconds: float = 0.02
    flush_chars: int = 512


class StepOutcome(msgspec.Struct, frozen=True, kw_only=True):
    step_id: str
    attempt: int
    status: str  # "finished" | "failed"
    error: str = ""


class _Committed(msgspec.Struct, kw_only=True):
    """What the log already holds for one attempt of a step."""

    attempt: int
    events: int = 0
    started: int = 0  # pickups of this attempt: each wrote a StepStarted
    text: str = ""
    turn_starts: dict[int, int] = {}  # where each turn's text begins in ``text``
    calls: list[ToolCalled] = []
    outcomes: dict[str, ToolResult | ToolDenied] = {}
    ended: StepFinished | StepFailed | None = None

    def turn_text(self, turn: int) -> str:
        start = self.turn_starts.get(turn)
        if start is None:
            return ""
        end = min((s for t, s in self.turn_starts.items() if t > turn), default=len(self.text))
        return self.text[start:end]


def _committed(records: Sequence[Record], attempt: int) -> _Committed:
    c = _Committed(attempt=attempt)
    for rec in records:
        ev = rec.event
        if getattr(ev, "attempt", None) != attempt:
            continue
        c.events += 1
        match ev:
            case StepStarted():
                c.started += 1
                c.text = c.text[: ev.continued_from]
                c.turn_starts = {t: s for t, s in c.turn_starts.items() if s < len(c.text)}
            case OutputDelta():
                c.text = c.text[: ev.offset] + ev.text
                if ev.text:
                    c.turn_starts.setdefault(ev.turn, ev.offset)
            case ToolCalled():
                c.calls.append(ev)
            case ToolResult() | ToolDenied():
                c.outcomes[ev.call_id] = ev
            case StepFinished() | StepFailed():
                c.ended = ev
    return c


def _earlier_outcomes(records: Sequence[Record], attempt: int) -> dict[str, ToolResult | ToolDenied]:
    """Outcomes of the tool calls of earlier attempts, by call (tool and arguments).

    The snapshot is pinned and the tools only read it, so the same call gives the same
    answer: a new attempt replays these instead of running the tool again.
    """
    called: dict[tuple[int, str], str] = {}
    found: dict[str, ToolResult | ToolDenied] = {}
    for rec in records:
        ev = rec.event
        if getattr(ev, "attempt", attempt) >= attempt:
            continue
        if isinstance(ev, ToolCalled):
            called[(ev.attempt, ev.call_id)] = _call_key(ev.tool, ev.args)
        elif isinstance(ev, ToolResult | ToolDenied):
            key = called.get((ev.attempt, ev.call_id))
            if key is None and isinstance(ev, ToolDenied):
                key = _call_key(ev.tool, ev.args)
            if key is not None:
                found[key] = ev
    return found


def _call_key(tool: str, args: Any) -> str:
    return json.dumps([tool, args], sort_keys=True, default=str)


class _Writer:
    """Appends a step's events with deterministic idempotency keys.

    A key names the attempt, the pickup (how many agents had started this attempt before)
    and the event's place in that pickup, so an append retried after the log actor restarts
    is not written twice, and a late append of an agent that died cannot take the key of
    one written by the agent that picked the step up after it.
    """

    def __init__(self, append: Append, spec: StepSpec, attempt: int, pickup: int):
        self._append = append
        self._prefix = f"{spec.run_id}/{spec.step_id}/{attempt}/{pickup}/"
        self._n = 0

    async def write(self, *events: AgentEvent) -> list[int]:
        keys = []
        for _ in events:
            keys.append(f"{self._prefix}{self._n}")
            self._n += 1
        return await self._append(list(events), keys)


class _Coalescer:
    """Gathers streamed text and writes it as few, prompt ``OutputDelta`` events.

    Writing never holds up reading the stream: text that comes while a write is committing is
    gathered and goes out in the next one, and a write starts at most every ``flush_seconds``
    (the first text after a quiet spell goes at once). One write at a time, so the events keep
    the order of the text. A write that failed is raised by the next ``add`` or ``flush``.
    """

    def __init__(self, writer: _Writer, spec: StepSpec, attempt: int, offset: int, turn: int):
        self._w, self._spec, self._attempt = writer, spec, attempt
        self.offset = offset  # where the next flushed chunk starts in the attempt's text
        self.turn = turn
        self._buf: list[str] = []
        self._chars = 0
        self._tokens = 0
        self._last = -spec.flush_seconds  # loop time of the last write's start
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    async def add(self, text: str, tokens: int) -> None:
        if not text and not tokens:
            return
        self._raise_failure()
        self._buf.append(text)
        self._chars += len(text)
        self._tokens += tokens
        if self._chars >= self._spec.flush_chars:
            await self.flush()  # a long run of text: write it now, and let reading wait on it
        elif self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._write_soon())

    async def flush(self) -> None:
        """Write everything gathered so far and wait for it to be committed."""
        if self._task is not None:
            await asyncio.wait([self._task])
        self._raise_failure()
        await self._write()

    def close(self) -> None:
        """Drop a pending write (the step is being cancelled)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _write_soon(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._last + self._spec.flush_seconds - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        await self._write()

    async def _write(self) -> None:
        async with self._lock:
            text = "".join(self._buf)
            tokens = self._tokens
            if not text and not tokens:
                return
            self._buf, self._chars, self._tokens = [], 0, 0
            self._last = asyncio.get_running_loop().time()
            offset = self.offset
            self.offset += len(text)
            await self._w.write(
                OutputDelta(
                    run_id=self._spec.run_id,
                    ts=time.time(),
                    step_id=self._spec.step_id,
                    attempt=self._attempt,
                    text=text,
                    offset=offset,
                    turn=self.turn,
                    tokens=tokens,
                )
            )

    def _raise_failure(self) -> None:
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            self._task = None
            raise task.exception()


class ModelPort(msgspec.Struct, frozen=True, kw_only=True):
    """What a step needs to know of the model it calls."""

    supports_tools: bool
    supports_continue: bool


async def run_step(
    spec: StepSpec,
    *,
    append: Append,
    read_step: ReadStep,
    stream: Callable[[Any], AsyncIterator[Any]],
    model: ModelPort,
    tools: Any,
) -> StepOutcome:
    """Run (or pick up again) one attempt of a step; every fact goes to the log first."""
    from actors.engines.base import ChatRequest, EngineError
    from actors.tools import TOOL_SPECS, call_schema, outcome_event
    from conductor.findings import parse_output

    records = await read_step(spec.run_id, spec.step_id)
    attempt = spec.attempt
    done = _committed(records, attempt)
    if done.ended is not None:
        status = "finished" if isinstance(done.ended, StepFinished) else "failed"
        return StepOutcome(step_id=spec.step_id, attempt=attempt, status=status)
    # The log says how far this attempt got, whoever ran it before: continue from there.
    turn = max((call.turn + 1 for call in done.calls), default=0)
    partial = done.turn_text(turn)
    if partial and not model.supports_continue:
        # The engine cannot continue a partial answer: start a new attempt, visibly.
        attempt += 1
        done, turn, partial = _committed(records, attempt), 0, ""
        if done.events:  # an earlier pickup of the new attempt: start it over
            done = _Committed(attempt=attempt, started=done.started)
    earlier = _earlier_outcomes(records, attempt)
    keep = done.text
    writer = _Writer(append, spec, attempt, done.started)
    await writer.write(
        StepStarted(
            run_id=spec.run_id,
            ts=time.time(),
            step_id=spec.step_id,
            attempt=attempt,
            continued_from=len(keep),
            worker=_worker_name(),
        )
    )

    async def call_tool(name: str, args: dict[str, Any], call_id: str) -> ToolResult | ToolDenied:
        replay = earlier.get(_call_key(name, args))
        if replay is not None:
            return msgspec.structs.replace(replay, attempt=attempt, call_id=call_id, ts=time.time())
        # Tools served by another process (an agent off the head) are awaited, so the other
        # steps of this agent keep streaming meanwhile; local ones answer in a millisecond.
        call_async = getattr(tools, "call_async", None)
        outcome = await call_async(name, args) if call_async is not None else tools.call(name, args)
        return outcome_event(
            outcome,
            run_id=spec.run_id,
            step_id=spec.step_id,
            attempt=attempt,
            call_id=call_id,
            tool=name,
            args=args,
            ts=time.time(),
        )

    native_tools = model.supports_tools
    schema = spec.final_schema if native_tools else call_schema(spec.final_schema)
    messages = list(spec.messages)
    # Replay committed turns: the model's text of each finished turn and its tool outcomes.
    for call in done.calls:
        outcome = done.outcomes.get(call.call_id)
        if outcome is None:  # called, but its outcome never reached the log
            outcome = await call_tool(call.tool, dict(call.args), call.call_id)
            await writer.write(outcome)
        messages += _tool_messages(done.turn_text(call.turn), call, outcome, native_tools)

    tokens_in = tokens_out = 0
    coalescer = _Coalescer(writer, spec, attempt, len(keep), turn)
    try:
        while True:
            request = ChatRequest(
                messages=messages + ([{"role": "assistant", "content": partial}] if partial else []),
                tools=TOOL_SPECS if native_tools else None,
                response_schema=None if native_tools else schema,
                max_tokens=spec.max_tokens,
                temperature=0.0,
                continue_final=bool(partial),
                tag=f"{spec.persona}/{spec.step_id}/{spec.run_id}",
            )
            text, calls = partial, []
            async for delta in stream(request):
                if delta.text or delta.tokens:
                    text += delta.text
                    await coalescer.add(delta.text, delta.tokens)
                calls.extend(delta.tool_calls or ())
                if delta.usage is not None:
                    tokens_in += delta.usage.prompt_tokens
                    tokens_out += delta.usage.completion_tokens
            await coalescer.flush()
            partial = ""
            wanted = _wanted_call(text, calls, native_tools, turn)
            if wanted is None or turn + 1 >= spec.turn_limit:
                final = _final_text(text, native_tools)
                parsed = parse_output(final, persona=spec.persona, step_id=spec.step_id, role=spec.role)
                note = parsed.error
                if wanted is not None:
                    note = (note + "; " if note else "") + (
                        f"turn limit ({spec.turn_limit}) reached while the model still asked for tools"
                    )
                await writer.write(
                    StepFinished(
                        run_id=spec.run_id,
                        ts=time.time(),
                        step_id=spec.step_id,
                        attempt=attempt,
                        output=final,
                        findings=parsed.findings,
                        parse_error=note,
                        tokens_in=tokens_in,
                        tokens_out=tokens_out,
                    )
                )
                return StepOutcome(step_id=spec.step_id, attempt=attempt, status="finished")
            name, args, call_id = wanted
            called = ToolCalled(
                run_id=spec.run_id,
                ts=time.time(),
                step_id=spec.step_id,
                attempt=attempt,
                call_id=call_id,
                tool=name,
                args=args,
                turn=turn,
            )
            outcome = await call_tool(name, args, call_id)
            await writer.write(called)
            await writer.write(outcome)
            messages += _tool_messages(text, called, outcome, native_tools)
            turn += 1
            coalescer.turn = turn
    except asyncio.CancelledError:
        coalescer.close()
        raise
    except EngineError as exc:
        await coalescer.flush()
        await writer.write(_failed(spec, attempt, str(exc), exc.retryable))
        return StepOutcome(step_id=spec.step_id, attempt=attempt, status="failed", error=str(exc))
    except Exception as exc:  # a failed step never takes its run down
        await writer.write(_failed(spec, attempt, f"{type(exc).__name__}: {exc}", False))
        return StepOutcome(step_id=spec.step_id, attempt=attempt, status="failed", error=str(exc))


def _failed(spec: StepSpec, attempt: int, error: str, retryable: bool) -> StepFailed:
    return StepFailed(
        run_id=spec.run_id,
        ts=time.time(),
        step_id=spec.step_id,
        attempt=attempt,
        error=error,
        retryable=retryable,
    )


def _wanted_call(
    text: str, calls: list[Any], native: bool, turn: int
) -> tuple[str, dict[str, Any], str] | None:
    """The one tool call the model asked for this turn, if any."""
    if native:
        if not calls:
            return None
        call = calls[0]
        try:
            args = json.loads(call.arguments or "{}")
        except ValueError:
            args = {"_raw": call.arguments}
        return call.name, args if isinstance(args, dict) else {"_raw": args}, call.id or f"call-{turn}"
    obj = _json_object(text)
    if not obj or "tool" not in obj or "final" in obj:
        return None
    args = obj.get("args")
    return str(obj["tool"]), args if isinstance(args, dict) else {}, f"call-{turn}"


def _final_text(text: str, native: bool) -> str:
    """The final answer: in call-or-answer mode it is the ``final`` member."""
    if native:
        return text
    obj = _json_object(text)
    if obj and "final" in obj:
        final = obj["final"]
        return final if isinstance(final, str) else json.dumps(final)
    return text


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _tool_messages(
    text: str, called: ToolCalled, outcome: ToolResult | ToolDenied, native: bool
) -> list[dict[str, Any]]:
    if isinstance(outcome, ToolDenied):
        result = f"REFUSED: {outcome.reason}. Only read-only tools over the snapshot are allowed."
    else:
        result = outcome.content + ("\n[output truncated]" if outcome.truncated else "")
    if native:
        return [
            {
                "role": "assistant",
                "content": text or None,
                "tool_calls": [
                    {
                        "id": called.call_id,
                        "type": "function",
                        "function": {"name": called.tool, "arguments": json.dumps(called.args)},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": called.call_id, "content": result},
        ]
    return [
        {"role": "assistant", "content": text},
        {"role": "user", "content": f"Result of {called.tool}:\n{result}"},
    ]


def _worker_name() -> str:
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            return f"{ctx.get_node_id()[:8]}/{ctx.get_actor_id() or ''}"[:64]
    except Exception:
        pass
    return ""
