"""``orchestrator serve`` as a real process that a test can kill with SIGKILL and start again.

What "kill -9 the server" means here: ``serve`` runs in a session of its own
(``start_new_session``), and every process it started keeps that session id: Ray's GCS and
raylet, and every Ray worker (the event-log actor, the agents, the FlowRuns, the Serve
controller and the model replica), even those Ray moves into a process group of their own. A
kill sends SIGKILL to every process of that session, repeating until none is left, so the
whole instance stops at once, as in a power cut, and no orphan keeps the DuckDB file. Nothing
outside the session is touched (other Ray instances on the machine keep running).
``kill(whole=False)`` kills the serve process alone, as ``kill -9 <pid>`` would; its Ray then
goes down on its own (the GCS and raylet share the server's fate, the workers follow them).

``kill(aim="commit")`` aims the kill at a commit of the event log: it watches the threads of
the process that holds the DuckDB file and sends SIGKILL the moment one of them is inside the
write or ``fdatasync`` of the write-ahead log (a commit's durable part, milliseconds long), that
process first, then the rest of the instance.

``Watcher`` is a client that follows every run's committed events through the REST events
endpoint across restarts: what it saw is what the server acknowledged.

Used by the crash-loop test and by ``bench/resume.py``.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

STARTUP_S = 240.0  # a loaded 2-core machine takes tens of seconds to start Ray


def session_pids(sid: int) -> list[int]:
    """Every live process whose session id is ``sid`` (zombies excluded)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


# The system calls by which DuckDB makes a commit durable: the write-ahead log's write and
# fdatasync (the checkpoint's pwrite64/fsync of the database file count as well).
COMMIT_SYSCALLS = {
    "x86_64": {1: "write", 18: "pwrite64", 74: "fsync", 75: "fdatasync"},
    "aarch64": {64: "write", 68: "pwrite64", 82: "fsync", 83: "fdatasync"},
}.get(platform.machine(), {})


def open_by(pids: list[int], paths: set[str]) -> int | None:
    """The first of ``pids`` that has one of ``paths`` open."""
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in paths:
                    return pid
            except OSError:
                continue
    return None


