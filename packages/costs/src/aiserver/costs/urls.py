"""The catalog source URL as shown: in `/v1/catalog`, the CLI, logs, job results and the
database. A mirror's URL may carry credentials (`https://user:pass@host/...`) or a token in its
query (`?token=...`, a presigned URL's signature); only the download itself uses the real URL.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit, urlunsplit

HIDDEN: Final = "***"


def redact_url(url: str) -> str:
    """`url` with its secrets replaced by `***`: the password (`user:***@`), a user name given
    without a password (often a token itself, `https://<token>@host/`), every query value
    (`?token=***&v=***`; a query part without `=` whole) and a fragment. The scheme, host, port
    and path stay, so the form is stable and still tells which source it is. Redacting an
    already redacted URL changes nothing."""
    try:
        parts = urlsplit(url)
    except ValueError:
        scheme, sep, _ = url.partition("://")
        return f"{scheme}://{HIDDEN}" if sep else HIDDEN
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, location = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        shown = f"{user}:{HIDDEN}" if has_password and user else HIDDEN
        netloc = f"{shown}@{location}"
    query = "&".join(_redact_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    fragment = HIDDEN if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _redact_pair(pair: str) -> str:
    name, has_value, _ = pair.partition("=")
    if not pair:
        return pair
    return f"{name}={HIDDEN}" if has_value else HIDDEN
