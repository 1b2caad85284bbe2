"""The run's decisions under races a live server meets, from a hostile review.

- A cancel that arrives while the run's last round (report, end) is being written closes
  nothing: the run ended first, and a run ends once.
- An agent that picks a step up starts the next attempt itself when its engine cannot continue
  a partial answer. If the agent thought lost ended the step just before, the supervisor has
  acted on that end (checked it, started the next wave, rendered): the late attempt is void,
  so it neither reopens the step, nor has its findings judged by the old evidence, nor retries
  a step of a wave the run has moved past.
- A retried step has no end time while its next attempt runs (as in ``flow_steps``).
- architectural-analysis seats devops-engineer or on-call-engineer below the large band, not
  both (Han: by whether the focus is infrastructure or application source; both at large).

The property at the end plays ``advance`` the way ``FlowRun`` does, with agents that finish,
fail, get lost and keep writing, restart attempts themselves, and supervisors that crash and
resume, and checks the run's order and ending.
"""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from conductor.advance import (
    ApplyVerdicts,
    CheckEvidence,
    Dispatch,
    Finish,
    Render,
    advance,
    cancellation,
)
from conductor.plan import plan
from conductor.snapshot import MemorySnapshot
from conductor.state import apply, fold
from events.log import Record
from events.types import (
    MAX_ATTEMPTS,
    Evidence,
    EvidenceChecked,
    EvidenceResult,
    Finding,
    OutputDelta,
    PlannedStep,
    ReportRendered,
    RosterEntry,
    RunFinished,
    RunPlanned,
    RunRequested,
    StepFailed,
    StepFinished,
    StepQueued,
    StepStarted,
    ValidatorVerdict,
)
from projections.fold import fold_all

RUN = "run-h"


def planned_run(*steps: PlannedStep) -> list:
    return [
        RunRequested(run_id=RUN, ts=1.0, flow="code-review", repo="/r"),
        RunPlanned(
            run_id=RUN, ts=2.0, band="small", band_reason="r", band_source="default",
            roster=tuple(RosterEntry(persona=s.persona, reason="r", phase=s.phase) for s in steps),
            steps=steps, commit="c0", model="m", engine="e",
        ),
    ]


def one_step(step_id: str = "w1-a", wave: int = 1, role: str = "discovery") -> PlannedStep:
    return PlannedStep(step_id=step_id, persona="junior-developer", phase=f"p{wave}", wave=wave, role=role)


def finding(fid: str, path: str) -> Finding:
    return Finding(id=fid, severity="High", title=fid,
                   evidence=(Evidence(path=path, line_start=1, line_end=1, quote="x"),))


# --- a cancel after the end -------------------------------------------------------------------


def test_a_cancel_after_the_run_finished_writes_nothing():
    log = [
        *planned_run(one_step()),
        StepQueued(run_id=RUN, ts=3.0, step_id="w1-a", persona="junior-developer", phase="p1"),
        StepStarted(run_id=RUN, ts=4.0, step_id="w1-a"),
        StepFinished(run_id=RUN, ts=5.0, step_id="w1-a", output="done"),
        EvidenceChecked(run_id=RUN, ts=6.0, step_id="w1-a"),
        ReportRendered(run_id=RUN, ts=7.0, recommendation="approve"),
        RunFinished(run_id=RUN, ts=8.0),  # committed while the cancel waited for the loop
    ]
    events, keys = cancellation(fold(log), "changed my mind", 9.0)
    assert (events, keys) == ([], [])
    after = fold(log + events)
    assert after.status == "finished" and after.report is not None


def test_a_cancel_of_a_running_run_still_fails_its_open_steps_then_cancels():
    log = [
        *planned_run(one_step()),
        StepQueued(run_id=RUN, ts=3.0, step_id="w1-a", persona="junior-developer", phase="p1"),
    ]
    events, keys = cancellation(fold(log), "", 9.0)
    assert [type(e).__name__ for e in events] == ["StepFailed", "RunCancelled"]
    assert keys == [f"{RUN}/cancel/w1-a/1", f"{RUN}/cancelled"]
    assert fold(log + events).status == "cancelled"


