"""The fold on its own: what a run's and a step's rows say after the events a user would see."""

from __future__ import annotations

import msgspec

from events.log import Record
from events.types import (
    EvidenceChecked,
    EvidenceResult,
    Finding,
    OutputDelta,
    PlannedStep,
    ReportRendered,
    RosterEntry,
    RunCancelled,
    RunPlanned,
    RunRequested,
    StepFailed,
    StepFinished,
    StepQueued,
    StepStarted,
    ToolCalled,
    ToolDenied,
    ValidatorVerdict,
    Verdict,
)
from projections.fold import fold, fold_all
from projections.rows import RunRow, StepRow

R = "run-1"


def plan(*steps: tuple[str, str, int, str]) -> RunPlanned:
    planned = tuple(
        PlannedStep(step_id=s, persona=p, phase="analysis", wave=w, role=role)
        for s, p, w, role in steps
    )
    return RunPlanned(
        run_id=R, ts=2.0, band="medium", band_reason="eight files changed",
        band_source="signals", roster=tuple(
            RosterEntry(persona=p.persona, reason="fits", phase=p.phase) for p in planned
        ), steps=planned, commit="abc123", model="smollm2", engine="embedded",
    )


def finding(i: int, severity: str) -> Finding:
    return Finding(id=f"F{i}", severity=severity, title="a claim")


def records(*events) -> list[Record]:
    return [Record(i + 1, e) for i, e in enumerate(events)]


def test_a_run_from_request_to_plan():
    runs, steps = fold_all(records(
        RunRequested(run_id=R, ts=1.0, flow="code-review", repo="/src/app", text="check the parser",
                     symptom="crashes on empty input"),
        plan(("a", "junior-developer", 0, "discovery"), ("v", "validator", 1, "validator")),
    ))
    run = runs[R]
    assert (run.flow, run.repository, run.status) == ("code-review", "/src/app", "planned")
    assert (run.band, run.band_reason, run.band_source) == ("medium", "eight files changed", "signals")
    assert (run.commit, run.model, run.engine) == ("abc123", "smollm2", "embedded")
    assert (run.created_ts, run.planned_ts, run.started_ts) == (1.0, 2.0, None)
    assert "crashes on empty input" in run.request_text and "check the parser" in run.request_text
    assert (run.steps_total, run.steps_running, run.last_seq) == (2, 0, 2)
    rows = steps[R]
    assert [(s.step_id, s.position, s.persona, s.wave, s.role, s.status) for s in rows.values()] == [
        ("a", 0, "junior-developer", 0, "discovery", "planned"),
        ("v", 1, "validator", 1, "validator", "planned"),
    ]


def test_a_retried_step_keeps_its_first_start_and_counts_the_failure():
    runs, steps = fold_all(records(
        RunRequested(run_id=R, ts=1.0, flow="code-review", repo="/src/app"),
        plan(("a", "junior-developer", 0, "discovery")),
        StepQueued(run_id=R, ts=3.0, step_id="a", persona="junior-developer", phase="analysis"),
        StepStarted(run_id=R, ts=4.0, step_id="a"),
        OutputDelta(run_id=R, ts=4.5, step_id="a", text="Look", offset=0, tokens=2),
        StepFailed(run_id=R, ts=5.0, step_id="a", error="model timed out", retryable=True),
        StepQueued(run_id=R, ts=6.0, step_id="a", attempt=2, persona="junior-developer",
                   phase="analysis"),
    ))
    step = steps[R]["a"]
    # Queued again: in flight, the failure kept as a count, no longer "ended".
    assert (step.status, step.attempt, step.failures, step.error, step.ended_ts) == (
        "queued", 2, 1, "", None)
    assert runs[R].steps_running == 1 and runs[R].steps_failed == 0

    more = records(
        StepStarted(run_id=R, ts=7.0, step_id="a", attempt=2),
        OutputDelta(run_id=R, ts=7.5, step_id="a", attempt=2, text="Found", offset=0, tokens=3),
        StepFinished(run_id=R, ts=8.0, step_id="a", attempt=2, output="Found it",
                     findings=(finding(1, "WARN"), finding(2, "CRIT"), finding(3, "WARN")),
                     tokens_in=120, tokens_out=40),
    )
    for r in more:
        fold(runs, steps, Record(r.seq + 7, r.event))
    step, run = steps[R]["a"], runs[R]
    assert (step.status, step.attempt, step.started_ts, step.queued_ts, step.ended_ts) == (
        "finished", 2, 4.0, 6.0, 8.0)
    assert (step.tokens_in, step.tokens_out, step.last_seq) == (120, 40, 10)
    assert step.findings_by_severity == {"CRIT": 1, "WARN": 2}
    assert (run.steps_finished, run.steps_failed, run.steps_running) == (1, 0, 0)
    assert (run.findings, run.findings_by_severity) == (3, {"CRIT": 1, "WARN": 2})
    assert (run.started_ts, run.last_seq) == (4.0, 10)


def test_a_step_that_finishes_again_replaces_its_findings_in_the_run():
    runs, steps = fold_all(records(
        plan(("a", "junior-developer", 0, "discovery"), ("b", "risk-analyst", 0, "discovery")),
        StepFinished(run_id=R, ts=3.0, step_id="a", output="x",
                     findings=(finding(1, "High"), finding(2, "High"))),
        StepFinished(run_id=R, ts=3.0, step_id="b", output="y", findings=(finding(3, "Low"),)),
        # Queued again by the supervisor (an agent's own late attempt is set aside, see
        # test_projection_hostile), the step ran again and reported differently.
        StepQueued(run_id=R, ts=4.0, step_id="a", attempt=2, persona="junior-developer",
                   phase="analysis"),
        StepFinished(run_id=R, ts=5.0, step_id="a", attempt=2, output="x",
                     findings=(finding(1, "Critical"),)),
    ))
    assert runs[R].findings_by_severity == {"Critical": 1, "Low": 1}
    assert runs[R].findings == 2
    assert runs[R].steps_finished == 2


