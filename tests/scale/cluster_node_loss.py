"""A run on three Ray nodes that loses one mid-run. A script, run in its own process by
``test_cluster.py`` (a ``ray.cluster_utils.Cluster`` cannot share a process with the test
session's Ray); it prints one JSON object with what it saw, and the test asserts on it.

The cluster: a head declaring ``orchestrator_head`` (the data directory lives there), a CPU
worker and a "GPU" worker (it declares one GPU; there is none, and no vLLM either). A
code-review of 12 steps runs with the scripted engine; agents are spread over all three nodes.
While steps stream on a worker, that worker is killed without warning. The run must complete:
each step that was on the lost node is continued or retried on another node.

Usage: python -m tests.scale.cluster_node_loss <scratch dir>   (from the repository root)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from actors.config import ConfigError, Settings
from actors.runtime import HEAD_RESOURCE, ensure_ray
from tests.actors.hostile import fingerprint, make_repo

WORDS = " ".join(f"w{i}" for i in range(120))  # about three seconds of streaming at 40 tokens/s
FINDING = {
    "summary": "checked calc.py " + WORDS,
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
SCRIPT = {
    "tokens_per_s": 40,
    "replies": [
        {"match": ["adversarial-validator/"], "json": {"final": {"verdicts": []}}},
        {"turn": 0, "json": {"tool": "read_file", "args": {"path": "calc.py"}}},
        {"json": {"final": FINDING}},
    ],
}
# Nine named personas on top of the spine give a large code-review of 12 steps.
PERSONAS = (
    "test-engineer", "concurrency-analyst", "data-engineer", "devops-engineer", "edge-case-explorer",
    "on-call-engineer", "behavioral-analyst", "structural-analyst", "risk-analyst",
)  # fmt: skip
NODE = {"object_store_memory": 100 * 1024 * 1024}
# Declare a node dead after ~1.5 s of silence rather than Ray's default ~15 s.
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}



def node_states() -> dict[str, str]:
    """Each node (first 8 hex digits) and what Ray's GCS says of it."""
    return {
        n["NodeID"][:8]: "alive" if n.get("Alive") else f"dead: {n.get('DeathReasonMessage', '')}"
        for n in ray.nodes()
    }


def step_starts(events: list, step_id: str, lost_at: float) -> list[dict]:
    """Each start of ``step_id``: attempt, where it continued from, its node, the length of
    that attempt's text committed before it (deltas replace from their offset), and when it
    began, in seconds after the node was lost (wall clock ``lost_at``)."""
    text: dict[int, str] = {}
    starts = []
    for e in events:
        if getattr(e, "step_id", None) != step_id:
            continue
        tag = e.__struct_config__.tag
        if tag == "output_delta":
            text[e.attempt] = text.get(e.attempt, "")[: e.offset] + e.text
        elif tag == "step_started":
            starts.append(
                {
                    "attempt": e.attempt,
                    "continued_from": e.continued_from,
                    "node": e.worker.split("/")[0],
                    "committed_before": len(text.get(e.attempt, "")),
                    "after_loss_s": round(e.ts - lost_at, 2),
                }
            )
            text[e.attempt] = text.get(e.attempt, "")[: e.continued_from]
    return starts


def repo_with_a_change(scratch: Path) -> Path:
    """A repository whose ``calc.py`` has an uncommitted change (line 7 reads ``return a - b``):
    the commit a run pins of it lives only in the data directory, never on a worker."""
    repo = make_repo(scratch / "repo", {"calc.py": "def add(a, b):\n    return a + b\n"})
    (repo / "calc.py").write_text(
        "import threading\n\nlock = threading.Lock()\n\ndef add(a, b):\n    with lock:\n        return a - b\n"
    )
    return repo


def node_of(handle) -> str:
    """The node an actor runs on, asked of the actor itself."""
    return ray.get(handle.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()), timeout=30)


