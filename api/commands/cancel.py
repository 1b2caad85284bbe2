"""``orchestrator cancel RUN``: stop a run's agents and record the cancellation."""

from __future__ import annotations

import argparse

from api.commands import CommandError

NAME = "cancel"
HELP = "Cancel a running run: its streams stop and the cancellation is recorded."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN")
    parser.add_argument("--reason", default="cancelled from the command line")


def run(args: argparse.Namespace, settings) -> int:
    from api.commands._store import fold_run, open_store

    with open_store(settings) as store:
        state = fold_run(store, args.run_id)
        if state.terminal:
            raise CommandError(f"run {args.run_id} is already {state.status}")
        if store.server is not None:
            # A server holds the log: the run's supervisor (or, with none left, this command)
            # stops its agents and closes it.
            from actors.cancel import cancel_run
            from actors.eventlog import LogClient

            cancel_run(store.names, LogClient(store.server), args.run_id, args.reason)
            print(f"cancelled {args.run_id}")
            return 0
    # No server holds the log: nobody is running the run, so closing its open steps and
    # recording the cancellation is all there is to do (the next server start will not resume it).
    from actors.cancel import close_cancelled
    from events.duckdb_log import DuckDBLog
    from projections import Projector

    with DuckDBLog(str(settings.events_path), Projector()) as log:
        close_cancelled(log, args.run_id, args.reason)
    print(f"cancelled {args.run_id}")
    return 0
