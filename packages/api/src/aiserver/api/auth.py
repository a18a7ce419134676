"""Who is asking: `Authorization: Bearer <token>`, an operator's token or a project's key.

- An operator's token is one of API_ADMIN_TOKENS. Tokens are compared in constant time, against
  every configured token (no early exit that would tell which one nearly matched). With none
  configured, the server-wide endpoints refuse everyone.
- A project's key (`ais_<public id>_<secret>`) is checked by the ledger
  (`aiserver.ledger.authentication`), through this process's key cache.

Server-wide endpoints (catalog refresh, overrides, projects) take only an operator's token; a
valid project key there is a 403, never a way in. Tokens and keys never reach a log line, a
problem body or a metric label.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from aiserver.api.errors import AdminDisabled, Unauthorized
from aiserver.api.settings import ApiSettings
from aiserver.core_db.database import require_pool
from aiserver.ledger.access import Access
from aiserver.ledger.authentication import authenticate
from aiserver.ledger.errors import KeyRejected
from aiserver.ledger.keys import looks_like_key

AnyConnection = ASGIConnection[Any, Any, Any, Any]


def token_matches(presented: str, tokens: tuple[str, ...]) -> bool:
    candidate = presented.encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(candidate, token.encode())
    return matched


def _bearer(connection: AnyConnection) -> str | None:
    scheme, _, presented = connection.headers.get("authorization", "").partition(" ")
    token = presented.strip()
    return token if scheme.lower() == "bearer" and token else None


async def _project_key(connection: AnyConnection, token: str) -> Access:
    state = connection.app.state
    return await authenticate(require_pool(), token, state.key_cache, state.key_uses)


async def requires_admin(connection: AnyConnection, handler: BaseRouteHandler) -> None:
    """Guard of the server-wide endpoints: an operator's token, nothing else."""
    settings: ApiSettings = connection.app.state.settings
    if not settings.api_admin_tokens:
        raise AdminDisabled("admin endpoints are disabled: no API_ADMIN_TOKENS are configured")
    token = _bearer(connection)
    if token is None:
        raise Unauthorized("this endpoint needs an admin token: Authorization: Bearer <token>")
    if looks_like_key(token):
        (await _project_key(connection, token)).require_operator()
    if not token_matches(token, settings.api_admin_tokens):
        raise Unauthorized("the admin token is not valid")


async def access(request: Request[Any, Any, Any]) -> Access:
    """The access of the request's bearer token (a dependency of the ledger's routes)."""
    token = _bearer(request)
    if token is None:
        raise KeyRejected(
            "this endpoint needs a project key or an operator's token: Authorization: Bearer <key>"
        )
    if looks_like_key(token):
        return await _project_key(request, token)
    settings: ApiSettings = request.app.state.settings
    if settings.api_admin_tokens and token_matches(token, settings.api_admin_tokens):
        return Access.operator()
    raise KeyRejected("the key is not valid")
