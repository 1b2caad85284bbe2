"""The openai engine against real HTTP servers on loopback: llama-cpp-python's server for
tools and model discovery, and a flaky server for retries, backoff and error handling."""

from __future__ import annotations

import asyncio
import json

import pytest

from actors.config import Settings
from actors.engines import select_engine
from actors.engines.base import ChatRequest, EngineError, Guard, backoff
from actors.engines.openai import OpenAIEngine
from tests.actors.conftest import start_llama_server

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def run(engine, body):
    async def main():
        try:
            return await body(engine)
        finally:
            await engine.close()

    return asyncio.run(main())


async def collect(engine, req):
    return [d async for d in engine.stream(req)]


# --- a real server ------------------------------------------------------------------------------


@pytest.mark.model
def test_streamed_tool_call_fragments_are_assembled_into_one_call(llama_tools_server):
    engine = OpenAIEngine(llama_tools_server.url, supports_tools=True)
    req = ChatRequest(
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=40,
    )
    deltas = run(engine, lambda e: collect(e, req))
    last = deltas[-1]
    assert last.finish_reason == "tool_calls"
    (call,) = last.tool_calls
    assert call.name == "get_weather" and call.id
    args = json.loads(call.arguments)  # fragments joined into whole JSON
    assert isinstance(args["city"], str) and args["city"]
    assert all(not d.tool_calls for d in deltas[:-1])


@pytest.mark.model
def test_a_server_that_drops_an_automatic_tool_stream_is_a_clear_error(llama_tools_server):
    # llama-cpp-python cannot stream an automatic tool choice: it answers 200 and then ends
    # the stream with nothing. That must not pass for an empty answer.
    engine = OpenAIEngine(llama_tools_server.url, supports_tools=True)
    req = ChatRequest(messages=ASK, tools=[WEATHER], tool_choice="auto", max_tokens=40)
    with pytest.raises(EngineError, match="closed the stream before the answer finished"):
        run(engine, lambda e: collect(e, req))


@pytest.mark.model
def test_a_stream_the_llama_cpp_server_cuts_for_another_request_is_an_error(model_path):
    # llama-cpp-python's server, as it starts by default, ends a stream with [DONE] when a
    # second request arrives. Read as finished, the cut text passed for the whole answer.
    long = ChatRequest(messages=[{"role": "user", "content": "Tell a long story about rivers."}],
                       max_tokens=300)

    async def body(engine):
        first = engine.stream(long)
        got = [await first.__anext__()]  # it is generating now
        second = asyncio.ensure_future(collect(engine, ChatRequest(messages=ASK, max_tokens=8)))
        with pytest.raises(EngineError) as info:
            async for d in first:
                got.append(d)
        return got, info.value, await second

    server = start_llama_server(model_path)  # its defaults: it interrupts
    try:
        got, error, other = run(OpenAIEngine(server.url), body)
    finally:
        server.stop()
    assert error.retryable and "--interrupt_requests false" in str(error)
    assert sum(d.tokens for d in got) < 300  # it really was cut
    assert other[-1].finish_reason in ("stop", "length")


@pytest.mark.model
def test_capabilities_and_model_come_from_the_server(llama_server):
    engine = OpenAIEngine(llama_server.url.removesuffix("/v1"))  # /v1 is added
    assert engine.model == llama_server.model
    # Native tools are opt-in, and only vLLM says it can continue a partial answer.
    assert engine.supports_tools is False and engine.supports_continue is False
    run(engine, lambda e: asyncio.sleep(0))
    settings = Settings.load({"ORCH_OPENAI_BASE_URL": llama_server.url})
    assert select_engine(settings, gpu_available=False) == ("openai", llama_server.model)


# --- retries and errors, against a flaky server -----------------------------------------------


def guarded(url: str, **kw) -> Guard:
    engine = OpenAIEngine(url, model="flaky-model", supports_continue=False)
    options = dict(max_streams=2, timeout=10.0, attempts=4, backoff_base=0.05, backoff_cap=0.2)
    options.update(kw)
    return Guard(engine, **options)


HELLO = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8)


@pytest.fixture
def server(flaky_server):
    """The flaky server, with its helpers as names: Answer, sse, text_chunks, and OK."""
    s = flaky_server
    usage = {"prompt_tokens": 3, "completion_tokens": 2}
    s.OK = s.Answer(body=s.sse(*s.text_chunks("Hel", "lo", usage=usage)))
    return s


