"""A step's streamed text reaches the log as few ``OutputDelta``s, in order, without the
stream ever waiting on a write (``actors.step_runner``, no Ray)."""

from __future__ import annotations

import asyncio
import json

import msgspec

from actors.engines.base import Delta, Usage
from actors.step_runner import AgentWriter, ModelPort, StepSpec, run_step
from events.memory_log import InMemoryLog
from events.types import OutputDelta, StepFinished, StepStarted

ANSWER = json.dumps({"final": {"summary": "word " * 60, "findings": []}})


def spec(**kw) -> StepSpec:
    return StepSpec(
        run_id="r", step_id="w1-junior-developer", persona="junior-developer", role="analyst",
        attempt=1, messages=[{"role": "user", "content": "look"}], repo="/r", commit="c",
        work_dir="/tmp/unused", **kw,
    )


def test_the_stream_is_read_while_a_write_commits_and_the_text_arrives_whole_and_in_order():
    log = InMemoryLog()
    first_write_held = asyncio.Event()
    stream_done = asyncio.Event()
    state = {"read_while_held": 0, "holding": False}

    async def append(events, keys):
        if any(isinstance(e, OutputDelta) for e in events) and not first_write_held.is_set():
            first_write_held.set()
            state["holding"] = True
            # This commit is slow: it lasts the whole stream (a stream that waited on it never ends).
            await asyncio.wait_for(stream_done.wait(), 5.0)
            state["holding"] = False
        return log.append(events, keys)

    async def read_step(run_id, step_id):
        return log.read(0, run_id=run_id, step_id=step_id)

    pieces = [ANSWER[i : i + 3] for i in range(0, len(ANSWER), 3)]

    async def stream(request):
        for piece in pieces:
            await asyncio.sleep(0.001)
            if state["holding"]:
                state["read_while_held"] += 1
            yield Delta(text=piece, tokens=1)
        stream_done.set()
        yield Delta(finish_reason="stop", usage=Usage(prompt_tokens=5, completion_tokens=len(pieces)))

    outcome = asyncio.run(
        run_step(
            spec(flush_seconds=0.005), append=append, read_step=read_step, stream=stream,
            model=ModelPort(supports_tools=False, supports_continue=True), tools=None,
        )
    )
    assert outcome.status == "finished"
    # Reading went on while the first write was committing.
    assert state["read_while_held"] >= len(pieces) - 2
    deltas = [r.event for r in log.read(0) if isinstance(r.event, OutputDelta)]
    offset = 0
    for d in deltas:  # contiguous, in order: each chunk starts where the last one ended
        assert d.offset == offset
        offset += len(d.text)
    assert "".join(d.text for d in deltas) == ANSWER
    assert sum(d.tokens for d in deltas) == len(pieces)
    assert len(deltas) < len(pieces) / 4  # coalesced: what came during the slow commit went as one
    finished = [r.event for r in log.read(0) if isinstance(r.event, StepFinished)]
    assert finished and finished[0].output.startswith('{"summary"')


def test_text_after_a_quiet_spell_is_written_without_waiting_for_more():
    log = InMemoryLog()
    written = asyncio.Event()

    async def append(events, keys):
        if any(isinstance(e, OutputDelta) for e in events):
            written.set()
        return log.append(events, keys)

    async def read_step(run_id, step_id):
        return log.read(0, run_id=run_id, step_id=step_id)

    async def stream(request):
        yield Delta(text=ANSWER[:10], tokens=1)
        # The model pauses: what it said so far must reach the log meanwhile.
        await asyncio.wait_for(written.wait(), 2.0)
        yield Delta(text=ANSWER[10:], tokens=1)
        yield Delta(finish_reason="stop")

    outcome = asyncio.run(
        run_step(
            spec(flush_seconds=0.05), append=append, read_step=read_step, stream=stream,
            model=ModelPort(supports_tools=False, supports_continue=True), tools=None,
        )
    )
    assert outcome.status == "finished"
    deltas = [r.event for r in log.read(0) if isinstance(r.event, OutputDelta)]
    assert deltas[0].text == ANSWER[:10]


