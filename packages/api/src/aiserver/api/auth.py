"""Who is asking: `Authorization: Bearer <token>`, an operator's token or a project's key.

- An operator's token is one of API_ADMIN_TOKENS. Tokens are compared in constant time, against
  every configured token (no early exit that would tell which one nearly matched). With none
  configured, the server-wide endpoints refuse everyone.
- A project's key (`ais_<public id>_<secret>`) is checked by the ledger
  (`aiserver.ledger.authentication`), through this process's key cache.

Both are checked by guards, before the request's body or query is read: a request without a valid
credential learns nothing else about itself. The server-wide endpoints (catalog refresh,
overrides, creating and listing projects, archiving one) take only an operator's token
(`requires_admin`, or `Access.require_operator`); a valid project key there is a 403, never a way
in. Tokens and keys never reach a log line, a problem body or a metric label.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from aiserver.api.errors import AdminDisabled
from aiserver.api.settings import ApiSettings
from aiserver.core_db.database import require_pool
from aiserver.ledger.access import Access
from aiserver.ledger.authentication import Keyring
from aiserver.ledger.errors import KeyRejected
from aiserver.ledger.keys import looks_like_key

AnyConnection = ASGIConnection[Any, Any, Any, Any]


def token_matches(presented: str, tokens: tuple[str, ...]) -> bool:
    candidate = presented.encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(candidate, token.encode())
    return matched


async def _authenticate(connection: AnyConnection, *, wanted: str) -> Access:
    """The access of the connection's bearer token; `KeyRejected` (401) without one."""
    scheme, _, presented = connection.headers.get("authorization", "").partition(" ")
    token = presented.strip()
    if scheme.lower() != "bearer" or not token:
        raise KeyRejected(f"this endpoint needs {wanted}: Authorization: Bearer <token>")
    if looks_like_key(token):
        keyring: Keyring = connection.app.state.keyring
        return await keyring.authenticate(require_pool(), token)
    settings: ApiSettings = connection.app.state.settings
    if token_matches(token, settings.api_admin_tokens):
        return Access.operator()
    raise KeyRejected(f"the token is not valid: this endpoint needs {wanted}")


async def requires_admin(connection: AnyConnection, _: BaseRouteHandler) -> None:
    """Guard of the catalog and override endpoints: an operator's token, nothing else."""
    settings: ApiSettings = connection.app.state.settings
    if not settings.api_admin_tokens:
        raise AdminDisabled("admin endpoints are disabled: no API_ADMIN_TOKENS are configured")
    (await _authenticate(connection, wanted="an admin token")).require_operator()


async def authenticated(connection: AnyConnection, _: BaseRouteHandler) -> None:
    """Guard of the ledger's endpoints: a project key or an operator's token, kept for the
    handler as its `access` (see `access`)."""
    wanted = "a project key or an operator's token"
    connection.state.access = await _authenticate(connection, wanted=wanted)


def access(request: Request[Any, Any, Any]) -> Access:
    """The request's access, as the `authenticated` guard found it (a dependency)."""
    found: Access = request.state.access
    return found
