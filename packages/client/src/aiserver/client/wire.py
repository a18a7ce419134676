"""The HTTP exchange without the I/O: what each call sends, and how an answer is read.

`Client` (httpx.Client), `AsyncClient` (httpx.AsyncClient) and the background recorder all build
their requests and read their answers here, so the three never drift apart.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import (
    Any,
    Optional,
    TypeVar,
    Union,
)

import httpx
import msgspec

from aiserver.client.errors import AiserverError, BudgetExceeded, ConfigurationError
from aiserver.client.models import Event, RecordReport

T = TypeVar("T")

URL_VARIABLE = "AISERVER_URL"
KEY_VARIABLE = "AISERVER_API_KEY"
USER_AGENT = "aiserver-client/0.1"
#: How every aiserver API key begins (`ais_<public id>_<secret>`).
KEY_PREFIX = "ais_"

EventLike = Union[Event, Mapping[str, Any]]
Money = Union[Decimal, str, int]

_encoder = msgspec.json.Encoder(decimal_format="string")


def settings(base_url: Optional[str], api_key: Optional[str]) -> tuple[str, str]:
    """The base URL and key: the arguments, else `AISERVER_URL` and `AISERVER_API_KEY`, without
    the whitespace around them (a value read from a file or a secret often ends with a newline).
    A key that a header cannot carry as it is is refused here, never sent: the error httpx would
    raise quotes the header, key and all. A URL that is no URL is quoted in the error, unless it
    may be a key: it holds `ais_` anywhere ("Bearer ais_...", a key in quotes), or the key
    given, or the key given is itself a URL (the arguments swapped, whatever the key)."""
    url = (base_url or os.environ.get(URL_VARIABLE, "")).strip()
    key = (api_key or os.environ.get(KEY_VARIABLE, "")).strip()
    if not url:
        raise ConfigurationError(
            f"no aiserver URL: pass base_url=... or set {URL_VARIABLE} (e.g. http://127.0.0.1:8000)"
        )
    if not url.startswith(("http://", "https://")):
        source = "base_url" if base_url else URL_VARIABLE
        if (
            KEY_PREFIX in url  # a key, also wrapped: "Bearer ais_...", '"ais_..."' (an env file)
            or (key and key in url)  # the wrong variable
            or key.startswith(("http://", "https://"))  # swapped: the URL where the key goes
        ):
            raise ConfigurationError(
                f"the aiserver URL ({source}) must start with http:// or https://; the value "
                "given looks like an API key (it is not shown): are the URL and the key swapped?"
            )
        raise ConfigurationError(f"the aiserver URL must start with http:// or https://: {url!r}")
    if not key:
        raise ConfigurationError(
            f"no aiserver API key: pass api_key=... or set {KEY_VARIABLE} (a project key, ais_...)"
        )
    flaw = _unsendable(key)
    if flaw is not None:
        source = "api_key" if api_key else KEY_VARIABLE
        raise ConfigurationError(
            f"the aiserver API key ({source}) holds {flaw}: a key is printable ASCII without "
            "spaces (the key is not shown)"
        )
    return url.rstrip("/"), key


def _unsendable(key: str) -> Optional[str]:
    """What keeps `key` out of a header, and where (never the key itself); None if nothing."""
    for at, char in enumerate(key, 1):
        if char == " ":
            flaw = "a space"
        elif not char.isascii():
            flaw = "a non-ASCII character"
        elif not char.isprintable():
            flaw = "a control character"
        else:
            continue
        return f"{flaw} at character {at}"
    return None


def headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}


JSON_HEADERS = {"Content-Type": "application/json"}


# -- events -----------------------------------------------------------------------------------


def aware(value: object, name: str) -> None:
    """ValueError for a `datetime` without an offset: the server reads a time without one as
    UTC, while Python's own (`datetime.now()`) is local time, so the call would move by the
    machine's offset, unsaid. A string is sent as it is: the server's rule holds for it."""
    if isinstance(value, datetime) and value.utcoffset() is None:
        raise ValueError(
            f"{name} {value.isoformat()} has no offset: give an aware datetime, such as "
            "datetime.now(timezone.utc), or this one's .astimezone() if it is local time "
            "(the server would read it as UTC)"
        )


def as_event(event: Optional[EventLike], fields: Mapping[str, Any]) -> Event:
    """An `Event` from an Event, a dict of its fields, or keyword fields (which win); a
    `datetime` without an offset as its `occurred_at` is a ValueError (`aware`)."""
    aware(fields.get("occurred_at"), "occurred_at")
    if isinstance(event, Event):
        aware(event.occurred_at, "occurred_at")
        return msgspec.structs.replace(event, **fields) if fields else event
    aware((event or {}).get("occurred_at"), "occurred_at")
    merged = {**(event or {}), **fields}
    try:
        return msgspec.convert(merged, Event)
    except msgspec.ValidationError as exc:
        raise TypeError(f"not a usage event: {exc}") from None


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def events_body(encoded: Iterable[bytes]) -> bytes:
    """`{"events": [...]}` from events encoded one by one."""
    return b'{"events":[' + b",".join(encoded) + b"]}"


#: The largest JSON body `POST /v1/usage` takes: a larger one is refused as a whole (413).
MAX_BODY_BYTES = 16 * 1024 * 1024
#: The bytes `events_body` adds around the events.
_BODY_FRAME_BYTES = len(events_body([]))


def take_batch(queue: deque[T], most: int, size: Callable[[T], int]) -> list[T]:
    """The first events of `queue`, taken off it in order: at most `most` of them, and no more
    than fit in one body of `MAX_BODY_BYTES` (`size` gives an encoded event's bytes), so that
    no batch is refused for its size. An event too large on its own still goes, alone (the
    server then says why it refuses it)."""
    batch: list[T] = []
    total = _BODY_FRAME_BYTES
    while queue and len(batch) < most:
        grown = total + size(queue[0]) + (1 if batch else 0)  # and a comma
        if batch and grown > MAX_BODY_BYTES:
            break
        batch.append(queue.popleft())
        total = grown
    return batch


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


# -- answers ----------------------------------------------------------------------------------

#: Requests that cannot be sent at all, so that no repeat can pass: h11 refuses a header (its
#: text quotes it, an Authorization header too), httpx a scheme.
UNSENDABLE = (httpx.LocalProtocolError, httpx.UnsupportedProtocol)
#: How much of an unreadable answer its error shows: enough to tell what answered.
SHOWN_CHARS = 300


@contextlib.contextmanager
def exchange() -> Iterator[None]:
    """Around a request and the reading of its answer. A request h11 refuses to write is raised
    again without its text, which may quote the Authorization header; an answer whose body
    cannot be decoded (not the Content-Encoding it names) is an `unreadable` answer."""
    try:
        yield
    except httpx.LocalProtocolError as exc:
        try:
            request: Optional[httpx.Request] = exc.request
        except RuntimeError:  # httpx had not set it
            request = None
        raise httpx.LocalProtocolError(
            "the request could not be sent: h11 refused to write it (its text is not shown, "
            "since it may quote the Authorization header)",
            request=request,
        ) from None
    except httpx.DecodingError as exc:
        what = f"a body that could not be decoded ({type(exc).__name__}: {exc})"
        raise unreadable(None, what) from None


#: What stands in an answer's text, as an error shows it, for the key the request carried.
KEY_SHOWN = "[the client's key]"


def shown_text(response: httpx.Response, limit: int) -> str:
    """The first `limit` characters of an answer's text as an error shows it (and the recorder
    logs it), the request's key replaced by `KEY_SHOWN`: a server or proxy that echoes the
    request's headers (a URL pointing at the wrong service) would put the key in the logs."""
    return without_key(response.text, response)[:limit]


