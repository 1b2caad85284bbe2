"""The snapshot server: the read-only tools of an agent that runs off the head.

Its answers must be the gate's answers, refusals included (the read-only invariant does not
depend on where a step runs); it must read what was pinned, even a commit that exists only in
the run's data directory; it must never raise into a step; and a call must stay cheap.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

import pytest
import ray

from actors.runtime import Names, head_node
from actors.snapshot import pin
from actors.snapshot_server import RemoteTools, SnapshotRef, snapshot_server, stop_snapshot_server
from actors.tools import ToolGate
from tests.actors.hostile import ESCAPES, SECRET, fingerprint, make_hostile_repo

pytestmark = [pytest.mark.ray]

CALLS = [
    ("list_dir", {"path": "."}),
    ("list_dir", {"path": "src"}),
    ("read_file", {"path": "src/app.py"}),
    ("read_file", {"path": "src/util.py", "start_line": 3, "end_line": 9}),
    ("read_file", {"path": "docs/readme-link.md"}),
    ("read_file", {"path": "data/huge.txt"}),
    ("grep", {"pattern": "def helper_1\\d", "path": "src"}),
    ("grep", {"pattern": "open\\(", "glob": "*.py"}),
    ("glob", {"pattern": "**/*.py"}),
    ("git_log", {"limit": 5}),
    ("write_file", {"path": "pwned.txt", "content": "x"}),
    ("shell", {"command": "cat /etc/passwd"}),
    ("read_file", {"path": "README.md", "surprise": 1}),
    ("read_file", "not an object"),
    (None, {}),
    *[("read_file", {"path": p}) for p in ESCAPES],
    *[("list_dir", {"path": p}) for p in ESCAPES],
]


@pytest.fixture
def names(ray_session, tmp_path):
    n = Names(namespace=ray.get_runtime_context().namespace, prefix=f"t-{uuid.uuid4().hex[:8]}",
              data_dir=str(tmp_path / "data"), head_node=head_node())  # fmt: skip
    yield n
    stop_snapshot_server(n)


@pytest.fixture
def pinned(tmp_path):
    """A hostile repository with uncommitted work, pinned: the commit lives in the data dir."""
    repo = make_hostile_repo(tmp_path)
    (repo / "src" / "app.py").write_text("def handler(event):\n    return 'uncommitted change'\n")
    (repo / "new.py").write_text("NEW = 1\n")
    before = fingerprint(repo)
    work_dir = tmp_path / "data" / "runs" / "r1"
    snap = pin(repo, work_dir=work_dir)
    assert snap.dirty
    return repo, snap, SnapshotRef(str(repo), snap.commit, str(work_dir)), before


def test_remote_answers_are_the_gates_answers(names, pinned, tmp_path):
    repo, snap, ref, before = pinned
    gate, remote = ToolGate(snap), RemoteTools(snapshot_server(names), ref)
    for name, args in CALLS:
        assert remote.call(name, args) == gate.call(name, args), (name, args)

    async def all_async():
        return [await remote.call_async(name, args) for name, args in CALLS]

    assert asyncio.run(all_async()) == [gate.call(name, args) for name, args in CALLS]
    # What it read is the pin: the uncommitted files, which are in no commit of the repository.
    got = remote.call("read_file", {"path": "src/app.py"})
    assert got.ok and "uncommitted change" in got.content
    assert "NEW = 1" in remote.call("read_file", {"path": "new.py"}).content
    refused = remote.call("write_file", {"path": "pwned.txt", "content": "x"})
    assert refused.denied and not refused.ok
    everything = "".join(remote.call(n, a).content for n, a in CALLS)
    assert SECRET not in everything
    assert fingerprint(repo) == before and not list((tmp_path / "canary").iterdir())


def test_a_snapshot_that_cannot_be_read_is_a_failed_read_not_an_error(names, pinned, tmp_path):
    repo, _, ref, _ = pinned
    remote = RemoteTools(snapshot_server(names), SnapshotRef(str(repo), "0" * 40, str(tmp_path / "nowhere")))
    got = remote.call("read_file", {"path": "README.md"})
    assert not got.ok and not got.denied
    assert "snapshot cannot be read" in got.content and "0000000" in got.content
    # The server is still there for the next caller.
    assert RemoteTools(snapshot_server(names), ref).call("list_dir", {"path": "."}).ok


def test_a_restarted_server_answers_again_and_a_gone_one_is_a_failed_read(names, pinned):
    _, _, ref, _ = pinned
    server = snapshot_server(names)
    remote = RemoteTools(server, ref, timeout=20)
    assert remote.call("read_file", {"path": "README.md"}).ok
    ray.kill(server, no_restart=False)  # the process dies; Ray restarts it, the call is retried
    assert remote.call("read_file", {"path": "README.md"}).ok
    ray.kill(server, no_restart=True)
    # A kill lands asynchronously: a call sent at once can still be served. Wait for the death.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            ray.get(server.ping.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            break
        except ray.exceptions.GetTimeoutError:
            continue
        time.sleep(0.1)
    t0 = time.monotonic()
    got = remote.call("read_file", {"path": "README.md"})
    assert not got.ok and "snapshot server did not answer" in got.content
    assert time.monotonic() - t0 < 20


def test_a_remote_read_costs_about_a_millisecond(names, pinned):
    _, snap, ref, _ = pinned
    gate, remote = ToolGate(snap), RemoteTools(snapshot_server(names), ref)
    args = {"path": "src/util.py", "start_line": 1, "end_line": 40}
    local_t, remote_t = [], []
    for _ in range(5):
        gate.call("read_file", args), remote.call("read_file", args)
    for _ in range(200):
        t = time.perf_counter()
        gate.call("read_file", args)
        local_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        remote.call("read_file", args)
        remote_t.append(time.perf_counter() - t)
    local, far = statistics.median(local_t) * 1000, statistics.median(remote_t) * 1000
    print(f"\nread_file: {local:.3f} ms on the head, {far:.3f} ms through the snapshot server")
    # About a millisecond on an idle machine; this one is shared, so the bound is loose.
    assert far - local < 20


def test_the_server_is_stopped_with_the_agent_pool(names):
    from actors.agent_step import agent_pool, stop_agent_pool

    ray.get(snapshot_server(names).ping.remote())
    pool = agent_pool(names)
    assert [ray.get(a.where.remote())["on_head"] for a in pool] == [True] * names.pool_size
    stop_agent_pool(pool)
    with pytest.raises(ValueError):
        ray.get_actor(names.snapshots, namespace=names.namespace)

