"""Fan-out of committed records to subscribers: catch-up from any ``seq``, then live.

A ``Hub`` belongs to one log. The log calls ``publish`` after each commit, in ``seq`` order;
each subscriber keeps a bounded buffer of live records. The hand-over is exact because a
subscriber registers under the hub's lock and notes the last committed ``seq`` at that instant
(``live_from``): records up to it come from the log's storage, records after it from the
buffer.

Memory stays bounded whatever a subscriber does. While it is still catching up, an overflowing
buffer is simply discarded and the catch-up extended (those records are committed and will be
read from storage). Once live, a subscriber whose buffer overflows is dropped with
``SubscriberDropped`` and can resubscribe from its ``last_seq``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from events.errors import LogClosed, SubscriberDropped
from events.log import Record, Subscription

logger = logging.getLogger(__name__)

# (after, upto, run_id, limit) -> committed records with after < seq <= upto, in order.
ReadRange = Callable[[int, int, "str | None", int], list[Record]]

DEFAULT_BUFFER = 10_000
CATCH_UP_PAGE = 1_000


class Hub:
    """The live end of a log: who is subscribed, and the last committed ``seq``."""

    def __init__(self, read_range: ReadRange, *, buffer: int = DEFAULT_BUFFER, committed: int = 0):
        if buffer < 1:
            raise ValueError("a subscriber buffer holds at least one record")
        self._read_range = read_range
        self._buffer = buffer
        self._lock = threading.Lock()
        self._subs: set[HubSubscription] = set()
        self._listeners: list[Callable[[int], None]] = []
        self._committed = committed
        self._closed = False

    @property
    def committed(self) -> int:
        return self._committed

    def subscribe(self, after: int = 0, *, run_id: str | None = None) -> HubSubscription:
        if after < 0:
            raise ValueError(f"after must be >= 0, not {after}")
        with self._lock:
            if self._closed:
                raise LogClosed("the log is closed; no new subscriptions")
            sub = HubSubscription(self, after, run_id, self._committed, self._buffer)
            self._subs.add(sub)
        return sub

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(last_seq)`` after every publish (on the publishing thread)."""
        with self._lock:
            self._listeners.append(listener)

    def publish(
        self, last_seq: int, records: Sequence[Record] | Callable[[], Sequence[Record]]
    ) -> None:
        """Announce a commit up to ``last_seq``: hand its records (consecutive, ascending) to
        every subscriber. ``records`` may be a function making them, called only if someone is
        subscribed (most commits have no subscriber)."""
        with self._lock:
            if last_seq <= self._committed:
                return
            if self._subs:
                batch = records() if callable(records) else records
                gone = [sub for sub in self._subs if not sub._push(batch, last_seq)]
                self._subs.difference_update(gone)  # dropped ones hold nothing for us any more
            self._committed = last_seq
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(last_seq)
            except Exception:  # a listener's bug must not look like a failed commit
                logger.exception("event log listener failed")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            subs, self._subs = self._subs, set()
        for sub in subs:
            sub._end("the log was closed")

    def _forget(self, sub: HubSubscription) -> None:
        with self._lock:
            self._subs.discard(sub)


