"""Token → WebSocket client latency, with 1, 10 and 100 subscribers on one run.

A real ``orchestrator serve`` (scripted engine, in its own process) runs a code review whose
agents stream a long answer at a set token rate. Subscribers (in another process, one
WebSocket connection each) follow every run live; for every ``output_delta`` event a client
receives, latency = the client's receive time − the event's ``ts`` (stamped when the step
flushed the streamed tokens to the log, so it includes the commit, the live feed and the
fan-out). Printed: p50/p99/max per subscriber count; the last line is JSON.

For comparison, a direct subscriber of the event log (another process that joins the
server's Ray cluster, named in ``server.json``, and long-polls the log actor as the API's
live feed does) measures the same latency without the API: the difference is what the API
and its WebSocket fan-out add.

    python bench/ws_latency.py [--subscribers 1,10,100] [--tokens 240] [--rate 60]

Target: p99 ≤ 50 ms at 100 subscribers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = """import os


def handler(request):
    token = request.args.get("token")
    return os.system("echo " + token)
"""


def make_repo(path: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.org",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.org"}

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, env=env)

    path.mkdir(parents=True)
    git("init", "-q", "-b", "main")
    (path / "app.py").write_text("def handler(request):\n    return 'ok'\n")
    git("add", "-A")
    git("commit", "-q", "-m", "first")
    git("checkout", "-q", "-b", "feature")
    (path / "app.py").write_text(APP)
    git("commit", "-q", "-am", "change")


def script(tokens: int, rate: float) -> dict:
    words = " ".join(f"w{i}" for i in range(tokens))
    final = {"final": {"summary": words[:990], "findings": []}}
    return {"tokens_per_s": rate, "replies": [{"json": final}]}


# --- the subscriber process ------------------------------------------------------------------


async def subscribers(url: str, n: int, runs: int) -> None:
    """n connections following all runs; prints 'ready', then the latencies as JSON."""
    import msgspec
    import websockets

    decode = msgspec.json.decode
    latencies: list[float] = []
    ready = 0
    all_ready = asyncio.Event()

    async def one() -> None:
        nonlocal ready
        async with websockets.connect(url, max_size=None, ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "run_id": None}))
            ended = 0
            async for raw in ws:
                now = time.time()
                frame = decode(raw)
                kind = frame.get("type")
                if kind == "snapshot":
                    ready += 1
                    if ready == n:
                        all_ready.set()
                    continue
                if kind != "event":
                    continue
                ev = frame["event"]
                if ev["kind"] == "output_delta":
                    latencies.append(now - ev["ts"])
                elif ev["kind"] in ("run_finished", "run_failed", "run_cancelled"):
                    ended += 1
                    if ended == runs:
                        return

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await all_ready.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    print(json.dumps(latencies), flush=True)


def log_subscriber(data_dir: str, runs: int) -> None:
    """Follow the log directly (no API); prints 'ready', then the latencies as JSON."""
    import ray

    from actors.config import Settings
    from actors.eventlog import LogClient
    from actors.runtime import names_for

    claim = json.loads((Path(data_dir) / "server.json").read_text())
    ray.init(address=claim["ray_address"], namespace=claim["namespace"], log_to_driver=False, configure_logging=False)
    names = names_for(Settings(data_dir=data_dir), claim["namespace"])
    log = LogClient.connect(names.eventlog, namespace=names.namespace)
    last = log.max_seq()
    print("ready", flush=True)
    latencies, ended = [], 0
    while ended < runs:
        for rec in log.poll(last, timeout=1.0):
            now = time.time()
            last = rec.seq
            kind = rec.event.__struct_config__.tag
            if kind == "output_delta":
                latencies.append(now - rec.event.ts)
            elif kind in ("run_finished", "run_failed", "run_cancelled"):
                ended += 1
    print(json.dumps(latencies), flush=True)


# --- the driver ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def start_server(work: Path, tokens: int, rate: float) -> tuple[subprocess.Popen, str]:
    root = work / "repos"
    make_repo(root / "demo")
    (work / "script.json").write_text(json.dumps(script(tokens, rate)))
    # No Ray token for this throwaway local cluster, so that the direct log subscriber (another
    # process) can join it.
    env = {**os.environ, "ORCH_REPO_ROOTS": str(root), "ORCH_DATA_DIR": str(work / "data"), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--engine", "scripted", "--script", str(work / "script.json"), "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    claim = work / "data" / "server.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stdout.read()}")
        try:
            url = json.loads(claim.read_text()).get("url")
        except (OSError, ValueError):
            url = ""
        if url:
            return proc, url.rstrip("/")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start in time")


def measure(base: str, n: int, repo: str, data_dir: str) -> tuple[list[float], list[float]]:
    """(WebSocket client latencies, direct log subscriber latencies) for one run."""
    import httpx

    ws_url = base.replace("http", "ws", 1) + "/ws"
    client = subprocess.Popen(
        [sys.executable, __file__, "--client", ws_url, "--n", str(n)], stdout=subprocess.PIPE, text=True
    )
    direct = subprocess.Popen(
        [sys.executable, __file__, "--log", data_dir], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert client.stdout.readline().strip() == "ready", "the subscribers did not get ready"
    assert direct.stdout.readline().strip() == "ready", "the log subscriber did not get ready"
    resp = httpx.post(base + "/api/runs", json={"flow": "code-review", "repo": repo, "band": "small"}, timeout=60)
    resp.raise_for_status()
    out, _ = client.communicate(timeout=600)
    log_out, _ = direct.communicate(timeout=600)
    return json.loads(out.strip().splitlines()[-1]), json.loads(log_out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", default="1,10,100")
    ap.add_argument("--tokens", type=int, default=240, help="tokens each agent streams")
    ap.add_argument("--rate", type=float, default=60.0, help="tokens per second per agent")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        asyncio.run(subscribers(args.client, args.n, runs=1))
        return 0
    if args.log:
        log_subscriber(args.log, runs=1)
        return 0

    counts = [int(x) for x in args.subscribers.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="ws-latency-") as tmp:
        work = Path(tmp)
        proc, base = start_server(work, args.tokens, args.rate)
        try:
            for n in counts:
                lat, direct = measure(base, n, str(work / "repos" / "demo"), str(work / "data"))
                ms = [x * 1000 for x in lat]
                log_ms = [x * 1000 for x in direct]
                results[n] = {
                    "subscribers": n,
                    "deltas": len(ms),
                    "p50_ms": round(pct(ms, 0.50), 2),
                    "p99_ms": round(pct(ms, 0.99), 2),
                    "max_ms": round(max(ms), 2) if ms else None,
                    "log_p50_ms": round(pct(log_ms, 0.50), 2),
                    "log_p99_ms": round(pct(log_ms, 0.99), 2),
                }
                r = results[n]
                print(f"{n:>4} subscribers: {r['deltas']:>6} deltas received  p50 {r['p50_ms']:7.2f} ms  "
                      f"p99 {r['p99_ms']:7.2f} ms  max {r['max_ms']:7.2f} ms   "
                      f"(direct log subscriber: p50 {r['log_p50_ms']:6.2f} ms  p99 {r['log_p99_ms']:7.2f} ms)", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    top = results.get(max(counts), {})
    summary = {
        "bench": "ws_latency",
        "tokens_per_agent": args.tokens,
        "tokens_per_s": args.rate,
        "results": list(results.values()),
        "target_p99_ms_at_100": 50,
        "meets_target": bool(top) and max(counts) >= 100 and top["p99_ms"] <= 50,
    }
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    summary["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
