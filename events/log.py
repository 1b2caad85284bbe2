"""The log contract: append with idempotency keys, read by ``seq``, subscribe from a ``seq``.

Backends implement ``EventLog``; the product's log is ``events.duckdb_log.DuckDBLog``.
``Projector`` is how projections ride in the log's own transaction without the events package
importing them.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import msgspec

from events.types import AgentEvent


class Record(msgspec.Struct, frozen=True):
    """A committed event and the ``seq`` the log gave it (global, dense, increasing)."""

    seq: int
    event: AgentEvent


class Projector(Protocol):
    """Keeps derived tables in step with the log, inside the log's batch transaction."""

    def setup(self, con: Any) -> None:
        """Create the derived tables (DDL runs only at start-up)."""

    def touches(self, records: Sequence[Record]) -> bool:
        """Whether folding this batch may change a derived row. If not, the log commits the
        batch as one statement and does not call ``apply``."""

    def apply(self, con: Any, records: Sequence[Record]) -> None:
        """Fold a committed batch into the derived tables, on the batch's transaction."""

    def rollback(self) -> None:
        """The transaction of the last ``apply`` was rolled back: forget what it folded.

        Optional: a projector without it must tell for itself (say, from a tracking row)."""


class Subscription(abc.ABC):
    """Committed records in ``seq`` order: the catch-up from a ``seq``, then live.

    Iterating raises ``SubscriberDropped`` (with the last ``seq`` delivered) if the subscriber
    fell too far behind; it can subscribe again from that ``seq`` and miss nothing.
    """

    @abc.abstractmethod
    def get(self, timeout: float | None = None) -> list[Record]:
        """The next records (possibly several), or [] when ``timeout`` passes with none."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def last_seq(self) -> int:
        """The ``seq`` of the last record handed out (the place to resubscribe from)."""

    def __iter__(self) -> Iterator[Record]:
        while True:
            yield from self.get()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventLog(abc.ABC):
    """An append-only, totally ordered log of events."""

    @abc.abstractmethod
    def append(self, events: Sequence[AgentEvent], keys: Sequence[str]) -> list[int]:
        """Append events atomically; return their ``seq``s once durable.

        A key already in the log returns its original ``seq`` and writes nothing. A malformed
        event raises ``MalformedEvent`` and nothing of this call is written.
        """

    @abc.abstractmethod
    def read(
        self,
        after: int = 0,
        *,
        run_id: str | None = None,
        step_id: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Committed records with ``seq > after`` (optionally of one run or step), in order."""

    @abc.abstractmethod
    def max_seq(self) -> int:
        """The highest committed ``seq`` (0 when empty)."""

    @abc.abstractmethod
    def subscribe(self, after: int = 0, *, run_id: str | None = None) -> Subscription:
        """Records with ``seq > after``: the catch-up, then live, with no gap and no duplicate."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
