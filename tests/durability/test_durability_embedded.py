"""With the embedded engine (SmolLM2 through llama-cpp), a step killed mid-answer continues its
committed text after a restart instead of generating it again.

The crash: the run's FlowRun and every agent are killed (their processes get SIGKILL) while a
step is streaming, then the rest of that server is stopped. A second Orchestrator on the same
data directory resumes the run. The step's pickup must say it keeps exactly the committed
characters, the model's new text must start at that offset, and the step's final text must
begin with what had been committed.
"""

from __future__ import annotations

import pytest
import ray

from actors.config import Settings
from actors.service import LaunchRequest
from conductor.state import fold
from durability_checks import records, wait_until
from durability_script import make_repo
from events.types import OutputDelta, RunResumed, StepFinished, StepStarted

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.model]


def streaming_step(orch, run_id: str, min_chars: int) -> str | None:
    """A step that has committed at least ``min_chars`` of text and has not finished."""
    state = fold(r.event for r in records(orch, run_id))
    for st in state.steps.values():
        if st.status == "running" and len(st.text) >= min_chars:
            return st.step_id
    return None


def test_a_resumed_step_continues_its_committed_text_with_the_embedded_model(ray_session, tmp_path):
    from actors.service import Orchestrator

    repo = make_repo(tmp_path / "repo")
    # Short answers in one turn: the model serves one stream at a time, and on a busy CPU the
    # resumed step may wait behind every other step of the wave.
    settings = Settings.load({}, data_dir=str(tmp_path / "data"), step_max_tokens=64, step_turns=1)
    first = Orchestrator(settings, engine="embedded")
    try:
        run_id = first.launch(LaunchRequest(flow="code-review", repo=str(repo), text="is add right?"))
        step_id = wait_until(lambda: streaming_step(first, run_id, 20), "a step to stream", timeout=300)
        names = first.names
        ray.kill(ray.get_actor(names.flow_run(run_id), namespace=names.namespace), no_restart=True)
        for i in range(names.pool_size):
            ray.kill(ray.get_actor(names.agent(i), namespace=names.namespace), no_restart=True)
    finally:
        first.close()

    second = Orchestrator(settings, engine="embedded")
    try:
        # What the log holds when the resume reads it: an append a killed agent had already
        # sent may still commit after the kill, so this is read only once the first server
        # (and its log) is closed.
        before = records(second, run_id)
        killed = fold(r.event for r in before).steps[step_id]
        committed, attempt = killed.text, killed.attempt
        assert committed and killed.status == "running"
        assert run_id in second.resume_all()

        def finished() -> bool:
            return any(isinstance(r.event, StepFinished) and r.event.step_id == step_id for r in records(second, run_id))

        wait_until(finished, "the resumed step to finish", timeout=400)
        after = records(second, run_id)
        second.cancel(run_id, "enough: the step under test has finished")
    finally:
        second.close()

    assert [r.event for r in after[: len(before)]] == [r.event for r in before]  # nothing committed changed
    resumed_at = next(r.seq for r in after if isinstance(r.event, RunResumed))
    mine = [r.event for r in after if r.seq > resumed_at and getattr(r.event, "step_id", None) == step_id]
    pickup = next(e for e in mine if isinstance(e, StepStarted))
    assert (pickup.attempt, pickup.continued_from) == (attempt, len(committed))
    new = [e for e in mine if isinstance(e, OutputDelta) and e.text]
    assert new, "the model generated nothing after the pickup"
    assert new[0].offset == len(committed)  # it went on from the last committed character
    assert all(e.offset >= len(committed) for e in new)  # and never wrote over committed text
    step = fold(r.event for r in after).steps[step_id]
    assert step.attempt == attempt and step.superseded == []
    assert step.text.startswith(committed) and len(step.text) > len(committed)
