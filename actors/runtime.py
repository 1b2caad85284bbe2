"""Starting or joining Ray, and the names of the long-lived actors of one data directory.

Every named actor and Serve application carries a prefix derived from the data directory, so
two Orchestrators on one Ray cluster (or two tests in one session) never share a log or a pool.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec

from actors.config import Settings

NAMESPACE = "orchestrator"
AGENT_POOL_SIZE = 4


class Names(msgspec.Struct, frozen=True, kw_only=True):
    """Where a FlowRun or an agent finds the shared actors of its Orchestrator."""

    namespace: str
    prefix: str
    data_dir: str
    pool_size: int = AGENT_POOL_SIZE

    @property
    def eventlog(self) -> str:
        return f"{self.prefix}-eventlog"

    def agent(self, i: int) -> str:
        return f"{self.prefix}-agent-{i}"

    def flow_run(self, run_id: str) -> str:
        return f"{self.prefix}-run-{run_id}"

    def model_app(self, engine: str, model: str) -> str:
        digest = hashlib.sha1(f"{engine}:{model}".encode()).hexdigest()[:8]
        return f"{self.prefix}-model-{engine}-{digest}"

    def run_dir(self, run_id: str) -> Path:
        return Path(self.data_dir) / "runs" / run_id


def ensure_ray() -> str:
    """Join the Ray named by ``RAY_ADDRESS`` (Ray reads it itself) or start a local one.

    Returns the namespace to use: the caller's when Ray is already up (tests), else ours.
    """
    import logging

    import ray

    # Serve logs every deployment step at INFO on the driver; the product shows its own progress.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    if ray.is_initialized():
        return ray.get_runtime_context().namespace or NAMESPACE
    ray.init(
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return NAMESPACE


def names_for(settings: Settings, namespace: str) -> Names:
    data_dir = str(Path(settings.data_dir).resolve())
    prefix = "orch-" + hashlib.sha1(data_dir.encode()).hexdigest()[:8]
    return Names(namespace=namespace, prefix=prefix, data_dir=data_dir)
