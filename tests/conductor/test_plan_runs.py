"""A whole planned run of each flow, driven through ``conductor.advance`` with synthetic step
outcomes: the waves dispatch in order, a retryable failure is retried, a step that fails for
good does not stop the run, every prompt along the way fits its budget, and the run renders."""

from __future__ import annotations

import pytest

from conductor.advance import ApplyVerdicts, CheckEvidence, Dispatch, Finish, Render, advance, is_terminal
from conductor.flows import FLOWS
from conductor.plan import plan
from conductor.prompts import build_messages
from conductor.state import RunState, apply, fold
from events.types import (
    Evidence,
    EvidenceChecked,
    EvidenceResult,
    Finding,
    ReportRendered,
    RunFinished,
    StepFailed,
    StepFinished,
    StepQueued,
    StepStarted,
    ValidatorVerdict,
    Verdict,
)

SHOP = {
    "README.md": "# shop\n",
    "docs/spec.md": "# Spec\n\nOrders are paid by card.\n",
    "app/__init__.py": "",
    "app/orders.py": "import threading\n\nLOCK = threading.Lock()\n\ndef pay(order):\n"
                     "    try:\n        return int(order['amount'])\n    except KeyError:\n        raise\n",
    "app/models.py": "from sqlalchemy import Column\nid = Column(int)\n",
    "db/migrations/0001.sql": "CREATE TABLE orders (id int);\n",
    "tests/test_orders.py": "def test_pay():\n    assert True\n",
}

REQUESTS = {
    "code-review": {},
    "architectural-analysis": {"focus": "app"},
    "investigate": {"symptom": "paying sometimes hangs and orders rows are duplicated"},
    "code-overview": {},
    "gap-analysis": {"focus": "docs/spec.md"},
    "automated-test-planning": {},
}
BUDGET = 2500


class Run:
    """Carries out ``advance``'s decisions with made-up outcomes, checking the order as it goes."""

    def __init__(self, state: RunState, snapshot, personas, *, fail_once=(), fail_for_good=()):
        self.state = state
        self.snapshot = snapshot
        self.personas = personas
        self.fail_once = set(fail_once)
        self.fail_for_good = set(fail_for_good)
        self.dispatched: list[tuple[str, int]] = []
        self.batches: list[list[str]] = []
        self.rendered = 0
        self.t = 10.0

    def ts(self) -> float:
        self.t += 1.0
        return self.t

    def apply(self, event) -> None:
        apply(self.state, event)

    def go(self) -> None:
        for _ in range(500):
            decisions = advance(self.state)
            assert decisions, f"the run is stuck: {[(s.step_id, s.status) for s in self.state.steps.values()]}"
            dispatches = [d.step_id for d in decisions if isinstance(d, Dispatch)]
            if dispatches:
                self.batches.append(dispatches)
            for d in decisions:
                match d:
                    case Dispatch(step_id=step_id, attempt=attempt):
                        self.dispatch(step_id, attempt)
                    case CheckEvidence(step_id=step_id):
                        self.check(step_id)
                    case ApplyVerdicts(step_id=step_id):
                        self.verdicts(step_id)
                    case Render():
                        assert all(is_terminal(st) for st in self.state.steps.values())
                        self.rendered += 1
                        self.apply(ReportRendered(run_id=self.state.run_id, ts=self.ts(), recommendation="ok"))
                    case Finish(failed_steps=failed):
                        self.apply(RunFinished(run_id=self.state.run_id, ts=self.ts(), failed_steps=failed))
                        return
        raise AssertionError("the run did not finish")

    def dispatch(self, step_id: str, attempt: int) -> None:
        st = self.state.steps[step_id]
        for other in self.state.steps.values():
            if other.step.wave < st.step.wave:
                assert is_terminal(other), f"{step_id} started before {other.step_id} ended"
        self.dispatched.append((step_id, attempt))
        prompt = build_messages(self.state, step_id, self.snapshot, self.personas, budget_tokens=BUDGET)
        assert prompt.estimated_tokens <= BUDGET
        self.check_upstream(st, prompt)

        run_id, ts = self.state.run_id, self.ts()
        self.apply(StepQueued(run_id=run_id, ts=ts, step_id=step_id, attempt=attempt,
                              persona=st.persona, phase=st.step.phase))
        self.apply(StepStarted(run_id=run_id, ts=ts, step_id=step_id, attempt=attempt))
        if step_id in self.fail_once and attempt == 1:
            self.apply(StepFailed(run_id=run_id, ts=ts, step_id=step_id, attempt=attempt,
                                  error="model timed out", retryable=True))
        elif step_id in self.fail_for_good:
            self.apply(StepFailed(run_id=run_id, ts=ts, step_id=step_id, attempt=attempt,
                                  error="output could not be used", retryable=False))
        else:
            findings = () if st.step.role == "validator" else (self.finding(st),)
            self.apply(StepFinished(run_id=run_id, ts=ts, step_id=step_id, attempt=attempt,
                                    output=f"output of {step_id}", findings=findings))

    def finding(self, st) -> Finding:
        prefix = self.personas[st.persona].id_prefix
        path = st.step.files[0] if st.step.files else "README.md"
        first = (self.snapshot.read(path) or b"x").decode().splitlines()[0] or "x"
        return Finding(id=f"{prefix}-{len(self.dispatched):03}", persona=st.persona,
                       severity=self.personas[st.persona].severities[0], title=f"from {st.step_id}",
                       evidence=(Evidence(path=path, line_start=1, line_end=1, quote=first),))

    def check_upstream(self, st, prompt) -> None:
        """A step that reads upstream results sees each of them, or is told it was left out."""
        if st.step.role in ("discovery", "validator"):
            return
        user = prompt.messages[1]["content"]
        for upstream in st.step.inputs:
            up = self.state.steps[upstream]
            if up.step.role == "validator" and st.step.role == "editor":
                continue
            for f in up.findings if st.step.role != "editor" else ():
                assert f.id in user or f"finding {f.id}" in prompt.left_out
            if up.status == "failed":
                assert f"{upstream} ({up.persona}) gave no output" in user

    def check(self, step_id: str) -> None:
        st = self.state.steps[step_id]
        results = tuple(
            EvidenceResult(finding_id=f.id, index=i, outcome="verified", path=e.path,
                           line_start=e.line_start, line_end=e.line_end)
            for f in st.findings for i, e in enumerate(f.evidence)
        )
        self.apply(EvidenceChecked(run_id=self.state.run_id, ts=self.ts(), step_id=step_id, results=results))

    def verdicts(self, step_id: str) -> None:
        surviving = [f for s in self.state.steps.values() for f in s.findings]
        verdicts = tuple(Verdict(finding_id=f.id, result="confirmed") for f in surviving)
        self.apply(ValidatorVerdict(run_id=self.state.run_id, ts=self.ts(), step_id=step_id, verdicts=verdicts))


