"""What a `POST /v1/usage` body holds: its limits, its events split apart and decoded.

    raws = split_json(body)          # the events of {"events": [...]}, or None for one event
    items = decode_items(raws)       # each an event, or the error that decoding it raised
    events = decode_batch(body)      # a batch valid as a whole, in one pass (or None)

An event that cannot be decoded is not a failed request: it is the error that its item holds,
and `UsageRecorder.record` answers it `invalid` with the fields it names, beside the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final

import msgspec

from aiserver.core_db.errors import AiserverError, validation_field
from aiserver.ledger.errors import InvalidEvent, MalformedBody, TooManyEvents
from aiserver.ledger.usage.events import UsageEventIn

MAX_JSON_EVENTS: Final = 10_000
MAX_NDJSON_EVENTS: Final = 100_000
#: The largest bodies (413 above): 10,000 JSON events, 100,000 JSON lines, with room to spare.
MAX_JSON_BYTES: Final = 16 * 1024 * 1024
MAX_NDJSON_BYTES: Final = 64 * 1024 * 1024


class UsageBatchIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A batch of events as its JSON schema says (`split_json` reads it an event at a time)."""

    events: Annotated[list[UsageEventIn], msgspec.Meta(min_length=1, max_length=MAX_JSON_EVENTS)]


_EVENT: Final = msgspec.json.Decoder(UsageEventIn)


class _Envelope(msgspec.Struct, frozen=True):
    events: list[msgspec.Raw] | None = None


class _Batch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    events: list[msgspec.Raw]


class _KeyOnly(msgspec.Struct, frozen=True):
    id: Any = None


_ENVELOPE: Final = msgspec.json.Decoder(_Envelope)
_BATCH: Final = msgspec.json.Decoder(_Batch)
_KEY_ONLY: Final = msgspec.json.Decoder(_KeyOnly)

Item = UsageEventIn | AiserverError


def decode_event(raw: bytes | msgspec.Raw) -> UsageEventIn:
    """One event from its JSON; `InvalidEvent` naming the field, `MalformedBody` if not JSON."""
    try:
        return _EVENT.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise InvalidEvent(f"invalid event: {message}", _fields_of(message)) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"the event is not valid JSON: {exc}") from None


def _fields_of(message: str) -> list[str]:
    """The field a msgspec validation message names (`validation_field`), if any."""
    _, field = validation_field(message)
    return [field] if field else []


def decode_items(raws: Sequence[bytes | msgspec.Raw]) -> list[Item]:
    items: list[Item] = []
    for raw in raws:
        try:
            items.append(decode_event(raw))
        except AiserverError as exc:
            items.append(exc)
    return items


_WHOLE_BATCH: Final = msgspec.json.Decoder(UsageBatchIn)


def decode_batch(body: bytes) -> list[UsageEventIn] | None:
    """The events of a `{"events": [...]}` body in one pass, when the body is valid as a whole
    (as nearly every batch is); None for anything else: one event, a batch with an invalid
    event, a body that is not JSON. `split_json` and `decode_items` then take it apart and
    say what is wrong with which event."""
    try:
        return _WHOLE_BATCH.decode(body).events
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None


def split_json(body: bytes) -> list[msgspec.Raw] | None:
    """The events of a `{"events": [...]}` body, or None for a body that is one event."""
    try:
        envelope = _ENVELOPE.decode(body)
        if envelope.events is None:
            return None
        events = _BATCH.decode(body).events
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"invalid request: {exc}", ["events"]) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"the request body is not valid JSON: {exc}") from None
    if not events:
        raise InvalidEvent(f"events: send 1 to {MAX_JSON_EVENTS} events", ["events"])
    if len(events) > MAX_JSON_EVENTS:
        raise TooManyEvents(
            f"{len(events)} events in one request; at most {MAX_JSON_EVENTS} (split the batch, "
            f"or send application/x-ndjson: up to {MAX_NDJSON_EVENTS} lines)"
        )
    return events


#: The UTF-8 byte order mark that some editors and shells (Notepad, PowerShell 5) write at the
#: start of a text file: JSON may not hold it, so it is read as what it is, no part of the event.
BOM: Final = b"\xef\xbb\xbf"


def without_bom(text: bytes) -> bytes:
    """The text without the UTF-8 byte order mark it starts with, if any."""
    return text[len(BOM) :] if text.startswith(BOM) else text


def split_ndjson(body: bytes) -> list[bytes]:
    """The lines of a JSON-lines body (blank lines skipped; a byte order mark at its start, and
    the CR of a CRLF, are no part of a line's event)."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    if lines and lines[0].startswith(BOM):
        lines[0] = without_bom(lines[0])
        if not lines[0].strip():
            del lines[0]
    if not lines:
        raise InvalidEvent("the body holds no events: send one JSON event per line", ["events"])
    if len(lines) > MAX_NDJSON_EVENTS:
        raise TooManyEvents(
            f"{len(lines)} lines in one request; at most {MAX_NDJSON_EVENTS} (split the file)"
        )
    return lines


def key_of(raw: bytes | msgspec.Raw) -> str | None:
    """The client's key (`id`) of an event that could not be decoded, where it has a readable
    one: its `invalid` result names it."""
    try:
        key = _KEY_ONLY.decode(raw).id
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    return key if isinstance(key, str) else None
