"""The projections against the run's own fold, from a hostile review.

- A step event every fold sets aside moves nothing of its run: the step's start an agent writes
  after the cancellation ended its attempt is no start of the run (``started_ts`` was set,
  later than ``ended_ts``, for a run in which no step started).
- A quote the evidence check found elsewhere in the same file (``moved``) passes the check, as
  ``conductor.evidence.finding_status`` counts it: it is verified evidence, not unverified.
- An attempt an agent opens itself after the step ended (a pickup whose engine cannot continue,
  just after the agent thought lost ended the step) is void, as in ``conductor.state.apply``:
  the step of a finished run does not show as running, and its findings and tokens stay those
  of the attempt the report was built from. After a retryable failure with attempts left,
  that attempt is the retry the step is owed, for both folds.
- A run ends once: a second end (a hung supervisor's, after a cancel) changes nothing.

Each goes through the real log with the projector in its transaction, into a DuckDB file, and
the tables must equal a rebuild.
"""

from __future__ import annotations

import pytest

from conductor.evidence import finding_status
from conductor.state import fold as conductor_fold
from events.duckdb_log import DuckDBLog
from events.types import (
    Evidence,
    EvidenceChecked,
    EvidenceResult,
    Finding,
    OutputDelta,
    ReportRendered,
    RunCancelled,
    RunFinished,
    RunRequested,
    RunResumed,
    StepFailed,
    StepFinished,
    StepQueued,
    StepStarted,
)
from projection_scenarios import equals_rebuild, planned
from projections import Projector, analytics

R = "run-1"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "events.duckdb"


def start(ts: float) -> list:
    """A run planned with one step, and that step queued."""
    return [
        RunRequested(run_id=R, ts=ts, flow="code-review", repo="/src/app"),
        planned(R, ts + 1, "small", ("a", "junior-developer", 0)),
        StepQueued(run_id=R, ts=ts + 2, step_id="a", persona="junior-developer", phase="analysis"),
    ]


def append(log: DuckDBLog, events: list, prefix: str) -> None:
    log.append(events, [f"{prefix}-{i}" for i in range(len(events))])


def row(cur, sql: str) -> tuple:
    return cur.execute(sql).fetchone()


def test_a_start_written_after_the_cancellation_is_no_start_of_the_run(path):
    events = [
        *start(100.0),
        # Cancelled while the step was still queued: its attempt ends, then the run.
        StepFailed(run_id=R, ts=110.0, step_id="a", error="cancelled"),
        RunCancelled(run_id=R, ts=110.0, reason="not needed"),
        StepStarted(run_id=R, ts=111.0, step_id="a"),  # the agent, before it was stopped
    ]
    with DuckDBLog(path, projector=Projector()) as log:
        append(log, events, "k")
        with log.reader() as cur:
            assert row(cur, "SELECT status, started_ts FROM flow_steps") == ("failed", None)
            assert row(cur, "SELECT status, started_ts, ended_ts, last_seq FROM flow_runs") == (
                "cancelled", None, 110.0, len(events))
    assert conductor_fold(events).steps["a"].started_ts is None
    equals_rebuild(path)


def test_a_moved_quote_is_verified_evidence(path):
    found = Finding(id="J-001", severity="High", title="t", evidence=(
        Evidence(path="a.py", line_start=10, line_end=12, quote="x = parse(y)"),))
    missing = Finding(id="J-002", severity="Low", title="t", evidence=(
        Evidence(path="b.py", line_start=1, line_end=1, quote="import os, sys"),))
    results = (
        EvidenceResult(finding_id="J-001", index=0, outcome="moved", path="a.py",
                       line_start=14, line_end=16, note="found 4 lines below"),
        EvidenceResult(finding_id="J-002", index=0, outcome="no_such_file", path="b.py",
                       line_start=1, line_end=1),
    )
    assert [finding_status(f, results) for f in (found, missing)] == ["verified", "unverified"]
    events = [
        *start(100.0),
        StepStarted(run_id=R, ts=103.0, step_id="a"),
        StepFinished(run_id=R, ts=104.0, step_id="a", output="...", findings=(found, missing)),
        EvidenceChecked(run_id=R, ts=105.0, step_id="a", results=results),
    ]
    with DuckDBLog(path, projector=Projector()) as log:
        append(log, events, "k")
        with log.reader() as cur:
            verified = "SELECT evidence_verified, evidence_unverified FROM "
            assert row(cur, verified + "flow_steps") == (1, 1)
            assert row(cur, verified + "flow_runs") == (1, 1)
            (validator,) = analytics(cur, ["analytics_validator"])["analytics_validator"]
            assert validator["verified_rate"] == 0.5
    equals_rebuild(path)


