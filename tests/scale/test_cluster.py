"""Several nodes: what runs on the head, what runs anywhere, and a node lost mid-run.

A ``ray.cluster_utils.Cluster`` cannot share a process with the session's Ray, so each test
here runs a child Python with its own Ray (``RAY_TMPDIR`` in a scratch directory, so no other
process on the machine can find and join it) and asserts on what the child prints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def run_child(args: list[str], timeout: float) -> dict:
    """Run ``python <args> <scratch>`` from the repository root; the JSON it prints last."""
    # Short: Ray's socket paths live under it and must stay under ~100 bytes.
    scratch = Path(tempfile.mkdtemp(prefix="orch-scale-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("ORCH_")}
    env["RAY_TMPDIR"] = str(scratch / "ray")
    (scratch / "ray").mkdir()
    proc = subprocess.Popen(
        [sys.executable, *args, str(scratch)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its Ray processes can be ended together
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the child did not finish in {timeout:g}s:\n{err.decode()[-3000:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}:\n{err.decode()[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


START_HERE = """
import json, sys
import ray
from actors.runtime import HEAD_RESOURCE, ensure_ray, head_node
ns = ensure_ray("orchestrator_agents")
result = {
    "namespace": ns,
    "head_resource": ray.cluster_resources().get(HEAD_RESOURCE, 0),
    "agent_resource": ray.cluster_resources().get("orchestrator_agents", 0),
    "head_is_here": head_node() == ray.get_runtime_context().get_node_id(),
}
ray.shutdown()
print("RESULT " + json.dumps(result))
"""


def test_a_ray_we_start_declares_this_node_the_head():
    # ...and the node for agents, when a resource is named for them: it is the only node.
    got = run_child(["-c", START_HERE], timeout=120)
    assert got == {"namespace": "orchestrator", "head_resource": 1.0, "agent_resource": 1.0, "head_is_here": True}


def test_a_node_lost_mid_run_the_run_completes_on_the_others():
    got = run_child(["-m", "tests.scale.cluster_node_loss"], timeout=240)
    print("\n" + json.dumps(got, indent=1))
    head, workers = got["head"], set(got["workers"])

    # Joined through RAY_ADDRESS: the cluster's own head resource, ours not added.
    assert got["namespace"] == "orchestrator" and got["head_resource_total"] == 1
    # The log, the run's supervisor and the snapshot server are on the head...
    assert got["names_head_node"] == got["eventlog_node"] == got["flowrun_node"] == head
    assert got["snapshot_server_node"] == head
    # ...agents go round the nodes, each to the one it prefers (Ray put them on random nodes
    # when they asked for no resources: a CI run had all four on the head, none to lose), and
    # only those off the head read remotely.
    nodes = sorted({head} | workers)
    assert [a["node"] for a in got["agents_before"]] == [nodes[i % len(nodes)] for i in range(4)]
    assert all(a["on_head"] == (a["node"] == head) for a in got["agents_before"])
    # An Orchestrator started off the head is refused, saying where to start it.
    assert got["head_check_on_worker"].startswith("ConfigError:")
    assert "start the Orchestrator on the head" in got["head_check_on_worker"]
    # `auto` with a GPU in the cluster but no vLLM installed falls back to the embedded model.
    assert got["gpu_in_cluster"] and not got["vllm_installed"]
    assert got["auto_engine"][0] == "embedded"

    # The node was lost while steps streamed on it; the run still finished, every step too.
    assert got["steps_planned"] == 12
    assert got["victim"] in workers and got["steps_on_victim_at_loss"]
    assert got["status"] == "finished"
    assert set(got["step_status"].values()) == {"finished"}
    for step, starts in got["victim_step_starts"].items():
        first, later = starts[0], starts[1:]
        assert first["node"] == got["victim"][:8], step
        # Picked up on a live node: continued from all the text the log held of its attempt
        # (none, for a step still waiting for its first token), or a new attempt.
        assert later, f"{step} was never picked up again"
        assert later[-1]["node"] != got["victim"][:8], step
        # Only before Ray declared the node dead may a pickup have gone there (a worker can
        # outlive its raylet for a moment); that one was lost too and picked up again.
        assert all(
            s["node"] != got["victim"][:8] or s["after_loss_s"] <= got["node_declared_dead_after_s"] for s in later
        ), step
        last = later[-1]
        assert last["attempt"] > first["attempt"] or last["continued_from"] == last["committed_before"], step
    # The lost node was chosen while a step on it streamed: that one kept its text.
    assert any(
        s["continued_from"] > 0 or s["attempt"] > starts[0]["attempt"]
        for starts in got["victim_step_starts"].values()
        for s in starts[1:]
    )
    assert all(a["node"] != got["victim"] for a in got["agents_after"])

    # Agents off the head read the pinned (uncommitted) file through the snapshot server.
    assert got["tool_results_from_workers"] > 0
    assert got["tool_results_from_workers_with_the_pinned_line"] == got["tool_results_from_workers"]
    assert got["tool_denied"] == 0
    assert got["report_cites_the_line"]
    assert got["second_run_status"] == "finished"
    assert got["repo_untouched"]


def test_agents_wait_for_and_run_on_the_nodes_that_declare_the_agent_resource():
    got = run_child(["-m", "tests.scale.cluster_agent_nodes"], timeout=240)
    print("\n" + json.dumps(got, indent=1))
    # Started on the head alone: it says the runs will wait, and nothing runs on the head.
    assert got["warned"]
    assert got["agent_events_before_worker"] == 0 and got["status_before_worker"] == "running"
    # The worker that joined took every agent, and the run finished there.
    assert got["status"] == "finished"
    assert got["agents"] == [got["worker"]] * 4
    assert got["step_workers"] == [got["worker"][:8]]
    # Reading through the snapshot server on the head: the pinned (uncommitted) line.
    assert got["tool_results"] > 0 and got["tool_results_with_the_pinned_line"] == got["tool_results"]
    assert got["report_cites_the_line"] and got["repo_untouched"]
