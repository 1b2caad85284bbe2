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
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec

from conductor.prompts import MESSAGE_OVERHEAD, estimate_tokens, messages_tokens
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
    # The persona's id prefix and severity words as the run's plan recorded them: a user
    # persona is no builtin, so its name alone would not give them to the answer's reader.
    id_prefix: str = ""
    severities: tuple[str, ...] = ()
    max_tokens: int = 512
    turn_limit: int = 6
    # The conversation's budget in tokens (0: unbounded; the answer's ``max_tokens`` come on
    # top, as the embedded engine's context does). The prompt leaves ``max_tokens`` of it for
    # tool turns, and tool results are cut to what is left: a long file would push the next
    # turn past the model's context, which llama.cpp refuses outright.
    context_tokens: int = 0
    # Where the pinned snapshot lives, so the tools read the same commit on any agent.
    repo: str
    commit: str
    work_dir: str
    # Streamed text: the agent's writer appends it at most this often (the first text after a
    # pause at once), and a step waits for its text to be written once this much is pending.
    # No window by default: the model replica already joins text over 5-20 ms, and one append
    # in flight per agent gathers what comes meanwhile. A second window in series only held
    # text longer (fan-out token p99 median 48 ms with 20 ms here, 41 ms without, in 14
    # alternating runs each, with the same output deltas and CPU; twenty 12-agent runs at once
    # made as many commits either way).
    flush_seconds: float = 0.0
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
    pickup: int = 0  # the latest of them (events of earlier ones written since are ignored)
    text: str = ""
    turn_starts: dict[int, int] = {}  # where each turn's text begins in ``text``
    calls: list[ToolCalled] = []
    # By (turn, call id): a server may give calls of different turns the same id.
    outcomes: dict[tuple[int, str], ToolResult | ToolDenied] = {}
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
        if isinstance(ev, StepStarted):
            c.started += 1
        if ev.superseded(attempt, c.pickup, c.ended is not None):
            continue
        match ev:
            case StepStarted():
                c.pickup = ev.pickup
                c.text = c.text[: ev.continued_from]
                c.turn_starts = {t: s for t, s in c.turn_starts.items() if s < len(c.text)}
            case OutputDelta():
                c.text = c.text[: ev.offset] + ev.text
                if ev.text:
                    c.turn_starts.setdefault(ev.turn, ev.offset)
            case ToolCalled():
                c.calls.append(ev)
            case ToolResult() | ToolDenied():
                # An outcome is written after its call, so it answers the latest call of that id
                # (an outcome names no turn, in logs old and new).
                turn = next((call.turn for call in reversed(c.calls) if call.call_id == ev.call_id), None)
                if turn is not None:
                    c.outcomes[(turn, ev.call_id)] = ev
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
    """The idempotency keys of one pickup of one step's attempt, and its writes.

    A key names the attempt, the pickup (how many agents had started this attempt before)
    and the event's place in that pickup, so an append retried after the log actor restarts
    is not written twice, and a late append of an agent that died cannot take the key of
    one written by the agent that picked the step up after it.
    """

    def __init__(self, agent: AgentWriter, spec: StepSpec, attempt: int, pickup: int):
        self.agent = agent
        self.pickup = pickup
        self._prefix = f"{spec.run_id}/{spec.step_id}/{attempt}/{pickup}/"
        self._n = 0
        # Why an append holding this step's start or text failed: its later writes fail
        # too, so a step never ends as if they had been written.
        self.failed: BaseException | None = None
        self._start: asyncio.Future | None = None  # the step's start, while being written
        self._held: list[_Coalescer] = []  # text that waits for the start to be written

    def start(self, event: AgentEvent) -> None:
        """Write the step's start without waiting for it (the model is asked meanwhile). The
        step's text waits until the start is committed; its other writes queue behind it."""
        self._start = asyncio.ensure_future(self.agent.write(self, self._signed([event])))
        self._start.add_done_callback(self._started)

    def _started(self, future: asyncio.Future) -> None:
        if future.cancelled():  # the step was stopped before its start was sent
            return
        if future.exception() is not None:
            self.failed = future.exception()
            return
        held, self._held = self._held, []
        for coalescer in held:
            if coalescer.has_text():
                self.agent.text_pending(coalescer)

    def text_ready(self, coalescer: _Coalescer) -> None:
        if self._start is not None and not self._start.done():
            if coalescer not in self._held:
                self._held.append(coalescer)
        else:
            self.agent.text_pending(coalescer)

    async def started(self) -> None:
        """Wait until the step's start is committed (raising why not, if it failed)."""
        if self._start is not None:
            await asyncio.wait([self._start])
        self.check()

    def key(self) -> str:
        self._n += 1
        return f"{self._prefix}{self._n - 1}"

    async def write(self, *events: AgentEvent) -> list[int]:
        """Append ``events`` (after the step's start and any text it has pending) and wait
        for the commit."""
        await self.started()  # then its held text is pending, and goes ahead of these
        return await self.agent.write(self, self._signed(events))

    def _signed(self, events: Sequence[AgentEvent]) -> list[AgentEvent]:
        # Each event names this pickup, so folds can set it aside once a later one started
        # (a replayed tool outcome still names the pickup it was first written by).
        pickup = self.pickup
        return [e if e.pickup == pickup else msgspec.structs.replace(e, pickup=pickup) for e in events]

    async def settle(self) -> None:
        """For a step being stopped: its writes not yet sent are dropped, and the append
        under way (it may hold its start or text) is waited for, so nothing of the step is
        committed after it has ended."""
        self.agent.drop(self)
        if self._start is not None:
            self._start.cancel()
        with contextlib.suppress(Exception):
            await self.agent.write(self, [])  # goes once the append under way has returned

    def check(self) -> None:
        """Raise why a write of this step's text failed, if one did."""
        if self.failed is not None:
            raise self.failed


