"""Fan-out benchmark: a 12-agent flow run by Orchestrator and by an equivalent LangGraph graph.

Both call the same scripted OpenAI-compatible stub (fixed first-token latency and token rate,
streamed) over HTTP. Orchestrator runs the flow through Ray (FlowRun, AgentStep pool, the model
deployment with the ``openai`` engine, the DuckDB log); LangGraph runs the same waves as parallel
fan-out nodes that stream from the stub, checkpointed with its SQLite saver.

Printed: wall time, orchestration overhead (wall minus the ideal critical path: waves × one
call) for both and their ratio, per-step overhead, and token → subscriber latency p50/p99
(stub send time → the log subscriber's receipt), the output deltas the run wrote and the
machine's busy CPU seconds during it (what the coalescing saves). Ends with one JSON line.

    python bench/fanout.py [--agents 12] [--latency 0.2] [--tokens 40] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stub_openai import StubServer, stamps  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def make_repo(root: Path) -> Path:
    """A small repository whose change fires many signals (so a large band seats many agents)."""
    repo = root / "repo"
    repo.mkdir()
    files = {
        "app/server.py": "import threading\nfrom http.server import BaseHTTPRequestHandler\n\nlock = threading.Lock()\n\nclass Handler(BaseHTTPRequestHandler):\n    def do_POST(self):\n        token = self.headers.get('Authorization')\n        with lock:\n            return token\n",
        "app/models.py": "from sqlalchemy import Column, Integer\n\nclass User:\n    id = Column(Integer, primary_key=True)\n",
        "migrations/0001_users.sql": "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);\n",
        "Dockerfile": "FROM python:3.11\nCOPY . /app\n",
        ".github/workflows/ci.yml": "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n",
        "app/worker.py": "import asyncio\nimport queue\n\nq = queue.Queue()\n\nasync def run():\n    await asyncio.sleep(1)\n    return q.get()\n",
        "app/parse.py": "def parse(raw: str) -> int:\n    return int(raw.split(',')[0])\n",
        "web/index.html": "<html><body><button>Go</button></body></html>\n",
        "tests/test_parse.py": "from app.parse import parse\n\ndef test_parse():\n    assert parse('1,2') == 1\n",
    }
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README.md").write_text("bench repo\n")
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "base"], check=True)
    for path, text in files.items():
        p = repo / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "change"], check=True)
    return repo


def machine_busy_s() -> float:
    """CPU seconds all of this machine's cores have spent busy since boot (Linux)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def run_orchestrator(stub: StubServer, repo: Path, data_dir: Path, agents: int) -> dict:
    from actors.config import Settings
    from actors.service import LaunchRequest, Orchestrator

    settings = Settings.load(
        {},
        data_dir=str(data_dir),
        engine="openai",
        model="stub",
        openai_base_url=stub.url,
        max_streams=64,
        step_turns=1,
        step_max_tokens=stub.tokens,
    )
    loop = asyncio.get_running_loop()
    # The facade is synchronous (the API calls it from a thread pool): do the same here.
    orch = await loop.run_in_executor(None, Orchestrator, settings)
    extra = (
        "junior-developer", "adversarial-security-analyst", "test-engineer", "edge-case-explorer",
        "structural-analyst", "behavioral-analyst", "concurrency-analyst", "data-engineer",
        "devops-engineer", "on-call-engineer", "user-experience-designer", "information-architect",
    )
    try:
        request = LaunchRequest(
            flow="code-review", repo=str(repo), base="HEAD~1", band="large", personas=extra[: max(0, agents - 1)]
        )
        # Warm-up: the model deployment and the agent pool start once, and every agent of the
        # pool runs a step (its first imports the Serve client, ~2 s of CPU), as in a server
        # that has run a flow before: the same flow once, unmeasured.
        warm = await loop.run_in_executor(None, orch.launch, request)
        await loop.run_in_executor(None, orch.wait, warm, 120)
        await loop.run_in_executor(None, orch.settle)  # as a server is between runs

        t0, busy0 = time.time(), machine_busy_s()
        run_id = await loop.run_in_executor(None, orch.launch, request)
        latencies: list[float] = []
        to_write: list[float] = []  # stub send -> the step's write of the delta
        write_to_sub: list[float] = []  # the step's write -> subscriber receipt
        deltas = 0  # output_delta events: how compact the coalescing kept the log
        async for records in orch.subscribe(run_id, 0):
            now = time.time()
            done = False
            for rec in records:
                ev = rec.event
                kind = ev.__struct_config__.tag
                if kind == "output_delta":
                    deltas += 1
                    sent = stamps(ev.text)
                    latencies += [now - ts for ts in sent]
                    to_write += [ev.ts - ts for ts in sent]
                    write_to_sub += [now - ev.ts] * len(sent)
                if kind in ("run_finished", "run_failed", "run_cancelled"):
                    done = True
            if done:
                break
        wall, busy = time.time() - t0, machine_busy_s() - busy0
        requests = sorted(a - t0 for a in stub.arrivals if a >= t0)
        state = await loop.run_in_executor(None, orch.state, run_id)
        waves = sorted({st.step.wave for st in state.steps.values()})
        step_overheads = [
            (st.ended_ts - st.queued_ts) - stub.call_seconds
            for st in state.steps.values()
            if st.ended_ts and st.queued_ts
        ]
        return {
            "status": state.status,
            "steps": len(state.steps),
            "waves": [[st.step.persona for st in state.steps.values() if st.step.wave == w] for w in waves],
            "wall_s": wall,
            "busy_s": busy,
            "deltas": deltas,
            "latencies": latencies,
            "to_write": to_write,
            "write_to_sub": write_to_sub,
            "requests": requests,  # when each model request reached the stub, from launch
            "step_overheads": step_overheads,
        }
    finally:
        await loop.run_in_executor(None, orch.close)


