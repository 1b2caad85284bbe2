"""The ``AgentStep`` actor: a pooled, long-lived shell around ``step_runner.run_step``.

Creating an actor costs ~0.25 s here, so a small pool serves every run, each actor running
many steps at once (they spend their time waiting on the model). A dead agent is restarted
by Ray; the FlowRun dispatches its in-flight step again and the step picks up from the log.

Agents are spread round the cluster's nodes (each prefers one, softly): they hold no state of
their own. An agent on the head reads the pinned snapshot from the data directory; an agent on
any other node sends its read-only tool calls to the snapshot server on the head
(``actors.snapshot_server``), so no node needs the repository or a shared filesystem.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import ray

from actors.runtime import Names, freeze_heap
from actors.step_runner import AgentWriter, ModelPort, StepOutcome, StepSpec, run_step

# Snapshots kept open per agent between steps (their file lists and read caches).
_SNAPSHOTS_KEPT = 16

_Key = tuple[str, str, str]


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=64)
class AgentStep:
    def __init__(self, names: Names):
        self._names = names
        self._log = None
        self._snapshots: OrderedDict[_Key, Any] = OrderedDict()
        self._users: dict[_Key, int] = {}  # steps running now on each snapshot
        self._server = None
        self._handles: dict[str, Any] = {}
        self._writers: dict[float, AgentWriter] = {}
        self._steps: dict[str, set[asyncio.Task]] = {}  # run id -> the calls running its steps
        node = ray.get_runtime_context().get_node_id()
        # On the head the data directory is right here; elsewhere it is not (no shared disk).
        self.on_head = not names.head_node or names.head_node == node
        # What every step needs, imported now rather than by the first step.
        import actors.model  # noqa: F401
        import actors.tools  # noqa: F401
        import conductor.findings  # noqa: F401

        freeze_heap()

    async def run(self, spec: StepSpec, model_app: str, model: ModelPort) -> StepOutcome:
        from actors.model import stream_chat, model_handle

        log = self._log_client()
        handle = self._handles.get(model_app)
        if handle is None:  # looked up once: a lookup asks Serve's controller
            handle = self._handles[model_app] = model_handle(model_app)

        async def read_step(run_id: str, step_id: str):
            return await log.read_async(0, run_id=run_id, step_id=step_id)

        # One writer for all the steps this agent runs (by coalescing window): one call to
        # the log at a time for all of them.
        writer = self._writers.get(spec.flush_seconds)
        if writer is None:
            writer = self._writers[spec.flush_seconds] = AgentWriter(log.append_async, spec.flush_seconds)
        tools, release = self._tools(spec)
        running = self._steps.setdefault(spec.run_id, set())
        running.add(asyncio.current_task())
        try:
            return await run_step(
                spec,
                append=log.append_async,
                read_step=read_step,
                stream=lambda req: stream_chat(handle, req),
                model=model,
                tools=tools,
                writer=writer,
            )
        finally:
            running.discard(asyncio.current_task())
            if not running:
                self._steps.pop(spec.run_id, None)
            release()

    async def stop(self, run_id: str, grace: float) -> int:
        """Cancel this agent's steps of ``run_id`` and wait up to ``grace`` seconds for them
        to end; how many there were. For a cancel whose run has no supervisor left to cancel
        its calls."""
        tasks = set(self._steps.get(run_id, ()))
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        return len(tasks)

    def ping(self) -> bool:
        return True

    def where(self) -> dict[str, Any]:
        """This agent's node, whether it reads snapshots itself, and how many git readers it holds."""
        return {
            "node": ray.get_runtime_context().get_node_id(),
            "on_head": self.on_head,
            "snapshots_in_use": len(self._users),
        }

    def _tools(self, spec: StepSpec) -> tuple[Any, Callable[[], None]]:
        """The read-only tools of one step, and what to call when the step ends."""
        if self.on_head:
            tools = _LocalTools(self, (spec.repo, spec.commit, spec.work_dir))
            return tools, tools.release
        from actors.snapshot_server import RemoteTools, SnapshotRef, snapshot_server

        if self._server is None:
            self._server = snapshot_server(self._names)
        return RemoteTools(self._server, SnapshotRef(spec.repo, spec.commit, spec.work_dir)), lambda: None

    def _snapshot(self, key: _Key) -> Any:
        from actors.snapshot import GitSnapshot

        snap = self._snapshots.get(key)
        if snap is None:
            repo, commit, work_dir = key
            snap = GitSnapshot.open(repo, commit, work_dir=work_dir)
            self._snapshots[key] = snap
            while len(self._snapshots) > _SNAPSHOTS_KEPT:
                old_key, old = self._snapshots.popitem(last=False)
                if old_key not in self._users:
                    old.close()
        self._snapshots.move_to_end(key)
        return snap

    def _acquire(self, key: _Key) -> Any:
        snap = self._snapshot(key)
        self._users[key] = self._users.get(key, 0) + 1
        return snap

    def _release(self, key: _Key, snap: Any) -> None:
        # A snapshot no step is reading holds no git process: with many runs at once, readers
        # would otherwise pile up (one per run per agent). Its caches stay for the next step.
        self._users[key] -= 1
        if self._users[key] == 0:
            del self._users[key]
            snap.close()

    def _log_client(self):
        if self._log is None:
            from actors.eventlog import LogClient

            self._log = LogClient.connect(self._names.eventlog, namespace=self._names.namespace)
        return self._log


