"""The base of every domain error, and how any error becomes an RFC 9457 problem.

    AiserverError                 an error a caller can act on: HTTP status + problem type
    ├── InvalidInput              400 and 4xx: the request is wrong; the same request fails again
    │   └── (each domain's own: UnknownModel 404, UsageError 422, DocumentTooLarge 413, ...)
    └── Unavailable               503 with Retry-After: transient; the same request may succeed
        ├── DatabaseUnavailable   PostgreSQL cannot be reached (aiserver.core_db.database)
        └── (each domain's own: CatalogNotReady, ...)

Whether an error is worth retrying is said by its class, never by a flag or its message. Each
domain declares its errors in one `errors.py` whose docstring draws its part of the tree.

Every error knows its problem (`AiserverError.problem()`): the HTTP API answers it as
`application/problem+json`, a batch item carries it, and the command-line tools print it, so a
problem type is spelled one way everywhere: `urn:aiserver:problem:<slug>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar, Final

PROBLEM_TYPE_BASE: Final = "urn:aiserver:problem:"

#: Slugs for statuses whose reason phrase Python 3.13 renamed (413 is "Content Too Large" there):
#: clients match on `type`, so it must not change with the interpreter.
_STABLE_SLUGS: Final = {
    413: "request-entity-too-large",
    414: "request-uri-too-long",
    416: "requested-range-not-satisfiable",
    422: "unprocessable-entity",
}

#: How long a client should wait before retrying a 503.
RETRY_AFTER_S: Final = 5


def problem_type(status: int, slug: str | None = None) -> str:
    """The problem type URI: the slug given, else one made from the status's reason phrase."""
    if slug is None:
        slug = _STABLE_SLUGS.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "-")
    return PROBLEM_TYPE_BASE + slug


def problem(status: int, detail: str, *, slug: str | None = None, **members: Any) -> dict[str, Any]:
    """An RFC 9457 problem body (without `instance`, which only an HTTP answer has)."""
    return {
        "type": problem_type(status, slug),
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **members,
    }


def validation_field(message: str) -> tuple[str, str]:
    """A msgspec validation message split into what is wrong and the field it names:
    "Expected `int`, got `str` - at `$.usage.x`" -> ("Expected `int`, got `str`", "usage.x").
    An object's missing or unknown field is named, under the object's path: "Object missing
    required field `model`" -> (..., "model"), "... unknown field `x` - at `$.usage`" -> (...,
    "usage.x"). The field is "" for the value itself; a mapping's value (`tags[...]`) names the
    mapping."""
    text, at, path = message.rpartition(" - at `$")
    if not at:
        text, path = message, ""
    field = path.strip("`.").replace("[...]", "")
    for says in ("missing required field `", "unknown field `"):
        _, found, name = text.partition(says)
        if found and name.endswith("`"):
            field = f"{field}.{name[:-1]}" if field else name[:-1]
            break
    return text, field


class AiserverError(Exception):
    """An error with an HTTP status and a problem type; the message is the problem's `detail`.

    A subclass names its status and slug in its header, inheriting what it leaves out:
    `class UnknownModel(InvalidInput, status=404, slug="unknown-model")`; it adds problem
    members with `members()` and HTTP headers with `headers()`.
    """

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"

    def __init_subclass__(
        cls, *, status: int | None = None, slug: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if slug is not None:
            cls.slug = slug

    def members(self) -> dict[str, Any]:
        """Problem members beyond type, title, status and detail (e.g. `fields`)."""
        return {}

    def headers(self) -> Mapping[str, str]:
        """HTTP headers of the answer (e.g. `Retry-After`)."""
        return {}

    def problem(self) -> dict[str, Any]:
        return problem(self.status, str(self), slug=self.slug, **self.members())


class InvalidInput(AiserverError, status=422, slug="invalid-request"):
    """The request is wrong: sending it again gives the same answer."""


class Unavailable(AiserverError, status=503, slug="service-unavailable"):
    """Something the request needs is unavailable for now: worth a retry after a while."""

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(RETRY_AFTER_S)}
