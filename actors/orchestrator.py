"""``Orchestrator``: starts the shared actors and is the one door for launches and reads.

See ``actors.service`` for the contract the CLI and the API rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import ray

from actors.config import Settings
from actors.runtime import Names, ensure_ray, head_node, names_for, on_head, ray_reachable
from actors.service import LaunchError, LaunchRequest, NotFound
from actors.step_runner import ModelPort
from conductor.state import RunState, fold
from events.log import Record
from events.types import TERMINAL_RUN, RunPlanned, RunRequested, RunResumed

logger = logging.getLogger(__name__)

# Long-poll window of a subscription; short enough to notice a closed client promptly.
POLL_S = 1.0
# How often a close checks that Ray still answers while it stops the actors.
CLOSE_POLL_S = 0.5
# A run whose supervisor is lost while the server runs (its process died, or it gave up on a log
# that did not answer) gets a new one, as a restart would give it, this many times at most:
# one that keeps dying is recorded as failed rather than replaced for ever.
SUPERVISOR_LOSSES = 3
# How long a lost supervisor may take to be gone before its name is given to the next one.
GONE_WAIT_S = 10.0


class Orchestrator:
    def __init__(self, settings: Settings, *, engine: str | None = None, script: Any = None):
        from actors.eventlog import LogClient, start_event_log
        from personas import load_personas

        # Before Ray starts: a persona directory that cannot load stops start-up with its
        # file and field named, instead of failing every launch afterwards.
        self._personas = load_personas(settings.personas_dir or None)
        self.settings = settings
        self._engine_override = engine
        self._script = script
        namespace = ensure_ray(settings.agent_resource)
        # This process writes the data directory, so it must be on the head (checked here).
        self.names: Names = msgspec.structs.replace(names_for(settings, namespace), head_node=head_node())
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        handle = start_event_log(
            str(settings.events_path), name=self.names.eventlog, namespace=self.names.namespace
        )
        self.log = LogClient(handle)
        from actors.agent_step import agent_pool

        self._agents = agent_pool(self.names)  # started now, so the first run does not wait
        if settings.agent_resource and not ray.cluster_resources().get(settings.agent_resource):
            logger.warning(
                "no Ray node declares the agent resource %r yet: runs wait for one to join "
                "(an autoscaling cluster starts one for them)", settings.agent_resource,
            )
        self._models: dict[str, ModelPort] = {}
        self._runs: dict[str, Any] = {}
        self._losses: dict[str, int] = {}  # run id -> supervisors it lost while this server runs
        # Held while a run gets a new supervisor, and by a cancel of that run: a cancel reaches
        # the supervisor that runs it, and no supervisor is made for a run just cancelled.
        self._run_locks: dict[str, threading.Lock] = {}
        self._closed = False
        self._spare_lock = threading.Lock()
        self._spare: tuple[str, Any] | None = None
        self._spare_warm = None  # the spare's warm-up call
        self._replenish()  # the first run's supervisor, made now

    # --- launching --------------------------------------------------------------------------

    def launch(self, req: LaunchRequest) -> str:
        """Validate, pin and plan a run, write its first events, and start its FlowRun."""
        from actors.snapshot import SnapshotError, pin
        from conductor.flows import FLOWS
        from conductor.plan import plan
        from conductor.requests import RequestError, validate

        requested = RunRequested(
            run_id="",  # the spare supervisor's, once the request is known to be good
            ts=time.time(),
            flow=req.flow,
            repo=str(Path(req.repo).expanduser().resolve()) if req.repo else "",
            band=req.band,  # type: ignore[arg-type]
            base=req.base,
            focus=req.focus,
            symptom=req.symptom,
            text=req.text,
            paths=tuple(req.paths),
            personas=tuple(req.personas),
            engine=req.engine or self._engine_override or self.settings.engine,
            model=req.model or self.settings.model,
            origin=req.origin,
            thread=req.thread,
        )
        try:
            validate(requested, FLOWS, self._personas)
        except RequestError as exc:
            raise LaunchError(str(exc), exc.code) from None
        engine, model = self._resolve_engine(requested)
        run_id, actor = self._take_spare()
        requested = msgspec.structs.replace(requested, run_id=run_id)
        appending = written = False
        try:
            try:
                snapshot = pin(
                    requested.repo,
                    base=requested.base,
                    paths=requested.paths,
                    work_dir=self.names.run_dir(run_id),
                    copy_limit_bytes=self.settings.copy_limit_bytes,
                )
            except SnapshotError as exc:
                raise LaunchError(str(exc), "bad_repository") from None
            try:
                planned = plan(
                    requested, snapshot, self._personas, model=model, engine=engine, ts=time.time()
                )
            except RequestError as exc:
                raise LaunchError(str(exc), exc.code) from None
            port = self._ensure_model(engine, model)
            appending = True
            self.log.append([requested, planned], [f"{run_id}/requested", f"{run_id}/planned"])
            written = True
            ray.get(actor.start.remote(port))
        except BaseException as exc:
            if written:  # left planned, the next server start would resume a run nobody has
                self._abandon(run_id, actor, exc)
            elif not appending:  # refused before any event: leave nothing, not even its snapshot
                shutil.rmtree(self.names.run_dir(run_id), ignore_errors=True)
            self._give_back(run_id, actor)
            raise
        self._runs[run_id] = actor
        self._supervise(run_id, actor)
        return run_id

    def _abandon(self, run_id: str, actor: Any, exc: BaseException) -> None:
        """Close a run whose launch stopped after its first events (Ctrl-C, a lost actor)."""
        from actors.cancel import cancel_run

        try:
            if isinstance(exc, KeyboardInterrupt):
                cancel_run(self.names, self.log, run_id, "interrupted before the run started", actor)
            else:
                self._fail(run_id, f"could not be started: {type(exc).__name__}: {exc}")
        except Exception:  # the launch's own error is the one to raise
            logger.exception("closing run %s after its launch failed", run_id)

    # --- the spare supervisor ---------------------------------------------------------------
    # Creating an actor (a process) takes 0.3-1 s here; a launch would wait that long before
    # its first step. So the next run's supervisor is made ahead, named for the run id it
    # will serve, and warms up (imports, personas, handles) while nobody waits on it. Making
    # one costs ~0.9 s of CPU, so it is not made while the run just launched starts (on two
    # cores that slowed the run's first wave by a third) but once that run has ended: a launch
    # right behind another one makes its own supervisor.

    def _new_spare(self) -> tuple[str, Any]:
        run_id = new_run_id()
        actor = self._create_run(run_id)
        self._spare_warm = actor.warm.remote()  # not waited for
        return run_id, actor

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until the next launch will find its supervisor made and warm: after start-up,
        or once the runs launched before have ended (benchmarks time launches from here)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._spare_lock:
                spare, warm = self._spare, self._spare_warm
            if spare is not None:
                ray.get(warm, timeout=max(0.0, deadline - time.monotonic()))
                return
            if time.monotonic() > deadline:
                raise TimeoutError("no spare supervisor was made in time")
            time.sleep(0.02)

    def _take_spare(self) -> tuple[str, Any]:
        with self._spare_lock:
            taken, self._spare = self._spare or self._new_spare(), None
        return taken

    def _replenish(self) -> None:
        with self._spare_lock:
            if self._spare is None and not self._closed:
                self._spare = self._new_spare()

    def _supervise(self, run_id: str, actor: Any) -> None:
        """Watch the run's supervisor from a thread: once the run has ended the next spare is
        made; if the supervisor went with its run unfinished, the run gets a new one."""

        def watch() -> None:
            current = actor
            while current is not None:
                try:
                    status = ray.get(current.wait.remote())
                except Exception:  # its actor is gone: the log says whether its run ended
                    status = None
                if status in TERMINAL_RUN or self._closed:
                    break
                current = self._replace(run_id, current)
            # Nothing replaces its supervisor from now on: what that took goes (one per run).
            self._run_locks.pop(run_id, None)
            self._losses.pop(run_id, None)
            try:
                self._replenish()
            except Exception:  # shutting down: the next launch makes its own supervisor
                pass

        self._run_locks.setdefault(run_id, threading.Lock())
        threading.Thread(target=watch, name="supervise-run", daemon=True).start()

    def _replace(self, run_id: str, lost: Any) -> Any:
        """A new supervisor for a run whose supervisor went before the run ended (None when
        the run did end, or must not go on)."""
        try:
            with self._run_lock(run_id):
                return self._replace_locked(run_id, lost)
        except Exception as exc:  # the run must not stay unfinished with nobody running it
            logger.exception("giving run %s a new supervisor", run_id)
            if not self._closed:  # closing, it stays unfinished: the next start resumes it
                error = f"its supervisor was lost and could not be replaced: {type(exc).__name__}: {exc}"
                _quietly(self._fail, run_id, error)
            return None

    def _replace_locked(self, run_id: str, lost: Any) -> Any:
        from actors.cancel import stop_steps

        actor = None
        try:
            if self._closed or self.state(run_id).terminal:
                return None
            _gone(lost)
            # Its steps still stream on the agents (a caller's death cancels nothing): stopped,
            # the new supervisor picks each up from the log instead of running it twice.
            stop_steps(self.names, run_id)
            state = self.state(run_id)  # read again: an append the lost one sent may have landed
            if state.terminal or state.plan is None or self._closed:
                return None
            losses = self._losses[run_id] = self._losses.get(run_id, 0) + 1
            if losses > SUPERVISOR_LOSSES:
                self._fail(run_id, f"its supervisor was lost {losses} times")
                return None
            port = self._ensure_model(state.plan.engine, state.plan.model)
            self._resumed(state, "its supervisor was lost")
            actor = self._create_run(run_id)
            ray.get(actor.start.remote(port))
            self._runs[run_id] = actor
            if self._closed:  # closed meanwhile, perhaps after its actors were stopped
                _quietly(ray.kill, actor)
                return None
            return actor
        except BaseException:
            if actor is not None:
                _quietly(ray.kill, actor)
            raise

    def _run_lock(self, run_id: str) -> Any:
        # A run not watched here (ended, or run elsewhere) gets no new supervisor from here:
        # a cancel has nothing to exclude, and leaves no lock behind.
        return self._run_locks.get(run_id) or contextlib.nullcontext()

    def _resumed(self, state: RunState, reason: str) -> None:
        in_flight = tuple(st.step_id for st in state.steps.values() if st.in_flight)
        self.log.append(
            [RunResumed(run_id=state.run_id, ts=time.time(), reason=reason, in_flight=in_flight)],
            [f"{state.run_id}/resumed/{state.resumes}"],
        )

    def _give_back(self, run_id: str, actor: Any) -> None:
        """After a failed launch its supervisor stays the spare, unless the launch had begun
        to use its run id (a pinned snapshot, events): then it goes with it."""
        try:
            used = self.names.run_dir(run_id).exists() or bool(self.log.read(0, run_id=run_id, limit=1))
        except Exception:
            used = True
        with self._spare_lock:
            if not used and self._spare is None and not self._closed:
                self._spare = (run_id, actor)
                return
        _quietly(ray.kill, actor)
        self._replenish()

    def resume_all(self) -> list[str]:
        """Pick up every run that is not terminal (after a restart): fold, then advance.

        Each run's ``FlowRun`` is created at once and they start together, so the time to the
        first resumed token does not grow with the number of runs. A run that cannot be
        resumed (its model cannot be started again, say) is recorded as failed with the
        reason, rather than keeping the server from starting or staying unfinished for ever.
        """
        from actors.cancel import stop_steps
        from projections.queries import list_runs

        created = []
        rows = self.log.query_rows(list_runs, status=("requested", "planned", "running"), limit=10_000)
        states = [self.state(row["run_id"]) for row in rows if row["run_id"] not in self._runs]
        states = [state for state in states if not state.terminal and state.plan is not None]
        # On a cluster the agents outlive a server: these runs' steps may still stream there.
        # Stopped, each is picked up from the log once rather than run twice.
        stop_steps(self.names, *(state.run_id for state in states))
        for state in states:
            run_id = state.run_id
            self._resumed(state, "server restarted")
            try:
                port = self._ensure_model(state.plan.engine, state.plan.model)
                created.append((run_id, self._create_run(run_id), port))
            except LaunchError as exc:  # its model cannot start here: the error says why
                self._fail(run_id, f"could not be resumed: {exc}")
            except Exception as exc:  # one run that cannot go on must not stop the others
                self._fail(run_id, f"could not be resumed: {type(exc).__name__}: {exc}")
        refs = [actor.start.remote(port) for _, actor, port in created]
        for (run_id, actor, _), ref in zip(created, refs):
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                self._fail(run_id, f"could not be resumed: {type(exc).__name__}: {exc}")
                continue
            self._runs[run_id] = actor
            self._supervise(run_id, actor)
        return [run_id for run_id, _, _ in created if run_id in self._runs]

    def _fail(self, run_id: str, error: str) -> None:
        from events.types import RunFailed

        # The key the FlowRun uses for its own failure: a run fails once.
        self.log.append([RunFailed(run_id=run_id, ts=time.time(), error=error[:2000])], [f"{run_id}/failed"])

    def _create_run(self, run_id: str):
        from actors.flow_run import FlowRunActor

        return FlowRunActor.options(
            name=self.names.flow_run(run_id),
            namespace=self.names.namespace,
            get_if_exists=True,
            # The supervisor reads the run's snapshot from the data directory: it runs on the head.
            scheduling_strategy=on_head(self.names),
        ).remote(self.names, self.settings, run_id)

    def _resolve_engine(self, requested: RunRequested) -> tuple[str, str]:
        from actors.engines import select_engine

        if (
            requested.engine == "scripted"
            and self._script is None
            and requested.model != self.settings.model
        ):
            # Without a script the test double plays the JSON file its model names: a caller
            # of the API could name any file on this machine. It plays only its own.
            raise LaunchError(
                "the scripted engine is a test double: it plays only the script this "
                "Orchestrator was started with, never a model a launch names",
                "bad_engine",
            )
        settings = msgspec.structs.replace(
            self.settings, engine=requested.engine, model=requested.model
        )
        try:
            return select_engine(settings)
        except ValueError as exc:
            raise LaunchError(str(exc), "bad_engine") from None

    def _ensure_model(self, engine: str, model: str) -> ModelPort:
        from actors.config import ConfigError
        from actors.model import ModelUnavailable, start_model

        key = self.names.model_app(engine, model)
        if key not in self._models:
            settings = msgspec.structs.replace(self.settings, engine=engine, model=model)
            try:
                caps = start_model(settings, engine=engine, script=self._script, name=key)
            except (ModelUnavailable, ConfigError) as exc:
                raise LaunchError(str(exc), "model_unavailable") from None
            self._models[key] = ModelPort(
                supports_tools=caps.supports_tools, supports_continue=caps.supports_continue
            )
        return self._models[key]

    # --- controlling ------------------------------------------------------------------------

    def wait(self, run_id: str, timeout: float | None = None) -> str:
        """Wait for the run to end (or ``timeout``); its status then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        actor = self._actor(run_id)
        while actor is not None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                status = ray.get(actor.wait.remote(left))
                # Unfinished before the timeout: that supervisor gave up (a log that did not
                # answer), and the watch gives the run a new one.
                if status in TERMINAL_RUN or (deadline is not None and time.monotonic() >= deadline):
                    return status
            except ray.exceptions.RayActorError:
                pass  # the run ended and its actor retired, or the actor was lost
            actor = self._successor(run_id, actor, deadline)
        return self.state(run_id).status

    def _successor(self, run_id: str, lost: Any, deadline: float | None) -> Any:
        """The supervisor that replaced ``lost`` (see ``_supervise``), once there is one; None
        when the run has ended, or is not watched here (any more: a replacement that failed
        leaves none to wait for)."""
        while run_id in self._run_locks and not self._closed:
            if self._runs[run_id] is not lost:
                return self._runs[run_id]
            if self.state(run_id).terminal or (deadline is not None and time.monotonic() >= deadline):
                return None
            time.sleep(0.2)
        return None

    def cancel(self, run_id: str, reason: str = "") -> bool:
        from actors.cancel import cancel_run

        self._require(run_id)
        with self._run_lock(run_id):
            return cancel_run(self.names, self.log, run_id, reason, self._runs.get(run_id))

    def _actor(self, run_id: str):
        if run_id in self._runs:
            return self._runs[run_id]
        try:
            return ray.get_actor(self.names.flow_run(run_id), namespace=self.names.namespace)
        except ValueError:
            return None

    # --- reading ----------------------------------------------------------------------------

    def state(self, run_id: str) -> RunState:
        records = self.log.read(0, run_id=run_id)
        if not records:
            raise NotFound(f"no run {run_id!r}")
        return fold((r.event for r in records), run_id=run_id)

    def events(self, run_id: str | None, after: int = 0, limit: int = 1000) -> list[Record]:
        if run_id is not None:
            self._require(run_id)
        return self.log.read(after, run_id=run_id, limit=limit)

    def _require(self, run_id: str) -> None:
        """NotFound for a run the log does not hold (one record read, not the run)."""
        if not self.log.read(0, run_id=run_id, limit=1):
            raise NotFound(f"no run {run_id!r}")

    async def subscribe(self, run_id: str | None, after: int = 0) -> AsyncIterator[list[Record]]:
        """Committed records after ``after``: the catch-up, then live, until the caller stops."""
        last = after
        while True:
            records = await self.log.poll_async(last, run_id=run_id, timeout=POLL_S)
            if records:
                last = records[-1].seq
                yield records
            else:
                await asyncio.sleep(0)

    def runs(self, **filters: Any) -> list[dict]:
        from projections.queries import list_runs

        return self.log.query_rows(list_runs, **filters)

    def run(self, run_id: str) -> dict:
        from projections.queries import get_run, get_steps

        run = self.log.query_rows(get_run, run_id=run_id)
        if not run:
            raise NotFound(f"no run {run_id!r}")
        steps = self.log.query_rows(get_steps, run_id=run_id)
        return {"run": run[0], "steps": steps, "seq": self.log.max_seq()}

    def report(self, run_id: str, fmt: str = "md") -> str:
        from conductor.report import build_report, render_html, render_json, render_markdown

        renderers = {"md": render_markdown, "json": render_json, "html": render_html}
        if fmt not in renderers:
            raise LaunchError(f"unknown report format {fmt!r}: use md, json or html", "bad_format")
        state = self.state(run_id)
        if state.report is None:
            raise LaunchError(f"run {run_id} has no report yet (status {state.status})", "not_ready")
        return renderers[fmt](build_report(state, self._snapshot(state)))

    def _snapshot(self, state: RunState):
        from actors.snapshot import GitSnapshot, SnapshotError

        try:
            return GitSnapshot.open(
                state.request.repo, state.plan.commit, work_dir=str(self.names.run_dir(state.run_id))
            )
        except SnapshotError:
            return None  # the report renders from the events alone

    def flows(self) -> list[dict]:
        from conductor.flows import FLOWS

        return [msgspec.to_builtins(f) for f in FLOWS.values()]

    def personas(self) -> list[dict]:
        return [
            msgspec.to_builtins(p) for p in sorted(self._personas.values(), key=lambda p: p.name)
        ]

    def analytics(self) -> dict[str, list[dict]]:
        from projections.analytics import analytics

        return self.log.query_rows(analytics)

    def send_report(self, run_id: str, request_id: str) -> dict:
        raise LaunchError("sending to chat is served by the API layer", "not_supported")

    def close(self) -> None:
        """Stop this Orchestrator's runs, agents and models; checkpoint and release the log.

        Runs that were still going stay non-terminal in the log: the next start resumes them.
        """
        if self._closed:
            return
        self._closed = True
        # A signal to the whole process group (`timeout`, systemd's default stop) stops Ray's
        # own processes with ours, and every Ray call then hangs for a minute before failing.
        # So the stopping runs on a thread, and is given up once Ray no longer answers: the
        # log has everything committed, and the next start resumes what was running.
        stopping = threading.Thread(target=self._stop_actors, name="orchestrator-close", daemon=True)
        stopping.start()
        while stopping.is_alive():
            stopping.join(CLOSE_POLL_S)
            if stopping.is_alive() and not ray_reachable():
                logger.warning("Ray stopped before this Orchestrator; leaving its actors as they are")
                return

    def _stop_actors(self) -> None:
        from actors.agent_step import stop_agent_pool
        from actors.eventlog import stop_event_log
        from actors.model import stop_model

        for actor in list(self._runs.values()):
            _quietly(ray.kill, actor)
        with self._spare_lock:
            if self._spare is not None:
                _quietly(ray.kill, self._spare[1])
                self._spare = None
        stop_agent_pool(self._agents)
        for name in self._models:
            _quietly(stop_model, name)
        stop_event_log(self.log.handle)


def new_run_id() -> str:
    """A run id: random, short enough to type (the run's times are in its events)."""
    return "r" + uuid.uuid4().hex[:11]


def _gone(actor: Any) -> None:
    """End ``actor`` and wait (a while) until Ray says it is dead, so its name is free."""
    _quietly(ray.kill, actor)
    deadline = time.monotonic() + GONE_WAIT_S
    while time.monotonic() < deadline:
        try:
            ray.get(actor.status.remote(), timeout=GONE_WAIT_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return
        time.sleep(0.05)


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # closing is best effort: the process may already be gone
        pass
