"""Who is asking: `Authorization: Bearer <token>`, an operator's token or a project's key.

- An operator's token is one of API_ADMIN_TOKENS. Tokens are compared in constant time, by
  digest (which tells nothing of their length), against every configured token (no early exit
  that would tell which one nearly matched). With none configured, the server-wide endpoints
  refuse everyone.
- A request carries one credential: two Authorization headers, or two credentials joined in
  one, are refused, whichever would have been right.
- A project's key (`ais_<public id>_<secret>`) is checked by the ledger
  (`aiserver.ledger.authentication`), through this process's key cache.

Both are checked by guards, before the request's body or query is read: a request without a valid
credential learns nothing else about itself. The server-wide endpoints (catalog refresh,
overrides, creating and listing projects, archiving one) take only an operator's token
(`requires_admin`, or `Access.require_operator`); a valid project key there is a 403, never a way
in. Tokens and keys never reach a log line, a problem body or a metric label.

Guessing is limited (`aiserver.api.attempts`): a client address whose attempts failed
API_AUTH_FAILURE_LIMIT times within API_AUTH_FAILURE_WINDOW_SECONDS is refused (429
`too-many-failed-attempts`, with Retry-After) before its credential is checked, until the oldest
of those failures is that old. What counts and what is refused:

- the dashboard's sign-in (`aiserver.api.ui.signin`): every credential it refuses as not valid
  (401), a key or a token; a blocked address cannot sign in at all;
- a bearer token that is not shaped like a project key: a wrong operator token counts, and a
  blocked address is refused such tokens. Operator tokens are chosen by the operator, so they
  may be guessable; this limit keeps the JSON API from being the way around the sign-in's.
- a bearer project key is never counted nor refused here: its secret is 256 random bits (hashed
  at rest), which no number of guesses finds, and a counted key would let one client with a
  revoked key stop the ingest of every client behind the same address.

A success does not clear an address's failures: a holder of any valid key could otherwise
interleave its own sign-ins with guesses of an operator token. The count is kept in Redis,
shared by every API process using it (replicas, uvicorn workers); while Redis does not answer,
each process counts on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Any, Final

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from aiserver.api.attempts import SharedAttempts, Verdict
from aiserver.api.errors import AdminDisabled, TooManyFailures
from aiserver.api.settings import ApiSettings
from aiserver.core_db.database import require_pool
from aiserver.core_db.logging import get_logger
from aiserver.ledger.access import Access
from aiserver.ledger.authentication import Keyring
from aiserver.ledger.errors import KeyRejected
from aiserver.ledger.keys import Scope, looks_like_key

AnyConnection = ASGIConnection[Any, Any, Any, Any]

log = get_logger(__name__)

#: Where the app keeps its `SharedAttempts` (in `app.state`, made on first use).
_STATE_KEY: Final = "failed_attempts"


def client_address(connection: AnyConnection) -> str:
    """Whom a failed attempt counts against: the client's IP address as the server has it, which
    uvicorn takes from X-Forwarded-For when the peer is one of FORWARDED_ALLOW_IPS (as for
    X-Forwarded-Proto); an IPv6 address by its /64, which one host may hold whole; "" unknown."""
    host = connection.client.host if connection.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]  # a name a trusted proxy forwarded (or a test client's)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def failed_attempts(connection: AnyConnection) -> SharedAttempts:
    """The app's count of failed attempts (in Redis, shared), made on its first use."""
    state = connection.app.state
    found: SharedAttempts | None = state.get(_STATE_KEY)
    if found is None:
        settings: ApiSettings = state.settings
        found = SharedAttempts(
            state.redis, settings.api_auth_failure_limit, settings.api_auth_failure_window_seconds
        )
        state[_STATE_KEY] = found
    return found


async def attempt_wait(connection: AnyConnection) -> int:
    """Whole seconds until the connection's client may try a credential again; 0: now."""
    return await failed_attempts(connection).wait(client_address(connection))


async def attempt_failed(connection: AnyConnection) -> Verdict:
    """Count a failed attempt of the connection's client, unless it has reached the limit
    meanwhile (concurrent attempts: then it is not counted, and the caller answers 429 as for
    a client that must wait); say so in the log (its address, never the credential) when this
    failure makes it wait."""
    attempts, address = failed_attempts(connection), client_address(connection)
    verdict = await attempts.failed(address)
    if verdict.counted and verdict.wait:
        log.warning(
            "too many failed attempts to authenticate: refusing the client for a while",
            client=address, failures=attempts.limit, window_seconds=attempts.window_s,
            retry_after=verdict.wait,
        )  # fmt: skip
    return verdict


def token_matches(presented: str, tokens: tuple[str, ...]) -> bool:
    """Whether `presented` is one of `tokens`. Their SHA-256 digests are compared, so that every
    comparison is of two values of one length: `hmac.compare_digest` returns at once for values
    of different lengths, which would tell how long the tokens are."""
    candidate = hashlib.sha256(presented.encode()).digest()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(candidate, hashlib.sha256(token.encode()).digest())
    return matched


def _bearer_token(connection: AnyConnection, wanted: str) -> str:
    """The request's bearer token; `KeyRejected` without one, and for more than one: two
    Authorization headers, or two credentials joined with a comma in one (as a proxy joins
    repeated headers), are ambiguous, since whatever stands in front of the API may have read
    the other one. No credential is checked then: it counts as no failed attempt."""
    headers = connection.headers.getall("authorization", [])
    if len(headers) > 1 or (headers and "," in headers[0]):
        raise KeyRejected(
            f"this endpoint needs {wanted}, once: one Authorization header with one credential "
            "(Authorization: Bearer <token>)"
        )
    scheme, _, presented = (headers[0] if headers else "").partition(" ")
    token = presented.strip()
    if scheme.lower() != "bearer" or not token:
        raise KeyRejected(f"this endpoint needs {wanted}: Authorization: Bearer <token>")
    return token


