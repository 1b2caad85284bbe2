"""The plan: the flow's waves as steps, each reading what it should, deterministically."""

from __future__ import annotations

import msgspec
import pytest

from conductor.plan import MAX_STEP_FILES, plan
from conductor.requests import RequestError

SHOP = {
    "README.md": "# shop\n",
    "docs/spec.md": "# Spec\n\nOrders are paid by card and refunded within a day.\n",
    "app/__init__.py": "",
    "app/orders.py": "import threading\n\nLOCK = threading.Lock()\n\ndef pay(order):\n"
                     "    try:\n        return int(order['amount'])\n    except KeyError:\n        raise\n",
    "app/models.py": "from sqlalchemy import Column\nid = Column(int)\n",
    "billing/invoice.py": "def invoice(order):\n    return order\n",
    "tests/test_orders.py": "def test_pay():\n    assert True\n",
}


def _waves(planned) -> list[list[tuple[str, str]]]:
    waves: dict[int, list[tuple[str, str]]] = {}
    for s in planned.steps:
        waves.setdefault(s.wave, []).append((s.persona, s.role))
    return [waves[w] for w in sorted(waves)]


def _by_id(planned):
    return {s.step_id: s for s in planned.steps}


def test_architectural_analysis_runs_analysts_then_risk_then_architects(git_repo, personas, make_request):
    repo = git_repo(SHOP)
    planned = plan(make_request("architectural-analysis", focus="app/", band="large"), repo.pin(),
                   personas, model="m", engine="e", ts=2.0)
    waves = _waves(planned)
    discovery = {p for p, _ in waves[0]}
    assert {"structural-analyst", "behavioral-analyst", "concurrency-analyst"} <= discovery
    assert waves[1] == [("risk-analyst", "synthesis")]
    assert waves[2][0] == ("software-architect", "synthesis")
    assert waves[3] == [("adversarial-validator", "validator")]
    steps = _by_id(planned)
    risk = steps["w2-risk-analyst"]
    # risk scores the structural, behavioural and concurrency findings only
    assert {steps[i].persona for i in risk.inputs} == {"structural-analyst", "behavioral-analyst",
                                                        "concurrency-analyst"}
    architect = steps["w3-software-architect"]
    assert set(architect.inputs) == {s.step_id for s in planned.steps if s.wave < 3}
    # the focus narrows what is considered
    assert all(p.startswith("app/") for p in planned.considered)


def test_investigate_sends_at_least_two_investigators_on_different_angles(git_repo, personas, make_request):
    repo = git_repo(SHOP)
    planned = plan(make_request("investigate", symptom="payment intermittently hangs"), repo.pin(),
                   personas, model="m", engine="e", ts=2.0)
    investigators = [s for s in planned.steps if s.persona == "evidence-based-investigator"]
    assert len(investigators) >= 2
    assert len({s.angle for s in investigators}) == len(investigators)
    assert all(s.wave == 1 and s.role == "discovery" for s in investigators)
    # a specialist chosen by the symptom joins the evidence wave
    assert ("concurrency-analyst", "discovery") in _waves(planned)[0]
    waves = _waves(planned)
    assert waves[1] == [("plan-synthesizer", "synthesis")]
    assert waves[2] == [("adversarial-validator", "validator")]
    validator = _by_id(planned)["w3-adversarial-validator"]
    assert "root cause and the fix plan" in validator.angle


def test_code_overview_runs_explorers_then_synthesis_then_validator_then_editor(git_repo, personas, make_request):
    repo = git_repo(SHOP)
    planned = plan(make_request("code-overview", band="medium"), repo.pin(), personas,
                   model="m", engine="e", ts=2.0)
    waves = _waves(planned)
    assert {r for _, r in waves[0]} == {"discovery"} and len(waves[0]) >= 2
    assert waves[1:] == [[("codebase-explorer", "synthesis")], [("adversarial-validator", "validator")],
                         [("readability-editor", "editor")]]
    explorers = [s for s in planned.steps if s.wave == 1]
    # explorers split the code between them
    assert not set(explorers[0].files) & set(explorers[1].files)
    editor = planned.steps[-1]
    assert editor.files == ()
    assert [_by_id(planned)[i].role for i in editor.inputs] == ["synthesis", "validator"]


def test_code_review_is_one_review_wave_then_the_validator(git_repo, personas, make_request):
    repo = git_repo(SHOP)
    planned = plan(make_request("code-review"), repo.pin(), personas, model="m", engine="e", ts=2.0)
    waves = _waves(planned)
    assert len(waves) == 2 and waves[1] == [("adversarial-validator", "validator")]
    assert {r for _, r in waves[0]} == {"discovery"}
    assert set(planned.steps[-1].inputs) == {s.step_id for s in planned.steps[:-1]}


def test_gap_analysis_reads_the_document_and_refuses_a_missing_one(git_repo, personas, make_request):
    repo = git_repo(SHOP)
    snap = repo.pin()
    planned = plan(make_request("gap-analysis", focus="docs/spec.md"), snap, personas,
                   model="m", engine="e", ts=2.0)
    assert "docs/spec.md" not in planned.considered
    assert all(s.files[0] == "docs/spec.md" for s in planned.steps if s.role != "editor")
    assert _waves(planned)[0] == [("gap-analyzer", "discovery")]
    with pytest.raises(RequestError, match="document 'docs/nope.md' is not a file in the repository"):
        plan(make_request("gap-analysis", focus="docs/nope.md"), snap, personas, model="m", engine="e", ts=2.0)


