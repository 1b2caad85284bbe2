"""The log's writer as a named, detached Ray actor, and its wire, driven from real Ray tasks."""

from __future__ import annotations

import asyncio
import os
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
from eventlog_helpers import CountingProjector, batch, blob, delta
from events.duckdb_log import DuckDBLog
from events.errors import EventError, LogLocked, MalformedEvent

pytestmark = pytest.mark.ray

# Ray workers cannot import the test directory: ship this module's functions and the helpers
# (tasks, reader functions, the test projector) to them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(eventlog_helpers)


@pytest.fixture
def actor_log(ray_session, tmp_path):
    """A fresh log actor on a fresh file; closed and ended afterwards."""
    name = f"eventlog-{uuid.uuid4().hex[:8]}"
    handle = start_event_log(str(tmp_path / "events.duckdb"), name=name, projector=None)
    yield name, handle
    stop_event_log(handle)


@ray.remote(max_retries=0)
def appender(
    name: str, namespace: str, worker: int, calls: int, size: int
) -> list[tuple[list[str], list[int]]]:
    """Appends ``calls`` lists of ``size`` deltas through the actor; returns keys and seqs
    (and, last, how many calls the client had to retry)."""
    client = LogClient.connect(name, namespace=namespace)
    out = []
    for c in range(calls):
        events, keys = batch(f"w{worker}", "s", c * size, size)
        out.append((keys, client.append(events, keys)))
    out.append(([], [client.retries]))
    return out


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


def namespace() -> str:
    return ray.get_runtime_context().namespace


def test_start_is_get_or_create_and_refuses_another_file(actor_log, tmp_path):
    name, handle = actor_log
    again = start_event_log(str(tmp_path / "events.duckdb"), name=name, projector=None)
    assert again._actor_id == handle._actor_id
    with pytest.raises(EventError, match="already serves"):
        start_event_log(str(tmp_path / "other.duckdb"), name=name, projector=None)


def test_append_read_poll_query_through_the_actor(actor_log):
    name, handle = actor_log
    client = LogClient(handle)
    events, keys = batch("r1", "s1", 0, 3)
    assert client.append(events, keys) == [1, 2, 3]
    assert client.append(events, keys) == [1, 2, 3]  # idempotent through the actor too
    assert client.append_encoded([blob(delta("r2", "s1", 0))], ["r2/0"]) == [4]
    assert [r.event for r in client.read(1, run_id="r1")] == events[1:]
    assert client.max_seq() == 4

    t0 = time.monotonic()
    assert client.poll(4, timeout=0.3) == []
    assert time.monotonic() - t0 >= 0.25
    # A long-poll answers as soon as a commit lands, not at its timeout.
    pending = handle.poll.remote(4, None, 30.0)
    time.sleep(0.2)
    client.append([delta("r1", "s1", 9)], ["late"])
    t0 = time.monotonic()
    assert [seq for seq, _ in ray.get(pending, timeout=10)] == [5]
    assert time.monotonic() - t0 < 5

    with pytest.raises(MalformedEvent, match="unknown event kind 'nope'"):
        client.append_encoded([b'{"kind":"nope","run_id":"r","ts":1.0}'], ["bad"])
    assert client.max_seq() == 5

    result = client.query("SELECT run_id, count(*) FROM events GROUP BY run_id ORDER BY run_id")
    assert result.rows == [("r1", 4), ("r2", 1)]
    with pytest.raises(ValueError, match="only read-only"):
        client.query("DELETE FROM events")
    assert client.call_reader(_count_events) == 5


def test_polls_near_the_head_and_far_behind_it_agree_with_read(actor_log):
    _, handle = actor_log
    client = LogClient(handle)
    for c in range(6):  # more than a poll answers from memory on the actor's loop
        client.append(*batch(f"r{c % 2}", "s", c * 500, 500))
    for after, run_id in ((0, None), (0, "r1"), (2990, None), (2990, "r0"), (3000, None)):
        timeout = 0.1 if after == 3000 else 10.0
        polled = ray.get(handle.poll.remote(after, run_id, timeout))
        assert polled == ray.get(handle.read.remote(after, run_id))[: len(polled)]
        assert len(polled) == (0 if after == 3000 else len(client.read(after, run_id=run_id)))


def test_a_poll_answer_is_bounded_in_bytes_and_a_follower_still_reads_everything(actor_log):
    # Bounded by count alone, 10,000 big records made an answer too big for the wire's frame:
    # the follower asked for the same page for ever and the live feed stalled.
    _, handle = actor_log
    client = LogClient(handle)
    big = "x" * 200_000
    events = [delta("r", "s", i, text=big + str(i)) for i in range(10)]
    client.append(events, [f"big/{i}" for i in range(10)])
    pages, after = [], 0
    while after < 10:
        page = ray.get(handle.poll.remote(after, None, 10.0, 10_000, 500_000))
        pages.append(len(page))
        after = page[-1][0]
    assert pages == [2, 2, 2, 2, 2]  # two bodies fit 500,000 bytes, a third would not
    one = ray.get(handle.poll.remote(0, None, 10.0, 10_000, 1_000))  # a body over the budget
    assert [seq for seq, _ in one] == [1]  # still comes, alone
    assert [r.event for r in client.read(0)] == events


