"""Flows run end to end through Ray with the scripted engine: FlowRun, the agent pool, the
model deployment, read-only tools, the DuckDB log and its projections, the report.

One Orchestrator serves the module; each scenario is picked by a marker in the run's free
text, which the scripted engine matches together with the persona's request tag.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from actors.config import Settings
from actors.service import LaunchError, LaunchRequest
from tests.actors.hostile import SECRET, fingerprint, make_hostile_repo, make_repo
from tests.conductor.golden.synthetic import USER_PERSONA

pytestmark = [pytest.mark.ray, pytest.mark.slow]

FINDING = {
    "summary": "checked calc.py",
    "findings": [
        {
            "id": "X-1",
            "severity": "High",
            "category": "Behavior",
            "title": "add subtracts its arguments",
            "claim": "add returns a - b although its name says it adds",
            "evidence": [{"path": "calc.py", "line_start": 7, "line_end": 7, "quote": "return a - b"}],
            "recommendation": "return a + b",
        },
        {
            "id": "X-2",
            "severity": "High",
            "category": "Behavior",
            "title": "an invented import",
            "claim": "calc.py imports os",
            "evidence": [{"path": "calc.py", "line_start": 1, "line_end": 1, "quote": "import os"}],
            "recommendation": "none",
        },
    ],
}

SCRIPT = {
    "tokens_per_s": 400,
    "replies": [
        # A persona whose model keeps failing mid-stream with a transient error.
        {"match": ["scenario-fail", "test-engineer/"], "text": "x " * 40, "fail_at": 3,
         "fail": "retryable", "fail_times": -1},
        # A slow stream, to cancel.
        {"match": ["scenario-slow"], "text": "slow " * 400, "tokens_per_s": 20},
        # A model that tries to write, run commands and read outside the tree.
        {"match": ["scenario-hostile"], "turn": 0, "json": {"tool": "write_file", "args": {"path": "pwned.txt", "content": "x"}}},
        {"match": ["scenario-hostile"], "turn": 1, "json": {"tool": "shell", "args": {"command": "cat /etc/passwd"}}},
        {"match": ["scenario-hostile"], "turn": 2, "json": {"tool": "read_file", "args": {"path": "../outside-secret.txt"}}},
        {"match": ["scenario-hostile"], "turn": 3, "json": {"tool": "read_file", "args": {"path": "/etc/passwd"}}},
        {"match": ["scenario-hostile"], "json": {"final": {"summary": "nothing", "findings": []}}},
        {"match": ["adversarial-validator/"], "json": {"final": {"verdicts": []}}},
        # A user persona's model numbers its finding as if it were the security analyst's.
        {"match": ["perf-auditor/"], "json": {"final": {"summary": "one hot path", "findings": [
            {"id": "SEC-001", "severity": "Showstopper", "category": "Performance",
             "title": "one global lock serialises every add",
             "claim": "every call of add takes the module's single lock, so adds never run at once",
             "evidence": [{"path": "calc.py", "line_start": 3, "line_end": 3,
                           "quote": "lock = threading.Lock()"}],
             "recommendation": "drop the lock: add touches no shared state"}]}}},
        {"turn": 0, "json": {"tool": "read_file", "args": {"path": "calc.py"}}},
        {"json": {"final": FINDING}},
    ],
}


@pytest.fixture(scope="module")
def orch(ray_session, tmp_path_factory):
    from actors.service import Orchestrator

    personas = tmp_path_factory.mktemp("user-personas")
    (personas / "perf-auditor.md").write_text(USER_PERSONA)
    settings = Settings.load(
        {}, data_dir=str(tmp_path_factory.mktemp("flow-run-data")), personas_dir=str(personas)
    )
    o = Orchestrator(settings, engine="scripted", script=SCRIPT)
    yield o
    o.close()


@pytest.fixture
def repo(tmp_path) -> Path:
    r = make_repo(tmp_path / "repo", {"calc.py": "def add(a, b):\n    return a + b\n"})
    (r / "calc.py").write_text(
        "import threading\n\nlock = threading.Lock()\n\ndef add(a, b):\n    with lock:\n        return a - b\n"
    )
    return r


def _events(orch, run_id):
    return [r.event for r in orch.events(run_id)]


def _kinds(events):
    return [e.__struct_config__.tag for e in events]


def test_a_code_review_runs_end_to_end(orch, repo):
    before = fingerprint(repo)
    run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="scenario-basic"))
    assert orch.wait(run_id, 120) == "finished"

    events = _events(orch, run_id)
    kinds = _kinds(events)
    for kind in ("run_requested", "run_planned", "step_queued", "step_started", "output_delta",
                 "tool_called", "tool_result", "step_finished", "evidence_checked",
                 "validator_verdict", "report_rendered", "run_finished"):
        assert kind in kinds, kind
    assert kinds[:2] == ["run_requested", "run_planned"] and kinds[-1] == "run_finished"

    # The projections say what the events say.
    view = orch.run(run_id)
    plan = events[1]
    assert view["run"]["status"] == "finished"
    assert len(view["steps"]) == len(plan.steps)
    assert all(s["status"] == "finished" for s in view["steps"])
    assert view["run"]["tokens_out"] > 0

    # The report cites the verified line, and labels the invented citation as unverified.
    report = json.loads(orch.report(run_id, "json"))
    md = orch.report(run_id, "md")
    assert "calc.py:7" in md and "return a - b" in md
    # The invented citation is kept, labelled, in its own section: never dropped, never verified.
    unverified = md.split("## Unverified claims", 1)[1].split("\n## ", 1)[0]
    assert "an invented import" in unverified and "quote not found" in unverified
    assert "an invented import" not in md.split("## Unverified claims", 1)[0]
    assert report["unverified"] and all(u["title"] == "an invented import" for u in report["unverified"])
    assert fingerprint(repo) == before  # nothing wrote to the analysed repository


def test_three_runs_at_once(orch, repo):
    ids = [orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text=f"scenario-basic {i}")) for i in range(3)]
    assert [orch.wait(i, 180) for i in ids] == ["finished"] * 3
    for run_id in ids:
        assert "calc.py:7" in orch.report(run_id, "md")
    # Three separate runs: each has its own plan and its own report event.
    for run_id in ids:
        kinds = _kinds(_events(orch, run_id))
        assert kinds.count("run_planned") == 1 and kinds.count("report_rendered") == 1


def test_a_failing_model_is_retried_then_the_run_completes_without_it(orch, repo):
    run_id = orch.launch(
        LaunchRequest(flow="code-review", repo=str(repo), text="scenario-fail", personas=("test-engineer",))
    )
    assert orch.wait(run_id, 180) == "finished"
    state = orch.state(run_id)
    failed = [st for st in state.steps.values() if st.status == "failed"]
    assert [st.persona for st in failed] == ["test-engineer"]
    assert failed[0].attempt == 3 and len(failed[0].failures) == 3  # retried, then given up
    others = [st for st in state.steps.values() if st.persona != "test-engineer"]
    assert others and all(st.status == "finished" for st in others)
    md = orch.report(run_id, "md")
    assert "test-engineer" in md and "failed" in md


def _launch_streaming(orch, repo) -> str:
    """A slow run, once its agents stream."""
    run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="scenario-slow"))
    deadline = time.time() + 60
    while "output_delta" not in _kinds(_events(orch, run_id)):
        assert time.time() < deadline, "no output before cancelling"
        time.sleep(0.1)
    return run_id


def test_cancel_stops_every_stream_within_a_second(orch, repo):
    run_id = _launch_streaming(orch, repo)
    t0 = time.time()
    assert orch.cancel(run_id, "changed my mind") is True
    took = time.time() - t0
    events = _events(orch, run_id)
    assert _kinds(events)[-1] == "run_cancelled" and events[-1].reason == "changed my mind"
    assert took < 2.5, f"cancel took {took:.2f}s"
    count = len(events)
    time.sleep(1.5)
    assert len(_events(orch, run_id)) == count, "something kept streaming after the cancel"
    assert orch.state(run_id).status == "cancelled"
    assert orch.cancel(run_id) is False  # already terminal


def test_cancel_without_its_supervisor_closes_every_open_step(orch, repo, monkeypatch):
    import ray

    run_id = _launch_streaming(orch, repo)
    monkeypatch.setattr(orch, "_replace", lambda run_id, lost: None)  # gone, and not replaced
    ray.kill(ray.get_actor(orch.names.flow_run(run_id), namespace=orch.names.namespace), no_restart=True)
    open_steps = {st.step_id for st in orch.state(run_id).steps.values() if st.in_flight}
    assert open_steps
    t0 = time.time()
    assert orch.cancel(run_id, "its supervisor is gone") is True
    assert time.time() - t0 < 2.5
    events = _events(orch, run_id)
    assert _kinds(events)[-1] == "run_cancelled"
    # Its agents were told to stop too: nothing more of the run is written.
    time.sleep(1.5)
    assert len(_events(orch, run_id)) == len(events), "its agents kept streaming after the cancel"
    assert _kinds(events).count("run_cancelled") == 1
    closed = {e.step_id for e in events if _kinds([e])[0] == "step_failed" and e.error == "cancelled"}
    assert closed == open_steps
    state = orch.state(run_id)
    assert state.status == "cancelled"
    assert orch.cancel(run_id) is False


def test_a_cancel_passes_over_a_supervisor_that_does_not_answer(orch, repo, monkeypatch):
    # Whoever cancels (a Ctrl-C'd command line waits on it) is not held forever by a stuck
    # supervisor: past the bound, the run is closed as if the supervisor were gone.
    import ray

    from actors import cancel

    @ray.remote(num_cpus=0)
    class Stuck:
        def cancel(self, reason: str) -> bool:
            time.sleep(3600)
            return True

    stuck = Stuck.remote()
    try:
        run_id = _launch_streaming(orch, repo)
        # The run's own supervisor goes (a stuck one dispatches nothing; none replaces it);
        # the stuck one is asked.
        monkeypatch.setattr(orch, "_replace", lambda run_id, lost: None)
        ray.kill(ray.get_actor(orch.names.flow_run(run_id), namespace=orch.names.namespace), no_restart=True)
        monkeypatch.setattr(cancel, "SUPERVISOR_WAIT_S", 1.0)
        t0 = time.time()
        assert cancel.cancel_run(orch.names, orch.log, run_id, "its supervisor hangs", stuck) is True
        assert time.time() - t0 < 5
        assert orch.state(run_id).status == "cancelled"
        assert _events(orch, run_id)[-1].reason == "its supervisor hangs"
    finally:
        ray.kill(stuck)


def test_hostile_repository_every_write_shell_and_escape_is_denied(orch, tmp_path):
    repo = make_hostile_repo(tmp_path)
    before = fingerprint(repo)
    run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="scenario-hostile"))
    assert orch.wait(run_id, 180) == "finished"
    events = _events(orch, run_id)
    denied = [e for e in events if e.__struct_config__.tag == "tool_denied"]
    tools = {e.tool for e in denied}
    assert {"write_file", "shell"} <= tools
    escapes = [e for e in denied if e.tool == "read_file"]
    assert {e.args["path"] for e in escapes} >= {"../outside-secret.txt", "/etc/passwd"}
    assert all(e.reason for e in denied)
    # The model was told: the next turn's prompt holds the refusal (replayed from the log).
    from events import encode

    assert all(SECRET.encode() not in encode(e) for e in events)
    assert not (repo / "pwned.txt").exists()
    assert fingerprint(repo) == before


class _StartFails:
    """A run's supervisor whose start does not go through (Ctrl-C in the launch, a lost actor)."""

    def __init__(self, actor, exc):
        self._actor, self._exc = actor, exc
        self.start = SimpleNamespace(remote=self._refuse)

    def _refuse(self, *args):
        raise self._exc

    def __getattr__(self, name):
        return getattr(self._actor, name)


