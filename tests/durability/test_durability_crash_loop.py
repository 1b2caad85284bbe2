"""The crash loop: ``orchestrator serve`` killed with SIGKILL at random moments, and restarted.

A real ``serve`` process (its own local Ray, the scripted model streaming slowly, tool calls,
the validator) runs code reviews while a client follows every run's committed events through
the REST events endpoint, as the pane does; what that client saw is what was acknowledged. Each
trial keeps two runs going (a fresh one when it aims at a tool call or a commit), waits for a
moment (an analyst streaming its answer then a random wait, a tool call, the validator
beginning to stream then a random wait, the event log inside a commit's write or fdatasync, or a random
delay), then kills the server: usually the whole instance (every process of its session, see
``durability_server``), three times in ten the serve process alone. After each whole kill, a
copy of the data directory's DuckDB file is checked (while ``serve`` starts again): every
acknowledged event is there unchanged, seqs are dense, keys unique, and the projections equal a
rebuild. ``serve`` starts again on the same directory (its stale ``server.json`` and the file
left by the dead process must not stop it) and resumes the runs.

At the end every run has finished with each step's text exactly as streamed once, each tool
call and outcome recorded once, the report holds each step's summary once, the kills did land
mid-stream, in the validator and in a commit, and a report sent to chat before a later kill is
not sent again when asked again after it.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from durability_checks import check_finished_run, check_log, copy_log, kill_points
from durability_script import make_repo, script
from durability_server import COMMIT_SYSCALLS, Server, Watcher
from events.duckdb_log import DuckDBLog

pytestmark = [pytest.mark.slow]

# (what the kill aims at, whether it kills the whole instance): ten kills, three of the serve
# process alone; a commit can only be aimed at by killing the instance.
PLAN = (
    ("stream", True),
    ("tool", True),
    ("validator", False),
    ("commit", True),
    ("random", True),
    ("stream", False),
    ("validator", True),
    ("commit", True),
    ("tool", False),
    ("random", True),
)
LIVE = 2  # runs kept going at each kill
WAIT = 30.0  # seconds to wait for an aimed-at moment before killing anyway


def kill_moment(target: str, watcher: Watcher, since: float, rng: random.Random, top_up) -> str:
    """Wait for the moment named by ``target`` (events seen after ``since``), calling
    ``top_up`` now and then (runs may end meanwhile); what the kill actually hit is judged
    later, from the log."""
    if target == "random":
        time.sleep(rng.uniform(0.2, 3.0))
        return target

    def wanted(ev: dict) -> bool:
        kind, validator = ev["kind"], "validator" in ev.get("step_id", "")
        if target == "tool":
            return kind == "tool_called"
        if kind != "output_delta":
            return False
        if target == "stream":
            return not validator and ev.get("turn") == 1
        if target == "validator":  # its first piece: the rest streams for seconds yet
            return validator and ev.get("offset", 0) == 0  # (0 is left out of the JSON)
        return target == "commit"  # anything streaming: commits flow

    deadline = time.monotonic() + WAIT
    topped = time.monotonic()
    while time.monotonic() < deadline:
        if watcher.first(since, wanted) is not None:
            time.sleep({"stream": rng.uniform(0.0, 0.4), "validator": rng.uniform(0.0, 0.5)}.get(target, 0.0))
            return target
        if time.monotonic() - topped > 0.5:
            top_up()
            topped = time.monotonic()
        time.sleep(0.02)
    return f"{target} (not seen in {WAIT:g} s: killed anyway)"


def status(client, run_id: str) -> str:
    return client.get(f"api/runs/{run_id}").json()["run"]["status"]


def wait_finished(client, runs: list[str], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    for run_id in runs:
        while (st := status(client, run_id)) not in ("finished", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"{run_id} never finished"
            time.sleep(0.1)
        assert st == "finished", f"{run_id} ended {st}"


@pytest.mark.timeout(1200)
def test_crash_loop_every_run_finishes_and_nothing_acknowledged_is_lost(tmp_path):
    rng = random.Random(9)
    repo = make_repo(tmp_path / "repos" / "calc")
    script_file = tmp_path / "script.json"
    script_file.write_text(json.dumps(script(tokens_per_s=40, validator_tokens_per_s=0.75)))
    server = Server(tmp_path / "data", script=script_file, env={"ORCH_REPO_ROOTS": str(tmp_path / "repos")})
    watcher = Watcher(server)
    checker = ThreadPoolExecutor(max_workers=1)
    checks: list[Future] = []
    started = time.monotonic()
    restarts: list[float] = []
    aimed: list[str] = []
    first = None  # the answer to the send
    try:
        server.start()
        watcher.start()
        up = time.monotonic()

        def top_up(fresh: int = 0) -> None:
            """Keep LIVE runs going, so that every kill lands in some work; ``fresh`` more at least."""
            ended = watcher.ended()
            live = [r for r in watcher.runs if r not in ended]
            with server.client() as c:
                for _ in range(max(LIVE - len(live), fresh)):
                    resp = c.post("api/runs", json={"flow": "code-review", "repo": str(repo), "text": f"run {len(watcher.runs)}"})
                    assert resp.status_code == 201, resp.text
                    watcher.runs.append(resp.json()["run_id"])

        for trial, (target, whole) in enumerate(PLAN):
            last = trial == len(PLAN) - 1
            # A fresh run when aiming at a tool call (resumed runs are past theirs) or a commit
            # (its four analysts stream for seconds, so commits flow).
            top_up(1 if target in ("tool", "commit") else 0)
            with server.client() as c:
                # Send the first run's report to chat once it is done, with a kill still to come.
                if first is None and (watcher.runs[0] in watcher.ended() or last):
                    wait_finished(c, watcher.runs[:1])
                    first = c.post(f"api/runs/{watcher.runs[0]}/send", json={"request_id": "crash-loop-send"}).json()
                    assert first["repeated"] is False and first["seq"] > 0
            # A commit is aimed at while something streams now, so that commits flow; the
            # validator as it begins now, so that it is still streaming at the kill.
            fresh = target in ("commit", "validator")
            moment = kill_moment(target, watcher, time.monotonic() if fresh else up, rng, top_up)
            if target == "commit":
                moment += f" ({server.kill_in_commit()})"
            else:
                server.kill(whole=whole)
            aimed.append(moment)
            if whole:  # nothing of that instance is left: its file is checked as it was left
                work = copy_log(server.data_dir, tmp_path / f"check-{trial}")
                checks.append(checker.submit(check_log, work, watcher.acknowledged()))
            t0 = time.monotonic()
            server.start()
            up = time.monotonic()
            restarts.append(up - t0)
            print(f"trial {trial}: aimed at {moment}, {'whole instance' if whole else 'serve process'} killed, "
                  f"serving again after {restarts[-1]:.1f}s", flush=True)
        for check in checks:
            check.result()  # raises what a check of a killed server's file found

        with server.client() as c:
            # Asked again after the kill, the same request is answered from the log: no second send.
            again = c.post(f"api/runs/{watcher.runs[0]}/send", json={"request_id": "crash-loop-send"}).json()
            assert again["repeated"] is True and again["seq"] == first["seq"]
            wait_finished(c, watcher.runs)
            reports = {r: c.get(f"api/runs/{r}/report", params={"format": "md"}).text for r in watcher.runs}
        watcher.caught_up()  # it has seen the last events
        watcher.stop()
        assert server.stop() == 0  # a graceful stop after all that
        server.wait_gone()

        # The whole log, as the last server left it.
        work = copy_log(server.data_dir, tmp_path / "check")
        check_log(work, watcher.acknowledged())
        coverage: Counter[str] = Counter()
        with DuckDBLog(str(work / "events.duckdb")) as log:
            for run_id in watcher.runs:
                recs = log.read(0, run_id=run_id)
                check_finished_run(recs, reports[run_id])
                for _, where in kill_points(recs):
                    coverage.update(where)
            sent = [r for r in log.read(0, run_id=watcher.runs[0]) if r.event.__struct_config__.tag == "report_sent"]
            assert len(sent) == 1  # sent once, though asked twice across a kill
    finally:
        watcher.stop()
        server.cleanup()
        checker.shutdown(wait=True, cancel_futures=True)
    took = time.monotonic() - started
    print(f"\ncrash loop: {len(PLAN)} kills aimed at {aimed}; {len(watcher.runs)} runs; they left runs "
          f"{dict(coverage)}; restart to serving p50 {sorted(restarts)[len(restarts) // 2]:.1f}s, "
          f"max {max(restarts):.1f}s; total {took:.0f}s")
    # The kills did land mid-stream and in the validator, not only between steps: each kill
    # aimed at a stream left a run mid-stream (the others land wherever the runs are, often
    # in a tool call's stream or between steps, and are not counted on).
    aimed_at_stream = sum(1 for target, _ in PLAN if target == "stream")
    assert coverage["mid-stream"] >= aimed_at_stream, coverage
    assert coverage["validator streaming"] >= 1, coverage
    if COMMIT_SYSCALLS:  # /proc names the system calls on this machine: a kill hit a commit
        assert any(a.endswith(("(write)", "(fdatasync)", "(fsync)", "(pwrite64)")) for a in aimed), aimed
