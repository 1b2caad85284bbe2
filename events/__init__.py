"""The facts of a run: event types, their codec, and the append-only log. Imports nothing else
of the project."""

from events.codec import decode, encode, schema, validate
from events.errors import (
    DecodeError,
    EventError,
    LogClosed,
    LogLocked,
    MalformedEvent,
    SubscriberDropped,
)
from events.types import *  # noqa: F403  (the event vocabulary is this package's API)
from events.types import __all__ as _types_all

__all__ = [
    *_types_all,
    "DecodeError",
    "EventError",
    "LogClosed",
    "LogLocked",
    "MalformedEvent",
    "SubscriberDropped",
    "decode",
    "encode",
    "schema",
    "validate",
]
