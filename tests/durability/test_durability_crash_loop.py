"""The crash loop: ``orchestrator serve`` killed with SIGKILL at random moments, and restarted.

A real ``serve`` process (its own local Ray, the scripted model streaming slowly, tool calls,
the validator) runs code reviews while a client follows every run's committed events through
the REST events endpoint, as the pane does; what that client saw is what was acknowledged.
Each trial launches a run, waits for a moment (an analyst streaming its answer, a tool call,
the validator streaming, or a random delay), then kills the server: usually the whole instance
(every process of its session, see ``durability_server``), every third time the serve process
alone. After each whole kill, a copy of the data directory's DuckDB file is checked: every
acknowledged event is there unchanged, seqs are dense, keys unique, and the projections equal
a rebuild. Then ``serve`` starts again on the same directory (its stale ``server.json`` and
the file left by the dead process must not stop it) and resumes the runs.

At the end every run has finished with each step's text exactly as streamed once, the report
holds each step's summary once, and a report sent to chat before the last kill is not sent
again when asked again after it.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from durability_checks import check_finished_run
from durability_script import make_repo, script
from durability_server import Server, Watcher
from events.duckdb_log import DuckDBLog
from events.types import OutputDelta, RunResumed, StepFinished, StepStarted, ToolCalled, ToolResult
from projections import rebuild
from tests.projections.projection_scenarios import tables

pytestmark = [pytest.mark.slow]

TRIALS = 10
TARGETS = ("stream", "tool", "validator", "random")


def kill_moment(target: str, watcher: Watcher, since: float, rng: random.Random) -> str:
    """Wait for the moment named by ``target``; what the kill actually hit is judged later."""
    if target == "random":
        time.sleep(rng.uniform(0.2, 3.0))
        return target
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for ev in watcher.since(since):
            kind, step = ev["kind"], ev.get("step_id", "")
            if target == "tool" and kind == "tool_called":
                return target
            if target == "stream" and kind == "output_delta" and ev.get("turn") == 1:
                time.sleep(rng.uniform(0.0, 0.4))
                return target
            if target == "validator" and kind == "output_delta" and "validator" in step:
                time.sleep(rng.uniform(0.0, 0.3))
                return target
        time.sleep(0.02)
    return f"{target} (not seen in 15 s: killed anyway)"


def check_file(data_dir: Path, work: Path, acknowledged: dict[int, dict]) -> int:
    """On a copy of the log file: acknowledged events unchanged, dense seqs, unique keys,
    projections equal to a rebuild. Returns the number of events."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    for name in ("events.duckdb", "events.duckdb.wal"):
        if (data_dir / name).exists():
            shutil.copy(data_dir / name, work / name)
    con = duckdb.connect(str(work / "events.duckdb"))  # replays the write-ahead log
    try:
        rows = con.execute("SELECT seq, key, body FROM events ORDER BY seq").fetchall()
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), "seqs are not dense"
        assert len({r[1] for r in rows}) == len(rows), "a key was written twice"
        bodies = {seq: body for seq, _, body in rows}
        for seq, event in acknowledged.items():
            assert seq in bodies, f"acknowledged seq {seq} ({event['kind']}) was lost"
            assert json.loads(bodies[seq]) == event, f"acknowledged seq {seq} changed"
        live = tables(con)
        rebuild(con)
        assert tables(con) == live, "the projections differ from a rebuild of the log"
        return len(rows)
    finally:
        con.close()


def hit(records, resumed_seq: int, run_id: str) -> set[str]:
    """Where a kill left one run: judged from what it had committed before its resume."""
    last: dict[str, object] = {}
    finished: set[str] = set()
    for rec in records:
        if rec.seq >= resumed_seq:
            break
        ev = rec.event
        if getattr(ev, "step_id", None) and isinstance(ev, StepStarted | OutputDelta | ToolCalled | ToolResult | StepFinished):
            last[ev.step_id] = ev
            if isinstance(ev, StepFinished):
                finished.add(ev.step_id)
    out = set()
    for step_id, ev in last.items():
        if step_id in finished:
            continue
        if isinstance(ev, OutputDelta):
            out.add("validator streaming" if "validator" in step_id else "mid-stream")
        elif isinstance(ev, ToolCalled):
            out.add("between a tool call and its result")
        elif isinstance(ev, ToolResult):
            out.add("after a tool result, before the next turn")
        elif isinstance(ev, StepStarted):
            out.add("step started, nothing streamed")
    return out