def without_key(text: str, response: httpx.Response) -> str:
    """`text`, from `response`, with the key its request carried replaced by `KEY_SHOWN`."""
    try:
        authorization = response.request.headers.get("authorization", "")
    except RuntimeError:  # a response made without its request
        authorization = ""
    key = authorization.partition(" ")[2].strip()
    return text.replace(key, KEY_SHOWN) if key and key in text else text


def unreadable(response: Optional[httpx.Response], what: str) -> AiserverError:
    """The error of an answer the client cannot read (another server's, a proxy's page, a
    report short of results): status 502, as a gateway says of an upstream it does not
    understand. Its detail says what was wrong and how the answer began; it never holds a
    header of the request."""
    if response is None:
        return AiserverError(502, "unreadable answer", f"the answer has {what}")
    begins = shown_text(response, SHOWN_CHARS)
    return AiserverError(
        502,
        "unreadable answer",
        f"the answer (HTTP {response.status_code}) has {what}; it begins {begins!r}",
    )


def decode(response: httpx.Response, kind: type[T]) -> T:
    """The answer's body as `kind`; the problem it holds raised as an `AiserverError`, and a
    body that is not `kind` as an `unreadable` one."""
    if not response.is_success:
        raise problem_error(response)
    try:
        return msgspec.json.decode(response.content, type=kind)
    except msgspec.DecodeError as exc:  # a ValidationError too
        raise unreadable(response, f"no {kind.__name__} ({exc})") from None


def usage_report(response: httpx.Response, events: int) -> RecordReport:
    """The answer to a `POST /v1/usage` of `events` events: its report, with one result per
    event (else the answer is `unreadable`: which result is whose cannot be told)."""
    report = decode(response, RecordReport)
    if len(report.results) != events:
        raise unreadable(response, f"{len(report.results)} results for {events} events")
    return report


