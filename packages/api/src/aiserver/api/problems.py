"""Every error is an RFC 9457 problem (application/problem+json) with a clear `detail`.

The app registers one Litestar exception handler per kind of error (`EXCEPTION_HANDLERS`), so
controllers raise and never catch:

- a domain error (`aiserver.core_db.errors.AiserverError` and each domain's `errors.py`) answers
  its own problem: status, type, members and headers (Retry-After on a 503);
- a body that is not JSON at all -> 400 `malformed-json`; one that is JSON of the wrong shape ->
  422 `invalid-request` naming each field; a body over the limit -> 413;
- PostgreSQL or Redis unreachable -> 503 `service-unavailable`, a schema behind its migrations
  -> 503 `schema-not-migrated`;
- anything unexpected -> 500, logged with its traceback (a bad input never lands here);
- a request the server cancels before it has answered (uvicorn, when its graceful-shutdown
  timeout runs out) -> 503 `service-unavailable` (`answer_cancelled`, a middleware).

The problem of a domain error is the same object in an HTTP answer, in a batch item and in the
command-line tools' JSON output (`AiserverError.problem()`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator, Mapping
from http import HTTPStatus
from typing import Any, Final

import asyncpg
import msgspec
import redis.exceptions
from litestar import Request, Response
from litestar.enums import ScopeType
from litestar.exceptions import (
    ClientException,
    HTTPException,
    InternalServerException,
    SerializationException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import (
    ASGIApp,
    ExceptionHandlersMap,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from aiserver.core_db.commands import NETWORK_ERRNOS
from aiserver.core_db.connections import DatabaseUnavailable
from aiserver.core_db.errors import RETRY_AFTER_S, AiserverError, problem, validation_field
from aiserver.core_db.logging import get_logger

log = get_logger(__name__)

PROBLEM_JSON: Final = "application/problem+json"
_RETRY: Final = {"Retry-After": str(RETRY_AFTER_S)}
_RETRY_S: Final = str(RETRY_AFTER_S).encode()

AnyRequest = Request[Any, Any, Any]


class ProblemDetails(msgspec.Struct, frozen=True, kw_only=True):
    """What every error answer holds (RFC 9457); a problem may add members (`errors`, ...)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI `responses` of a route: the problems it may answer, by status. A route that
    authenticates (401) may also answer 429 `too-many-failed-attempts` (`aiserver.api.auth`)."""
    if 401 in statuses and 429 not in statuses:
        statuses = tuple(sorted((*statuses, 429)))
    return {
        status: ResponseSpec(
            data_container=ProblemDetails,
            media_type=PROBLEM_JSON,
            description=f"{HTTPStatus(status).phrase} (problem details)",
            generate_examples=False,
        )
        for status in statuses
    }


def problem_response(
    request: AnyRequest, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> Response[dict[str, Any]]:
    """A problem body (see `aiserver.core_db.errors.problem`) as the answer to `request`."""
    return Response(
        {**body, "instance": request.url.path},
        status_code=body["status"],
        media_type=PROBLEM_JSON,
        headers=dict(headers or {}),
    )


def _domain(request: AnyRequest, exc: AiserverError) -> Response[dict[str, Any]]:
    return problem_response(request, exc.problem(), exc.headers())


def _sent_no_body(request: AnyRequest) -> bool:
    """Whether the request came without a body, by HTTP's framing (RFC 9112, 6.3): a
    Content-Length of 0, or neither a length nor a transfer coding."""
    if request.method not in {"POST", "PUT", "PATCH"}:
        return False
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() == "0"
    return "transfer-encoding" not in request.headers


def _validation(request: AnyRequest, exc: ValidationException) -> Response[dict[str, Any]]:
    """The body (or a parameter) is well-formed but of the wrong shape: name every field."""
    if _sent_no_body(request):
        detail = "the request body is empty; a JSON object is required"
        return problem_response(request, problem(422, detail, slug="invalid-request"))
    errors: list[dict[str, Any]] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            field = item.get("key")
            message = str(item.get("message", ""))
            errors.append({"field": field, "source": item.get("source"), "message": message})
    summary = "; ".join(
        f"{e['field']}: {e['message']}" if e["field"] else str(e["message"]) for e in errors
    )
    detail = f"invalid request: {summary or exc.detail}"
    return problem_response(request, problem(422, detail, slug="invalid-request", errors=errors))


def _http(request: AnyRequest, exc: HTTPException) -> Response[dict[str, Any]]:
    detail = exc.detail
    if isinstance(exc, ClientException) and isinstance(exc.__cause__, SerializationException):
        # Litestar could not decode the body at all (its JSON decoder, or ours in
        # `CheckedRequest.json`): not JSON, whatever the decoder's words for it.
        return problem_response(
            request,
            problem(400, f"the request body is not valid JSON: {detail}", slug="malformed-json"),
        )
    if exc.status_code == 413:
        detail = f"the request body is too large: {detail}"
    elif isinstance(exc, ClientException) and detail == _MULTIPART_LIMIT:
        # Litestar's words for a multipart form past its parser's limits (a 400, though they
        # are a 413's), which read as if the body were too large
        detail = (
            "the multipart form is past the parser's limits: a header line of a part longer "
            "than about 4 KB (a file name that long), more than 8 headers in a part, or more "
            "than 1,000 parts"
        )
    return problem_response(request, problem(exc.status_code, detail), exc.headers)


#: Litestar's detail of a multipart form its parser refused for a limit (`_multipart.py`).
_MULTIPART_LIMIT: Final = "Request Entity Too Large"


def _unstorable_text(request: AnyRequest, exc: Exception) -> Response[dict[str, Any]]:
    """Text PostgreSQL cannot store (a NUL character, or a character the database's encoding
    lacks) that no check caught before: the request's fault, not the server's. The answer names
    the fault, not PostgreSQL's message (which may quote a table or a column); the log has it."""
    log.info("text the database cannot store", path=request.url.path,
             error=f"{type(exc).__name__}: {exc}")  # fmt: skip
    detail = (
        "the request holds text the database cannot store: a NUL character (\\u0000) or a "
        "character the database's encoding lacks"
    )
    return problem_response(request, problem(422, detail, slug="invalid-request"))


