"""The WebSocket ``/ws``: subscribe to one run or all, from a ``seq``; launch and cancel.

Client frames: ``subscribe {run_id|null, after?}``, ``unsubscribe {run_id|null}``,
``launch {...LaunchBody, request_id?}``, ``cancel {run_id, reason?}``, ``ping {id?}``.

Server frames: on ``subscribe`` a ``snapshot`` (the projection rows, and the ``after`` from
which events follow), then one ``event {sub, seq, run_id, event}`` per committed event, in
``seq`` order, with no gap and no duplicate (``sub`` names the subscription: the run id, or
null for all runs); ``launched``, ``ack`` (cancel, unsubscribe), ``error {code, message}``,
``pong``, and a ``heartbeat {ts}`` every few seconds (15 by default).

One live feed of the log per server (``Hub``) is fanned out to every subscription, each
frame encoded once; a subscription first catches up from the log by pages, pulled at the
pace its client reads.

A client that reconnects and subscribes with ``after`` = the last ``seq`` it saw misses
nothing and sees nothing twice; an ``after`` past the log's end is refused
(``after_past_end``) rather than followed in silence. A client that does not read fast enough
is disconnected (close code 1013 and a reason) instead of slowing the others: each connection
has a bounded send queue; what does not fit waits, up to a bound, for the client to read, and
a client that reads nothing for a while (``SLOW_AFTER_S``) is cut off. A share of the queue is
kept for the connection's own replies (pong, ack, error, heartbeat), so replying to a client
that reads through a backlog never overflows it.

One connection cannot take the server from the others: its frames are served at most
``CONCURRENT_WORK`` at a time (each reads the log on a worker thread, and the threads are
shared with the REST API), it holds at most ``MAX_SUBSCRIPTIONS``, and launches and cancels
beyond ``MAX_WAITING`` unanswered are refused as ``busy``.

Frame types are msgspec Structs (one tagged union per direction, ``tag_field="type"``); their
JSON Schema, with the events', is ``schema_document()`` (``GET /api/schema``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Annotated, Any, Literal

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from actors.service import LaunchError, NotFound
from api.routes.shapes import ApiError, LaunchBody, past_end, to_launch_request
from events.errors import SubscriberDropped
from events.log import Record
from events.types import AgentEvent
from projections.rows import RunRow, StepRow

log = logging.getLogger("orchestrator.ws")

QUEUE_FRAMES = 2048  # frames a client may lag behind before it is disconnected
# Room in the send queue kept for the connection's own frames (pong, ack, heartbeat, error):
# event frames fill the queue only up to the rest, so a reply never overflows the queue of a
# client that is reading through a backlog.
CONTROL_FRAMES = 64
BATCH_FRAMES = 256  # frames one ``batch`` message carries at most
SLOW_CLOSE = 1013  # "try again later": the client should reconnect and resubscribe
SLOW_AFTER_S = 10.0  # a catch-up waiting this long for the client to read: the client is gone
CLOSE_WAIT_S = 30.0  # how long a close frame may wait for a full socket to drain
RECENT_RUNS = 50
CATCH_UP_PAGE = 1000
DISPATCH_PART = 256  # live records fanned out in one go
PENDING_MAX = 100_000  # live frames held for a subscription catching up or behind
MAX_SUBSCRIPTIONS = 256  # subscriptions one connection may hold at once
# Frames of one connection served at once (each reads the log on a worker thread, and the
# threads are the whole server's): more wait their turn, so one client cannot starve the
# others or the REST API.
CONCURRENT_WORK = 4
MAX_WAITING = 64  # launches and cancels of one connection unanswered at once

Short = Annotated[str, msgspec.Meta(max_length=200)]
RunIdText = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class Frame(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every WebSocket frame, tagged by ``type``."""


# --- client → server ----------------------------------------------------------------------


