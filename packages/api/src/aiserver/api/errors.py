"""The API's own errors (see `aiserver.core_db.errors` for the base and the problem shape).

AiserverError
├── InvalidInput
│   ├── Unauthorized     401 unauthorized: no bearer token, or not a valid one (with
│   │                        WWW-Authenticate)
│   ├── AdminDisabled    403 admin-disabled: no API_ADMIN_TOKENS are configured
│   ├── UnknownJob       404 unknown-job: unknown, or its result expired
│   └── BadCursor        400 bad-cursor: a page cursor this API did not return
└── Unavailable
    └── NotReady         503 not-ready: a readiness check fails; `checks` lists them all
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiserver.core_db.errors import InvalidInput, Unavailable


class Unauthorized(InvalidInput, status=401, slug="unauthorized"):
    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="aiserver-admin"'}


class AdminDisabled(InvalidInput, status=403, slug="admin-disabled"):
    pass


class UnknownJob(InvalidInput, status=404, slug="unknown-job"):
    pass


class BadCursor(InvalidInput, status=400, slug="bad-cursor"):
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


class NotReady(Unavailable, slug="not-ready"):
    def __init__(self, message: str, checks: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.checks = checks

    def members(self) -> dict[str, Any]:
        return {"checks": self.checks}
