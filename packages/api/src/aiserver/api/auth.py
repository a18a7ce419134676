"""Admin endpoints: `Authorization: Bearer <token>` must match one of API_ADMIN_TOKENS.

Tokens are compared in constant time, against every configured token (no early exit that would
tell which one nearly matched). With no token configured, admin endpoints refuse everyone.
Tokens never reach a log line or an error body.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from aiserver.api.problems import Problem
from aiserver.core_db.settings import Settings

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="aiserver-admin"'}


def token_matches(presented: str, tokens: tuple[str, ...]) -> bool:
    candidate = presented.encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(candidate, token.encode())
    return matched


def requires_admin(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    settings: Settings = connection.app.state.settings
    if not settings.api_admin_tokens:
        raise Problem(
            403,
            "admin endpoints are disabled: no API_ADMIN_TOKENS are configured",
            type_="admin-disabled",
        )
    scheme, _, presented = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Problem(
            401,
            "this endpoint needs an admin token: Authorization: Bearer <token>",
            type_="unauthorized",
            headers=_CHALLENGE,
        )
    if not token_matches(presented.strip(), settings.api_admin_tokens):
        raise Problem(401, "the admin token is not valid", type_="unauthorized", headers=_CHALLENGE)