def retry_after(response: httpx.Response) -> Optional[float]:
    """Retry-After in seconds (a number, or an HTTP date), if the answer has one that reads
    as either: not `inf` or `nan` (a wait no caller could sleep). An HTTP date is in GMT, also
    when it does not say so (the asctime form, a `-0000` zone)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def retry_wait(response: Optional[httpx.Response], backoff: float, cap: float) -> float:
    """The wait before repeating a request that failed (`response` None: the network):
    `backoff` (at most `cap`), or the answer's Retry-After when that is longer, at most `cap`.
    A shorter Retry-After (0, a date past) never makes the repeats come faster than the
    backoff would."""
    after = None if response is None else retry_after(response)
    return backoff if after is None else max(backoff, min(after, cap))


def _scrubbed(value: Any, response: httpx.Response) -> Any:
    """A decoded JSON value with every string `without_key`."""
    if isinstance(value, str):
        return without_key(value, response)
    if isinstance(value, list):
        return [_scrubbed(item, response) for item in value]
    if isinstance(value, dict):
        return {name: _scrubbed(item, response) for name, item in value.items()}
    return value


def problem_error(response: httpx.Response) -> AiserverError:
    """The `AiserverError` of a failed answer (a problem document, or whatever the body is)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    problem: dict[str, Any] = body if isinstance(body, dict) else {}
    problem = _scrubbed(problem, response)  # a wrong service's JSON may echo the key too
    status = problem.get("status")
    status = status if isinstance(status, int) else response.status_code
    title = str(problem.get("title") or response.reason_phrase or "error")
    detail = problem.get("detail")
    if not isinstance(detail, str):
        detail = shown_text(response, 500) if body is None else "the server gave no detail"
    kind = str(problem.get("type") or "about:blank")
    cls = BudgetExceeded if kind.endswith(":budget-exceeded") or status == 402 else AiserverError
    return cls(status, title, detail, type=kind, problem=problem, retry_after=retry_after(response))


# -- requests of the other calls ----------------------------------------------------------------


def drop_none(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def money(value: Optional[Money]) -> Optional[str]:
    """A decimal string for the wire; a float is refused (it would not be exact), and so is a
    string that is no decimal (a `ValueError`, not the decimal module's InvalidOperation)."""
    if value is None:
        return None
    if isinstance(value, float):
        raise TypeError("money is a Decimal or a decimal string, never a float")
    try:
        return str(Decimal(value))
    except InvalidOperation:
        raise ValueError(f"money is a Decimal or a decimal string, not {value!r}") from None


def spend_params(
    since: Union[datetime, str],
    until: Union[datetime, str],
    *,
    bucket: Optional[str],
    tz: Optional[str],
    group_by: Sequence[str],
    model: Optional[str],
    provider: Optional[str],
    status: Optional[str],
    tags: Optional[Mapping[str, str]],
    top: Optional[int],
) -> httpx.QueryParams:
    """The query of `GET /v1/spend`."""

    def text(value: Union[datetime, str]) -> str:
        if not isinstance(value, datetime):
            return value
        if value.utcoffset() is None:
            raise ValueError(
                f"{value.isoformat()} has no offset: give an aware datetime, such as "
                "datetime.now(timezone.utc), or a string such as '2026-12-01' or "
                "'2026-12-01T09:00' for a time on the project's clock (or tz's), as the "
                "server reads it; Python's own naive time is the machine's"
            )
        return value.isoformat()

    params: list[tuple[str, str]] = [("from", text(since)), ("to", text(until))]
    for name, value in (
        ("bucket", bucket),
        ("tz", tz),
        ("model", model),
        ("provider", provider),
        ("status", status),
    ):
        if value is not None:
            params.append((name, value))
    if group_by:  # a list of names, or one string as the query spells it ("model,tag:team")
        names = group_by if isinstance(group_by, str) else ",".join(group_by)
        params.append(("group_by", names))
    if top is not None:
        params.append(("top", str(top)))
    params.extend((f"tag:{key}", value) for key, value in (tags or {}).items())
    return httpx.QueryParams(tuple(params))


def new_reservation_id() -> str:
    """A reservation id of the client's choosing: a random UUID (version 4)."""
    return str(uuid.uuid4())


def reserve_body(
    *,
    model: str,
    provider: Optional[str],
    tags: Optional[Mapping[str, str]],
    estimate: Optional[Money],
    usage: Optional[Mapping[str, Any]],
    usage_format: Optional[str],
    service_tier: Optional[str],
    expires_in_seconds: Optional[int],
    reservation_id: Optional[str] = None,
) -> bytes:
    body = drop_none(
        {
            "reservation_id": reservation_id,
            "model": model,
            "provider": provider,
            "tags": dict(tags) if tags else None,
            "estimate": money(estimate),
            "usage": dict(usage) if usage is not None else None,
            "usage_format": usage_format,
            "service_tier": service_tier,
            "expires_in_seconds": expires_in_seconds,
        }
    )
    return encode(body)


def calculate_body(
    *,
    model: str,
    usage: Mapping[str, Any],
    provider: Optional[str],
    usage_format: Optional[str],
    service_tier: Optional[str],
    at: Optional[datetime],
) -> bytes:
    aware(at, "at")
    body = drop_none(
        {
            "model": model,
            "usage": dict(usage),
            "provider": provider,
            "usage_format": usage_format,
            "service_tier": service_tier,
            "at": at,
        }
    )
    return encode(body)
