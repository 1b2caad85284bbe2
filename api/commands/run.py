"""``orchestrator run FLOW --repo PATH``: run a flow here, watch it live, print the report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

import msgspec

from api.commands import SCRIPT_NEEDED, CommandError

NAME = "run"
HELP = "Run a flow against a repository, showing each agent live, then print the report."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("flow", help="the flow to run (see `orchestrator flows`)")
    parser.add_argument("--repo", required=True, help="the repository (or directory) to analyse")
    parser.add_argument("--band", help="small, medium or large (default: sized from the code)")
    parser.add_argument("--base", help="base ref: review the branch's changes since this ref")
    parser.add_argument("--focus", default="", help="focus area (architectural-analysis, …)")
    parser.add_argument("--symptom", default="", help="the symptom to investigate")
    parser.add_argument("--text", default="", help="free text for every agent (trusted: yours)")
    parser.add_argument("--path", action="append", default=[], dest="paths", help="limit to a path (repeatable)")
    parser.add_argument("--persona", action="append", default=[], dest="personas", help="add a persona (repeatable)")
    parser.add_argument("--engine", choices=["auto", "embedded", "openai", "vllm", "scripted"])
    parser.add_argument("--model", help="model id (one model per run)")
    parser.add_argument("--script", help="scripted engine only: JSON script file (a test double)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no live progress")


def run(args: argparse.Namespace, settings) -> int:
    from actors.service import LaunchError, LaunchRequest, Orchestrator
    from events.errors import LogLocked

    script = None
    if args.script:
        if args.engine != "scripted":
            raise CommandError("--script goes with --engine scripted")
        from actors.engines.scripted import ScriptError, load_script

        try:
            script = load_script(args.script)
        except ScriptError as exc:
            raise CommandError(str(exc), 2) from None
    req = LaunchRequest(
        flow=args.flow,
        repo=args.repo,
        band=args.band,
        base=args.base,
        focus=args.focus,
        symptom=args.symptom,
        text=args.text,
        paths=tuple(args.paths),
        personas=tuple(args.personas),
        engine=args.engine,
        model=args.model,
        origin="cli",
    )
    _check_early(req)
    url = _server_url(settings)
    if url:
        return _run_through_server(url, req, settings, args)
    from actors.engines import lacks_script

    if lacks_script(args.engine or settings.engine, req.model or settings.model, script):
        raise CommandError(SCRIPT_NEEDED, 2)
    _check_personas(req, settings)
    _check_data_dir(req, settings)
    _check_engine(req, settings)
    # Stdout is the report's alone (programs read ``--json``): Ray's driver prints what it
    # hears of its workers there (a model replica that died, say), so that goes to stderr.
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        try:
            # The flags configure this process's own Orchestrator, as ORCH_MODEL would: the
            # scripted engine plays a model path only when it is the instance's own.
            own = msgspec.structs.replace(settings, model=req.model) if req.model else settings
            orch = Orchestrator(own, engine=args.engine, script=script)
        except LogLocked as exc:  # another `orchestrator run`, or a server still starting
            raise CommandError(str(exc)) from None
        # `timeout`, a CI job or a service manager stops us with SIGTERM: stop the run as
        # Ctrl-C does (Ray's handler, set by then, would print a native stack and leave the
        # run "running" in the history).
        signal.signal(signal.SIGTERM, _interrupt)
        run_id = None
        try:
            try:
                run_id = orch.launch(req)
            except LaunchError as exc:  # bad input (2), or a model that would not start (1)
                raise CommandError(str(exc), 1 if exc.code == "model_unavailable" else 2) from None
            # The id first, so a log of this command names the run while it is still going
            # (`show` reopens it later), as the server path does.
            print(f"orchestrator: run {run_id} launched", file=sys.stderr)
            state = asyncio.run(_watch(orch, run_id, live=not args.quiet))
            _require_finished(state)
            report = orch.report(run_id, "json" if args.json else "md")
        except KeyboardInterrupt:
            if run_id is None:
                raise
            # This process runs the run: Ctrl-C means stop it, and the history says so
            # (left open, it would read "running" until a server resumed it). The cancel is
            # bounded and short; another Ctrl-C during it only gets a word, since breaking it
            # off would leave the run's fate unknown to the very line that reports it.
            _winding_down(f"orchestrator: cancelling run {run_id}; it closes in a moment")
            orch.cancel(run_id, "interrupted on the command line")
            raise CommandError(f"run {run_id} cancelled: interrupted", 130) from None
        finally:
            # The run is settled either way. A stop from here on would only break into the
            # shutdown of Ray (ours here, Ray's own at exit) with a traceback.
            _winding_down("orchestrator: shutting down Ray; a moment")
            orch.close()
    print(report, file=out)
    return 0


def _require_finished(state) -> None:
    if state.status != "finished":
        why = state.error or state.cancel_reason or state.status
        raise CommandError(f"run {state.run_id} {state.status}: {why}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _winding_down(notice: str) -> None:
    """For the rest of this process, Ctrl-C and SIGTERM print ``notice`` (once) instead of
    interrupting: the process is only winding down (SIGKILL still ends it)."""
    said = False

    def note(signum, frame) -> None:
        nonlocal said
        if not said:
            print(notice, file=sys.stderr, flush=True)
            said = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, note)


def _server_url(settings) -> str:
    """The URL of the live ``orchestrator serve`` holding this data directory, or ''."""
    from api.commands.serve import alive
    from api.commands.sql import server_info

    info = server_info(settings) or {}
    pid = int(info.get("pid") or 0)
    return str(info.get("url") or "") if pid and alive(pid) else ""


def _run_through_server(url: str, req, settings, args) -> int:
    """The server holds the event log: launch the run there, watch it, print its report."""
    from pathlib import Path

    from api.commands._remote import RemoteRuns

    if args.script or args.engine == "scripted":
        raise CommandError(
            f"the server at {url} holds this data directory and runs its own engines; the "
            "scripted engine's script is given to `serve`, or use another --data-dir", 2
        )
    # The launch body has the request's fields; the server resolves paths from its own cwd.
    body = msgspec.to_builtins(req) | {"repo": str(Path(req.repo).expanduser().resolve())}
    remote = RemoteRuns(url, settings.token)
    run_id = remote.launch({k: v for k, v in body.items() if v is not None})
    try:
        print(f"orchestrator: run {run_id} launched on the server at {remote.url}", file=sys.stderr)
        state = asyncio.run(_watch(remote, run_id, live=not args.quiet))
    except KeyboardInterrupt:
        raise CommandError(
            f"stopped watching; run {run_id} goes on in the server "
            f"(`orchestrator cancel {run_id}` stops it)", 130
        ) from None
    _require_finished(state)
    print(remote.report(run_id, "json" if args.json else "md"))
    return 0


def _check_early(req) -> None:
    """Refuse what is obviously wrong before paying for Ray (the launch checks again)."""
    from pathlib import Path

    from actors.snapshot import SnapshotError, check_base

    if not Path(req.repo).expanduser().exists():
        raise CommandError(f"no such repository: {req.repo}", 2)
    if not Path(req.repo).expanduser().is_dir():
        raise CommandError(f"the repository {req.repo} is not a directory", 2)
    _validate(req)
    try:
        check_base(req.repo, req.base)  # read-only: git resolves the ref, nothing is pinned
    except SnapshotError as exc:
        raise CommandError(str(exc), 2) from None


def _validate(req, personas=None) -> None:
    from conductor.flows import FLOWS
    from conductor.requests import RequestError, validate
    from events.types import RunRequested

    try:
        validate(
            RunRequested(
                run_id="check", ts=0.0, flow=req.flow, repo=req.repo, band=req.band,
                base=req.base, focus=req.focus, symptom=req.symptom, text=req.text,
                paths=req.paths, personas=req.personas,
            ),
            FLOWS,
            personas,
        )
    except RequestError as exc:
        raise CommandError(str(exc), 2) from None


def _check_personas(req, settings) -> None:
    """A persona the request names must be one there is (here, not on a server: the server,
    whose personas may differ, checks at launch)."""
    if req.personas:
        from personas import load_personas

        _validate(req, load_personas(settings.personas_dir or None))


def _check_data_dir(req, settings) -> None:
    """A data directory inside the analysed tree is refused before it is made there."""
    from actors.snapshot import SnapshotError, check_outside

    try:
        check_outside(req.repo, settings.data_dir, "the data directory")
    except SnapshotError as exc:
        raise CommandError(str(exc), 2) from None


def _check_engine(req, settings) -> None:
    """An engine named outright that cannot run here (vLLM not installed, an OpenAI endpoint
    unset or not answering, a model file that is not there) is refused before Ray starts,
    not ~6 s later at launch."""
    from actors.engines import engine_problem

    engine = req.engine or settings.engine
    problem = engine_problem(msgspec.structs.replace(settings, engine=engine, model=req.model or settings.model))
    if problem:
        raise CommandError(problem, 2)


async def _watch(orch, run_id: str, *, live: bool):
    from rich.console import Console
    from rich.live import Live

    from conductor.state import apply, fold

    state = fold([], run_id=run_id)
    console = Console(stderr=True)
    view = _View(console)
    screen = Live(view.render(state), console=console, refresh_per_second=8)
    if live and console.is_terminal:
        screen.start()
    try:
        async for records in orch.subscribe(run_id, 0):
            for rec in records:
                apply(state, rec.event)
            if screen.is_started:
                screen.update(view.render(state))
            if state.terminal:
                break
    finally:
        if screen.is_started:
            screen.stop()
    if live and not console.is_terminal:
        console.print(view.render(state))
    return state


class _View:
    """The terminal picture of a run: band first, then the roster and a progress bar."""

    def __init__(self, console):
        self.console = console
        self.t0 = time.time()

    def render(self, state):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        from conductor.band import why

        parts = []
        if state.request is not None:
            parts.append(Text(f"{state.request.flow} · {state.request.repo}", style="bold"))
        if state.plan is None:
            parts.append(Text("planning…"))
            return Group(*parts)
        plan = state.plan
        parts.append(Text(f"Band {plan.band}: {why(plan.band, plan.band_reason)}", style="cyan"))
        parts.append(Text(f"commit {plan.commit[:12]} · {plan.engine} · {plan.model}", style="dim"))
        for note in plan.notes:
            parts.append(Text(f"note: {note}", style="yellow"))
        table = Table(expand=False, box=None, pad_edge=False)
        for col in ("persona", "phase", "status", "tokens", "elapsed"):
            table.add_column(col)
        now = time.time()
        done = 0
        for st in state.steps.values():
            end = st.ended_ts or (now if st.started_ts else None)
            elapsed = f"{end - st.started_ts:5.1f}s" if st.started_ts and end else ""
            tokens = st.tokens_out or st.streamed_tokens
            style = {"finished": "green", "failed": "red", "running": "yellow"}.get(st.status, "")
            status = st.status
            if st.status == "running" and not st.text and not st.tools:
                # Nothing back yet: the prompt is being read, or the step waits for a free
                # stream of the model (the embedded one serves a few at a time).
                status = "waiting for the model"
            status += f" (attempt {st.attempt})" if st.attempt > 1 else ""
            if st.status == "failed":
                status += f": {st.error[:60]}"
                done += 1
            elif st.status == "finished":
                done += 1
            table.add_row(st.persona, st.step.phase, Text(status, style=style), str(tokens or ""), elapsed)
        parts.append(table)
        total = max(1, len(state.steps))
        parts.append(ProgressBar(total=total, completed=done, width=40))
        parts.append(Text(f"{done}/{total} steps · {state.status}"))
        return Group(*parts)

