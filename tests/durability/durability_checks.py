"""What must hold for a run once it has survived kills: checked from its events alone.

``check_finished_run(events)`` asserts the run finished with every step's text exactly as the
script streams it (nothing cut, nothing twice), one outcome per decision, and returns the
pickups it saw. ``pickups(events)`` describes every time a step was picked up again after
having been started: where it continued and how much committed text was generated again.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass

from conductor.state import fold
from events.types import (
    EvidenceChecked,
    OutputDelta,
    StepFailed,
    ReportRendered,
    RunFinished,
    StepFinished,
    StepStarted,
    ValidatorVerdict,
)
from durability_script import expected_output, expected_text, marker


@dataclass
class Pickup:
    step_id: str
    seq: int  # of its StepStarted
    attempt: int
    new_attempt: bool  # the step started a new attempt rather than continuing
    committed: int  # characters the step's current attempt had committed before the pickup
    continued_from: int
    regenerated_chars: int = 0  # committed text written again after the pickup
    regenerated_tokens: int = 0
    first_delta_offset: int | None = None


def pickups(records) -> list[Pickup]:
    """Every StepStarted that picked a step up again (not its first start), with what followed."""
    out: list[Pickup] = []
    text: dict[str, str] = {}  # step -> current attempt's text
    attempt: dict[str, int] = {}
    streamed: dict[str, int] = {}  # tokens of the current attempt so far
    open_: dict[str, Pickup] = {}
    running: set[str] = set()  # started and not ended since: a new StepStarted is a pickup
    for rec in records:
        ev = rec.event
        if isinstance(ev, StepFinished | StepFailed):
            running.discard(ev.step_id)
            open_.pop(ev.step_id, None)
        elif isinstance(ev, StepStarted):
            was = text.get(ev.step_id)
            if ev.step_id in running:
                new = ev.attempt != attempt[ev.step_id]
                p = Pickup(ev.step_id, rec.seq, ev.attempt, new, len(was), ev.continued_from)
                if new:  # everything the earlier attempt streamed is generated again
                    p.regenerated_chars, p.regenerated_tokens = len(was), streamed[ev.step_id]
                out.append(p)
                open_[ev.step_id] = p
            if was is None or ev.attempt != attempt.get(ev.step_id):
                text[ev.step_id], streamed[ev.step_id] = "", 0
            attempt[ev.step_id] = ev.attempt
            text[ev.step_id] = text[ev.step_id][: ev.continued_from]
            running.add(ev.step_id)
        elif isinstance(ev, OutputDelta) and ev.attempt == attempt.get(ev.step_id):
            current = text[ev.step_id]
            p = open_.get(ev.step_id)
            if p is not None and ev.text:
                if p.first_delta_offset is None:
                    p.first_delta_offset = ev.offset
                overlap = max(0, min(p.committed, ev.offset + len(ev.text)) - ev.offset)
                if overlap and not p.new_attempt:
                    p.regenerated_chars += overlap
                    p.regenerated_tokens += ev.tokens
            text[ev.step_id] = current[: ev.offset] + ev.text
            streamed[ev.step_id] += ev.tokens
    return out


def check_finished_run(records, report_md: str | None = None) -> list[Pickup]:
    events = [r.event for r in records]
    state = fold(events)
    assert state.status == "finished", f"run {state.run_id} is {state.status}: {state.error}"
    for st in state.steps.values():
        assert st.status == "finished", f"{st.step_id} is {st.status}: {st.failures}"
        assert st.text == expected_text(st.persona), f"{st.step_id}'s text is cut or doubled: {st.text!r}"
        assert json.loads(st.output) == expected_output(st.persona), f"{st.step_id}: {st.output!r}"
    once = Counter(
        (type(e).__name__, getattr(e, "step_id", None))
        for e in events
        if isinstance(e, StepFinished | EvidenceChecked | ValidatorVerdict | ReportRendered | RunFinished)
    )
    assert set(once.values()) == {1}, f"a decision was recorded twice: {once}"
    if report_md is not None:
        for st in state.steps.values():
            if st.persona != "adversarial-validator":
                count = report_md.count(marker(st.persona))
                assert count == 1, f"{st.step_id}'s summary is in the report {count} times"
    found = pickups(records)
    for p in found:
        if not p.new_attempt:
            assert p.continued_from == p.committed, p
            assert p.first_delta_offset in (None, p.committed), p
            assert p.regenerated_chars == 0, p
    return found


def records(orch, run_id: str | None = None):
    """Every committed record (of one run), read through the log in pages."""
    out, after = [], 0
    while page := orch.log.read(after, run_id=run_id, limit=5000):
        out += page
        after = page[-1].seq
    return out


def wait_until(predicate, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