async def _authenticate(connection: AnyConnection, *, wanted: str) -> Access:
    """The access of the connection's bearer token; `KeyRejected` (401) without one,
    `TooManyFailures` (429) for a token not shaped like a key from a client that must wait."""
    token = _bearer_token(connection, wanted)
    if looks_like_key(token):
        keyring: Keyring = connection.app.state.keyring
        return await keyring.authenticate(require_pool(), token)
    wait = await attempt_wait(connection)
    if wait:
        raise TooManyFailures(wait)
    settings: ApiSettings = connection.app.state.settings
    if token_matches(token, settings.api_admin_tokens):
        return Access.operator()
    verdict = await attempt_failed(connection)
    if not verdict.counted:  # the limit was reached meanwhile, by attempts sent at once
        raise TooManyFailures(verdict.wait)
    raise KeyRejected(f"the token is not valid: this endpoint needs {wanted}")


async def requires_admin(connection: AnyConnection, _: BaseRouteHandler) -> None:
    """Guard of the catalog and override endpoints: an operator's token, nothing else."""
    settings: ApiSettings = connection.app.state.settings
    if not settings.api_admin_tokens:
        raise AdminDisabled("admin endpoints are disabled: no API_ADMIN_TOKENS are configured")
    wanted = "an operator's token (API_ADMIN_TOKENS)"
    (await _authenticate(connection, wanted=wanted)).require_operator()


#: The `opt` of a route under `authenticated` that only the operator may use (creating and
#: listing projects): its guard is `requires_admin`'s, so that its 401 asks for an operator's
#: token alone, and a server without one answers 403 `admin-disabled`, as the catalog's routes.
OPERATOR_ONLY: Final = {"operator_only": True}


async def authenticated(connection: AnyConnection, handler: BaseRouteHandler) -> None:
    """Guard of the ledger's endpoints that an operator may use too (projects, keys,
    repricing): a project key or an operator's token, kept for the handler as its `access`
    (see `access`); on a route of `OPERATOR_ONLY`, the operator's token alone."""
    if handler.opt.get("operator_only"):
        await requires_admin(connection, handler)
        connection.state.access = Access.operator()
        return
    wanted = "a project key or an operator's token"
    connection.state.access = await _authenticate(connection, wanted=wanted)


async def key_authenticated(connection: AnyConnection, _: BaseRouteHandler) -> None:
    """Guard of the endpoints of a project's usage and budgets, which only its key reaches: as
    `authenticated`, and a 401 asks for a project's key (an operator's token is then refused
    with 403, by the route's `project_key_first`, which says why)."""
    wanted = "a project's key (ais_<public id>_<secret>)"
    connection.state.access = await _authenticate(connection, wanted=wanted)


async def documents_access(connection: AnyConnection, _: BaseRouteHandler) -> None:
    """Guard of the document endpoints: with a credential, it must be valid (a project key or an
    operator's token, kept as the request's `access`); without one, the request is anonymous
    (`access` None), which DOCUMENT_REQUIRE_KEY refuses (401)."""
    settings: ApiSettings = connection.app.state.settings
    wanted = "a project key or an operator's token"
    if settings.documents.document_require_key:
        wanted += " (DOCUMENT_REQUIRE_KEY is set)"
    await _access_if_sent(connection, wanted, required=settings.documents.document_require_key)


async def access_if_sent(connection: AnyConnection, _: BaseRouteHandler) -> None:
    """Guard of a route that asks for no credential but reads one that is sent (`GET
    /v1/jobs/{id}`): it must then be valid, and is kept as the request's `access`; without
    one, `access` is None."""
    await _access_if_sent(connection, "a project key or an operator's token", required=False)


async def _access_if_sent(connection: AnyConnection, wanted: str, *, required: bool) -> None:
    if "authorization" not in connection.headers and not required:
        connection.state.access = None
        return
    connection.state.access = await _authenticate(connection, wanted=wanted)


def project_key_first(*scopes: Scope) -> Guard:
    """A guard, after `authenticated`, of a route that only a project's key may use: the
    operator's token, or a key with none of `scopes`, is refused (403) before the route reads
    its query or body, so that such a key learns nothing of what a request names."""

    async def guard(connection: AnyConnection, _: BaseRouteHandler) -> None:
        found: Access = connection.state.access
        found.project_key(*scopes)

    return guard


def scope_first(*scopes: Scope) -> Guard:
    """A guard, after `authenticated`: a project's key with none of `scopes` is refused (403)
    before the route reads its query or body. The operator's token passes: what it may do
    there is the route's to say."""

    async def guard(connection: AnyConnection, _: BaseRouteHandler) -> None:
        found: Access = connection.state.access
        if not found.is_operator:
            found.require(*scopes)

    return guard


async def operator_first(connection: AnyConnection, _: BaseRouteHandler) -> None:
    """A guard, after `authenticated`, of a server-wide route: a project's key is refused
    (403) before the route reads its query or body."""
    found: Access = connection.state.access
    found.require_operator()


def access(request: Request[Any, Any, Any]) -> Access:
    """The request's access, as the `authenticated` guard found it (a dependency)."""
    found: Access = request.state.access
    return found