def _schema_behind(request: AnyRequest, exc: Exception) -> Response[dict[str, Any]]:
    """A table or column the code expects and the database lacks. The answer goes to anyone,
    signed in or not: it says what to do, and the log names what is missing."""
    log.warning("database schema behind", path=request.url.path, error=str(exc))
    detail = (
        "the database schema is not migrated; the task runner applies the migrations at start, "
        "or run: aiserver-db migrate"
    )
    return problem_response(request, problem(503, detail, slug="schema-not-migrated"), _RETRY)


def _unavailable(request: AnyRequest, exc: Exception) -> Response[dict[str, Any]]:
    """A backing service that did not answer: the log has its error; the answer names only its
    kind, since a driver's message names internal addresses (`Error 111 connecting to
    10.0.3.7:6379`), and this answer goes to anyone, signed in or not."""
    log.warning(
        "dependency unavailable", path=request.url.path, error=f"{type(exc).__name__}: {exc}"
    )
    detail = f"a backing service is unavailable ({type(exc).__name__}); try again later"
    return problem_response(request, problem(503, detail, slug="service-unavailable"), _RETRY)


def _rolled_back(request: AnyRequest, exc: Exception) -> Response[dict[str, Any]]:
    """PostgreSQL rolled the request's transaction back to break a deadlock (or for a
    serialization failure) where the code does not try again itself: nothing of it was
    stored, and sending it again is the remedy, not a 500."""
    log.warning("transaction rolled back by the database", path=request.url.path,
                error=f"{type(exc).__name__}: {exc}")  # fmt: skip
    detail = (
        "the database rolled this request back to break a conflict with another one "
        f"({type(exc).__name__}); nothing of it was stored: send it again"
    )
    return problem_response(request, problem(503, detail, slug="service-unavailable"), _RETRY)


def _os_error(request: AnyRequest, exc: Exception) -> Response[dict[str, Any]]:
    """An OSError of a socket that did not reach its peer (a name that does not resolve, a
    host unreachable: what a driver lets through) is a backing service unavailable; any other
    (a file, a full disk, a permission) is a fault of this server, logged with its traceback."""
    reaching = isinstance(exc, socket.gaierror | socket.herror) or (
        isinstance(exc, OSError) and exc.filename is None and exc.errno in NETWORK_ERRNOS
    )
    return _unavailable(request, exc) if reaching else _unexpected(request, exc)


def _not_accepting(request: AnyRequest, exc: Exception) -> Response[dict[str, Any]]:
    """55000 is PostgreSQL's code of a database that does not take connections for now (`ALTER
    DATABASE ... ALLOW_CONNECTIONS false`), and of other states a statement is not allowed in
    (a bug: a 500)."""
    if "is not currently accepting connections" in str(exc):
        return _unavailable(request, exc)
    return _unexpected(request, exc)


