"""Resume benchmark: ``orchestrator serve`` killed with SIGKILL mid-run, again and again.

Each trial keeps two code reviews in flight, waits for a kill moment, kills the server (the
whole instance: every process of its session, see ``tests/durability/durability_server.py``;
``--serve-only`` kills the serve process alone), starts it again on the same data directory
and times it. A client follows the committed events over REST throughout, as the pane does.
The kill moments come in turn:

    stream     an analyst streaming its answer (then 0-0.4 s more; with a real model, any of
               its turns)
    tool-call  an analyst streaming its tool call (then 0-0.15 s more; scripted engine only,
               a real model's first turn may be a tool call or the answer)
    tool       as soon as a tool call is seen committed (its result may or may not be)
    commit     the event log inside a commit's write-ahead-log write or fdatasync, seen in
               /proc (whole-instance kills only)
    validator  the validator streaming (then 0-0.3 s more)
    random     0.2-3 s after the server came up

Where each kill actually left each run is judged afterwards from the log and printed.

Printed per engine: time from restart to serving and to the first resumed token (p50/p99; a
resumed token is text a resumed run streamed after its ``run_resumed``, never text committed
before the kill and seen late), beside the reference time from launch to the first token of a
fresh run on the same server lives, how many committed tokens each resumed step generated again
(target 0 for engines that continue a partial answer), runs lost (target 0), acknowledged
events missing from the log, and steps whose text ended up cut or doubled (scripted engine
only). Each engine ends with one JSON line.

    python bench/resume.py [--trials 30] [--engine scripted|embedded|scripted,embedded]
                           [--tokens-per-s 40] [--no-continue] [--serve-only]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "durability"))

from durability_checks import check_finished_run, check_log_copy, kill_points, pickups  # noqa: E402
from durability_script import make_repo, script  # noqa: E402
from durability_server import Server, Watcher  # noqa: E402

IN_FLIGHT = 2  # runs kept going at each kill
TARGETS = ("stream", "tool-call", "tool", "commit", "validator", "random")
TOKEN_WAIT = 120.0  # seconds a restarted server has to stream its first resumed token


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (with 30 samples, p99 is the largest)."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))]


def wait_moment(target: str, watcher: Watcher, since: float, rng: random.Random, timeout: float, turns: bool,
                top_up=lambda: None) -> str:
    """Wait for the moment named by ``target`` (events seen after ``since``), calling
    ``top_up`` now and then (runs may end meanwhile); returns what was aimed at. The kill
    itself is the caller's."""
    if target == "random":
        time.sleep(rng.uniform(0.2, 3.0))
        return target

    def wanted(ev: dict) -> bool:
        kind, validator = ev["kind"], "validator" in ev.get("step_id", "")
        if target == "tool":
            return kind == "tool_called"
        if kind != "output_delta" or not ev.get("text"):
            return False
        if target == "validator":
            return validator
        if target == "stream":  # the answer after the tool call, when the script has one
            return not validator and (ev.get("turn", 0) >= 1 or not turns)
        if target == "tool-call":
            return not validator and ev.get("turn", 0) == 0
        return True  # commit: anything streaming, so commits are flowing

    deadline = time.monotonic() + timeout
    topped = time.monotonic()
    while time.monotonic() < deadline:
        if watcher.first(since, wanted) is not None:
            time.sleep({"stream": rng.uniform(0, 0.4), "tool-call": rng.uniform(0, 0.15),
                        "validator": rng.uniform(0, 0.3)}.get(target, 0.0))
            return target
        if time.monotonic() - topped > 0.5:
            top_up()
            topped = time.monotonic()
        time.sleep(0.01)
    return f"{target} (not seen in {timeout:g} s: killed anyway)"