@pytest.mark.parametrize(
    "exc, status, error",
    [
        (KeyboardInterrupt(), "cancelled", "interrupted before the run started"),
        (RuntimeError("actor lost"), "failed", "could not be started: RuntimeError: actor lost"),
    ],
    ids=["ctrl-c", "lost-actor"],
)
def test_a_launch_stopped_after_its_first_events_closes_its_run(orch, tmp_path, monkeypatch, exc, status, error):
    # Left "planned", the next server start would resume a run whose launch the caller saw fail.
    repo = make_repo(tmp_path / "stopped", {"calc.py": "def add(a, b):\n    return a - b\n"})
    take = orch._take_spare

    def take_one_that_will_not_start():
        run_id, actor = take()
        return run_id, _StartFails(actor, exc)

    monkeypatch.setattr(orch, "_take_spare", take_one_that_will_not_start)
    with pytest.raises(type(exc)):
        orch.launch(LaunchRequest(flow="code-review", repo=str(repo)))
    monkeypatch.undo()
    (row,) = orch.runs(repo=str(repo.resolve()))
    assert (row["status"], row["error"]) == (status, error)
    assert _kinds(_events(orch, row["run_id"])) == ["run_requested", "run_planned", f"run_{status}"]
    assert row["run_id"] not in orch.resume_all()
    # The next launch gets a supervisor of its own and runs.
    run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="after a stopped launch"))
    assert run_id != row["run_id"] and orch.wait(run_id, timeout=120) == "finished"


