"""Property: whatever valid events arrive, in whatever batches, the live tables equal a rebuild.

Each example writes a random interleaving of several runs (retries, failures, deltas, tool
calls, findings, runs left in flight) through the real ``DuckDBLog`` with the ``Projector`` in
its transaction, one random-sized append per transaction, into a fresh DuckDB file. Then:
the tables equal what ``rebuild`` folds from the log, row for row and type for type; every run's
sums equal the sums over its steps; statuses and counts agree with the conductor's own fold of
the same events; and folding the log a second time changes nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conductor.state import fold as conductor_fold
from events.duckdb_log import DuckDBLog
from events.log import Record
from events.types import MAX_ATTEMPTS, StepEvent, StepFailed, StepFinished, StepQueued, StepStarted
from projection_scenarios import batches, interleave, run_events, sums_disagree, tables
from projections import Projector, rebuild
from projections.projector import read_log


@st.composite
def scenarios(draw):
    pick = lambda lo, hi: draw(st.integers(lo, hi))  # noqa: E731
    runs = [run_events(f"run-{i}", pick) for i in range(draw(st.integers(1, 4)))]
    events = interleave(runs, pick)
    cuts = draw(st.lists(st.integers(1, max(len(events) - 1, 1)), max_size=12))
    return events, cuts


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_live_tables_equal_rebuild_for_any_batching(scenario):
    events, cuts = scenario
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.duckdb"
        with DuckDBLog(path, projector=Projector()) as log:
            for n, chunk in enumerate(batches(events, cuts)):
                log.append(chunk, [f"b{n}-{i}" for i in range(len(chunk))])
            with log.reader() as cur:
                live = tables(cur)
                assert sums_disagree(cur) == []
        con = duckdb.connect(str(path))
        try:
            records = list(read_log(con))
            assert [r.event for r in records] == events

            # Folding the same records again through a fresh projector is a no-op.
            con.execute("BEGIN TRANSACTION")
            Projector().apply(con, records)
            con.execute("COMMIT")
            assert tables(con) == live

            result = rebuild(con)
            assert result.events == len(events)
            assert tables(con) == live
            _agrees_with_conductor(con, records)
        finally:
            con.close()


def _agrees_with_conductor(con, records: list[Record]) -> None:
    by_run: dict[str, list] = {}
    last_change: dict[str, int] = {}  # the seq of each run's last event that is not a delta
    for r in records:
        by_run.setdefault(r.event.run_id, []).append(r.event)
        if type(r.event).__name__ != "OutputDelta":
            last_change[r.event.run_id] = r.seq
    runs = {row[0]: row for row in con.execute(
        "SELECT run_id, status, findings, findings_by_severity, last_seq FROM flow_runs"
    ).fetchall()}
    assert set(runs) == set(last_change)  # streamed text alone makes no row
    for run_id, events in by_run.items():
        if run_id not in runs:
            continue
        state = conductor_fold(events)
        _, status, findings, by_severity, last_seq = runs[run_id]
        assert status == state.status
        assert last_seq == last_change[run_id]
        expected_severities: dict[str, int] = {}
        for st_ in state.steps.values():
            for f in st_.findings:
                expected_severities[f.severity] = expected_severities.get(f.severity, 0) + 1
        assert by_severity == expected_severities
        assert findings == sum(expected_severities.values())
        steps = {row[0]: row for row in con.execute(
            "SELECT step_id, status, attempt, tokens_in, tokens_out, findings, "
            "queued_ts, started_ts, error, retryable, tool_calls, tools_denied "
            "FROM flow_steps WHERE run_id = ?",
            [run_id],
        ).fetchall()}
        assert set(steps) == set(state.steps)
        for step_id, s in state.steps.items():
            row = steps[step_id]
            assert row[1:10] == (
                s.status, s.attempt, s.tokens_in, s.tokens_out,
                len(s.findings), s.queued_ts, s.started_ts, s.error, s.retryable,
            ), step_id
            # The conductor keeps only the current attempt's tools; the projection counts all
            # but those of an agent the step had moved past.
            calls = _current_writers([e for e in events if getattr(e, "step_id", None) == step_id])
            assert row[10] == sum(1 for e in calls if type(e).__name__ == "ToolCalled")
            assert row[11] == sum(1 for e in calls if type(e).__name__ == "ToolDenied")


def _current_writers(events: list) -> list:
    """A step's events less those written by an agent it had moved past (a later attempt or
    pickup had started) or after its attempt had ended: ``StepEvent.superseded``, restated;
    and those of an attempt an agent opened after the step ended (only a queueing opens one),
    unless the end was a retryable failure with attempts left."""
    kept, at, ended, owed = [], (0, 0), False, False
    for e in events:
        if isinstance(e, StepEvent):
            if (e.attempt, e.pickup) < at or (ended and e.attempt == at[0]):
                continue
            if ended and not owed and e.attempt > at[0] and not isinstance(e, StepQueued):
                continue
            if isinstance(e, StepQueued | StepStarted | StepFinished | StepFailed):
                at, ended = (e.attempt, e.pickup), isinstance(e, StepFinished | StepFailed)
                owed = isinstance(e, StepFailed) and e.retryable and e.attempt < MAX_ATTEMPTS
        kept.append(e)
    return kept
