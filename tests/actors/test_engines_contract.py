"""One engine contract, run against every engine that can run here.

``EngineContract`` holds the cases and needs one hook, ``make_engine()``; each engine adds a
small subclass. The base has no ``Test`` prefix, so it is not collected on its own, and a new
engine can import it and reuse the whole suite.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from actors.engines.base import ChatRequest, EngineError

QUESTION = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Name three colors."},
]
# Every array and string bounded, so a small model closes its JSON.
SCHEMA = {
    "type": "object",
    "properties": {
        "colors": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "note": {"type": "string", "maxLength": 16},
    },
    "required": ["colors", "note"],
}


async def collect(engine, req):
    return [d async for d in engine.stream(req)]


class EngineContract:
    """The behaviour every engine owes its callers."""

    def make_engine(self):
        raise NotImplementedError

    def run(self, body):
        """Run ``body(engine)`` on a fresh engine in its own event loop, then close it."""
        engine = self.make_engine()

        async def main():
            try:
                return await body(engine)
            finally:
                await engine.close()

        return asyncio.run(main())

    def test_streams_text_then_one_finish_with_usage(self):
        deltas = self.run(lambda e: collect(e, ChatRequest(messages=QUESTION, max_tokens=32)))
        *pieces, last = deltas
        assert any(d.text for d in pieces), "no text was streamed"
        assert all(d.finish_reason is None and d.usage is None for d in pieces)
        assert last.finish_reason in ("stop", "length")
        assert last.usage is not None and 0 < last.usage.completion_tokens <= 32
        # Counted by the server or, where it sends no usage in a stream, estimated: never 0.
        assert last.usage.prompt_tokens > 0
        # The pieces' token counts add up to what the usage says was generated.
        assert sum(d.tokens for d in deltas) == last.usage.completion_tokens

    def test_response_schema_gives_json_that_matches_it(self):
        req = ChatRequest(
            messages=QUESTION + [{"role": "user", "content": "Answer in JSON."}],
            response_schema=SCHEMA,
            max_tokens=64,
        )
        deltas = self.run(lambda e: collect(e, req))
        value = json.loads("".join(d.text for d in deltas))
        assert set(value) == {"colors", "note"}
        assert isinstance(value["colors"], list) and len(value["colors"]) <= 3
        assert all(isinstance(c, str) and len(c) <= 12 for c in value["colors"])
        assert isinstance(value["note"], str) and len(value["note"]) <= 16

    # Whether a continuation must equal the uninterrupted answer to the end. llama.cpp's greedy
    # decoding is not bound to: the prefix is evaluated as one batch on resume but one token at
    # a time the first time round, and the tiny float differences can flip a near-tie later on.
    exact_continuation = True

    def test_continue_final_carries_on_from_the_prefix_or_is_refused(self):
        async def body(engine):
            full = await collect(engine, ChatRequest(messages=QUESTION, max_tokens=48))
            if not engine.supports_continue:
                with pytest.raises(EngineError) as info:
                    await collect(
                        engine,
                        ChatRequest(
                            messages=QUESTION + [{"role": "assistant", "content": "Red"}],
                            continue_final=True,
                        ),
                    )
                assert not info.value.retryable and "continue" in str(info.value)
                return None
            pieces = [d for d in full if d.text]
            cut = len(pieces) // 2
            prefix = "".join(d.text for d in pieces[:cut])  # committed text ends on a delta
            rest = await collect(
                engine,
                ChatRequest(
                    messages=QUESTION + [{"role": "assistant", "content": prefix}],
                    max_tokens=48 - sum(d.tokens for d in pieces[:cut]),
                    continue_final=True,
                ),
            )
            return [d.text for d in pieces], cut, [d.text for d in rest if d.text]

        got = self.run(body)
        if got is None:
            return
        whole, cut, rest = got
        prefix = "".join(whole[:cut])
        assert prefix and rest
        assert not "".join(rest).startswith(prefix), "the prefix was generated again"
        # It carries on from where the prefix ended: with what the whole answer said next (at
        # least one token: pieces may hold several, batched by time, so compare the shorter).
        n = min(len(rest[0]), len(whole[cut]))
        assert "".join(rest)[:n] == "".join(whole[cut:])[:n]
        if self.exact_continuation:
            assert prefix + "".join(rest) == "".join(whole)

    def test_leaving_a_stream_early_frees_the_engine(self):
        async def body(engine):
            req = ChatRequest(messages=QUESTION, max_tokens=64)
            stream = engine.stream(req)
            async for _ in stream:
                break
            await stream.aclose()
            start = time.monotonic()
            again = await collect(engine, ChatRequest(messages=QUESTION, max_tokens=4))
            return again, time.monotonic() - start

        again, _ = self.run(body)
        assert again[-1].finish_reason is not None


class TestScriptedEngine(EngineContract):
    SCRIPT = {
        "tokens_per_s": 400,
        "replies": [
            {"match": "JSON", "json": {"colors": ["red", "green", "blue"], "note": "primary-ish"}},
            {"text": "Red, green and blue are three colors people often name first."},
        ],
    }

    def make_engine(self):
        from actors.engines.scripted import ScriptedEngine

        return ScriptedEngine(self.SCRIPT)


@pytest.mark.model
class TestEmbeddedEngine(EngineContract):
    exact_continuation = False

    def make_engine(self):
        from actors.engines.embedded import EmbeddedEngine

        return EmbeddedEngine()


@pytest.mark.model
class TestOpenAIEngineOnLlamaServer(EngineContract):
    @pytest.fixture(autouse=True)
    def _server(self, llama_server):
        self.server = llama_server

    def make_engine(self):
        from actors.engines.openai import OpenAIEngine

        return OpenAIEngine(self.server.url)
