"""A step on an engine with native tool calls (``actors.step_runner``, no Ray): its last turn
asks for the answer only, and a step picked up again replays each turn's own tool result even
when the server gives calls of different turns the same id."""

from __future__ import annotations

import asyncio

from actors.engines.scripted import ScriptedEngine
from actors.snapshot import pin
from actors.step_runner import ModelPort, StepSpec, run_step
from actors.tools import ToolGate
from events.memory_log import InMemoryLog
from events.types import StepFinished
from tests.actors.hostile import make_repo

NATIVE = ModelPort(supports_tools=True, supports_continue=True)


def read(path: str, turn: int, call_id: str = "") -> dict:
    return {"turn": turn, "tool_calls": [{"id": call_id, "name": "read_file", "arguments": {"path": path}}]}


class Step:
    """One step over a small pinned repository, with its log in memory."""

    def __init__(self, tmp_path, **kw):
        repo = make_repo(tmp_path / "repo", {"a.py": "ALPHA = 1\n", "b.py": "BETA = 2\n"})
        self.gate = ToolGate(pin(repo, work_dir=tmp_path / "run"))
        self.log = InMemoryLog()
        options = dict(
            run_id="r", step_id="w1-junior-developer", persona="junior-developer", role="discovery",
            attempt=1, messages=[{"role": "user", "content": "Review a.py and b.py."}],
            repo=str(repo), commit="c", work_dir=str(tmp_path / "run"),
        )  # fmt: skip
        options.update(kw)
        self.spec = StepSpec(**options)

    async def append(self, events, keys):
        return self.log.append(events, keys)

    async def read_step(self, run_id, step_id):
        return self.log.read(0, run_id=run_id, step_id=step_id)

    async def run(self, engine: ScriptedEngine, spec: StepSpec | None = None):
        return await run_step(
            spec or self.spec, append=self.append, read_step=self.read_step,
            stream=engine.stream, model=NATIVE, tools=self.gate,
        )  # fmt: skip

    def events(self):
        return [r.event for r in self.log.read(0)]


def test_the_last_turn_asks_for_the_answer_only(tmp_path):
    step = Step(tmp_path, turn_limit=2)
    # The scripted model, like a real one, would call a tool again if it were offered one.
    engine = ScriptedEngine({"supports_tools": True, "replies": [
        read("a.py", 0),
        {"turn": 1, "text": "a.py sets ALPHA.", "tool_calls": [{"name": "read_file", "arguments": {"path": "b.py"}}]},
    ]})  # fmt: skip
    outcome = asyncio.run(step.run(engine))
    first, last = engine.requests
    assert first.tools and first.tool_choice is None  # the model may call a tool
    assert last.tool_choice == "none"  # the last turn may only answer
    finished = step.events()[-1]
    assert outcome.status == "finished" and isinstance(finished, StepFinished)
    assert finished.output == "a.py sets ALPHA." and "still asked for tools" not in finished.parse_error


def test_a_picked_up_step_replays_each_turns_own_result_when_call_ids_repeat(tmp_path):
    step = Step(tmp_path)
    # A server that numbers calls per response gives both turns' calls the id "call_0".
    first = ScriptedEngine({"supports_tools": True, "replies": [
        read("a.py", 0, "call_0"),
        read("b.py", 1, "call_0"),
        {"turn": 2, "text": "never", "first_token_s": 60},
    ]})  # fmt: skip

    async def die_in_turn_2():
        task = asyncio.create_task(step.run(first))
        while len(first.requests) < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        task.cancel()  # the agent dies while turn 2 streams
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(die_in_turn_2())
    second = ScriptedEngine({"supports_tools": True, "replies": [{"text": "done"}]})
    resumed = StepSpec(**{**{f: getattr(step.spec, f) for f in step.spec.__struct_fields__}, "resume": True})
    asyncio.run(step.run(second, resumed))

    def results(req):
        return [m["content"].splitlines()[-1].split("\t")[-1] for m in req.messages if m["role"] == "tool"]

    assert results(first.requests[2]) == ["ALPHA = 1", "BETA = 2"]
    assert results(second.requests[0]) == ["ALPHA = 1", "BETA = 2"]  # not BETA twice
    assert isinstance(step.events()[-1], StepFinished)
