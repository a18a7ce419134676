"""API keys: their text, their secret and its hash. Pure: no I/O.

A key reads `ais_<public id>_<secret>`: the public id is 16 hex digits (8 random bytes) that name
the key in logs and lookups; the secret is 32 random bytes in URL-safe base64 (43 characters).
Only SHA-256 of the secret is stored. A fast hash is the right one here: the secret is 256 random
bits, so there is nothing to guess that a slow hash would protect, and every request pays for it.
The stored and the presented hash are compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final, Literal

Scope = Literal["ingest", "read", "admin"]
#: What each scope allows: `ingest` records usage and reserves budget; `read` reads spend,
#: events, exports and budget status; `admin` manages the project's keys, budgets and repricing.
SCOPES: Final[tuple[Scope, ...]] = ("ingest", "read", "admin")

PREFIX: Final = "ais_"
SECRET_BYTES: Final = 32
_KEY: Final = re.compile(r"^ais_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key as made: the text shown once, and what is stored of it."""

    text: str
    public_id: str
    secret_hash: bytes


@dataclass(frozen=True, slots=True)
class PresentedKey:
    """A key as a request presented it, split into what names it and what proves it."""

    public_id: str
    secret_hash: bytes

    def proves(self, stored_hash: bytes) -> bool:
        """Whether the presented secret is the one whose hash is stored (constant time)."""
        return hmac.compare_digest(self.secret_hash, stored_hash)


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def new_key() -> NewKey:
    public_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")
    return NewKey(
        text=f"{PREFIX}{public_id}_{secret}", public_id=public_id, secret_hash=_hash(secret)
    )


def parse_key(text: str) -> PresentedKey | None:
    """The parts of a presented key, or None when it is not shaped like a key at all."""
    match = _KEY.match(text)
    if match is None:
        return None
    return PresentedKey(public_id=match.group(1), secret_hash=_hash(match.group(2)))


def looks_like_key(text: str) -> bool:
    """Whether a bearer token is meant as a project key (as opposed to an operator's token)."""
    return text.startswith(PREFIX)
