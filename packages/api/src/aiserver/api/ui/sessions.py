"""Dashboard sessions: a key (or an operator's token) exchanged once for a signed cookie.

- Signing in proves a project key (through the ledger's `Keyring`, as every API request does) or
  an operator's token. The session remembers WHO signed in, never the secret: a key's public id
  and row id, or an HMAC of the operator's token under the session secret.
- The session lives in Redis under the SHA-256 of its id, for `UI_SESSION_SECONDS` from the
  sign-in (no sliding: a stolen cookie is worth that long at most). Signing out deletes it, so
  a copied cookie stops working at once; so does signing in again with its cookie (the browser
  gets the new session's instead).
- The cookie holds the id and its HMAC under `UI_SESSION_SECRET`: a cookie that was not made
  here is refused without asking Redis. It is `HttpOnly`, `SameSite=Strict`, `Path=/ui`, and
  `Secure` when the page was served over TLS.
- Every use checks the credential again: a revoked or expired key, an archived project, an
  operator token removed from `API_ADMIN_TOKENS` ends the session (a revocation or an archiving
  as it commits, `aiserver.ledger.authentication`).
- Each session has its own CSRF token, which every form that changes something carries; the
  sign-in form, before any session, carries one bound to a short-lived cookie of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import unquote

import msgspec

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: The session cookie, and the cookie that binds the sign-in form's CSRF token.
COOKIE: Final = "aiserver_ui"
SIGN_IN_COOKIE: Final = "aiserver_ui_sign_in"
#: Every dashboard path starts with it; the cookies are sent there only.
PATH: Final = "/ui"
#: A project's pages are under PROJECT/<slug>/.
PROJECT: Final = PATH + "/p"
#: How long a sign-in form may stay open before it is sent.
SIGN_IN_SECONDS: Final = 3600
#: What the sign-in form's cookie is signed for (never taken for a session's).
SIGN_IN_PURPOSE: Final = b"sign-in"
_REDIS_PREFIX: Final = "aiserver:ui:session:"


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """Who signed in (never their secret), and the session's CSRF token."""

    kind: Literal["key", "operator"]
    csrf: str
    created_at: datetime
    public_id: str | None = None  # a key's
    key_id: int | None = None
    key_name: str | None = None  # the key's name when it signed in (None: a session from before)
    operator: str | None = None  # the HMAC of the operator's token (see `Signer.fingerprint`)


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(Session)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _bytes(text: str) -> bytes:
    """Text a client sent, as bytes to compare (any text: a lone surrogate too)."""
    return text.encode("utf-8", "surrogatepass")


class Signer:
    """HMACs under the session secret: of cookies, CSRF tokens and operator tokens."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, purpose: bytes, value: str) -> str:
        return _b64(hmac.new(self._secret, purpose + b"\0" + _bytes(value), "sha256").digest())

    def sign(self, value: str, purpose: bytes = b"session") -> str:
        return f"{value}.{self._mac(purpose, value)}"

    def unsign(self, signed: str | None, purpose: bytes = b"session") -> str | None:
        """The value of a cookie signed here for `purpose`; None for any other."""
        value, dot, mac = (signed or "").rpartition(".")
        if not dot or not value:
            return None
        # as bytes: a cookie is any text a client sends, and compare_digest refuses a str that
        # is not ASCII (a TypeError, where a forged cookie must be refused like any other)
        expected = self._mac(purpose, value).encode()
        return value if hmac.compare_digest(_bytes(mac), expected) else None

    def fingerprint(self, token: str) -> str:
        """What a session keeps of an operator's token: checkable, not reversible."""
        return self._mac(b"operator", token)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same(presented: object, expected: str) -> bool:
    """Whether a presented CSRF token is the expected one (constant time). A form's field is
    text, or a file when the form was sent as multipart: a file is no token."""
    return isinstance(presented, str) and hmac.compare_digest(_bytes(presented), expected.encode())


class Sessions:
    """The sessions in Redis, and the cookies that name them."""

    def __init__(self, redis: Redis, signer: Signer, ttl_s: int) -> None:
        self.redis = redis
        self.signer = signer
        self.ttl_s = ttl_s

    @staticmethod
    def _key(session_id: str) -> str:
        return _REDIS_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()

    async def start(
        self,
        kind: Literal["key", "operator"],
        *,
        public_id: str | None = None,
        key_id: int | None = None,
        key_name: str | None = None,
        operator: str | None = None,
    ) -> tuple[str, Session]:
        """A new session: the cookie's value, and the session."""
        session_id = new_token()
        session = Session(
            kind=kind, csrf=new_token(), created_at=datetime.now(UTC),
            public_id=public_id, key_id=key_id, key_name=key_name, operator=operator,
        )  # fmt: skip
        await self.redis.set(self._key(session_id), _ENCODER.encode(session), ex=self.ttl_s)
        return self.signer.sign(session_id), session

    async def find(self, cookie: str | None) -> Session | None:
        """The session a cookie names; None when it is not signed here, has ended or expired."""
        session_id = self.signer.unsign(cookie)
        if session_id is None:
            return None
        found = await self.redis.get(self._key(session_id))
        return _DECODER.decode(found) if found is not None else None

    async def end(self, cookie: str | None) -> None:
        session_id = self.signer.unsign(cookie)
        if session_id is not None:
            await self.redis.delete(self._key(session_id))


#: The longest page address kept through a sign-in (an Explore question with many filters).
MAX_NEXT: Final = 2000


def back_to(path: object) -> str | None:
    """`path` if it is a page of the dashboard to come back to after signing in: a path on
    this server under /ui/ (never another host: no scheme, no `//`, no backslash, no `..`
    segment, written plainly or percent-encoded, no control character), at most MAX_NEXT
    characters; None otherwise."""
    if not isinstance(path, str) or not 0 < len(path) <= MAX_NEXT:
        return None
    if not path.startswith(f"{PATH}/") or path.startswith("//") or "\\" in path:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return None
    # the path as the browser resolves it: `%2e%2e` is a `..` segment, `%2f` a slash
    route = unquote(path.split("?", 1)[0].split("#", 1)[0])
    if ".." in route.split("/") or "//" in route or "\\" in route:
        return None
    if route in (f"{PATH}/sign-in", f"{PATH}/sign-out"):
        return None
    return path
