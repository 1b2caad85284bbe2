"""``orchestrator runs``: the run history, newest first."""

from __future__ import annotations

import argparse
import json
import sys
import time

from api.commands import whole_number
from events.types import RUN_STATUSES
from projections.queries import MAX_LIMIT

NAME = "runs"
HELP = "List past and running runs (history), newest first."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flow", help="only this flow")
    parser.add_argument("--status", choices=RUN_STATUSES, help="only runs in this status")
    parser.add_argument("--repo", help="only this repository")
    parser.add_argument("--text", help="free text to look for")
    parser.add_argument(
        "--limit", type=whole_number(1, MAX_LIMIT), default=50, help="at most this many runs (default 50)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace, settings) -> int:
    import msgspec
    from rich.console import Console
    from rich.table import Table

    from api.commands._store import open_store
    from projections.queries import list_runs

    with open_store(settings) as store:
        rows = store.call(list_runs, flow=args.flow, status=args.status, repo=args.repo,
                          text=args.text, limit=args.limit)
    rows = [msgspec.to_builtins(r) for r in rows]
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if not rows:
        print("no runs match" if _filtered(args) else "no runs yet")
        hint = _unknown_flow(args.flow)
        if hint:
            print(hint, file=sys.stderr)
        return 0
    table = Table(box=None)
    for col in ("run", "flow", "band", "status", "steps", "tokens", "started", "repository"):
        table.add_column(col)
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_ts"])) if r.get("created_ts") else ""
        table.add_row(r["run_id"], r.get("flow") or "", r.get("band") or "", r.get("status") or "",
                      f"{r.get('steps_finished', 0)}/{r.get('steps_total', 0)}",
                      str(r.get("tokens_out") or 0), created, r.get("repository") or "")
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped: do not squeeze ids and paths to 80 columns
    console.print(table)
    return 0


def _filtered(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) is not None for name in ("flow", "status", "repo", "text"))


def _unknown_flow(flow: str | None) -> str | None:
    """A note when ``--flow`` names no flow this version has: likely a typo. The filter still
    ran, since the history may hold runs of a flow a later version dropped."""
    from conductor.flows import FLOWS

    if flow is None or flow in FLOWS:
        return None
    return f"note: no flow is named {flow!r}; the flows are {', '.join(sorted(FLOWS))}"