def test_an_attempt_an_agent_opens_after_the_step_ended_changes_no_row(path):
    lost = (Finding(id="J-001", severity="High", title="from the agent thought lost"),)
    late = tuple(Finding(id=f"J-00{i}", severity="Low", title="late") for i in (1, 2))
    first = [
        *start(100.0),
        StepStarted(run_id=R, ts=103.0, step_id="a"),
        OutputDelta(run_id=R, ts=104.0, step_id="a", text="partial", offset=0),
        RunResumed(run_id=R, ts=110.0, reason="server restarted", in_flight=("a",)),
        # The agent thought lost ends attempt 1 just before the pickup's start is committed.
        StepFinished(run_id=R, ts=111.0, step_id="a", output="...", findings=lost,
                     tokens_in=50, tokens_out=10),
        # The pickup's engine cannot continue "partial": it opens attempt 2 itself.
        StepStarted(run_id=R, ts=112.0, step_id="a", attempt=2),
        ReportRendered(run_id=R, ts=113.0, recommendation="fix first", counts={"findings": 1}),
        RunFinished(run_id=R, ts=114.0),
    ]
    then = [
        OutputDelta(run_id=R, ts=115.0, step_id="a", attempt=2, text="other", offset=0),
        StepFinished(run_id=R, ts=120.0, step_id="a", attempt=2, output="...", findings=late,
                     tokens_in=70, tokens_out=30),
    ]
    step_sql = "SELECT status, attempt, ended_ts, tokens_in, findings_by_severity FROM flow_steps"
    run_sql = ("SELECT status, steps_running, steps_finished, tokens_in, tokens_out, "
               "findings_by_severity FROM flow_runs")
    with DuckDBLog(path, projector=Projector()) as log:
        for n, events in enumerate((first, then)):
            append(log, events, str(n))
            with log.reader() as cur:
                assert row(cur, step_sql) == ("finished", 1, 111.0, 50, {"High": 1})
                assert row(cur, run_sql) == ("finished", 0, 1, 50, 10, {"High": 1})
    st = conductor_fold(first + then).steps["a"]
    assert (st.status, st.attempt, st.tokens_in, [f.id for f in st.findings]) == (
        "finished", 1, 50, ["J-001"])
    equals_rebuild(path)


def test_the_supervisor_still_reopens_an_ended_step_by_queueing_it(path):
    events = [
        *start(100.0),
        StepStarted(run_id=R, ts=103.0, step_id="a"),
        StepFailed(run_id=R, ts=104.0, step_id="a", error="timed out", retryable=True),
        StepQueued(run_id=R, ts=105.0, step_id="a", attempt=2, persona="junior-developer",
                   phase="analysis"),
        StepStarted(run_id=R, ts=106.0, step_id="a", attempt=2),
        StepFinished(run_id=R, ts=107.0, step_id="a", attempt=2, output="ok", tokens_in=9),
    ]
    with DuckDBLog(path, projector=Projector()) as log:
        append(log, events, "k")
        with log.reader() as cur:
            assert row(cur, "SELECT status, attempt, failures, started_ts, ended_ts, tokens_in "
                            "FROM flow_steps") == ("finished", 2, 1, 103.0, 107.0, 9)
            assert row(cur, "SELECT started_ts, steps_finished FROM flow_runs") == (103.0, 1)
    equals_rebuild(path)


def test_after_a_retryable_failure_the_attempt_an_agent_opens_is_the_owed_retry(path):
    events = [
        *start(100.0),
        StepStarted(run_id=R, ts=103.0, step_id="a"),
        OutputDelta(run_id=R, ts=104.0, step_id="a", text="partial", offset=0),
        RunResumed(run_id=R, ts=110.0, reason="server restarted", in_flight=("a",)),
        # The agent thought lost fails attempt 1 in a way worth retrying; the pickup, whose
        # engine cannot continue "partial", has opened attempt 2 itself: that is the retry.
        StepFailed(run_id=R, ts=111.0, step_id="a", error="model timed out", retryable=True),
        StepStarted(run_id=R, ts=112.0, step_id="a", attempt=2),
        StepFinished(run_id=R, ts=120.0, step_id="a", attempt=2, output="...", tokens_in=70),
    ]
    with DuckDBLog(path, projector=Projector()) as log:
        append(log, events, "k")
        with log.reader() as cur:
            assert row(cur, "SELECT status, attempt, tokens_in FROM flow_steps") == ("finished", 2, 70)
    st = conductor_fold(events).steps["a"]
    assert (st.status, st.attempt, st.tokens_in) == ("finished", 2, 70)
    equals_rebuild(path)


@pytest.mark.parametrize(
    "ends, status",
    [
        # Cancelled from the command line while its supervisor hung; the supervisor, once it
        # wakes, writes the end it had decided on.
        ([RunCancelled(run_id=R, ts=110.0, reason="stop"), RunFinished(run_id=R, ts=111.0)], "cancelled"),
        # Finished just before a second canceller's cancel was written.
        ([RunFinished(run_id=R, ts=110.0), RunCancelled(run_id=R, ts=111.0, reason="late")], "finished"),
    ],
)
def test_a_run_ends_once_the_first_end_counts(path, ends, status):
    events = [*start(100.0), StepFailed(run_id=R, ts=109.0, step_id="a", error="cancelled"), *ends]
    with DuckDBLog(path, projector=Projector()) as log:
        append(log, events, "k")
        with log.reader() as cur:
            assert row(cur, "SELECT status, ended_ts FROM flow_runs") == (status, 110.0)
    state = conductor_fold(events)
    assert (state.status, state.ended_ts) == (status, 110.0)
    equals_rebuild(path)
