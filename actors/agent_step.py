"""The ``AgentStep`` actor: a pooled, long-lived shell around ``step_runner.run_step``.

Creating an actor costs ~0.25 s here, so a small pool serves every run, each actor running
many steps at once (they spend their time waiting on the model). A dead agent is restarted
by Ray; the FlowRun dispatches its in-flight step again and the step picks up from the log.
"""

from __future__ import annotations

from collections import OrderedDict

import ray

from actors.runtime import Names
from actors.step_runner import ModelPort, StepOutcome, StepSpec, run_step

_SNAPSHOTS_KEPT = 16


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=64)
class AgentStep:
    def __init__(self, names: Names):
        self._names = names
        self._log = None
        self._snapshots: OrderedDict[tuple[str, str, str], object] = OrderedDict()

    async def run(self, spec: StepSpec, model_app: str, model: ModelPort) -> StepOutcome:
        from actors.model import stream_chat, model_handle
        from actors.tools import ToolGate

        log = self._log_client()
        handle = model_handle(model_app)
        tools = ToolGate(self._snapshot(spec))

        async def read_step(run_id: str, step_id: str):
            return await log.read_async(0, run_id=run_id, step_id=step_id)

        return await run_step(
            spec,
            append=log.append_async,
            read_step=read_step,
            stream=lambda req: stream_chat(handle, req),
            model=model,
            tools=tools,
        )

    def ping(self) -> bool:
        return True

    def _log_client(self):
        if self._log is None:
            from actors.eventlog import LogClient

            self._log = LogClient.connect(self._names.eventlog, namespace=self._names.namespace)
        return self._log

    def _snapshot(self, spec: StepSpec):
        from actors.snapshot import GitSnapshot

        key = (spec.repo, spec.commit, spec.work_dir)
        snap = self._snapshots.get(key)
        if snap is None:
            snap = GitSnapshot.open(spec.repo, spec.commit, work_dir=spec.work_dir)
            self._snapshots[key] = snap
            while len(self._snapshots) > _SNAPSHOTS_KEPT:
                self._snapshots.popitem(last=False)
        self._snapshots.move_to_end(key)
        return snap


def agent_pool(names: Names) -> list:
    """The shared pool of agents for this data directory (created on first use)."""
    return [
        AgentStep.options(
            name=names.agent(i),
            namespace=names.namespace,
            get_if_exists=True,
            lifetime="detached",
            scheduling_strategy="SPREAD",
        ).remote(names)
        for i in range(names.pool_size)
    ]



def stop_agent_pool(agents: list) -> None:
    for agent in agents:
        try:
            ray.kill(agent, no_restart=True)
        except Exception:  # already gone
            pass