def _unexpected(request: AnyRequest, exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error", path=request.url.path)
    return problem_response(request, problem(500, "internal error; it has been logged"))


#: Litestar picks the handler of the nearest class in an exception's MRO.
EXCEPTION_HANDLERS: Final[ExceptionHandlersMap] = {
    AiserverError: _domain,
    ValidationException: _validation,
    HTTPException: _http,
    asyncpg.CharacterNotInRepertoireError: _unstorable_text,
    asyncpg.UntranslatableCharacterError: _unstorable_text,
    asyncpg.UndefinedTableError: _schema_behind,
    asyncpg.UndefinedColumnError: _schema_behind,
    asyncpg.TransactionRollbackError: _rolled_back,
    # a domain error, but its message names the database's host, port and user
    DatabaseUnavailable: _unavailable,
    asyncpg.PostgresConnectionError: _unavailable,
    # a server refusing connections for a while: starting up, shutting down or in recovery
    # (57P03), terminated (57P01: a restart, pg_terminate_backend), crashed, out of connections
    asyncpg.CannotConnectNowError: _unavailable,
    asyncpg.AdminShutdownError: _unavailable,
    asyncpg.CrashShutdownError: _unavailable,
    asyncpg.TooManyConnectionsError: _unavailable,
    asyncpg.ObjectNotInPrerequisiteStateError: _not_accepting,
    asyncpg.InterfaceError: _unavailable,
    # API_DATABASE_TIMEOUT_SECONDS on PostgreSQL's side (core_db.database): a statement or a
    # transaction that waited too long, cancelled; nothing of it was kept
    asyncpg.QueryCanceledError: _unavailable,
    asyncpg.IdleInTransactionSessionTimeoutError: _unavailable,
    ConnectionError: _unavailable,
    TimeoutError: _unavailable,
    OSError: _os_error,
    redis.exceptions.ConnectionError: _unavailable,
    redis.exceptions.TimeoutError: _unavailable,
    Exception: _unexpected,
}


def answer_cancelled(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: a request whose task is cancelled before it has started its answer is
    answered 503 `service-unavailable` with Retry-After, like any retryable failure, and a
    warning names it.

    uvicorn cancels the requests still running when its graceful-shutdown timeout runs out (and
    cancels a request task for nothing else); it would answer them with a plain-text 500 and log
    the CancelledError as an error. By then the request's work has unwound (its transaction
    rolled back), so the cancellation ends here: the request is over, answered. An answer
    already started, or a CancelledError while this task is not being cancelled (not a
    cancellation of the request), goes on to the server as before.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, send_noting_start)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if started or task is None or not task.cancelling():
                raise
            path = scope["path"]
            log.warning("request cancelled by the server, answered 503", path=path)
            detail = "the server is shutting down and stopped this request before it finished"
            body = {**problem(503, detail, slug="service-unavailable"), "instance": path}
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 503,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"retry-after", _RETRY_S)],
            }
            end: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": msgspec.json.encode(body),
                "more_body": False,
            }
            await send(start)
            await send(end)
            task.uncancel()

    return middleware


class CheckedRequest(Request[Any, Any, Any]):
    """A request whose JSON body is a 400 however it is malformed.

    The body must be UTF-8 JSON: a body that is not UTF-8, or JSON nested deeper than the
    interpreter can decode, is a `SerializationException` like any other malformed JSON, which
    Litestar answers with a 400; Litestar itself lets a decoder's UnicodeDecodeError or
    RecursionError through as a 500. Only public API: `Request.json` and `Request.body`.
    """

    async def stream(self) -> AsyncGenerator[bytes, None]:
        """The body's chunks; a client that hangs up before the body is complete is a 400 (its
        fault, logged as such), where Litestar raises a 500."""
        try:
            async for chunk in super().stream():
                yield chunk
        except InternalServerException as exc:
            if not self.is_connected or "disconnected" not in str(exc.detail):
                raise
            raise ClientException(
                "the request body ended early: the client disconnected before sending all of it"
            ) from None

    async def json(self) -> Any:
        body = await self.body()
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SerializationException(
                f"JSON is malformed: invalid UTF-8 at byte {exc.start}"
            ) from None
        try:
            return await super().json()
        except UnicodeDecodeError as exc:  # an escape that names no character (a lone \ud800)
            raise SerializationException(f"JSON is malformed: {exc.reason}") from None
        except RecursionError:
            raise SerializationException("JSON is malformed: nested too deeply") from None


#: How Litestar names the body in its validation errors (a problem about the body as a whole).
BODY_FIELD: Final = "data"


def body_invalid(exc: msgspec.ValidationError) -> ValidationException:
    """A body of the wrong shape as Litestar's own 422 names it: the field (`usage.x`), or
    `data` for the body itself."""
    message, field = validation_field(str(exc))
    return ValidationException(
        message, extra=[{"key": field or BODY_FIELD, "message": message, "source": "body"}]
    )


def strict_body(kind: type[Any]) -> type[CheckedRequest]:
    """A request class whose JSON body is read into `kind` strictly, as `POST /v1/usage` and
    `POST /v1/costs/calculate` read theirs: Litestar converts a `JSONBody[...]` leniently
    (`"true"` and 1 for a boolean, `"120"` for a number, a Unix time for a datetime), so input
    against the published schema was stored. Litestar then meets a `kind` where it expects one
    and passes it on as it is. For `request_class=` of a handler whose body is a `kind`."""

    class StrictBody(CheckedRequest):
        async def json(self) -> Any:
            value = await super().json()
            try:
                return msgspec.convert(value, kind, strict=True)
            except msgspec.ValidationError as exc:
                raise body_invalid(exc) from None

    StrictBody.__name__ = StrictBody.__qualname__ = f"StrictBody_{kind.__name__}"
    return StrictBody


__all__ = [
    "BODY_FIELD",
    "EXCEPTION_HANDLERS",
    "PROBLEM_JSON",
    "CheckedRequest",
    "ProblemDetails",
    "answer_cancelled",
    "body_invalid",
    "problem_response",
    "problem_responses",
    "strict_body",
]