# --- an attempt an agent starts after the step ended ------------------------------------------


def ended_by_the_lost_agent() -> list:
    """w1-a picked up again; the agent thought lost finished it first, and it was checked."""
    old = dict(run_id=RUN, step_id="w1-a", attempt=1, pickup=0)
    return [
        StepQueued(run_id=RUN, ts=3.0, step_id="w1-a", persona="junior-developer", phase="p1"),
        StepStarted(ts=4.0, **old),
        OutputDelta(ts=5.0, text="partial", offset=0, **old),
        StepFinished(ts=6.0, output="old answer", findings=(finding("JD-001", "x.py"),), **old),
        EvidenceChecked(run_id=RUN, ts=6.5, step_id="w1-a", results=(
            EvidenceResult(finding_id="JD-001", index=0, outcome="verified", path="x.py",
                           line_start=1, line_end=1),)),
    ]


def test_an_attempt_an_agent_starts_after_the_step_ended_does_not_reopen_it():
    new = dict(run_id=RUN, step_id="w1-a", attempt=2, pickup=0)
    log = [
        *planned_run(one_step()),
        *ended_by_the_lost_agent(),
        StepStarted(ts=7.0, **new),  # the pickup's engine cannot continue: attempt 2
        OutputDelta(ts=7.5, text="other", offset=0, **new),
        StepFinished(ts=8.0, output="new answer", findings=(finding("JD-002", "y.py"),), **new),
    ]
    st = fold(log).steps["w1-a"]
    assert (st.status, st.attempt, st.output) == ("finished", 1, "old answer")
    # the findings the run reports are the ones whose citations were checked
    assert [f.id for f in st.findings] == [r.finding_id for r in st.evidence]
    assert advance(fold(log)) == [Render()]


def test_a_step_of_a_wave_the_run_moved_past_is_not_retried():
    log = [
        *planned_run(one_step("w1-a", 1), one_step("w2-b", 2, "synthesis")),
        *ended_by_the_lost_agent(),
        StepQueued(run_id=RUN, ts=7.0, step_id="w2-b", persona="junior-developer", phase="p2"),
        StepStarted(run_id=RUN, ts=7.5, step_id="w2-b"),
        StepStarted(run_id=RUN, ts=8.0, step_id="w1-a", attempt=2),
        StepFailed(run_id=RUN, ts=9.0, step_id="w1-a", attempt=2, error="timeout", retryable=True),
    ]
    state = fold(log)
    assert state.steps["w1-a"].status == "finished"
    assert advance(state) == []  # wait for w2-b; nothing of wave 1 runs again


def test_an_attempt_an_agent_starts_after_a_retryable_failure_is_the_retry_owed():
    old = dict(run_id=RUN, step_id="w1-a", attempt=1, pickup=0)
    log = [
        *planned_run(one_step("w1-a", 1), one_step("w2-b", 2)),
        StepQueued(run_id=RUN, ts=3.0, step_id="w1-a", persona="junior-developer", phase="p1"),
        StepStarted(ts=4.0, **old),
        StepFailed(ts=5.0, error="timeout", retryable=True, **old),  # the agent thought lost
        StepStarted(run_id=RUN, ts=6.0, step_id="w1-a", attempt=2),  # the pickup's new attempt
    ]
    assert fold(log).steps["w1-a"].status == "running"
    assert advance(fold(log)) == []  # no second attempt 2, no wave 2 yet
    log.append(StepFinished(run_id=RUN, ts=7.0, step_id="w1-a", attempt=2, output="ok"))
    st = fold(log).steps["w1-a"]
    assert (st.status, st.attempt) == ("finished", 2)


