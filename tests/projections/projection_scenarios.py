"""Valid event sequences of several runs, for the projection tests (imported by them).

``run_events`` writes one run's life from a ``pick(lo, hi)`` chooser, so the same generator
serves Hypothesis (``scenario()``, which shrinks) and a seeded ``random.Random`` (the crash
test's writer process). Runs may stop anywhere (still in flight), fail, be cancelled, resume,
retry steps, stream deltas, call and be refused tools, and report findings of any severity.
``review_run`` is one fixed two-step run for tests that check exact numbers, and
``start_writer`` runs ``projection_writer.py`` as a separate process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from events.types import (
    AgentEvent,
    Evidence,
    EvidenceChecked,
    EvidenceResult,
    Finding,
    OutputDelta,
    PlannedStep,
    ReportRendered,
    ReportSent,
    RosterEntry,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunPlanned,
    RunRequested,
    RunResumed,
    StepFailed,
    StepFinished,
    StepQueued,
    StepStarted,
    ToolCalled,
    ToolDenied,
    ToolResult,
    ValidatorVerdict,
    Verdict,
)

Pick = Callable[[int, int], int]

FLOWS = ("code-review", "architectural-analysis", "investigate")
PERSONAS = ("junior-developer", "adversarial-security-analyst", "risk-analyst", "validator")
SEVERITIES = ("CRIT", "WARN", "SUGG", "Critical", "High", "Blocks decision")
OUTCOMES = ("verified", "moved", "not_found", "no_such_file")
RESULTS = ("confirmed", "partially_refuted", "refuted")


def run_events(run_id: str, pick: Pick, t0: float = 1_700_000_000.0) -> list[AgentEvent]:
    """One run's events in order (ts rising by one per event)."""
    events: list[AgentEvent] = []
    clock = [t0]

    def ts() -> float:
        clock[0] += 1.0
        return clock[0]

    events.append(
        RunRequested(
            run_id=run_id,
            ts=ts(),
            flow=FLOWS[pick(0, len(FLOWS) - 1)],
            repo=f"/repos/r{pick(0, 2)}",
            text="look at the parser" if pick(0, 1) else "",
        )
    )
    if pick(0, 9) == 0:
        events.append(RunFailed(run_id=run_id, ts=ts(), error="could not pin the snapshot"))
        return events
    n = pick(1, 4)
    steps = tuple(
        PlannedStep(
            step_id=f"s{i}",
            persona=PERSONAS[pick(0, len(PERSONAS) - 1)],
            phase="analysis" if i < n - 1 else "validation",
            wave=min(i, 2),
            role="validator" if i == n - 1 and n > 1 else "discovery",
        )
        for i in range(n)
    )
    events.append(
        RunPlanned(
            run_id=run_id,
            ts=ts(),
            band=("small", "medium", "large")[pick(0, 2)],
            band_reason="few files changed",
            band_source=("explicit", "signals", "default")[pick(0, 2)],
            roster=tuple(RosterEntry(persona=s.persona, reason="fits", phase=s.phase) for s in steps),
            steps=steps,
            commit="c0ffee",
            model="smollm2",
            engine="scripted",
        )
    )
    if pick(0, 5) == 0:
        events.append(RunResumed(run_id=run_id, ts=ts(), reason="server restarted"))
    for step in steps:
        _step_events(run_id, step, pick, ts, events)
    ending = pick(0, 5)
    if ending == 0:
        events.append(RunCancelled(run_id=run_id, ts=ts(), reason="no longer needed"))
    else:
        counts = {"findings": pick(0, 3), "unverified": pick(0, 2), "steps": n}
        events.append(
            ReportRendered(run_id=run_id, ts=ts(), recommendation="approve", counts=counts)
        )
        events.append(RunFinished(run_id=run_id, ts=ts()))
        if ending == 1:
            events.append(ReportSent(run_id=run_id, ts=ts(), request_id="q1", target="chat"))
    if pick(0, 3) == 0:
        del events[pick(1, len(events)) :]  # still in flight when the sequence ends
    return events


