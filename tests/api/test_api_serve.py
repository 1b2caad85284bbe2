"""``orchestrator serve`` as a real process: it refuses to listen beyond loopback without a
token, claims its data directory (a second server is refused, naming the first), resumes
unfinished runs at start, and on SIGTERM stops cleanly (exit 0, claim removed, log released).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from apitest_support import FINDING, make_repo

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# One answer per agent, streamed slowly enough that a run is still going when we stop it.
SLOW_SCRIPT = {"tokens_per_s": 12, "replies": [{"json": {"final": FINDING}}]}


def serve(data: Path, root: Path, *args: str, script: Path | None = None, new_session: bool = False,
          **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "api.cli", "--data-dir", str(data), "serve", "--port", "0", *args]
    if script is not None:
        cmd += ["--engine", "scripted", "--script", str(script)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "RAY_ADDRESS"))}
    environ.update({"ORCH_REPO_ROOTS": str(root), **env})
    return subprocess.Popen(cmd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=new_session)


def wait_url(proc: subprocess.Popen, claim: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early ({proc.returncode}): {proc.stdout.read()}")
        try:
            url = json.loads(claim.read_text()).get("url")
        except (OSError, ValueError):
            url = ""
        if url:
            return url.rstrip("/")
        time.sleep(0.2)
    raise AssertionError("serve did not come up")



def slow_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A repository root holding ``demo``, the slow script, and a data directory."""
    root = tmp_path / "repos"
    make_repo(root / "demo")
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SLOW_SCRIPT))
    return root, script, tmp_path / "data"


def launch_streaming(http: httpx.Client) -> str:
    """A code-review of ``demo``, once its agents stream."""
    run_id = http.post("/api/runs", json={"flow": "code-review", "repo": "demo"}).json()["run_id"]
    deadline = time.monotonic() + 60
    while streamed(http.get(f"/api/runs/{run_id}/events").json()["records"]) < 5:
        assert time.monotonic() < deadline, "the run never started streaming"
        time.sleep(0.2)
    return run_id

def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    return proc.returncode, out


def test_a_served_connection_whose_client_stops_reading_is_ended_by_the_kernel(monkeypatch):
    # A client the WebSocket cut off for not reading may never read again: its socket must
    # not hold the server's unsent bytes for as long as it stays connected.
    import errno
    import socket

    from api.commands import serve

    monkeypatch.setattr(serve, "USER_TIMEOUT_MS", 1500)
    listener = serve._bind("127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    try:
        client.connect(listener.getsockname())
        conn, _ = listener.accept()
        conn.setblocking(False)
        with pytest.raises(BlockingIOError):
            while True:  # fill the client's window and the server's buffer
                conn.send(b"x" * 65536)
        deadline = time.monotonic() + 20
        while not (error := conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)):
            assert time.monotonic() < deadline, "the stalled connection was never ended"
            time.sleep(0.1)
        assert error == errno.ETIMEDOUT
        conn.close()
    finally:
        client.close()
        listener.close()


def test_binding_beyond_loopback_without_a_token_is_refused(tmp_path):
    proc = serve(tmp_path / "data", tmp_path, "--host", "0.0.0.0")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "refusing to listen on 0.0.0.0" in out and "ORCH_TOKEN" in out
    assert not (tmp_path / "data" / "server.json").exists()


def test_the_scripted_engine_without_its_script_stops_serve_at_start(tmp_path):
    data = tmp_path / "data"
    proc = serve(data, tmp_path, "--engine", "scripted")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in out
    assert out.strip().splitlines() == ["orchestrator: the scripted engine (a test double) needs --script FILE"]
    assert not (data / "server.json").exists()


def test_a_persona_directory_that_cannot_load_stops_serve_at_start(tmp_path):
    # Before: the server came up, and every launch and the persona list answered 500.
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "mine.md").write_text("---\nname: mine\n---\nbody\n")
    data = tmp_path / "data"
    proc = serve(data, tmp_path, ORCH_PERSONAS_DIR=str(personas))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in out
    assert out.strip().splitlines() == [
        f"orchestrator: cannot load personas: {personas / 'mine.md'}: lens: missing required field"
    ]
    assert not (data / "server.json").exists()  # the claim is given back
    assert not (data / "events.duckdb").exists()


