"""Picking a step up again from the log (``actors.step_runner.run_step``), without Ray.

An agent is "killed" by cancelling its task mid-stream: what it had committed stays in the
log, what it had not is gone, exactly as after kill -9. A second agent then picks the step up
from the log. The scripted engine streams a known answer, so every check is against that text.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from actors.engines.scripted import ScriptedEngine
from actors.step_runner import ModelPort, StepSpec, run_step
from actors.tools import ToolOutcome
from conductor.state import fold
from events.memory_log import InMemoryLog
from events.types import (
    OutputDelta,
    StepFinished,
    StepQueued,
    StepStarted,
    ToolCalled,
    ToolResult,
)
from tests.conductor.test_superseded_writer import STEP, one_step_queued

RUN = "run-1"
FINAL = {
    "summary": "read calc.py and found one problem " + "with plenty of words to stream " * 6,
    "findings": [],
}
ANSWER = json.dumps({"final": FINAL})
TOOL_TURN = json.dumps({"tool": "read_file", "args": {"path": "calc.py"}})
FILE_TEXT = "def add(a, b):\n    return a - b\n"


class CountingTools:
    """Read-only tools that count how often they really ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def call(self, name: str, args: dict) -> ToolOutcome:
        self.calls.append((name, args))
        return ToolOutcome(ok=True, content=FILE_TEXT)


class Harness:
    def __init__(self, *, supports_continue: bool, tokens_per_s: float = 400.0, tool_turn: bool = True):
        replies = []
        if tool_turn:
            replies.append({"turn": 0, "text": TOOL_TURN})
        replies.append({"text": ANSWER})
        self.engine = ScriptedEngine(
            {"tokens_per_s": tokens_per_s, "supports_continue": supports_continue, "replies": replies}
        )
        self.model = ModelPort(supports_tools=False, supports_continue=supports_continue)
        self.log = InMemoryLog()
        self.tools = CountingTools()
        self.log.append(one_step_queued(RUN), ["requested", "planned", "queued"])
        self.kill = None  # (the step's task, the kill point) while a kill is armed

    def spec(self, attempt: int = 1, resume: bool = False) -> StepSpec:
        return StepSpec(
            run_id=RUN, step_id=STEP, persona="junior-developer", role="analyst", attempt=attempt,
            resume=resume, messages=[{"role": "user", "content": "review calc.py"}],
            repo="/r", commit="c0", work_dir="/tmp/unused", flush_seconds=0.0, flush_chars=1,
        )

    async def run(self, spec: StepSpec):
        async def append(events, keys):
            seqs = self.log.append(events, keys)
            if self.kill is not None and self.kill[1](self.events()):
                # The agent dies right at this commit: the kill point is never overrun, however
                # slow the machine (a poll beside the stream could miss it).
                self.kill[0].cancel()
                self.kill = None
            return seqs

        async def read_step(run_id, step_id):
            return self.log.read(0, run_id=run_id, step_id=step_id)

        return await run_step(
            spec, append=append, read_step=read_step, stream=self.engine.stream,
            model=self.model, tools=self.tools,
        )

    async def run_until_killed(self, spec: StepSpec, killed_when) -> None:
        """Run ``spec`` and cancel it (the agent dies) at the commit after which
        ``killed_when(events)`` holds."""
        task = asyncio.ensure_future(self.run(spec))
        self.kill = (task, killed_when)
        try:
            await task
        except asyncio.CancelledError:
            return
        raise AssertionError("the step ended without reaching the kill point")

    def events(self):
        return [r.event for r in self.log.read(0)]

    def deltas(self, turn: int | None = None):
        return [e for e in self.events() if isinstance(e, OutputDelta) and (turn is None or e.turn == turn)]


def streaming_turn(turn: int, pieces: int):
    """Kill point: ``pieces`` deltas of ``turn`` are committed."""
    return lambda events: sum(isinstance(e, OutputDelta) and e.turn == turn and e.text != "" for e in events) >= pieces


def text_of(deltas) -> str:
    text = ""
    for d in deltas:
        text = text[: d.offset] + d.text
    return text


