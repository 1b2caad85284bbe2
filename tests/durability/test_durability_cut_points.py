"""A run cut at any point of its life is resumed by ``resume_all`` and completes.

One real run is recorded; then, for each cut point, a new run is written into the log holding
exactly that run's events up to the cut (as if the server had died right there), and one
``resume_all`` picks every cut run up at once, as a restarted server does. Cuts fall mid-stream,
between a tool call and its result, between a step's end and its evidence check, during the
validator, and between the report and the run's end.
"""

from __future__ import annotations

import shutil

import msgspec
import pytest

from actors.service import LaunchRequest
from durability_checks import check_finished_run, records
from events.types import (
    EvidenceChecked,
    OutputDelta,
    ReportRendered,
    RunResumed,
    StepFinished,
    StepQueued,
    StepStarted,
    ToolCalled,
    ToolResult,
    ValidatorVerdict,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def cut_points(events) -> dict[str, int]:
    """Named prefixes of a finished run's events (the number of events kept)."""

    def after(pred, nth: int = 1) -> int:
        seen = 0
        for i, ev in enumerate(events):
            if pred(ev):
                seen += 1
                if seen == nth:
                    return i + 1
        raise AssertionError("no such event in the recorded run")

    validator = next(e.step_id for e in events if isinstance(e, StepStarted) and "validator" in e.step_id)
    return {
        "planned": 2,
        "queued": after(lambda e: isinstance(e, StepQueued)),
        "started": after(lambda e: isinstance(e, StepStarted)),
        "tool-called": after(lambda e: isinstance(e, ToolCalled)),
        "tool-result": after(lambda e: isinstance(e, ToolResult)),
        "mid-answer": after(lambda e: isinstance(e, OutputDelta) and e.turn == 1, nth=3),
        "step-finished": after(lambda e: isinstance(e, StepFinished)),
        "evidence": after(lambda e: isinstance(e, EvidenceChecked)),
        "last-analyst-finished": after(lambda e: isinstance(e, StepFinished), nth=4),
        # Its first delta: its answer is short, and under load it may all come as one.
        "validator-streaming": after(lambda e: isinstance(e, OutputDelta) and e.step_id == validator),
        "validator-finished": after(lambda e: isinstance(e, StepFinished) and e.step_id == validator),
        "verdict": after(lambda e: isinstance(e, ValidatorVerdict)),
        "report": after(lambda e: isinstance(e, ReportRendered)),
    }


def test_runs_cut_anywhere_resume_and_complete(orch, repo):
    """Also: a run whose model cannot be started again is failed with the reason, and does not
    keep the others from resuming."""
    source = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="recorded"))
    assert orch.wait(source, 180) == "finished"
    events = [r.event for r in records(orch, source)]
    cuts = cut_points(events)
    assert len(set(cuts.values())) == len(cuts)  # thirteen different moments

    made = {}
    for name, n in cuts.items():
        run_id = f"{source}-cut-{name}"
        kept = [msgspec.structs.replace(e, run_id=run_id) for e in events[:n]]
        orch.log.append(kept, [f"{run_id}/recorded/{i}" for i in range(n)])
        shutil.copytree(orch.names.run_dir(source), orch.names.run_dir(run_id))  # its pinned snapshot
        made[run_id] = kept

    # A run planned on an engine this server cannot start (no OpenAI endpoint configured).
    stuck = f"{source}-cut-unresumable"
    kept = [msgspec.structs.replace(e, run_id=stuck) for e in events[: cuts["mid-answer"]]]
    kept[1] = msgspec.structs.replace(kept[1], engine="openai", model="elsewhere")
    orch.log.append(kept, [f"{stuck}/recorded/{i}" for i in range(len(kept))])

    resumed = orch.resume_all()
    assert sorted(resumed) == sorted(made)  # every cut run, and not the finished one
    failed = orch.state(stuck)
    assert failed.status == "failed"
    assert failed.error == (
        "could not be resumed: the openai engine needs ORCH_OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1)"
    )
    for run_id, kept in made.items():
        assert orch.wait(run_id, 240) == "finished", run_id
        recs = records(orch, run_id)
        # What was there before the cut is untouched, and the resume is on record.
        assert [r.event for r in recs[: len(kept)]] == kept
        resumed_at = [r.event for r in recs if isinstance(r.event, RunResumed)]
        assert len(resumed_at) == 1 and resumed_at[0].reason == "server restarted"
        check_finished_run(recs, orch.report(run_id, "md"))
