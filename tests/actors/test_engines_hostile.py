"""The openai engine (and what reads it) against answers a hostile or odd endpoint sends:
chunks of the wrong shape, answers that are not a stream, calls without an index, huge
fragments, rate limits with Retry-After, a certificate that cannot be verified, and an
engine that ends with a CancelledError of its own. No model: loopback servers only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from actors.engines.base import ChatRequest, Delta, EngineError, Guard
from actors.engines.openai import Assembler, OpenAIEngine, probe
from actors.model import merged

HELLO = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8)
STOP = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


def guarded(url: str, **kw) -> Guard:
    engine = OpenAIEngine(url, model="m", supports_continue=False)
    options = dict(max_streams=1, timeout=10.0, attempts=4, backoff_base=0.01, backoff_cap=0.05)
    options.update(kw)
    return Guard(engine, **options)


def collect(engine, req=HELLO) -> list[Delta]:
    async def main():
        try:
            return [d async for d in engine.stream(req)]
        finally:
            await engine.close()

    return asyncio.run(main())


def feed_all(*chunks) -> Delta:
    asm = Assembler()
    for chunk in chunks:
        asm.feed(chunk)
    return asm.done()


def text_of(content) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": content}}]}


def call(frag: dict) -> dict:
    return {"choices": [{"index": 0, "delta": {"tool_calls": [frag]}}]}


# --- the base URL as people write it ------------------------------------------------------------


@pytest.mark.parametrize(
    "written, root",
    [
        ("{url}", "/v1"),
        ("{url}/", "/v1"),
        ("{url}/v1/", "/v1"),
        ("{url}/v1/chat/completions", "/v1"),  # the endpoint pasted from a server's docs
        ("{url}/proxy/openai", "/proxy/openai"),  # a root with a path is taken as it is
    ],
)
def test_the_base_url_is_the_api_root_however_it_is_written(flaky_server, written, root):
    server_root = flaky_server.url.removesuffix("/v1")
    url = written.format(url=server_root)
    sse = flaky_server.sse(text_of("fine"), STOP)
    flaky_server.plan(flaky_server.Answer(body=sse))
    assert "".join(d.text for d in collect(guarded(url))) == "fine"
    assert probe(url).models == ["flaky-model"]
    assert flaky_server.paths == [f"{root}/chat/completions", f"{root}/models"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/v1?key=x", "http://127.0.0.1:9/v1#x", "127.0.0.1:9"])
def test_a_base_url_with_a_query_or_without_a_scheme_is_refused(url):
    with pytest.raises(EngineError, match="base URL"):
        OpenAIEngine(url, model="m")


# --- chunks of the wrong shape ------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunk",
    [
        [1, 2],
        None,
        "hello",
        {"choices": [None]},
        {"choices": {"delta": {}}},
        {"choices": [{"delta": "x"}]},
        {"choices": [{"delta": {"content": 5}}]},
        {"choices": [{"delta": {"tool_calls": {"index": 0}}}]},
        call({"index": "a", "function": {"name": "read_file"}}),
        call({"index": 0, "function": "read_file"}),
        call({"index": 0, "function": {"name": "read_file", "arguments": 7}}),
    ],
    ids=repr,
)
def test_a_chunk_of_the_wrong_shape_is_one_clear_engine_error(chunk):
    with pytest.raises(EngineError, match="malformed chunk") as info:
        Assembler().feed(chunk)
    assert not info.value.retryable


def test_a_malformed_chunk_in_a_stream_fails_it_once_with_an_engine_error(flaky_server):
    flaky_server.plan(flaky_server.Answer(body=b"data: [1, 2]\n\n"), flaky_server.Answer(body=b"x"))
    with pytest.raises(EngineError, match="malformed chunk") as info:
        collect(guarded(flaky_server.url))
    assert not info.value.retryable and len(flaky_server.requests) == 1


@pytest.mark.parametrize("usage", [{"prompt_tokens": "n/a"}, [1], "n/a", {"completion_tokens": [3]}])
def test_a_bad_usage_block_does_not_lose_a_whole_answer(flaky_server, usage):
    sse = flaky_server.sse(text_of("all "), text_of("good"), STOP, {"choices": [], "usage": usage})
    flaky_server.plan(flaky_server.Answer(body=sse))
    deltas = collect(guarded(flaky_server.url))
    assert "".join(d.text for d in deltas) == "all good"
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage is not None


def test_arguments_sent_as_a_json_object_are_taken_as_its_text():
    done = feed_all(
        call({"index": 0, "id": "c", "function": {"name": "read_file", "arguments": {"path": "a.py"}}}),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    )
    (only,) = done.tool_calls
    assert (only.id, only.name, json.loads(only.arguments)) == ("c", "read_file", {"path": "a.py"})


# --- calls without an index ---------------------------------------------------------------------


def test_whole_calls_without_an_index_but_with_their_own_ids_stay_apart():
    # Gemini's OpenAI endpoint and some proxies send each call whole, with an id, no index.
    done = feed_all(
        call({"id": "fc-1", "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}),
        call({"id": "fc-2", "function": {"name": "list_dir", "arguments": '{"path": ""}'}}),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    )
    assert [(c.id, c.name, json.loads(c.arguments)) for c in done.tool_calls] == [
        ("fc-1", "read_file", {"path": "a.py"}),
        ("fc-2", "list_dir", {"path": ""}),
    ]


def test_fragments_without_an_index_or_a_new_id_continue_the_call_they_follow():
    done = feed_all(
        call({"id": "c1", "function": {"name": "grep", "arguments": '{"pat'}}),
        call({"function": {"arguments": 'tern": "x"}'}}),
        STOP,
    )
    (only,) = done.tool_calls
    assert (only.id, only.name, json.loads(only.arguments)) == ("c1", "grep", {"pattern": "x"})


def test_many_small_argument_fragments_are_joined_in_linear_time():
    # In a fresh process: how fast repeated copies go depends on the allocator's state.
    code = (
        "import time\n"
        "from actors.engines.openai import Assembler\n"
        "frag = {'choices': [{'delta': {'tool_calls': [{'index': 0, 'function': {'arguments': 'abcdefgh'}}]}}]}\n"
        "asm, start = Assembler(), time.perf_counter()\n"
        "for _ in range(200_000):\n"
        "    asm.feed(frag)\n"
        "print(len(asm.done().tool_calls[0].arguments), time.perf_counter() - start)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    size, seconds = out.stdout.split()
    assert int(size) == 1_600_000
    assert float(seconds) < 8  # 1.6 MB in 8-byte pieces: half a minute if each copies the rest


# --- answers that are not an event stream -------------------------------------------------------


@pytest.mark.parametrize(
    "status, content_type, body, shown",
    [
        (200, "text/html", b"<html><body>Welcome to nginx!</body></html>", "Welcome to nginx"),
        (307, "text/plain", b"moved", "moved"),
        (200, "application/json", b'{"choices": [{"message": {"content": "Hello"}}]}', "choices"),
    ],
)
def test_an_answer_that_is_not_an_event_stream_is_refused_at_once(flaky_server, status, content_type, body, shown):
    flaky_server.plan(*[flaky_server.Answer(status=status, body=body, content_type=content_type)] * 4)
    with pytest.raises(EngineError, match="no event stream") as info:
        collect(guarded(flaky_server.url))
    message = str(info.value)
    assert not info.value.retryable and len(flaky_server.requests) == 1  # not retried
    assert f"HTTP {status}" in message and content_type in message and shown in message


@pytest.mark.parametrize("content_type", ["text/event-stream; charset=utf-8", "text/event-stream"])
def test_event_streams_with_content_type_parameters_are_read(flaky_server, content_type):
    body = flaky_server.sse(text_of("Hi"), STOP)
    flaky_server.plan(flaky_server.Answer(body=body, content_type=content_type))
    assert "".join(d.text for d in collect(guarded(flaky_server.url))) == "Hi"


# --- a tiny server for answers the flaky server cannot give ------------------------------------


@contextlib.contextmanager
def serve(handle: Callable[[BaseHTTPRequestHandler], None], tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """A loopback server answering every POST with ``handle``; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            handle(self)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass  # a client that refused our certificate, or gave up

    httpd = Server(("127.0.0.1", 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, headers=()) -> None:
    h.send_response(status)
    h.send_header("content-type", ctype)
    h.send_header("content-length", str(len(body)))
    for name, value in headers:
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(body)


def sse(*chunks) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def test_a_tool_call_written_slowly_is_progress_not_a_first_token_timeout():
    frags = [{"index": 0, "id": "c1", "function": {"name": "read_file", "arguments": ""}}] + [
        {"index": 0, "function": {"arguments": part}} for part in ('{"pa', 'th": ', '"READ', 'ME.md"}')
    ]

    def handle(h):
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.end_headers()
        for frag in frags:  # 5 fragments 0.25 s apart: longer than the first-token timeout
            time.sleep(0.25)
            h.wfile.write(b"data: " + json.dumps(call(frag)).encode() + b"\n\n")
            h.wfile.flush()
        h.wfile.write(b"data: " + json.dumps(STOP).encode() + b"\n\ndata: [DONE]\n\n")
        h.close_connection = True

    with serve(handle) as url:
        deltas = collect(guarded(url, attempts=1, first_token_timeout=0.6))
    [whole] = [c for d in deltas for c in d.tool_calls]
    assert (whole.name, json.loads(whole.arguments)) == ("read_file", {"path": "README.md"})
    # The fragments' tokens were counted as they came, before the call was whole.
    assert sum(d.tokens for d in deltas if not d.tool_calls) == len(frags)


def test_retry_after_on_a_429_is_honoured():
    times: list[float] = []

    def handle(h):
        times.append(time.monotonic())
        if len(times) == 1:
            send(h, 429, b'{"error": {"message": "slow down"}}', "application/json", [("retry-after", "1")])
        else:
            send(h, 200, sse(text_of("Hi"), STOP), "text/event-stream")

    with serve(handle) as url:
        deltas = collect(guarded(url))  # its own backoff is at most 0.05 s
    assert "".join(d.text for d in deltas) == "Hi"
    assert times[1] - times[0] >= 0.9


def test_a_long_retry_after_is_capped():
    times: list[float] = []

    def handle(h):
        times.append(time.monotonic())
        send(h, 429, b"busy", "text/plain", [("retry-after", "3600")])

    with serve(handle) as url:
        with pytest.raises(EngineError, match="HTTP 429") as info:
            collect(guarded(url, attempts=2, max_retry_after=0.5))
    assert info.value.retryable and len(times) == 2
    assert 0.4 <= times[1] - times[0] < 3


def endless(status: int, ctype: str, head: bytes) -> tuple[Callable[[BaseHTTPRequestHandler], None], dict]:
    """A handler sending ``head`` and 1 MiB blocks of one byte, 50 MB in all if anyone reads
    it whole, chunked, counting what it could send."""
    sent = {"bytes": 0}

    def handle(h):
        h.send_response(status)
        h.send_header("content-type", ctype)
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        block = head + b"x" * (1 << 20)
        try:
            for _ in range(50):
                h.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                sent["bytes"] += len(block)
            h.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client stopped reading: what we want

    return handle, sent


def test_a_huge_error_body_is_not_read_whole():
    handle, sent = endless(400, "text/html", b"<p>")
    with serve(handle) as url:
        with pytest.raises(EngineError, match="HTTP 400") as info:
            collect(guarded(url))
    assert len(str(info.value)) < 500 and not info.value.retryable
    assert sent["bytes"] < 50 * (1 << 20)


def test_an_event_stream_line_that_never_ends_is_refused_not_held_whole():
    handle, sent = endless(200, "text/event-stream", b"data: ")  # all one line
    with serve(handle) as url:
        with pytest.raises(EngineError, match="a line longer than") as info:
            collect(guarded(url))
    assert not info.value.retryable
    assert sent["bytes"] < 50 * (1 << 20)


def test_lines_split_anywhere_in_the_stream_are_read_as_sent(flaky_server):
    # Each chunk of the body ends mid-line, some between a CR and its LF.
    body = flaky_server.sse(text_of("split "), text_of("lines"), STOP).replace(b"\n\n", b"\r\n\r\n")
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]

    def handle(h):
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        for piece in pieces:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            h.wfile.flush()
        h.wfile.write(b"0\r\n\r\n")

    with serve(handle) as url:
        deltas = collect(guarded(url))
    assert "".join(d.text for d in deltas) == "split lines"