def test_gap_analysis_adds_synthesis_and_editor_only_from_medium(git_repo, personas, make_request):
    repo = git_repo(SHOP)
    snap = repo.pin()
    small = plan(make_request("gap-analysis", focus="docs/spec.md", band="small"), snap, personas,
                 model="m", engine="e", ts=2.0)
    medium = plan(make_request("gap-analysis", focus="docs/spec.md", band="medium"), snap, personas,
                  model="m", engine="e", ts=2.0)
    assert {s.persona for s in small.steps}.isdisjoint({"plan-synthesizer", "readability-editor"})
    assert [s.persona for s in medium.steps[-2:]] == ["plan-synthesizer", "readability-editor"]


def test_the_same_inputs_give_the_same_plan_byte_for_byte(git_repo, personas, make_request):
    repo = git_repo(SHOP)
    repo.branch("feature")
    repo.write({"app/orders.py": SHOP["app/orders.py"] + "\n# more\n", "db/migrations/1.sql": "DROP TABLE x;\n"})
    repo.commit("change")
    request = make_request("code-review", base="main", personas=("information-architect",))
    first = plan(request, repo.pin(base="main"), personas, model="m", engine="e", ts=2.0)
    reordered = dict(sorted(personas.items(), reverse=True))
    second = plan(request, repo.pin(base="main"), reordered, model="m", engine="e", ts=2.0)
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
    ids = [s.step_id for s in first.steps]
    assert len(set(ids)) == len(ids)


def test_a_huge_slice_is_capped_and_the_plan_says_so(git_repo, personas, make_request):
    files = {f"pkg/m{i:03}.py": f"X{i} = {i}\n" for i in range(MAX_STEP_FILES + 5)}
    repo = git_repo(files)
    planned = plan(make_request("code-review"), repo.pin(), personas, model="m", engine="e", ts=2.0)
    junior = _by_id(planned)["w1-junior-developer"]
    assert len(junior.files) == MAX_STEP_FILES
    assert len(planned.considered) == MAX_STEP_FILES + 5
    assert f"w1-junior-developer: {MAX_STEP_FILES} of the {MAX_STEP_FILES + 5} files" in " ".join(planned.notes)


def test_a_focus_that_names_no_path_is_passed_on_with_a_note(git_repo, personas, make_request):
    repo = git_repo(SHOP)
    planned = plan(make_request("architectural-analysis", focus="the payment flow"), repo.pin(),
                   personas, model="m", engine="e", ts=2.0)
    assert planned.considered == tuple(sorted(SHOP))
    assert any("names no path in scope" in n for n in planned.notes)


def test_uncommitted_work_is_the_change_for_a_review_but_not_the_area_of_an_analysis(
        git_repo, personas, make_request):
    repo = git_repo(SHOP)
    repo.write({"app/orders.py": SHOP["app/orders.py"] + "\n# work in progress\n"})  # not committed
    snap = repo.pin()
    review = plan(make_request("code-review"), snap, personas, model="m", engine="e", ts=2.0)
    assert review.considered == ("app/orders.py",)
    analysis = plan(make_request("architectural-analysis", focus="app"), snap, personas,
                    model="m", engine="e", ts=2.0)
    assert analysis.considered == ("app/__init__.py", "app/models.py", "app/orders.py")
    symptom = plan(make_request("investigate", symptom="pay fails", paths=("app", "billing/")),
                   repo.pin(paths=("app", "billing")), personas, model="m", engine="e", ts=2.0)
    assert symptom.considered == ("app/__init__.py", "app/models.py", "app/orders.py", "billing/invoice.py")


def test_step_ids_number_only_a_persona_that_runs_several_times(git_repo, personas, make_request):
    repo = git_repo(SHOP)
    snap = repo.pin()
    small = plan(make_request("code-overview", band="small"), snap, personas, model="m", engine="e", ts=2.0)
    assert [s.step_id for s in small.steps] == ["w1-codebase-explorer", "w2-codebase-explorer",
                                                 "w3-adversarial-validator", "w4-readability-editor"]
    probe = plan(make_request("investigate", symptom="pay returns the wrong total", band="small"), snap,
                 personas, model="m", engine="e", ts=2.0)
    assert [s.step_id for s in probe.steps if s.persona == "evidence-based-investigator"] == [
        "w1-evidence-based-investigator-1", "w1-evidence-based-investigator-2"]


def test_nothing_to_read_is_refused_before_any_agent_is_planned(git_repo, personas, make_request):
    # Before: the run went ahead with a note, and every agent was asked about no files.
    repo = git_repo(SHOP)
    unchanged = repo.pin(base="HEAD")
    with pytest.raises(RequestError, match=(
            r"^code-review: nothing to analyse: no file in scope differs between 'HEAD' and the "
            rf"commit pinned \({unchanged.commit[:12]}\)$")) as refused:
        plan(make_request("code-review", base="HEAD"), unchanged, personas, model="m", engine="e", ts=2.0)
    assert refused.value.code == "bad_input"
    # A change since the base is something to review.
    repo.write({"app/orders.py": SHOP["app/orders.py"] + "\n# work in progress\n"})
    review = plan(make_request("code-review", base="HEAD"), repo.pin(base="HEAD"), personas,
                  model="m", engine="e", ts=2.0)
    assert review.considered == ("app/orders.py",)
    alone = git_repo({"docs/spec.md": SHOP["docs/spec.md"]})
    with pytest.raises(RequestError, match="nothing to analyse: no file in scope besides the document 'docs/spec.md'"):
        plan(make_request("gap-analysis", focus="docs/spec.md"), alone.pin(), personas,
             model="m", engine="e", ts=2.0)
