"""The price catalog's errors (see `aiserver.core_db.errors` for the base and the problem shape).

    AiserverError
    ├── InvalidInput
    │   ├── UnknownModel            404 unknown-model: no catalog entry answers to the name;
    │   │                               `suggestions` are the closest known names
    │   ├── InvalidCall             422 invalid-request: a call that cannot be priced as asked
    │   │   └── UsageError          422 invalid-usage: counts that are wrong; `fields` names them
    │   ├── UnknownPriceFields      422 invalid-request: an override names fields the calculator
    │   │                               does not price, or that hold several prices; `fields`
    │   │                               names them
    │   └── UnknownOverride         404 unknown-override
    ├── Unavailable                 (transient: worth a retry)
    │   ├── CatalogNotReady         503 catalog-not-loaded: no catalog with models loaded yet
    │   └── UpstreamUnavailable     502 upstream-failed: timeout, connection, 5xx or 429 upstream
    ├── UpstreamError               502 upstream-failed: the upstream could not deliver
    │   ├── UpstreamUnavailable     (above: transient)
    │   └── UpstreamRefused         permanent: 404, 403, a body over MODEL_COST_MAX_BYTES, ...
    └── SourceRejected              502 source-rejected: the upstream body is unusable whole
                                        (empty, not JSON, wrong shape, shrunk); the catalog
                                        stays as it was

A refresh never lets the upstream errors out: it records them as its outcome. They carry a
status and a problem type all the same, so that every error of the package has one shape.
"""

from __future__ import annotations

from typing import Any

from aiserver.core_db.errors import AiserverError, InvalidInput, Unavailable


class UnknownModel(InvalidInput, status=404, slug="unknown-model"):
    def __init__(self, name: str, suggestions: tuple[str, ...], reason: str = "") -> None:
        self.name = name
        self.suggestions = suggestions
        text = reason or f"unknown model {name!r}"
        if suggestions:
            text += "; did you mean " + ", ".join(repr(s) for s in suggestions) + "?"
        super().__init__(text)

    def members(self) -> dict[str, Any]:
        return {"model": self.name, "suggestions": list(self.suggestions)}


class InvalidCall(InvalidInput):
    """A call that cannot be priced as asked (an unknown service tier, a time without offset)."""


class UsageError(InvalidCall, slug="invalid-usage"):
    """A usage that cannot be priced; `fields` names the offending usage fields."""

    def __init__(self, message: str, fields: tuple[str, ...]) -> None:
        super().__init__(message)
        self.fields = fields

    def members(self) -> dict[str, Any]:
        return {"fields": list(self.fields)}


class UnknownPriceFields(InvalidInput):
    """An override that names price fields the calculator does not price, or that it cannot set
    (`reason` says which)."""

    def __init__(self, fields: list[str], reason: str = "unknown price fields") -> None:
        super().__init__(f"{reason}: " + ", ".join(fields))
        self.fields = fields

    def members(self) -> dict[str, Any]:
        return {"fields": self.fields}


class UnknownOverride(InvalidInput, status=404, slug="unknown-override"):
    pass


class CatalogNotReady(Unavailable, slug="catalog-not-loaded"):
    """No catalog with models is loaded yet, so no name can be priced or looked up. The message
    says why: the database was not reachable yet, or it holds no prices yet."""


class UpstreamError(AiserverError, status=502, slug="upstream-failed"):
    """The upstream could not deliver the price document."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = status  # what the upstream answered, if it answered


class UpstreamUnavailable(UpstreamError, Unavailable):
    """A transient fault: a timeout, a connection error, a 5xx or 429 answer."""


class UpstreamRefused(UpstreamError):
    """A permanent fault: another answer (404, 403, ...) or a body over the size limit."""


class SourceRejected(AiserverError, status=502, slug="source-rejected"):
    """The whole upstream body is unusable; the current catalog must stay as it is."""
