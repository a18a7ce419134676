"""`aiserver-taskrunner`: run the worker, or check that one is alive (container health check)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from aiserver.core_db.commands import CommandParser, add_version
from aiserver.core_db.logging import configure_logging, get_logger
from aiserver.core_db.settings import settings_for_command
from aiserver.taskrunner.health import health_check_key
from aiserver.taskrunner.redis_watch import STOPPING_REPLY_S, watch, watched_redis
from aiserver.taskrunner.settings import TaskRunnerSettings

if TYPE_CHECKING:
    from aiserver.taskrunner.jobs import FailureStreaks

log = get_logger(__name__)


_EXIT_STATUSES: Final = """\
exit status: 0 stopped by SIGTERM or SIGINT (or --burst: every job succeeded); 1 --burst
and some job failed, or PostgreSQL or Redis could not be reached (one line says which; without
--burst it waits for them); 2 wrong arguments or a setting that is not valid (it says which)"""

_EPILOG: Final = f"""\
settings come from the environment (README, "Configuration"); it needs at least
  DATABASE_URL  the PostgreSQL database it migrates and works on
  REDIS_URL     the Redis its job queue lives in
While either is down it waits and starts again (it logs a warning), so it can start
before them.

examples:
  aiserver-taskrunner                 # run the worker until SIGTERM or Ctrl-C
  aiserver-taskrunner run --burst     # run what is queued, then stop
  aiserver-taskrunner check           # the container's health check: 0 alive, 1 not

