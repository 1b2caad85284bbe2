"""One error set for every log backend, so callers fail the same way whatever stores the events."""


class EventError(Exception):
    """Base of every error the events package raises."""


class DecodeError(EventError, ValueError):
    """Bytes that are not a valid event: unknown kind, newer schema version, or bad fields."""


class MalformedEvent(EventError, ValueError):
    """An append was refused because one of its events is not valid; nothing of it was written."""


class LogLocked(EventError):
    """The log file is held by another process (DuckDB allows one read-write process)."""


class SubscriberDropped(EventError):
    """A subscriber fell too far behind and was dropped; resubscribe from ``last_seq``."""

    def __init__(self, message: str, last_seq: int):
        super().__init__(message)
        self.last_seq = last_seq


class LogClosed(EventError):
    """The log was closed; no more appends or subscriptions."""
