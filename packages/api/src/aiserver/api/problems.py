"""Every error is an RFC 9457 problem (application/problem+json) with a clear `detail`.

One exception handler maps domain errors to problems, so controllers raise and never catch:

- request validation (which field, why) -> 400 for malformed JSON, 422 otherwise;
- `UnknownModel` -> 404 with the closest known names (`suggestions`);
- `UsageError` -> 422 naming the fields;
- a body over the limit -> 413;
- PostgreSQL or Redis unreachable -> 503;
- `CatalogNotReady` (no catalog with models loaded yet, e.g. the database was down at start)
  -> 503, where an empty catalog would answer 404 "unknown model" for every name;
- anything unexpected -> 500, logged with its traceback (a bad input never lands here).
"""

from __future__ import annotations

import math
import re
from http import HTTPStatus
from typing import Any, Final

import asyncpg
import msgspec
import redis.exceptions
from litestar import MediaType, Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    InternalServerException,
    SerializationException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import Empty

from aiserver.core_db.database import DatabaseUnavailable
from aiserver.core_db.logging import get_logger
from aiserver.costs.catalog import UnknownModel
from aiserver.costs.live import CatalogNotReady
from aiserver.costs.pricing import UsageError

log = get_logger(__name__)

PROBLEM_JSON: Final = "application/problem+json"
TYPE_BASE: Final = "urn:aiserver:problem:"


