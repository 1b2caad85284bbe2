"""``orchestrator rebuild``: refold ``flow_runs`` and ``flow_steps`` from the whole log.

It opens the file for writing, so it runs only while no server holds it; a running server keeps
the projections in step itself (and rebuilds them at start-up when their version changed).
"""

from __future__ import annotations

import argparse
import time

from api.commands import CommandError

NAME = "rebuild"
HELP = "Rebuild the run and step projections from the event log (server stopped)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")


def run(args: argparse.Namespace, settings) -> int:
    import duckdb
    import msgspec

    from api.commands.sql import holder, require_log, server_info
    from projections.projector import LOG_TABLE, rebuild

    path = require_log(settings)
    try:
        con = duckdb.connect(str(path))
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise CommandError(f"cannot open {path}: {exc}") from None
        info = server_info(settings)
        who = f"the Orchestrator server (pid {info['pid']})" if info and "pid" in info else (
            holder(str(exc))
        )
        raise CommandError(
            f"{path} is held by {who}; a running server keeps the projections in step itself. "
            "Stop it, then run rebuild again."
        ) from None
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if LOG_TABLE not in tables:
            raise CommandError(f"{path} holds no event log (no {LOG_TABLE!r} table)")
        started = time.perf_counter()
        result = rebuild(con)
        elapsed = time.perf_counter() - started
    finally:
        con.close()
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        print(
            f"rebuilt flow_runs ({result.runs} runs) and flow_steps ({result.steps} steps) "
            f"from {result.events} events (last seq {result.last_seq}) in {elapsed:.2f} s"
        )
    return 0
