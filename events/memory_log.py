"""The in-memory log: the small, readable reference for the ``EventLog`` contract.

It also holds the checks every backend runs on an append before writing anything
(``encode_append``, ``decode_append``), so all backends refuse bad input the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import msgspec

from events.codec import decode, decode_all, encode, encode_all
from events.errors import DecodeError, LogClosed, MalformedEvent
from events.log import EventLog, Record
from events.subscription import DEFAULT_BUFFER, Hub, HubSubscription
from events.types import AgentEvent

# --- checking an append (shared by every backend) ---------------------------------------------


def _check_keys(keys: Sequence[str], count: int) -> None:
    if isinstance(keys, str | bytes):  # its characters would pass for keys
        raise MalformedEvent(
            "the idempotency keys are one string: give a list of them, one per event; "
            "nothing of this append was written"
        )
    if len(keys) != count:
        raise MalformedEvent(
            f"{count} events but {len(keys)} idempotency keys: each event needs exactly one; "
            "nothing of this append was written"
        )
    if set(map(type, keys)) - {str} or "" in keys:  # one pass in C for the usual good case
        i, key = next((i, k) for i, k in enumerate(keys) if type(k) is not str or not k)
        raise MalformedEvent(
            f"idempotency key {i} is {key!r}: keys must be non-empty strings; "
            "nothing of this append was written"
        )


def encode_append(events: Sequence[AgentEvent], keys: Sequence[str]) -> list[bytes]:
    """Encode the events of one append, refusing the whole append if one cannot be encoded."""
    _check_keys(keys, len(events))
    try:
        return encode_all(events)  # the usual good case
    except (TypeError, msgspec.EncodeError):
        pass
    for i, event in enumerate(events):  # find the bad one, to name it
        try:
            encode(event)
        except (TypeError, msgspec.EncodeError) as exc:
            raise MalformedEvent(
                f"event {i} (key {keys[i]!r}) is not an encodable event "
                f"({type(event).__name__}): {exc}; nothing of this append was written"
            ) from None
    raise AssertionError("unreachable: an event failed to encode, then encoded")


def decode_append(blobs: Sequence[bytes], keys: Sequence[str]) -> list[AgentEvent]:
    """Validate the encoded events of one append by decoding them; refuse the whole append
    if one is malformed (unknown kind, newer schema version, bad fields)."""
    _check_keys(keys, len(blobs))
    try:
        return decode_all(blobs)  # the usual good case
    except DecodeError:
        pass
    for i, blob in enumerate(blobs):  # find the bad one, to name it
        try:
            decode(blob)
        except DecodeError as exc:
            raise MalformedEvent(
                f"event {i} (key {keys[i]!r}) is malformed: {exc}; nothing of this append was written"
            ) from None
    raise AssertionError("unreachable: an event failed to decode, then decoded")


def text_problem(blobs: Sequence[bytes], keys: Sequence[str]) -> str:
    """Why these keys or events cannot be stored as text ('' when they can): the decoder
    skips an unknown field unread, so its bytes may not be UTF-8, and a ``str`` key may hold
    a lone surrogate. Costly per byte, so a log asks only once a commit has failed."""
    for i, key in enumerate(keys):
        try:
            key.encode()
        except UnicodeEncodeError:
            return f"idempotency key {i} ({key!r}) is not UTF-8 text; nothing of this append was written"
    for i, blob in enumerate(blobs):
        try:
            blob.decode()
        except UnicodeDecodeError as exc:
            return (
                f"event {i} (key {keys[i]!r}) is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                "nothing of this append was written"
            )
    return ""


# --- the reference log ------------------------------------------------------------------------


class InMemoryLog(EventLog):
    """Every record in a list, every key in a dict; one lock orders appends and publishing."""

    def __init__(self, *, subscriber_buffer: int = DEFAULT_BUFFER):
        self._lock = threading.Lock()
        self._records: list[Record] = []  # self._records[i].seq == i + 1
        self._seq_of_key: dict[str, int] = {}
        self._hub = Hub(self._read_range, buffer=subscriber_buffer)
        self._closed = False

    def append(self, events: Sequence[AgentEvent], keys: Sequence[str]) -> list[int]:
        return self.append_encoded(encode_append(events, keys), keys)

    def append_encoded(self, blobs: Sequence[bytes], keys: Sequence[str]) -> list[int]:
        events = decode_append(blobs, keys)
        problem = text_problem(blobs, keys)  # as DuckDB refuses them
        if problem:
            raise MalformedEvent(problem)
        with self._lock:
            if self._closed:
                raise LogClosed("the log is closed")
            seqs, fresh = [], []
            for event, key in zip(events, keys):
                seq = self._seq_of_key.get(key)
                if seq is None:
                    seq = len(self._records) + 1
                    self._seq_of_key[key] = seq
                    record = Record(seq, event)
                    self._records.append(record)
                    fresh.append(record)
                seqs.append(seq)
            # Publishing under the append lock keeps subscribers in seq order.
            if fresh:
                self._hub.publish(fresh[-1].seq, fresh)
        return seqs

    def read(
        self,
        after: int = 0,
        *,
        run_id: str | None = None,
        step_id: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        if limit is not None and limit <= 0:
            return []
        with self._lock:
            tail = self._records[max(after, 0) :]
        out = []
        for record in tail:
            if run_id is not None and record.event.run_id != run_id:
                continue
            if step_id is not None and getattr(record.event, "step_id", None) != step_id:
                continue
            out.append(record)
            if limit is not None and len(out) >= limit:
                break
        return out

    def max_seq(self) -> int:
        return len(self._records)

    def subscribe(self, after: int = 0, *, run_id: str | None = None) -> HubSubscription:
        return self._hub.subscribe(after, run_id=run_id)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._hub.close()

    def _read_range(self, after: int, upto: int, run_id: str | None, limit: int) -> list[Record]:
        with self._lock:
            window = self._records[after:upto]
        return [r for r in window if run_id is None or r.event.run_id == run_id][:limit]