def test_transient_failures_are_retried_until_the_answer_comes(server):
    server.plan(
        server.Answer(status=503, body=b'{"error": "warming up"}'),
        server.Answer(status=429, body=b'{"error": "slow down"}'),
        server.Answer(reset=True),
        server.Answer(status=502, body=b"bad gateway"),
        server.OK,
    )
    deltas = run(guarded(server.url, attempts=5), lambda e: collect(e, HELLO))
    assert "".join(d.text for d in deltas) == "Hello"
    assert deltas[-1].usage.prompt_tokens == 3 and deltas[-1].usage.completion_tokens == 2
    assert len(server.requests) == 5 and not server.answers
    body = server.requests[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_attempts_are_bounded_and_the_error_stays_retryable(server):
    server.plan(*[server.Answer(status=503, body=b"down")] * 6)
    with pytest.raises(EngineError) as info:
        run(guarded(server.url, attempts=3), lambda e: collect(e, HELLO))
    assert info.value.retryable and "HTTP 503" in str(info.value)
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(server, status):
    server.plan(server.Answer(status=status, body=b'{"error": {"message": "no such thing"}}'), server.OK)
    with pytest.raises(EngineError) as info:
        run(guarded(server.url), lambda e: collect(e, HELLO))
    assert not info.value.retryable
    assert f"HTTP {status}" in str(info.value) and "no such thing" in str(info.value)
    assert len(server.requests) == 1


async def text_until_error(engine):
    """The text ``HELLO`` streamed before the stream failed, and the error."""
    got = []
    with pytest.raises(EngineError) as info:
        async for d in engine.stream(HELLO):
            got.append(d.text)
    return got, info.value


def test_a_failure_after_text_was_streamed_is_raised_not_retried(server):
    half = server.sse(*server.text_chunks("Hel", "lo")[:1], done=False)
    server.plan(server.Answer(partial=half, reset=True), server.OK)

    got, error = run(guarded(server.url), text_until_error)
    assert got == ["Hel"]
    assert error.retryable  # the caller keeps "Hel" and decides: continue it or start again
    assert len(server.requests) == 1


def test_a_stream_ended_by_done_without_a_finish_reason_is_not_an_answer(server):
    # What a llama-cpp-python server sends for a stream it cut to serve another request.
    cut = server.sse(*server.text_chunks("Hel", "lo")[:1])
    server.plan(server.Answer(body=cut))

    got, error = run(OpenAIEngine(server.url), text_until_error)
    assert got == ["Hel"] and error.retryable
    assert "--interrupt_requests false" in str(error)


def test_no_first_token_in_time_is_a_retryable_timeout(server):
    server.plan(server.Answer(delay=1.5, body=server.OK.body), server.OK)
    deltas = run(
        guarded(server.url, first_token_timeout=0.5, attempts=2),
        lambda e: collect(e, HELLO),
    )
    assert "".join(d.text for d in deltas) == "Hello"
    assert len(server.requests) == 2


def test_error_events_inside_a_stream_become_engine_errors(server):
    server.plan(server.Answer(body=server.sse({"error": {"message": "context too long", "code": 400}})))
    with pytest.raises(EngineError, match="context too long") as info:
        run(guarded(server.url), lambda e: collect(e, HELLO))
    assert not info.value.retryable


def test_the_request_carries_tools_schema_and_continuation_fields(server):
    tool_stream = server.sse(
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "c1", "type": "function", "function": {"name": "read", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "{\"path\": "}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "\"a.py\"}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    )  # fmt: skip
    server.plan(server.Answer(body=tool_stream), server.OK)
    engine = OpenAIEngine(server.url, model="m", supports_tools=True, supports_continue=True)

    async def body(engine):
        calls = await collect(engine, ChatRequest(messages=ASK, tools=[WEATHER], max_tokens=9, seed=7))
        schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}}
        resumed = ChatRequest(
            messages=ASK + [{"role": "assistant", "content": "It is"}],
            response_schema=schema,
            continue_final=True,
        )
        await collect(engine, resumed)
        return calls

    deltas = run(engine, body)
    (call,) = deltas[-1].tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == ("c1", "read", {"path": "a.py"})
    first, second = server.requests
    assert first["tools"] == [WEATHER] and first["seed"] == 7 and first["max_tokens"] == 9
    assert second["response_format"]["type"] == "json_schema"
    assert second["response_format"]["json_schema"]["schema"]["properties"]["a"]["maxLength"] == 3
    assert second["continue_final_message"] is True and second["add_generation_prompt"] is False


def test_backoff_is_jittered_and_grows_within_its_cap():
    for attempt in range(6):
        samples = [backoff(attempt, 0.1, 1.0) for _ in range(300)]
        assert all(0 <= s <= min(1.0, 0.1 * 2**attempt) for s in samples)
        # Full jitter: spread over the whole window, not one fixed delay.
        assert max(samples) > 0.7 * min(1.0, 0.1 * 2**attempt) and len(set(samples)) > 250


def test_a_refused_connection_is_retryable_and_a_named_model_needs_no_probe(unused_port):
    url = f"http://127.0.0.1:{unused_port}/v1"  # nothing listens there
    engine = OpenAIEngine(url, model="named")  # starts: the model was named
    assert engine.supports_continue is False
    with pytest.raises(EngineError, match="connection failed") as info:
        run(engine, lambda e: collect(e, HELLO))
    assert info.value.retryable
