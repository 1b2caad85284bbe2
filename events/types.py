"""Every fact of a run's life, as one msgspec tagged union.

Evolution policy (msgspec's rules): a new field always carries a default, an existing field's
type never changes. A change that cannot follow them bumps ``SCHEMA_VERSION`` and adds one
upcast in ``events.codec``, the single decode path.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import msgspec

SCHEMA_VERSION = 1
# Attempts a step gets when its failures are retryable: the conductor retries up to it, and
# every fold needs it to tell an owed retry from a late attempt (``StepEvent.superseded``).
MAX_ATTEMPTS = 3

__all__ = [
    "AgentEvent",
    "Band",
    "EVENT_TYPES",
    "Event",
    "Evidence",
    "EvidenceChecked",
    "EvidenceResult",
    "Finding",
    "KINDS",
    "OutputDelta",
    "PlannedStep",
    "ReportRendered",
    "ReportSent",
    "RosterEntry",
    "RUN_STATUSES",
    "RunCancelled",
    "RunFailed",
    "RunFinished",
    "RunPlanned",
    "RunRequested",
    "RunResumed",
    "RunStatus",
    "SCHEMA_VERSION",
    "Severity",
    "Signal",
    "StepEvent",
    "StepFailed",
    "StepFinished",
    "StepQueued",
    "StepStarted",
    "StepStatus",
    "TERMINAL_RUN",
    "TERMINAL_RUN_KINDS",
    "ToolCalled",
    "ToolDenied",
    "ToolResult",
    "ValidatorVerdict",
    "Verdict",
]

Band = Literal["small", "medium", "large"]
# What a run's and a step's events leave them as: the conductor's folded state and the
# projections' rows both speak these words, so they are defined once, here.
RunStatus = Literal["requested", "planned", "running", "finished", "failed", "cancelled"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)  # in a run's order
TERMINAL_RUN: tuple[str, ...] = ("finished", "failed", "cancelled")
StepStatus = Literal["planned", "queued", "running", "finished", "failed"]
Severity = str  # the persona's own vocabulary; the conductor maps it to a report level


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """A citation: the quoted text is claimed to stand at these lines of this file."""

    path: str
    line_start: int
    line_end: int
    quote: str = ""


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One structured claim an agent makes about the code, with its evidence."""

    id: str
    persona: str = ""
    severity: Severity
    category: str = ""
    title: str
    claim: str = ""
    evidence: tuple[Evidence, ...] = ()
    recommendation: str = ""
    # YAGNI: an item with no evidence of need today is deferred, never dropped.
    deferred: bool = False
    why_deferred: str = ""
    reopen_when: str = ""
    # Ids of findings merged into this one (merge by substance keeps every source id).
    sources: tuple[str, ...] = ()


class EvidenceResult(msgspec.Struct, frozen=True, kw_only=True):
    """The mechanical check of one citation against the pinned snapshot."""

    finding_id: str
    index: int
    outcome: Literal["verified", "moved", "not_found", "no_such_file"]
    path: str
    line_start: int
    line_end: int
    note: str = ""


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """The adversarial validator's judgement on one surviving finding, and what it did."""

    finding_id: str
    result: Literal["confirmed", "partially_refuted", "refuted"]
    reason: str = ""
    counter_evidence: tuple[Evidence, ...] = ()
    counter_verified: bool = False
    action: Literal["keep", "demote", "drop"] = "keep"


class RosterEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A persona chosen for the run, with the one-line reason it was chosen."""

    persona: str
    reason: str
    phase: str
    # The persona's id prefix and severity words, so the report reads them from the log (a
    # user persona's file may change or go after the run). Empty in plans logged before.
    id_prefix: str = ""
    severities: tuple[str, ...] = ()


class PlannedStep(msgspec.Struct, frozen=True, kw_only=True):
    """One agent step of the plan: a persona in a wave, with its slice of the files."""

    step_id: str
    persona: str
    phase: str
    wave: int
    files: tuple[str, ...] = ()
    angle: str = ""
    # What the step consumes: "findings" of earlier waves, "validate" the surviving findings,
    # "draft" the synthesised text, or nothing (discovery).
    role: Literal["discovery", "synthesis", "validator", "editor"] = "discovery"
    inputs: tuple[str, ...] = ()  # step ids whose output this step reads verbatim


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    """A deterministic fact about the snapshot, remembering the files that fired it."""

    name: str
    files: tuple[str, ...] = ()
    detail: str = ""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", omit_defaults=True):
    """Base of every event: which run, when, and which schema version wrote it."""

    run_id: str
    ts: float
    # Bounded so the decoder itself refuses an event from a newer build (``codec`` says why).
    v: Annotated[int, msgspec.Meta(le=SCHEMA_VERSION)] = SCHEMA_VERSION


class StepEvent(Event, frozen=True, kw_only=True):
    """Base of every event that belongs to one attempt of one step."""

    step_id: str
    attempt: int = 1
    # Which agent of the attempt wrote it: 0 the first, n the one that picked it up n-th.
    pickup: int = 0

    def superseded(self, attempt: int, pickup: int, ended: bool, retry_owed: bool = False) -> bool:
        """Whether every fold ignores this event, given the step's latest ``attempt`` and
        ``pickup``, whether that attempt has ``ended`` (finished or failed), and whether the
        step is owed a retry (``retry_owed``).

        An agent thought lost may still be running after its step was picked up again: what
        it writes once a later pickup has started is ignored, so two agents never interleave
        one step's text or both end it. And an attempt ends once: if the lost agent ended it
        just before the pickup's start was committed, nothing of that attempt written after
        the ending counts (the supervisor has already acted on it).

        For the same reason, once a step has ended only the supervisor opens a later attempt,
        by queueing it. An agent picking a step up starts the next attempt itself when its
        engine cannot continue a partial answer; if the lost agent ended the step first, that
        late attempt is void, unless the end was a retryable failure: then it is the retry
        the step is owed."""
        if (self.attempt, self.pickup) < (attempt, pickup) or (ended and self.attempt == attempt):
            return True
        return ended and not retry_owed and self.attempt > attempt and not isinstance(self, StepQueued)


def retry_owed(status: str, retryable: bool, attempt: int) -> bool:
    """Whether a step in this state gets another attempt: it failed in a way worth trying
    again, and has attempts left."""
    return status == "failed" and retryable and attempt < MAX_ATTEMPTS


# --- the run -------------------------------------------------------------------------------


class RunRequested(Event, tag="run_requested", frozen=True, kw_only=True):
    """Someone asked for a flow to run against a repository."""

    flow: str
    repo: str
    band: Band | None = None
    base: str | None = None
    focus: str = ""
    symptom: str = ""
    text: str = ""
    paths: tuple[str, ...] = ()
    personas: tuple[str, ...] = ()
    engine: str = "auto"
    model: str = ""
    origin: str = "cli"
    thread: str = ""


class RunPlanned(Event, tag="run_planned", frozen=True, kw_only=True):
    """The conductor's plan: band and its reason, roster, steps in waves, pinned commit, model."""

    band: Band
    band_reason: str
    band_source: Literal["explicit", "config", "signals", "default"]
    roster: tuple[RosterEntry, ...]
    steps: tuple[PlannedStep, ...]
    commit: str
    model: str
    engine: str
    signals: tuple[Signal, ...] = ()
    notes: tuple[str, ...] = ()
    considered: tuple[str, ...] = ()


class StepQueued(StepEvent, tag="step_queued", frozen=True, kw_only=True):
    """A step was handed to an agent actor."""

    persona: str
    phase: str
    # What its prompt left out for space (files, diffs, upstream results, brief sections),
    # the first few named: the report says what the agent answered without.
    left_out: tuple[str, ...] = ()


class StepStarted(StepEvent, tag="step_started", frozen=True, kw_only=True):
    """An agent began (or, after a restart, continued) a step's attempt."""

    continued_from: int = 0  # characters of committed output this attempt keeps
    worker: str = ""