class AgentWriter:
    """Writes the events of every step one agent runs, in as few appends as it can.

    Each append costs the log a commit (about 1 ms of its CPU), so an agent has one in flight
    at a time for all its steps. Events a step waits on (it started, called a tool, ended) and
    streamed text go in the next append as soon as the one in flight returns, each step's text
    gathered since the last append as one ``OutputDelta``. With a ``window``, text goes at
    most that often (the first text after a quiet spell at once): ``window / 4`` for a lone
    step, growing by as much for each step streaming beside it, up to ``window``, so an agent
    streaming a dozen steps makes about 1/``window`` calls a second. A step's pending
    text goes before its other events in an append, so its events keep their order; and a
    step waits on its own writes, so nothing it streams later can overtake them.
    """

    def __init__(self, append: Append, window: float):
        self._append = append
        self._max_window = window
        self.streaming = 0  # steps of this agent streaming now
        self._texts: dict[_Coalescer, None] = {}  # steps with text pending, in arrival order
        self._waiting: list[tuple[_Writer, list[AgentEvent], asyncio.Future[list[int]]]] = []
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._last = float("-inf")  # loop time the last append of text began

    async def write(self, step: _Writer, events: list[AgentEvent]) -> list[int]:
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._waiting.append((step, events, future))
        self._kick()
        return await future

    def text_pending(self, coalescer: _Coalescer) -> None:
        self._texts[coalescer] = None
        self._kick()

    def forget(self, coalescer: _Coalescer) -> None:
        self._texts.pop(coalescer, None)

    def drop(self, step: _Writer) -> None:
        """Send none of ``step``'s writes not yet taken into an append (it is being stopped)."""
        for entry in self._waiting:
            if entry[0] is step:
                entry[2].cancel()
        self._waiting = [entry for entry in self._waiting if entry[0] is not step]

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        else:
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting or self._texts:
            window = self._max_window * min(1.0, max(1, self.streaming) / 4)
            wait = self._last + window - loop.time()
            if not self._waiting and wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()  # a step waits on a write: go now
                continue
            events: list[AgentEvent] = []
            keys: list[str] = []
            owners: list[_Writer] = []  # the step each event is of
            texts = [c for c in self._texts if c.has_text()]
            self._texts.clear()
            for coalescer in texts:
                events.append(coalescer.take())
                keys.append(coalescer.step.key())
                owners.append(coalescer.step)
            waiting, taken, self._waiting = [], self._waiting, []
            for step, evs, future in taken:
                if step.failed is not None:  # its text was lost: it must not go on as if not
                    _settle(future, step.failed)
                    continue
                waiting.append((step, evs, future))
                events.extend(evs)
                keys.extend(step.key() for _ in evs)
                owners.extend(step for _ in evs)
            if not events:
                for _, _, future in waiting:
                    _settle(future, [])
                continue
            if texts:
                self._last = loop.time()
            failed: dict[_Writer, Exception] = {}
            try:
                seqs = await self._append(events, keys)
            except ValueError as exc:  # an event the log cannot take (MalformedEvent is one)
                if len(set(owners)) > 1:
                    seqs, failed = await self._apart(events, keys, owners)
                else:
                    seqs, failed = [], {owners[0]: exc}
            except Exception as exc:  # the log failed: every step with events in it hears of it
                seqs, failed = [], dict.fromkeys(owners, exc)
            for coalescer in texts:
                if coalescer.step in failed:
                    coalescer.step.failed = failed[coalescer.step]
            at = len(texts)
            for step, evs, future in waiting:
                _settle(future, failed[step] if step in failed else seqs[at : at + len(evs)])
                at += len(evs)

    async def _apart(
        self, events: list[AgentEvent], keys: list[str], owners: list[_Writer]
    ) -> tuple[list[int], dict[_Writer, Exception]]:
        """The events of a refused append, each step's appended alone: an event one step made
        that the log cannot take (text a broken endpoint sent, say) fails that step, not every
        step of the agent whose events went in the same append."""
        seqs = [0] * len(events)
        failed: dict[_Writer, Exception] = {}
        for step in dict.fromkeys(owners):
            mine = [i for i, owner in enumerate(owners) if owner is step]
            try:
                got = await self._append([events[i] for i in mine], [keys[i] for i in mine])
            except Exception as exc:
                failed[step] = exc
                continue
            for i, seq in zip(mine, got):
                seqs[i] = seq
        return seqs, failed


