"""Which agent the supervisor sends a step to, in plain asyncio: the class the ``FlowRun`` actor
runs, over the in-memory log, with stand-in agents that write what a step writes."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import ray

from actors.flow_run import FlowRun
from actors.step_runner import StepOutcome
from events.types import StepFinished, StepStarted
from tests.actors.test_flow_run_cancel import GatedLog, planned_run


class Agent:
    """A pooled agent: ``run.remote`` as Ray's handle has it. A lost one fails every call as
    Ray does for an actor that died (and is being restarted, or went with its node)."""

    def __init__(self, name: str, log, calls: list, lost: bool = False):
        self.name, self.log, self.calls, self.lost = name, log, calls, lost
        self.run = SimpleNamespace(remote=self._remote)

    def _remote(self, spec, model_app, model):
        self.calls.append((self.name, spec.step_id, spec.resume))
        return asyncio.ensure_future(self._step(spec))

    async def _step(self, spec) -> StepOutcome:
        await asyncio.sleep(0.01)
        if self.lost:
            raise ray.exceptions.RayActorError(error_msg=f"{self.name} died")
        key = f"{spec.run_id}/{spec.step_id}/{spec.attempt}/{self.name}"
        events = [
            StepStarted(run_id=spec.run_id, ts=time.time(), step_id=spec.step_id, attempt=spec.attempt, worker=self.name),
            StepFinished(run_id=spec.run_id, ts=time.time(), step_id=spec.step_id, attempt=spec.attempt, output="{}"),
        ]
        await self.log.append_async(events, [key + "/started", key + "/finished"])
        return StepOutcome(step_id=spec.step_id, attempt=spec.attempt, status="finished")


def test_a_lost_agent_gets_no_more_steps_and_its_step_goes_to_another(tmp_path):
    async def scenario():
        log = GatedLog()
        log.gate.set()
        names, settings, run_id = planned_run(tmp_path, log.log)
        calls: list = []
        run = FlowRun(names, settings, run_id, log=log)
        run._retire_later = lambda: None
        run._agents = [Agent("a0", log, calls, lost=True), Agent("a1", log, calls), Agent("a2", log, calls)]
        await run.start(model=None)
        status = await run.wait(20)
        return status, calls, log.log.read(run_id=run_id)

    status, calls, records = asyncio.run(scenario())
    assert status == "finished", status
    lost_steps = [step for agent, step, _ in calls if agent == "a0"]
    # The lost agent was sent one step; every step after went to the others...
    assert len(lost_steps) == 1, calls
    assert len(calls) > 4
    # ...including that step's pickup, which finished there.
    pickups = [(agent, resume) for agent, step, resume in calls if step == lost_steps[0] and agent != "a0"]
    assert pickups and pickups[0][1] is True
    finished = {r.event.step_id for r in records if isinstance(r.event, StepFinished)}
    assert lost_steps[0] in finished