def _step_events(run_id: str, step: PlannedStep, pick: Pick, ts, events: list) -> None:
    sid = step.step_id
    for attempt in (1, 2, 3):
        events.append(
            StepQueued(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt,
                       persona=step.persona, phase=step.phase)
        )
        events.append(StepStarted(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt))
        offset = pickup = 0
        for call in range(pick(0, 6)):
            if pick(0, 5) == 0:  # picked up again, while the agent before still writes
                pickup += 1
                if pick(0, 3) == 0:
                    # The agent before ended the attempt just before the pickup's start was
                    # committed: whatever the pickup writes then leaves the step as it ended.
                    events.append(StepFinished(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt,
                                               pickup=pickup - 1, output="first", tokens_out=pick(1, 300)))
                    if pick(0, 1):
                        # Or the pickup's engine cannot continue: it opens the next attempt
                        # itself, which is void once the step has ended.
                        late = dict(run_id=run_id, step_id=sid, attempt=attempt + 1)
                        events.append(StepStarted(ts=ts(), **late))
                        events.append(ToolCalled(ts=ts(), call_id=f"{sid}-late-{call}", tool="read", **late))
                        events.append(StepFinished(
                            ts=ts(), output="late", tokens_in=pick(1, 900), tokens_out=pick(1, 300),
                            findings=(Finding(id=f"{sid}-L", severity="Late", title="late"),), **late))
                        return
                    events.append(StepStarted(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt,
                                              pickup=pickup, continued_from=offset))
                    events.append(
                        ToolDenied(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt, pickup=pickup,
                                   call_id=f"{sid}-{attempt}-late-{call}", tool="write", reason="not a read tool")
                    )
                    events.append(StepFailed(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt,
                                             pickup=pickup, error="late", retryable=True))
                    return
                events.append(StepStarted(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt,
                                          pickup=pickup, continued_from=offset))
                events.append(
                    ToolDenied(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt, pickup=pickup - 1,
                               call_id=f"{sid}-{attempt}-lost-{call}", tool="write", reason="not a read tool")
                )
                if pick(0, 1):
                    events.append(StepFinished(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt,
                                               pickup=pickup - 1, output="lost", tokens_out=pick(1, 300)))
            what = pick(0, 4)
            if what <= 2:
                text = "token " * pick(1, 4)
                events.append(
                    OutputDelta(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt, pickup=pickup,
                                text=text, offset=offset, tokens=pick(0, 9))
                )
                offset += len(text)
            elif what == 3:
                cid = f"{sid}-{attempt}-{call}"
                events.append(
                    ToolCalled(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt, pickup=pickup,
                               call_id=cid, tool="read", args={"path": "a.py"})
                )
                events.append(
                    ToolResult(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt, pickup=pickup,
                               call_id=cid, tool="read", content="print(1)\n")
                )
            else:
                events.append(
                    ToolDenied(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt, pickup=pickup,
                               call_id=f"{sid}-{attempt}-{call}", tool="write",
                               reason="not a read tool")
                )
        end = pick(0, 4)
        if end == 0 and attempt < 3:
            events.append(
                StepFailed(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt, pickup=pickup,
                           error="model timed out", retryable=True)
            )
            continue
        if end == 1:
            events.append(
                StepFailed(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt, pickup=pickup,
                           error="bad output", retryable=False)
            )
            return
        findings = tuple(
            Finding(
                id=f"{sid}-F{i}",
                persona=step.persona,
                severity=SEVERITIES[pick(0, len(SEVERITIES) - 1)],
                title="something to look at",
                evidence=(Evidence(path="a.py", line_start=1, line_end=1, quote="print(1)"),),
            )
            for i in range(pick(0, 3))
        )
        events.append(
            StepFinished(run_id=run_id, ts=ts(), step_id=sid, attempt=attempt, pickup=pickup, output="done",
                         findings=findings, tokens_in=pick(0, 900), tokens_out=pick(0, 300))
        )
        events.append(
            EvidenceChecked(
                run_id=run_id,
                ts=ts(),
                step_id=sid,
                results=tuple(
                    EvidenceResult(finding_id=f.id, index=0,
                                   outcome=OUTCOMES[pick(0, len(OUTCOMES) - 1)],
                                   path="a.py", line_start=1, line_end=1)
                    for f in findings
                ),
            )
        )
        if step.role == "validator":
            events.append(
                ValidatorVerdict(
                    run_id=run_id,
                    ts=ts(),
                    step_id=sid,
                    verdicts=tuple(
                        Verdict(finding_id=f"F{i}", result=RESULTS[pick(0, 2)])
                        for i in range(pick(0, 4))
                    ),
                )
            )
        return


def interleave(runs: Sequence[list[AgentEvent]], pick: Pick) -> list[AgentEvent]:
    """The runs' events merged into one log order, each run's own order kept."""
    queues = [list(reversed(r)) for r in runs if r]
    out: list[AgentEvent] = []
    while queues:
        i = pick(0, len(queues) - 1)
        out.append(queues[i].pop())
        if not queues[i]:
            del queues[i]
    return out