def test_steps_of_one_agent_share_its_appends_and_each_keeps_its_order():
    # An agent running several steps makes one call to the log at a time for all of them:
    # each append carries every step's text gathered since the last one.
    log = InMemoryLog()
    calls: list[list] = []

    async def append(events, keys):
        calls.append(list(events))
        await asyncio.sleep(0.003)  # a commit takes a while
        return log.append(events, keys)

    async def read_step(run_id, step_id):
        return log.read(0, run_id=run_id, step_id=step_id)

    pieces = [ANSWER[i : i + 4] for i in range(0, len(ANSWER), 4)]

    async def stream(request):
        for piece in pieces:
            await asyncio.sleep(0.001)
            yield Delta(text=piece, tokens=1)
        yield Delta(finish_reason="stop")

    steps = [f"w1-step-{i}" for i in range(6)]

    async def main():
        writer = AgentWriter(append, window=0.02)
        return await asyncio.gather(*(
            run_step(
                msgspec.structs.replace(spec(), step_id=step), append=append, read_step=read_step,
                stream=stream, model=ModelPort(supports_tools=False, supports_continue=True),
                tools=None, writer=writer,
            )
            for step in steps
        ))

    outcomes = asyncio.run(main())
    assert [o.status for o in outcomes] == ["finished"] * len(steps)
    for step in steps:
        events = [r.event for r in log.read(0, step_id=step)]
        kinds = [type(e).__name__ for e in events]
        # Started, its text, finished: in that order.
        assert kinds[0] == "StepStarted" and kinds[-1] == "StepFinished"
        assert set(kinds[1:-1]) == {"OutputDelta"}
        assert "".join(e.text for e in events[1:-1]) == ANSWER
        assert [e.offset for e in events[1:-1]] == [
            sum(len(e.text) for e in events[1:i]) for i in range(1, len(events) - 1)
        ]
    text_calls = [c for c in calls if any(isinstance(e, OutputDelta) for e in c)]
    # Each step streamed ~0.1 s: at one append of text per 20 ms, a handful for all six
    # steps together (a writer per step would make six times as many).
    assert len(text_calls) <= 12
    assert max(sum(isinstance(e, OutputDelta) for e in c) for c in text_calls) >= 4


def test_the_model_is_asked_while_the_start_commits_and_nothing_overtakes_the_start():
    # The step does not wait for its start to be committed before asking the model; its
    # text and its end still reach the log after the start, even when the whole answer
    # streams before that commit is done.
    log = InMemoryLog()
    start_held = asyncio.Event()
    streamed = asyncio.Event()

    async def append(events, keys):
        if any(isinstance(e, StepStarted) for e in events):
            start_held.set()
            await asyncio.wait_for(streamed.wait(), 5.0)  # a slow commit
        return log.append(events, keys)

    async def read_step(run_id, step_id):
        return log.read(0, run_id=run_id, step_id=step_id)

    async def stream(request):
        assert not log.read(0)  # asked before the start was committed
        for i in range(0, len(ANSWER), 5):
            yield Delta(text=ANSWER[i : i + 5], tokens=1)
        streamed.set()
        yield Delta(finish_reason="stop")

    outcome = asyncio.run(
        run_step(
            spec(), append=append, read_step=read_step, stream=stream,
            model=ModelPort(supports_tools=False, supports_continue=True), tools=None,
        )
    )
    assert outcome.status == "finished"
    events = [r.event for r in log.read(0)]
    assert isinstance(events[0], StepStarted) and isinstance(events[-1], StepFinished)
    assert "".join(e.text for e in events[1:-1]) == ANSWER


def test_a_cancelled_step_has_written_all_it_ever_will_once_it_has_ended():
    # Whoever cancels a step (its run's cancel) writes the run's end once the step has
    # ended: nothing of the step may commit after that. Step A is cancelled while its start
    # is in an append under way; step B of the same agent while its start waits behind it.
    async def main():
        log = InMemoryLog()
        release = asyncio.Event()
        calls = 0

        async def append(events, keys):
            nonlocal calls
            calls += 1
            if calls == 1:
                await release.wait()  # A's start commits slowly
            return log.append(events, keys)

        async def read_step(run_id, step_id):
            return log.read(0, run_id=run_id, step_id=step_id)

        async def stream(request):
            while True:
                await asyncio.sleep(0.005)
                yield Delta(text="more ", tokens=1)

        writer = AgentWriter(append, 0.005)
        port = ModelPort(supports_tools=False, supports_continue=True)

        def start(step):
            return asyncio.create_task(run_step(
                step, append=append, read_step=read_step, stream=stream, model=port, tools=None,
                writer=writer,
            ))

        a = start(spec())
        await asyncio.sleep(0.05)
        b = start(msgspec.structs.replace(spec(), step_id="w1-test-engineer", persona="test-engineer"))
        await asyncio.sleep(0.05)
        a.cancel()
        b.cancel()
        await asyncio.sleep(0.05)
        assert not a.done()  # it waits for the append holding its start
        release.set()
        await asyncio.wait([a, b], timeout=5)
        assert a.cancelled() and b.cancelled()
        ended = len(log.read(0))
        await asyncio.sleep(0.1)  # the writer had B's start and both steps' text to send
        events = [r.event for r in log.read(0)]
        assert len(events) == ended
        assert [(type(e), e.step_id) for e in events] == [(StepStarted, "w1-junior-developer")]

    asyncio.run(main())
