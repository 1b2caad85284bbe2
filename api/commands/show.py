"""``orchestrator show RUN``: a run's report (or, before it exists, where the run stands)."""

from __future__ import annotations

import argparse

from api.commands import CommandError, write_output

NAME = "show"
HELP = "Print a run's report as Markdown, JSON or HTML."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN")
    parser.add_argument("--format", choices=["md", "json", "html"], default="md")
    parser.add_argument("--output", "-o", help="write to this file instead of stdout")


def run(args: argparse.Namespace, settings) -> int:
    from api.commands._store import fold_run, open_store
    from conductor.report import build_report, render_html, render_json, render_markdown

    with open_store(settings) as store:
        state = fold_run(store, args.run_id)
    if state.report is None:
        raise CommandError(
            f"run {args.run_id} has no report yet (status {state.status}"
            + (f": {state.error}" if state.error else "") + ")"
        )
    render = {"md": render_markdown, "json": render_json, "html": render_html}[args.format]
    text = render(build_report(state))
    if args.output is not None:
        if state.request is not None:
            _check_outside_repo(state.request.repo, args.output)
        write_output(args.output, text)
    else:
        print(text)
    return 0


def _check_outside_repo(repo: str, path: str) -> None:
    """The report file must not land in the repository the run analysed (read-only holds
    for every path Orchestrator writes, the user's own included)."""
    from actors.snapshot import SnapshotError, check_outside

    try:
        check_outside(repo, path, "the report file", "write it somewhere outside the repository")
    except SnapshotError as exc:
        raise CommandError(str(exc), 2) from None