def in_commit(pid: int, paths: set[str]) -> str:
    """What a thread of ``pid`` is doing to one of ``paths`` right now ("fdatasync", ...), or
    "" when none is inside such a system call. Reads ``/proc/<pid>/task/<tid>/syscall``."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return ""
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as fh:
                fields = fh.read().split()
        except OSError:
            continue
        # "nr arg0 ...": a thread in a system call; "running" or "-1 ..." otherwise.
        name = COMMIT_SYSCALLS.get(int(fields[0])) if fields and fields[0].isdigit() else None
        if name is None:
            continue
        try:
            if os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}") in paths:
                return name
        except (OSError, ValueError, IndexError):
            continue
    return ""


def kill_session(sid: int, timeout: float = 30.0, first: int | None = None) -> None:
    """SIGKILL every process of session ``sid`` until none is left (``first`` before the rest)."""
    deadline = time.monotonic() + timeout
    if first is not None:
        try:
            os.kill(first, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while pids := session_pids(sid):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of session {sid} survive SIGKILL: {pids}")
        time.sleep(0.05)


class Server:
    """One data directory served by successive ``orchestrator serve`` processes."""

    def __init__(self, data_dir: Path, *, engine: str = "scripted", script: Path | None = None,
                 env: dict[str, str] | None = None, extra: tuple[str, ...] = ()):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine, self.script = engine, script
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "RAY_ADDRESS"))}
        # A Ray of its own: with no address, ray.init() joins whatever cluster a `ray start`
        # on this machine recorded in /tmp/ray/ray_current_cluster.
        self.env["RAY_ADDRESS"] = "local"
        self.env.update(env or {})
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.sessions: list[int] = []  # every session this server ran in
        self.starts = 0

    # --- life ------------------------------------------------------------------------------

    def start(self, timeout: float = STARTUP_S) -> str:
        """Start ``serve``; return its URL once the API answers (after ``resume_all``)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        cmd = [sys.executable, "-m", "api.cli", "--data-dir", str(self.data_dir), "serve",
               "--engine", self.engine, "--port", "0", *self.extra]
        if self.script is not None:
            cmd += ["--script", str(self.script)]
        log = open(self.data_dir / f"serve-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        log.close()
        self.sessions.append(self.proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not come up within {timeout:g}s:\n{self.log_tail()}")
            url = self._claimed_url()
            if url:
                try:
                    if httpx.get(url + "api/info", timeout=5).status_code == 200:
                        self.url = url
                        return url
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)

    def kill(self, *, whole: bool = True) -> None:
        """SIGKILL the server: its whole session (``whole``), or the serve process alone."""
        assert self.proc is not None
        if whole:
            kill_session(self.proc.pid)
        else:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def log_files(self) -> set[str]:
        base = os.path.realpath(self.data_dir / "events.duckdb")
        return {base, base + ".wal"}

    def kill_in_commit(self, timeout: float = 10.0) -> str:
        """SIGKILL the whole instance while its event log is inside a commit's write or
        fdatasync (that process first). Returns the system call it was seen in, or why none
        was seen within ``timeout`` ("no commit", "no log process"): the instance is killed
        then all the same."""
        assert self.proc is not None
        files = self.log_files()
        deadline = time.monotonic() + timeout
        writer, seen = None, ""
        while time.monotonic() < deadline:
            if writer is None:
                writer = open_by(session_pids(self.proc.pid), files)
            if writer is not None and (seen := in_commit(writer, files)):
                break
            time.sleep(0.0005)
        kill_session(self.proc.pid, first=writer)
        self.proc.wait(30)
        return seen or ("no commit" if writer else "no log process")

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM (a graceful stop); the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"serve did not stop within {timeout:g}s:\n{self.log_tail()}") from None

    def wait_gone(self, timeout: float = 60.0) -> None:
        """Wait until no process of any session this server ran in is left."""
        deadline = time.monotonic() + timeout
        while any(session_pids(s) for s in self.sessions):
            if time.monotonic() > deadline:
                left = {s: session_pids(s) for s in self.sessions}
                raise RuntimeError(f"processes of the server survive: {left}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        """Leave nothing running, whatever happened (fixtures call this last)."""
        for sid in self.sessions:
            try:
                kill_session(sid)
            except RuntimeError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.wait(30)

    def log_tail(self, chars: int = 4000) -> str:
        path = self.data_dir / f"serve-{self.starts}.log"
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _claimed_url(self) -> str:
        try:
            held = json.loads((self.data_dir / "server.json").read_text())
        except (OSError, ValueError):
            return ""
        return held.get("url", "") if held.get("pid") == self.proc.pid else ""

    # --- the API ---------------------------------------------------------------------------

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


ENDED = ("run_finished", "run_failed", "run_cancelled")


class Watcher(threading.Thread):
    """A client following every run's committed events over REST, across restarts.

    A run seen to end is asked again only about once a second (a report sent later still
    shows), so a long list of finished runs does not slow the watch on the live ones.
    """

    def __init__(self, server: Server):
        super().__init__(daemon=True)
        self.server = server
        self.runs: list[str] = []
        self.seen: dict[int, tuple[float, str, dict]] = {}  # seq -> (when, run, event)
        self.cycles = 0  # passes over the runs that got an answer for every run asked
        self._last: dict[str, int] = {}
        self._ended: dict[str, float] = {}  # run -> when it was last asked, once it ended
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        url, client = "", None
        while not self._halt.is_set():
            if self.server.url != url:
                if client is not None:
                    client.close()
                url = self.server.url
                client = httpx.Client(base_url=url, timeout=5)
            complete = True
            for run_id in list(self.runs):
                asked = self._ended.get(run_id)
                if asked is not None and time.monotonic() - asked < 1.0:
                    continue
                try:
                    resp = client.get(f"api/runs/{run_id}/events", params={"after": self._last.get(run_id, 0), "limit": 5000})
                    if resp.status_code != 200:
                        complete = False
                        continue
                    page = resp.json()
                except (httpx.HTTPError, ValueError):
                    complete = False
                    continue  # the server is down, restarting, or died while answering
                now = time.monotonic()
                with self._lock:
                    for rec in page["records"]:
                        self.seen[rec["seq"]] = (now, run_id, rec["event"])
                        if rec["event"]["kind"] in ENDED:
                            self._ended[run_id] = now
                    self._last[run_id] = page["last_seq"]
                    if run_id in self._ended:
                        self._ended[run_id] = now
            if complete:
                self.cycles += 1
            time.sleep(0.03)
        if client is not None:
            client.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def caught_up(self, timeout: float = 30.0) -> None:
        """Wait until two whole passes have been answered since the call (the second began
        after it): the watcher then holds everything committed before the call."""
        target, deadline = self.cycles + 2, time.monotonic() + timeout
        while self.cycles < target and time.monotonic() < deadline:
            time.sleep(0.01)

    def since(self, t0: float) -> list[dict]:
        with self._lock:
            return [ev for when, _, ev in self.seen.values() if when >= t0]

    def first(self, t0: float, predicate) -> float | None:
        """When the first event seen after ``t0`` that satisfies ``predicate`` was seen."""
        with self._lock:
            times = [when for when, _, ev in self.seen.values() if when >= t0 and predicate(ev)]
        return min(times, default=None)

    def resumed(self, t0: float) -> dict[str, int]:
        """The runs a server started at ``t0`` resumed: run -> seq of its ``run_resumed``."""
        out: dict[str, int] = {}
        with self._lock:
            for seq, (when, run, ev) in self.seen.items():
                if when >= t0 and ev["kind"] == "run_resumed":
                    out[run] = max(seq, out.get(run, 0))
        return out

    def first_resumed_token(self, t0: float) -> float | None:
        """When the first text streamed by a run after its resume by the server started at
        ``t0`` was seen: text committed before the kill and seen late does not count."""
        resumed = self.resumed(t0)
        with self._lock:
            times = [
                when
                for seq, (when, run, ev) in self.seen.items()
                if run in resumed and seq > resumed[run] and ev["kind"] == "output_delta" and ev.get("text")
            ]
        return min(times, default=None)

    def ended(self) -> set[str]:
        with self._lock:
            return set(self._ended)

    def acknowledged(self) -> dict[int, dict]:
        with self._lock:
            return {seq: ev for seq, (_, _, ev) in self.seen.items()}