def model_replica_nodes() -> list[str]:
    """The nodes of the model deployment's replicas (Serve names them SERVE_REPLICA::...)."""
    nodes = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("SERVE_REPLICA::") and "-model-" in actor["name"]:
            nodes.append(node_of(ray.get_actor(actor["name"], namespace=actor["namespace"])))
    return sorted(nodes)


@ray.remote(num_cpus=0)
def head_check_elsewhere() -> str:
    from actors.runtime import head_node

    try:
        return "no error: " + head_node()
    except ConfigError as exc:
        return "ConfigError: " + str(exc)


def kinds(events) -> list[str]:
    return [e.__struct_config__.tag for e in events]


def main(scratch: Path) -> dict:
    from actors.engines import select_engine
    from actors.engines.vllm import gpu_available, vllm_available
    from actors.service import LaunchRequest, Orchestrator

    out: dict = {}
    t0 = time.monotonic()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {HEAD_RESOURCE: 1}, "_system_config": FAST_HEALTH, **NODE},
    )
    cpu_worker = cluster.add_node(num_cpus=2, **NODE)
    gpu_worker = cluster.add_node(num_cpus=2, num_gpus=1, **NODE)
    cluster.wait_for_nodes()
    # Join it as `orchestrator serve` on a cluster head does: through RAY_ADDRESS.
    os.environ["RAY_ADDRESS"] = cluster.address
    out["namespace"] = ensure_ray()
    out["head_resource_total"] = ray.cluster_resources().get(HEAD_RESOURCE, 0)
    workers = {cpu_worker.node_id: cpu_worker, gpu_worker.node_id: gpu_worker}
    head = cluster.head_node.node_id
    out["cluster_start_s"] = round(time.monotonic() - t0, 1)

    # `auto` on a cluster with a GPU but without vLLM: the embedded model, not an error.
    out["gpu_in_cluster"] = gpu_available()
    out["vllm_installed"] = vllm_available()
    out["auto_engine"] = list(select_engine(Settings.load({}, data_dir=str(scratch / "auto"))))
    # An Orchestrator started anywhere but the head is refused with a clear message.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out["head_check_on_worker"] = ray.get(
        head_check_elsewhere.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(cpu_worker.node_id, soft=False)
        ).remote()
    )

    repo = repo_with_a_change(scratch)
    before = fingerprint(repo)

    # Each agent asks for its node softly, and Ray's scheduler puts it anywhere if that node is
    # not yet in its view of the cluster (a node that has only just joined, on a loaded
    # machine). A task pinned hard to each worker waits until the scheduler sees that worker,
    # so the pool made next is spread as intended.
    t_seen = time.monotonic()
    ray.get([
        head_check_elsewhere.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
        for n in workers
    ], timeout=60)
    out["workers_seen_s"] = round(time.monotonic() - t_seen, 2)

    settings = Settings.load({}, data_dir=str(scratch / "data"))
    orch = Orchestrator(settings, engine="scripted", script=SCRIPT)
    try:
        names = orch.names
        out["head"] = head
        out["workers"] = sorted(workers)
        out["names_head_node"] = names.head_node
        out["eventlog_node"] = node_of(orch.log.handle)
        out["agents_before"] = ray.get([a.where.remote() for a in orch._agents])
        out["nodes_at_pool"] = node_states()

        t_launch = time.monotonic()
        run_id = orch.launch(
            LaunchRequest(flow="code-review", repo=str(repo), band="large", personas=PERSONAS, text="node-loss")
        )
        out["flowrun_node"] = node_of(ray.get_actor(names.flow_run(run_id), namespace=names.namespace))
        out["steps_planned"] = len(orch.state(run_id).plan.steps)
        out["model_replica_nodes"] = model_replica_nodes()  # informative: Serve places them

        # Wait until a step on a worker node is streaming its answer (turn 1), then kill that node.
        victim, deadline = None, time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            events = [r.event for r in orch.events(run_id, limit=100_000)]
            started = {e.step_id: e for e in events if e.__struct_config__.tag == "step_started"}
            streaming = {e.step_id for e in events if e.__struct_config__.tag == "output_delta" and e.turn >= 1}
            ended = {e.step_id for e in events if e.__struct_config__.tag in ("step_finished", "step_failed")}
            for step_id in sorted(streaming - ended):
                node = next((n for n in workers if started[step_id].worker.startswith(n[:8])), None)
                if node is not None:
                    victim = node
                    break
            time.sleep(0.05)
        assert victim is not None, "no step streamed on a worker node: " + json.dumps({
            "agents": out["agents_before"], "kinds": dict(Counter(kinds(events))),
            "starts": {s: e.worker for s, e in started.items()}, "streaming": sorted(streaming),
            "ended": sorted(ended), "status": orch.state(run_id).status,
            # Whether the workers were alive when the pool was made and now: an agent goes to
            # another node only when its own is not available to Ray's scheduler.
            "nodes_at_pool": out["nodes_at_pool"], "nodes_now": node_states(),
        }, default=str)
        on_victim = sorted(
            s for s, e in started.items() if e.worker.startswith(victim[:8]) and s not in ended
        )
        out["victim"] = victim
        out["victim_is_gpu_worker"] = victim == gpu_worker.node_id
        out["steps_on_victim_at_loss"] = on_victim
        out["seconds_into_run_at_loss"] = round(time.monotonic() - t_launch, 1)
        t_loss, lost_at = time.monotonic(), time.time()
        cluster.remove_node(workers[victim], allow_graceful=False)
        # When Ray declares the node dead (health checks, ~1.5 s here). Until then a worker
        # process on it may outlive its raylet for a moment and still take a call.
        while any(n["NodeID"] == victim and n["Alive"] for n in ray.nodes()) and time.monotonic() - t_loss < 60:
            time.sleep(0.05)
        out["node_declared_dead_after_s"] = round(time.time() - lost_at, 2)

        out["status"] = orch.wait(run_id, 120)
        out["seconds_from_loss_to_end"] = round(time.monotonic() - t_loss, 1)
        state = orch.state(run_id)
        events = [r.event for r in orch.events(run_id, limit=100_000)]
        out["step_status"] = {s: st.status for s, st in state.steps.items()}
        # How each step that was on the lost node carried on: every start it had, in order,
        # with how much of that attempt's text the log held when it started.
        out["victim_step_starts"] = {s: step_starts(events, s, lost_at) for s in on_victim}
        # Tool reads by agents on worker nodes went through the snapshot server on the head.
        starts = [e for e in events if e.__struct_config__.tag == "step_started"]
        remote_attempts = {(e.step_id, e.attempt) for e in starts if not e.worker.startswith(head[:8])}
        results = [e for e in events if e.__struct_config__.tag == "tool_result"]
        out["tool_results_from_workers"] = sum(1 for e in results if (e.step_id, e.attempt) in remote_attempts)
        out["tool_results_from_workers_with_the_pinned_line"] = sum(
            1 for e in results if (e.step_id, e.attempt) in remote_attempts and e.ok and "return a - b" in e.content
        )
        out["tool_denied"] = kinds(events).count("tool_denied")
        try:
            out["snapshot_server_node"] = ray.get(
                ray.get_actor(names.snapshots, namespace=names.namespace).ping.remote(), timeout=30
            )
        except ValueError:
            out["snapshot_server_node"] = None
        out["report_cites_the_line"] = "calc.py:7" in orch.report(run_id, "md")
        out["agents_after"] = ray.get([a.where.remote() for a in orch._agents], timeout=60)

        # The server keeps serving on what is left: a second run completes.
        second = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="after the loss"))
        out["second_run_status"] = orch.wait(second, 120)
        out["repo_untouched"] = fingerprint(repo) == before
    finally:
        orch.close()
        ray.shutdown()
        cluster.shutdown()
    out["total_s"] = round(time.monotonic() - t0, 1)
    return out


if __name__ == "__main__":
    result = main(Path(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)
