"""Actors that die while the server runs: an agent killed mid-stream, the event log killed under
load. Real Ray, the real DuckDB file, the scripted engine; the runs must complete with every
step's text exactly once and nothing acknowledged lost.
"""

from __future__ import annotations

import json
import shutil

import pytest
import ray

from actors.service import LaunchRequest
from durability_checks import check_finished_run, records, wait_until
from durability_script import answer
from events.codec import encode
from events.types import OutputDelta, RunResumed, StepFinished, StepQueued, StepStarted
from tests.projections.projection_scenarios import equals_rebuild

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def log_pid(handle) -> int | None:
    try:
        return ray.get(handle.info.remote(), timeout=10)["pid"]
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None  # still restarting


def streaming_answer(orch, run_id: str):
    """(step, worker) of a step that has streamed part of its answer (after its tool call) and
    has at least half of it still to stream, so a kill now lands mid-stream even when a loaded
    machine is slow to get here (the agent coalesces more text into each delta then)."""
    persona, started, finished, streamed = {}, {}, set(), {}
    for rec in orch.events(run_id):
        ev = rec.event
        if isinstance(ev, StepQueued):
            persona[ev.step_id] = ev.persona
        elif isinstance(ev, StepStarted):
            started[ev.step_id] = ev.worker
        elif isinstance(ev, StepFinished):
            finished.add(ev.step_id)
        elif isinstance(ev, OutputDelta) and ev.turn == 1 and ev.text:
            streamed[ev.step_id] = streamed.get(ev.step_id, 0) + len(ev.text)
    for step_id, chars in streamed.items():
        if step_id not in finished and chars <= len(json.dumps(answer(persona[step_id]))) // 2:
            return step_id, started[step_id]
    return None


def test_an_agent_killed_mid_stream_is_continued_and_the_run_completes(orch, repo):
    run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="dead agent"))
    step_id, worker = wait_until(lambda: streaming_answer(orch, run_id), "a step streaming its answer")
    agents = [ray.get_actor(orch.names.agent(i), namespace=orch.names.namespace) for i in range(orch.names.pool_size)]
    victim = next(a for a in agents if a._actor_id.hex() in worker)
    ray.kill(victim, no_restart=False)  # as if its process died; Ray starts it again

    assert orch.wait(run_id, 180) == "finished"
    found = check_finished_run(records(orch, run_id), orch.report(run_id, "md"))
    mine = [p for p in found if p.step_id == step_id]
    # The step was picked up once, in the same attempt, exactly where its committed text ended.
    assert len(mine) == 1 and not mine[0].new_attempt
    assert 0 < mine[0].committed == mine[0].continued_from == mine[0].first_delta_offset
    assert mine[0].regenerated_chars == 0
    # ...by another agent: the supervisor does not send it back to the one being restarted.
    starts = [r.event for r in records(orch, run_id) if isinstance(r.event, StepStarted) and r.event.step_id == step_id]
    assert len(starts) == 2 and starts[0].worker == worker
    assert victim._actor_id.hex() not in starts[1].worker


def test_a_supervisor_killed_mid_run_is_replaced_and_the_run_completes(orch, repo):
    run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="dead supervisor"))
    step_id, _ = wait_until(lambda: streaming_answer(orch, run_id), "a step streaming its answer")
    supervisor = ray.get_actor(orch.names.flow_run(run_id), namespace=orch.names.namespace)
    ray.kill(supervisor, no_restart=True)  # as if its process died; nothing restarts it by itself

    assert orch.wait(run_id, 180) == "finished"
    found = check_finished_run(records(orch, run_id), orch.report(run_id, "md"))
    resumed = [r.event for r in records(orch, run_id) if isinstance(r.event, RunResumed)]
    assert [e.reason for e in resumed] == ["its supervisor was lost"]
    assert step_id in resumed[0].in_flight
    # The new supervisor picked the streaming step up once, where the log left it.
    mine = [p for p in found if p.step_id == step_id]
    assert len(mine) == 1 and not mine[0].new_attempt
    assert 0 < mine[0].committed == mine[0].continued_from


def test_a_supervisor_that_gave_up_is_replaced_and_wait_follows_it_to_the_end(orch, repo):
    from actors.flow_run import FlowRunActor
    from actors.orchestrator import _gone

    class SilentLog:  # a log that does not answer (pickled by value: defined here)
        async def read_async(self, *args, **kwargs):
            raise ConnectionError("the log did not answer")

        async def append_async(self, *args, **kwargs):
            raise ConnectionError("the log did not answer")

    # The next run's supervisor gives up at once, as one does after a log outage: it ends with
    # the run unfinished, alive, and its wait() answers.
    run_id, spare = orch._take_spare()
    _gone(spare)
    silent = FlowRunActor.options(name=orch.names.flow_run(run_id), namespace=orch.names.namespace)
    orch._spare = (run_id, silent.remote(orch.names, orch.settings, run_id, log=SilentLog()))
    assert orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="gave up")) == run_id

    assert orch.wait(run_id, 180) == "finished"  # not the status the one that gave up had
    check_finished_run(records(orch, run_id), orch.report(run_id, "md"))
    resumed = [r.event for r in records(orch, run_id) if isinstance(r.event, RunResumed)]
    assert [e.reason for e in resumed] == ["its supervisor was lost"]


