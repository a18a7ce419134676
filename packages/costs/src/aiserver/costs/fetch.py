"""Download the upstream price document: conditional, bounded in time and size, retried.

- Conditional GET: `If-None-Match` / `If-Modified-Since` from the last success; 304 means the
  catalog is current without a download. A 304 to a GET that was not conditional (a new source
  URL, an upstream that sent no validator) confirms nothing: it is refused (`UpstreamRefused`).
- One deadline bounds the whole attempt, connect to last byte, so a server that drips a byte a
  second cannot hold a refresh forever.
- The size limit is enforced while streaming (a lying or missing Content-Length changes nothing).
- Transient faults (connection errors, timeouts, 5xx, 429: `UpstreamUnavailable`) are retried
  with exponential backoff, `MODEL_COST_FETCH_RETRIES` times: the one retry policy of a refresh.
  Other answers (404, 403, ...: `UpstreamRefused`) fail at once, as does a URL that cannot be
  fetched at all (malformed, or of a scheme HTTP does not speak).
- Redirects are followed within the configured URL's origin only (its scheme, or http to https,
  its host and its port), at most `MAX_REDIRECTS` of them. A redirect elsewhere fails the
  refresh (`UpstreamRefused`): the operator chose the source's host, and an upstream that sends
  the fetch to another one (an internal address, the cloud metadata service) must not make the
  task runner read it. A source that really moved is configured by its final URL.
- A body that is not in its declared Content-Encoding fails the refresh (`UpstreamRefused`).
- `file://` URLs are read from disk with the same size limit (offline operation, tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from aiserver.core_db.logging import get_logger
from aiserver.costs.errors import UpstreamRefused, UpstreamUnavailable
from aiserver.costs.urls import redact_url

log = get_logger(__name__)

USER_AGENT = "aiserver-costs (+price catalog refresh)"
MAX_REDIRECTS: Final = 5
#: The wait before the first retry of a download, doubled before each next one.
BACKOFF_S: Final = 0.5
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: The request headers that make a GET conditional (those `fetch_source` sends).
_CONDITIONAL: Final = frozenset({"If-None-Match", "If-Modified-Since"})


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS context of every download in this process, made once: building one reads the
    whole CA bundle, tens of milliseconds or more."""
    return httpx.create_ssl_context()


def upstream_client(timeout: float) -> httpx.AsyncClient:
    """The HTTP client of upstream downloads: the process's TLS context, redirects left to
    `fetch_source` (which follows them within the source's origin only). A long-running process
    (the task runner) keeps one; `fetch_source` makes one otherwise."""
    return httpx.AsyncClient(follow_redirects=False, timeout=timeout, verify=tls_context())


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme, 0)


def redirect_target(url: str, location: str) -> str:
    """Where a redirect from `url` to `location` leads, when it stays within `url`'s origin
    (http may become https on the default ports); `UpstreamRefused` otherwise."""
    try:
        target = urljoin(url, location)
        scheme, host, port = _origin(target)
    except ValueError:
        raise UpstreamRefused("upstream redirected to a malformed URL") from None
    here = _origin(url)
    upgrade = here == ("http", host, 80) and (scheme, port) == ("https", 443)
    if (scheme, host, port) != here and not upgrade:
        log.warning("upstream redirect refused", url=redact_url(url), to=redact_url(target))
        raise UpstreamRefused(
            "upstream redirected to another host, scheme or port; a refresh follows redirects "
            "within the source's own origin only (set MODEL_COST_SOURCE_URL to the final URL)"
        )
    return target


@dataclass(frozen=True, slots=True)
class Fetched:
    status: int  # 200, or 304 when the upstream says our copy is current
    body: bytes
    etag: str | None
    last_modified: str | None
    attempts: int


