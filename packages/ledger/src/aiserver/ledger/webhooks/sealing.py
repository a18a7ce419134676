"""Budget webhook secrets at rest: sealed with AES-256-GCM under the operator's key.

A webhook secret signs alerts with HMAC, so the server needs it back, and a hash (as for API
keys) cannot give it back. It is stored sealed instead: AES-256-GCM under a key of
WEBHOOK_SECRET_KEYS, which lives in the services' environment, never in the database. A copy of
the database (a backup, a replica, a leaked dump) then holds no secret that can sign an alert.

- The sealed form is base64url(nonce, 12 random bytes || ciphertext and tag); the row keeps the
  id of the key that sealed it (`key_id`, from the key itself) beside it, so that a row says
  which key opens it without trying each.
- The project's id is the associated data: a sealed secret copied to another project's row
  does not open there.
- WEBHOOK_SECRET_KEYS is a list: the first key seals; every key opens. To replace a key, put
  the new one first (the API replicas, then the task runners) and keep the old one after it
  until every process runs with both and a task runner has started with them (it seals every
  secret again with the first key: `aiserver.ledger.budgets.service.seal_secrets`); then remove
  the old one. An API replica still on the old list would seal new secrets with the old key.
- Rows written before secrets were sealed (`key_id` NULL) are read as they are and sealed by
  the task runner's next start.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: Bytes of a key of WEBHOOK_SECRET_KEYS (AES-256), given base64-encoded.
KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_CONTEXT: Final = b"aiserver budget webhook secret, project "


class BadKey(ValueError):
    """A key of WEBHOOK_SECRET_KEYS that is not 32 bytes in base64."""


class Unopenable(Exception):
    """A sealed secret that no configured key opens: its key is not (or no longer) in
    WEBHOOK_SECRET_KEYS, or the row was changed or copied from another project."""


def decode_key(text: str) -> bytes:
    """The 32 bytes of a key given in base64 (standard or URL-safe, padded or not)."""
    cleaned = text.strip()
    padded = cleaned + "=" * (-len(cleaned) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise BadKey(
            f"a key must be {KEY_BYTES} random bytes in base64 (e.g. the output of "
            "`openssl rand -base64 32`)"
        )
    return raw


def key_id(key: bytes) -> str:
    """A short public name of a key: it tells which key sealed a row, and reveals nothing of it."""
    return hashlib.sha256(b"aiserver webhook secret key id\x00" + key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Sealed:
    key_id: str
    value: str


class SecretBox:
    """Seals with the first key; opens with whichever key sealed."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a SecretBox needs at least one key")
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self.current = key_id(keys[0])

    @classmethod
    def of(cls, texts: Sequence[str]) -> SecretBox | None:
        """The box of WEBHOOK_SECRET_KEYS; None when none is set. Made once per list of keys:
        the API asks for it on every budget change."""
        return _box_of(tuple(texts))

    def seal(self, secret: str, project_id: int) -> Sealed:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[self.current].encrypt(nonce, secret.encode(), _aad(project_id))
        value = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return Sealed(self.current, value)

    def open(self, stored: str, sealed_with: str | None, project_id: int) -> str:
        """The secret of a row: `stored` itself when it was never sealed (`sealed_with` None)."""
        if sealed_with is None:
            return stored
        box = self._keys.get(sealed_with)
        if box is None:
            raise Unopenable(
                f"the webhook secret was sealed with key {sealed_with}, which is not in "
                "WEBHOOK_SECRET_KEYS"
            )
        try:
            raw = base64.urlsafe_b64decode(stored + "=" * (-len(stored) % 4))
            opened = box.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(project_id))
        except (InvalidTag, ValueError, binascii.Error):
            raise Unopenable(
                f"the webhook secret sealed with key {sealed_with} does not open: the row was "
                "changed, or copied from another project"
            ) from None
        return opened.decode()


@functools.lru_cache(maxsize=8)
def _box_of(texts: tuple[str, ...]) -> SecretBox | None:
    return SecretBox([decode_key(t) for t in texts]) if texts else None


def _aad(project_id: int) -> bytes:
    return _CONTEXT + str(project_id).encode()
