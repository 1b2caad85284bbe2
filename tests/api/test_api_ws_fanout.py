"""The WebSocket's live fan-out against a real backend: clients following every run each get
all of a burst of events, in order and once, when the log answers the live feed with more
records at once than a connection's send queue holds (after a stall of the log, say). The
frames that do not fit wait for the client to read; a client that reads is not cut off."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import websockets.sync.client as ws_sync

import api.ws
from actors.config import Settings
from apitest_support import SCRIPT, Server, StalledClient, api_settings, recv_frames
from events.types import OutputDelta

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def own_backend(ray_session, tmp_path_factory):
    """A real Orchestrator with a log of its own: the burst below is not a run other tests
    should see."""
    from actors.service import Orchestrator

    data = tmp_path_factory.mktemp("fanout-data")
    orch = Orchestrator(Settings(data_dir=str(data), engine="scripted"), engine="scripted", script=SCRIPT)
    yield orch
    orch.close()


def test_a_live_burst_bigger_than_the_send_queue_reaches_every_reading_client(own_backend, repos_root):
    burst = 3 * api.ws.QUEUE_FRAMES
    with Server(own_backend, api_settings(own_backend, repos_root)) as server:
        clients = [ws_sync.connect(server.ws_url) for _ in range(4)]
        try:
            for ws in clients:
                ws.send(json.dumps({"type": "subscribe", "run_id": None}))
            for ws in clients:
                assert json.loads(ws.recv(30))["type"] == "snapshot"
            now = time.time()
            events = [
                OutputDelta(run_id="burst", ts=now, step_id="s1", text=f"w{i} ", offset=4 * i, tokens=1)
                for i in range(burst)
            ]
            # One append: one commit, which the live feed reads in one answer.
            seqs = own_backend.log.append(events, [f"burst-{i}" for i in range(burst)])

            def read(ws) -> tuple[list[int], int]:
                got, messages = [], 0
                while not got or got[-1] < seqs[-1]:
                    messages += 1
                    for frame in recv_frames(ws, 30):  # a client cut off raises ConnectionClosed
                        if frame["type"] == "event":
                            got.append(frame["seq"])
                return got, messages

            with ThreadPoolExecutor(len(clients)) as pool:
                for got, messages in pool.map(read, clients):
                    assert got == seqs
                    # What queued up while a message went out left together, in batches.
                    assert messages < len(seqs) / 4
        finally:
            for ws in clients:
                ws.close()


def test_a_client_reading_through_a_backlog_is_not_cut_off_by_it_or_by_replies(own_backend, repos_root):
    """A client on a slow link (small socket buffers) reads all the time while a burst three
    times its send queue goes out, pinging now and then and getting heartbeats: it gets every
    event and every pong, and is never taken for a slow consumer."""
    burst = 3 * api.ws.QUEUE_FRAMES
    settings = api_settings(own_backend, repos_root)
    with Server(own_backend, settings, sndbuf=16384, heartbeat=0.02) as server:
        client = StalledClient(server.ws_url, rcvbuf=8192)
        try:
            client.send(json.dumps({"type": "subscribe", "run_id": None}))
            while not any(f["type"] == "snapshot" for f in client.read_frames(30)):
                pass
            now = time.time()
            events = [
                OutputDelta(run_id="backlog", ts=now, step_id="s1", text="x" * 40, offset=40 * i, tokens=1)
                for i in range(burst)
            ]
            seqs = own_backend.log.append(events, [f"backlog-{i}" for i in range(burst)])
            got, pings, pongs, last_ping = [], 0, 0, 0.0
            while (not got or got[-1] < seqs[-1]) and client.proto.close_rcvd is None:
                for frame in client.read_frames(30):
                    if frame["type"] == "event" and frame["run_id"] == "backlog":
                        got.append(frame["seq"])
                    pongs += frame["type"] == "pong"
                time.sleep(0.0003)  # reading all the time, a little slower than loopback
                if time.monotonic() - last_ping > 0.05:
                    pings, last_ping = pings + 1, time.monotonic()
                    client.send(json.dumps({"type": "ping", "id": str(pings)}))
            assert client.proto.close_rcvd is None, client.proto.close_rcvd
            assert got == seqs
            assert pings > 1 and pongs >= 1
        finally:
            client.close()