{_EXIT_STATUSES}
check: see aiserver-taskrunner check --help"""


class _Parser(CommandParser):
    exit_statuses = _EXIT_STATUSES


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aiserver-taskrunner",
        # argparse writes a subcommand as if it were required (`COMMAND ...`); `run` is the
        # default, so the usage says the command may be left out
        usage="%(prog)s [-h] [--version] [--burst] [COMMAND [OPTIONS]]",
        description="The aiserver task runner (arq on REDIS_URL). At start it applies the "
        "database migrations and seeds an empty price catalog. Then, on its own: it refreshes "
        "the catalog whenever it is stale, folds recorded usage into the spend rollups (every "
        "5 s), reprices usage after a catalog change, keeps the usage events' monthly "
        "partitions (hourly), releases expired budget reservations and delivers budget alerts "
        "as webhooks; and it runs the jobs the API enqueues (a catalog refresh, a reprice, a "
        "document conversion). SIGTERM lets a running job finish (up to 25 s) before stopping; "
        "an unfinished job is re-queued.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser, "aiserver-taskrunner")
    burst_help = "run the queued jobs, then stop (for one-off runs and tests)"
    parser.add_argument("--burst", action="store_true", help=burst_help)
    # `run --burst` as well as `--burst run`: run's own --burst sets nothing when absent, so
    # that it does not undo the one given before `run` (a subparser's defaults would)
    burst = _Parser(add_help=False)
    burst.add_argument("--burst", action="store_true", default=argparse.SUPPRESS, help=burst_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", prog="aiserver-taskrunner")
    sub.add_parser(
        "run",
        parents=[burst],
        help="run the worker (the default)",
        description="Run the worker until SIGTERM or SIGINT (--burst: until the queue is empty).",
        epilog=(
            "examples:\n"
            "  aiserver-taskrunner run\n"
            "  aiserver-taskrunner run --burst   # the queued jobs, then stop"
        ),
    )
    check_parser = sub.add_parser(
        "check",
        help="exit 0 when this host's task runner is alive, 1 when it is not (health check)",
        description=(
            "Look in Redis (REDIS_URL) for the health key that a live task runner refreshes\n"
            "every 10 s. Each task runner has its own, named after its host (a container's\n"
            "hostname is its own), so that one runner of a fleet never vouches for another:\n"
            "run as the container's health check, it answers for that container."
        ),
        epilog=(
            "examples:\n"
            "  aiserver-taskrunner check                   # the task runner of this host\n"
            "  aiserver-taskrunner check --host runner-2   # another host's, from a monitor\n"
            "\n"
            "exit status: 0 alive; 1 not alive, Redis did not answer within 10 s, or a\n"
            "setting is not valid (Docker reserves 2 in a health check); 2 wrong arguments"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check_parser.add_argument(
        "--host",
        metavar="NAME",
        help="the hostname of the task runner to check (default: this host's)",
    )
    return parser


#: After Redis is lost, a new worker is started this often until Redis answers again.
REDIS_RETRY_S: Final = 2.0
#: While the worker cannot start, its warning is said again at most this often.
RESTART_SAID_EVERY_S: Final = 60.0


class _QuietRestarts(logging.Filter):
    """arq's INFO lines of each new worker made while the last ones could not start (`Starting
    worker for N functions`, and `redis_version=...` once Redis answers: every REDIS_RETRY_S, 30
    lines a minute of an outage), kept when the log shows DEBUG; the streak's own lines say how
    it goes."""

    def __init__(self) -> None:
        super().__init__()
        self.restarting = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            self.restarting
            and record.levelno == logging.INFO
            and not logging.getLogger().isEnabledFor(logging.DEBUG)
            and record.getMessage().startswith(("Starting worker for ", "redis_version="))
        )


#: The one `_QuietRestarts` of this process, on arq's worker logger from the first `run`.
_QUIET_RESTARTS: Final = _QuietRestarts()


def run(settings: TaskRunnerSettings, *, burst: bool = False) -> int:
    """Run the worker until SIGTERM or SIGINT. arq's worker ends when its Redis connection fails
    (a Redis restart, a network cut): then its resources are closed and a new worker starts
    every REDIS_RETRY_S until Redis answers, so that an outage of Redis is a pause of the task
    runner, not its end. So does a start whose database is not ready (PostgreSQL unreachable, or
    another runner's migrations holding their lock past its timeout), and the log says which of
    the two it was; another OSError (a file that start-up reads, missing) is retried as well,
    logged as itself, not blamed on Redis. A burst run ends at the first failure: one line on
    stderr, status 1."""
    # Imported here: `check` (the container health check) should not pay for the worker.
    from arq.worker import create_worker
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.exceptions import WatchError

    from aiserver.core_db.connections import DatabaseUnavailable
    from aiserver.core_db.locks import LockTimeout
    from aiserver.taskrunner.jobs import FailureStreaks
    from aiserver.taskrunner.worker import worker_options

    stopped: list[signal.Signals] = []
    # the first failed start is said in full, then once a minute, then the start that worked
    starts = FailureStreaks(RESTART_SAID_EVERY_S)
    quiet = _QUIET_RESTARTS
    quiet.restarting = False
    arq_log = logging.getLogger("arq.worker")
    if quiet not in arq_log.filters:
        arq_log.addFilter(quiet)

    def reply_timeout() -> float:  # shorter once stopping: the last commands must not hold it
        return STOPPING_REPLY_S if stopped else settings.runner.redis_reply_timeout_seconds

    while True:
        options = worker_options(settings)
        options["on_startup"] = _saying_when_started(options["on_startup"], starts, quiet)
        worker = create_worker(options, burst=burst)
        worker.on_stop = stopped.append
        # beside the worker from its first Redis command (before start-up) to its last
        watchdog = worker.loop.create_task(watch(options["redis_pool"], reply_timeout))
        try:
            worker.run()
        # a connection lost in a WATCHed pipeline (arq's enqueue of a cron job) is a WatchError
        except (RedisConnectionError, RedisTimeoutError, WatchError, OSError) as exc:
            _close_after_redis_lost(worker)
            if stopped or not worker.allow_pick_jobs:  # a SIGTERM had begun the stop
                return 0
            # both are OSErrors, raised by start-up (`initialize_database`), not by Redis
            database = isinstance(exc, DatabaseUnavailable | LockTimeout)
            redis = isinstance(exc, RedisConnectionError | RedisTimeoutError | WatchError)
            if burst:  # one line, as every command's failure: no waiting, no traceback
                what = (
                    "the database was not ready"
                    if database
                    else "Redis did not answer"
                    if redis
                    else "it could not start"
                )
                print(f"aiserver-taskrunner: --burst: {what}: {exc}", file=sys.stderr)
                return 1
            if database:
                event = "database not ready at start: the worker starts again in a moment"
            elif redis:
                event = "redis unreachable: the worker starts again when it answers"
            else:  # another OSError (a file that start-up reads, missing): `error` says which
                event = "the worker failed: it starts again in a moment"
            streak = starts.failed(_START, time.monotonic(), event, arq_logs=False)
            quiet.restarting = True
            fields = streak.failure_fields("failed_starts")
            (log.warning if streak.said else log.debug)(
                event, error=f"{type(exc).__name__}: {exc}", retry_in_s=REDIS_RETRY_S, **fields
            )
            if _wait_or_signal(worker.loop, REDIS_RETRY_S):
                return 0
            continue
        finally:
            _stop(worker.loop, watchdog)
        return 0 if worker.jobs_failed == 0 or not burst else 1


_START: Final = "worker start"


def _saying_when_started(
    startup: Callable[[dict[str, Any]], Awaitable[None]],
    starts: FailureStreaks,
    quiet: _QuietRestarts,
) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """`startup`, then a line when it follows failed starts (Redis or PostgreSQL back)."""

    async def started(ctx: dict[str, Any]) -> None:
        await startup(ctx)
        quiet.restarting = False
        if ended := starts.succeeded(_START):
            log.info("the worker started again", **ended.fields("failed_starts"))

    return started


def _stop(loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> None:
    """Cancel `task` and let it end."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)


def _close_after_redis_lost(worker: Any) -> None:
    """What arq's `close` did not get to when Redis failed under it: the running jobs have been
    awaited; the task runner's own resources (database pool, HTTP client) and the worker's Redis
    pool are closed here, without a command to Redis."""
    ctx = worker.ctx

    async def close() -> None:
        await worker.on_shutdown(ctx)  # closes what start-up opened, if it got that far
        pool = worker._pool
        if pool is not None:
            worker._pool = None
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                # aclose: redis-py 5.0.1's name; its close() warns (DeprecationWarning), a line
                # that is not JSON where warnings are shown (under `hatch run dev`)
                closing = getattr(pool, "aclose", None) or pool.close
                await closing(close_connection_pool=True)

    worker.loop.run_until_complete(close())


def _wait_or_signal(loop: asyncio.AbstractEventLoop, seconds: float) -> bool:
    """Wait `seconds`; True when SIGTERM or SIGINT came meanwhile (then stop)."""
    received = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, received.set)

    async def wait() -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(received.wait(), seconds)
        return received.is_set()

    return loop.run_until_complete(wait())


async def check(settings: TaskRunnerSettings, host: str | None = None) -> int:
    """0 when the worker of `host` (this one's by default) on REDIS_URL (read as the worker
    reads it) refreshed its health key lately, else 1, saying why on stderr."""
    key = health_check_key(host)
    redis = watched_redis(settings.core.redis_url)
    try:
        async with asyncio.timeout(10):
            found = await redis.get(key)
    except Exception as exc:  # a health check answers, whatever went wrong
        print(f"aiserver-taskrunner: Health check failed: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(Exception):
            await redis.aclose()
    if not found:
        print(
            "aiserver-taskrunner: Health check failed: no live task runner of host "
            f"{key.rpartition(':')[2]!r} on this Redis (no health key {key!r})",
            file=sys.stderr,
        )
        return 1
    said = found.decode(errors="replace")
    print(f"aiserver-taskrunner: Health check successful: {said}", file=sys.stderr)
    return 0


#: `check`'s status for a setting that is not valid: a health check answers 0 or 1 (Docker
#: reserves 2), and such a task runner cannot run, so it is not healthy.
CHECK_BAD_SETTING: Final = 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    bad_setting = CHECK_BAD_SETTING if args.command == "check" else 2
    try:
        settings = settings_for_command("aiserver-taskrunner", TaskRunnerSettings)
    except SystemExit:  # it said which setting
        return bad_setting
    try:
        watched_redis(settings.core.redis_url)
    except ValueError as exc:
        print(f"aiserver-taskrunner: {exc}", file=sys.stderr)
        return bad_setting
    configure_logging(settings.core.log_level, settings.core.log_format)
    if args.command == "check":
        return asyncio.run(check(settings, args.host))
    return run(settings, burst=args.burst)


if __name__ == "__main__":
    sys.exit(main())
