"""Flows run end to end on real models: the embedded SmolLM2 (llama.cpp on CPU, inside the
Serve deployment) and the ``openai`` engine against a real ``llama_cpp.server`` on loopback.

The 135M model's findings are weak; what these tests hold is that real tokens stream into the
log, every step ends (finished, or failed with a clear error), and the run reaches its report.
Limits are short to keep the suite fast.
"""

from __future__ import annotations

import pytest

from actors.config import Settings
from actors.service import LaunchRequest
from tests.actors.hostile import fingerprint, make_repo

pytestmark = [pytest.mark.ray, pytest.mark.model, pytest.mark.slow]


@pytest.fixture
def repo(tmp_path):
    r = make_repo(tmp_path / "repo", {"calc.py": "def add(a, b):\n    return a + b\n"})
    (r / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    return r


def _run_once(settings: Settings, repo, **launch) -> tuple[object, str]:
    from actors.service import Orchestrator

    orch = Orchestrator(settings)
    try:
        run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), **launch))
        status = orch.wait(run_id, 600)
        return orch.state(run_id), status, orch.report(run_id, "md"), orch.run(run_id)
    finally:
        orch.close()


def _assert_real_run(state, status, md, view, engine: str):
    assert status == "finished"
    assert state.plan.engine == engine
    assert state.plan.model  # one model per run, recorded in the plan
    steps = list(state.steps.values())
    assert steps and all(st.status in ("finished", "failed") for st in steps)
    assert any(st.status == "finished" for st in steps)
    for st in steps:
        if st.status == "failed":
            assert st.error  # a failure always says why
    streamed = [st for st in steps if st.text or st.output]
    assert streamed, "no model text reached the log"
    assert sum(st.tokens_out for st in steps) > 0
    assert view["run"]["tokens_out"] == sum(st.tokens_out for st in steps)
    assert "## Agent appendix" in md and state.plan.model in md


def test_embedded_model_end_to_end(ray_session, tmp_path, repo):
    before = fingerprint(repo)
    settings = Settings.load(
        {}, data_dir=str(tmp_path / "data"), engine="embedded",
        step_max_tokens=48, step_turns=2, context_tokens=2048,
    )
    state, status, md, view = _run_once(settings, repo, band="small")
    _assert_real_run(state, status, md, view, "embedded")
    assert fingerprint(repo) == before


def test_openai_engine_against_llama_cpp_server(ray_session, tmp_path, repo, llama_server):
    settings = Settings.load(
        {}, data_dir=str(tmp_path / "data"), engine="openai",
        openai_base_url=llama_server.url, model=llama_server.model,
        step_max_tokens=48, step_turns=2, context_tokens=2048,
    )
    state, status, md, view = _run_once(settings, repo, band="small")
    _assert_real_run(state, status, md, view, "openai")
    assert state.plan.model == llama_server.model