class OutputDelta(StepEvent, tag="output_delta", frozen=True, kw_only=True):
    """Coalesced text the model streamed for a step (offset is within the attempt's text)."""

    text: str
    offset: int
    turn: int = 0
    tokens: int = 0


class ToolCalled(StepEvent, tag="tool_called", frozen=True, kw_only=True):
    """The model asked to call a read-only tool."""

    call_id: str
    tool: str
    args: dict[str, Any] = {}
    turn: int = 0


class ToolResult(StepEvent, tag="tool_result", frozen=True, kw_only=True):
    """What a read-only tool returned (replayed from the log on resume, never re-run)."""

    call_id: str
    tool: str
    content: str
    ok: bool = True
    truncated: bool = False


class ToolDenied(StepEvent, tag="tool_denied", frozen=True, kw_only=True):
    """The tool layer refused a call: not a read tool, or a path outside the snapshot."""

    call_id: str
    tool: str
    args: dict[str, Any] = {}
    reason: str


class StepFinished(StepEvent, tag="step_finished", frozen=True, kw_only=True):
    """A step ended with its output, parsed findings and token usage."""

    output: str
    findings: tuple[Finding, ...] = ()
    parse_error: str = ""
    tokens_in: int = 0
    tokens_out: int = 0


class StepFailed(StepEvent, tag="step_failed", frozen=True, kw_only=True):
    """A step's attempt failed; a retryable failure may be tried again."""

    error: str
    retryable: bool = False


class EvidenceChecked(Event, tag="evidence_checked", frozen=True, kw_only=True):
    """The mechanical check of a step's citations against the pinned snapshot."""

    step_id: str
    results: tuple[EvidenceResult, ...] = ()


class ValidatorVerdict(Event, tag="validator_verdict", frozen=True, kw_only=True):
    """The validator's verdicts on the surviving findings, as applied by the gate."""

    step_id: str
    verdicts: tuple[Verdict, ...] = ()
    note: str = ""


class ReportRendered(Event, tag="report_rendered", frozen=True, kw_only=True):
    """The report was rendered from the run's events (it re-renders byte-identically)."""

    recommendation: str
    counts: dict[str, int] = {}
    digest: str = ""


class RunFinished(Event, tag="run_finished", frozen=True, kw_only=True):
    """Every step is terminal and the report is rendered."""

    failed_steps: int = 0


class RunFailed(Event, tag="run_failed", frozen=True, kw_only=True):
    """The run could not go on (for example its snapshot could not be pinned)."""

    error: str


class RunCancelled(Event, tag="run_cancelled", frozen=True, kw_only=True):
    """Someone cancelled the run; its streams were stopped."""

    reason: str = ""


class RunResumed(Event, tag="run_resumed", frozen=True, kw_only=True):
    """A restarted server picked the run up again from its events."""

    reason: str = ""
    in_flight: tuple[str, ...] = ()


class ReportSent(Event, tag="report_sent", frozen=True, kw_only=True):
    """The report was posted to a chat target (once per request id)."""

    request_id: str
    target: str
    ok: bool = True
    detail: str = ""


AgentEvent = (
    RunRequested
    | RunPlanned
    | StepQueued
    | StepStarted
    | OutputDelta
    | ToolCalled
    | ToolResult
    | ToolDenied
    | StepFinished
    | StepFailed
    | EvidenceChecked
    | ValidatorVerdict
    | ReportRendered
    | RunFinished
    | RunFailed
    | RunCancelled
    | RunResumed
    | ReportSent
)

EVENT_TYPES: tuple[type[Event], ...] = AgentEvent.__args__  # type: ignore[attr-defined]
KINDS: frozenset[str] = frozenset(t.__struct_config__.tag for t in EVENT_TYPES)
TERMINAL_RUN_KINDS = frozenset({"run_finished", "run_failed", "run_cancelled"})
