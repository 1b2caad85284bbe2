"""One fixed synthetic code-review run, driven through the real conductor.

The run is played by ``conductor.advance``: each ``Dispatch`` is answered from ``SCRIPT`` (the
model's final text, or a failure), each ``CheckEvidence`` by ``conductor.evidence.check``
against ``SNAPSHOT``, each ``ApplyVerdicts`` by ``conductor.validator.gate``, ``Render`` by the
report. Times come from a counter, so the events, and therefore the report, are the same on
every run. The golden report files in this directory are its renderings.

What the script exercises:

- a security finding and a junior-developer finding on the same lines saying the same thing
  (merged, both ids kept), confirmed by the validator;
- a finding whose quote moved (reported with the real lines);
- a finding citing a file that does not exist and one with no evidence (unverified, labelled);
- a YAGNI item (deferred with its reopen trigger);
- a finding calling itself "theoretical" (demoted by the reachability gate);
- the validator: one partially refuted (demoted), one refuted with counter-evidence that
  verifies (dropped), one refuted with invented counter-evidence (demoted, not dropped), and
  verdicts on ids it was never given (an unverified finding, an unknown id: ignored);
- a test-engineer step that fails twice (a retryable error, then a fatal one).
"""

from __future__ import annotations

import contextlib
import itertools
import json

import msgspec
import pytest

from conductor.advance import ApplyVerdicts, CheckEvidence, Dispatch, Finish, Render, advance
from conductor.evidence import check
from conductor.findings import parse_output
from conductor.report import build_report, render_markdown, report_digest, summary_counts
from conductor.snapshot import MemorySnapshot
from conductor.state import RunState, apply
from conductor.validator import gate
from events.types import (
    AgentEvent,
    OutputDelta,
    PlannedStep,
    ReportRendered,
    RosterEntry,
    RunFinished,
    RunPlanned,
    RunRequested,
    Signal,
    StepFailed,
    StepFinished,
    StepQueued,
    StepStarted,
)

class FrozenFlow(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of ``conductor.flows.Flow`` the report reads, frozen for the golden files, so
    a wording change in the flow catalog does not move the report's bytes here."""

    name: str
    description: str
    audience: str
    sections: tuple[str, ...]
    section_personas: dict[str, tuple[str, ...]] = {}


CODE_REVIEW = FrozenFlow(
    name="code-review",
    description="Reviews a change through several lenses, with severities calibrated to its size.",
    audience="the author of the change and the people reviewing it",
    sections=("Review summary", "Recommendation", "Critical", "Warnings", "Suggestions",
              "Deferred (YAGNI)", "Security vulnerabilities", "Unverified claims", "Validator outcome",
              "What's good", "Agent appendix"),
    section_personas={"Security vulnerabilities": ("adversarial-security-analyst",)},
)


@contextlib.contextmanager
def frozen_flows():
    """Make the report see ``CODE_REVIEW`` instead of the live flow catalog."""
    import conductor.report

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conductor.report, "_flow", lambda name: CODE_REVIEW if name == "code-review" else None)
        yield


RUN_ID = "run-golden"
COMMIT = "3f1c2a9d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39"

HANDLERS = """\
from app.db import query


def get_user(request):
    user_id = request.args["id"]
    sql = "SELECT * FROM users WHERE id = " + user_id
    return query(sql)


def list_users(request):
    limit = int(request.args.get("limit", "100"))
    return query("SELECT * FROM users LIMIT ?", (limit,))


def delete_user(request):
    if not request.user.is_admin:
        raise PermissionError("admins only")
    return query("DELETE FROM users WHERE id = ?", (request.args["id"],))
"""

DB = """\
import sqlite3

_conn = sqlite3.connect("app.db")


def query(sql, params=()):
    cur = _conn.execute(sql, params)
    rows = cur.fetchall()
    return rows
"""

SNAPSHOT = MemorySnapshot(
    {"app/handlers.py": HANDLERS, "app/db.py": DB, "README.md": "# demo <app>\n"},
    commit=COMMIT,
    changed=("app/handlers.py", "app/db.py"),
)
FILES = ("app/db.py", "app/handlers.py")