def test_a_run_that_ended_leaves_nothing_of_its_watch_behind(orch, repo):
    run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="ends"))
    ray.kill(ray.get_actor(orch.names.flow_run(run_id), namespace=orch.names.namespace), no_restart=True)
    assert orch.wait(run_id, 180) == "finished"  # after one replacement
    assert orch.cancel(run_id) is False  # a cancel of an ended run, too
    # A server runs for months: the lock and the count of losses kept per run go with it.
    wait_until(lambda: run_id not in orch._run_locks and run_id not in orch._losses, "the watch to end", 10)


def test_wait_does_not_outlive_a_replacement_that_failed(orch, repo, monkeypatch):
    import threading

    run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="unreplaced"))
    wait_until(lambda: streaming_answer(orch, run_id), "a step streaming its answer")

    def refused(*args):
        raise OSError("No space left on device")

    # The log refuses the replacement's run_resumed, then the failure recorded instead: the run
    # stays unfinished, and nobody runs it any more.
    monkeypatch.setattr(orch, "_resumed", refused, raising=False)
    monkeypatch.setattr(orch, "_fail", refused, raising=False)
    ray.kill(ray.get_actor(orch.names.flow_run(run_id), namespace=orch.names.namespace), no_restart=True)
    got = []
    waiter = threading.Thread(target=lambda: got.append(orch.wait(run_id)), daemon=True)
    waiter.start()
    waiter.join(30)
    assert got == ["running"]  # what the log says, rather than waiting for a successor for ever
    assert orch.cancel(run_id, "test over") is True


def test_a_run_resumed_while_its_agents_outlived_the_server_runs_each_step_once(orch, repo, monkeypatch):
    # On a cluster the agents (detached) outlive a server that died: its steps stream on.
    run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="outlived"))
    wait_until(lambda: streaming_answer(orch, run_id), "a step streaming its answer")
    # As after a restart: nothing watches the old supervisor.
    monkeypatch.setattr(orch, "_replace", lambda run_id, lost: None, raising=False)
    ray.kill(ray.get_actor(orch.names.flow_run(run_id), namespace=orch.names.namespace), no_restart=True)
    orch._runs.pop(run_id)

    assert orch.resume_all() == [run_id]
    assert orch.wait(run_id, 180) == "finished"
    check_finished_run(records(orch, run_id), orch.report(run_id, "md"))  # no step ended twice


def in_flight(orch, runs: list[str], since: int) -> bool:
    """Some of ``runs`` has steps queued or running, and appends have gone on since ``since``."""
    marks = ", ".join("?" for _ in runs)
    busy = orch.log.query(
        f"SELECT count(*) FROM flow_runs WHERE run_id IN ({marks}) AND steps_running > 0", list(runs)
    ).rows[0][0]
    return busy > 0 and orch.log.max_seq() >= since + 5


def test_the_event_log_killed_under_load_recovers_and_nothing_is_lost_or_doubled(orch, repo, tmp_path):
    acknowledged = {r.seq: encode(r.event) for r in records(orch)}
    runs = [orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text=f"dead log {i}")) for i in range(3)]
    handle = orch.log.handle
    pids = [ray.get(handle.info.remote())["pid"]]
    since = orch.log.max_seq()
    for _ in range(2):
        # Kill it while the runs stream (agents, FlowRuns and this client all appending): when
        # a step is in flight and appends have gone on since the last restart. Not by a count
        # of events: under load the agents coalesce more text into fewer of them.
        wait_until(lambda: in_flight(orch, runs, since), "appends to go on with a step in flight")
        acknowledged.update((r.seq, encode(r.event)) for r in records(orch, after=max(acknowledged, default=0)))
        ray.kill(handle, no_restart=False)
        # Restarted by Ray: another process, which reopened the file.
        pids.append(wait_until(lambda: log_pid(handle) not in (None, pids[-1]) and log_pid(handle), "a restart"))
        since = orch.log.max_seq()

    assert [orch.wait(r, 180) for r in runs] == ["finished"] * 3
    for run_id in runs:
        check_finished_run(records(orch, run_id), orch.report(run_id, "md"))

    # Every acknowledged event is still there, unchanged, and the seqs are dense.
    after = {r.seq: encode(r.event) for r in records(orch)}
    assert all(after.get(seq) == blob for seq, blob in acknowledged.items())
    count, keys, low, high = orch.log.query(
        "SELECT count(*), count(DISTINCT key), min(seq), max(seq) FROM events"
    ).rows[0]
    assert (count, keys, low, high) == (high, high, 1, orch.log.max_seq())

    # The projections the restarted log kept equal a rebuild from its events.
    orch.log.checkpoint()
    src = orch.settings.events_path
    copy = tmp_path / "events.duckdb"
    shutil.copy(src, copy)
    if src.with_name(src.name + ".wal").exists():
        shutil.copy(src.with_name(src.name + ".wal"), tmp_path / "events.duckdb.wal")
    equals_rebuild(copy)
