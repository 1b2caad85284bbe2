"""An agent thought lost that is still running after its step was picked up again.

Ray reports an agent it cannot reach (``ActorUnavailableError``) as lost, and the run's
supervisor then gives its step to another agent; the first may still be streaming. Every fold
(the conductor's, the projections', the agent's own rebuild, the pane's) must keep what it
wrote before the pickup and ignore what it writes after, so the two never interleave one
step's text, and the step ends once, with the later agent's answer and tokens.
"""

from __future__ import annotations

from actors.step_runner import _committed
from conductor.state import fold
from events.log import Record
from events.types import (
    OutputDelta,
    PlannedStep,
    RosterEntry,
    RunPlanned,
    RunRequested,
    StepFailed,
    StepFinished,
    StepQueued,
    StepStarted,
    ToolCalled,
    ToolDenied,
    ToolResult,
)
from projections.fold import fold_all

RUN, STEP = "run-z", "w1-junior-developer"
ANSWER = "The parser skips blank lines."


def one_step_queued(run_id: str) -> list:
    """A run planned with one junior-developer step, and that step queued."""
    step = PlannedStep(step_id=STEP, persona="junior-developer", phase="analysis", wave=1)
    return [
        RunRequested(run_id=run_id, ts=1.0, flow="code-review", repo="/r"),
        RunPlanned(
            run_id=run_id, ts=2.0, band="small", band_reason="r", band_source="default",
            roster=(RosterEntry(persona="junior-developer", reason="r", phase="analysis"),),
            steps=(step,), commit="c0", model="scripted", engine="scripted",
        ),
        StepQueued(run_id=run_id, ts=3.0, step_id=STEP, persona="junior-developer", phase="analysis"),
    ]


def lost_agent_run() -> list:
    """One step, picked up by a second agent while the first keeps writing."""
    first = dict(run_id=RUN, step_id=STEP, attempt=1, pickup=0)
    second = dict(run_id=RUN, step_id=STEP, attempt=1, pickup=1)
    return [
        *one_step_queued(RUN),
        StepStarted(ts=4.0, worker="agent-0", **first),
        OutputDelta(ts=5.0, text="The parser ", offset=0, tokens=2, **first),
        ToolCalled(ts=6.0, call_id="c1", tool="read_file", args={"path": "p.py"}, **first),
        ToolResult(ts=7.0, call_id="c1", tool="read_file", content="x", **first),
        # The supervisor lost sight of agent-0 and gave the step to agent-1.
        StepStarted(ts=8.0, worker="agent-1", continued_from=len("The parser "), **second),
        OutputDelta(ts=9.0, text="drops", offset=11, tokens=1, **first),
        OutputDelta(ts=9.1, text="skips ", offset=11, tokens=1, **second),
        ToolDenied(ts=9.2, call_id="c2", tool="write_file", reason="not a read tool", **first),
        OutputDelta(ts=9.3, text=" input", offset=16, tokens=1, **first),
        StepStarted(ts=9.4, worker="agent-0", continued_from=0, **first),  # a late retry of its start
        OutputDelta(ts=9.5, text="blank lines.", offset=17, tokens=2, **second),
        StepFinished(ts=10.0, output="zombie", tokens_in=90, tokens_out=50, **first),
        StepFinished(ts=11.0, output=ANSWER, tokens_in=10, tokens_out=7, **second),
    ]


def ended_before_pickup_run() -> list:
    """One step, ended by its first agent just before a second agent's start was committed
    (the second read the step while the ending was still on its way to the log)."""
    first = dict(run_id=RUN, step_id=STEP, attempt=1, pickup=0)
    second = dict(run_id=RUN, step_id=STEP, attempt=1, pickup=1)
    return [
        *one_step_queued(RUN),
        StepStarted(ts=4.0, worker="agent-0", **first),
        OutputDelta(ts=5.0, text=ANSWER, offset=0, tokens=6, **first),
        StepFinished(ts=6.0, output=ANSWER, tokens_in=10, tokens_out=7, **first),
        StepStarted(ts=7.0, worker="agent-1", continued_from=0, **second),
        OutputDelta(ts=8.0, text="Something else.", offset=0, tokens=3, **second),
        ToolDenied(ts=8.5, call_id="c9", tool="write_file", reason="not a read tool", **second),
        StepFinished(ts=9.0, output="Something else.", tokens_in=12, tokens_out=3, **second),
    ]


def records(events) -> list[Record]:
    return [Record(seq=i + 1, event=e) for i, e in enumerate(events)]


