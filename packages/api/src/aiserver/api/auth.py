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

from aiserver.api.errors import AdminDisabled, Unauthorized
from aiserver.api.settings import ApiSettings


def token_matches(presented: str, tokens: tuple[str, ...]) -> bool:
    candidate = presented.encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(candidate, token.encode())
    return matched


def requires_admin(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    settings: ApiSettings = connection.app.state.settings
    if not settings.api_admin_tokens:
        raise AdminDisabled("admin endpoints are disabled: no API_ADMIN_TOKENS are configured")
    scheme, _, presented = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("this endpoint needs an admin token: Authorization: Bearer <token>")
    if not token_matches(presented.strip(), settings.api_admin_tokens):
        raise Unauthorized("the admin token is not valid")