def _count_events(cur) -> int:
    return cur.execute("SELECT count(*) FROM events").fetchall()[0][0]


def test_many_ray_appenders_get_dense_ordered_seqs(actor_log):
    name, handle = actor_log
    results = [
        calls[:-1]
        for calls in ray.get([appender.remote(name, namespace(), w, 25, 8) for w in range(4)])
    ]
    seqs = sorted(s for calls in results for _, call in calls for s in call)
    assert seqs == list(range(1, 801))
    by_key = {}
    for calls in results:
        previous = 0
        for keys, call in calls:
            assert call == list(range(call[0], call[0] + 8))  # one append is contiguous
            assert call[0] > previous
            previous = call[-1]
            by_key.update(zip(keys, call))
    records = LogClient(handle).read()
    assert [r.seq for r in records] == list(range(1, 801))
    for w in range(4):
        events, keys = batch(f"w{w}", "s", 0, 200)
        assert [records[by_key[k] - 1].event for k in keys] == events


def test_subscription_through_polls_hands_over_without_gap_or_duplicate(actor_log):
    name, handle = actor_log
    client = LogClient(handle)
    for c in range(4):
        client.append(*batch("pre", "s", c * 50, 50))
    running = [appender.remote(name, namespace(), w, 20, 10) for w in range(3)]
    got = []
    with client.subscribe(after=60) as sub:
        deadline = time.monotonic() + 60
        while not got or got[-1].seq < 800:
            assert time.monotonic() < deadline
            got.extend(sub.get(timeout=1))
    ray.get(running)
    assert [r.seq for r in got] == list(range(61, 801))


def test_held_file_gives_log_locked_naming_the_holder(ray_session, tmp_path):
    path = tmp_path / "events.duckdb"
    with DuckDBLog(path):
        with pytest.raises(LogLocked, match=f"held by process {os.getpid()}"):
            start_event_log(str(path), name=f"eventlog-{uuid.uuid4().hex[:8]}", projector=None)


def test_projector_is_built_in_the_actor_and_runs_in_its_transactions(ray_session, tmp_path):
    handle = start_event_log(
        str(tmp_path / "events.duckdb"),
        name=f"eventlog-{uuid.uuid4().hex[:8]}",
        projector=CountingProjector,
    )
    try:
        client = LogClient(handle)
        for c in range(5):
            client.append(*batch("r", "s", c * 10, 10))
        assert client.query("SELECT kind, n FROM kind_counts").rows == [("output_delta", 50)]
    finally:
        stop_event_log(handle)


@pytest.mark.parametrize("kind", ["ray calls", "wire"])
def test_actor_killed_under_load_restarts_and_retried_appends_duplicate_nothing(actor_log, kind):
    name, handle = actor_log
    pid_before = ray.get(handle.info.remote())["pid"]
    task = appender if kind == "ray calls" else async_appender
    running = [task.remote(name, namespace(), w, 60, 5) for w in range(4)]
    client = LogClient(handle)
    deadline = time.monotonic() + 60
    while client.max_seq() < 150:
        assert time.monotonic() < deadline, "appenders made no progress"
        time.sleep(0.02)
    ray.kill(handle, no_restart=False)
    results = ray.get(running, timeout=120)
    retried = sum(calls.pop()[1][0] for calls in results)
    assert retried > 0  # some appends were in flight when it died, and were sent again

    info = ray.get(handle.info.remote())
    assert info["pid"] != pid_before  # Ray restarted it, and it reopened its file
    total = 4 * 60 * 5
    rows = client.query("SELECT count(*), count(DISTINCT key), min(seq), max(seq) FROM events").rows
    assert rows == [(total, total, 1, total)]
    stored = dict(client.query("SELECT key, seq FROM events").rows)
    for calls in results:
        for keys, seqs in calls:
            assert [stored[k] for k in keys] == seqs


# --- the wire: async appends and polls over a direct connection -------------------------


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
        woken = await asyncio.wait_for(waiting, 10)
        return first, again, polled, late, woken, await client.read_async(2)  # a Ray call

    first, again, polled, late, woken, read = asyncio.run(main())
    assert first == again == [1, 2, 3]
    assert [r.event for r in polled] == batch("r", "s", 1, 2)[0]
    assert late == [4] and [r.seq for r in woken] == [4]
    assert wire_requests(handle) == 5  # every async append and poll above
    assert [r.event for r in read] == batch("r", "s", 2, 2)[0]


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
