"""The API's own errors (see `aiserver.core_db.errors` for the base and the problem shape; a
missing or wrong credential is the ledger's `KeyRejected`, 401).

    AiserverError
    ├── InvalidInput
    │   ├── AdminDisabled    403 admin-disabled: no API_ADMIN_TOKENS are configured
    │   ├── UnknownJob       404 unknown-job: unknown, or its result expired
    │   ├── BadCursor        400 bad-cursor: a page cursor this API did not return
    │   ├── CsrfRefused      403 csrf-refused: a dashboard form without its session's CSRF
    │   │                        token (docs/ui.md)
    │   └── UnknownQuery     422 invalid-request: a query parameter the route does not take;
    │                            `fields` names them
    ├── TooManyFailures      429 too-many-failed-attempts: the client's address failed to
    │                        authenticate too often lately (aiserver.api.attempts);
    │                        Retry-After says when it may try again
    └── Unavailable
        ├── NotReady         503 not-ready: a readiness check fails; `checks` lists them all
        └── ExportsBusy      503 exports-busy: this process streams as many usage exports as
                                 it may at once
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiserver.core_db.errors import AiserverError, InvalidInput, Unavailable


class AdminDisabled(InvalidInput, status=403, slug="admin-disabled"):
    pass


class UnknownJob(InvalidInput, status=404, slug="unknown-job"):
    pass


class BadCursor(InvalidInput, status=400, slug="bad-cursor"):
    pass


class CsrfRefused(InvalidInput, status=403, slug="csrf-refused"):
    pass


class UnknownQuery(InvalidInput):
    def __init__(self, names: list[str], known: frozenset[str]) -> None:
        allowed = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"unknown query parameters: {', '.join(names)} (this route takes {allowed})"
        )
        self.fields = names

    def members(self) -> dict[str, Any]:
        return {"fields": self.fields}


class RepeatedQuery(InvalidInput):
    def __init__(self, names: list[str]) -> None:
        super().__init__(
            f"query parameters given more than once: {', '.join(names)} (each takes one value; "
            "one of them would be ignored)"
        )
        self.fields = names

    def members(self) -> dict[str, Any]:
        return {"fields": self.fields}


class TooManyFailures(AiserverError, status=429, slug="too-many-failed-attempts"):
    """Refused before its credential is checked: neither a wrong request (the same one succeeds
    later) nor an unavailable server (the wait is this client's only)."""

    def __init__(self, wait_s: int) -> None:
        super().__init__(
            "too many failed attempts with a wrong key or token from this address; try again "
            f"in {wait_s} seconds"
        )
        self.wait_s = wait_s

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.wait_s)}


class NotReady(Unavailable, slug="not-ready"):
    def __init__(self, message: str, checks: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.checks = checks

    def members(self) -> dict[str, Any]:
        return {"checks": self.checks}


class ExportsBusy(Unavailable, slug="exports-busy"):
    pass
