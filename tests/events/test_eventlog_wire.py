"""The log actor's wire: async appends and polls over a direct connection, found through Ray."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import uuid

import msgspec
import pytest
import ray

import eventlog_helpers
from actors import log_wire
from actors.eventlog import LogClient, start_event_log, stop_event_log
from eventlog_helpers import batch, blob, delta
from events.errors import MalformedEvent

pytestmark = pytest.mark.ray

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(eventlog_helpers)


@pytest.fixture
def actor_log(ray_session, tmp_path):
    name = f"eventlog-{uuid.uuid4().hex[:8]}"
    handle = start_event_log(str(tmp_path / "events.duckdb"), name=name, projector=None)
    yield name, handle
    stop_event_log(handle)


def wire_requests(handle) -> int:
    return ray.get(handle.info.remote())["wire_requests"]


def test_async_appends_and_polls_go_over_the_wire(actor_log):
    _, handle = actor_log
    client = LogClient(handle)

    async def main():
        first = await client.append_async(*batch("r", "s", 0, 3))
        again = await client.append_async(*batch("r", "s", 0, 3))  # same keys: same seqs
        polled = await client.poll_async(1, run_id="r", timeout=1)
        waiting = asyncio.ensure_future(client.poll_async(3, timeout=30))
        await asyncio.sleep(0.2)  # the long-poll is parked on the actor
        late = await client.append_async(*batch("r", "s", 3, 1))
        return first, again, polled, late, await asyncio.wait_for(waiting, 10)

    first, again, polled, late, woken = asyncio.run(main())
    assert first == again == [1, 2, 3]
    assert [r.event for r in polled] == batch("r", "s", 1, 2)[0]
    assert late == [4] and [r.seq for r in woken] == [4]
    assert wire_requests(handle) == 5  # every async call above, none as a Ray call
    assert [r.event for r in client.read()] == batch("r", "s", 0, 4)[0]


def test_refusals_come_back_as_the_logs_own_errors_and_write_nothing(actor_log):
    _, handle = actor_log
    client = LogClient(handle)

    async def main():
        await client.append_async(*batch("r", "s", 0, 1))
        with pytest.raises(MalformedEvent, match="unknown event kind 'nope'"):
            await client.append_encoded_async(
                [blob(delta("r", "s", 1)), b'{"kind":"nope","run_id":"r","ts":1.0}'], ["a", "b"]
            )
        # the connection stays usable after a refusal
        return await client.append_async(*batch("r", "s", 1, 1))

    assert asyncio.run(main()) == [2]
    assert client.max_seq() == 2


def _raw(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=10)


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_hostile_peers_are_cut_off_before_anything_runs(actor_log):
    _, handle = actor_log
    host, port, token = ray.get(handle.wire.remote())
    append = msgspec.msgpack.encode([1, "append", [[blob(delta("r", "s", 0))], ["k"]]])

    wrong = _raw(host, port)  # a wrong token, then a well-formed append
    wrong.sendall(log_wire.frame(b"x" * len(token)) + log_wire.frame(append))
    assert _closed_by_peer(wrong)

    # No token: a first frame claiming 100 MB (under the frame bound) is not waited for.
    stranger = _raw(host, port)
    stranger.sendall(log_wire.HEAD.pack(100_000_000) + b"\0" * 64)
    assert _closed_by_peer(stranger)

    huge = _raw(host, port)  # the right token, then a frame claiming 4 GiB
    huge.sendall(log_wire.frame(token) + log_wire.HEAD.pack(2**32 - 1) + b"\0" * 64)
    assert _closed_by_peer(huge)

    garbage = _raw(host, port)  # the right token, then bytes that are not a request
    garbage.sendall(log_wire.frame(token) + log_wire.frame(b"\xc1not msgpack") + log_wire.frame(append))
    assert _closed_by_peer(garbage)

    bad_args = _raw(host, port)  # a request whose arguments do not fit: refused by answer
    bad_args.sendall(log_wire.frame(token) + log_wire.frame(msgspec.msgpack.encode([7, "append", [1]])))
    size = log_wire.HEAD.unpack(bad_args.recv(4, socket.MSG_WAITALL))[0]
    rid, ok, (kind, _message) = msgspec.msgpack.decode(bad_args.recv(size, socket.MSG_WAITALL))
    assert (rid, ok, kind) == (7, False, "EventError")
    for sock in (wrong, stranger, huge, garbage, bad_args):
        sock.close()

    assert LogClient(handle).max_seq() == 0  # none of it was written


def test_falls_back_to_ray_calls_where_the_wire_cannot_be_reached(actor_log, monkeypatch):
    _, handle = actor_log

    async def unreachable(*args, **kwargs):
        raise ConnectionRefusedError("firewalled")

    monkeypatch.setattr(log_wire.WireConnection, "open", unreachable)
    client = LogClient(handle)

    async def main():
        seqs = await client.append_async(*batch("r", "s", 0, 2))
        return seqs, await client.poll_async(0, timeout=1)

    seqs, polled = asyncio.run(main())
    assert seqs == [1, 2] and [r.seq for r in polled] == [1, 2]
    assert wire_requests(handle) == 0


@ray.remote(max_retries=0)
def async_appender(name: str, namespace: str, worker: int, calls: int, size: int) -> list:
    """Appends over the wire, two calls in flight; returns keys and seqs, then the retries."""
    client = LogClient.connect(name, namespace=namespace)

    async def main():
        out = []
        for c in range(0, calls, 2):
            pairs = [batch(f"w{worker}", "s", (c + i) * size, size) for i in range(2)]
            seqs = await asyncio.gather(*(client.append_async(e, k) for e, k in pairs))
            out.extend((keys, got) for (_, keys), got in zip(pairs, seqs))
        return out

    out = asyncio.run(main())
    out.append(([], [client.retries]))
    return out


def test_actor_killed_under_wire_load_restarts_and_nothing_is_lost_or_doubled(actor_log):
    name, handle = actor_log
    namespace = ray.get_runtime_context().namespace
    pid_before = ray.get(handle.info.remote())["pid"]
    running = [async_appender.remote(name, namespace, w, 60, 5) for w in range(4)]
    client = LogClient(handle)
    deadline = time.monotonic() + 60
    while client.max_seq() < 150:
        assert time.monotonic() < deadline, "appenders made no progress"
        time.sleep(0.02)
    ray.kill(handle, no_restart=False)
    results = ray.get(running, timeout=120)
    assert sum(calls.pop()[1][0] for calls in results) > 0  # in-flight calls were sent again

    assert ray.get(handle.info.remote())["pid"] != pid_before
    total = 4 * 60 * 5
    rows = client.query("SELECT count(*), count(DISTINCT key), min(seq), max(seq) FROM events").rows
    assert rows == [(total, total, 1, total)]
    stored = dict(client.query("SELECT key, seq FROM events").rows)
    for calls in results:
        for keys, seqs in calls:
            assert [stored[k] for k in keys] == seqs
