"""Cancelling a run, from wherever the request comes (the API, the command line).

A run with a supervisor is cancelled by it: it stops its calls to the agents and closes the
run. With none left (it died, or no server runs the run at all), the caller does the same
itself: it stops the run's steps on every agent of the pool there is, then writes what the
supervisor would have written (a ``cancelled`` failure for each open step, then the
cancellation), under the same keys, so a supervisor doing it too writes nothing twice.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from actors.flow_run import CANCEL_GRACE_S
from actors.runtime import Names
from conductor.advance import cancellation
from conductor.state import RunState, fold
from events.log import EventLog

# A supervisor cancels in about a second; one stuck longer is passed over, not waited on
# forever (a command line waiting on it no longer answers Ctrl-C).
SUPERVISOR_WAIT_S = 30.0


def cancel_run(names: Names, log: EventLog, run_id: str, reason: str, supervisor: Any = None) -> bool:
    """Cancel ``run_id``; False if it had already ended. ``supervisor`` is its ``FlowRun``
    actor if the caller has it (else it is looked up by name)."""
    if _state(log, run_id).terminal:
        return False
    if supervisor is None:
        supervisor = _lookup(names.flow_run(run_id), names.namespace)
    if supervisor is not None:
        try:
            return ray.get(supervisor.cancel.remote(reason), timeout=SUPERVISOR_WAIT_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):  # carry on without it
            if _state(log, run_id).terminal:
                return False
    stop_steps(names, run_id)
    return close_cancelled(log, run_id, reason)


def stop_steps(names: Names, *run_ids: str) -> None:
    """Stop every step of the ``run_ids`` still running on an agent of the pool."""
    agents = [a for i in range(names.pool_size) if (a := _lookup(names.agent(i), names.namespace))]
    stops = [agent.stop.remote(run_id, CANCEL_GRACE_S) for agent in agents for run_id in run_ids]
    # All at once, bounded as a whole; a lost agent streams nothing, a stuck one is left.
    if stops:
        ray.wait(stops, num_returns=len(stops), timeout=CANCEL_GRACE_S + 1)


def close_cancelled(log: EventLog, run_id: str, reason: str) -> bool:
    """Write the cancellation of ``run_id`` as its supervisor would; False if it had ended."""
    state = _state(log, run_id)
    if state.terminal:
        return False
    log.append(*cancellation(state, reason, time.time()))
    return True


def _state(log: EventLog, run_id: str) -> RunState:
    return fold((r.event for r in log.read(0, run_id=run_id)), run_id=run_id)


def _lookup(name: str, namespace: str) -> Any:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None
