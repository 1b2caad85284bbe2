"""``flow_runs`` and ``flow_steps`` as pure folds over frozen rows.

``fold_step`` and ``fold_run`` give a row's next value from one event; ``tally`` keeps a run's
sums equal to the sums over its steps when a step row changes. ``fold`` is the one entry point:
the incremental projector and the rebuild both call it, record by record, so the two paths
cannot disagree. Nothing here touches a database.

The fold is total: an event for a run or step it has not seen creates the row rather than
failing, because a projection error would abort the log's batch transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

from msgspec.structs import replace

from events.log import Record
from events.types import (
    TERMINAL_RUN,
    AgentEvent,
    EvidenceChecked,
    OutputDelta,
    ReportRendered,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunPlanned,
    RunRequested,
    RunResumed,
    StepEvent,
    StepFailed,
    StepFinished,
    StepQueued,
    StepStarted,
    ToolCalled,
    ToolDenied,
    ValidatorVerdict,
    retry_owed,
)
from projections.rows import RunRow, StepRow

IN_FLIGHT = ("queued", "running")
ENDED = ("finished", "failed")
# Outcomes of a citation that pass the evidence check: the quote is at the cited lines, or
# elsewhere in the same file (as ``conductor.evidence.finding_status`` counts them).
FOUND = ("verified", "moved")

# A run's columns that are sums of the same columns over its steps.
_SUMMED = (
    "tokens_in",
    "tokens_out",
    "tool_calls",
    "tools_denied",
    "findings",
    "evidence_verified",
    "evidence_unverified",
    "confirmed",
    "partially_refuted",
    "refuted",
)

Runs = dict[str, RunRow]
Steps = dict[str, dict[str, StepRow]]  # run_id -> step_id -> row


def fold_run(row: RunRow | None, event: AgentEvent, seq: int) -> RunRow:
    """The run row after one of its events (run-level columns; step sums are ``tally``'s)."""
    run = row if row is not None else RunRow(run_id=event.run_id)
    seen = {"last_seq": seq}
    if isinstance(event, RunFinished | RunFailed | RunCancelled) and run.status in TERMINAL_RUN:
        return replace(run, **seen)  # a run ends once (as ``conductor.state.apply`` folds it)
    match event:
        case RunRequested():
            return replace(
                run,
                flow=event.flow,
                repository=event.repo,
                origin=event.origin,
                focus=event.focus,
                request_text="\n".join(t for t in (event.symptom, event.text) if t),
                band=run.band or (event.band or ""),
                engine=run.engine or event.engine,
                model=run.model or event.model,
                created_ts=event.ts,
                **seen,
            )
        case RunPlanned():
            return replace(
                run,
                band=event.band,
                band_reason=event.band_reason,
                band_source=event.band_source,
                commit=event.commit,
                model=event.model,
                engine=event.engine,
                planned_ts=event.ts,
                status="planned" if run.status == "requested" else run.status,
                **seen,
            )
        case StepQueued():
            status = run.status if run.status in TERMINAL_RUN else "running"
            return replace(run, status=status, **seen)
        case StepStarted():
            started = run.started_ts if run.started_ts is not None else event.ts
            return replace(run, started_ts=started, **seen)
        case ReportRendered():
            return replace(
                run,
                recommendation=event.recommendation,
                report_findings=event.counts.get("findings", 0),
                report_unverified=event.counts.get("unverified", 0),
                **seen,
            )
        case RunFinished():
            return replace(run, status="finished", ended_ts=event.ts, **seen)
        case RunFailed():
            return replace(run, status="failed", error=event.error, ended_ts=event.ts, **seen)
        case RunCancelled():
            return replace(run, status="cancelled", error=event.reason, ended_ts=event.ts, **seen)
        case RunResumed():
            return replace(run, resumes=run.resumes + 1, **seen)
    return replace(run, **seen)


def set_aside(event: StepEvent, step: StepRow) -> bool:
    """Whether every fold ignores this event of ``step`` (``StepEvent.superseded``)."""
    owed = retry_owed(step.status, step.retryable, step.attempt)
    return event.superseded(step.attempt, step.pickup, step.status in ENDED, owed)


def fold_step(row: StepRow | None, event: AgentEvent, seq: int) -> StepRow:
    """The step row after one event naming its ``step_id``."""
    step = row if row is not None else StepRow(run_id=event.run_id, step_id=event.step_id)
    if isinstance(event, StepEvent) and set_aside(event, step):
        return step
    match event:
        case StepQueued():
            return replace(
                step,
                persona=step.persona or event.persona,
                phase=step.phase or event.phase,
                status="queued",
                attempt=event.attempt,
                pickup=event.pickup,
                queued_ts=event.ts,
                ended_ts=None,
                error="",
                retryable=False,
                last_seq=seq,
            )
        case StepStarted():
            return replace(
                step,
                status="running",
                attempt=event.attempt,
                pickup=event.pickup,
                started_ts=step.started_ts if step.started_ts is not None else event.ts,
                ended_ts=None,
                last_seq=seq,
            )
        case ToolCalled():
            return replace(step, tool_calls=step.tool_calls + 1, last_seq=seq)
        case ToolDenied():
            return replace(step, tools_denied=step.tools_denied + 1, last_seq=seq)
        case StepFinished():
            by_severity: dict[str, int] = {}
            for finding in event.findings:
                by_severity[finding.severity] = by_severity.get(finding.severity, 0) + 1
            return replace(
                step,
                status="finished",
                attempt=event.attempt,
                pickup=event.pickup,
                ended_ts=event.ts,
                tokens_in=step.tokens_in + event.tokens_in,
                tokens_out=step.tokens_out + event.tokens_out,
                findings=len(event.findings),
                findings_by_severity=dict(sorted(by_severity.items())),
                parse_error=event.parse_error,
                error="",
                retryable=False,
                last_seq=seq,
            )
        case StepFailed():
            return replace(
                step,
                status="failed",
                attempt=event.attempt,
                pickup=event.pickup,
                ended_ts=event.ts,
                failures=step.failures + 1,
                error=event.error,
                retryable=event.retryable,
                last_seq=seq,
            )
        case EvidenceChecked():
            verified = sum(1 for r in event.results if r.outcome in FOUND)
            return replace(
                step,
                evidence_verified=verified,
                evidence_unverified=len(event.results) - verified,
                last_seq=seq,
            )
        case ValidatorVerdict():
            results = [v.result for v in event.verdicts]
            return replace(
                step,
                confirmed=results.count("confirmed"),
                partially_refuted=results.count("partially_refuted"),
                refuted=results.count("refuted"),
                last_seq=seq,
            )
    return replace(step, last_seq=seq)


def planned_step(event: RunPlanned, position: int, seq: int) -> StepRow:
    """A fresh row for a step the plan names."""
    p = event.steps[position]
    return StepRow(
        run_id=event.run_id,
        step_id=p.step_id,
        position=position,
        persona=p.persona,
        phase=p.phase,
        wave=p.wave,
        role=p.role,
        last_seq=seq,
    )


def tally(run: RunRow, before: StepRow | None, after: StepRow | None) -> RunRow:
    """The run row with one step's change (``before`` → ``after``) reflected in its sums."""
    changes: dict[str, object] = {}
    for name in _SUMMED:
        diff = (getattr(after, name) if after else 0) - (getattr(before, name) if before else 0)
        if diff:
            changes[name] = getattr(run, name) + diff
    for column, statuses in (
        ("steps_total", None),
        ("steps_finished", ("finished",)),
        ("steps_failed", ("failed",)),
        ("steps_running", IN_FLIGHT),
    ):
        diff = _counts(after, statuses) - _counts(before, statuses)
        if diff:
            changes[column] = getattr(run, column) + diff
    old = before.findings_by_severity if before else {}
    new = after.findings_by_severity if after else {}
    if old != new:
        merged = dict(run.findings_by_severity)
        for severity, n in new.items():
            merged[severity] = merged.get(severity, 0) + n
        for severity, n in old.items():
            merged[severity] = merged.get(severity, 0) - n
        changes["findings_by_severity"] = {s: n for s, n in sorted(merged.items()) if n}
    return replace(run, **changes) if changes else run


def _counts(step: StepRow | None, statuses: tuple[str, ...] | None) -> int:
    if step is None:
        return 0
    return 1 if statuses is None or step.status in statuses else 0


def fold(runs: Runs, steps: Steps, record: Record) -> tuple[str, ...] | None:
    """Fold one record into the tables held as dicts; return the step ids it changed, or None
    if it changed no row at all."""
    event, seq = record.event, record.seq
    if type(event) is OutputDelta:
        return None  # streamed text changes no row (see ``projections.rows``)
    run_steps = steps.setdefault(event.run_id, {})
    if isinstance(event, StepEvent) and event.step_id in run_steps:
        if set_aside(event, run_steps[event.step_id]):
            # Set aside for the run too (a step's start written after the cancellation ended
            # its attempt is no start of the run); only ``last_seq`` moves, which
            # ``projector.position`` counts on.
            runs[event.run_id] = replace(
                runs.get(event.run_id) or RunRow(run_id=event.run_id), last_seq=seq
            )
            return ()
    run = fold_run(runs.get(event.run_id), event, seq)
    match event:
        case RunPlanned():
            touched = []
            for position in range(len(event.steps)):
                after = planned_step(event, position, seq)
                run = tally(run, run_steps.get(after.step_id), after)
                run_steps[after.step_id] = after
                touched.append(after.step_id)
            runs[event.run_id] = run
            return tuple(touched)
        case StepEvent() | EvidenceChecked() | ValidatorVerdict():
            before = run_steps.get(event.step_id)
            after = fold_step(before, event, seq)
            run_steps[event.step_id] = after
            runs[event.run_id] = tally(run, before, after)
            return (event.step_id,)
    runs[event.run_id] = run
    return ()


def fold_all(records: Iterable[Record]) -> tuple[Runs, Steps]:
    """Both tables from scratch, as dicts of rows."""
    runs: Runs = {}
    steps: Steps = {}
    for record in records:
        fold(runs, steps, record)
    return runs, steps