class _LocalTools:
    """The read tools of one step on the head, over the run's snapshot, opened at the first
    call: many steps call no tool, and opening starts a git reader."""

    def __init__(self, agent: AgentStep, key: _Key):
        self._agent, self._key = agent, key
        self._gate = None
        self._snap = None

    def call(self, name: Any, args: Any) -> Any:
        if self._gate is None:
            from actors.tools import ToolGate

            self._snap = self._agent._acquire(self._key)
            self._gate = ToolGate(self._snap)
        return self._gate.call(name, args)

    def release(self) -> None:
        if self._snap is not None:
            self._agent._release(self._key, self._snap)
            self._snap = None


class AgentPool(list):
    """The agents of one data directory (a list of handles) and the names they were made with."""

    def __init__(self, agents: list, names: Names):
        super().__init__(agents)
        self.names = names


def agent_pool(names: Names) -> AgentPool:
    """The shared pool of agents for this data directory (created on first use), spread over
    the cluster's nodes (those declaring ``names.agent_resource``, when it is set; until one
    is up the agents wait for it); an agent lost with its node is restarted on another."""
    marker = {names.agent_resource: _AGENT_SHARE} if names.agent_resource else {}
    return AgentPool(
        [
            AgentStep.options(
                name=names.agent(i),
                namespace=names.namespace,
                get_if_exists=True,
                lifetime="detached",
                scheduling_strategy=_placement(i, nodes),
                memory=_TOKEN_MEMORY,
                resources=marker,
            ).remote(names)
            for nodes in [_alive_nodes(names.agent_resource)]
            for i in range(names.pool_size)
        ],
        names,
    )


# Ray places an actor that asks for no resources at all on a random node, whatever node it
# prefers (measured: 12 of 36 on their node, 36 of 36 with this). A token request, not an
# estimate of what an agent holds (~130 MiB idle), so a pool never waits for memory.
_TOKEN_MEMORY = 1024 * 1024


# An agent's sliver of the agent resource: a node declaring 1 holds a thousand agents, so the
# resource says where agents may run, not how many.
_AGENT_SHARE = 0.001


def _alive_nodes(resource: str = "") -> list[str]:
    return sorted(
        n["NodeID"]
        for n in ray.nodes()
        if n.get("Alive") and (not resource or n.get("Resources", {}).get(resource, 0) > 0)
    )


def _placement(i: int, nodes: list[str]) -> Any:
    """Agent ``i`` prefers the ``i``-th node round the cluster (an even spread, which
    ``SPREAD`` does not promise). Soft: if that node is full or lost, any node will do, and
    that is where a restarted agent goes."""
    if len(nodes) < 2:
        return "SPREAD"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=nodes[i % len(nodes)], soft=True)


def stop_agent_pool(agents: list) -> None:
    """End the agents (and the snapshot server they read through, if one was started)."""
    for agent in agents:
        try:
            ray.kill(agent, no_restart=True)
        except Exception:  # already gone
            pass
    names = getattr(agents, "names", None)
    if names is not None:
        from actors.snapshot_server import stop_snapshot_server

        stop_snapshot_server(names)
