"""Agents kept to the nodes that declare the agent resource, as ``ray-cluster.yaml`` sets it up.
A script, run in its own process by ``test_cluster.py``; it prints one JSON object.

The Orchestrator starts on a head alone (as ``orchestrator serve`` does on a fresh cluster), with
``ORCH_AGENT_RESOURCE`` naming a resource no node declares yet. A run is launched and waits; a
worker declaring the resource joins (as the autoscaler would start one), and the run completes
there, its tool reads served from the head.

Usage: python -m tests.scale.cluster_agent_nodes <scratch dir>   (from the repository root)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from actors.config import Settings
from actors.runtime import HEAD_RESOURCE
from tests.actors.hostile import fingerprint
from tests.scale.cluster_node_loss import NODE, SCRIPT, repo_with_a_change

AGENTS = "orchestrator_agents"


def main(scratch: Path) -> dict:
    from actors.service import LaunchRequest, Orchestrator

    out: dict = {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {HEAD_RESOURCE: 1}, **NODE})
    os.environ["RAY_ADDRESS"] = cluster.address
    repo = repo_with_a_change(scratch)
    before = fingerprint(repo)

    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("actors.orchestrator").addHandler(handler)
    settings = Settings.load({"ORCH_AGENT_RESOURCE": AGENTS}, data_dir=str(scratch / "data"))
    orch = Orchestrator(settings, engine="scripted", script=SCRIPT)
    try:
        head = cluster.head_node.node_id
        out["warned"] = [w for w in warnings if AGENTS in w]
        run_id = orch.launch(LaunchRequest(flow="code-review", repo=str(repo), text="agent nodes"))
        time.sleep(3)  # long enough for steps to start and stream, had an agent run anywhere
        events = [r.event for r in orch.events(run_id, limit=100_000)]
        out["agent_events_before_worker"] = sum(
            e.__struct_config__.tag in ("step_started", "output_delta", "tool_called") for e in events
        )
        out["status_before_worker"] = orch.state(run_id).status

        worker = cluster.add_node(num_cpus=2, resources={AGENTS: 1}, **NODE)
        out["status"] = orch.wait(run_id, 120)
        out["agents"] = [a["node"] for a in ray.get([a.where.remote() for a in orch._agents], timeout=60)]
        out["head"], out["worker"] = head, worker.node_id
        events = [r.event for r in orch.events(run_id, limit=100_000)]
        out["step_workers"] = sorted({e.worker[:8] for e in events if e.__struct_config__.tag == "step_started"})
        results = [e for e in events if e.__struct_config__.tag == "tool_result"]
        out["tool_results"] = len(results)
        out["tool_results_with_the_pinned_line"] = sum(1 for e in results if e.ok and "return a - b" in e.content)
        out["report_cites_the_line"] = "calc.py:7" in orch.report(run_id, "md")
        out["repo_untouched"] = fingerprint(repo) == before
    finally:
        orch.close()
        ray.shutdown()
        cluster.shutdown()
    return out


if __name__ == "__main__":
    result = main(Path(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)
