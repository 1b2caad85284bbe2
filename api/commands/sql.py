"""``orchestrator sql``: one read-only query over the event log and its projections.

The file is opened ``read_only`` with external file access disabled, and the statement must
pass ``projections.sql.readonly_query``'s guard: a refused statement runs nothing and leaves the
file as it was. While a server holds the file (DuckDB lets one process open it for writing),
the query goes through the server's event-log actor instead, found from
``<data_dir>/server.json`` (``{"ray_address", "namespace", "pid"}``, written by the server).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from api.commands import CommandError, whole_number

NAME = "sql"
HELP = "Run one read-only SQL query over the event log and the projections."

SERVER_FILE = "server.json"
MAX_ROWS = 100_000_000  # far more than a terminal shows; past it DuckDB's fetch overflows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="one SELECT (or EXPLAIN, or a PRAGMA that describes)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--max-rows", type=whole_number(0, MAX_ROWS), default=None, metavar="N",
        help="print at most N rows",
    )


def run(args: argparse.Namespace, settings) -> int:
    from projections.sql import QueryTimedOut, ReadOnlyViolation

    try:
        result, served = query(settings, args.query, max_rows=args.max_rows)
    except (ReadOnlyViolation, QueryTimedOut) as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(to_json(result))
    else:
        print_table(result, served=served)
    return 0


def query(settings, sql: str, *, max_rows: int | None = None):
    """(``projections.sql.QueryResult`` of ``sql``, whether a server answered it): from the
    file, or through the server that holds it."""
    import duckdb

    from projections.sql import readonly_query

    path = require_log(settings)
    try:
        con = duckdb.connect(
            str(path), read_only=True, config={"enable_external_access": False}
        )
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise CommandError(f"cannot open {path}: {exc}") from None
        return _through_server(settings, sql, max_rows, str(exc)), True
    try:
        return readonly_query(con, sql, max_rows=max_rows, timeout=settings.sql_timeout), False
    except duckdb.Error as exc:
        raise CommandError(f"query failed: {_first_line(exc)}{_stale_hint(con)}") from None
    finally:
        con.close()


def _stale_hint(con) -> str:
    from projections.projector import is_current

    if is_current(con):
        return ""
    return (
        " (the tables in this file are from an earlier version of Orchestrator: the server or"
        " a run rebuilds them when it next opens the file, or run `orchestrator rebuild`)"
    )


def require_log(settings) -> Path:
    path = Path(settings.events_path)
    if not path.exists():
        raise CommandError(
            f"no event log at {path}: nothing has run with this data directory "
            "(set --data-dir or ORCH_DATA_DIR)"
        )
    return path


def server_info(settings) -> dict[str, Any] | None:
    """What the running server recorded about itself, or None."""
    file = Path(settings.data_dir) / SERVER_FILE
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read {file}: {exc}") from None


def holder(lock_error: str) -> str:
    """Which process DuckDB says holds the file, in words."""
    import re

    pid = re.search(r"PID (\d+)", lock_error)
    return f"process {pid.group(1)}" if pid else "another process"


def _through_server(settings, sql: str, max_rows: int | None, lock_error: str):
    import ray

    from actors.runtime import NAMESPACE

    info = server_info(settings) or {}
    held = f"{settings.events_path} is held by {holder(lock_error)}"
    if ray.is_initialized():  # this process already joined a Ray (tests, an embedding app)
        namespace = info.get("namespace") or ray.get_runtime_context().namespace or NAMESPACE
        return _ask_actor(settings, namespace, sql, max_rows, held)
    namespace = info.get("namespace") or NAMESPACE
    if info.get("ray_address"):
        _token_auth_as_auto_would()
    try:
        ray.init(
            address=info.get("ray_address") or "auto",
            namespace=namespace,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CommandError(
            f"{held}, and no running Orchestrator server could be reached to ask it "
            f"({_first_line(exc)})"
        ) from None
    try:
        return _ask_actor(settings, namespace, sql, max_rows, held)
    finally:
        ray.shutdown()


def _token_auth_as_auto_would() -> None:
    """Use Ray's token (``~/.ray/auth_token``) as ``ray.init(address="auto")`` would.

    A local ``ray.init`` (the server's) turns token authentication on by default, but Ray
    only picks the token up by itself for ``"auto"``, never for an explicit address.
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    quiet = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its notice is for people starting a cluster, not joining
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


def _ask_actor(settings, namespace: str, sql: str, max_rows: int | None, held: str):
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    from actors.runtime import names_for
    from projections.sql import QueryTimedOut, ReadOnlyViolation

    name = names_for(settings, namespace).eventlog
    try:
        actor = ray.get_actor(name, namespace=namespace)
    except ValueError:
        raise CommandError(
            f"{held}, which is not an Orchestrator server of this data directory "
            f"(no actor {name!r} in namespace {namespace!r}); stop that process and retry"
        ) from None
    try:
        return ray.get(
            actor.sql.remote(sql, max_rows=max_rows, timeout=settings.sql_timeout)
        )
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, (ReadOnlyViolation, QueryTimedOut)):
            raise type(cause)(str(cause)) from None
        raise CommandError(f"query failed: {_first_line(cause or exc)}") from None
    except RayActorError as exc:
        raise CommandError(f"the server's event log is not answering: {_first_line(exc)}") from None


def to_json(result) -> str:
    import msgspec

    return msgspec.json.encode(
        {"columns": result.columns, "types": result.types, "rows": result.rows,
         "truncated": result.truncated},
        enc_hook=str,
    ).decode()


def print_table(result, *, served: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*result.columns, show_lines=False, highlight=False)
    for row in result.rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    console = Console(file=sys.stdout, soft_wrap=True)
    if not console.is_terminal:
        console = Console(file=sys.stdout, width=240)  # piped: keep values whole, not "ad…"
    console.print(table)
    shown = len(result.rows)
    note = f"{shown} row{'s' if shown != 1 else ''}"
    if result.truncated:
        from projections.sql import SERVER_MAX_ROWS

        if served and shown == SERVER_MAX_ROWS:
            note += f" (more rows matched; a server answers at most {SERVER_MAX_ROWS:,})"
        else:
            note += " (more rows matched; raise --max-rows)"
    console.print(note, style="dim")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
