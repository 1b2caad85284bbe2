"""``orchestrator serve``: the backend (Ray, the event log, the model) behind the API and pane.

At start it claims the data directory (``<data_dir>/server.json``: pid, url, Ray address,
namespace), resumes every run that was not finished, and serves until SIGINT/SIGTERM; then it
stops accepting launches, lets in-flight requests and appends finish, closes the backend
(which checkpoints the log), removes ``server.json`` and exits 0. A second ``serve`` on the
same data directory is refused with the pid and url of the one that holds it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
from pathlib import Path

from actors.config import MAX_PORT
from api.commands import SCRIPT_NEEDED, CommandError, whole_number

NAME = "serve"
HELP = "Serve the API and the web pane (starts Ray, the event log and the model)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (ORCH_HOST, default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=whole_number(0, MAX_PORT, "a port number"),
        help="port (ORCH_PORT, default 8765; 0 picks a free one)",
    )
    parser.add_argument("--engine", help="model engine: auto, embedded, openai, vllm, scripted (ORCH_ENGINE)")
    parser.add_argument("--model", help="model id for the engine (ORCH_MODEL)")
    parser.add_argument("--script", help="a JSON script for the scripted engine (demos and tests)")
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another web origin allowed to use the API and WebSocket (a chat app embedding the pane)",
    )
    parser.add_argument("--no-resume", action="store_true", help="do not pick up unfinished runs")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(data_dir: Path) -> Path:
    """Create ``server.json`` for this process, or refuse if a live server holds the directory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "server.json"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(path.read_text())
            except (OSError, ValueError):
                held = {}
            pid = int(held.get("pid") or 0)
            if pid and pid != os.getpid() and alive(pid):
                raise CommandError(
                    f"{data_dir} is in use by another orchestrator serve (pid {pid}, "
                    f"{held.get('url') or 'url unknown'}); stop it first or use another --data-dir"
                ) from None
            path.unlink(missing_ok=True)  # a stale claim from a server that died
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "url": "", "ray_address": "", "namespace": ""}, fh)
        return path
    raise CommandError(f"cannot claim {path}: another server is starting")


# Unacknowledged data (a full receive window included) for this long ends a connection. A
# client that stops reading is cut off by the WebSocket, but its socket would otherwise hold
# the close frame and megabytes of kernel buffer for as long as the client stays connected.
USER_TIMEOUT_MS = 60_000


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux; accepted sockets inherit it
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace, settings) -> int:
    import msgspec
    import uvicorn

    from actors.config import ENGINES
    from api.app import Gate, create_app
    from api.security import BindRefused, check_bind

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("model", args.model)) if v is not None}
    if args.engine is not None:
        if args.engine not in ENGINES:
            raise CommandError(f"--engine must be one of {', '.join(ENGINES)}")
        overrides["engine"] = args.engine
    settings = msgspec.structs.replace(settings, **overrides)
    try:
        check_bind(settings.host, settings.token)
    except BindRefused as exc:
        raise CommandError(str(exc)) from None
    script = None
    if args.script:
        try:
            script = json.loads(Path(args.script).read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read the script {args.script}: {exc}") from None
    from actors.engines import lacks_script

    if lacks_script(settings.engine, settings.model, script):
        # Else the server would come up and answer every launch that its model cannot start.
        raise CommandError(SCRIPT_NEEDED, 2)

    problem = _engine_problem(settings)
    data_dir = Path(settings.data_dir).expanduser().resolve()
    claim_path = claim(data_dir)
    try:
        sock = _bind(settings.host, settings.port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/"
        backend = _start_backend(settings, args.engine, script)
        _write_claim(claim_path, url, backend)
        if not args.no_resume:
            resumed = backend.resume_all()
            if resumed:
                print(f"orchestrator: resumed {len(resumed)} unfinished run(s): {', '.join(resumed)}", flush=True)
        gate = Gate()
        app = create_app(
            backend, settings, engine=args.engine or settings.engine, allow_origins=tuple(args.allow_origin), gate=gate
        )
        # No per-message compression on the WebSocket: each connection compresses with its own
        # zlib state, so one event to 100 subscribers was compressed 100 times (about 40 % of
        # the fan-out's CPU, for frames of a few hundred bytes).
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=10, ws_max_size=settings.max_request_bytes,
            ws_per_message_deflate=False,
        )
        server = _server(config, gate)
        print(f"orchestrator: serving {url} (data {data_dir}, engine {args.engine or settings.engine})", flush=True)
        if problem:
            print(f"orchestrator: warning: {problem}", flush=True)
        # What start-up built (Ray, the app, the backend) lives as long as the process: kept
        # out of the collector's full passes, which otherwise stalled every WebSocket client
        # for ~90 ms at a run's launch (a full pass over ~140,000 objects).
        gc.collect()
        gc.freeze()
        server.run(sockets=[sock])
        print("orchestrator: stopped", flush=True)
        return 0
    finally:
        _release(claim_path)


def _engine_problem(settings) -> str:
    """Why the default engine cannot run now ('' if it can). The server still starts (a
    launch may name another engine, an endpoint may come up later), but the person starting
    it is told now, not by the first launch refused."""
    from actors.engines import engine_problem

    problem = engine_problem(settings)
    return f"{problem}; launches on the {settings.engine} engine are refused while that lasts" if problem else ""


def _start_backend(settings, engine, script):
    from actors.service import Orchestrator
    from events.errors import LogLocked

    try:
        return Orchestrator(settings, engine=engine, script=script)
    except LogLocked as exc:
        raise CommandError(f"the event log is held by another process: {exc}") from None
    except Exception as exc:  # DuckDB's lock error may arrive wrapped by Ray
        text = str(exc)
        if "lock" in text.lower():
            first = next((ln for ln in text.splitlines() if "lock" in ln.lower()), text)
            raise CommandError(f"the event log is held by another process: {first.strip()}") from None
        raise


def _write_claim(path: Path, url: str, backend) -> None:
    import ray

    try:
        address = ray.get_runtime_context().gcs_address
    except Exception:
        address = ""
    names = getattr(backend, "names", None)
    info = {"pid": os.getpid(), "url": url, "ray_address": address, "namespace": getattr(names, "namespace", "")}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)


def _release(path: Path) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _server(config, gate):
    """uvicorn's server, except that a signal first closes the launch gate, and the process
    then exits normally (uvicorn would re-raise the signal after its graceful shutdown)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            gate.closing = True
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return Server(config)
