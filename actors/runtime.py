"""Starting or joining Ray, the names of the long-lived actors of one data directory, and
where the actors that need that directory run.

Every named actor and Serve application carries a prefix derived from the data directory, so
two Orchestrators on one Ray cluster (or two tests in one session) never share a log or a pool.

The **head** is the node that holds the data directory: the DuckDB file, and each run's pinned
snapshot. On a cluster it is the node that declares the custom resource ``orchestrator_head``
(see ``ray-cluster.yaml``); a Ray we start ourselves declares it too. On a Ray without it (one
joined by tests) the head is the node of the process that starts the Orchestrator. The event
log, the run supervisors and the snapshot server are pinned to the head; agent steps and model
replicas go wherever Ray has room.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgspec

from actors.config import ConfigError, Settings

NAMESPACE = "orchestrator"
AGENT_POOL_SIZE = 4
HEAD_RESOURCE = "orchestrator_head"


class Names(msgspec.Struct, frozen=True, kw_only=True):
    """Where a FlowRun or an agent finds the shared actors of its Orchestrator."""

    namespace: str
    prefix: str
    data_dir: str
    pool_size: int = AGENT_POOL_SIZE
    # The Ray resource an agent asks a sliver of ('' when agents may run on any node).
    agent_resource: str = ""
    # The Ray node id of the head ('' when unknown: everything is taken to be on one node).
    head_node: str = ""

    @property
    def eventlog(self) -> str:
        return f"{self.prefix}-eventlog"

    @property
    def snapshots(self) -> str:
        return f"{self.prefix}-snapshots"

    def agent(self, i: int) -> str:
        return f"{self.prefix}-agent-{i}"

    def flow_run(self, run_id: str) -> str:
        return f"{self.prefix}-run-{run_id}"

    def model_app(self, engine: str, model: str) -> str:
        digest = hashlib.sha1(f"{engine}:{model}".encode()).hexdigest()[:8]
        return f"{self.prefix}-model-{engine}-{digest}"

    def run_dir(self, run_id: str) -> Path:
        return Path(self.data_dir) / "runs" / run_id


def ensure_ray(agent_resource: str = "") -> str:
    """Join the Ray named by ``RAY_ADDRESS`` (Ray reads it itself) or start a local one, whose
    only node is then the head (it declares ``orchestrator_head``, and ``agent_resource`` if
    one is named: the head is the only node the agents can run on).

    Returns the namespace to use: the caller's when Ray is already up (tests), else ours.
    """
    import logging

    import ray
    import ray.serve  # noqa: F401  (importing it sets its logger to INFO: import first, then quiet it)

    # Serve logs every deployment step at INFO on the driver; the product shows its own progress.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    # Ray turns its token authentication on for a Ray it starts here and announces that on
    # every start, as a warning on stderr. Ray's choice stands (the README says so); the line
    # said nothing a user of `orchestrator run` must act on.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if ray.is_initialized():
        return ray.get_runtime_context().namespace or NAMESPACE
    options = dict(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        # A Ray of our own: this node is the head, and the agents' node too.
        resources = {HEAD_RESOURCE: 1}
        if agent_resource:
            resources[agent_resource] = 1
        ray.init(**options, resources=resources)
    except ValueError as exc:
        # Ray found a cluster to join (RAY_ADDRESS, or one started with `ray start`): its
        # nodes declare their own resources. Ray refuses before connecting, so retry as is.
        if "existing cluster" not in str(exc):
            raise
        ray.init(**options)
    return NAMESPACE


def ray_reachable(timeout: float = 1.0) -> bool:
    """Whether Ray's control service (GCS) still accepts connections (a Ray call made
    after it stopped waits a minute before it fails)."""
    import socket

    import ray

    if not ray.is_initialized():
        return False
    host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True


def head_node() -> str:
    """The node id of the head, checked to be this process's node.

    The Orchestrator writes the data directory (pins, the log file) on its own machine, so it
    must run on the head when the cluster declares one. Raises ``ConfigError`` otherwise.
    """
    import ray

    here = ray.get_runtime_context().get_node_id()
    heads = [
        n["NodeID"]
        for n in ray.nodes()
        if n.get("Alive") and n.get("Resources", {}).get(HEAD_RESOURCE, 0) > 0
    ]
    if not heads or here in heads:
        return here
    raise ConfigError(
        f"this process runs on Ray node {here[:12]}, but the cluster's head (the node with the "
        f"'{HEAD_RESOURCE}' resource) is {heads[0][:12]}: start the Orchestrator on the head, "
        "where its data directory lives"
    )


def on_head(names: Names) -> Any:
    """The scheduling strategy that keeps an actor on the head (and its restarts there)."""
    if not names.head_node:
        return None
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=names.head_node, soft=False)


def names_for(settings: Settings, namespace: str) -> Names:
    data_dir = str(Path(settings.data_dir).resolve())
    prefix = "orch-" + hashlib.sha1(data_dir.encode()).hexdigest()[:8]
    return Names(namespace=namespace, prefix=prefix, data_dir=data_dir, agent_resource=settings.agent_resource)


def freeze_heap() -> None:
    """Keep what a long-lived process built at start-up (Ray, imports, its own state) out of
    the garbage collector's full passes. A full pass walks every tracked object: over a Ray
    worker's few hundred thousand it stalls the process for tens of milliseconds, which is
    what a commit, a token or a WebSocket frame then waits. Call it once start-up is done."""
    import gc

    gc.collect()
    gc.freeze()