def test_a_default_engine_that_cannot_run_is_named_at_start_and_serve_still_serves(tmp_path):
    root = tmp_path / "repos"
    make_repo(root / "demo")
    data = tmp_path / "data"
    proc = serve(data, root, "--engine", "openai")  # and no ORCH_OPENAI_BASE_URL
    try:
        url = wait_url(proc, data / "server.json")
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/api/info").status_code == 200
            refused = http.post("/api/runs", json={"flow": "code-review", "repo": "demo"})
            assert refused.status_code == 422 and "ORCH_OPENAI_BASE_URL" in refused.text
            # An engine whose model cannot start here (the scripted one, and this server was
            # given no script) is a 503 naming why, and no run.
            unavailable = http.post("/api/runs", json={"flow": "code-review", "repo": "demo", "engine": "scripted"})
            assert unavailable.status_code == 503, unavailable.text
            error = unavailable.json()["error"]
            assert error["code"] == "model_unavailable"
            assert error["message"].endswith("the scripted engine needs a script (a JSON file as the model)")
            assert http.get("/api/runs").json()["runs"] == [] and not list((data / "runs").glob("*"))
    finally:
        code, out = stop(proc)
    assert code == 0
    assert (
        "orchestrator: warning: the openai engine needs ORCH_OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1); "
        "launches on the openai engine are refused while that lasts"
    ) in out.splitlines()


def test_a_stop_sent_to_the_whole_process_group_stops_serve_promptly(tmp_path):
    # `timeout` and systemd's default stop signal Ray's own processes too. Before: every Ray
    # call in the shutdown waited a minute for them, then Ray ended the process (claim left).
    root, script, data = slow_setup(tmp_path)
    claim = data / "server.json"
    proc = serve(data, root, script=script, new_session=True)
    wait_url(proc, claim)
    time.sleep(2)  # past start-up, while it serves
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=45)
    assert proc.returncode == 0, out
    assert "orchestrator: stopped" in out and "Failed to connect to GCS" not in out
    assert not claim.exists()


def test_serve_claims_resumes_and_stops_cleanly(tmp_path):
    root, script, data = slow_setup(tmp_path)
    claim = data / "server.json"

    first = serve(data, root, script=script)
    try:
        url = wait_url(first, claim)
        held = json.loads(claim.read_text())
        assert held["pid"] == first.pid and held["url"].startswith("http://127.0.0.1:")
        assert held["ray_address"] and held["namespace"]
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.get("/api/info").json()["engine"] == "scripted"
            assert "<orch-app>" in http.get("/").text
            run_id = launch_streaming(http)

        # A second server on the same data directory is refused, naming the first.
        second = serve(data, root, script=script)
        out, _ = second.communicate(timeout=60)
        assert second.returncode != 0
        assert f"pid {first.pid}" in out and url in out
    finally:
        code, out = stop(first)
    assert code == 0, out
    assert "stopped" in out
    assert not claim.exists()
    # The log was closed: another process may open the file now; the run is mid-flight.
    with duckdb.connect(str(data / "events.duckdb"), read_only=True) as con:
        kinds = [k for (k,) in con.execute("SELECT kind FROM events ORDER BY seq").fetchall()]
    assert kinds[0] == "run_requested" and "output_delta" in kinds
    assert not {"run_finished", "run_failed", "run_cancelled"} & set(kinds)

    # Started again, the server picks the run up and takes it to its end.
    again = serve(data, root, script=script)
    try:
        url = wait_url(again, claim)
        with httpx.Client(base_url=url, timeout=60) as http:
            deadline = time.monotonic() + 180
            while (row := http.get(f"/api/runs/{run_id}").json()["run"])["status"] not in ("finished", "failed", "cancelled"):
                assert time.monotonic() < deadline, row
                time.sleep(0.5)
            assert row["status"] == "finished" and row["resumes"] == 1
            kinds = [r["event"]["kind"] for r in http.get(f"/api/runs/{run_id}/events", params={"limit": 5000}).json()["records"]]
            assert "run_resumed" in kinds
    finally:
        code, out = stop(again)
    assert code == 0, out
    assert not claim.exists()



