"""`aiserver-taskrunner`: run the worker, or check that one is alive (container health check)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from arq.connections import RedisSettings
from arq.worker import async_check_health

from aiserver.core_db.logging import configure_logging, get_logger
from aiserver.core_db.settings import settings_for_command
from aiserver.taskrunner.health import QUEUE_NAME, health_check_key
from aiserver.taskrunner.settings import TaskRunnerSettings

log = get_logger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiserver-taskrunner",
        description="The aiserver task runner (arq on REDIS_URL). At start it applies the "
        "database migrations and seeds an empty price catalog, then it refreshes the catalog "
        "at once and whenever it is stale, and runs jobs the API enqueues. SIGTERM lets a "
        "running job finish (up to 25 s) before stopping; an unfinished job is re-queued.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the worker (the default)")
    sub.add_parser(
        "check",
        help="exit 0 when a worker on this Redis is alive, 1 when none is (health check)",
        description="Look for the health key that live workers refresh every 10 s in Redis.",
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="run the queued jobs, then stop (for one-off runs and tests)",
    )
    return parser


def run(settings: TaskRunnerSettings, *, burst: bool = False) -> int:
    # Imported here: `check` (the container health check) should not pay for the worker.
    from arq.worker import create_worker

    from aiserver.taskrunner.worker import worker_options

    worker = create_worker(worker_options(settings), burst=burst)
    worker.run()
    return 0 if worker.jobs_failed == 0 or not burst else 1


async def check(settings: TaskRunnerSettings) -> int:
    try:
        async with asyncio.timeout(10):
            settings_redis = RedisSettings.from_dsn(settings.core.redis_url)
            settings_redis.conn_retries = 0
            return await async_check_health(
                settings_redis, health_check_key=health_check_key(), queue_name=QUEUE_NAME
            )
    except Exception as exc:  # a health check answers, whatever went wrong
        print(f"aiserver-taskrunner: health check failed: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings_for_command("aiserver-taskrunner", TaskRunnerSettings)
    configure_logging(settings.core.log_level, settings.core.log_format)
    if args.command == "check":
        return asyncio.run(check(settings))
    return run(settings, burst=args.burst)


if __name__ == "__main__":
    sys.exit(main())