def _settle(future: asyncio.Future, result: Any) -> None:
    if future.done():  # the step stopped waiting (it was cancelled)
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class _Coalescer:
    """A step's streamed text, gathered until its agent's writer takes it as one
    ``OutputDelta`` (see ``AgentWriter``). Reading the stream never waits on a write, unless
    ``flush_chars`` of text are pending: then the step waits for them to be committed. A
    failed write of its text is raised by the step's next ``add``, ``flush`` or write.
    """

    def __init__(self, step: _Writer, spec: StepSpec, attempt: int, offset: int, turn: int):
        self.step, self._spec, self._attempt = step, spec, attempt
        self.offset = offset  # where the next chunk starts in the attempt's text
        self.turn = turn
        self._buf: list[str] = []
        self._chars = 0
        self._tokens = 0
        self._ts = 0.0  # when the newest pending text came

    async def add(self, text: str, tokens: int) -> None:
        if not text and not tokens:
            return
        self.step.check()
        self._buf.append(text)
        self._chars += len(text)
        self._tokens += tokens
        self._ts = time.time()
        if self._chars >= self._spec.flush_chars:
            await self.flush()  # a long run of text: write it now, and let reading wait on it
        else:
            self.step.text_ready(self)

    async def flush(self) -> None:
        """Write everything gathered so far and wait for it to be committed."""
        await self.step.started()  # the step's text never goes ahead of its start
        if self.has_text():
            self.step.agent.text_pending(self)
            await self.step.write()  # an empty write: it goes after this step's pending text
        self.step.check()

    def close(self) -> None:
        """Drop the pending text (the step is being cancelled)."""
        self.step.agent.forget(self)
        self._buf, self._chars, self._tokens = [], 0, 0

    def has_text(self) -> bool:
        return bool(self._buf)

    def take(self) -> OutputDelta:
        """The text gathered so far as one event, stamped with when its newest part came
        (the writer calls this)."""
        text = "".join(self._buf)
        delta = OutputDelta(
            run_id=self._spec.run_id,
            ts=self._ts,
            step_id=self._spec.step_id,
            attempt=self._attempt,
            pickup=self.step.pickup,
            text=text,
            offset=self.offset,
            turn=self.turn,
            tokens=self._tokens,
        )
        self.offset += len(text)
        self._buf, self._chars, self._tokens = [], 0, 0
        return delta


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
    writer: AgentWriter | None = None,
) -> StepOutcome:
    """Run (or pick up again) one attempt of a step; every fact goes to the log first.

    ``writer`` is the agent's, shared by the steps it runs; without one the step writes
    through ``append`` on its own.
    """
    from actors.engines.base import ChatRequest, EngineError
    from actors.tools import TOOL_SPECS, call_schema, outcome_event
    from conductor.findings import PersonaInfo, parse_output

    # A first attempt just queued has nothing in the log to pick up or replay: no read.
    fresh = not spec.resume and spec.attempt == 1
    records = [] if fresh else await read_step(spec.run_id, spec.step_id)
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
    agent = writer if writer is not None else AgentWriter(append, spec.flush_seconds)
    writer = _Writer(agent, spec, attempt, done.started)
    # Not waited for: the model is asked while the start is committed (a commit less before
    # each first token); the step's text and later events are written after it.
    writer.start(
        StepStarted(
            run_id=spec.run_id,
            ts=time.time(),
            step_id=spec.step_id,
            attempt=attempt,
            continued_from=len(keep),
            worker=_worker_name(),
        )
    )

    try:
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
        # An engine without native tools is held to "call one tool or answer"; on the last turn to
        # the answer alone (tool_choice "none" with native tools), since a tool result asked for
        # then could not be given.
        schema = None if native_tools else call_schema(spec.final_schema)
        answer_only = None if native_tools else call_schema(spec.final_schema, tools=False)
        messages = list(spec.messages)
        # Replay committed turns: the model's text of each finished turn and its tool outcomes.
        for call in done.calls:
            outcome = done.outcomes.get((call.turn, call.call_id))
            if outcome is None:  # called, but its outcome never reached the log
                outcome = await call_tool(call.tool, dict(call.args), call.call_id)
                await writer.write(outcome)
            messages += _tool_messages(done.turn_text(call.turn), call, outcome, native_tools, _room(messages, spec))

        tokens_in = tokens_out = 0
        coalescer = _Coalescer(writer, spec, attempt, len(keep), turn)
        agent.streaming += 1
        try:
            while True:
                room = _room(messages, spec)
                last = turn + 1 >= spec.turn_limit or (room is not None and room < MIN_TOOL_ROOM)
                request = ChatRequest(
                    messages=messages + ([{"role": "assistant", "content": partial}] if partial else []),
                    tools=TOOL_SPECS if native_tools else None,
                    # Native tools on the last turn: the tools stay described (the conversation
                    # holds calls of them), but the model may only answer.
                    tool_choice="none" if native_tools and last else None,
                    response_schema=answer_only if last else schema,
                    max_tokens=spec.max_tokens,
                    temperature=0.0,
                    continue_final=bool(partial),
                    tag=f"{spec.persona}/{spec.step_id}/{spec.run_id}",
                )
                text, calls = partial, []
                async for delta in stream(request):
                    if delta.text or delta.tokens:
                        piece = _storable(delta.text)
                        text += piece
                        await coalescer.add(piece, delta.tokens)
                    calls.extend(delta.tool_calls or ())
                    if delta.usage is not None:
                        tokens_in += delta.usage.prompt_tokens
                        tokens_out += delta.usage.completion_tokens
                # The turn's last text goes in the same append as what the step writes next.
                writer.check()
                partial = ""
                wanted = _wanted_call(text, calls, native_tools, turn)
                if wanted is None or last:
                    final = _final_text(text, native_tools)
                    persona = (
                        PersonaInfo(spec.persona, spec.id_prefix, spec.severities)
                        if spec.id_prefix
                        else spec.persona
                    )
                    parsed = parse_output(final, persona=persona, step_id=spec.step_id, role=spec.role)
                    note = parsed.error
                    if wanted is not None:
                        why = (
                            f"turn limit ({spec.turn_limit}) reached"
                            if turn + 1 >= spec.turn_limit
                            else f"no room left in the model's context ({spec.context_tokens} tokens)"
                        )
                        note = (note + "; " if note else "") + f"{why} while the model still asked for tools"
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
                messages += _tool_messages(text, called, outcome, native_tools, room)
                turn += 1
                coalescer.turn = turn
        except asyncio.CancelledError:
            coalescer.close()
            raise
        except EngineError as exc:
            # The text streamed before the error goes first, in the same append.
            await writer.write(_failed(spec, attempt, str(exc), exc.retryable))
            return StepOutcome(step_id=spec.step_id, attempt=attempt, status="failed", error=str(exc))
        except Exception as exc:  # a failed step never takes its run down
            writer.failed = None  # (a failed write of its text, say): record the failure itself
            await writer.write(_failed(spec, attempt, f"{type(exc).__name__}: {exc}", False))
            return StepOutcome(step_id=spec.step_id, attempt=attempt, status="failed", error=str(exc))
        finally:
            agent.streaming -= 1
    except asyncio.CancelledError:
        await writer.settle()
        raise


