"""The guard every engine runs behind: stream limits (callers wait), timeouts, scripted
failures, and what a continued answer looks like from the scripted test double."""

from __future__ import annotations

import asyncio
import time

import pytest

from actors.engines.base import ChatRequest, EngineError, Guard
from actors.engines.scripted import ScriptedEngine

ASK = [{"role": "user", "content": "go"}]


def guard(script, **kw) -> Guard:
    options = dict(max_streams=2, timeout=10.0, attempts=3, backoff_base=0.01, backoff_cap=0.05)
    options.update(kw)
    return Guard(ScriptedEngine(script), **options)


async def collect(engine, req):
    return [d async for d in engine.stream(req)]


def test_more_callers_than_streams_wait_their_turn_and_all_finish():
    g = guard({"tokens_per_s": 100, "replies": [{"text": "a b c d e f g h i j"}]})
    seen_active, seen_waiting = [], []

    async def one():
        text = ""
        async for d in g.stream(ChatRequest(messages=ASK)):
            seen_active.append(g.active)
            seen_waiting.append(g.waiting)
            text += d.text
        return text

    async def main():
        start = time.monotonic()
        texts = await asyncio.gather(*(one() for _ in range(6)))
        return texts, time.monotonic() - start

    texts, elapsed = asyncio.run(main())
    assert texts == ["a b c d e f g h i j"] * 6  # none failed
    assert max(seen_active) == 2  # never more than max_streams at once
    assert max(seen_waiting) >= 1  # the others queued
    assert elapsed >= 3 * 0.09  # three rounds of ~0.1 s streams, not one


def test_a_stream_that_stalls_times_out_retryably():
    script = {"replies": [{"text": "x y z", "first_token_s": 5.0}]}
    g = guard(script, timeout=0.3, attempts=1)
    start = time.monotonic()
    with pytest.raises(EngineError, match="no first token within 0.3s") as info:
        asyncio.run(collect(g, ChatRequest(messages=ASK)))
    assert info.value.retryable and time.monotonic() - start < 2


def test_a_stream_that_runs_too_long_times_out_retryably_without_a_retry():
    script = {"tokens_per_s": 10, "replies": [{"text": "one two three four five six seven"}]}
    g = guard(script, timeout=0.35, attempts=3)
    got = []

    async def main():
        async for d in g.stream(ChatRequest(messages=ASK)):
            got.append(d.text)

    with pytest.raises(EngineError, match="did not finish within") as info:
        asyncio.run(main())
    assert info.value.retryable
    assert got and len(g.engine.requests) == 1  # text was streamed: the caller decides


def test_a_scripted_transient_failure_is_retried_then_succeeds():
    script = {"replies": [{"text": "fine now", "fail_at": 0, "fail_times": 2}]}
    g = guard(script, attempts=3)
    deltas = asyncio.run(collect(g, ChatRequest(messages=ASK)))
    assert "".join(d.text for d in deltas) == "fine now"
    assert len(g.engine.requests) == 3


def test_a_scripted_fatal_failure_is_not_retried():
    script = {"replies": [{"text": "a b c d", "fail_at": 2, "fail": "fatal", "fail_times": -1}]}
    g = guard(script)
    got = []

    async def main():
        async for d in g.stream(ChatRequest(messages=ASK)):
            got.append(d.text)

    with pytest.raises(EngineError, match="after 2 tokens") as info:
        asyncio.run(main())
    assert not info.value.retryable and got == ["a ", "b "]
    assert len(g.engine.requests) == 1


def test_the_scripted_engine_continues_from_the_committed_prefix():
    script = {"replies": [{"turn": 0, "text": "The answer is forty two."}]}
    g = guard(script)
    req = ChatRequest(
        messages=ASK + [{"role": "assistant", "content": "The answer is"}], continue_final=True
    )
    deltas = asyncio.run(collect(g, req))
    assert "".join(d.text for d in deltas) == " forty two."
    wrong = ChatRequest(messages=ASK + [{"role": "assistant", "content": "Nope"}], continue_final=True)
    with pytest.raises(EngineError, match="does not begin the scripted reply"):
        asyncio.run(collect(g, wrong))


def test_replies_are_picked_by_text_and_turn_and_tool_calls_come_whole():
    script = {
        "replies": [
            {"match": "security", "turn": 0, "tool_calls": [{"name": "grep", "arguments": {"pattern": "eval"}}]},
            {"match": "security", "turn": 1, "json": {"final": "done"}},
            {"text": "generic"},
        ]
    }  # fmt: skip
    g = guard(script)
    first = asyncio.run(collect(g, ChatRequest(messages=[{"role": "system", "content": "security analyst"}])))
    assert first[-1].finish_reason == "tool_calls"
    (call,) = first[-1].tool_calls
    assert (call.name, call.arguments) == ("grep", '{"pattern": "eval"}')
    later = [{"role": "system", "content": "security analyst"}, {"role": "assistant", "content": "x"}]
    second = asyncio.run(collect(g, ChatRequest(messages=later)))
    assert "".join(d.text for d in second) == '{"final": "done"}'
    other = asyncio.run(collect(g, ChatRequest(messages=ASK)))
    assert "".join(d.text for d in other) == "generic"


def test_continue_final_needs_an_assistant_message_last():
    g = guard({"replies": [{"text": "x"}]})
    with pytest.raises(EngineError, match="partial assistant message"):
        asyncio.run(collect(g, ChatRequest(messages=ASK, continue_final=True)))


def test_guard_settings_are_checked_up_front():
    with pytest.raises(ValueError, match="max_streams"):
        guard({"replies": []}, max_streams=0)
    with pytest.raises(ValueError, match="timeout"):
        guard({"replies": []}, timeout=0)


def test_a_list_match_needs_every_part_and_the_tag_counts():
    script = {
        "replies": [
            {"match": ["test-engineer/", "scenario-fail"], "text": "failing one"},
            {"text": "everyone else"},
        ]
    }
    g = guard(script)
    both = ChatRequest(messages=[{"role": "user", "content": "scenario-fail"}], tag="test-engineer/s1/r1")
    one = ChatRequest(messages=[{"role": "user", "content": "scenario-fail"}], tag="architect/s2/r1")
    texts = [asyncio.run(collect(g, r)) for r in (both, one)]
    assert ["".join(d.text for d in t) for t in texts] == ["failing one", "everyone else"]