def test_the_conductor_keeps_the_later_agents_text_and_ending():
    st = fold(lost_agent_run()).steps[STEP]
    assert st.text == ANSWER
    assert (st.status, st.output, st.tokens_in, st.tokens_out, st.pickup) == ("finished", ANSWER, 10, 7, 1)
    # The tool call made before the pickup stays; the refusal the lost agent met after it does not.
    assert [(c.called.call_id, type(c.outcome).__name__) for c in st.tools] == [("c1", "ToolResult")]


def test_the_projections_count_the_step_once():
    runs, steps = fold_all(records(lost_agent_run()))
    row = steps[RUN][STEP]
    assert (row.status, row.attempt, row.pickup) == ("finished", 1, 1)
    assert (row.tokens_in, row.tokens_out, row.tool_calls, row.tools_denied, row.findings) == (10, 7, 1, 0, 0)
    assert (runs[RUN].tokens_in, runs[RUN].tokens_out, runs[RUN].tools_denied) == (10, 7, 0)


def test_a_third_agent_rebuilds_the_step_as_the_second_left_it():
    done = _committed(records(lost_agent_run()), attempt=1)
    assert done.text == ANSWER
    assert done.started == 3  # a new pickup takes a number none of them has
    assert isinstance(done.ended, StepFinished) and done.ended.output == ANSWER
    assert [c.call_id for c in done.calls] == ["c1"]


def test_the_supervisor_ends_the_attempt_whichever_agent_holds_it():
    events = lost_agent_run()[:8]  # agent-1 has just started
    events.append(StepFailed(run_id=RUN, ts=12.0, step_id=STEP, attempt=1, pickup=1,
                             error="picked up 3 times, never finished", retryable=True))
    st = fold(events).steps[STEP]
    assert (st.status, st.retryable) == ("failed", True)
    assert fold_all(records(events))[1][RUN][STEP].status == "failed"


def test_an_earlier_attempt_cannot_end_a_later_one():
    events = lost_agent_run()[:8]
    events += [
        StepQueued(run_id=RUN, ts=12.0, step_id=STEP, attempt=2, persona="junior-developer", phase="analysis"),
        StepStarted(run_id=RUN, ts=13.0, step_id=STEP, attempt=2),
        StepFinished(run_id=RUN, ts=14.0, step_id=STEP, attempt=1, pickup=1, output="late", tokens_out=5),
    ]
    st = fold(events).steps[STEP]
    assert (st.status, st.attempt, st.output, st.tokens_out) == ("running", 2, "", 0)
    row = fold_all(records(events))[1][RUN][STEP]
    assert (row.status, row.attempt, row.tokens_out) == ("running", 2, 0)


def test_an_attempt_ended_before_its_pickup_started_stays_ended_in_every_fold():
    events = ended_before_pickup_run()
    st = fold(events).steps[STEP]
    assert (st.status, st.text, st.output, st.tokens_in, st.tokens_out, st.pickup) == (
        "finished", ANSWER, ANSWER, 10, 7, 0)
    assert st.tools == []
    runs, steps = fold_all(records(events))
    row = steps[RUN][STEP]
    assert (row.status, row.pickup, row.tokens_in, row.tokens_out, row.tools_denied) == ("finished", 0, 10, 7, 0)
    assert (runs[RUN].tokens_in, runs[RUN].tokens_out, runs[RUN].tools_denied) == (10, 7, 0)
    done = _committed(records(events), attempt=1)
    assert isinstance(done.ended, StepFinished) and done.ended.output == ANSWER
    assert (done.text, done.started) == (ANSWER, 2)


def test_an_attempt_the_supervisor_failed_stays_failed_when_its_agent_finishes_late():
    events = lost_agent_run()[:8]
    events += [
        StepFailed(run_id=RUN, ts=12.0, step_id=STEP, attempt=1, pickup=1,
                   error="picked up 3 times, never finished", retryable=True),
        StepFinished(run_id=RUN, ts=13.0, step_id=STEP, attempt=1, pickup=1, output="late", tokens_out=5),
    ]
    st = fold(events).steps[STEP]
    assert (st.status, st.retryable, st.output, st.tokens_out) == ("failed", True, "", 0)
    row = fold_all(records(events))[1][RUN][STEP]
    assert (row.status, row.retryable, row.tokens_out) == ("failed", True, 0)
    assert isinstance(_committed(records(events), attempt=1).ended, StepFailed)
