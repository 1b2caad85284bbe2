"""``orchestrator cancel RUN``: stop a run's agents and record the cancellation."""

from __future__ import annotations

import argparse
import time

from api.commands import CommandError

NAME = "cancel"
HELP = "Cancel a running run: its streams stop and the cancellation is recorded."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN")
    parser.add_argument("--reason", default="cancelled from the command line")


def run(args: argparse.Namespace, settings) -> int:
    from api.commands._store import fold_run, open_store
    from events.types import RunCancelled

    with open_store(settings) as store:
        state = fold_run(store, args.run_id)
        if state.terminal:
            raise CommandError(f"run {args.run_id} is already {state.status}")
        if store.server is not None:
            _cancel_through_server(store, args.run_id, args.reason)
            print(f"cancelled {args.run_id}")
            return 0
    # No server holds the log: nobody is running the run, so recording the cancellation is all
    # there is to do (and the next server start will not resume it).
    from events.duckdb_log import DuckDBLog
    from projections import Projector

    with DuckDBLog(str(settings.events_path), Projector()) as log:
        log.append([RunCancelled(run_id=args.run_id, ts=time.time(), reason=args.reason)],
                   [f"{args.run_id}/cancelled"])
    print(f"cancelled {args.run_id}")
    return 0


def _cancel_through_server(store, run_id: str, reason: str) -> None:
    import ray

    from actors.eventlog import LogClient
    from events.types import RunCancelled

    try:
        actor = ray.get_actor(store.names.flow_run(run_id), namespace=store.names.namespace)
    except ValueError:
        actor = None
    if actor is not None:
        try:
            ray.get(actor.cancel.remote(reason))
            return
        except ray.exceptions.RayActorError:
            pass  # it just ended: fall through to record it if still open
    LogClient(store.server).append(
        [RunCancelled(run_id=run_id, ts=time.time(), reason=reason)], [f"{run_id}/cancelled"]
    )