class SubscribeFrame(Frame, tag="subscribe", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Follow one run (``run_id``) or every run (``null``): a snapshot, then events with
    ``seq > after``. Without ``after``, events follow from the snapshot's position."""

    run_id: RunIdText | None = None
    after: Annotated[int, msgspec.Meta(ge=0)] | None = None


class UnsubscribeFrame(Frame, tag="unsubscribe", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Stop following a run (or, with ``null``, the all-runs subscription)."""

    run_id: RunIdText | None = None


class LaunchFrame(LaunchBody, Frame, tag="launch", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Launch a flow; answered by ``launched`` or ``error`` carrying the same ``request_id``."""

    request_id: Short = ""


class CancelFrame(Frame, tag="cancel", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Cancel a run; answered by ``ack`` (``ok`` false if it had already ended)."""

    run_id: RunIdText
    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class PingFrame(Frame, tag="ping", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Answered by ``pong`` with the same ``id``."""

    id: Short = ""


ClientFrame = SubscribeFrame | UnsubscribeFrame | LaunchFrame | CancelFrame | PingFrame


# --- server → client ----------------------------------------------------------------------


class SnapshotFrame(Frame, tag="snapshot", frozen=True, kw_only=True):
    """The projection on subscribe. For one run: ``run`` and ``steps`` (each row carries the
    ``last_seq`` it reflects); for all runs: the most recent ``runs``. Events with
    ``seq > after`` follow."""

    sub: str | None
    run_id: str | None
    run: RunRow | None = None
    steps: list[StepRow] = []
    runs: list[RunRow] = []
    seq: int
    after: int


class EventFrame(Frame, tag="event", frozen=True, kw_only=True):
    """One committed event, in ``seq`` order within its subscription ``sub`` (the run id
    subscribed to, or null for the all-runs subscription)."""

    sub: str | None
    seq: int
    run_id: str
    event: AgentEvent


class LaunchedFrame(Frame, tag="launched", frozen=True, kw_only=True):
    """A launch was accepted."""

    run_id: str
    repo: str
    request_id: str = ""


class AckFrame(Frame, tag="ack", frozen=True, kw_only=True):
    """A cancel or unsubscribe was carried out (``ok`` false: nothing to do)."""

    op: Literal["cancel", "unsubscribe"]
    run_id: str | None
    ok: bool


class ErrorFrame(Frame, tag="error", frozen=True, kw_only=True):
    """A frame was refused; ``code`` is stable, ``message`` is for people."""

    code: str
    message: str
    request_id: str = ""
    run_id: str | None = None


class HeartbeatFrame(Frame, tag="heartbeat", frozen=True, kw_only=True):
    """The server is alive (sent every few seconds)."""

    ts: float


class PongFrame(Frame, tag="pong", frozen=True, kw_only=True):
    """The answer to ``ping``."""

    id: str = ""
    ts: float


SingleFrame = (
    SnapshotFrame | EventFrame | LaunchedFrame | AckFrame | ErrorFrame | HeartbeatFrame | PongFrame
)


class BatchFrame(Frame, tag="batch", frozen=True, kw_only=True):
    """Several frames in one message, in order: what was queued for a client while its last
    message went out (one WebSocket message costs both ends more than the JSON in it)."""

    frames: list[SingleFrame]


ServerFrame = SingleFrame | BatchFrame

_decode_client = msgspec.json.Decoder(ClientFrame)
_encoder = msgspec.json.Encoder()


def schema_document() -> dict[str, Any]:
    """One JSON Schema document: client frames, server frames and the event union."""
    (client, server, event), defs = msgspec.json.schema_components(
        [ClientFrame, ServerFrame, AgentEvent], ref_template="#/$defs/{name}"
    )
    defs = dict(defs, ClientFrame=client, ServerFrame=server, AgentEvent=event)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Orchestrator WebSocket frames and events",
        "description": (
            "ClientFrame: what a client sends on /ws; ServerFrame: what the server sends; "
            "AgentEvent: the event inside an 'event' frame (and in GET /api/runs/{id}/events)."
        ),
        "$defs": defs,
        "anyOf": [
            {"$ref": "#/$defs/ClientFrame"},
            {"$ref": "#/$defs/ServerFrame"},
        ],
    }


class Listener:
    """One subscription of one connection: catch-up records first, live ones held until the
    catch-up is done, every record at most once and in ``seq`` order.

    Live frames go straight to the connection's send queue while they fit. Frames that come
    while the subscription catches up, or a live burst bigger than the room left in the
    queue (a poll answer after a stall of the log can hold thousands of records), are held
    here and handed over at the pace the client reads (``Connection._follow``), rather than
    overflowing the queue and cutting off a client that is reading."""

    def __init__(self, conn: Connection, run_id: str | None, after: int):
        self.conn = conn
        self.run_id = run_id
        self.last = after
        self.live = False
        self.held: deque[tuple[int, str]] = deque()  # (seq, encoded frame), in seq order
        self.behind = asyncio.Event()  # set when a live burst did not fit

    def deliver(self, records) -> None:
        """Records read from the log by this subscription's catch-up."""
        for rec in records:
            if rec.seq <= self.last:
                continue  # already sent (the catch-up and the live feed overlap)
            self.last = rec.seq
            self.conn.offer(EventFrame(sub=self.run_id, seq=rec.seq, run_id=rec.event.run_id, event=rec.event))

    def feed(self, frames: list[tuple[int, str]]) -> None:
        """Live frames from the hub (``(seq, text)``, already for this subscription)."""
        if self.live and self.conn.has_room(len(frames)):
            self.send(frames)
            return
        self.held.extend(frames)
        if self.live:
            self.live = False
            self.behind.set()
        if len(self.held) > PENDING_MAX:
            self.conn.close_soon(SLOW_CLOSE, "slow consumer: reconnect and subscribe from your last seq")

    def send(self, frames) -> None:
        for seq, data in frames:
            if seq <= self.last:
                continue
            self.last = seq
            self.conn.offer_encoded(data)

    def take(self, n: int) -> list[tuple[int, str]]:
        held = self.held
        return [held.popleft() for _ in range(min(n, len(held)))]


class Hub:
    """One live feed of the whole log per server, fanned out to every subscription.

    A subscription registers, then catches up from the log by pages; the feed covers whatever
    is committed from the moment it registered. Starting the feed before any subscription (at
    a position no later than the log's end) is what makes the two meet with no gap.
    """

    def __init__(self, backend):
        self.backend = backend
        self.by_run: dict[str | None, set[Listener]] = {}
        self.position = 0
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        rows = await run_in_threadpool(self.backend.runs, limit=RECENT_RUNS)
        # A lower bound of the log's end (every event belongs to a run): the feed reads on
        # from there; records older than a subscription's catch-up are dropped as repeats.
        self.position = max((int(_field(r, "last_seq") or 0) for r in rows), default=0)
        self.task = asyncio.create_task(self._run())

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the feed; a server's shutdown waits at most ``timeout`` seconds for it."""
        if self.task is not None:
            self.task.cancel()
            done, _ = await asyncio.wait({self.task}, timeout=timeout)
            if not done:
                log.warning("the live feed did not stop within %.0f s; leaving it", timeout)

    def add(self, listener: Listener) -> None:
        self.by_run.setdefault(listener.run_id, set()).add(listener)

    def remove(self, listener: Listener) -> None:
        group = self.by_run.get(listener.run_id)
        if group is not None:
            group.discard(listener)
            if not group:
                del self.by_run[listener.run_id]

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                async for batch in self.backend.subscribe(None, self.position):
                    # A big answer (after a stall of the log) goes out in parts, letting the
                    # senders write between them rather than holding the loop for all of it.
                    for i in range(0, len(batch), DISPATCH_PART):
                        if i:
                            await asyncio.sleep(0)
                        self._dispatch(batch[i : i + DISPATCH_PART])
                    delay = 0.1
            except asyncio.CancelledError:
                raise
            except SubscriberDropped:
                continue  # resume from the last record dispatched
            except Exception:
                log.exception("the live feed failed; resuming from seq %d", self.position)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _dispatch(self, batch) -> None:
        fresh = [r for r in batch if r.seq > self.position]
        if not fresh:
            return
        self.position = fresh[-1].seq
        everyone = self.by_run.get(None)
        if everyone:
            frames = _event_frames(None, fresh)
            for listener in list(everyone):
                listener.feed(frames)
        by_run: dict[str, list[Record]] = {}
        for rec in fresh:
            if rec.event.run_id in self.by_run:
                by_run.setdefault(rec.event.run_id, []).append(rec)
        for run_id, records in by_run.items():
            frames = _event_frames(run_id, records)
            for listener in list(self.by_run.get(run_id, ())):
                listener.feed(frames)


def _event_frames(sub: str | None, records: list[Record]) -> list[tuple[int, str]]:
    """Each record's ``event`` frame for subscription ``sub``, encoded once for all its
    listeners."""
    return [
        (rec.seq, _encoder.encode(EventFrame(sub=sub, seq=rec.seq, run_id=rec.event.run_id, event=rec.event)).decode())
        for rec in records
    ]


def _field(row, name):
    return row.get(name) if isinstance(row, dict) else getattr(row, name, None)


class Connection:
    """One client: a receive loop, one sender with a bounded queue, a task per subscription."""

    def __init__(self, ws: WebSocket, *, backend, hub: Hub, roots, gate, heartbeat: float, max_frame: int):
        self.ws = ws
        self.backend = backend
        self.hub = hub
        self.roots = roots
        self.gate = gate
        self.heartbeat = heartbeat
        self.max_frame = max_frame
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_FRAMES)
        self.events_max = QUEUE_FRAMES - min(CONTROL_FRAMES, QUEUE_FRAMES // 4)
        self.subs: dict[str | None, asyncio.Task] = {}
        self.work = asyncio.Semaphore(CONCURRENT_WORK)
        self.requests: set[asyncio.Task] = set()  # launches and cancels not yet answered
        self.tasks: set[asyncio.Task] = set()
        self.closing: tuple[int, str] | None = None
        self.stopped = asyncio.Event()

    # -- plumbing --

    def offer(self, frame: Frame) -> None:
        """Queue a frame for the sender; a full queue means the client is too slow."""
        self.offer_encoded(_encoder.encode(frame).decode())

    def offer_encoded(self, data: str) -> None:
        if self.closing:
            return
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.close_soon(SLOW_CLOSE, "slow consumer: reconnect and subscribe from your last seq")

    def has_room(self, n: int) -> bool:
        """Whether ``n`` event frames fit (the control frames' share left free)."""
        return self.queue.qsize() + n <= self.events_max

    async def room(self, n: int) -> None:
        """Wait until ``n`` event frames fit in the send queue; a client that does not read
        for ``SLOW_AFTER_S`` is disconnected as slow."""
        deadline = time.monotonic() + SLOW_AFTER_S
        while not self.has_room(n) and not self.closing:
            if time.monotonic() > deadline:
                self.close_soon(SLOW_CLOSE, "slow consumer: reconnect and subscribe from your last seq")
                return
            await asyncio.sleep(0.01)

    def close_soon(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
            self.stopped.set()

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _sender(self) -> None:
        queue = self.queue
        while True:
            first = await queue.get()
            if queue.empty():
                await self.ws.send_text(first)
                continue
            # Frames queued while the last message went out leave as one ``BatchFrame``
            # (joined as text: each is encoded already).
            frames = [first]
            while not queue.empty() and len(frames) < BATCH_FRAMES:
                frames.append(queue.get_nowait())
            await self.ws.send_text('{"type":"batch","frames":[' + ",".join(frames) + "]}")

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            self.offer(HeartbeatFrame(ts=time.time()))

    # -- the connection's life --

    async def serve(self) -> None:
        sender = asyncio.create_task(self._sender())
        receiver = asyncio.create_task(self._receive())
        stop = asyncio.create_task(self.stopped.wait())
        beats = self.spawn(self._heartbeats())
        try:
            await asyncio.wait({sender, receiver, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # A slow client's sender may be stuck writing to it: cancel rather than wait.
            for task in [sender, receiver, stop, beats, *self.subs.values(), *self.tasks]:
                task.cancel()
            await asyncio.gather(sender, receiver, stop, *self.tasks, return_exceptions=True)
            await self._close()

    async def _close(self) -> None:
        if self.ws.application_state == WebSocketState.DISCONNECTED:
            return
        code, reason = self.closing or (1000, "")
        # A slow client's socket is full: the close frame waits behind what is already
        # buffered, so that a client that reads again learns why. One that never does is
        # dropped once the wait is over. Nothing is queued for it meanwhile.
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self.ws.close(code=code, reason=reason[:120])
        except Exception:  # gone, or still not reading: the server drops the socket
            pass

    async def _receive(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    self.offer(ErrorFrame(code="bad_frame", message="send frames as JSON text"))
                    continue
                if len(text) > self.max_frame:
                    self.offer(ErrorFrame(code="frame_too_large", message=f"frames are limited to {self.max_frame} bytes"))
                    continue
                self._dispatch(text)
        except WebSocketDisconnect:
            return

    def _dispatch(self, text: str) -> None:
        try:
            frame = _decode_client.decode(text)
        except msgspec.ValidationError as exc:
            self.offer(ErrorFrame(code="bad_frame", message=f"invalid frame: {exc}"))
            return
        except msgspec.DecodeError as exc:
            self.offer(ErrorFrame(code="bad_json", message=f"the frame is not valid JSON: {exc}"))
            return
        match frame:
            case SubscribeFrame():
                old = self.subs.pop(frame.run_id, None)
                if old is not None:
                    old.cancel()
                elif len(self.subs) >= MAX_SUBSCRIPTIONS:
                    self.offer(ErrorFrame(
                        code="too_many_subscriptions", run_id=frame.run_id,
                        message=f"one connection holds at most {MAX_SUBSCRIPTIONS} subscriptions; "
                        "unsubscribe from some, or subscribe to all runs (run_id null)",
                    ))
                    return
                self.subs[frame.run_id] = self.spawn(self._follow(frame.run_id, frame.after))
            case UnsubscribeFrame():
                task = self.subs.pop(frame.run_id, None)
                if task is not None:
                    task.cancel()
                self.offer(AckFrame(op="unsubscribe", run_id=frame.run_id, ok=task is not None))
            case LaunchFrame():
                self._request(self._launch(frame), frame.request_id, None)
            case CancelFrame():
                self._request(self._cancel(frame), "", frame.run_id)
            case PingFrame():
                self.offer(PongFrame(id=frame.id, ts=time.time()))

    def _request(self, coro, request_id: str, run_id: str | None) -> None:
        """Start a launch or cancel, unless too many of this connection's are unanswered."""
        if len(self.requests) >= MAX_WAITING:
            coro.close()
            self.offer(ErrorFrame(
                code="busy", request_id=request_id, run_id=run_id,
                message=f"{MAX_WAITING} requests of this connection are unanswered; send more "
                "once they are",
            ))
            return
        task = self.spawn(coro)
        self.requests.add(task)
        task.add_done_callback(self.requests.discard)

    async def _worker(self, fn, *args, **kwargs):
        """``fn`` on a worker thread, at most ``CONCURRENT_WORK`` at once for this connection."""
        async with self.work:
            return await run_in_threadpool(fn, *args, **kwargs)

    # -- what frames do --

    def _refuse(self, run_id: str | None, code: str, message: str) -> None:
        """End a subscription before its snapshot, saying why."""
        self.subs.pop(run_id, None)
        self.offer(ErrorFrame(code=code, message=message, run_id=run_id))

    async def _follow(self, run_id: str | None, after: int | None) -> None:
        try:
            if run_id is not None:
                detail = await self._worker(self.backend.run, run_id)
                run = msgspec.convert(detail["run"], RunRow)
                steps = msgspec.convert(detail["steps"], list[StepRow])
                # The run row reflects exactly the run's events up to its last_seq.
                point = run.last_seq or detail["seq"]
                start = point if after is None else after
                snapshot = SnapshotFrame(sub=run_id, run_id=run_id, run=run, steps=steps, seq=point, after=start)
            else:
                rows = await self._worker(self.backend.runs, limit=RECENT_RUNS)
                runs = msgspec.convert(rows, list[RunRow])
                point = max((r.last_seq for r in runs), default=0)
                start = point if after is None else after
                snapshot = SnapshotFrame(sub=None, run_id=None, runs=runs, seq=point, after=start)
        except NotFound:
            return self._refuse(run_id, "not_found", f"no run {run_id!r}")
        # A seq this log never reached (the client's is from another data directory, or made
        # up) would follow nothing until the log caught up: say so instead.
        if start > point:
            head = detail["seq"] if run_id is not None else await self._worker(self.backend.log.max_seq)
            if start > head:
                return self._refuse(run_id, "after_past_end", past_end(start, head))
        self.offer(snapshot)
        listener = Listener(self, run_id, start)
        self.hub.add(listener)  # before the catch-up: nothing committed from now on is missed
        try:
            last = start
            size = max(1, min(CATCH_UP_PAGE, self.queue.maxsize // 2))
            while not self.closing:
                page = await self._worker(self.backend.events, run_id, last, size)
                # The catch-up is pulled, so it waits for the client to read (the live feed,
                # pushed, never waits: frames that do not fit are held by the listener).
                await self.room(len(page))
                listener.deliver(page)
                if len(page) < size:
                    break
                last = page[-1].seq
            while not self.closing:
                # What the live feed left with the listener goes out as the client reads;
                # then the listener is live until a burst does not fit.
                while listener.held:
                    # The held list grows while this waits: hand over what was waited for.
                    n = min(size, len(listener.held))
                    await self.room(n)
                    if self.closing:
                        return
                    listener.send(listener.take(n))
                listener.live = True
                listener.behind.clear()
                await listener.behind.wait()
        finally:
            self.hub.remove(listener)

    async def _launch(self, frame: LaunchFrame) -> None:
        try:
            body = msgspec.convert(
                {k: v for k, v in msgspec.structs.asdict(frame).items() if k != "request_id"},
                LaunchBody,
            )
            req = to_launch_request(body, self.roots, origin="ws")
            if self.gate.closing:
                raise ApiError(503, "shutting_down", "the server is shutting down")
            run_id = await self._worker(self.backend.launch, req)
        except ApiError as exc:
            self.offer(ErrorFrame(code=exc.code, message=exc.message, request_id=frame.request_id))
        except LaunchError as exc:
            self.offer(ErrorFrame(code=exc.code, message=str(exc), request_id=frame.request_id))
        except Exception as exc:  # a fault of ours: say so, keep the connection
            log.exception("launch over the WebSocket failed")
            self.offer(ErrorFrame(code="internal", message=f"launch failed: {type(exc).__name__}", request_id=frame.request_id))
        else:
            self.offer(LaunchedFrame(run_id=run_id, repo=req.repo, request_id=frame.request_id))

    async def _cancel(self, frame: CancelFrame) -> None:
        try:
            ok = await self._worker(self.backend.cancel, frame.run_id, frame.reason or "cancelled over the WebSocket")
        except NotFound:
            self.offer(ErrorFrame(code="not_found", message=f"no run {frame.run_id!r}", run_id=frame.run_id))
        except Exception as exc:
            log.exception("cancel over the WebSocket failed")
            self.offer(ErrorFrame(code="internal", message=f"cancel failed: {type(exc).__name__}", run_id=frame.run_id))
        else:
            self.offer(AckFrame(op="cancel", run_id=frame.run_id, ok=bool(ok)))


async def websocket_endpoint(ws: WebSocket) -> None:
    state = ws.state
    await ws.accept()
    conn = Connection(
        ws,
        backend=state.backend,
        hub=state.hub,
        roots=state.roots,
        gate=state.gate,
        heartbeat=state.heartbeat,
        max_frame=state.settings.max_request_bytes,
    )
    await conn.serve()
