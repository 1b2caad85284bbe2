"""Helpers of the API tests: the scripted agents' script, git repositories, a uvicorn server
in a thread around the real backend, and small assertions."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri
from actors.config import Settings

# What every agent of a test run does, slowly enough to watch: read a file (a real tool call),
# try a write tool (refused at the tool layer), then answer with one finding whose quote is
# really at the cited line. The validator confirms it.
APP_PY = """import os


def handler(request):
    token = request.args.get("token")
    return os.system("echo " + token)
"""
FINDING = {
    "summary": "The handler passes a request parameter straight into a shell command, which "
    "lets any caller run commands on the host. Everything else in the change reads fine.",
    "findings": [
        {
            "id": "F1",
            "severity": "high",
            "category": "security",
            "title": "Shell command built from request input",
            "claim": "handler() concatenates the token parameter into os.system.",
            "evidence": [
                {"path": "app.py", "line_start": 6, "line_end": 6, "quote": 'return os.system("echo " + token)'}
            ],
            "recommendation": "Do not call a shell; pass arguments as a list to subprocess.run.",
        }
    ],
}
VERDICTS = {
    "summary": "The finding holds: the quoted line builds a shell command from input.",
    "verdicts": [{"finding_id": "F1", "result": "confirmed", "reason": "The line is as quoted.", "counter_evidence": []}],
}
SCRIPT = {
    "tokens_per_s": 60,
    "first_token_s": 0.05,
    "replies": [
        # A model slow to answer at all (a long prompt on a CPU, every stream taken).
        {"match": ["slow-start", "verdicts"], "first_token_s": 3, "json": {"final": VERDICTS}},
        {"match": "slow-start", "first_token_s": 3, "json": {"final": FINDING}},
        # A model that answers in prose instead of the JSON asked for.
        {"match": ["plain-prose", "verdicts"], "json": {"final": VERDICTS}},
        {"match": "plain-prose", "text": "The handler looks fine to me."},
        {"turn": 0, "json": {"tool": "read_file", "args": {"path": "app.py"}}},
        {"turn": 1, "json": {"tool": "write_file", "args": {"path": "app.py", "content": "x"}}},
        {"match": "verdicts", "json": {"final": VERDICTS}},
        {"json": {"final": FINDING}},
    ],
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
        env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
             "GIT_COMMITTER_EMAIL": "t@example.org", "PATH": "/usr/bin:/bin", "HOME": str(repo)},
    ).stdout.strip()


def make_repo(path: Path) -> Path:
    """A small git repository: a main branch, and a feature branch that changes app.py."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# demo\n\nA tiny service.\n")
    (path / "app.py").write_text("def handler(request):\n    return 'ok'\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    git(path, "checkout", "-q", "-b", "feature")
    (path / "app.py").write_text(APP_PY)
    git(path, "commit", "-q", "-am", "run the token")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A uvicorn server in a thread around ``create_app(backend, settings)``."""

    def __init__(self, backend, settings: Settings, *, sndbuf: int = 0, **app_kwargs):
        import uvicorn

        from api.app import create_app

        self.backend = backend
        self.settings = settings
        self.sock = socket.socket()
        if sndbuf:  # accepted connections inherit the listener's send buffer size
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(backend, settings, close_backend=False, **app_kwargs)
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/ws"

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


def api_settings(backend, root: Path, **overrides) -> Settings:
    """The backend's settings with the API's own (roots, token, webhook…) on top."""
    import msgspec

    return msgspec.structs.replace(backend.settings, repo_roots=(str(root / "demo"), str(root)), **overrides)


def max_seq(backend) -> int:
    return backend.log.max_seq()


def settled_seq(backend, settle_s: float = 60.0) -> int:
    """The log's last ``seq`` once earlier tests' runs have ended and the log is quiet, so a
    comparison around one request sees only what that request wrote."""
    deadline = time.monotonic() + settle_s
    live = ("requested", "planned", "running")
    while time.monotonic() < deadline:
        if not any(row["status"] in live for row in backend.runs(limit=500)):
            break
        time.sleep(0.1)
    seq = backend.log.max_seq()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = backend.log.max_seq()
        if now == seq:
            break
        seq = now
    return seq


def wait_status(client: httpx.Client, run_id: str, statuses=("finished", "failed", "cancelled"), timeout=90.0) -> dict:
    """Poll the REST projection until the run reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        row = client.get(f"/api/runs/{run_id}").json()["run"]
        if row["status"] in statuses:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {row['status']} after {timeout}s")
        time.sleep(0.2)


def error_of(resp: httpx.Response) -> tuple[int, str]:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    return resp.status_code, body["error"]["code"]


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=str)


def recv_frames(ws, timeout: float) -> list[dict]:
    """The frames of the next WebSocket message (a ``batch`` message holds several)."""
    message = json.loads(ws.recv(timeout))
    return message["frames"] if message["type"] == "batch" else [message]


class StalledClient:
    """A WebSocket client on a raw socket with a tiny receive window, driven by the
    ``websockets`` sans-I/O protocol: it sends what it is told and reads nothing until asked
    (the library's own clients read in the background, which would hide a slow reader)."""

    def __init__(self, url: str, rcvbuf: int = 2048):
        self.proto = ClientProtocol(parse_uri(url), max_size=None)
        host, port = url.removeprefix("ws://").split("/")[0].split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, int(port)))
        self.proto.send_request(self.proto.connect())
        self._flush()
        while self.proto.state is State.CONNECTING:
            self.proto.receive_data(self.sock.recv(4096))
        assert self.proto.handshake_exc is None, self.proto.handshake_exc

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.proto.data_to_send()))

    def send(self, text: str) -> None:
        self.proto.send_text(text.encode())
        self._flush()

    def read_frames(self, timeout: float) -> list[dict]:
        """The frames of what one read of the socket completes ([] if none; the server's
        close is then in ``proto.close_rcvd``)."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.proto.receive_data(data)
        frames = []
        for message in self.proto.events_received():
            if isinstance(message, Frame) and message.opcode is Opcode.TEXT:
                body = json.loads(message.data)
                frames += body["frames"] if body["type"] == "batch" else [body]
        return frames

    def read_until_closed(self, timeout: float) -> tuple[int, str]:
        """Read everything now; return the close code and reason the server sent."""
        self.sock.settimeout(timeout)
        while self.proto.close_rcvd is None:
            data = self.sock.recv(65536)
            if not data:
                break
            self.proto.receive_data(data)
            self.proto.events_received()
        rcvd = self.proto.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd else (0, "")

    def close(self) -> None:
        self.sock.close()