def test_the_supervisor_still_opens_a_retry_and_an_agent_a_new_attempt_of_a_running_step():
    log = [
        *planned_run(one_step()),
        StepQueued(run_id=RUN, ts=3.0, step_id="w1-a", persona="junior-developer", phase="p1"),
        StepStarted(run_id=RUN, ts=4.0, step_id="w1-a"),
        StepFailed(run_id=RUN, ts=5.0, step_id="w1-a", error="timeout", retryable=True),
    ]
    assert advance(fold(log)) == [Dispatch("w1-a", 2)]
    log.append(StepQueued(run_id=RUN, ts=6.0, step_id="w1-a", attempt=2, persona="junior-developer", phase="p1"))
    assert fold(log).steps["w1-a"].status == "queued"
    # picked up while running, by an engine that cannot continue: attempt 3, no StepQueued
    log += [
        StepStarted(run_id=RUN, ts=7.0, step_id="w1-a", attempt=2),
        StepStarted(run_id=RUN, ts=8.0, step_id="w1-a", attempt=3),
        StepFinished(run_id=RUN, ts=9.0, step_id="w1-a", attempt=3, output="ok"),
    ]
    st = fold(log).steps["w1-a"]
    assert (st.status, st.attempt, st.output) == ("finished", 3, "ok")


# --- end time of a retry ----------------------------------------------------------------------


def test_a_retry_in_flight_has_no_end_time_as_in_flow_steps():
    log = [
        *planned_run(one_step()),
        StepQueued(run_id=RUN, ts=3.0, step_id="w1-a", persona="junior-developer", phase="p1"),
        StepStarted(run_id=RUN, ts=4.0, step_id="w1-a"),
        StepFailed(run_id=RUN, ts=5.0, step_id="w1-a", error="timeout", retryable=True),
        StepQueued(run_id=RUN, ts=6.0, step_id="w1-a", attempt=2, persona="junior-developer", phase="p1"),
    ]
    _, rows = fold_all([Record(i + 1, e) for i, e in enumerate(log)])
    assert fold(log).steps["w1-a"].ended_ts is None
    assert rows[RUN]["w1-a"].ended_ts is None
    log.append(StepStarted(run_id=RUN, ts=7.0, step_id="w1-a", attempt=2))
    assert fold(log).steps["w1-a"].ended_ts is None
    log.append(StepFinished(run_id=RUN, ts=8.0, step_id="w1-a", attempt=2, output="ok"))
    assert fold(log).steps["w1-a"].ended_ts == 8.0


# --- devops or on-call below large ------------------------------------------------------------

APP = {
    "svc/__init__.py": "",
    "svc/client.py": "import requests\n\ndef fetch(u):\n    return requests.get(u, timeout=5)\n",
    "svc/worker.py": "def work(q):\n    for retry in range(3):\n        q.get()\n",
    "svc/Dockerfile": "FROM python:3.11\nCOPY . /app\n",
}
INFRA = {
    "svc/Dockerfile": "FROM python:3.11\n",
    "svc/main.tf": 'resource "x" "y" {}\n',
    "svc/deploy/app.yaml": "kind: Deployment\n",
    "svc/client.py": "import requests\n\ndef fetch(u):\n    return requests.get(u, timeout=5)\n",
}


def _architecture(files, band, personas):
    request = RunRequested(run_id="r1", ts=1.0, flow="architectural-analysis", repo="/r",
                           focus="svc", band=band)
    return plan(request, MemorySnapshot(files), personas, model="m", engine="e", ts=2.0)


def test_architectural_analysis_seats_devops_or_on_call_below_large_by_the_files(personas):
    app = _architecture(APP, "medium", personas)
    seated = {e.persona for e in app.roster}
    assert "on-call-engineer" in seated and "devops-engineer" not in seated
    assert any(n.startswith("devops-engineer left out at medium band") for n in app.notes)

    infra = _architecture(INFRA, "medium", personas)
    seated = {e.persona for e in infra.roster}
    assert "devops-engineer" in seated and "on-call-engineer" not in seated
    assert any(n.startswith("on-call-engineer left out at medium band") for n in infra.notes)