class Problem(HTTPException):
    """An error that is already a problem: raise it from a controller."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail=detail, status_code=status_code, headers=headers, extra=extra)
        self.type_ = type_


class ProblemDetails(msgspec.Struct, frozen=True, kw_only=True):
    """What every error answer holds (RFC 9457); a problem may add members (`errors`, ...)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI `responses` for the problems an operation may answer."""
    return {
        status: ResponseSpec(
            data_container=ProblemDetails,
            media_type=PROBLEM_JSON,
            description=f"{HTTPStatus(status).phrase} (problem details)",
            generate_examples=False,
        )
        for status in statuses
    }


#: Problem types named after Python 3.11's reason phrases, which Python 3.13 renamed (413 is
#: "Content Too Large" there): clients match on `type`, so it must not change with Python.
_STABLE_TYPES: Final = {
    413: "request-entity-too-large",
    414: "request-uri-too-long",
    416: "requested-range-not-satisfiable",
    422: "unprocessable-entity",
}


def problem_response(
    request: Request[Any, Any, Any],
    status: int,
    detail: str,
    *,
    type_: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    phrase = HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": TYPE_BASE
        + (type_ or _STABLE_TYPES.get(status) or phrase.lower().replace(" ", "-")),
        "title": phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers or {})


class CheckedRequest(Request[Any, Any, Any]):
    """A request whose JSON body is a 400 however it is malformed.

    msgspec reports invalid UTF-8 inside a string as UnicodeDecodeError and nesting deeper than
    the interpreter's recursion limit as RecursionError; Litestar turns neither into a client
    error, so without this they were 500s.
    """

    async def body(self) -> bytes:
        """The whole body, as Litestar's `Request.body()` reads it, with less on the way.

        Litestar's version builds the parsed headers to read Content-Length and runs an async
        generator per chunk: more than the rest of a cost calculation. This one reads the one
        header from the ASGI scope and the chunks in a loop, with the same limit (413 when the
        declared or the received size is above it), the same errors and the same caching.
        """
        body = self._body
        if body is not Empty:
            return body
        body = self._connection_state.body
        if body is not Empty:
            self._body = body
            return body
        if not self.is_connected:
            raise InternalServerException("stream consumed")
        limit = self.route_handler.resolve_request_max_body_size() or math.inf
        for name, value in self.scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    text = value.decode("latin-1")
                    raise ClientException(f"Invalid content-length: {text!r}") from None
                if declared > limit:
                    raise RequestEntityTooLarge
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self.receive()
            if event["type"] == "http.request":
                chunk = event.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > limit:
                        raise RequestEntityTooLarge
                    chunks.append(chunk)
                if not event.get("more_body", False):
                    break
            elif event["type"] == "http.disconnect":
                raise InternalServerException("client disconnected prematurely")
        self.is_connected = False
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._body = self._connection_state.body = body
        return body

    async def json(self) -> Any:
        try:
            return await super().json()
        except UnicodeDecodeError as exc:
            raise SerializationException(
                f"JSON is malformed: invalid UTF-8 ({exc.reason})"
            ) from None
        except RecursionError:
            raise SerializationException("JSON is malformed: nested too deeply") from None


_UNAVAILABLE = (
    DatabaseUnavailable,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    ConnectionError,
    TimeoutError,
    OSError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


# What a decoder says of a body that is not JSON at all (msgspec: "JSON is malformed: ...",
# "Input data was truncated"). Phrases, not words: a field named `json_mode` or `decode` in an
# unknown-field error is a 422 about that field, not a 400 about the body.
_MALFORMED: Final = re.compile(
    r"json is malformed|input data was truncated|malformed json|not valid json", re.IGNORECASE
)


def _looks_malformed(message: str) -> bool:
    return _MALFORMED.search(message) is not None


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    errors: list[dict[str, Any]] = []
    malformed = False
    for item in exc.extra if isinstance(exc.extra, list) else []:
        message = str(item.get("message", "")) if isinstance(item, dict) else str(item)
        malformed = malformed or _looks_malformed(message)
        field = item.get("key") if isinstance(item, dict) else None
        source = item.get("source") if isinstance(item, dict) else None
        if field == "data" and message == "'data'":  # Litestar's KeyError for an empty body
            message = "the request body is empty; a JSON object is required"
        errors.append({"field": field, "source": source, "message": message})
    if malformed:
        return problem_response(
            request, 400, f"the request body is not valid JSON: {errors[0]['message']}",
            type_="malformed-json", errors=errors,
        )  # fmt: skip
    summary = "; ".join(
        f"{e['field']}: {e['message']}" if e["field"] else str(e["message"]) for e in errors
    )
    return problem_response(
        request,
        422,
        f"invalid request: {summary or exc.detail}",
        type_="invalid-request",
        errors=errors,
    )


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, Problem):
        return problem_response(
            request, exc.status_code, exc.detail, type_=exc.type_, headers=exc.headers,
            **(exc.extra if isinstance(exc.extra, dict) else {}),
        )  # fmt: skip
    if isinstance(exc, ValidationException):
        return _validation(request, exc)
    if isinstance(exc, CatalogNotReady):
        return problem_response(
            request, 503, str(exc), type_="catalog-not-loaded", headers={"Retry-After": "5"}
        )
    if isinstance(exc, UnknownModel):
        return problem_response(
            request, 404, str(exc), type_="unknown-model", model=exc.name,
            suggestions=list(exc.suggestions),
        )  # fmt: skip
    if isinstance(exc, UsageError):
        return problem_response(
            request, 422, str(exc), type_="invalid-usage", fields=list(exc.fields)
        )
    if isinstance(exc, HTTPException):
        detail = exc.detail
        if exc.status_code == 400 and _looks_malformed(detail):
            return problem_response(
                request, 400, f"the request body is not valid JSON: {detail}",
                type_="malformed-json",
            )  # fmt: skip
        if exc.status_code == 413:
            detail = f"the request body is too large: {detail}"
        return problem_response(request, exc.status_code, detail, headers=exc.headers)
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedColumnError):
        log.warning("database schema behind", path=request.url.path, error=str(exc))
        return problem_response(
            request, 503, f"the database schema is not migrated ({exc}); the task runner applies "
            "the migrations at start, or run: aiserver-db migrate",
            type_="schema-not-migrated", headers={"Retry-After": "5"},
        )  # fmt: skip
    if isinstance(exc, _UNAVAILABLE):
        log.warning(
            "dependency unavailable", path=request.url.path, error=f"{type(exc).__name__}: {exc}"
        )
        return problem_response(
            request, 503, f"a backing service is unavailable: {type(exc).__name__}: {exc}",
            type_="service-unavailable", headers={"Retry-After": "5"},
        )  # fmt: skip
    log.exception("unhandled error", path=request.url.path)
    return problem_response(request, 500, "internal error; it has been logged", type_="internal")


EXCEPTION_HANDLERS: Final = {Exception: handle_exception}

__all__ = [
    "EXCEPTION_HANDLERS",
    "PROBLEM_JSON",
    "MediaType",
    "Problem",
    "ProblemDetails",
    "problem_response",
    "problem_responses",
]
