"""The worker's Redis connections, watched for silence.

A Redis connection can go silent: the peer still acknowledges at the TCP level, so no error ever
comes, but no reply comes either (a proxy or a Redis host that hangs, a stale NAT entry). arq's
poll then waits for ever on its read: no job and no cron runs until the task runner is restarted.

A read timeout on the connections (redis-py's `socket_timeout`) is not the cure: with it,
redis-py now and then loses the cancellation that stops the worker (a SIGTERM the worker then
ignores). So the worker's connections time their replies instead, and a watchdog task, which
`aiserver-taskrunner run` keeps beside each worker from its first command to its last, closes
from outside any connection whose reply is awaited longer than `REDIS_REPLY_TIMEOUT_SECONDS`
(STOPPING_REPLY_S once a stop signal came: the worker's last commands must not hold the stop).
arq sends no blocking command, so a reply of a healthy Redis takes milliseconds. The read
waiting on a closed connection fails at once with a connection error: arq's worker ends as when
Redis goes away, and the task runner starts a new one (`aiserver.taskrunner.cli.run`), on new
connections. Nothing is cancelled, so every cancellation still arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

from arq.connections import ArqRedis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from aiserver.core_db.logging import get_logger
from aiserver.taskrunner.health import QUEUE_NAME

log = get_logger(__name__)

#: How long a reply may be awaited once the task runner is stopping.
STOPPING_REPLY_S: Final = 2.0
#: How long the worker waits for a connection to Redis to open (arq's own default).
CONNECT_TIMEOUT_S: Final = 1.0
#: The watchdog looks at the connections this often at most (and 4 times per timeout).
_LOOK_EVERY_S: Final = 1.0


class _Timed:
    """Mixed into a redis-py connection class: when the reply it awaits was asked for."""

    awaiting_since: float | None = None

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        self.awaiting_since = time.monotonic()
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        finally:
            self.awaiting_since = None


_timed_classes: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _timed(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """`cls` (TCP, TLS or a Unix socket, as REDIS_URL says) with its replies timed."""
    found = _timed_classes.get(cls)
    if found is None:
        found = _timed_classes[cls] = type(f"Timed{cls.__name__}", (_Timed, cls), {})
    return found


def watched_redis(redis_url: str) -> ArqRedis:
    """The task runner's Redis client: arq's, on a pool whose connections time their replies
    (the worker's, and `check`'s, which so reads REDIS_URL as the worker does)."""
    pool = ConnectionPool.from_url(redis_url, socket_connect_timeout=CONNECT_TIMEOUT_S)
    pool.connection_class = _timed(pool.connection_class)
    try:  # made, not connected: an option redis-py does not know fails here, not at first use
        pool.make_connection()  # type: ignore[no-untyped-call]
    except TypeError as exc:
        raise ValueError(f"REDIS_URL has an option redis-py does not take: {exc}") from None
    return ArqRedis(pool, default_queue_name=QUEUE_NAME)


def silent_connections(pool: ConnectionPool, timeout_s: float) -> list[tuple[Any, float]]:
    """The pool's connections in use whose reply has been awaited longer than `timeout_s`, with
    how long each has waited."""
    now = time.monotonic()
    found = []
    for conn in list(pool._in_use_connections):
        since = getattr(conn, "awaiting_since", None)
        if since is not None and now - since > timeout_s:
            found.append((conn, now - since))
    return found


async def watch(redis: ArqRedis, timeout_s: Callable[[], float]) -> None:
    """Close each connection of `redis` whose reply is awaited longer than `timeout_s()`, until
    cancelled. Should the look itself fail (a redis-py that keeps its connections otherwise),
    it says so at error level once and watches no more: the worker runs on unwatched."""
    pool = redis.connection_pool
    while True:
        await asyncio.sleep(min(_LOOK_EVERY_S, timeout_s() / 4))
        limit = timeout_s()  # shorter once a stop signal came meanwhile
        try:
            for conn, waited in silent_connections(pool, limit):
                log.warning(
                    "redis connection silent: closed, the worker starts again on new connections",
                    waited_s=round(waited, 1),
                    timeout_s=limit,
                )
                writer = conn._writer
                if writer is not None:
                    writer.transport.abort()  # the waiting read ends with a connection error
        except Exception as exc:
            log.error("redis watchdog failed: silent connections are no longer closed",
                      error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            return