def test_a_continuing_engine_resumes_at_the_committed_offset_and_regenerates_nothing():
    h = Harness(supports_continue=True)

    async def scenario():
        await h.run_until_killed(h.spec(), streaming_turn(1, 5))
        before = h.events()
        committed = text_of([e for e in before if isinstance(e, OutputDelta)])
        calls_before = len(h.tools.calls)
        await h.run(h.spec(resume=True))
        return before, committed, calls_before

    before, committed, calls_before = asyncio.run(scenario())
    after = h.events()[len(before):]
    started = [e for e in after if isinstance(e, StepStarted)]
    assert len(started) == 1 and started[0].attempt == 1
    assert started[0].continued_from == len(committed) > len(TOOL_TURN)
    new = [e for e in after if isinstance(e, OutputDelta) and e.text]
    # The new text starts exactly where the committed text ends and overlaps none of it.
    assert new[0].offset == len(committed)
    assert sum(len(e.text) for e in new) == len(TOOL_TURN + ANSWER) - len(committed)
    # The engine was asked to continue the turn's partial answer, not to start again.
    last = h.engine.requests[-1]
    assert last.continue_final and ANSWER.startswith(last.messages[-1]["content"])
    assert last.messages[-1]["content"] == committed[len(TOOL_TURN):]
    # The tool ran once, before the kill; its result was replayed from the log.
    assert len(h.tools.calls) == calls_before == 1
    assert any(m["role"] == "user" and FILE_TEXT in m["content"] for m in last.messages)
    finished = [e for e in after if isinstance(e, StepFinished)]
    assert len(finished) == 1 and json.loads(finished[0].output) == FINAL
    step = fold(h.events()).steps[STEP]
    assert step.status == "finished" and step.text == TOOL_TURN + ANSWER and step.superseded == []


def test_a_non_continuing_engine_starts_a_new_attempt_visibly_and_replays_the_tool():
    h = Harness(supports_continue=False)

    async def scenario():
        await h.run_until_killed(h.spec(), streaming_turn(1, 5))
        committed = text_of(h.deltas())
        await h.run(h.spec(resume=True))
        return committed

    committed = asyncio.run(scenario())
    started = [e for e in h.events() if isinstance(e, StepStarted)]
    assert [(e.attempt, e.continued_from) for e in started] == [(1, 0), (2, 0)]
    step = fold(h.events()).steps[STEP]
    assert step.attempt == 2 and step.status == "finished"
    assert step.superseded == [committed]  # the earlier text is kept, marked superseded
    assert step.text == TOOL_TURN + ANSWER  # and the answer holds the text once
    # The new attempt asked for the same read; it was answered from the log, not run again.
    assert len(h.tools.calls) == 1
    results = [e for e in h.events() if isinstance(e, ToolResult)]
    assert [(r.attempt, r.content) for r in results] == [(1, FILE_TEXT), (2, FILE_TEXT)]


def test_a_non_continuing_engine_keeps_its_attempt_when_only_whole_turns_were_committed():
    h = Harness(supports_continue=False, tokens_per_s=0)
    # An agent died right after the tool's result was committed, before the next turn streamed.
    h.log.append(
        [
            StepStarted(run_id=RUN, ts=4.0, step_id=STEP),
            OutputDelta(run_id=RUN, ts=4.1, step_id=STEP, text=TOOL_TURN, offset=0, tokens=6),
            ToolCalled(run_id=RUN, ts=4.2, step_id=STEP, call_id="call-0", tool="read_file",
                       args={"path": "calc.py"}),
            ToolResult(run_id=RUN, ts=4.3, step_id=STEP, call_id="call-0", tool="read_file",
                       content=FILE_TEXT),
        ],
        [f"{RUN}/{STEP}/1/0/{i}" for i in range(4)],
    )
    asyncio.run(h.run(h.spec(resume=True)))
    started = [e for e in h.events() if isinstance(e, StepStarted)]
    assert [(e.attempt, e.continued_from) for e in started] == [(1, 0), (1, len(TOOL_TURN))]
    assert h.tools.calls == []  # replayed, never run again
    req = h.engine.requests[-1]
    assert not req.continue_final and req.messages[-1]["content"].endswith(FILE_TEXT)
    step = fold(h.events()).steps[STEP]
    assert step.text == TOOL_TURN + ANSWER and step.superseded == [] and step.attempt == 1


