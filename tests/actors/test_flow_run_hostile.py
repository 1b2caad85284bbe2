"""The supervisor under hostile timing, in plain asyncio: the class the ``FlowRun`` actor runs,
over the in-memory log behind a gate the test opens (see ``test_flow_run_cancel``); and the
writer an agent shares between the steps of every run it streams, under hostile model output."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import ray

from actors.cancel import close_cancelled
from actors.engines.scripted import ScriptedEngine
from actors.flow_run import FlowRun
from actors.step_runner import AgentWriter, ModelPort, StepOutcome, StepSpec, run_step
from actors.tools import ToolOutcome
from conductor.state import fold
from events.memory_log import InMemoryLog
from events.types import RunFinished, StepFinished, StepStarted
from personas import load_personas
from tests.actors.test_flow_run_agents import Agent
from tests.actors.test_flow_run_cancel import GatedLog, kind, planned_run
from tests.conductor.test_superseded_writer import one_step_queued

ENDS = ("run_finished", "run_failed", "run_cancelled")


def open_run(tmp_path, log: GatedLog, agent=None) -> tuple[FlowRun, str]:
    """A planned run's supervisor over ``log`` (its gate open), with ``agent`` (a scripted one
    by default) as its pool."""
    log.gate.set()
    names, settings, run_id = planned_run(tmp_path, log.log)
    run = FlowRun(names, settings, run_id, log=log)
    run._retire_later = lambda: None
    run._agents = [agent or Agent("a0", log, [])]
    return run, run_id


def test_a_cancel_during_the_runs_own_failure_leaves_it_failed(tmp_path):
    """The run fails on its own (its personas cannot be read) and two cancels arrive while that
    failure is being written: the run ends once, failed, and each cancel says it had ended."""

    async def scenario():
        gated = GatedLog()
        names, settings, run_id = planned_run(tmp_path, gated.log)
        run = FlowRun(names, settings, run_id, log=gated)
        run._retire_later = lambda: None

        def unreadable():
            raise RuntimeError("the personas cannot be read")

        run._load_personas = unreadable
        await run.start(model=None)
        while not gated.waiting:  # run_failed is at the gate
            await asyncio.sleep(0.005)
        cancels = [asyncio.ensure_future(run.cancel(f"stop {i}")) for i in range(2)]
        await asyncio.sleep(0.05)
        gated.gate.set()
        answers = await asyncio.wait_for(asyncio.gather(*cancels), 10)
        return answers, await run.wait(1), gated.log.read(run_id=run_id)

    answers, status, records = asyncio.run(scenario())
    kinds = [kind(r) for r in records]
    assert [k for k in kinds if k in ENDS] == ["run_failed"], kinds
    assert fold(r.event for r in records).status == status == "failed"
    assert answers == [False, False]


class LostAnswerLog(GatedLog):
    """Commits every append, but the one that ends the run gets no answer (the client gave up
    waiting on a log that stalled): it raises as the client does then."""

    async def append_async(self, events, keys):
        seqs = await super().append_async(events, keys)
        if any(isinstance(e, RunFinished) for e in events):
            raise ConnectionResetError("no answer from the event log in 60 s")
        return seqs


def test_a_run_whose_end_committed_without_an_answer_is_not_failed_afterwards(tmp_path):
    async def scenario():
        log = LostAnswerLog()
        run, run_id = open_run(tmp_path, log)
        await run.start(model=None)
        return await run.wait(20), log.log.read(run_id=run_id)

    status, records = asyncio.run(scenario())
    kinds = [kind(r) for r in records]
    assert [k for k in kinds if k in ENDS] == ["run_finished"], kinds
    assert status == "finished"


class Streaming:
    """Agents whose steps stream until they are cancelled, but the junior developer's, which
    ends when the test says. A cancelled step is noted, as Ray cancels an agent's call."""

    def __init__(self, log):
        self.log, self.cancelled, self.end_junior = log, set(), asyncio.Event()
        self.run = SimpleNamespace(remote=self._remote)

    def _remote(self, spec, model_app, model):
        return _Ref(asyncio.ensure_future(self._step(spec)))

    async def _step(self, spec):
        key = f"{spec.run_id}/{spec.step_id}/{spec.attempt}"
        await self.log.append_async(
            [StepStarted(run_id=spec.run_id, ts=time.time(), step_id=spec.step_id, attempt=spec.attempt)],
            [key + "/started"],
        )
        try:
            if spec.persona != "junior-developer":
                await asyncio.Event().wait()  # streams for ever
            await self.end_junior.wait()
        except asyncio.CancelledError:
            self.cancelled.add(spec.step_id)
            raise
        await self.log.append_async(
            [
                StepFinished(
                    run_id=spec.run_id, ts=time.time(), step_id=spec.step_id, attempt=spec.attempt, output="{}"
                )
            ],
            [key + "/finished"],
        )
        return StepOutcome(step_id=spec.step_id, attempt=spec.attempt, status="finished")


class _Ref:
    """An agent call as the supervisor holds it: awaited, and cancelled by ``ray.cancel``."""

    def __init__(self, task):
        self.task = task

    def __await__(self):
        return self.task.__await__()


