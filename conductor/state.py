"""A run's state is the fold of its own events.

``apply`` updates a ``RunState`` in place with one event (a run folds thousands of output
deltas, so copying the state per event would be quadratic); ``fold`` builds a fresh state from
a sequence. Nothing here reads a clock, a file or the network: the same events give the same
state, which is what lets a resumed run take the same decisions as a live one.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from events.types import (
    TERMINAL_RUN,
    AgentEvent,
    EvidenceChecked,
    EvidenceResult,
    Finding,
    OutputDelta,
    PlannedStep,
    ReportRendered,
    ReportSent,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunPlanned,
    RunRequested,
    RunResumed,
    RunStatus,
    StepEvent,
    StepFailed,
    StepFinished,
    StepQueued,
    StepStarted,
    StepStatus,
    ToolCalled,
    ToolDenied,
    ToolResult,
    ValidatorVerdict,
    retry_owed,
)


class ToolCall(msgspec.Struct, kw_only=True):
    """A tool call of the current attempt and, once known, its outcome."""

    called: ToolCalled
    outcome: ToolResult | ToolDenied | None = None


class StepState(msgspec.Struct, kw_only=True):
    """One step of the plan, as its events have left it."""

    step: PlannedStep
    status: StepStatus = "planned"
    attempt: int = 0
    pickup: int = 0  # the agent of the attempt that writes it now (see ``StepEvent.pickup``)
    text: str = ""  # the current attempt's committed stream
    superseded: list[str] = []  # text of earlier attempts: kept, never shown as the answer
    continued_from: int = 0
    tools: list[ToolCall] = []
    output: str = ""
    findings: tuple[Finding, ...] = ()
    parse_error: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    streamed_tokens: int = 0
    error: str = ""
    retryable: bool = False
    failures: list[str] = []
    queued_ts: float | None = None
    started_ts: float | None = None
    ended_ts: float | None = None
    evidence: tuple[EvidenceResult, ...] | None = None  # None until checked
    left_out: tuple[str, ...] = ()  # what the current attempt's prompt left out for space

    @property
    def step_id(self) -> str:
        return self.step.step_id

    @property
    def persona(self) -> str:
        return self.step.persona

    @property
    def in_flight(self) -> bool:
        return self.status in ("queued", "running")

    @property
    def ended(self) -> bool:
        return self.status in ("finished", "failed")

    @property
    def owed_retry(self) -> bool:
        return retry_owed(self.status, self.retryable, self.attempt)


class RunState(msgspec.Struct, kw_only=True):
    """A run, as its events have left it."""

    run_id: str
    status: RunStatus = "requested"
    request: RunRequested | None = None
    plan: RunPlanned | None = None
    steps: dict[str, StepState] = {}  # in plan order
    verdicts: dict[str, ValidatorVerdict] = {}  # by validator step id
    report: ReportRendered | None = None
    error: str = ""
    cancel_reason: str = ""
    created_ts: float | None = None
    ended_ts: float | None = None
    resumes: int = 0
    sent: dict[str, ReportSent] = {}  # by request id: a report is sent once per request
    events: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_RUN


def fold(events: Iterable[AgentEvent], run_id: str | None = None) -> RunState:
    """Fold a run's events (in ``seq`` order) into a fresh state."""
    state: RunState | None = None
    for event in events:
        if state is None:
            state = RunState(run_id=run_id or event.run_id)
        apply(state, event)
    if state is None:
        if run_id is None:
            raise ValueError("fold needs at least one event or a run_id")
        state = RunState(run_id=run_id)
    return state


def apply(state: RunState, event: AgentEvent) -> RunState:
    """Apply one event to the state (in place) and return it."""
    state.events += 1
    if isinstance(event, RunFinished | RunFailed | RunCancelled) and state.terminal:
        return state  # a run ends once: a supervisor that wrote on after a cancel ends nothing
    if isinstance(event, StepEvent) and event.step_id in state.steps:
        st = state.steps[event.step_id]
        if event.superseded(st.attempt, st.pickup, st.ended, st.owed_retry):
            return state
    match event:
        case RunRequested():
            state.request = event
            state.created_ts = event.ts
        case RunPlanned():
            state.plan = event
            state.steps = {s.step_id: StepState(step=s) for s in event.steps}
            if state.status == "requested":
                state.status = "planned"
        case StepQueued():
            st = state.steps[event.step_id]
            if event.attempt != st.attempt and st.text:
                st.superseded.append(st.text)
                st.text = ""
            if event.attempt != st.attempt:
                st.tools = []
            st.status = "queued"
            st.ended_ts = None
            st.attempt, st.pickup = event.attempt, event.pickup
            st.queued_ts = event.ts
            st.left_out = event.left_out
            st.error, st.retryable = "", False
            state.status = "running" if not state.terminal else state.status
        case StepStarted():
            st = state.steps[event.step_id]
            if event.attempt != st.attempt:
                if st.text:
                    st.superseded.append(st.text)
                st.text, st.tools = "", []
                st.attempt = event.attempt
            st.pickup = event.pickup
            st.text = st.text[: event.continued_from]
            st.continued_from = event.continued_from
            st.status = "running"
            st.ended_ts = None
            if st.started_ts is None:
                st.started_ts = event.ts
        case OutputDelta():
            st = state.steps[event.step_id]
            if event.attempt == st.attempt:
                st.text = st.text[: event.offset] + event.text
                st.streamed_tokens += event.tokens
        case ToolCalled():
            st = state.steps[event.step_id]
            if event.attempt == st.attempt:
                st.tools.append(ToolCall(called=event))
        case ToolResult() | ToolDenied():
            st = state.steps[event.step_id]
            for call in st.tools:
                if call.called.call_id == event.call_id:
                    call.outcome = event
                    break
            else:
                if isinstance(event, ToolDenied) and event.attempt == st.attempt:
                    # A call refused before it was recorded as called (unknown tool).
                    st.tools.append(
                        ToolCall(
                            called=ToolCalled(
                                run_id=event.run_id,
                                ts=event.ts,
                                step_id=event.step_id,
                                attempt=event.attempt,
                                call_id=event.call_id,
                                tool=event.tool,
                                args=event.args,
                            ),
                            outcome=event,
                        )
                    )
        case StepFinished():
            st = state.steps[event.step_id]
            st.status = "finished"
            st.attempt, st.pickup = event.attempt, event.pickup
            st.output = event.output
            st.findings = event.findings
            st.parse_error = event.parse_error
            st.tokens_in += event.tokens_in
            st.tokens_out += event.tokens_out
            st.ended_ts = event.ts
            st.error, st.retryable = "", False
        case StepFailed():
            st = state.steps[event.step_id]
            st.status = "failed"
            st.error = event.error
            st.retryable = event.retryable
            st.failures.append(f"attempt {event.attempt}: {event.error}")
            st.ended_ts = event.ts
        case EvidenceChecked():
            state.steps[event.step_id].evidence = event.results
        case ValidatorVerdict():
            state.verdicts[event.step_id] = event
        case ReportRendered():
            state.report = event
        case RunFinished():
            state.status = "finished"
            state.ended_ts = event.ts
        case RunFailed():
            state.status = "failed"
            state.error = event.error
            state.ended_ts = event.ts
        case RunCancelled():
            state.status = "cancelled"
            state.cancel_reason = event.reason
            state.ended_ts = event.ts
        case RunResumed():
            state.resumes += 1
        case ReportSent():
            state.sent[event.request_id] = event
    return state
