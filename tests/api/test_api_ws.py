"""The WebSocket against the real backend: an independent client in its own process rebuilds
a run from frames alone, across a dropped connection, and must match the REST projection;
the frames match the published JSON Schema; heartbeats arrive; a client that stops reading
is disconnected without slowing anyone else."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import websockets.sync.client as ws_sync

import api.ws
from apitest_support import (
    Server,
    StalledClient,
    api_settings,
    max_seq,
    recv_frames,
    settled_seq,
    wait_status,
)
from conductor.state import fold
from events.codec import decode

pytestmark = pytest.mark.ray
CLIENT = Path(__file__).with_name("apitest_ws_client.py")


@pytest.fixture(scope="module")
def server(backend, repos_root):
    with Server(backend, api_settings(backend, repos_root), heartbeat=0.5) as srv:
        yield srv


def test_an_independent_client_rebuilds_the_run_across_a_reconnect(server, repos_root):
    proc = subprocess.run(
        [sys.executable, str(CLIENT), server.ws_url, "demo", "12"], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    run_id = got["run_id"]
    assert got["connections"] >= 2, "the client was meant to drop its connection and come back"
    assert got["launched"]["repo"] == str((repos_root / "demo").resolve())
    assert [e["code"] for e in got["errors"] if e.get("request_id") == "bad"] == ["unknown_flow"]
    assert any(f["type"] == "pong" and f["id"] == "after-reconnect" for f in got["other"])

    # The run's frames: in seq order, none twice, none missing (the REST log has the same seqs).
    seqs = [f["seq"] for f in got["run_frames"]]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    with server.client() as http:
        wait_status(http, run_id)
        rest = http.get(f"/api/runs/{run_id}/events", params={"limit": 5000}).json()["records"]
        projection = http.get(f"/api/runs/{run_id}").json()
    assert seqs == [r["seq"] for r in rest]
    assert all(f["run_id"] == run_id and f["sub"] == run_id for f in got["run_frames"])

    # Folding the frames alone gives what the server's projection says.
    state = fold([decode(json.dumps(f["event"])) for f in got["run_frames"]], run_id=run_id)
    run, steps = projection["run"], {s["step_id"]: s for s in projection["steps"]}
    assert state.status == run["status"] == "finished"
    assert state.request.text == "over the socket" and state.request.origin == "ws"
    assert state.plan.band == run["band"] and state.plan.commit == run["commit"]
    assert set(state.steps) == set(steps)
    for step_id, st in state.steps.items():
        row = steps[step_id]
        assert (st.status, st.attempt, st.tokens_out, len(st.findings)) == (
            row["status"], row["attempt"], row["tokens_out"], row["findings"],
        ), step_id
        assert sum(c.outcome is not None and c.outcome.__struct_config__.tag == "tool_denied" for c in st.tools) == row["tools_denied"]
    assert sum(st.tokens_out for st in state.steps.values()) == run["tokens_out"]
    assert state.report is not None and state.report.recommendation == run["recommendation"]

    # The all-runs subscription: also ordered and without repeats across the reconnect, and
    # for this run a gap-free tail of its log.
    all_seqs = [f["seq"] for f in got["all_frames"]]
    assert all_seqs == sorted(set(all_seqs))
    mine = [f["seq"] for f in got["all_frames"] if f["run_id"] == run_id]
    assert mine and mine == seqs[seqs.index(mine[0]):]


def test_frames_match_the_published_schema_and_heartbeats_arrive(server):
    with server.client() as http:
        schema = http.get("/api/schema").json()
        run_id = http.post("/api/runs", json={"flow": "code-review", "repo": "demo"}).json()["run_id"]
    server_frame = {"$defs": schema["$defs"], "$ref": "#/$defs/ServerFrame"}
    validator = jsonschema.Draft202012Validator(server_frame)
    kinds, types = set(), set()
    with ws_sync.connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": 0}))
        ws.send(json.dumps({"type": "cancel", "run_id": "no-such-run"}))
        deadline, finished = time.monotonic() + 90, False
        while time.monotonic() < deadline and not finished:
            message = json.loads(ws.recv(30))
            validator.validate(message)  # one frame, or a batch of them
            for frame in message["frames"] if message["type"] == "batch" else [message]:
                types.add(frame["type"])
                if frame["type"] == "event":
                    kinds.add(frame["event"]["kind"])
                    finished = finished or frame["event"]["kind"] == "run_finished"
        time.sleep(0.6)
        ws.send(json.dumps({"type": "unsubscribe", "run_id": run_id}))
        for _ in range(5):
            message = json.loads(ws.recv(10))
            validator.validate(message)
            types.update(f["type"] for f in (message["frames"] if message["type"] == "batch" else [message]))
    assert {"snapshot", "event", "error", "heartbeat", "ack"} <= types
    assert {"run_requested", "run_planned", "output_delta", "tool_called", "step_finished", "report_rendered"} <= kinds
    client_frame = jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/ClientFrame"})
    client_frame.validate({"type": "subscribe", "run_id": None, "after": 3})
    client_frame.validate({"type": "launch", "flow": "code-review", "repo": "demo", "request_id": "r"})
    with pytest.raises(jsonschema.ValidationError):
        client_frame.validate({"type": "subscribe", "after": -1})


def test_bad_frames_get_errors_and_write_nothing(server, backend):
    before = settled_seq(backend)
    with ws_sync.connect(server.ws_url) as ws:
        for raw, code in [
            ("not json", "bad_json"),
            ('{"type": "explode"}', "bad_frame"),
            ('{"type": "subscribe", "after": -5}', "bad_frame"),
            ('{"type": "launch", "flow": "code-review", "repo": "../..", "request_id": "x"}', "repo_outside_roots"),
            ('{"type": "launch", "flow": "investigate", "repo": "demo", "request_id": "y"}', "missing_input"),
            ('{"type": "cancel", "run_id": "nope"}', "not_found"),
            ('{"type": "subscribe", "run_id": "nope"}', "not_found"),
        ]:
            ws.send(raw)
            frame = next_error(ws)
            assert frame["code"] == code, (raw, frame)
            assert frame["message"]
        ws.send(b"\x00binary")
        assert next_error(ws)["code"] == "bad_frame"
    assert max_seq(backend) == before


def test_a_seq_the_log_never_reached_is_refused_and_one_it_did_reach_is_followed(server, backend):
    with server.client() as http:
        run_id = http.post("/api/runs", json={"flow": "code-review", "repo": "demo"}).json()["run_id"]
        wait_status(http, run_id, ("finished",))
        head = settled_seq(backend)
        run_last = http.get(f"/api/runs/{run_id}").json()["run"]["last_seq"]
        # REST: past the end is a clear refusal, not an empty page to poll for ever.
        resp = http.get(f"/api/runs/{run_id}/events", params={"after": head + 1000})
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "after_past_end", resp.text
        assert str(head) in resp.json()["error"]["message"]
        page = http.get(f"/api/runs/{run_id}/events", params={"after": head}).json()
        assert page["records"] == [] and page["last_seq"] == head
    with ws_sync.connect(server.ws_url) as ws:
        for sub in (run_id, None):
            ws.send(json.dumps({"type": "subscribe", "run_id": sub, "after": head + 1000}))
            frame = next_error(ws)
            assert (frame["code"], frame["run_id"]) == ("after_past_end", sub), frame
            assert str(head) in frame["message"]
        # Neither subscription was kept, and one from a seq the log did reach works.
        ws.send(json.dumps({"type": "unsubscribe", "run_id": None}))
        acks = []
        while not acks:
            acks = [f for f in recv_frames(ws, 10) if f["type"] == "ack"]
        assert acks[0]["ok"] is False, acks
        ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": run_last - 1}))
        frames = []
        while not any(f["type"] == "event" for f in frames):
            frames += [f for f in recv_frames(ws, 10) if f["type"] != "heartbeat"]
        assert [f["type"] for f in frames[:2]] == ["snapshot", "event"], frames
        assert frames[1]["seq"] == run_last
    assert max_seq(backend) == head  # refusals write nothing


def next_error(ws) -> dict:
    """The next error frame (a heartbeat may come first)."""
    while True:
        for frame in recv_frames(ws, 10):
            if frame["type"] == "error":
                return frame


def test_a_client_that_stops_reading_is_disconnected_and_others_are_not_slowed(backend, repos_root, monkeypatch):
    monkeypatch.setattr(api.ws, "SLOW_AFTER_S", 1.0)
    # Small socket buffers, so that a client that stops reading fills them with this test's
    # small log (a default loopback socket buffers megabytes).
    with Server(backend, api_settings(backend, repos_root), sndbuf=4096) as server:
        _stalled_client_is_cut_off(server)


def _stalled_client_is_cut_off(server) -> None:
    with server.client() as http:
        # Enough log that the stalled client's catch-up cannot fit in its socket's buffers.
        while max_seq(server.backend) < 450:
            wait_status(http, http.post("/api/runs", json={"flow": "code-review", "repo": "demo"}).json()["run_id"])
        run_id = http.post("/api/runs", json={"flow": "code-review", "repo": "demo"}).json()["run_id"]
    with ws_sync.connect(server.ws_url) as brisk:
        brisk.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": 0}))
        # A short send queue for the slow connection only (the default holds thousands).
        queue, api.ws.QUEUE_FRAMES = api.ws.QUEUE_FRAMES, 16
        try:
            slow = StalledClient(server.ws_url)
            slow.send(json.dumps({"type": "subscribe", "run_id": None, "after": 0}))  # the whole log, never read
            time.sleep(0.3)
        finally:
            api.ws.QUEUE_FRAMES = queue
        try:
            stalled_at = time.monotonic()
            gaps, last, kinds = [], time.monotonic(), []

            def receive_until(stop) -> None:
                nonlocal last
                while not stop():
                    for frame in recv_frames(brisk, 30):
                        if frame["type"] == "event":
                            now = time.monotonic()
                            gaps.append(now - last)
                            last = now
                            kinds.append(frame["event"]["kind"])

            # The brisk client keeps receiving while the slow one sits on a full socket…
            receive_until(lambda: time.monotonic() - stalled_at > 3.0)
            # …which the server has cut off with "try again later": reading now, it finds the close.
            code, reason = slow.read_until_closed(30)
            assert code == 1013 and "slow consumer" in reason
        finally:
            slow.close()
        receive_until(lambda: kinds and kinds[-1] in ("run_finished", "run_failed", "run_cancelled"))
    assert max(gaps) < 5.0


class CountingBackend:
    """The real backend, each run lookup and cancel taking a little while, counting how many
    run at once."""

    def __init__(self, inner):
        self.inner = inner
        self.now = self.most = 0
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _slowly(self, fn, *args):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.05)
            return fn(*args)
        finally:
            with self.lock:
                self.now -= 1

    def run(self, run_id):
        return self._slowly(self.inner.run, run_id)

    def cancel(self, run_id, reason=""):
        return self._slowly(self.inner.cancel, run_id, reason)


def test_one_connection_flooding_frames_holds_few_of_the_servers_threads(backend, repos_root):
    counting = CountingBackend(backend)
    with Server(counting, api_settings(backend, repos_root)) as server, ws_sync.connect(server.ws_url) as ws:
        subscribes, cancels = api.ws.MAX_SUBSCRIPTIONS + 50, api.ws.MAX_WAITING + 30
        for i in range(subscribes):
            ws.send(json.dumps({"type": "subscribe", "run_id": f"missing-{i}"}))
        for _ in range(cancels):
            ws.send(json.dumps({"type": "cancel", "run_id": "missing"}))
        with server.client() as http:  # the REST API answers meanwhile
            assert http.get("/api/runs", params={"limit": 1}).status_code == 200
        codes: dict[str, int] = {}
        while sum(codes.values()) < subscribes + cancels:  # every frame is answered
            for frame in recv_frames(ws, 30):
                if frame["type"] == "error":
                    codes[frame["code"]] = codes.get(frame["code"], 0) + 1
    assert counting.most <= api.ws.CONCURRENT_WORK
    assert codes.get("too_many_subscriptions", 0) >= 1
    assert codes.get("busy", 0) >= 1
    assert set(codes) == {"not_found", "too_many_subscriptions", "busy"}


def test_the_server_stops_even_if_its_live_feed_will_not():
    """Shutdown waits a bounded time for the live feed, even one whose read ignores the
    cancel (a backend stuck in a call)."""

    class StuckBackend:
        shrugs = 1  # cancels it ignores

        def runs(self, limit):
            return []

        async def subscribe(self, run_id, after):
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    if not self.shrugs:
                        raise
                    self.shrugs -= 1
            yield []  # never reached: it makes this an async generator, as subscribe is

    async def scenario():
        hub = api.ws.Hub(StuckBackend())
        await hub.start()
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await hub.stop(timeout=0.5)
        took = time.monotonic() - t0
        still_running = not hub.task.done()
        hub.task.cancel()  # the second cancel ends it
        await asyncio.gather(hub.task, return_exceptions=True)
        return took, still_running

    took, still_running = asyncio.run(scenario())
    assert still_running and 0.4 < took < 2.0
