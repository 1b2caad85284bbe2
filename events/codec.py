"""The one place where events become bytes and bytes become events."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from events.errors import DecodeError
from events.types import KINDS, SCHEMA_VERSION, AgentEvent

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AgentEvent)
_probe = msgspec.json.Decoder(dict)


def encode(event: AgentEvent) -> bytes:
    """Encode one event as compact JSON."""
    return _encoder.encode(event)


def decode(data: bytes | str) -> AgentEvent:
    """Decode one event, failing with a message that names what is wrong.

    An unknown ``kind`` and a schema version newer than this build are named as such, so a
    reader running old code says why it cannot read a newer log instead of a field error.
    """
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise DecodeError(_explain(data, exc)) from None


def encode_all(events: Iterable[AgentEvent]) -> list[bytes]:
    """``encode`` of each event, without a Python call per event (appends are hot)."""
    return list(map(_encoder.encode, events))


def decode_all(blobs: Iterable[bytes]) -> list[AgentEvent]:
    """``decode`` of each blob, without a Python call per blob; on a bad one, the error of
    the first bad blob."""
    blobs = list(blobs)
    try:
        return list(map(_decoder.decode, blobs))
    except msgspec.DecodeError:
        return list(map(decode, blobs))  # raises with decode's explanation


def _explain(data: bytes | str, exc: Exception) -> str:
    try:
        raw = _probe.decode(data)
    except msgspec.DecodeError:
        return f"not a JSON event object: {exc}"
    kind = raw.get("kind")
    if kind is None:
        return "event has no 'kind' field"
    if not isinstance(kind, str) or kind not in KINDS:  # a list or object is no kind either
        return f"unknown event kind {kind!r}"
    version = raw.get("v", SCHEMA_VERSION)
    if isinstance(version, int) and version > SCHEMA_VERSION:
        return (
            f"event schema version {version} of kind {kind!r} is newer than this build reads "
            f"({SCHEMA_VERSION}); upgrade orchestrator to read this log"
        )
    return f"invalid {kind!r} event: {exc}"


def validate(event: object) -> AgentEvent:
    """Check that an in-memory object is a well-formed event (types and constraints).

    Round-tripping through the encoder re-runs msgspec's type checks, which plain struct
    construction skips.
    """
    try:
        return decode(_encoder.encode(event))
    except (TypeError, msgspec.EncodeError) as exc:
        raise DecodeError(f"cannot encode {type(event).__name__}: {exc}") from None


def schema() -> dict:
    """The JSON Schema of the event union, for TypeScript clients."""
    return msgspec.json.schema(AgentEvent)