def batches(events: list[AgentEvent], cuts: Sequence[int]) -> list[list[AgentEvent]]:
    """``events`` split before each index in ``cuts`` (empty pieces dropped)."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(events)), len(events)]
    return [events[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def tables(con: Any) -> dict[str, list[tuple]]:
    """Both projection tables, every column, in a fixed order; and their column types."""
    return {
        "flow_runs": con.execute("SELECT * FROM flow_runs ORDER BY run_id").fetchall(),
        "flow_steps": con.execute("SELECT * FROM flow_steps ORDER BY run_id, step_id").fetchall(),
        "types": con.execute(
            "SELECT table_name, column_name, data_type, ordinal_position FROM "
            "information_schema.columns WHERE table_name IN ('flow_runs', 'flow_steps') "
            "ORDER BY table_name, ordinal_position"
        ).fetchall(),
    }


def equals_rebuild(path: str | os.PathLike[str]) -> None:
    """Assert that the projection tables in the DuckDB file at ``path`` equal a rebuild of them
    from its log."""
    import duckdb

    from projections import rebuild

    con = duckdb.connect(str(path))
    try:
        live = tables(con)
        rebuild(con)
        assert tables(con) == live
    finally:
        con.close()


def sums_disagree(con: Any) -> list[tuple]:
    """Runs whose sums differ from the sums over their steps (should be none)."""
    return con.execute(
        """
        WITH s AS (
          SELECT run_id, count(*) AS n,
            count(*) FILTER (status = 'finished') AS fin,
            count(*) FILTER (status = 'failed') AS fail,
            count(*) FILTER (status IN ('queued', 'running')) AS active,
            sum(tokens_in) AS ti, sum(tokens_out) AS tout,
            sum(tool_calls) AS tc, sum(tools_denied) AS td, sum(findings) AS f,
            sum(evidence_verified) AS ev, sum(evidence_unverified) AS eu,
            sum(confirmed) AS c, sum(partially_refuted) AS p, sum(refuted) AS r
          FROM flow_steps GROUP BY run_id
        )
        SELECT r.run_id FROM flow_runs r LEFT JOIN s USING (run_id)
        WHERE (r.steps_total, r.steps_finished, r.steps_failed, r.steps_running, r.tokens_in,
               r.tokens_out, r.tool_calls, r.tools_denied, r.findings,
               r.evidence_verified, r.evidence_unverified, r.confirmed, r.partially_refuted,
               r.refuted)
          IS DISTINCT FROM
              (coalesce(s.n, 0), coalesce(s.fin, 0), coalesce(s.fail, 0), coalesce(s.active, 0),
               coalesce(s.ti, 0), coalesce(s.tout, 0), coalesce(s.tc, 0),
               coalesce(s.td, 0), coalesce(s.f, 0), coalesce(s.ev, 0), coalesce(s.eu, 0),
               coalesce(s.c, 0), coalesce(s.p, 0), coalesce(s.r, 0))
        """
    ).fetchall()


# --- a fixed two-step run, and the writer process -------------------------------------------


def planned(run_id: str, ts: float, band: str, *steps: tuple[str, str, int]) -> RunPlanned:
    plan = tuple(PlannedStep(step_id=s, persona=p, phase="analysis", wave=w) for s, p, w in steps)
    return RunPlanned(
        run_id=run_id, ts=ts, band=band, band_reason="why", band_source="default",
        roster=tuple(RosterEntry(persona=p.persona, reason="r", phase=p.phase) for p in plan),
        steps=plan, commit="c1", model="smollm2", engine="scripted",
    )


def review_run(run_id: str, t: float, *, flow="code-review", repo="/src/app", band="small",
               tokens=(100, 20), severities=("CRIT", "WARN"), fail_second=True) -> list:
    """A two-step run: one step finishes with findings, the other fails (or finishes)."""
    events = [
        RunRequested(run_id=run_id, ts=t, flow=flow, repo=repo, text=f"review {run_id}"),
        planned(run_id, t + 1, band, ("a", "junior-developer", 0), ("b", "risk-analyst", 1)),
        StepQueued(run_id=run_id, ts=t + 2, step_id="a", persona="junior-developer",
                   phase="analysis"),
        StepStarted(run_id=run_id, ts=t + 2, step_id="a"),
        *[OutputDelta(run_id=run_id, ts=t + 3, step_id="a", text="word ", offset=5 * i, tokens=1)
          for i in range(30)],
        StepFinished(run_id=run_id, ts=t + 6, step_id="a", output="...", tokens_in=tokens[0],
                     tokens_out=tokens[1],
                     findings=tuple(Finding(id=f"F{i}", severity=s, title="t")
                                    for i, s in enumerate(severities))),
        StepQueued(run_id=run_id, ts=t + 7, step_id="b", persona="risk-analyst", phase="analysis"),
        StepStarted(run_id=run_id, ts=t + 8, step_id="b"),
    ]
    if fail_second:
        events.append(StepFailed(run_id=run_id, ts=t + 10, step_id="b", error="timed out"))
    else:
        events.append(StepFinished(run_id=run_id, ts=t + 10, step_id="b", output="ok"))
    events += [
        ReportRendered(run_id=run_id, ts=t + 11, recommendation="do not merge",
                       counts={"findings": len(severities), "unverified": 0}),
        RunFinished(run_id=run_id, ts=t + 12),
    ]
    return events


WRITER = Path(__file__).with_name("projection_writer.py")


def start_writer(path: Path, seed: int, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(path), str(seed), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