def wait_finished(client, runs: list[str], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    for run_id in runs:
        while (status := client.get(f"api/runs/{run_id}").json()["run"]["status"]) not in ("finished", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"{run_id} never finished"
            time.sleep(0.2)
        assert status == "finished", f"{run_id} ended {status}"


@pytest.mark.timeout(1200)
def test_crash_loop_every_run_finishes_and_nothing_acknowledged_is_lost(tmp_path):
    rng = random.Random(9)
    repo = make_repo(tmp_path / "repos" / "calc")
    script_file = tmp_path / "script.json"
    script_file.write_text(json.dumps(script(tokens_per_s=40, validator_tokens_per_s=2)))
    server = Server(tmp_path / "data", script=script_file, env={"ORCH_REPO_ROOTS": str(tmp_path / "repos")})
    watcher = Watcher(server)
    started = time.monotonic()
    restarts: list[float] = []
    aimed: list[str] = []
    try:
        server.start()
        watcher.start()
        for trial in range(TRIALS):
            up = time.monotonic()
            with server.client() as c:
                if trial < TRIALS - 1:
                    resp = c.post("api/runs", json={"flow": "code-review", "repo": str(repo), "text": f"trial {trial}"})
                    assert resp.status_code == 201, resp.text
                    watcher.runs.append(resp.json()["run_id"])
                else:  # before the last kill, send the first run's report to chat
                    wait_finished(c, watcher.runs[:1])
                    first = c.post(f"api/runs/{watcher.runs[0]}/send", json={"request_id": "crash-loop-send"}).json()
                    assert first["repeated"] is False and first["seq"] > 0
            aimed.append(kill_moment(TARGETS[trial % len(TARGETS)], watcher, up, rng))
            whole = trial % 3 != 2
            server.kill(whole=whole)
            if whole:  # nothing of that instance is left: the file can be read as it was left
                check_file(server.data_dir, tmp_path / "check", watcher.acknowledged())
            t0 = time.monotonic()
            server.start()
            restarts.append(time.monotonic() - t0)
            print(f"trial {trial}: aimed at {aimed[-1]}, {'whole instance' if whole else 'serve process'} killed, "
                  f"serving again after {restarts[-1]:.1f}s", flush=True)

        with server.client() as c:
            # Asked again after the kill, the same request is answered from the log: no second send.
            again = c.post(f"api/runs/{watcher.runs[0]}/send", json={"request_id": "crash-loop-send"}).json()
            assert again["repeated"] is True and again["seq"] == first["seq"]
            wait_finished(c, watcher.runs)
            reports = {r: c.get(f"api/runs/{r}/report", params={"format": "md"}).text for r in watcher.runs}
        time.sleep(0.3)  # let the watcher see the last events
        watcher.stop()
        assert server.stop() == 0  # a graceful stop after all that
        server.wait_gone()

        # The whole log, as the last server left it.
        check_file(server.data_dir, tmp_path / "check", watcher.acknowledged())
        coverage: Counter[str] = Counter()
        with DuckDBLog(str(tmp_path / "check" / "events.duckdb")) as log:
            for run_id in watcher.runs:
                recs = log.read(0, run_id=run_id)
                check_finished_run(recs, reports[run_id])
                for rec in recs:
                    if isinstance(rec.event, RunResumed):
                        coverage.update(hit(recs, rec.seq, run_id))
            sent = [r for r in log.read(0, run_id=watcher.runs[0]) if r.event.__struct_config__.tag == "report_sent"]
            assert len(sent) == 1  # sent once, though asked twice across a kill
    finally:
        watcher.stop()
        server.cleanup()
    took = time.monotonic() - started
    print(f"\ncrash loop: {TRIALS} kills aimed at {Counter(aimed)}; they left runs {dict(coverage)}; "
          f"restart to serving p50 {sorted(restarts)[len(restarts) // 2]:.1f}s, max {max(restarts):.1f}s; "
          f"total {took:.0f}s")
    # The kills did land mid-stream and in the validator, not only between steps.
    assert coverage["mid-stream"] >= 3 and coverage["validator streaming"] >= 1, coverage