def bench(engine: str, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix=f"bench-resume-{engine}-"))
    repo = make_repo(work / "repos" / "calc")
    env = {"ORCH_REPO_ROOTS": str(work / "repos")}
    script_file = None
    if engine == "scripted":
        script_file = work / "script.json"
        scripted = script(tokens_per_s=args.tokens_per_s, validator_tokens_per_s=2)
        scripted["supports_continue"] = not args.no_continue
        script_file.write_text(json.dumps(scripted))
    else:
        env["ORCH_STEP_MAX_TOKENS"] = str(args.max_tokens)
    wait = 60.0 if engine == "scripted" else 240.0
    # A model's first turn may be a tool call or its answer: "tool-call" is the script's.
    targets = [t for t in TARGETS if not (args.serve_only and t == "commit") and (engine == "scripted" or t != "tool-call")]
    launched: dict[str, float] = {}
    server = Server(work / "data", engine=engine, script=script_file, env=env)
    watcher = Watcher(server)
    to_serving: list[float] = []
    to_token: list[float] = []
    aimed: list[str] = []
    no_token = nothing_left = 0
    load = [os.getloadavg()[0]]
    started = time.monotonic()
    reports: dict[str, str | None] = {}
    try:
        server.start()
        watcher.start()
        up = time.monotonic()

        def top_up(fresh: int = 0) -> None:
            """Keep IN_FLIGHT runs going, so that every kill lands in the middle of some work;
            ``fresh`` more at least."""
            ended = watcher.ended()
            live = len([r for r in watcher.runs if r not in ended])
            with server.client() as c:
                for _ in range(max(IN_FLIGHT - live, fresh)):
                    t = time.monotonic()
                    resp = c.post("api/runs", json={"flow": "code-review", "repo": str(repo), "text": f"run {len(launched)}"})
                    resp.raise_for_status()
                    watcher.runs.append(resp.json()["run_id"])
                    launched[watcher.runs[-1]] = t

        for trial in range(args.trials):
            target = targets[trial % len(targets)]
            # A fresh run when aiming at a tool call (resumed runs are past theirs) or a
            # commit (its analysts stream for a while, so commits flow).
            top_up(1 if target in ("tool", "commit") else 0)
            # A commit is aimed at while something streams now, so that commits flow.
            moment = wait_moment(target, watcher, time.monotonic() if target == "commit" else up, rng, wait,
                                 turns=engine == "scripted", top_up=top_up)
            if target == "commit":
                moment += f" ({server.kill_in_commit()})"
            else:
                server.kill(whole=not args.serve_only)
            aimed.append(moment)
            t0 = time.monotonic()
            server.start()
            up = time.monotonic()
            to_serving.append(up - t0)
            watcher.caught_up()  # it has seen every run_resumed this server wrote
            resumed = watcher.resumed(t0)
            first, note = None, "no run to resume"
            if resumed:
                deadline = time.monotonic() + TOKEN_WAIT
                while (first := watcher.first_resumed_token(t0)) is None:
                    if set(resumed) <= watcher.ended():
                        nothing_left += 1
                        note = "the resumed runs ended with nothing to stream"
                        break
                    if time.monotonic() > deadline:
                        no_token += 1
                        note = f"never ({TOKEN_WAIT:g} s)"
                        break
                    time.sleep(0.01)
            if first is not None:
                to_token.append(first - t0)
                note = f"after {first - t0:.2f}s"
            print(f"{engine} trial {trial + 1}/{args.trials}: killed at {moment}; serving after {to_serving[-1]:.1f}s, "
                  f"{len(resumed)} run(s) resumed, first resumed token {note}", flush=True)
        # Let every run finish, then read the log as the last server left it.
        with server.client() as c:
            deadline = time.monotonic() + 600
            while not set(watcher.runs) <= watcher.ended() and time.monotonic() < deadline:
                time.sleep(0.3)
            for run_id in watcher.runs:
                resp = c.get(f"api/runs/{run_id}/report", params={"format": "md"})
                reports[run_id] = resp.text if resp.status_code == 200 else None
        watcher.caught_up()
        watcher.stop()
        server.stop()
        server.wait_gone()
    finally:
        watcher.stop()
        server.cleanup()
    took = time.monotonic() - started
    load.append(os.getloadavg()[0])

    from conductor.state import fold
    from events.duckdb_log import DuckDBLog

    acknowledged = watcher.acknowledged()
    # The reference: launch -> first token of a fresh run on a live server (runs whose first
    # token came only after a kill are left out), same server lives, same load.
    to_first: list[float] = []
    firsts: dict[str, tuple[int, float] | None] = {}
    for seq in sorted(watcher.seen):
        when, run, ev = watcher.seen[seq]
        if run in firsts:
            continue
        if ev["kind"] == "run_resumed":
            firsts[run] = None
        elif ev["kind"] == "output_delta" and ev.get("text"):
            firsts[run] = (seq, when)
    for run, t in launched.items():
        if firsts.get(run):
            to_first.append(firsts[run][1] - t)
    try:
        check_log_copy(server.data_dir, work / "check", acknowledged)
        file_check = "ok"
    except AssertionError as exc:
        file_check = str(exc)
    lost, damaged, regenerated, new_attempts, bad_continues = [], [], [], 0, 0
    where: Counter[str] = Counter()
    with DuckDBLog(str(work / "check" / "events.duckdb")) as log:
        for run_id in watcher.runs:
            recs = log.read(0, run_id=run_id)
            state = fold(r.event for r in recs)
            if state.status != "finished":
                lost.append(f"{run_id} ({state.status})")
            for _, hit in kill_points(recs):
                where.update(hit)
            for p in pickups(recs):
                if p.committed:  # a step that had streamed text when it was killed
                    regenerated.append(p.regenerated_tokens)
                    new_attempts += p.new_attempt
                if not p.new_attempt and (p.continued_from != p.committed or p.first_delta_offset not in (None, p.committed)):
                    bad_continues += 1
            if engine == "scripted" and state.status == "finished":
                try:
                    check_finished_run(recs, reports.get(run_id))
                except AssertionError as exc:
                    damaged.append(f"{run_id}: {exc}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    label = engine + (" (cannot continue)" if args.no_continue and engine == "scripted" else "")
    mean = sum(regenerated) / len(regenerated) if regenerated else 0.0
    print()
    print(f"resume benchmark, engine {label}: {args.trials} kills "
          f"({'serve process' if args.serve_only else 'whole instance'}), {len(watcher.runs)} runs, {took:.0f} s, "
          f"load average {load[0]:.1f} -> {load[1]:.1f}")
    print(f"  kills aimed at: {dict(Counter(a.split(' (')[0] for a in aimed))}"
          + (f"; commit kills: {[a for a in aimed if a.startswith('commit')]}" if "commit" in targets else ""))
    print(f"  where they left the runs: {dict(where.most_common())}")
    print(f"  restart -> serving:             p50 {pct(to_serving, 50):6.2f} s   p99 {pct(to_serving, 99):6.2f} s")
    print(f"  restart -> first resumed token: p50 {pct(to_token, 50):6.2f} s   p99 {pct(to_token, 99):6.2f} s"
          f"   ({len(to_token)} restarts; {nothing_left} had nothing left to stream; "
          f"{no_token} streamed nothing within {TOKEN_WAIT:g} s)")
    print(f"  reference, launch -> first token of a fresh run: p50 {pct(to_first, 50):6.2f} s   "
          f"p99 {pct(to_first, 99):6.2f} s   ({len(to_first)} runs)")
    print(f"  regenerated tokens per resumed step: mean {mean:.2f}, max {max(regenerated, default=0)} "
          f"over {len(regenerated)} steps killed after streaming ({new_attempts} restarted as a new attempt; "
          f"{bad_continues} continuations not at the committed text)")
    print(f"  runs lost: {len(lost)}" + (f" {lost}" if lost else ""))
    print(f"  acknowledged events {len(acknowledged)}; log file check (dense seqs, unique keys, every acknowledged "
          f"event unchanged, projections equal a rebuild): {file_check}")
    if engine == "scripted":
        print(f"  runs with a step's text cut or doubled, or a summary not once in the report: {len(damaged)}")
        for line in damaged:
            print(f"    {line}")
    result = {
        "bench": "resume",
        "engine": label,
        "kill": "serve-only" if args.serve_only else "whole-instance",
        "trials": args.trials,
        "runs": len(watcher.runs),
        "kills_aimed": dict(Counter(a.split(" (")[0] for a in aimed)),
        "kills_left_runs": dict(where),
        "restart_to_serving_p50_s": round(pct(to_serving, 50), 3),
        "restart_to_serving_p99_s": round(pct(to_serving, 99), 3),
        "restart_to_first_token_p50_s": round(pct(to_token, 50), 3),
        "restart_to_first_token_p99_s": round(pct(to_token, 99), 3),
        "restarts_timed": len(to_token),
        "launch_to_first_token_p50_s": round(pct(to_first, 50), 3),
        "launch_to_first_token_p99_s": round(pct(to_first, 99), 3),
        "restarts_without_token": no_token,
        "resumed_steps": len(regenerated),
        "regenerated_tokens_mean": round(mean, 3),
        "regenerated_tokens_max": max(regenerated, default=0),
        "new_attempts": new_attempts,
        "bad_continues": bad_continues,
        "runs_lost": len(lost),
        "acknowledged_check": file_check,
        "runs_damaged": len(damaged) if engine == "scripted" else None,
        "load_avg": [round(x, 2) for x in load],
        "seconds": round(took, 1),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--engine", default="scripted", help="scripted, embedded, or both comma-separated")
    ap.add_argument("--tokens-per-s", type=float, default=40.0, help="scripted engine's token rate")
    ap.add_argument("--serve-only", action="store_true", help="kill the serve process alone, not its Ray")
    ap.add_argument("--no-continue", action="store_true",
                    help="scripted engine that cannot continue a partial answer (resumes as new attempts)")
    ap.add_argument("--max-tokens", type=int, default=96, help="step token limit (embedded engine)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    args = ap.parse_args()
    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    if not engines or set(engines) - {"scripted", "embedded"}:
        ap.error("--engine takes scripted, embedded, or both comma-separated")
    # A SIGTERM still runs the cleanup that kills every server this bench started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = False
    for engine in engines:
        r = bench(engine, args)
        failed |= bool(r["runs_lost"] or r["runs_damaged"] or r["acknowledged_check"] != "ok" or r["bad_continues"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
