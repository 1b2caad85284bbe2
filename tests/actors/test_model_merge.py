"""The replica joins text deltas that come close together, keeping everything in order."""

from __future__ import annotations

import asyncio
import time

import pytest

from actors.engines.base import Delta, EngineError, ToolCallDelta, Usage
from actors.model import merged


async def timed(deltas, gaps):
    for delta, gap in zip(deltas, gaps):
        await asyncio.sleep(gap)
        yield delta


async def collect(gen):
    return [d async for d in gen]


def test_close_deltas_are_joined_and_nothing_is_lost_or_reordered():
    pieces = [Delta(text=f"t{i} ", tokens=1) for i in range(30)]
    end = Delta(tool_calls=[ToolCallDelta(id="c", name="grep", arguments="{}")], finish_reason="tool_calls",
                usage=Usage(prompt_tokens=3, completion_tokens=30))
    out = asyncio.run(collect(merged(timed(pieces + [end], [0.002] * 31), 0.02)))
    text = "".join(d.text for d in out)
    assert text == "".join(p.text for p in pieces)
    assert sum(d.tokens for d in out) == 30
    assert out[-1] == end  # the finishing delta comes last, unchanged
    assert len(out) < 15  # joined: 30 deltas 2 ms apart in 20 ms windows


def test_first_delta_leaves_at_once():
    async def main():
        start = time.monotonic()
        gen = merged(timed([Delta(text="a", tokens=1), Delta(text="b", tokens=1)], [0, 1.0]), 0.5)
        first = await gen.__anext__()
        took = time.monotonic() - start
        await gen.aclose()
        return first, took

    first, took = asyncio.run(main())
    assert first.text == "a"
    assert took < 0.25  # not held for the 0.5 s window


def test_engine_error_reaches_the_reader_after_the_text_before_it():
    async def failing():
        yield Delta(text="partial", tokens=1)
        await asyncio.sleep(0.001)
        raise EngineError("model went away", retryable=True)

    async def main():
        got = []
        with pytest.raises(EngineError, match="went away"):
            async for d in merged(failing(), 0.02):
                got.append(d.text)
        return got

    assert asyncio.run(main()) == ["partial"]


def test_closing_the_stream_stops_the_engine():
    stopped = asyncio.Event()

    async def endless():
        try:
            while True:
                yield Delta(text="x", tokens=1)
                await asyncio.sleep(0.001)
        finally:
            stopped.set()

    async def main():
        gen = merged(endless(), 0.01)
        await gen.__anext__()
        await gen.aclose()
        await asyncio.wait_for(stopped.wait(), 1.0)
        return stopped.is_set()

    assert asyncio.run(main())