def test_a_certificate_that_cannot_be_verified_is_a_clear_error_not_retried(tmp_path):
    key, cert = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    posts: list[int] = []

    def handle(h):
        posts.append(1)
        send(h, 200, sse(text_of("Hi"), STOP), "text/event-stream")

    with serve(handle, tls=ctx) as url:
        with pytest.raises(EngineError, match="certificate") as info:
            collect(guarded(url, backoff_base=0.5, backoff_cap=0.5))
    assert not info.value.retryable and not posts  # refused, and never asked again


def _self_signed(folder):
    """A key and a certificate for 127.0.0.1 that no authority signed."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


# --- the replica's merging pump ----------------------------------------------------------------


def test_an_engine_that_ends_with_its_own_cancelled_error_ends_the_reader_stream():
    async def engine():
        yield Delta(text="a", tokens=1)
        inner = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.05, inner.cancel)  # its owner cancelled it
        await inner
        yield Delta(text="b", tokens=1)

    async def main():
        got = []
        with pytest.raises(EngineError) as info:
            async with asyncio.timeout(3):  # it used to wait here for ever
                async for d in merged(engine(), 0.005):
                    got.append(d.text)
        return got, info.value

    got, error = asyncio.run(main())
    assert got == ["a"] and error.retryable


# --- the vllm engine reads its stream like the openai engine ------------------------------------


@pytest.fixture
def vllm_stub(monkeypatch):
    """VLLMEngine with Ray Serve LLM's request model stubbed (it needs vLLM itself)."""
    stub = types.ModuleType("ray.serve.llm.openai_api_models")
    stub.ChatCompletionRequest = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "ray.serve.llm.openai_api_models", stub)
    from actors.engines.vllm import VLLMEngine

    class Handle:
        def __init__(self, items):
            self.items, self.chat = items, self

        def options(self, **kw):
            return self

        def remote(self, body):
            async def gen():
                for item in self.items:
                    yield item

            return gen()

    return lambda items: VLLMEngine(Handle(items), "qwen")


def test_a_vllm_stream_that_ends_without_a_finish_reason_is_a_cut_stream(vllm_stub):
    cut = ["data: " + json.dumps(text_of('{"final": "half of the')) + "\n\n"]
    with pytest.raises(EngineError, match="closed the stream before the answer finished") as info:
        collect(vllm_stub(cut))
    assert info.value.retryable


def test_a_malformed_vllm_event_is_an_engine_error(vllm_stub):
    with pytest.raises(EngineError, match="malformed event") as info:
        collect(vllm_stub(["data: {not json\n\n"]))
    assert not info.value.retryable


def test_a_whole_vllm_stream_is_an_answer(vllm_stub):
    items = [["data: " + json.dumps(text_of("Hi")) + "\n\n", "data: " + json.dumps(STOP) + "\n\n"]]
    deltas = collect(vllm_stub(items))
    assert "".join(d.text for d in deltas) == "Hi" and deltas[-1].finish_reason == "stop"
