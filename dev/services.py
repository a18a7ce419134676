"""Which PostgreSQL and Redis the system uses, and a database created when it is missing.

In order: the server that `DATABASE_URL` / `REDIS_URL` names (it must answer); else the local
server on its default port, when it answers; else an embedded one (see `dev.embedded`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

#: The defaults of aiserver's settings (README, "Configuration").
DEFAULT_DATABASE_URL: Final = "postgresql://postgres@127.0.0.1:5432/aiserver"
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
PROBE_TIMEOUT_S: Final = 3.0


class Unreachable(ConnectionError):
    """A server did not answer, or refused us; the message says which and why."""


@dataclass(frozen=True)
class Service:
    """A server the system uses: its URL and where it came from, for the log."""

    url: str
    origin: str

    def describe(self) -> str:
        return f"{redact(self.url)} ({self.origin})"


def redact(url: str) -> str:
    """The URL without its password, for the log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=user + host))


def database_name(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/"))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def ensure_database(url: str) -> bool:
    """Check that PostgreSQL at `url` answers; create the database when only it is missing.

    Returns True when it created the database. Raises `Unreachable` when the server does not
    answer or refuses the connection.
    """
    try:
        conn = await asyncpg.connect(url, timeout=PROBE_TIMEOUT_S)
    except asyncpg.InvalidCatalogNameError:
        await create_missing_database(url)
        return True
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unreachable(_reason(exc)) from exc
    await conn.close()
    return False


async def create_missing_database(url: str) -> None:
    """Create the database of `url` unless it exists, asking a maintenance database of its
    server."""
    name = database_name(url)
    last: Exception | None = None
    for maintenance in ("postgres", "template1"):
        try:
            conn = await asyncpg.connect(with_database(url, maintenance), timeout=PROBE_TIMEOUT_S)
        except asyncpg.InvalidCatalogNameError as exc:
            last = exc
            continue
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise Unreachable(_reason(exc)) from exc
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                quoted = '"' + name.replace('"', '""') + '"'
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # created meanwhile
                    await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.PostgresError as exc:
            raise Unreachable(f"cannot create database {name!r}: {_reason(exc)}") from exc
        finally:
            await conn.close()
        return
    raise Unreachable(f"cannot create database {name!r}: no maintenance database: {last}")


async def redis_answers(url: str) -> None:
    """Raise `Unreachable` unless Redis at `url` answers PING."""
    client = Redis.from_url(
        url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
    )
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S * 2):
            await client.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        raise Unreachable(_reason(exc)) from exc
    finally:
        await client.aclose()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