def test_bad_launch_writes_nothing(orch, repo, tmp_path):
    before = orch.log.max_seq()
    cases = [
        LaunchRequest(flow="no-such-flow", repo=str(repo)),
        LaunchRequest(flow="code-review", repo=str(tmp_path / "missing")),
        LaunchRequest(flow="code-review", repo=str(repo), band="huge"),
        LaunchRequest(flow="code-review", repo=str(repo), base="no-such-ref"),
        LaunchRequest(flow="architectural-analysis", repo=str(repo)),  # focus is required
        LaunchRequest(flow="code-review", repo=str(repo), personas=("test-engineer", "secruity-analyst")),
    ]
    codes = []
    for req in cases:
        with pytest.raises(LaunchError) as err:
            orch.launch(req)
        assert str(err.value)
        codes.append(err.value.code)
    assert codes[-1] == "unknown_persona" and "'secruity-analyst'" in str(err.value)
    assert orch.log.max_seq() == before


def test_a_model_that_will_not_start_is_one_clear_error_and_writes_nothing(ray_session, tmp_path, repo):
    # Its replica cannot build the engine (the scripted one without a script): before, Serve's
    # "Deploying application … failed" came out of the launch as a RuntimeError.
    from actors.service import Orchestrator
    from ray import serve

    data = tmp_path / "data"
    o = Orchestrator(Settings.load({}, data_dir=str(data)), engine="scripted")
    try:
        # Nor may a launch hand the test double a script of its choosing: it would read any
        # JSON file on the machine (the API takes an engine and a model from its callers).
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_text(json.dumps(SCRIPT))
        with pytest.raises(LaunchError) as err:
            o.launch(LaunchRequest(flow="code-review", repo=str(repo), engine="scripted",
                                   model=str(elsewhere)))
        assert err.value.code == "bad_engine" and "never a model a launch names" in str(err.value)
        with pytest.raises(LaunchError) as err:
            o.launch(LaunchRequest(flow="code-review", repo=str(repo)))
        assert err.value.code == "model_unavailable"
        assert str(err.value) == (
            "the scripted model 'scripted' could not be started: "
            "the scripted engine needs a script (a JSON file as the model)"
        )
        assert o.log.max_seq() == 0
        assert not list((data / "runs").glob("*"))
        # Nor is the failed application left for Serve to go on retrying.
        assert o.names.model_app("scripted", "scripted") not in serve.status().applications
    finally:
        o.close()


