"""Resume benchmark: ``orchestrator serve`` killed with SIGKILL mid-run, again and again.

Each trial keeps a few code reviews in flight, waits a random moment after the (re)started
server's first streamed token, kills the server (the whole instance: every process of its
session, see ``tests/durability/durability_server.py``; ``--serve-only`` kills the serve
process alone), starts it again on the same data directory and times it. A client follows the
committed events over REST throughout, as the pane does.

Printed: time from restart to serving and to the first resumed token (p50/p99), how many
committed tokens each resumed step generated again (target 0 for engines that continue a
partial answer), runs lost (target 0), steps whose text ended up cut or doubled (scripted
engine only). Ends with one JSON line.

    python bench/resume.py [--trials 20] [--engine scripted|embedded] [--tokens-per-s 40]
                           [--no-continue] [--serve-only]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "durability"))

from durability_checks import check_finished_run, pickups  # noqa: E402
from durability_script import make_repo, script  # noqa: E402
from durability_server import Server, Watcher  # noqa: E402

IN_FLIGHT = 2  # runs kept going at each kill


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))]


def streamed(ev: dict) -> bool:
    return ev["kind"] == "output_delta" and bool(ev.get("text"))


def to_stream(watcher: Watcher) -> set[tuple[str, str]]:
    """Steps the client has not seen finish (of runs it has not seen end): work that a
    restarted server must stream."""
    planned, done, ended = set(), set(), set()
    for ev in watcher.since(0):
        if ev["kind"] == "run_planned":
            planned |= {(ev["run_id"], s["step_id"]) for s in ev["steps"]}
        elif ev["kind"] in ("step_finished", "step_failed"):
            done.add((ev["run_id"], ev["step_id"]))
        elif ev["kind"] in ("run_finished", "run_failed", "run_cancelled"):
            ended.add(ev["run_id"])
    return {(r, s) for r, s in planned - done if r not in ended}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--engine", choices=("scripted", "embedded"), default="scripted")
    ap.add_argument("--tokens-per-s", type=float, default=40.0, help="scripted engine's token rate")
    ap.add_argument("--serve-only", action="store_true", help="kill the serve process alone, not its Ray")
    ap.add_argument("--no-continue", action="store_true",
                    help="scripted engine that cannot continue a partial answer (resumes as new attempts)")
    ap.add_argument("--max-tokens", type=int, default=96, help="step token limit (embedded engine)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    repo = make_repo(work / "repos" / "calc")
    env = {"ORCH_REPO_ROOTS": str(work / "repos")}
    script_file = None
    if args.engine == "scripted":
        script_file = work / "script.json"
        scripted = script(tokens_per_s=args.tokens_per_s, validator_tokens_per_s=4)
        scripted["supports_continue"] = not args.no_continue
        script_file.write_text(json.dumps(scripted))
    else:
        env["ORCH_STEP_MAX_TOKENS"] = str(args.max_tokens)
    server = Server(work / "data", engine=args.engine, script=script_file, env=env)
    watcher = Watcher(server)
    to_serving: list[float] = []
    to_token: list[float] = []
    no_token = 0
    runs_done: set[str] = set()
    started = time.monotonic()
    try:
        server.start()
        watcher.start()
        up = time.monotonic()
        for trial in range(args.trials):
            # Keep IN_FLIGHT runs going, so that every kill lands in the middle of some work.
            with server.client() as c:
                for run_id in watcher.runs:
                    if run_id not in runs_done and c.get(f"api/runs/{run_id}").json()["run"]["status"] in ("finished", "failed", "cancelled"):
                        runs_done.add(run_id)
                while len([r for r in watcher.runs if r not in runs_done]) < IN_FLIGHT:
                    resp = c.post("api/runs", json={"flow": "code-review", "repo": str(repo), "text": f"trial {trial}"})
                    resp.raise_for_status()
                    watcher.runs.append(resp.json()["run_id"])
            deadline = time.monotonic() + 120
            while watcher.first(up, streamed) is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.2, 2.0))
            server.kill(whole=not args.serve_only)
            pending = to_stream(watcher)
            t0 = time.monotonic()
            server.start()
            to_serving.append(time.monotonic() - t0)
            first = None
            if pending:
                deadline = time.monotonic() + 120
                while (first := watcher.first(t0, streamed)) is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                if first is None:
                    no_token += 1
                else:
                    to_token.append(first - t0)
            up = t0
            print(
                f"trial {trial + 1}/{args.trials}: serving after {to_serving[-1]:.1f}s, first resumed token "
                + (f"after {first - t0:.1f}s" if first is not None else "never (120 s)" if pending else "n/a (every run had ended)"),
                flush=True,
            )
        # Let every run finish, then read the log as the last server left it.
        with server.client() as c:
            deadline = time.monotonic() + 600
            for run_id in watcher.runs:
                while c.get(f"api/runs/{run_id}").json()["run"]["status"] not in ("finished", "failed", "cancelled"):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.3)
            reports = {}
            for run_id in watcher.runs:
                resp = c.get(f"api/runs/{run_id}/report", params={"format": "md"})
                reports[run_id] = resp.text if resp.status_code == 200 else None
        watcher.stop()
        server.stop()
        server.wait_gone()
    finally:
        watcher.stop()
        server.cleanup()

    from events.duckdb_log import DuckDBLog
    from conductor.state import fold

    lost, damaged, regenerated, new_attempts = [], [], [], 0
    with DuckDBLog(str(work / "data" / "events.duckdb")) as log:
        for run_id in watcher.runs:
            recs = log.read(0, run_id=run_id)
            state = fold(r.event for r in recs)
            if state.status != "finished":
                lost.append(run_id)
            for p in pickups(recs):
                if p.committed:  # a step that had streamed text when it was killed
                    regenerated.append(p.regenerated_tokens)
                    new_attempts += p.new_attempt
            if args.engine == "scripted" and state.status == "finished":
                try:
                    check_finished_run(recs, reports.get(run_id))
                except AssertionError as exc:
                    damaged.append(f"{run_id}: {exc}")
    took = time.monotonic() - started
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"resume benchmark: {args.trials} kills ({'serve process' if args.serve_only else 'whole instance'}), "
          f"engine {args.engine}{' (cannot continue)' if args.no_continue else ''}, {len(watcher.runs)} runs, {took:.0f} s")
    print(f"  restart -> serving:             p50 {pct(to_serving, 50):6.2f} s   p99 {pct(to_serving, 99):6.2f} s")
    print(f"  restart -> first resumed token: p50 {pct(to_token, 50):6.2f} s   p99 {pct(to_token, 99):6.2f} s"
          + (f"   ({no_token} restarts streamed nothing within 120 s)" if no_token else ""))
    mean = sum(regenerated) / len(regenerated) if regenerated else 0.0
    print(f"  regenerated tokens per resumed step: mean {mean:.2f}, max {max(regenerated, default=0)} "
          f"over {len(regenerated)} steps killed mid-stream ({new_attempts} restarted as a new attempt)")
    print(f"  runs lost: {len(lost)}" + (f" {lost}" if lost else ""))
    if args.engine == "scripted":
        print(f"  runs with a step's text cut or doubled: {len(damaged)}")
        for line in damaged:
            print(f"    {line}")
    print(json.dumps({
        "bench": "resume",
        "engine": args.engine + (" (cannot continue)" if args.no_continue else ""),
        "kill": "serve-only" if args.serve_only else "whole-instance",
        "trials": args.trials,
        "runs": len(watcher.runs),
        "restart_to_serving_p50_s": round(pct(to_serving, 50), 3),
        "restart_to_serving_p99_s": round(pct(to_serving, 99), 3),
        "restart_to_first_token_p50_s": round(pct(to_token, 50), 3),
        "restart_to_first_token_p99_s": round(pct(to_token, 99), 3),
        "restarts_without_token": no_token,
        "resumed_steps": len(regenerated),
        "regenerated_tokens_mean": round(mean, 3),
        "regenerated_tokens_max": max(regenerated, default=0),
        "new_attempts": new_attempts,
        "runs_lost": len(lost),
        "runs_damaged": len(damaged) if args.engine == "scripted" else None,
        "seconds": round(took, 1),
    }))
    return 1 if lost or damaged else 0


if __name__ == "__main__":
    sys.exit(main())