def test_a_run_cancelled_by_someone_else_leaves_none_of_its_steps_streaming(tmp_path, monkeypatch):
    """With no answer from the supervisor, whoever cancels closes the run in the log itself
    (``actors.cancel``). The supervisor learns of it when a step ends: then the run is over,
    and the steps still streaming stop with it."""
    monkeypatch.setattr(ray, "cancel", lambda ref, **kw: ref.task.cancel())

    async def scenario():
        log = GatedLog()
        run, run_id = open_run(tmp_path, log, agents := Streaming(log))
        await run.start(model=None)
        while len([r for r in log.log.read(run_id=run_id) if kind(r) == "step_started"]) < 2:
            await asyncio.sleep(0.005)
        close_cancelled(log.log, run_id, "cancelled where the supervisor was not asked")
        agents.end_junior.set()  # a step ends: the supervisor reads the log again
        status = await run.wait(10)
        await asyncio.sleep(0.05)
        streaming = {s for s, (_, task) in run._inflight.items() if not task.done()}
        return status, set(agents.cancelled), streaming, log.log.read(run_id=run_id)

    status, cancelled, streaming, records = asyncio.run(scenario())
    assert status == "cancelled"
    started = {r.event.step_id for r in records if kind(r) == "step_started"}
    assert cancelled == {s for s in started if "junior-developer" not in s} and cancelled
    assert not streaming


def test_a_step_that_cannot_be_prepared_fails_alone_and_the_run_goes_on(tmp_path):
    """A resumed run whose user persona is no longer loaded (its file was removed before the
    restart): that step fails with the reason; the others run and the run finishes."""

    async def scenario():
        log = GatedLog()
        run, run_id = open_run(tmp_path, log)
        run._personas = {k: v for k, v in load_personas().items() if k != "test-engineer"}
        await run.start(model=None)
        return await run.wait(20), log.log.read(run_id=run_id)

    status, records = asyncio.run(scenario())
    assert status == "finished", [kind(r) for r in records]
    state = fold(r.event for r in records)
    failed = {s.step_id: s.error for s in state.steps.values() if s.status == "failed"}
    assert list(failed) == ["w1-test-engineer"]
    assert "'test-engineer'" in failed["w1-test-engineer"] and "not loaded" in failed["w1-test-engineer"]
    assert all(s.status == "finished" for s in state.steps.values() if s.step_id not in failed)


# --- the agent's writer: one append for the steps of every run an agent streams ----------------

STEP = "w1-junior-developer"


def _step_spec(run_id: str) -> StepSpec:
    return StepSpec(
        run_id=run_id, step_id=STEP, persona="junior-developer", role="analyst", attempt=1,
        messages=[{"role": "user", "content": f"review {run_id}"}], repo="/r", commit="c0",
        work_dir="/tmp/unused", flush_chars=1_000_000,
    )  # fmt: skip


class _Tools:
    def call(self, name, args):
        return ToolOutcome(ok=True, content="def add(a, b):\n    return a - b\n")


def _two_runs_on_one_agent(replies: list[dict]) -> InMemoryLog:
    """Run the junior developer's step of ``run-a`` and ``run-b`` at once on one agent (one
    writer), over a log whose appends take a few milliseconds, as the log actor's do."""
    engine = ScriptedEngine({"tokens_per_s": 400, "replies": replies})
    log = InMemoryLog()
    for run_id in ("run-a", "run-b"):
        events = one_step_queued(run_id)
        log.append(events, [f"{run_id}/{i}" for i in range(len(events))])

    async def append(events, keys):
        await asyncio.sleep(0.01)
        return log.append(events, keys)

    async def read_step(run_id, step_id):
        return log.read(0, run_id=run_id, step_id=step_id)

    async def both():
        writer = AgentWriter(append, 0.0)
        model = ModelPort(supports_tools=False, supports_continue=True)
        steps = [
            run_step(_step_spec(run_id), append=append, read_step=read_step, stream=engine.stream,
                     model=model, tools=_Tools(), writer=writer)
            for run_id in ("run-a", "run-b")
        ]  # fmt: skip
        await asyncio.wait_for(asyncio.gather(*steps, return_exceptions=True), 30)

    asyncio.run(both())
    return log


def _step_end(log: InMemoryLog, run_id: str):
    state = fold((r.event for r in log.read(0, run_id=run_id)), run_id=run_id)
    return state.steps[STEP]


LONG_ANSWER = json.dumps({"final": {"summary": "looked at calc.py " * 40, "findings": []}})


def test_an_event_the_log_refuses_fails_its_own_step_not_the_steps_beside_it():
    """Run A's model asks for a tool with an argument no log can store (JSON's "\\ud800" escape
    parses to a lone surrogate); its tool call goes in the same append as run B's text. Run A's
    step fails, saying why; run B's streams on and finishes."""
    bad_call = '{"tool": "read_file", "args": {"path": "calc\\ud800.py"}}'
    log = _two_runs_on_one_agent([{"match": "run-a", "text": bad_call}, {"text": LONG_ANSWER}])
    a, b = _step_end(log, "run-a"), _step_end(log, "run-b")
    assert (b.status, b.error) == ("finished", "")
    assert b.output == json.dumps({"summary": "looked at calc.py " * 40, "findings": []})
    assert a.status == "failed" and "surrogate" in a.error


def test_a_lone_surrogate_in_the_streamed_text_is_stored_as_a_replacement_character():
    answer = json.dumps({"final": {"summary": "odd \ud800 byte " * 20, "findings": []}}, ensure_ascii=False)
    log = _two_runs_on_one_agent([{"match": "run-a", "text": answer}, {"text": LONG_ANSWER}])
    a, b = _step_end(log, "run-a"), _step_end(log, "run-b")
    assert b.status == "finished"
    assert a.status == "finished", a.error
    assert "odd \ufffd byte" in a.text and "\ud800" not in a.text