async def _read_limited(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise UpstreamRefused(
            f"body too large: Content-Length {int(declared)} exceeds the limit of {max_bytes} "
            "bytes (MODEL_COST_MAX_BYTES)",
            status=response.status_code,
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise UpstreamRefused(
                f"body too large: more than {max_bytes} bytes (MODEL_COST_MAX_BYTES)",
                status=response.status_code,
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _attempt(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    *,
    timeout: float,
    max_bytes: int,
    attempt: int,
) -> Fetched:
    try:
        async with asyncio.timeout(timeout):
            for _ in range(MAX_REDIRECTS + 1):
                async with client.stream(
                    "GET", url, headers=headers, follow_redirects=False
                ) as response:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location is not None:
                        url = redirect_target(url, location)
                        continue
                    return await _answer(response, max_bytes, attempt, headers)
            raise UpstreamRefused(f"upstream redirected more than {MAX_REDIRECTS} times")
    except TimeoutError:
        raise UpstreamUnavailable(
            f"timed out after {timeout:g} s (MODEL_COST_FETCH_TIMEOUT_SECONDS)"
        ) from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        # The URL itself, not the upstream: asking again cannot help (UnsupportedProtocol is a
        # TransportError, which would be retried as a connection that failed).
        raise UpstreamRefused(f"the source URL cannot be fetched: {exc}") from None
    except httpx.TransportError as exc:
        detail = str(exc) or type(exc).__name__
        raise UpstreamUnavailable(f"connection failed: {detail}") from None
    except httpx.DecodingError as exc:
        # a body that is not in the Content-Encoding it is said to have (a broken upstream or
        # proxy): no transport error, and asking again brings the same
        raise UpstreamRefused(f"the body could not be decoded: {exc}") from None


async def _answer(
    response: httpx.Response, max_bytes: int, attempt: int, headers: dict[str, str]
) -> Fetched:
    """A final (non-redirect) answer as a `Fetched`, or the `UpstreamError` it means."""
    if response.status_code == 304 and not _CONDITIONAL & headers.keys():
        # 304 answers a conditional GET only (RFC 9110): asked without a validator (a new
        # source URL, a source that sent none), it confirms no copy of ours
        raise UpstreamRefused(
            "upstream answered HTTP 304 to a request that was not conditional",
            status=response.status_code,
        )
    if response.status_code == 304:
        return Fetched(
            304,
            b"",
            response.headers.get("etag"),
            response.headers.get("last-modified"),
            attempt,
        )
    if response.status_code >= 500 or response.status_code == 429:
        raise UpstreamUnavailable(
            f"upstream answered HTTP {response.status_code}",
            status=response.status_code,
        )
    if response.status_code != 200:
        raise UpstreamRefused(
            f"upstream answered HTTP {response.status_code}",
            status=response.status_code,
        )
    body = await _read_limited(response, max_bytes)
    return Fetched(
        200,
        body,
        response.headers.get("etag"),
        response.headers.get("last-modified"),
        attempt,
    )


def _read_file(url: str, max_bytes: int) -> Fetched:
    path = Path(unquote(urlsplit(url).path))
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UpstreamRefused(
                f"file too large: {size} bytes exceeds the limit of {max_bytes} bytes"
            )
        return Fetched(200, path.read_bytes(), None, None, 1)
    except OSError as exc:
        raise UpstreamRefused(f"cannot read {path}: {exc.strerror}") from None


async def fetch_source(
    url: str,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    timeout: float = 30.0,
    max_bytes: int = 64 * 1024 * 1024,
    retries: int = 3,
    backoff: float = BACKOFF_S,
    client: httpx.AsyncClient | None = None,
) -> Fetched:
    """Fetch `url`, retrying transient faults `retries` times. Raises `UpstreamError`."""
    if url.startswith("file://"):
        return _read_file(url, max_bytes)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(upstream_client(timeout))
        for attempt in range(1, retries + 2):
            try:
                return await _attempt(
                    client, url, headers, timeout=timeout, max_bytes=max_bytes, attempt=attempt
                )
            except UpstreamUnavailable as exc:
                if attempt > retries:
                    raise
                delay = backoff * 2 ** (attempt - 1)
                log.warning(
                    "upstream fetch failed; retrying",
                    url=redact_url(url),
                    attempt=attempt,
                    retry_in_s=delay,
                    error=str(exc),
                )
                await asyncio.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")