def test_architectural_analysis_seats_both_at_large(personas):
    seated = {e.persona for e in _architecture(APP, "large", personas).roster}
    assert {"devops-engineer", "on-call-engineer"} <= seated


# --- the whole run, with lost agents and crashes ----------------------------------------------


class World:
    """A supervisor carrying out ``advance`` as ``FlowRun`` does, its log deduplicated by the
    same keys, agents that may be lost and keep writing, and crashes (fold afresh, resume)."""

    def __init__(self, data, shape):
        self.data = data
        steps = tuple(
            PlannedStep(step_id=f"w{w}-s{i}", persona="junior-developer", phase=f"p{w}", wave=w, role=role)
            for w, (n, role) in enumerate(shape, 1) for i in range(n)
        )
        self.log: list = []
        self.keys: set[str] = set()
        self.append(planned_run(*steps), ["requested", "planned"])
        self.state = fold(self.log)
        self.running: dict[str, tuple[int, int]] = {}  # step -> (attempt, pickup) of our agent
        self.lost: list[tuple[str, tuple[int, int]]] = []  # agents of a crashed supervisor
        self.pickups: dict[tuple[str, int], int] = {}
        self.queued: set[tuple[str, int]] = set()
        self.renders = 0
        self.t = 10.0

    def ts(self) -> float:
        self.t += 1.0
        return self.t

    def append(self, events, keys) -> list:
        fresh = [e for e, k in zip(events, keys) if k not in self.keys]
        self.keys.update(keys)
        self.log += fresh
        return fresh

    def write(self, events, keys) -> None:
        for e in self.append(events, keys):
            apply(self.state, e)

    def orphans(self) -> bool:
        return any(st.in_flight and st.step_id not in self.running for st in self.state.steps.values())

    def decide(self) -> list:
        decisions = advance(self.state, resume=self.orphans())
        for d in decisions:
            match d:
                case Dispatch(step_id=s, attempt=a, resume=resume):
                    self.dispatch(s, a, resume)
                case CheckEvidence(step_id=s):
                    st = self.state.steps[s]
                    results = tuple(EvidenceResult(finding_id=f.id, index=0, outcome="verified", path="x.py",
                                                   line_start=1, line_end=1) for f in st.findings)
                    self.write([EvidenceChecked(run_id=RUN, ts=self.ts(), step_id=s, results=results)],
                               [f"evidence/{s}/{st.attempt}"])
                case ApplyVerdicts(step_id=s):
                    self.write([ValidatorVerdict(run_id=RUN, ts=self.ts(), step_id=s)], [f"verdicts/{s}"])
                case Render():
                    for st in self.state.steps.values():
                        assert st.ended, f"rendered while {st.step_id} is {st.status}"
                        if st.status == "finished":
                            assert [r.finding_id for r in st.evidence] == [f.id for f in st.findings]
                    self.renders += 1
                    self.write([ReportRendered(run_id=RUN, ts=self.ts(), recommendation="ok")], ["report"])
                case Finish(failed_steps=failed):
                    self.write([RunFinished(run_id=RUN, ts=self.ts(), failed_steps=failed)], ["finished"])
        return decisions

    def dispatch(self, s: str, attempt: int, resume: bool) -> None:
        st = self.state.steps[s]
        for other in self.state.steps.values():
            if other.step.wave < st.step.wave:
                assert other.ended, f"{s} dispatched while {other.step_id} of an earlier wave is {other.status}"
        if s in self.running:
            return
        if resume:
            n = self.pickups[(s, attempt)] = self.pickups.get((s, attempt), 0) + 1
            if n > 3:
                self.write([StepFailed(run_id=RUN, ts=self.ts(), step_id=s, attempt=attempt, pickup=st.pickup,
                                       error="lost", retryable=True)], [f"lost/{s}/{attempt}"])
                return
            self.running[s] = (attempt, st.pickup + 1)
            return
        assert attempt <= MAX_ATTEMPTS and (s, attempt) not in self.queued, (s, attempt)
        self.queued.add((s, attempt))
        self.write([StepQueued(run_id=RUN, ts=self.ts(), step_id=s, attempt=attempt,
                               persona=st.persona, phase=st.step.phase)], [f"queued/{s}/{attempt}"])
        self.running[s] = (attempt, 0)

    def agent(self, s: str, attempt: int, pickup: int, lost: bool) -> None:
        if not lost and pickup > 0 and self.data.draw(hs.booleans()):
            attempt, pickup = attempt + 1, 0  # its engine cannot continue: a new attempt
        end = self.data.draw(hs.sampled_from(["finish", "retryable", "fatal"]))
        at = dict(run_id=RUN, step_id=s, attempt=attempt, pickup=pickup)
        events = [StepStarted(ts=self.ts(), **at)]
        if end == "finish":
            events.append(StepFinished(ts=self.ts(), output="ok", **at,
                                       findings=(finding(f"JD-{int(self.t)}", "x.py"),)))
        else:
            events.append(StepFailed(ts=self.ts(), error=end, retryable=end == "retryable", **at))
        self.write(events, [f"agent/{s}/{attempt}/{pickup}/{i}/{self.t}" for i in range(len(events))])

    def play(self) -> None:
        for _ in range(400):
            if self.state.terminal:
                return
            decisions = self.decide()
            if self.state.terminal:
                return
            assert decisions or self.running or self.lost, "stalled"
            what = self.data.draw(hs.sampled_from(["agent", "agent", "agent", "crash"]))
            if what == "crash":
                self.lost += list(self.running.items())
                self.running, self.pickups = {}, {}
                self.state = fold(self.log)
            elif self.lost and self.data.draw(hs.booleans()):
                s, (attempt, pickup) = self.lost.pop(self.data.draw(hs.integers(0, len(self.lost) - 1)))
                self.agent(s, attempt, pickup, lost=True)
            elif self.running:
                s = self.data.draw(hs.sampled_from(sorted(self.running)))
                self.agent(s, *self.running.pop(s), lost=False)
        raise AssertionError("the run did not end")


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    hs.data(),
    hs.lists(hs.tuples(hs.integers(1, 3), hs.sampled_from(["discovery", "synthesis", "validator"])),
             min_size=1, max_size=3),
)
def test_a_run_with_lost_agents_and_crashes_keeps_its_order_and_ends_once(data, shape):
    world = World(data, shape)
    world.play()
    state = world.state
    assert state.status == "finished" and world.renders == 1
    assert msgspec.json.encode(state) == msgspec.json.encode(fold(world.log))
    for st in state.steps.values():
        # every step ended, and none was left with a retry it was owed
        assert st.ended and not st.owed_retry


# --- the paths of a tree flow -----------------------------------------------------------------


def test_a_tree_flow_reads_its_paths_as_the_snapshot_does(git_repo, personas):
    # With uncommitted work the tree flow filters the snapshot's files by the paths itself:
    # 'app/./' is 'app' to the snapshot, and must be to the plan too.
    repo = git_repo({"app/core.py": "def total(xs):\n    return sum(xs)\n", "README.md": "# r\n"})
    repo.write({"app/core.py": "def total(xs):\n    return sum(xs)\n# work in progress\n"})
    for path in ("app/./", "app//", "./app"):
        request = RunRequested(run_id="r1", ts=1.0, flow="architectural-analysis", repo="/r",
                               focus="app", paths=(path,))
        planned = plan(request, repo.pin(paths=(path,)), personas, model="m", engine="e", ts=2.0)
        assert planned.considered == ("app/core.py",), path
