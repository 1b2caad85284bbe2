"""A step's conversation stays within the model's context however much its tools read
(``actors.step_runner``, no Ray; the last check sends the turn to the real embedded model)."""

from __future__ import annotations

import asyncio
import json

import pytest

from actors.engines.base import ChatRequest
from actors.engines.scripted import ScriptedEngine
from actors.snapshot import pin
from actors.step_runner import ModelPort, StepSpec, run_step
from actors.tools import ToolGate
from conductor.prompts import MESSAGE_OVERHEAD, estimate_tokens
from events.memory_log import InMemoryLog
from events.types import StepFinished, ToolResult
from tests.actors.hostile import make_repo

CONTEXT, ANSWER_TOKENS = 2048, 512
# About 7,500 characters (9,000 as read_file numbers them): read whole, it is more than the model's context on its own.
BIG = "".join(f"def handler_{i}(request):\n    return route(request, {i})  # the {i}th handler\n" for i in range(100))
FINAL = json.dumps({"final": {"summary": "read big.py", "findings": []}})


def run(tmp_path, replies, *, turn_limit=6, context_tokens=CONTEXT):
    repo = make_repo(tmp_path / "repo", {"big.py": BIG, "small.py": "x = 1\n"})
    gate = ToolGate(pin(repo, work_dir=tmp_path / "run"))
    engine = ScriptedEngine({"tokens_per_s": 0, "replies": replies})  # keeps its requests
    log = InMemoryLog()
    spec = StepSpec(
        run_id="r", step_id="w1-junior-developer", persona="junior-developer", role="discovery",
        attempt=1, messages=[{"role": "system", "content": "You review code. " * 300},
                             {"role": "user", "content": "Review big.py."}],
        max_tokens=ANSWER_TOKENS, turn_limit=turn_limit, context_tokens=context_tokens,
        repo=str(repo), commit="c", work_dir=str(tmp_path / "run"), flush_seconds=0.0,
    )

    async def append(events, keys):
        return log.append(events, keys)

    async def read_step(run_id, step_id):
        return log.read(0, run_id=run_id, step_id=step_id)

    outcome = asyncio.run(run_step(
        spec, append=append, read_step=read_step, stream=engine.stream,
        model=ModelPort(supports_tools=False, supports_continue=True), tools=gate,
    ))
    return outcome, engine.requests, [r.event for r in log.read(0)]


def estimated(req: ChatRequest) -> int:
    return sum(MESSAGE_OVERHEAD + estimate_tokens(m.get("content") or "") for m in req.messages)


def read(path, turn):
    return {"turn": turn, "text": json.dumps({"tool": "read_file", "args": {"path": path}})}


def test_a_tool_result_is_cut_to_the_context_and_the_log_keeps_it_whole(tmp_path):
    outcome, requests, events = run(tmp_path, [read("big.py", 0), {"text": FINAL}])
    assert outcome.status == "finished"
    second = requests[1]
    # The turn is within the budget; the answer's tokens come on top, as the engine is sized.
    assert estimated(second) <= CONTEXT
    shown = second.messages[-1]["content"]
    assert shown.startswith("Result of read_file:") and "does not fit in the model's context" in shown
    assert "def handler_0(request)" in shown and "def handler_99(request)" not in shown
    # What the tool gave is recorded as it was; only what the model was shown is cut.
    result = next(e for e in events if isinstance(e, ToolResult))
    assert "def handler_99(request)" in result.content


def test_with_no_room_left_the_model_may_only_answer(tmp_path):
    outcome, requests, events = run(tmp_path, [read("big.py", 0), read("small.py", 1), {"text": FINAL}])
    assert outcome.status == "finished"
    # The first read filled the context: the next turn's schema offers no tool, only the answer.
    assert len(requests[0].response_schema["oneOf"]) > 1
    assert [b["required"] for b in requests[1].response_schema["oneOf"]] == [["final"]]
    # The scripted model asked for a tool all the same: the step ends there, and says why.
    assert len(requests) == 2 and all(estimated(r) <= CONTEXT for r in requests)
    assert isinstance(events[-1], StepFinished)
    assert f"no room left in the model's context ({CONTEXT} tokens)" in events[-1].parse_error


def test_the_last_turn_of_the_limit_may_only_answer(tmp_path):
    _, requests, _ = run(tmp_path, [read("small.py", 0), {"text": FINAL}], turn_limit=2)
    assert len(requests[0].response_schema["oneOf"]) > 1
    assert [b["required"] for b in requests[1].response_schema["oneOf"]] == [["final"]]


def test_without_a_context_bound_nothing_is_cut(tmp_path):
    _, requests, _ = run(tmp_path, [read("big.py", 0), {"text": FINAL}], context_tokens=0)
    assert "def handler_99(request)" in requests[1].messages[-1]["content"]


@pytest.mark.model
def test_the_turn_after_a_long_read_runs_on_the_embedded_model(tmp_path):
    # Before the cut, this turn held ~4,000 tokens and llama.cpp refused it outright.
    from actors.engines.embedded import EmbeddedEngine

    _, requests, _ = run(tmp_path, [read("big.py", 0), {"text": FINAL}])
    turn = ChatRequest(messages=requests[1].messages, max_tokens=4)
    engine = EmbeddedEngine(n_ctx=CONTEXT + ANSWER_TOKENS)  # without the product's headroom: the cut alone fits

    async def main():
        try:
            return [d async for d in engine.stream(turn)]
        finally:
            await engine.close()

    deltas = asyncio.run(main())
    assert deltas[-1].finish_reason in ("stop", "length") and deltas[-1].usage.prompt_tokens < CONTEXT + ANSWER_TOKENS