async def run_langgraph(stub: StubServer, waves: list[list[str]], db: Path) -> dict:
    import httpx
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        outputs: Annotated[list, operator.add]

    client = httpx.AsyncClient(timeout=60)

    def node(name: str):
        async def call(state: State) -> dict:
            text = []
            body = {"model": "stub", "stream": True, "messages": [{"role": "user", "content": name}]}
            async with client.stream("POST", f"{stub.url}/chat/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        chunk = json.loads(line[6:])
                        if chunk["choices"]:
                            text.append(chunk["choices"][0]["delta"].get("content") or "")
            return {"outputs": [(name, "".join(text))]}

        return call

    builder = StateGraph(State)
    previous = [START]
    for w, personas in enumerate(waves):
        names = [f"w{w}-{i}-{p}" for i, p in enumerate(personas)]
        for n in names:
            builder.add_node(n, node(n))
        for n in names:
            for prev in previous:
                builder.add_edge(prev, n)
        previous = names
    for prev in previous:
        builder.add_edge(prev, END)

    async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:
        graph = builder.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "warm"}}
        await graph.ainvoke({"outputs": []}, config)  # warm-up, as for Orchestrator
        t0 = time.time()
        result = await graph.ainvoke({"outputs": []}, {"configurable": {"thread_id": "bench"}})
        wall = time.time() - t0
    await client.aclose()
    return {"wall_s": wall, "outputs": len(result["outputs"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=12)
    parser.add_argument("--latency", type=float, default=0.2, help="stub first-token latency (s)")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per answer")
    parser.add_argument("--rate", type=float, default=100.0, help="stub tokens per second")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, StubServer(
        first_token_s=args.latency, tokens=args.tokens, tokens_per_s=args.rate
    ) as stub:
        root = Path(tmp)
        repo = make_repo(root)
        from actors.runtime import ensure_ray

        ensure_ray()  # on the main thread: Ray installs signal handlers there
        ours = asyncio.run(run_orchestrator(stub, repo, root / "data", args.agents))
        theirs = asyncio.run(run_langgraph(stub, ours["waves"], root / "langgraph.sqlite"))

    ideal = len(ours["waves"]) * stub.call_seconds
    our_overhead = ours["wall_s"] - ideal
    their_overhead = theirs["wall_s"] - ideal
    ratio = our_overhead / their_overhead if their_overhead > 0 else float("inf")
    lat = ours["latencies"]
    figures = {
        "bench": "fanout",
        "agents": ours["steps"],
        "waves": len(ours["waves"]),
        "status": ours["status"],
        "ideal_critical_path_s": round(ideal, 3),
        "orchestrator_wall_s": round(ours["wall_s"], 3),
        "langgraph_wall_s": round(theirs["wall_s"], 3),
        "orchestrator_overhead_s": round(our_overhead, 3),
        "langgraph_overhead_s": round(their_overhead, 3),
        "overhead_ratio": round(ratio, 3),
        "per_step_overhead_p50_s": round(pct(ours["step_overheads"], 50), 3),
        "token_to_subscriber_p50_ms": round(pct(lat, 50) * 1000, 1),
        "token_to_subscriber_p99_ms": round(pct(lat, 99) * 1000, 1),
        "tokens_measured": len(lat),
        "output_deltas": ours["deltas"],
        "machine_cpu_busy_s": round(ours["busy_s"], 2),
        # Where a token's latency goes: to the step's write of its delta, then to the subscriber.
        # Dispatch: launch to the first model request, and to the last of the first wave.
        "launch_to_first_request_s": round(ours["requests"][0], 3),
        "launch_to_wave_1_requested_s": round(ours["requests"][len(ours["waves"][0]) - 1], 3),
        "token_to_write_p50_ms": round(pct(ours["to_write"], 50) * 1000, 1),
        "token_to_write_p99_ms": round(pct(ours["to_write"], 99) * 1000, 1),
        "write_to_subscriber_p50_ms": round(pct(ours["write_to_sub"], 50) * 1000, 1),
        "write_to_subscriber_p99_ms": round(pct(ours["write_to_sub"], 99) * 1000, 1),
    }
    print(f"agents {figures['agents']} in {figures['waves']} waves (status {ours['status']})")
    print(f"ideal critical path        {ideal:8.3f} s")
    print(f"orchestrator wall          {ours['wall_s']:8.3f} s   overhead {our_overhead:7.3f} s")
    print(f"langgraph wall             {theirs['wall_s']:8.3f} s   overhead {their_overhead:7.3f} s")
    print(f"overhead ratio (ours/langgraph) {ratio:.2f}   (target <= 0.5)")
    print(f"per-step overhead p50      {figures['per_step_overhead_p50_s']:.3f} s")
    print(
        f"launch -> first model request {figures['launch_to_first_request_s']:.3f} s, "
        f"-> all of wave 1 requested {figures['launch_to_wave_1_requested_s']:.3f} s"
    )
    print(
        f"token -> subscriber        p50 {figures['token_to_subscriber_p50_ms']:.1f} ms   "
        f"p99 {figures['token_to_subscriber_p99_ms']:.1f} ms   (target p99 <= 50 ms, {len(lat)} tokens)"
    )
    print(
        f"  {ours['deltas']} output deltas in the log ({len(lat) / max(1, ours['deltas']):.1f} tokens each); "
        f"the machine's cores were busy {ours['busy_s']:.2f} s during the run"
    )
    print(
        f"  of which stub -> step write  p50 {figures['token_to_write_p50_ms']:.1f} ms   "
        f"p99 {figures['token_to_write_p99_ms']:.1f} ms"
    )
    print(
        f"  step write -> subscriber     p50 {figures['write_to_subscriber_p50_ms']:.1f} ms   "
        f"p99 {figures['write_to_subscriber_p99_ms']:.1f} ms"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
