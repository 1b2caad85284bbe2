"""What must hold for a run once it has survived kills: checked from its events alone.

``check_finished_run(events)`` asserts the run finished with every step's text exactly as the
script streams it (nothing cut, nothing twice), one outcome per decision, and returns the
pickups it saw. ``pickups(events)`` describes every time a step was picked up again after
having been started: where it continued and how much committed text was generated again.
``kill_points(events)`` says, for every resume of a run, where the kill had left it.
``check_log_copy(data_dir, work, acknowledged)`` checks a copy of a killed server's log file
(``copy_log`` and ``check_log``, for a caller that checks while the server restarts).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from conductor.state import fold
from events.types import (
    EvidenceChecked,
    OutputDelta,
    StepEvent,
    StepFailed,
    ReportRendered,
    RunFinished,
    StepFinished,
    RunResumed,
    StepQueued,
    StepStarted,
    ToolCalled,
    ToolDenied,
    ToolResult,
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
    holder: dict[str, tuple[int, int]] = {}  # step -> (attempt, pickup) of its latest start
    for rec in records:
        ev = rec.event
        if isinstance(ev, StepEvent) and ev.superseded(
            *holder.get(ev.step_id, (0, 0)), ev.step_id in holder and ev.step_id not in running
        ):
            continue  # an agent thought lost, still writing, or an ended attempt: every fold ignores it
        if isinstance(ev, StepStarted):
            holder[ev.step_id] = (ev.attempt, ev.pickup)
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


def kill_points(records) -> list[tuple[int, set[str]]]:
    """For every ``run_resumed`` of a run (its seq), where the kill had left the run, judged
    from what it had committed before: what each unfinished step was doing, and whether a
    decision (evidence check, report, finish) was pending between two commits."""
    out: list[tuple[int, set[str]]] = []
    last: dict[str, object] = {}  # step -> its last step event
    finished: set[str] = set()
    checked: set[str] = set()
    verdict = rendered = False
    for rec in records:
        ev = rec.event
        if isinstance(ev, RunResumed):
            where: set[str] = set()
            for step_id, e in last.items():
                validator = "validator" in step_id
                if step_id in finished:
                    if step_id not in checked:
                        where.add("step finished, evidence not yet checked")
                    elif validator and not verdict:
                        where.add("validator finished, verdicts not applied")
                elif isinstance(e, OutputDelta):
                    if validator:
                        where.add("validator streaming")
                    else:
                        where.add("streaming a tool call" if e.turn == 0 else "mid-stream")
                elif isinstance(e, ToolCalled):
                    where.add("between a tool call and its result")
                elif isinstance(e, ToolResult):
                    where.add("after a tool result, before the next turn")
                elif isinstance(e, StepStarted):
                    where.add("step started, nothing streamed")
                elif isinstance(e, StepQueued):
                    where.add("step queued, not started")
            if verdict and not rendered:
                where.add("verdicts applied, report not rendered")
            elif rendered:
                where.add("report rendered, run not finished")
            out.append((rec.seq, where))
        elif isinstance(ev, StepQueued | StepStarted | OutputDelta | ToolCalled | ToolResult | StepFinished):
            last[ev.step_id] = ev
            if isinstance(ev, StepFinished):
                finished.add(ev.step_id)
        elif isinstance(ev, StepFailed):
            last.pop(ev.step_id, None)
        elif isinstance(ev, EvidenceChecked):
            checked.add(ev.step_id)
        elif isinstance(ev, ValidatorVerdict):
            verdict = True
        elif isinstance(ev, ReportRendered):
            rendered = True
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
    # A tool call, and its outcome, show once per attempt, however often the step was picked up.
    calls = Counter(
        (type(e).__name__ == "ToolCalled", e.step_id, e.attempt, e.call_id)
        for e in events
        if isinstance(e, ToolCalled | ToolResult | ToolDenied)
    )
    assert all(n == 1 for n in calls.values()), f"a tool call or its outcome was recorded twice: {calls}"
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


def records(orch, run_id: str | None = None, after: int = 0):
    """Every committed record (of one run) after ``after``, read through the log in pages."""
    out = []
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


def copy_log(data_dir: Path, work: Path) -> Path:
    """Copy the log file and its write-ahead log, as a killed server left them, into ``work``."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in ("events.duckdb", "events.duckdb.wal"):
        if (data_dir / name).exists():
            shutil.copy(data_dir / name, work / name)
    return work


def check_log(work: Path, acknowledged: dict[int, dict]) -> int:
    """On a copy made by ``copy_log``: every acknowledged event is there unchanged, seqs are
    dense, keys unique, and the projections equal a rebuild of the log. Returns the number of
    events."""
    import duckdb

    from projections import rebuild
    from tests.projections.projection_scenarios import tables

    con = duckdb.connect(str(work / "events.duckdb"))  # replays the write-ahead log
    try:
        rows = con.execute("SELECT seq, key, body FROM events ORDER BY seq").fetchall()
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), "seqs are not dense"
        assert len({r[1] for r in rows}) == len(rows), "a key was written twice"
        bodies = {seq: body for seq, _, body in rows}
        for seq, event in acknowledged.items():
            assert seq in bodies, f"acknowledged seq {seq} ({event['kind']}) was lost"
            assert json.loads(bodies[seq]) == event, f"acknowledged seq {seq} changed"
        live = tables(con)
        rebuild(con)
        assert tables(con) == live, "the projections differ from a rebuild of the log"
        return len(rows)
    finally:
        con.close()


def check_log_copy(data_dir: Path, work: Path, acknowledged: dict[int, dict]) -> int:
    """``copy_log`` then ``check_log``."""
    return check_log(copy_log(data_dir, work), acknowledged)
