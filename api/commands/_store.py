"""How a one-shot command reaches the log: the file itself, or the server that holds it.

DuckDB lets one process write a file. While ``orchestrator serve`` runs, its event-log actor
holds ``events.duckdb``, so commands ask that actor (found through ``server.json``); otherwise
they open the file themselves, read-only unless they must write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from api.commands import CommandError
from api.commands.sql import _token_auth_as_auto_would, holder, require_log, server_info


class Store:
    """Run a reader function ``fn(cursor, **kwargs)`` where the log is."""

    def __init__(self, call: Callable[..., Any], *, server: Any = None, names: Any = None):
        self.call = call
        self.server = server  # the event-log actor when going through a server
        self.names = names


@contextmanager
def open_store(settings) -> Iterator[Store]:
    import duckdb

    path = require_log(settings)
    try:
        con = duckdb.connect(str(path), read_only=True, config={"enable_external_access": False})
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise CommandError(f"cannot open {path}: {exc}") from None
        with _server_store(settings, str(exc)) as store:
            yield store
        return
    try:
        yield Store(lambda fn, **kw: fn(con, **kw))
    finally:
        con.close()


@contextmanager
def _server_store(settings, lock_error: str) -> Iterator[Store]:
    import ray

    from actors.runtime import NAMESPACE, names_for

    info = server_info(settings) or {}
    held = f"{settings.events_path} is held by {holder(lock_error)}"
    started = False
    if not ray.is_initialized():
        if info.get("ray_address"):
            _token_auth_as_auto_would()
        try:
            ray.init(address=info.get("ray_address") or "auto", namespace=info.get("namespace") or NAMESPACE,
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CommandError(f"{held}, and no running Orchestrator server could be reached ({exc})") from None
        started = True
    try:
        namespace = info.get("namespace") or ray.get_runtime_context().namespace or NAMESPACE
        names = names_for(settings, namespace)
        try:
            actor = ray.get_actor(names.eventlog, namespace=namespace)
        except ValueError:
            raise CommandError(f"{held}, which is not an Orchestrator server of this data directory") from None
        yield Store(lambda fn, **kw: ray.get(actor.call_reader.remote(fn, **kw)), server=actor, names=names)
    finally:
        if started:
            ray.shutdown()


def fold_run(store: Store, run_id: str):
    """The run's state, folded from its events (the same fold the FlowRun uses)."""
    from conductor.state import fold
    from projections.queries import run_records

    records = store.call(run_records, run_id=run_id)
    if not records:
        raise CommandError(f"no run {run_id!r}")
    return fold((r.event for r in records), run_id=run_id)