REQUEST = RunRequested(
    run_id=RUN_ID, ts=1_767_225_600.0, flow="code-review", repo="/srv/repos/demo", base="main",
    focus="the user handlers",
)
PLAN = RunPlanned(
    run_id=RUN_ID,
    ts=1_767_225_601.0,
    band="medium",
    band_reason="Medium: 2 files in 1 subsystem, and the change builds SQL from request input",
    band_source="signals",
    roster=(
        RosterEntry(persona="junior-developer", reason="seated in every code review", phase="review"),
        RosterEntry(persona="adversarial-security-analyst", reason="seated in every code review",
                    phase="review"),
        RosterEntry(persona="test-engineer", reason="chosen because the files change logic or behaviour",
                    phase="review"),
        RosterEntry(persona="adversarial-validator", reason="challenges every surviving finding",
                    phase="validation"),
    ),
    steps=(
        PlannedStep(step_id="review-jd", persona="junior-developer", phase="review", wave=0, files=FILES),
        PlannedStep(step_id="review-sec", persona="adversarial-security-analyst", phase="review", wave=0,
                    files=FILES),
        PlannedStep(step_id="review-test", persona="test-engineer", phase="review", wave=0, files=FILES),
        PlannedStep(step_id="validate", persona="adversarial-validator", phase="validation", wave=1,
                    role="validator", inputs=("review-jd", "review-sec", "review-test")),
    ),
    commit=COMMIT,
    model="smollm2-135m-instruct",
    engine="embedded",
    signals=(Signal(name="source", files=FILES), Signal(name="data", files=("app/db.py",))),
)


def _ev(path, start, end, quote):
    return {"path": path, "line_start": start, "line_end": end, "quote": quote}


SEC_OUTPUT = json.dumps({
    "summary": "One proven injection path. No proven exploit path found for A07 or A08. "
               "Checked: app/handlers.py, app/db.py.",
    "findings": [
        {
            "id": "SEC-001", "severity": "Critical", "category": "A03 Injection",
            "title": "SQL injection in get_user through the id parameter",
            "claim": "EXPLOIT: an anonymous caller sends ?id=0 OR 1=1; get_user concatenates it "
                     "into the statement and query() runs it, returning every user row.",
            "evidence": [
                _ev("app/handlers.py", 5, 6, 'sql = "SELECT * FROM users WHERE id = " + user_id'),
                _ev("app/db.py", 1, 2, "cur = _conn.execute(sql, params)"),  # moved: really line 7
            ],
            "recommendation": "Pass the id as a bound parameter: query(\"... WHERE id = ?\", (user_id,)).",
        },
        {
            "id": "SEC-002", "severity": "High", "category": "A01 Broken Access Control",
            "title": "delete_user trusts a session flag set elsewhere",
            "claim": "EXPLOIT: a user who can set is_admin in their profile deletes any account.",
            "evidence": [_ev("app/session.py", 10, 12, "user.is_admin = form['is_admin']")],
            "recommendation": "Read the role from the server-side store.",
        },
    ],
})