def test_cancel_from_the_command_line_stops_a_run_the_server_runs(tmp_path):
    root, script, data = slow_setup(tmp_path)
    proc = serve(data, root, script=script)
    try:
        url = wait_url(proc, data / "server.json")
        with httpx.Client(base_url=url, timeout=60) as http:
            run_id = launch_streaming(http)
            environ = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "RAY_ADDRESS"))}
            done = subprocess.run(
                [sys.executable, "-m", "api.cli", "--data-dir", str(data), "cancel", run_id, "--reason", "not now"],
                capture_output=True, text=True, timeout=120, env=environ,
            )
            assert done.returncode == 0, done.stderr
            records = http.get(f"/api/runs/{run_id}/events", params={"limit": 5000}).json()["records"]
            kinds = [r["event"]["kind"] for r in records]
            assert kinds[-1] == "run_cancelled" and records[-1]["event"]["reason"] == "not now"
            assert "step_failed" in kinds  # its streaming steps were closed, not left open
            assert http.get(f"/api/runs/{run_id}").json()["run"]["status"] == "cancelled"
            time.sleep(1.5)  # and they stopped: nothing more is written
            assert len(http.get(f"/api/runs/{run_id}/events", params={"limit": 5000}).json()["records"]) == len(records)
    finally:
        code, out = stop(proc)
    assert code == 0, out

def test_run_from_the_command_line_goes_through_the_server_that_holds_the_data(tmp_path):
    root, _, data = slow_setup(tmp_path)
    script = tmp_path / "quick.json"
    script.write_text(json.dumps({"tokens_per_s": 60, "replies": [{"json": {"final": FINDING}}]}))
    proc = serve(data, root, script=script, ORCH_TOKEN="t0ken")
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "RAY_ADDRESS"))}
    environ = dict(bare, ORCH_TOKEN="t0ken")
    cli = [sys.executable, "-m", "api.cli", "--data-dir", str(data), "run"]
    try:
        url = wait_url(proc, data / "server.json")
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": "Bearer t0ken"}) as http:
            no_token = subprocess.run([*cli, "code-review", "--repo", str(root / "demo")],
                                      capture_output=True, text=True, timeout=120, env=bare)
            assert no_token.returncode == 2 and "set ORCH_TOKEN" in no_token.stderr
            done = subprocess.run([*cli, "code-review", "--repo", str(root / "demo"), "--json"],
                                  capture_output=True, text=True, timeout=300, env=environ)
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout)  # stdout is the report alone
            assert report["counts"]["steps"] >= 2
            runs = http.get("/api/runs").json()["runs"]
            assert [(r["origin"], r["status"]) for r in runs] == [("cli", "finished")]
            assert "Traceback" not in done.stderr

            # Refused by the server (outside its repository roots): one line, nothing written.
            outside = make_repo(tmp_path / "elsewhere")
            refused = subprocess.run([*cli, "code-review", "--repo", str(outside)],
                                     capture_output=True, text=True, timeout=120, env=environ)
            assert refused.returncode == 2
            assert refused.stderr.strip().splitlines()[-1].startswith("orchestrator: the server refused:")
            assert len(http.get("/api/runs").json()["runs"]) == 1
            scripted = subprocess.run([*cli, "code-review", "--repo", str(root / "demo"), "--engine",
                                       "scripted", "--script", str(script)],
                                      capture_output=True, text=True, timeout=120, env=environ)
            assert scripted.returncode == 2 and "runs its own engines" in scripted.stderr

            # Interrupting the command stops the watching, not the server's run.
            watch = subprocess.Popen([*cli, "code-review", "--repo", str(root / "demo")], env=environ,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = watch.stderr.readline()
            assert "launched on the server" in line, line
            run_id = line.split()[2]
            watch.send_signal(signal.SIGINT)
            _, err = watch.communicate(timeout=60)
            assert watch.returncode == 130 and f"orchestrator cancel {run_id}" in err
            deadline = time.monotonic() + 120
            while http.get(f"/api/runs/{run_id}").json()["run"]["status"] != "finished":
                assert time.monotonic() < deadline, "the interrupted command's run did not finish"
                time.sleep(0.5)
    finally:
        code, out = stop(proc)
    assert code == 0, out


def test_a_log_held_by_another_process_is_named_in_a_clear_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SLOW_SCRIPT))
    with duckdb.connect(str(data / "events.duckdb")):  # this process holds the file
        proc = serve(data, tmp_path, script=script)
        out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert "the event log is held by another process" in out and f"process {os.getpid()}" in out
    assert "Traceback" not in out
    assert not (data / "server.json").exists()


def streamed(records: list[dict]) -> int:
    """Tokens the run's agents have streamed so far, by its events."""
    return sum(r["event"].get("tokens", 0) for r in records if r["event"]["kind"] == "output_delta")

