"""The model deployment end to end: a real Ray Serve application, streamed through its handle.

The applications are started once per session (``scripted_model``, ``embedded_model``).
"""

from __future__ import annotations

import asyncio
import json
import time

import msgspec
import pytest

from actors.engines.base import ChatRequest, EngineError
from actors.model import model_handle, stream_chat

pytestmark = pytest.mark.ray


def ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)


async def collect(handle, req):
    return [d async for d in stream_chat(handle, req)]


def test_the_scripted_deployment_streams_text_then_a_finish(scripted_model):
    assert (scripted_model.engine, scripted_model.model) == ("scripted", "scripted")
    assert scripted_model.supports_continue and not scripted_model.supports_tools
    deltas = asyncio.run(collect(scripted_model.handle, ask("hello")))
    assert "".join(d.text for d in deltas) == '{"final": "all quiet"}'
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage.completion_tokens == sum(d.tokens for d in deltas)


def test_a_handle_found_by_name_streams_too_and_bytes_are_accepted(scripted_model):
    handle = model_handle(scripted_model.name)
    raw = msgspec.msgpack.encode(ask("tool please"))

    async def main():
        return [d async for d in handle.options(stream=True).stream.remote(raw)]

    deltas = asyncio.run(main())
    (call,) = deltas[-1].tool_calls
    assert call.name == "read" and json.loads(call.arguments) == {"path": "README.md"}
    assert deltas[-1].finish_reason == "tool_calls"


def test_a_fatal_failure_reaches_the_caller_as_a_plain_engine_error(scripted_model):
    got = []

    async def main():
        async for d in stream_chat(scripted_model.handle, ask("explode")):
            got.append(d.text)

    with pytest.raises(EngineError) as info:
        asyncio.run(main())
    assert str(info.value) == "scripted failure after 2 tokens"
    assert not info.value.retryable and got == ["one ", "two "]


def test_a_transient_failure_is_retried_in_the_replica_then_reported_retryable(scripted_model):
    with pytest.raises(EngineError) as info:
        asyncio.run(collect(scripted_model.handle, ask("hiccup")))
    assert info.value.retryable and "scripted failure after 0 tokens" in str(info.value)


def test_more_requests_than_streams_queue_and_all_complete(scripted_model):
    # max_streams=2: six 0.2 s streams run as three rounds, and none is refused.
    async def main():
        start = time.monotonic()
        results = await asyncio.gather(*(collect(scripted_model.handle, ask("steady")) for _ in range(6)))
        return results, time.monotonic() - start

    results, elapsed = asyncio.run(main())
    assert all("".join(d.text for d in r) == " ".join(["tock"] * 20) for r in results)
    assert elapsed >= 0.55


def test_leaving_the_stream_cancels_it_in_the_replica_within_a_second(scripted_model):
    handle = scripted_model.handle

    async def main():
        stream = stream_chat(handle, ask("slow"))
        n = 0
        async for _ in stream:
            n += 1
            if n == 3:
                break
        await stream.aclose()
        left = time.monotonic()
        while time.monotonic() - left < 5:
            load = await handle.load.remote()
            if load.active == 0:
                return time.monotonic() - left
            await asyncio.sleep(0.05)
        return None

    took = asyncio.run(main())
    assert took is not None and took < 1.0, f"the replica still streamed after {took}s"


@pytest.mark.model
def test_the_embedded_deployment_streams_real_tokens(embedded_model):
    assert embedded_model.engine == "embedded" and embedded_model.supports_continue
    schema = {
        "type": "object",
        "properties": {"summary": {"type": "string", "maxLength": 40}},
        "required": ["summary"],
    }
    req = ask("Summarise: rivers flow to the sea. Answer in JSON.", response_schema=schema, max_tokens=48)
    deltas = asyncio.run(collect(embedded_model.handle, req))
    value = json.loads("".join(d.text for d in deltas))
    assert isinstance(value["summary"], str) and len(value["summary"]) <= 40
    assert deltas[-1].usage.prompt_tokens > 0
    assert sum(d.tokens for d in deltas) == deltas[-1].usage.completion_tokens


def test_a_replica_killed_mid_stream_ends_the_stream_with_a_retryable_error(ray_session, tmp_path):
    # The stream runs over a direct connection to the replica: its loss must still read as
    # "try again" (the step retries), never as a fatal failure or a stream that hangs.
    import ray

    from actors.config import Settings
    from actors.model import start_model, stop_model
    from tests.actors.conftest import SCRIPT

    settings = Settings.load({}, data_dir=str(tmp_path), max_streams=2)
    app = start_model(settings, engine="scripted", script=SCRIPT, name="test-replica-kill")
    try:
        (replica,) = [
            a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::test-replica-kill#")
        ]  # fmt: skip

        async def main():
            got = []
            with pytest.raises(EngineError) as info:
                async for d in stream_chat(app.handle, ask("slow")):
                    got.append(d.text)
                    if len(got) == 3:
                        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]))
            return got, info.value

        got, error = asyncio.run(asyncio.wait_for(main(), 30))
        assert error.retryable and 3 <= len(got) < 400
    finally:
        stop_model(app.name)


def test_a_transport_failure_under_the_stream_is_retryable_and_names_itself():
    import grpc

    from actors.model import _engine_error

    reset = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection reset")
    error = _engine_error(reset)
    assert error.retryable and "connection reset" in str(error)
    assert not _engine_error(ValueError("bad request")).retryable