JD_OUTPUT = """Here is my review.
```json
""" + json.dumps({
    "summary": "The handlers mix request parsing with SQL; one injection and two smaller points.",
    "findings": [
        {
            "id": "JD-1", "severity": "Blocks decision", "category": "correctness",
            "title": "SQL injection in get_user via id parameter",
            "claim": "The id from the request is concatenated into the SQL string.",
            "evidence": [_ev("app/handlers.py", 6, 6, 'sql = "SELECT * FROM users WHERE id = " + user_id')],
            "recommendation": "Use a bound parameter.",
        },
        {
            "id": "JD-2", "severity": "Muddies artifact", "category": "clarity",
            "title": "list_users accepts any limit",
            "claim": "A caller can ask for a huge page; int() of a bad value raises a 500.",
            "evidence": [_ev("app/handlers.py", 11, 11, 'limit = int(request.args.get("limit", "100"))')],
            "recommendation": "Clamp the limit and answer 400 on a bad value.",
        },
        {
            "id": "JD-3", "severity": "Muddies artifact", "category": "robustness",
            "title": "Module-level connection is shared by every request",
            "claim": "A theoretical problem: two threads could use the connection at once.",
            "evidence": [_ev("app/db.py", 3, 3, '_conn = sqlite3.connect("app.db")')],
            "recommendation": "Open a connection per request.",
        },
        {
            "id": "JD-4", "severity": "Worth clarifying", "category": "YAGNI candidate",
            "title": "A pluggable database backend",
            "claim": "Nothing asks for a second database today.",
            "evidence": [],
            "recommendation": "",
            "deferred": True,
            "why_deferred": "No user need, dependency or incident calls for another backend.",
            "reopen_when": "A second database is committed to on the roadmap with a date.",
        },
        {
            "id": "JD-5", "severity": "Muddies artifact", "category": "clarity",
            "title": "query() hides errors from callers",
            "claim": "Errors are swallowed somewhere in the data layer.",
            "evidence": [],
            "recommendation": "Let errors propagate.",
        },
        {
            "id": "JD-6", "severity": "Muddies artifact", "category": "behaviour",
            "title": "A refused delete surfaces as a server error",
            "claim": "delete_user raises PermissionError, which nothing turns into a 403.",
            "evidence": [_ev("app/handlers.py", 16, 17, 'raise PermissionError("admins only")')],
            "recommendation": "Map PermissionError to a 403 response.",
        },
    ],
}) + "\n```\nThat is all."

VALIDATOR_OUTPUT = json.dumps({
    "summary": "Five verdicts.",
    "verdicts": [
        {"finding_id": "SEC-001", "result": "confirmed",
         "reason": "No counter-evidence found. Checked: callers of get_user, query(), the tests.",
         "counter_evidence": []},
        {"finding_id": "JD-002", "result": "partially_refuted",
         "reason": "A bad value does raise, but a huge page is bounded by the table size.",
         "counter_evidence": [_ev("app/handlers.py", 11, 11, "int(request.args.get")]},
        {"finding_id": "JD-003", "result": "refuted",
         "reason": "sqlite3 refuses cross-thread use of a connection by default.",
         "counter_evidence": [_ev("app/db.py", 3, 3, 'sqlite3.connect("app.db")')]},
        {"finding_id": "JD-006", "result": "refuted",
         "reason": "The web framework maps PermissionError to 403.",
         "counter_evidence": [_ev("app/errors.py", 8, 9, "PermissionError: 403")]},
        {"finding_id": "SEC-002", "result": "refuted",
         "reason": "The role is checked by middleware.",
         "counter_evidence": [_ev("app/middleware.py", 4, 4, "require_admin()")]},
        {"finding_id": "T-009", "result": "refuted", "reason": "Not mine to judge.",
         "counter_evidence": []},
    ],
})

# step id -> its attempts, in order: ("finish", output, tokens in, tokens out) | ("fail", error, retryable)
SCRIPT = {
    "review-jd": [("finish", JD_OUTPUT, 1840, 512)],
    "review-sec": [("finish", SEC_OUTPUT, 2011, 498)],
    "review-test": [
        ("fail", "engine timed out after 120 s", True),
        ("fail", "the prompt does not fit the model's context (2300 > 2048 tokens)", False),
    ],
    "validate": [("finish", VALIDATOR_OUTPUT, 1530, 301)],
}


