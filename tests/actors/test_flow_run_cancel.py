"""Cancelling a run while its supervisor is waiting on the log, in plain asyncio.

The log here is the in-memory one behind a gate the test opens: an append sent to it commits
once the gate opens, whether or not whoever sent it is still waiting (as the log actor does
with a call whose caller was cancelled). The supervisor is the class the ``FlowRun`` actor runs.
"""

from __future__ import annotations

import asyncio
import time

from actors.config import Settings
from actors.flow_run import FlowRun
from actors.runtime import Names
from actors.snapshot import pin
from conductor.flows import FLOWS
from conductor.plan import plan
from conductor.requests import validate
from conductor.state import fold
from events.memory_log import InMemoryLog
from events.types import RunRequested, StepFailed
from personas import load_personas
from tests.actors.hostile import make_repo


class GatedLog:
    """The in-memory log with a gate in front of its appends; reads go straight through."""

    def __init__(self) -> None:
        self.log = InMemoryLog()
        self.gate = asyncio.Event()
        self.waiting = 0  # appends sent and held at the gate

    async def append_async(self, events, keys):
        async def commit():
            self.waiting += 1
            await self.gate.wait()
            self.waiting -= 1
            return self.log.append(events, keys)

        return await asyncio.shield(asyncio.ensure_future(commit()))  # outlives a cancelled caller

    async def read_async(self, after=0, *, run_id=None, step_id=None, limit=None):
        await asyncio.sleep(0.01)  # a round trip to the log actor
        return self.log.read(after, run_id=run_id, step_id=step_id, limit=limit)


def kind(record) -> str:
    return record.event.__struct_config__.tag


def planned_run(tmp_path, log: InMemoryLog) -> tuple[Names, Settings, str]:
    repo = make_repo(tmp_path / "repo", {"calc.py": "def add(a, b):\n    return a - b\n"})
    names = Names(namespace="test", prefix="test", data_dir=str(tmp_path / "data"))
    settings = Settings(data_dir=str(tmp_path / "data"))
    run_id = "run-cancel-1"
    requested = RunRequested(run_id=run_id, ts=time.time(), flow="code-review", repo=str(repo), band="small")
    validate(requested, FLOWS)
    snapshot = pin(repo, work_dir=names.run_dir(run_id))
    planned = plan(requested, snapshot, load_personas(), model="m", engine="scripted", ts=time.time())
    log.append([requested, planned], [f"{run_id}/requested", f"{run_id}/planned"])
    return names, settings, run_id


def test_a_cancel_while_the_first_wave_is_being_queued_fails_every_queued_step(tmp_path):
    async def scenario():
        gated = GatedLog()
        names, settings, run_id = planned_run(tmp_path, gated.log)
        run = FlowRun(names, settings, run_id, log=gated)
        run._retire_later = lambda: None  # there is no actor to retire here
        await run.start(model=None)
        while not gated.waiting:  # the first wave's step_queued events are at the gate
            await asyncio.sleep(0.005)
        cancelling = asyncio.ensure_future(run.cancel("stop"))
        await asyncio.sleep(0.05)  # the cancel is under way while the wave's append waits
        gated.gate.set()
        assert await asyncio.wait_for(cancelling, 10) is True
        return gated.log.read(run_id=run_id)

    records = asyncio.run(scenario())
    kinds = [kind(r) for r in records]
    queued = [r.event.step_id for r in records if kind(r) == "step_queued"]
    assert queued, kinds  # the wave's append committed although its sender was cancelled
    assert kinds[-1] == "run_cancelled", kinds
    failed = {r.event.step_id for r in records if isinstance(r.event, StepFailed) and r.event.error == "cancelled"}
    assert failed == set(queued), "every queued step is closed by the cancel"
    state = fold(r.event for r in records)
    assert state.status == "cancelled"
    assert not [s for s in state.steps.values() if s.in_flight]


def test_a_second_cancel_waits_for_the_first_and_writes_nothing_more(tmp_path):
    async def scenario():
        gated = GatedLog()
        names, settings, run_id = planned_run(tmp_path, gated.log)
        run = FlowRun(names, settings, run_id, log=gated)
        run._retire_later = lambda: None
        await run.start(model=None)
        while not gated.waiting:
            await asyncio.sleep(0.005)
        cancels = [asyncio.ensure_future(run.cancel(f"stop {i}")) for i in range(2)]
        await asyncio.sleep(0.05)
        gated.gate.set()
        assert await asyncio.wait_for(asyncio.gather(*cancels), 10) == [True, True]
        return gated.log.read(run_id=run_id)

    records = asyncio.run(scenario())
    kinds = [kind(r) for r in records]
    assert kinds.count("run_cancelled") == 1 and kinds[-1] == "run_cancelled"
    assert records[-1].event.reason == "stop 0"