def test_the_run_counts_what_its_report_kept_apart_from_what_was_raised():
    runs, _ = fold_all(records(
        plan(("a", "junior-developer", 0, "discovery"),),
        StepFinished(run_id=R, ts=3.0, step_id="a", output="x",
                     findings=(finding(1, "High"), finding(2, "High"), finding(3, "Low"))),
        ReportRendered(run_id=R, ts=4.0, recommendation="approve",
                       counts={"findings": 1, "unverified": 2, "steps": 1}),
    ))
    run = runs[R]
    assert run.findings == 3  # raised by the agents
    assert (run.report_findings, run.report_unverified) == (1, 2)  # as the report shows them
    assert run.recommendation == "approve"


def test_evidence_and_verdicts_are_counted_per_step_and_summed_per_run():
    runs, steps = fold_all(records(
        plan(("a", "junior-developer", 0, "discovery"), ("v", "validator", 1, "validator")),
        EvidenceChecked(run_id=R, ts=3.0, step_id="a", results=tuple(
            EvidenceResult(finding_id="F1", index=i, outcome=o, path="a.py", line_start=1,
                           line_end=2)
            for i, o in enumerate(("verified", "moved", "verified", "no_such_file"))
        )),
        ValidatorVerdict(run_id=R, ts=4.0, step_id="v", verdicts=(
            Verdict(finding_id="F1", result="confirmed"),
            Verdict(finding_id="F2", result="refuted", action="drop"),
        )),
        # The gate recorded its verdicts again (a resumed validator): the latest one counts.
        ValidatorVerdict(run_id=R, ts=5.0, step_id="v", verdicts=(
            Verdict(finding_id="F1", result="confirmed"),
            Verdict(finding_id="F2", result="partially_refuted"),
            Verdict(finding_id="F3", result="refuted"),
        )),
    ))
    a, v, run = steps[R]["a"], steps[R]["v"], runs[R]
    # A moved quote passes the check (conductor.evidence.finding_status); a missing file does not.
    assert (a.evidence_verified, a.evidence_unverified) == (3, 1)
    assert (v.confirmed, v.partially_refuted, v.refuted) == (1, 1, 1)
    assert (run.evidence_verified, run.evidence_unverified) == (3, 1)
    assert (run.confirmed, run.partially_refuted, run.refuted) == (1, 1, 1)


def test_tools_called_and_refused_are_counted():
    runs, steps = fold_all(records(
        plan(("a", "junior-developer", 0, "discovery")),
        ToolCalled(run_id=R, ts=3.0, step_id="a", call_id="c1", tool="read"),
        ToolCalled(run_id=R, ts=3.0, step_id="a", call_id="c2", tool="grep"),
        ToolDenied(run_id=R, ts=3.0, step_id="a", call_id="c3", tool="write",
                   reason="not a read tool"),
    ))
    assert (steps[R]["a"].tool_calls, steps[R]["a"].tools_denied) == (2, 1)
    assert (runs[R].tool_calls, runs[R].tools_denied) == (2, 1)


def test_a_cancelled_run_stays_cancelled_when_late_events_arrive():
    runs, _ = fold_all(records(
        plan(("a", "junior-developer", 0, "discovery")),
        RunCancelled(run_id=R, ts=3.0, reason="not needed any more"),
        StepQueued(run_id=R, ts=4.0, step_id="a", persona="junior-developer", phase="analysis"),
    ))
    assert (runs[R].status, runs[R].error, runs[R].ended_ts) == (
        "cancelled", "not needed any more", 3.0)


def test_events_of_an_unplanned_step_or_unknown_run_make_rows_instead_of_failing():
    # A projection error would abort the log's batch, so the fold never raises on a gap.
    runs, steps = fold_all(records(
        StepStarted(run_id="ghost", ts=1.0, step_id="x"),
        StepQueued(run_id="ghost", ts=2.0, step_id="y", persona="risk-analyst", phase="risk"),
    ))
    assert runs["ghost"].steps_total == 2
    assert (steps["ghost"]["x"].position, steps["ghost"]["x"].status) == (-1, "running")
    assert (steps["ghost"]["y"].persona, steps["ghost"]["y"].status) == ("risk-analyst", "queued")


def test_streamed_text_changes_no_row():
    # Output deltas are most of the log: they move no row, so a commit of streamed text
    # writes nothing beside the log's own table.
    runs, steps = fold_all(records(
        plan(("a", "junior-developer", 0, "discovery")),
        StepStarted(run_id=R, ts=3.0, step_id="a"),
    ))
    before = (dict(runs), {r: dict(s) for r, s in steps.items()})
    for seq, delta in enumerate(
        (
            OutputDelta(run_id=R, ts=4.0, step_id="a", text="abc", offset=0, tokens=7),
            OutputDelta(run_id="ghost", ts=4.0, step_id="x", text="hi", offset=0, tokens=1),
        ),
        start=3,
    ):
        assert fold(runs, steps, Record(seq, delta)) is None
    assert (runs, steps) == before


def test_rows_are_frozen_values():
    row = RunRow(run_id=R)
    assert msgspec.structs.replace(row, status="running") != row
    try:
        row.status = "running"  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("RunRow must be immutable")
    assert StepRow(run_id=R, step_id="a") == StepRow(run_id=R, step_id="a")
