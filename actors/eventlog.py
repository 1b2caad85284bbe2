"""The event log's one writer as a named, detached Ray actor, and the client other processes use.

DuckDB lets one process write a file, so one ``EventLogActor`` owns it (a ``DuckDBLog`` inside).
It is async: many appenders call at once, and each awaits the group commit that holds its
events. Events cross the process boundary as their encoded bytes (no pickled Structs); the
actor decodes them once, to validate. If the actor dies, Ray restarts it (``max_restarts=-1``)
and it recovers from its file; ``LogClient`` retries a failed call with the same idempotency
keys, so a retried append never writes twice.

Other processes subscribe with ``poll``: a long-poll that answers as soon as records after
``after`` are committed. Asking again from the last ``seq`` received is the catch-up and the
live tail in one, with no gap and no duplicate by construction.

Async appends and polls, the hot calls, go over the actor's wire (``actors.log_wire``): a direct
connection into its event loop that costs it a tenth of a Ray call. The client finds the wire
through a Ray call and falls back to Ray calls where it cannot connect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.log_wire import WireConnection, WireServer
from actors.runtime import freeze_heap
from events.codec import decode
from events.errors import EventError, LogClosed, LogLocked
from events.log import EventLog, Projector, Record, Subscription
from events.memory_log import encode_append
from events.types import AgentEvent

DEFAULT_NAME = "eventlog"
DEFAULT_PROJECTOR = "projections.projector:Projector"
POLL_LIMIT = 10_000  # records per poll answer at most
# Bytes per poll answer at most (past the first record): an answer must fit the wire's frame,
# or a subscriber would ask for the same too-big page for ever.
POLL_BYTES = 64 * 1024 * 1024
LOOP_READ = 2_000  # a poll this close to the head is answered on the loop, from memory
RETRY_FOR = 60.0  # seconds a client keeps retrying while the actor restarts
OPEN_TIMEOUT = 5.0  # seconds a restarted actor waits for its predecessor to let go of the file
WIRE_CONNECT = 2.0  # seconds to connect to the wire before falling back to Ray calls
WIRE_RETRY = 30.0  # seconds a client stays on Ray calls after the wire could not be reached
APPEND_WAIT = 60.0  # seconds without an answer before an append is sent again (same keys)

ProjectorSpec = str | Callable[[], Projector] | None


def load_projector(spec: ProjectorSpec) -> Projector | None:
    """Build the projector in the actor's process: ``"module:attr"`` names a factory (a class
    or function), or ``spec`` is the factory itself; None means no projector."""
    if spec is None:
        return None
    if callable(spec):
        return spec()
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"projector {spec!r} should be written 'module:attribute'")
    return getattr(importlib.import_module(module), attr)()


@ray.remote
class EventLogActor:
    """Owns the DuckDB file: appends, reads, long-polls and read-only queries."""

    def __init__(
        self,
        path: str,
        projector: ProjectorSpec = DEFAULT_PROJECTOR,
        open_timeout: float = OPEN_TIMEOUT,
    ):
        from events.duckdb_log import DuckDBLog

        # The writer thread gives up the GIL in every DuckDB call and must win it back from
        # the thread serving Ray calls; at the default 5 ms switch interval a busy loop held
        # it out so long that commits slowed several times over (measured: 90 commits in 2 s
        # against a CPU-bound thread at 5 ms, 168 at 1 ms). This process is the log's alone.
        sys.setswitchinterval(0.001)
        self._path = os.path.realpath(path)
        # A restart after a crash may come before the dead process's lock is gone: wait a
        # little then. A first start fails at once, naming the holder.
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        deadline = time.monotonic() + (open_timeout if restarted else 0.0)
        while True:
            try:
                self._log = DuckDBLog(path, load_projector(projector))
                break
            except LogLocked:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        self._readers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="eventlog-read")
        # People's queries queue on a thread of their own: a slow one never holds the reads
        # that runs, the API and subscribers need.
        self._queries = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eventlog-sql")
        self._changed: asyncio.Event | None = None
        self._wire = WireServer({"append": self.append, "poll": self.poll})
        self._wire_address: asyncio.Task | None = None
        freeze_heap()

    async def _blocking(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """How this actor runs a blocking DuckDB call: on a reader thread, off the loop (people's
        queries have a thread of their own, see ``sql``)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))

    def _watch(self) -> asyncio.Event:
        """An event set at the next commit (the writer thread wakes the loop)."""
        if self._changed is None:
            loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()

            def bump() -> None:
                changed, self._changed = self._changed, asyncio.Event()
                changed.set()

            self._log.add_listener(lambda seq: loop.call_soon_threadsafe(bump))
        return self._changed

    async def append(self, blobs: list[bytes], keys: list[str]) -> list[int]:
        return await asyncio.wrap_future(self._log.submit_encoded(blobs, keys))

    async def read(
        self,
        after: int = 0,
        run_id: str | None = None,
        step_id: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[int, bytes]]:
        return await self._blocking(
            self._log.read_encoded, after, run_id=run_id, step_id=step_id, limit=limit
        )

    async def poll(
        self,
        after: int = 0,
        run_id: str | None = None,
        timeout: float = 10.0,
        limit: int = POLL_LIMIT,
        max_bytes: int = POLL_BYTES,
    ) -> list[tuple[int, bytes]]:
        """Committed records after ``after`` as soon as there are any, or [] after ``timeout``;
        at most ``limit`` of them, and past the first no more than ``max_bytes`` of bodies."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        scanned = after  # nothing of ours in (after, scanned]
        while True:
            changed = self._watch()
            committed = self._log.max_seq()
            if committed > scanned:
                # A live subscriber asks for what was just committed: the log's in-memory tail
                # holds it, read here on the loop (a thread hop cost more than the read). A
                # subscriber far behind, or past the tail, is read on a reader thread.
                records = None
                if committed - scanned <= LOOP_READ:
                    records = self._log.read_recent_encoded(scanned, run_id=run_id, limit=limit)
                if records is None:
                    records = await self._blocking(
                        self._log.read_encoded, scanned, run_id=run_id, limit=limit
                    )
                if records:
                    return _within(records, max_bytes)
                scanned = committed
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return []

    async def max_seq(self) -> int:
        return self._log.max_seq()

    async def wire(self) -> tuple[str, int, bytes]:
        """Where and with what token to connect for appends and polls (opened at first ask)."""
        if self._wire_address is None:
            host = ray.util.get_node_ip_address()
            self._wire_address = asyncio.ensure_future(self._wire.start(host))
        host, port = await self._wire_address
        return host, port, self._wire.token

    async def query(self, sql: str, params: list[Any] | None = None) -> Any:
        """One read-only statement (SELECT/EXPLAIN): ``events.duckdb_log.QueryResult``."""
        return await self._blocking(self._log.query, sql, params)

    async def call_reader(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(cursor, *args, **kwargs)`` on a read cursor of the log's database, here.

        The hook for readers that need SQL over the projections (``projections.queries``);
        ``fn`` must only read.
        """
        return await self._blocking(self._with_reader, fn, args, kwargs)

    async def sql(self, text: str, max_rows: int | None = None, timeout: float | None = None):
        """A person's read-only query (``orchestrator sql``): ``projections.sql``'s guard,
        interrupted after ``timeout`` seconds, at most ``SERVER_MAX_ROWS`` rows."""
        from projections.sql import SERVER_MAX_ROWS, readonly_query

        rows = SERVER_MAX_ROWS if max_rows is None else min(max_rows, SERVER_MAX_ROWS)
        options = {"max_rows": rows, "timeout": timeout}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._queries, self._with_reader, readonly_query, (text,), options
        )

    def _with_reader(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        with self._log.reader() as cursor:
            return fn(cursor, *args, **kwargs)

    async def checkpoint(self) -> None:
        await self._blocking(self._log.checkpoint)

    async def info(self) -> dict[str, Any]:
        return {
            "path": self._path,
            "pid": os.getpid(),
            "max_seq": self._log.max_seq(),
            "batches": self._log.batches,
            "cpu_s": time.process_time(),  # this process's CPU, for benchmarks
            "wire_requests": self._wire.requests,
        }

    async def close(self) -> None:
        """Commit what is queued, checkpoint and release the file (the actor stays, closed)."""
        await self._blocking(self._log.close)


def start_event_log(
    path: str,
    *,
    name: str = DEFAULT_NAME,
    namespace: str | None = None,
    projector: ProjectorSpec = DEFAULT_PROJECTOR,
) -> Any:
    """The log actor for ``path``: the running one of that name, or a new one on this node.

    Waits until the file is open, so a held file fails here with ``LogLocked``.
    """
    path = os.path.realpath(path)
    handle = EventLogActor.options(
        name=name,
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_concurrency=1000,
        num_cpus=0,
        # The file lives on this machine: the writer (and its restarts) must stay here.
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=False
        ),
    ).remote(path, projector)
    try:
        info = ray.get(handle.info.remote())
    except RayActorError as exc:
        ray.kill(handle, no_restart=True)
        kind, message = _creation_error(exc)
        if kind == "LogLocked":
            raise LogLocked(message) from None
        raise EventError(f"the event log actor {name!r} could not open {path}: {message}") from None
    if info["path"] != path:
        raise EventError(
            f"an event log actor named {name!r} already serves {info['path']}, not {path}; "
            "use another name or the same file"
        )
    return handle


