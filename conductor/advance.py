"""What a run does next, decided from its folded state alone.

The ``FlowRun`` actor folds its events and carries out these decisions; it decides nothing
itself. A live run and a resumed run therefore take the same path through the flow.

Order within a run: steps of wave *w* start once every step of earlier waves is terminal, its
citations are checked, and any earlier validator's verdicts are applied. A retryable failure is
tried again, up to ``events.types.MAX_ATTEMPTS`` attempts; a step that stays failed does not
stop the run. When every step is terminal the report is rendered, then the run finishes.
"""

from __future__ import annotations

import msgspec

from conductor.state import RunState, StepState
from events.types import RunCancelled, StepFailed


class Dispatch(msgspec.Struct, frozen=True, tag=True):
    """Run (or, with ``resume``, pick up again) one attempt of a step."""

    step_id: str
    attempt: int
    resume: bool = False


class CheckEvidence(msgspec.Struct, frozen=True, tag=True):
    """Check a finished step's citations against the snapshot."""

    step_id: str


class ApplyVerdicts(msgspec.Struct, frozen=True, tag=True):
    """Parse a finished validator step and apply its verdicts to the surviving findings."""

    step_id: str


class Render(msgspec.Struct, frozen=True, tag=True):
    """Render the report from the run's state."""


class Finish(msgspec.Struct, frozen=True, tag=True):
    """Close the run."""

    failed_steps: int = 0


Decision = Dispatch | CheckEvidence | ApplyVerdicts | Render | Finish


def is_terminal(st: StepState) -> bool:
    return st.status == "finished" or (st.status == "failed" and not st.owed_retry)


def _settled(state: RunState, st: StepState) -> bool:
    """Terminal, and everything that follows from its end has been recorded."""
    if not is_terminal(st):
        return False
    if st.status == "finished":
        if st.evidence is None:
            return False
        if st.step.role == "validator" and st.step_id not in state.verdicts:
            return False
    return True


def advance(state: RunState, *, resume: bool = False) -> list[Decision]:
    """The decisions to carry out now; an empty list means wait for a step to end.

    With ``resume`` (a restarted server), steps that were in flight are dispatched again with
    the attempt they had, so the agent can continue from the committed text.
    """
    if state.terminal or state.plan is None:
        return []
    if state.report is not None:
        return [Finish(failed_steps=sum(st.status == "failed" for st in state.steps.values()))]

    decisions: list[Decision] = []
    for st in state.steps.values():
        if st.status == "finished" and st.evidence is None:
            decisions.append(CheckEvidence(st.step_id))
        elif (
            st.status == "finished"
            and st.step.role == "validator"
            and st.evidence is not None
            and st.step_id not in state.verdicts
        ):
            decisions.append(ApplyVerdicts(st.step_id))
    if decisions:
        return decisions

    for st in state.steps.values():
        if resume and st.in_flight:
            decisions.append(Dispatch(st.step_id, st.attempt, resume=True))
        elif st.owed_retry:
            decisions.append(Dispatch(st.step_id, st.attempt + 1))

    waves = sorted({st.step.wave for st in state.steps.values()})
    for wave in waves:
        earlier = [st for st in state.steps.values() if st.step.wave < wave]
        if not all(_settled(state, st) for st in earlier):
            break
        for st in state.steps.values():
            if st.step.wave == wave and st.status == "planned":
                decisions.append(Dispatch(st.step_id, 1))
    if decisions:
        return decisions

    if all(_settled(state, st) for st in state.steps.values()):
        return [Render()]
    return []


def cancellation(state: RunState, reason: str, ts: float) -> tuple[list, list[str]]:
    """The events (and their keys) that close a cancelled run: a ``cancelled`` failure for each
    step still queued or running, then the cancellation. The keys make it written once, by
    the run's supervisor or, when that is gone, by whoever cancels.

    None for a run that has ended: a cancel can arrive while the run's last round (its
    report and its end) is being written, and a run ends once."""
    if state.terminal:
        return [], []
    run_id = state.run_id
    open_steps = [st for st in state.steps.values() if st.in_flight]
    events: list = [
        StepFailed(
            run_id=run_id, ts=ts, step_id=st.step_id, attempt=st.attempt, pickup=st.pickup,
            error="cancelled", retryable=False,
        )
        for st in open_steps
    ]
    keys = [f"{run_id}/cancel/{st.step_id}/{st.attempt}" for st in open_steps]
    events.append(RunCancelled(run_id=run_id, ts=ts, reason=reason or "cancelled"))
    keys.append(f"{run_id}/cancelled")
    return events, keys
