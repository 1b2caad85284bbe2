"""Read-only tools for agents on nodes that do not hold the pinned snapshots.

A run's snapshot lives in the data directory on the head (a pin record, maybe a private object
directory or a copy of a plain directory), and the repository itself may only be on that
machine. An ``AgentStep`` on the head reads it directly; an agent elsewhere sends each tool call
to the ``SnapshotServer``, one actor per data directory pinned to the head, which runs it with
the same ``ToolGate`` over the same ``GitSnapshot``. The gate, its refusals and its bounds are
unchanged, so the read-only invariant holds whichever node a step runs on, and nothing assumes
a shared filesystem. A call costs one Ray round trip (about a millisecond) and carries at most
the gate's bounded output.

The server is started on first use (a single-node Orchestrator never needs it) and is stopped
with the agent pool.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import msgspec
import ray

from actors.runtime import Names, on_head
from actors.tools import ToolOutcome

# Open snapshots kept by the server; each holds one `git cat-file` process and a read cache.
SNAPSHOTS_KEPT = 16
# A tool call bounded by the gate takes seconds at most (grep stops at 5 s); past this the
# head is taken to be unreachable and the model is told the read failed.
CALL_TIMEOUT_S = 60.0


class SnapshotRef(msgspec.Struct, frozen=True):
    """Which pinned snapshot a call reads: as ``GitSnapshot.open`` takes it."""

    repo: str
    commit: str
    work_dir: str


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=32)
class SnapshotServer:
    """Answers ``ToolGate.call`` for any snapshot pinned under its data directory.

    A threaded actor: calls run in parallel (``GitSnapshot`` is thread-safe, and a grep runs
    in its own child process). Every call is a read, so Ray may retry one after a restart.
    """

    def __init__(self) -> None:
        self._gates: OrderedDict[SnapshotRef, Any] = OrderedDict()
        self._lock = threading.Lock()

    def call(self, ref: SnapshotRef, name: Any, args: Any) -> ToolOutcome:
        from actors.snapshot import SnapshotError

        try:
            gate = self._gate(ref)
        except SnapshotError as exc:
            return ToolOutcome(ok=False, content=f"{name} failed: the snapshot cannot be read: {exc}")
        return gate.call(name, args)

    def ping(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def _gate(self, ref: SnapshotRef):
        from actors.snapshot import GitSnapshot
        from actors.tools import ToolGate

        with self._lock:
            gate = self._gates.get(ref)
            if gate is None:
                gate = ToolGate(GitSnapshot.open(ref.repo, ref.commit, work_dir=ref.work_dir))
                self._gates[ref] = gate
                while len(self._gates) > SNAPSHOTS_KEPT:
                    _, old = self._gates.popitem(last=False)
                    old.snapshot.close()
            self._gates.move_to_end(ref)
            return gate


def snapshot_server(names: Names) -> Any:
    """The snapshot server of this data directory, started on the head if it is not running."""
    return SnapshotServer.options(
        name=names.snapshots,
        namespace=names.namespace,
        get_if_exists=True,
        lifetime="detached",
        scheduling_strategy=on_head(names),
    ).remote()


def stop_snapshot_server(names: Names) -> None:
    try:
        ray.kill(ray.get_actor(names.snapshots, namespace=names.namespace), no_restart=True)
    except ValueError:
        pass  # never started: no agent ran away from the head


class RemoteTools:
    """``ToolGate``'s interface for one step, answered by the snapshot server on the head."""

    def __init__(self, server: Any, ref: SnapshotRef, *, timeout: float = CALL_TIMEOUT_S):
        self._server = server
        self._ref = ref
        self._timeout = timeout

    def call(self, name: Any, args: Any) -> ToolOutcome:
        """Like ``ToolGate.call``: never raises; an unreachable server is a failed read."""
        try:
            return ray.get(self._server.call.remote(self._ref, name, args), timeout=self._timeout)
        except Exception as exc:
            return _unreachable(name, exc)

    async def call_async(self, name: Any, args: Any) -> ToolOutcome:
        """``call`` without blocking the caller's event loop."""
        import asyncio

        try:
            async with asyncio.timeout(self._timeout):
                return await self._server.call.remote(self._ref, name, args)
        except Exception as exc:
            return _unreachable(name, exc)


def _unreachable(name: Any, exc: BaseException) -> ToolOutcome:
    what = name if isinstance(name, str) else "the tool"
    return ToolOutcome(
        ok=False, content=f"{what} failed: the snapshot server did not answer ({type(exc).__name__})"
    )
