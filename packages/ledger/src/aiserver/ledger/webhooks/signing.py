"""The signature of a webhook: HMAC-SHA256 over the timestamp and the body, keyed by the
budget's secret, in one header that carries both.

    Aiserver-Signature: t=1733230800,v1=5f0c...e9 (64 hex digits)

`v1` is `hex(HMAC-SHA256(secret, f"{t}." + body))`, over the exact bytes of the body as sent.
Signing the timestamp with the body lets a receiver refuse a replayed request: a captured one
stops verifying once its `t` is older than the receiver's tolerance. A receiver compares in
constant time, so that the comparison tells an attacker nothing about the right digest. A
header may carry several `v1` values (one per secret, while a secret is being replaced); one
that verifies is enough. docs/webhooks.md shows the same recipe for receivers.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Final

HEADER: Final = "Aiserver-Signature"
SCHEME: Final = "v1"
#: How far a timestamp may be from the receiver's clock (seconds), either way.
TOLERANCE_S: Final = 300


def digest(secret: str, timestamp: int, body: bytes) -> str:
    """hex(HMAC-SHA256(secret, "<timestamp>." + body))."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secrets: str | Sequence[str], body: bytes, timestamp: int | None = None) -> str:
    """The value of the `Aiserver-Signature` header for `body`, signed now (or at
    `timestamp`, in Unix seconds) with a secret, or with each of several: a `v1` each, in
    their order."""
    t = int(time.time()) if timestamp is None else timestamp
    keys = [secrets] if isinstance(secrets, str) else secrets
    return f"t={t}," + ",".join(f"{SCHEME}={digest(key, t, body)}" for key in keys)


def _number(value: str) -> int | None:
    """`value` as a whole number when it is written in ASCII digits, else None. (str.isdigit
    alone is true of "²", which int() refuses, and of "٣", which int() reads as 3; and int()
    refuses more digits than sys.get_int_max_str_digits().)"""
    if not (value.isascii() and value.isdigit()):
        return None
    try:
        return int(value)
    except ValueError:  # thousands of digits
        return None


def _parse(header: str) -> tuple[int | None, list[str]]:
    """(t, [v1 digests]) of a header; t None when missing or not a number."""
    timestamp, digests = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and (number := _number(value)) is not None:
            timestamp = number
        elif key == SCHEME:
            digests.append(value)
    return timestamp, digests


def verify(
    secret: str,
    header: str,
    body: bytes,
    tolerance: float = TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether `header` signs `body` with `secret` at a time within `tolerance` seconds of
    `now` (default: this clock). Every `v1` digest is compared in constant time."""
    timestamp, digests = _parse(header)
    if timestamp is None or not digests:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = digest(secret, timestamp, body).encode()
    # no early exit: each candidate is compared whole, whatever the others did (bytes, since
    # compare_digest refuses a str that is not ASCII)
    return sum(hmac.compare_digest(expected, d.encode("utf-8", "replace")) for d in digests) > 0