def drive(script=SCRIPT, *, snapshot=SNAPSHOT, request=REQUEST, plan=PLAN) -> tuple[list[AgentEvent], RunState]:
    """Play the run to its end; return its events and final state."""
    clock = itertools.count(int(plan.ts) + 1)
    events: list[AgentEvent] = []
    state = RunState(run_id=request.run_id)
    tries = {sid: iter(attempts) for sid, attempts in script.items()}

    def emit(event):
        events.append(event)
        apply(state, event)

    emit(request)
    emit(plan)
    for _ in range(100):
        decisions = advance(state)
        if not decisions:
            break
        for d in decisions:
            match d:
                case Dispatch(step_id=sid, attempt=attempt):
                    st = state.steps[sid]
                    base = dict(run_id=state.run_id, step_id=sid, attempt=attempt)
                    emit(StepQueued(ts=float(next(clock)), persona=st.persona, phase=st.step.phase, **base))
                    emit(StepStarted(ts=float(next(clock)), worker="worker-1", **base))
                    outcome = next(tries[sid])
                    if outcome[0] == "fail":
                        emit(StepFailed(ts=float(next(clock)), error=outcome[1], retryable=outcome[2], **base))
                        continue
                    _, text, tin, tout = outcome
                    emit(OutputDelta(ts=float(next(clock)), text=text, offset=0, tokens=tout, **base))
                    parsed = parse_output(text, persona=st.persona, step_id=sid, role=st.step.role)
                    emit(StepFinished(ts=float(next(clock)), output=text, findings=parsed.findings,
                                      parse_error=parsed.error, tokens_in=tin, tokens_out=tout, **base))
                case CheckEvidence(step_id=sid):
                    from events.types import EvidenceChecked

                    emit(EvidenceChecked(run_id=state.run_id, ts=float(next(clock)), step_id=sid,
                                         results=check(state.steps[sid].findings, snapshot)))
                case ApplyVerdicts(step_id=sid):
                    emit(gate(state, sid, snapshot))
                case Render():
                    report = build_report(state, snapshot)
                    counts, recommendation = summary_counts(report)
                    emit(ReportRendered(run_id=state.run_id, ts=float(next(clock)), counts=counts,
                                        recommendation=recommendation,
                                        digest=report_digest(render_markdown(report))))
                case Finish(failed_steps=failed):
                    emit(RunFinished(run_id=state.run_id, ts=float(next(clock)), failed_steps=failed))
    return events, state


def make_run(
    steps: dict[str, tuple[str, tuple]],
    *,
    snapshot,
    flow: str = "code-review",
    band: str = "large",
    files: tuple[str, ...] = (),
    validator_output: str | None = None,
    roster: tuple = (),
    waves: dict[str, int] | None = None,
) -> RunState:
    """A run whose discovery steps (``step id -> (persona, findings)``) finished and were
    checked against ``snapshot``; with ``validator_output``, a validator step in the next wave
    finished with that text (its verdicts not yet applied)."""
    from events.types import EvidenceChecked

    planned = [
        PlannedStep(step_id=sid, persona=persona, phase="review", wave=(waves or {}).get(sid, 0), files=files)
        for sid, (persona, _) in steps.items()
    ]
    if validator_output is not None:
        planned.append(PlannedStep(step_id="validate", persona="adversarial-validator",
                                   phase="validation", wave=1, role="validator"))
    state = RunState(run_id="run-t")
    apply(state, RunRequested(run_id="run-t", ts=1.0, flow=flow, repo="/repo"))
    apply(state, RunPlanned(run_id="run-t", ts=2.0, band=band, band_reason="test", band_source="explicit",
                            roster=roster, steps=tuple(planned), commit=snapshot.commit, model="m",
                            engine="scripted"))
    ts = itertools.count(3)
    for sid, (persona, findings) in steps.items():
        apply(state, StepStarted(run_id="run-t", ts=float(next(ts)), step_id=sid))
        apply(state, StepFinished(run_id="run-t", ts=float(next(ts)), step_id=sid, output="",
                                  findings=tuple(findings)))
        apply(state, EvidenceChecked(run_id="run-t", ts=float(next(ts)), step_id=sid,
                                     results=check(tuple(findings), snapshot)))
    if validator_output is not None:
        apply(state, StepStarted(run_id="run-t", ts=float(next(ts)), step_id="validate"))
        apply(state, StepFinished(run_id="run-t", ts=float(next(ts)), step_id="validate",
                                  output=validator_output))
        apply(state, EvidenceChecked(run_id="run-t", ts=float(next(ts)), step_id="validate", results=()))
    return state


# A user persona with its own id prefix and severity words; no signals, so it is seated only
# when a request names it.
USER_PERSONA = """\
---
name: perf-auditor
lens: Looks for performance problems on hot paths.
boundaries:
  - does_not: prove exploit paths
    use: adversarial-security-analyst
inputs:
  - the files in scope
id_prefix: PA
severities: [Showstopper, Slow, Nit]
evidence_rule: true
yagni_rule: false
slice: all
---

## Posture

Find slow code.
"""