def stop_event_log(handle: Any) -> None:
    """Close the log cleanly (checkpoint, release the file), then end the actor for good."""
    try:
        ray.get(handle.close.remote())
    finally:
        ray.kill(handle, no_restart=True)


class LogClient(EventLog):
    """The ``EventLog`` contract over the log actor, from any process of the Ray cluster.

    Appends are encoded here and sent as bytes. A call that fails because the actor died is
    retried (same keys, so nothing is written twice) for up to ``retry_for`` seconds.
    ``close`` only drops this client; the actor keeps running.
    """

    def __init__(self, handle: Any, *, retry_for: float = RETRY_FOR):
        self.handle = handle
        self._retry_for = retry_for
        self.retries = 0  # calls repeated because the actor was down
        self._wire: asyncio.Task | None = None  # opens (or opened) the wire on one event loop
        self._wire_off_until = 0.0  # the wire could not be reached: Ray calls until then

    def __getstate__(self) -> dict[str, Any]:
        return {"handle": self.handle, "retry_for": self._retry_for}  # a connection stays put

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["handle"], retry_for=state["retry_for"])

    @classmethod
    def connect(
        cls, name: str = DEFAULT_NAME, *, namespace: str | None = None, **kwargs: Any
    ) -> LogClient:
        """A client of the running log actor ``name``."""
        return cls(ray.get_actor(name, namespace=namespace), **kwargs)

    # --- appending -------------------------------------------------------------------------

    def append(self, events: Sequence[AgentEvent], keys: Sequence[str]) -> list[int]:
        return self.append_encoded(encode_append(events, keys), keys)

    def append_encoded(self, blobs: Sequence[bytes], keys: Sequence[str]) -> list[int]:
        return self._call("append", list(blobs), list(keys))

    async def append_async(self, events: Sequence[AgentEvent], keys: Sequence[str]) -> list[int]:
        return await self.append_encoded_async(encode_append(events, keys), keys)

    async def append_encoded_async(self, blobs: Sequence[bytes], keys: Sequence[str]) -> list[int]:
        return await self._wire_call("append", [list(blobs), list(keys)], APPEND_WAIT)

    # --- reading ---------------------------------------------------------------------------

    def read(
        self,
        after: int = 0,
        *,
        run_id: str | None = None,
        step_id: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        return _records(self._call("read", after, run_id, step_id, limit))

    async def read_async(
        self,
        after: int = 0,
        *,
        run_id: str | None = None,
        step_id: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        return _records(await self._call_async("read", after, run_id, step_id, limit))

    def poll(
        self,
        after: int = 0,
        *,
        run_id: str | None = None,
        timeout: float = 10.0,
        limit: int = POLL_LIMIT,
    ) -> list[Record]:
        """Committed records after ``after`` as soon as there are any, or [] after ``timeout``."""
        return _records(self._call("poll", after, run_id, timeout, limit))

    async def poll_async(
        self,
        after: int = 0,
        *,
        run_id: str | None = None,
        timeout: float = 10.0,
        limit: int = POLL_LIMIT,
    ) -> list[Record]:
        return _records(await self._wire_call("poll", [after, run_id, timeout, limit], timeout + 30))

    def max_seq(self) -> int:
        return self._call("max_seq")

    def subscribe(self, after: int = 0, *, run_id: str | None = None) -> PollSubscription:
        return PollSubscription(self, after, run_id)

    def query(self, sql: str, params: list[Any] | None = None) -> Any:
        """One read-only statement run by the log's process: ``QueryResult(columns, rows)``."""
        return self._call("query", sql, params)

    def call_reader(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(cursor, *args, **kwargs)`` in the log's process; ``fn`` must be importable there."""
        return self._call("call_reader", fn, *args, **kwargs)

    def query_rows(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """``call_reader`` whose answer is made plain (``msgspec.to_builtins``): a single row
        struct becomes a one-item list and None an empty list, so callers always get rows."""
        result = self.call_reader(fn, **kwargs)
        if result is None:
            return []
        if isinstance(result, msgspec.Struct):
            return [msgspec.to_builtins(result)]
        return msgspec.to_builtins(result)

    def checkpoint(self) -> None:
        self._call("checkpoint")

    def close(self) -> None:
        """Drop this client (the log actor keeps running; ``stop_event_log`` ends it)."""
        opening, self._wire = self._wire, None
        if opening is not None and opening.done() and not opening.cancelled():
            wire = opening.result() if opening.exception() is None else None
            if wire is not None:
                with contextlib.suppress(RuntimeError):  # its loop may be gone already
                    wire.loop.call_soon_threadsafe(wire.close)

    # --- calling the actor -----------------------------------------------------------------

    async def _wire_call(self, method: str, args: list, wait: float) -> Any:
        """``method`` over the wire, or as a Ray call where the wire cannot be reached."""
        deadline = time.monotonic() + self._retry_for
        while True:
            wire = await self._connection()
            if wire is None:
                return await self._call_async(method, *args)
            try:
                return await wire.call(method, args, wait)
            except ConnectionError:
                # The actor died, restarted or went silent: find it again through Ray and send
                # the same call (an append's keys make that safe).
                if time.monotonic() > deadline:
                    raise
                self.retries += 1
                await asyncio.sleep(0.1)

    async def _connection(self) -> WireConnection | None:
        loop = asyncio.get_running_loop()
        opening = self._wire
        if opening is None or opening.get_loop() is not loop or self._spent(opening):
            opening = self._wire = loop.create_task(self._open_wire())
        # shielded: a caller cancelled while the wire opens must not cancel it for the others
        return await asyncio.shield(opening)

    def _spent(self, opening: asyncio.Task) -> bool:
        if not opening.done():
            return False
        if opening.cancelled() or opening.exception() is not None:
            return True
        wire = opening.result()
        return wire.closed if wire is not None else time.monotonic() >= self._wire_off_until

    async def _open_wire(self) -> WireConnection | None:
        try:
            host, port, token = await self._call_async("wire")
            return await WireConnection.open(host, port, token, WIRE_CONNECT)
        except (OSError, TimeoutError, AttributeError, RayTaskError):  # unreachable, or no wire
            self._wire_off_until = time.monotonic() + WIRE_RETRY
            return None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self._retry_for
        while True:
            try:
                return ray.get(getattr(self.handle, method).remote(*args, **kwargs))
            except RayTaskError as exc:
                raise _unwrap(exc) from None
            except RayActorError:
                if time.monotonic() > deadline:
                    raise
                self.retries += 1
                time.sleep(0.1)

    async def _call_async(self, method: str, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self._retry_for
        while True:
            try:
                return await getattr(self.handle, method).remote(*args, **kwargs)
            except RayTaskError as exc:
                raise _unwrap(exc) from None
            except RayActorError:
                if time.monotonic() > deadline:
                    raise
                self.retries += 1
                await asyncio.sleep(0.1)


class PollSubscription(Subscription):
    """A subscription through the actor's long-poll: never dropped, since the actor buffers
    nothing for it (each poll reads from where this subscriber is)."""

    def __init__(self, client: LogClient, after: int, run_id: str | None):
        self._client = client
        self._run_id = run_id
        self._last = after
        self._closed = False

    @property
    def last_seq(self) -> int:
        return self._last

    def get(self, timeout: float | None = None) -> list[Record]:
        while True:
            self._check()
            wait = 10.0 if timeout is None else timeout
            records = self._client.poll(self._last, run_id=self._run_id, timeout=wait)
            if records or timeout is not None:
                return self._took(records)

    async def get_async(self, timeout: float | None = None) -> list[Record]:
        while True:
            self._check()
            wait = 10.0 if timeout is None else timeout
            records = await self._client.poll_async(self._last, run_id=self._run_id, timeout=wait)
            if records or timeout is not None:
                return self._took(records)

    def close(self) -> None:
        self._closed = True

    def _check(self) -> None:
        if self._closed:
            raise LogClosed(f"the subscription was closed; resubscribe from seq {self._last}")

    def _took(self, records: list[Record]) -> list[Record]:
        if records:
            self._last = records[-1].seq
        return records


def _records(pairs: list[tuple[int, bytes]]) -> list[Record]:
    return [Record(seq, decode(blob)) for seq, blob in pairs]


def _unwrap(exc: RayTaskError) -> BaseException:
    """The log's own error (MalformedEvent, LogClosed, ...) rather than Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, (EventError, ValueError)) else exc


def _creation_error(exc: BaseException) -> tuple[str, str]:
    """The class name and message of the error that ended the actor's constructor.

    Ray reports it as text: a traceback whose last line is ``module.Class: message``.
    """
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else type(exc).__name__
    head, sep, message = last.partition(": ")
    if sep and " " not in head:
        return head.rsplit(".", 1)[-1], message
    return "", last


def _within(records: list[tuple[int, bytes]], budget: int) -> list[tuple[int, bytes]]:
    """The first of ``records`` whose bodies fit ``budget`` bytes (at least one record)."""
    total = 0
    for n, (_, body) in enumerate(records):
        total += len(body)
        if total > budget and n:
            return records[:n]
    return records
