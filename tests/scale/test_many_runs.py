"""Twenty runs at once on one machine: a 12-step code-review each, with the scripted engine.

What a user relies on: every run completes with its full report; a live subscriber sees each
event promptly while all of them stream (the single log writer keeps up); memory stays bounded
(the log actor does not grow with the load, and the per-run supervisors go away once their runs
end). The figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

from actors.config import Settings
from actors.service import LaunchRequest
from tests.actors.hostile import fingerprint, make_repo

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memory is read from /proc"),
]

RUNS = 20
# Nine named personas on top of the spine: a large code-review of 12 steps.
PERSONAS = (
    "test-engineer", "concurrency-analyst", "data-engineer", "devops-engineer", "edge-case-explorer",
    "on-call-engineer", "behavioral-analyst", "structural-analyst", "risk-analyst",
)  # fmt: skip
STEPS = 12
FINDING = {
    "summary": "checked calc.py " + " ".join(f"w{i}" for i in range(60)),
    "findings": [
        {
            "id": "X-1",
            "severity": "High",
            "category": "Behavior",
            "title": "add subtracts its arguments",
            "claim": "add returns a - b although its name says it adds",
            "evidence": [{"path": "calc.py", "line_start": 7, "line_end": 7, "quote": "return a - b"}],
            "recommendation": "return a + b",
        }
    ],
}
# Each analyst reads a file, then streams its answer (about a second at 100 tokens/s).
SCRIPT = {
    "tokens_per_s": 100,
    "replies": [
        {"match": ["adversarial-validator/"], "json": {"final": {"verdicts": []}}},
        {"turn": 0, "json": {"tool": "read_file", "args": {"path": "calc.py"}}},
        {"json": {"final": FINDING}},
    ],
}
RETIRE_WAIT_S = 30.0  # a FlowRun exits a few seconds after its run ends


@pytest.fixture(scope="module")
def orch(ray_session, tmp_path_factory):
    from actors.service import Orchestrator

    # The scripted model is cheap: let it stream every step at once rather than queue.
    settings = Settings.load({}, data_dir=str(tmp_path_factory.mktemp("many-runs")), max_streams=256)
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


def _mb(n: int) -> float:
    return round(n / 2**20, 1)


def _rss(pid: int) -> int:
    """Resident memory of a process in bytes (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(_parent(int(entry)), []).append(int(entry))
            except OSError:
                pass  # gone meanwhile
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


class Memory:
    """RSS of the log actor and of every process under this Ray node's raylet (its workers)."""

    def __init__(self, log_pid: int):
        self.log = log_pid
        self.raylet = _parent(log_pid)  # Ray's workers are the raylet's children
        self.peak_log = self.peak_workers = self.peak_procs = 0

    def sample(self) -> tuple[int, int, int]:
        log = _rss(self.log)
        procs = [_rss(p) for p in _descendants(self.raylet)]
        total, count = sum(procs), sum(1 for r in procs if r)
        self.peak_log = max(self.peak_log, log)
        self.peak_workers = max(self.peak_workers, total)
        self.peak_procs = max(self.peak_procs, count)
        return log, total, count


def _retired(names, run_ids: list[str]) -> int:
    """Wait for the runs' supervisors to exit; how many are still alive at the deadline."""
    deadline = time.monotonic() + RETIRE_WAIT_S
    while True:
        alive = 0
        for run_id in run_ids:
            try:
                ray.get_actor(names.flow_run(run_id), namespace=names.namespace)
                alive += 1
            except ValueError:
                pass
        if alive == 0 or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def test_twenty_runs_of_twelve_agents_at_once(orch, repo):
    before_repo = fingerprint(repo)
    names = orch.names
    # Warm up: the model deployment, the agents and the log are running before measuring.
    first = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="warm-up"))
    assert orch.wait(first, 120) == "finished"
    assert _retired(names, [first]) == 0

    info = ray.get(orch.log.handle.info.remote())
    mem = Memory(info["pid"])
    log0, workers0, procs0 = mem.sample()
    seq0, batches0 = info["max_seq"], info["batches"]

    # A live subscriber, as the pane would be: how long from an event's creation to its arrival.
    lags: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        sub = orch.log.subscribe(seq0)
        while not stop.is_set():
            for rec in sub.get(timeout=0.5):
                lags.append(time.time() - rec.event.ts)

    def sample() -> None:
        while not stop.is_set():
            mem.sample()
            stop.wait(0.5)

    threads = [threading.Thread(target=watch, daemon=True), threading.Thread(target=sample, daemon=True)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    try:
        ids = [
            orch.launch(
                LaunchRequest(
                    flow="code-review", repo=str(repo), band="large", personas=PERSONAS, text=f"load {i}"
                )
            )
            for i in range(RUNS)
        ]
        launched = time.monotonic() - t0
        statuses = [orch.wait(run_id, 600) for run_id in ids]
        wall = time.monotonic() - t0
        time.sleep(1.0)  # the subscriber's last poll
    finally:
        stop.set()
        for t in threads:
            t.join(5)

    assert statuses == ["finished"] * RUNS
    for run_id in ids:
        state = orch.state(run_id)
        assert len(state.steps) == STEPS
        assert all(st.status == "finished" and st.attempt == 1 for st in state.steps.values())
        assert "calc.py:7" in orch.report(run_id, "md")
    assert fingerprint(repo) == before_repo

    # The writer kept up: a live subscriber got every event, soon after it was made.
    info = ray.get(orch.log.handle.info.remote())
    events = info["max_seq"] - seq0
    batches = info["batches"] - batches0
    assert len(lags) == events
    lags.sort()
    p50, p99, worst = statistics.median(lags), lags[int(0.99 * (len(lags) - 1))], lags[-1]

    # Memory: the supervisors end with their runs; the log does not keep what it wrote.
    alive = _retired(names, ids)
    log1, workers1, procs1 = mem.sample()

    print(
        f"\n{RUNS} runs x {STEPS} steps: launched in {launched:.1f}s, all finished in {wall:.1f}s; "
        f"{events} events in {batches} commits ({events / max(batches, 1):.1f} per commit, "
        f"{events / wall:.0f} events/s)\n"
        f"live lag: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms\n"
        f"event-log actor RSS: {_mb(log0)} MB before, peak {_mb(mem.peak_log)} MB, {_mb(log1)} MB after\n"
        f"Ray worker processes: {procs0} using {_mb(workers0)} MB before; peak {mem.peak_procs} using "
        f"{_mb(mem.peak_workers)} MB; {procs1} using {_mb(workers1)} MB after (FlowRuns alive: {alive})"
    )
    assert p99 < 5.0, f"the log fell behind: p99 lag {p99:.2f}s"
    assert alive == 0, "run supervisors outlived their runs"
    assert mem.peak_log - log0 < 512 * 2**20, "the log actor grew with the load"
    assert workers1 - workers0 < 512 * 2**20, "worker memory did not come back after the runs"
    # A supervisor per run costs a process; twenty at once must fit with room to spare.
    assert mem.peak_workers - workers0 < RUNS * 300 * 2**20
