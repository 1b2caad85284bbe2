"""The live terminal view of `orchestrator run`: what a person watching it reads per agent."""

from __future__ import annotations

import time

from rich.console import Console

from api.commands.run import _View
from conductor.state import fold
from events.types import OutputDelta, RunRequested, StepQueued, StepStarted, ToolCalled
from tests.projections.projection_scenarios import planned


def rows(events) -> dict[str, str]:
    console = Console(record=True, width=160)
    console.print(_View(console).render(fold(events, run_id="r1")))
    by_first_word = {line.split()[0]: line for line in console.export_text().splitlines() if line.split()}
    return {persona: by_first_word[persona] for persona in ("junior-developer", "risk-analyst")}


def test_a_step_with_nothing_back_yet_reads_waiting_then_running_once_it_streams():
    t = time.time() - 5
    events = [
        RunRequested(run_id="r1", ts=t, flow="code-review", repo="/src/app"),
        planned("r1", t, "small", ("a", "junior-developer", 0), ("b", "risk-analyst", 0)),
        StepQueued(run_id="r1", ts=t + 1, step_id="a", persona="junior-developer", phase="analysis"),
        StepStarted(run_id="r1", ts=t + 1, step_id="a"),
        StepQueued(run_id="r1", ts=t + 1, step_id="b", persona="risk-analyst", phase="analysis"),
        StepStarted(run_id="r1", ts=t + 1, step_id="b"),
    ]
    before = rows(events)
    assert "waiting for the model" in before["junior-developer"]
    assert "waiting for the model" in before["risk-analyst"]
    after = rows([
        *events,
        OutputDelta(run_id="r1", ts=t + 2, step_id="a", text="reading", offset=0, tokens=2),
        ToolCalled(run_id="r1", ts=t + 2, step_id="b", call_id="c1", tool="read_file", args={"path": "x"}),
    ])
    for persona in ("junior-developer", "risk-analyst"):
        assert "running" in after[persona] and "waiting" not in after[persona]


def test_the_band_line_names_the_band_once_then_says_why():
    import msgspec

    t = time.time()
    plan = msgspec.structs.replace(
        planned("r1", t, "small", ("a", "junior-developer", 0)),
        band_reason="Small: 2 files in 1 subsystem, nothing points higher",  # as the conductor words it
    )
    requested = RunRequested(run_id="r1", ts=t, flow="code-review", repo="/src/app")
    console = Console(record=True, width=160)
    console.print(_View(console).render(fold([requested, plan], run_id="r1")))
    band = [line for line in console.export_text().splitlines() if line.startswith("Band")]
    assert band == ["Band small: 2 files in 1 subsystem, nothing points higher"]