def _storable(text: str) -> str:
    """``text`` as the log can store it: a lone surrogate (JSON's "\\ud800", which a broken
    or hostile endpoint may send) cannot be written as UTF-8, so it becomes U+FFFD."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text


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


MIN_TOOL_ROOM = 128  # tokens of context below which a tool result is no use: answer instead
_NO_ROOM = "[left out: the model's context has no room for it; give your final answer now]"
_CUT = "\n[cut here: the rest does not fit in the model's context]"


def _room(messages: list[dict[str, Any]], spec: StepSpec) -> int | None:
    """Tokens the conversation may still grow by within ``context_tokens``, estimated as the
    prompt builder does (None: no bound given)."""
    if spec.context_tokens <= 0:
        return None
    return spec.context_tokens - messages_tokens(messages)


def _fitted(result: str, tokens: int) -> str:
    """``result`` cut at a line to about ``tokens`` (the estimate's 4 characters a token)."""
    if estimate_tokens(result) <= tokens:
        return result
    if tokens < MIN_TOOL_ROOM:
        return _NO_ROOM
    head = result[: (tokens * 4) - len(_CUT)]
    return (head.rsplit("\n", 1)[0] if "\n" in head else head) + _CUT


def _tool_messages(
    text: str, called: ToolCalled, outcome: ToolResult | ToolDenied, native: bool, room: int | None = None
) -> list[dict[str, Any]]:
    """The turn's messages: the model's call and the tool's result, cut to ``room`` tokens."""
    if isinstance(outcome, ToolDenied):
        result = f"REFUSED: {outcome.reason}. Only read-only tools over the snapshot are allowed."
    else:
        result = outcome.content + ("\n[output truncated]" if outcome.truncated else "")
    if room is not None:
        call = json.dumps({"tool": called.tool, "args": called.args})
        # The turn's other text: the model's reply, its call, the "Result of ..." line.
        spent = estimate_tokens(text) + estimate_tokens(call) + 2 * MESSAGE_OVERHEAD + 8
        result = _fitted(result, room - spent)
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