def test_a_call_whose_result_never_reached_the_log_runs_once_on_pickup():
    h = Harness(supports_continue=True, tokens_per_s=0)
    h.log.append(
        [
            StepStarted(run_id=RUN, ts=4.0, step_id=STEP),
            OutputDelta(run_id=RUN, ts=4.1, step_id=STEP, text=TOOL_TURN, offset=0, tokens=6),
            ToolCalled(run_id=RUN, ts=4.2, step_id=STEP, call_id="call-0", tool="read_file",
                       args={"path": "calc.py"}),
        ],
        [f"{RUN}/{STEP}/1/0/{i}" for i in range(3)],
    )
    asyncio.run(h.run(h.spec(resume=True)))
    assert h.tools.calls == [("read_file", {"path": "calc.py"})]
    results = [e for e in h.events() if isinstance(e, ToolResult)]
    assert len(results) == 1 and results[0].call_id == "call-0"
    assert fold(h.events()).steps[STEP].text == TOOL_TURN + ANSWER


def test_a_whole_turn_committed_without_its_tool_call_is_not_streamed_again():
    h = Harness(supports_continue=True, tokens_per_s=0)
    # The tool call's text was committed in full; the agent died before recording the call.
    h.log.append(
        [
            StepStarted(run_id=RUN, ts=4.0, step_id=STEP),
            OutputDelta(run_id=RUN, ts=4.1, step_id=STEP, text=TOOL_TURN, offset=0, tokens=6),
        ],
        [f"{RUN}/{STEP}/1/0/{i}" for i in range(2)],
    )
    asyncio.run(h.run(h.spec(resume=True)))
    turn0 = [e for e in h.deltas(turn=0) if e.text]
    assert [e.text for e in turn0] == [TOOL_TURN]  # nothing of it was generated again
    assert len(h.tools.calls) == 1
    assert fold(h.events()).steps[STEP].text == TOOL_TURN + ANSWER


def test_repeated_kills_each_continue_where_the_last_one_stopped():
    h = Harness(supports_continue=True, tool_turn=False, tokens_per_s=300)

    async def scenario():
        spec = h.spec()
        for pieces in (3, 8, 14):
            await h.run_until_killed(spec, streaming_turn(0, pieces))
            spec = h.spec(resume=True)
        await h.run(spec)

    asyncio.run(scenario())
    events = h.events()
    started = [e for e in events if isinstance(e, StepStarted)]
    assert len(started) == 4 and {e.attempt for e in started} == {1}
    # Every pickup continued from exactly what was committed before it.
    text = ""
    for e in events:
        if isinstance(e, StepStarted):
            assert e.continued_from == len(text)
        elif isinstance(e, OutputDelta):
            assert e.offset == len(text), "a delta overlaps or skips committed text"
            text += e.text
    assert text == ANSWER
    assert sum(len(e.text) for e in h.deltas()) == len(ANSWER)  # no character twice


def test_an_agent_still_running_after_its_step_was_picked_up_is_set_aside():
    # Ray reports an agent it cannot reach as lost; the step goes to a second agent while the
    # first keeps streaming. Both write to the log; every fold keeps the second.
    h = Harness(supports_continue=True, tokens_per_s=300)

    async def scenario():
        first = asyncio.ensure_future(h.run(h.spec()))
        for _ in range(2000):
            await asyncio.sleep(0.005)
            if streaming_turn(1, 3)(h.events()):
                break
        second = await h.run(h.spec(resume=True))
        return await first, second

    first, second = asyncio.run(scenario())
    assert first.status == second.status == "finished"
    events = h.events()
    by_pickup = {p: [e for e in events if getattr(e, "pickup", None) == p and not isinstance(e, StepQueued)]
                 for p in (0, 1)}
    starts = [e for e in events if isinstance(e, StepStarted)]
    assert [(e.attempt, e.pickup) for e in starts] == [(1, 0), (1, 1)]
    pickup_at = events.index(starts[1])
    # The first agent really wrote on after the pickup: text and its own ending.
    late = [e for e in events[pickup_at:] if e in by_pickup[0]]
    assert any(isinstance(e, OutputDelta) and e.text for e in late)
    assert sum(isinstance(e, StepFinished) for e in events) == 2
    # The second agent signed everything it wrote, the replayed tool result too.
    assert all(isinstance(e, StepFinished | OutputDelta | StepStarted | ToolCalled | ToolResult)
               for e in by_pickup[1])
    step = fold(events).steps[STEP]
    assert (step.status, step.pickup, step.text) == ("finished", 1, TOOL_TURN + ANSWER)
    ending = [e for e in by_pickup[1] if isinstance(e, StepFinished)]
    assert len(ending) == 1 and (step.tokens_in, step.tokens_out) == (ending[0].tokens_in, ending[0].tokens_out)
    assert len(h.tools.calls) == 1  # the second agent replayed the first one's tool result