@pytest.fixture
def shop(git_repo):
    return git_repo(SHOP).pin()


@pytest.mark.parametrize("flow", list(FLOWS))
def test_a_whole_run_dispatches_wave_by_wave_and_renders(flow, shop, personas, make_request):
    request = make_request(flow, band="medium", **REQUESTS[flow])
    planned = plan(request, shop, personas, model="m", engine="e", ts=2.0)
    run = Run(fold([request, planned]), shop, personas)
    run.go()

    waves = sorted({s.wave for s in planned.steps})
    assert [sorted({run.state.steps[i].step.wave for i in batch}) for batch in run.batches] == [[w] for w in waves]
    assert sorted(run.dispatched) == sorted((s.step_id, 1) for s in planned.steps)
    assert run.rendered == 1
    assert run.state.status == "finished" and run.state.report is not None
    validators = [s.step_id for s in planned.steps if s.role == "validator"]
    assert validators and set(run.state.verdicts) == set(validators)


@pytest.mark.parametrize("flow", list(FLOWS))
def test_a_retryable_failure_is_retried_and_a_lasting_one_does_not_stop_the_run(flow, shop, personas, make_request):
    request = make_request(flow, band="small", **REQUESTS[flow])
    planned = plan(request, shop, personas, model="m", engine="e", ts=2.0)
    first, last = planned.steps[0].step_id, planned.steps[-1].step_id
    wave_one = [s.step_id for s in planned.steps if s.wave == 1]
    flaky = wave_one[0]
    broken = wave_one[-1] if len(wave_one) > 1 else None
    run = Run(fold([request, planned]), shop, personas, fail_once={flaky},
              fail_for_good={broken} if broken else set())
    run.go()

    assert (flaky, 1) in run.dispatched and (flaky, 2) in run.dispatched
    # the retry happens before anything of the next wave starts
    assert run.dispatched.index((flaky, 2)) < min(
        i for i, (sid, _) in enumerate(run.dispatched) if run.state.steps[sid].step.wave > 1)
    assert run.state.steps[flaky].status == "finished"
    if broken:
        assert run.state.steps[broken].status == "failed"
    assert run.state.status == "finished"
    assert run.dispatched[0][0] == first and run.dispatched[-1][0] == last