class HubSubscription(Subscription):
    """One subscriber: a catch-up cursor over storage, then a bounded live buffer."""

    def __init__(self, hub: Hub, after: int, run_id: str | None, live_from: int, buffer: int):
        self._hub = hub
        self._run_id = run_id
        self._max = buffer
        self._after = after  # never hand out a seq <= after, even one committed later
        self._pos = after  # how far the catch-up has read storage
        self._live_from = live_from  # records above this arrive through the buffer
        self._last = after
        self._buf: deque[Record] = deque()
        self._cond = threading.Condition()
        self._dropped = ""
        self._ended = ""
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    @property
    def last_seq(self) -> int:
        return self._last

    @property
    def pending(self) -> int:
        """Live records buffered for this subscriber and not yet handed out."""
        return len(self._buf)

    # --- called by the hub, under its lock ----------------------------------------------

    def _push(self, records: Sequence[Record], committed: int) -> bool:
        """Buffer the records of ours; False once this subscriber no longer listens."""
        with self._cond:
            if self._dropped or self._ended:
                return False
            floor = max(self._after, self._live_from)
            run_id = self._run_id
            before = len(self._buf)
            for record in records:
                if record.seq > floor and (run_id is None or record.event.run_id == run_id):
                    self._buf.append(record)
            if len(self._buf) == before:
                return True  # nothing of ours: no one to wake
            if len(self._buf) > self._max:
                self._buf.clear()
                if self._pos < self._live_from:
                    # Still catching up: these are committed, so read them from storage later.
                    self._live_from = committed
                else:
                    self._dropped = (
                        f"subscriber fell more than {self._max} records behind the log and was "
                        f"dropped; resubscribe from seq {self._last} to continue without a gap"
                    )
            self._wake()
            return not self._dropped

    def _end(self, reason: str) -> None:
        with self._cond:
            if not self._ended:
                self._ended = reason
            self._wake()

    def _wake(self) -> None:
        self._cond.notify_all()
        if self._waiter is not None:
            loop, future = self._waiter
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # the waiting loop is gone; nobody to wake
                pass

    # --- the subscriber's side ------------------------------------------------------------

    def get(self, timeout: float | None = None) -> list[Record]:
        records = self._catch_up()
        if records is not None:
            return records
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._buf and not self._dropped and not self._ended:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._cond.wait(remaining)
            return self._take()

    async def get_async(self, timeout: float | None = None) -> list[Record]:
        """``get`` for an asyncio caller: waits without holding a thread."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._pos < self._live_from:  # storage reads block: keep them off the loop
                page = await asyncio.to_thread(self._read_page)
                # Moved on only here, on the loop: a caller that gave up during the read
                # (a timeout around this call) gets the same page next time, not a gap.
                if page is not None:
                    if records := self._advance(*page):
                        return records
                    continue
            with self._cond:
                if self._dropped or self._ended or (self._buf and self._pos >= self._live_from):
                    return self._take()
                if self._pos < self._live_from:
                    continue
                future: asyncio.Future[None] = loop.create_future()
                self._waiter = (loop, future)
            remaining = None if deadline is None else deadline - loop.time()
            try:
                if remaining is not None and remaining <= 0:
                    return []
                async with asyncio.timeout(remaining):
                    await future
            except TimeoutError:
                return []
            finally:
                with self._cond:
                    self._waiter = None

    def close(self) -> None:
        self._hub._forget(self)
        self._end("the subscription was closed")
        with self._cond:
            self._buf.clear()

    def _catch_up(self) -> list[Record] | None:
        """The next page from storage while behind ``live_from``; None once caught up."""
        while (page := self._read_page()) is not None:
            if records := self._advance(*page):
                return records
        return None

    def _read_page(self) -> tuple[list[Record], int] | None:
        """The next page from storage and how far it reaches (None when caught up or ended).
        It moves nothing: the caller hands the page out and then calls ``_advance``."""
        with self._cond:
            if self._ended or self._dropped:
                return None
            pos, upto = self._pos, self._live_from
        if pos >= upto:
            return None
        records = self._hub._read_range(pos, upto, self._run_id, CATCH_UP_PAGE)
        # A short page means nothing more of ours in (pos, upto].
        return records, upto if len(records) < CATCH_UP_PAGE else records[-1].seq

    def _advance(self, records: list[Record], reached: int) -> list[Record]:
        with self._cond:
            self._pos = reached
            if records:
                self._last = records[-1].seq
        return records

    def _take(self) -> list[Record]:
        # Caller holds self._cond.
        if self._buf and self._pos >= self._live_from:
            records = list(self._buf)
            self._buf.clear()
            self._last = records[-1].seq
            return records
        if self._dropped:
            raise SubscriberDropped(self._dropped, self._last)
        if self._ended:
            # Still behind the buffer (the catch-up unfinished), it is not handed out: the
            # records before it would be skipped for good. Resuming from ``last`` misses none.
            self._buf.clear()
            raise LogClosed(f"{self._ended}; resubscribe from seq {self._last}")
        return []  # still catching up: the next call reads storage


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