def test_the_report_names_what_each_agent_answered_without(orch, repo):
    # A file far over the prompt budget (2,048 tokens by default): left out, and the report
    # says so for every agent whose prompt went without it.
    (repo / "big.py").write_text("".join(f"value_{i} = {i}  # a line of padding\n" for i in range(3000)))
    run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="scenario-big"))
    assert orch.wait(run_id, 120) == "finished"

    queued = [e for e in _events(orch, run_id) if e.__struct_config__.tag == "step_queued"]
    without_big = [e for e in queued if "big.py" in e.left_out]
    assert without_big and all("diff of big.py (lines " in " ".join(e.left_out) for e in without_big)
    md = orch.report(run_id, "md")
    appendix = md.split("## Agent appendix", 1)[1]
    for e in queued:
        lines = [ln for ln in appendix.splitlines() if ln.startswith("- ") and f"({e.step_id})" in ln]
        code = [x for x in e.left_out if not x.startswith("persona brief: ")]
        if not code:
            assert not any("answered without" in ln for ln in lines)
            continue
        (line,) = lines
        assert "answered without (left out of its prompt for space): " + "; ".join(code) in line
    # Cuts of the personas' briefs repeat on every agent: said once, in a note naming each.
    briefs = [e for e in queued if any(x.startswith("persona brief: ") for x in e.left_out)]
    assert briefs
    notes = [ln for ln in appendix.splitlines() if ln.startswith("Note: to fit the model's context")]
    assert all(("the briefs of " in n) == (", " in n.split(" of ", 1)[1].split(" went ")[0]) for n in notes)
    for e in briefs:
        cuts = [x.removeprefix("persona brief: ").removesuffix(" (cut for space)")
                for x in e.left_out if x.startswith("persona brief: ")]
        said = cuts[0] if len(cuts) == 1 else ", ".join(cuts[:-1]) + " and " + cuts[-1]
        assert any(e.persona in n and n.endswith(f"went without {said}") for n in notes), e.persona
    agents = {a["step_id"]: a for a in json.loads(orch.report(run_id, "json"))["agents"]}
    assert all(tuple(agents[e.step_id]["left_out"]) == e.left_out for e in queued)


def test_a_user_persona_answers_in_its_own_words_and_ids(orch, repo):
    # By name alone a user persona had no id prefix and no severity words: its SEC-001 passed
    # for a security finding, and its top word ranked as a mere suggestion.
    run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="scenario-user-persona",
                                       personas=("perf-auditor",)))
    assert orch.wait(run_id, 120) == "finished"
    events = _events(orch, run_id)
    (seat,) = [e for e in events[1].roster if e.persona == "perf-auditor"]
    assert (seat.id_prefix, seat.severities) == ("PA", ("Showstopper", "Slow", "Nit"))
    (step,) = [s.step_id for s in events[1].steps if s.persona == "perf-auditor"]
    (finished,) = [e for e in events if e.__struct_config__.tag == "step_finished" and e.step_id == step]
    assert [(f.id, f.severity) for f in finished.findings] == [("PA-001", "Showstopper")]
    report = json.loads(orch.report(run_id, "json"))
    (view,) = [f for f in report["findings"] if f["id"] == "PA-001"]
    assert (view["persona"], view["level"], view["security"]) == ("perf-auditor", "warning", False)
