"""`aiserver-db`: apply migrations or show their status."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from aiserver.core_db.commands import CommandParser, add_version, command_log_level, counted

if TYPE_CHECKING:
    from aiserver.core_db.settings import CoreSettings


def _seconds(text: str) -> float:
    """An argparse type: --lock-timeout, seconds from 0 up to a day (a negative or NaN wait
    would be passed on to asyncio as it is)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86_400:  # NaN fails both
        raise argparse.ArgumentTypeError(f"seconds, 0 to 86400: {text[:20]!r}")
    return seconds


_EXIT_STATUSES: Final = (
    "exit status: 0 done (status: nothing pending); 1 migrations pending (status) or\n"
    "a migration that failed (migrate); 2 wrong arguments or settings; 3 no database\n"
    "answered, or another process's migration run outlasted --lock-timeout"
)


class _Parser(CommandParser):
    exit_statuses = _EXIT_STATUSES


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aiserver-db",
        description="Manage aiserver's PostgreSQL schema (Piccolo migrations of every "
        "installed aiserver package). The database comes from DATABASE_URL.",
        epilog=(
            "examples:\n"
            "  aiserver-db status           # what is applied and what is pending\n"
            "  aiserver-db migrate          # apply what is pending (a one-shot job)\n"
            "  DATABASE_URL=postgresql://aiserver_migrator@db/aiserver aiserver-db migrate\n"
            "\n" + _EXIT_STATUSES
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser, "aiserver-core-db")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    migrate = sub.add_parser(
        "migrate",
        help="apply pending migrations (safe to run from many processes at once)",
        description="Apply every pending migration under a PostgreSQL advisory lock. "
        "Processes started together wait for each other; each migration is applied once.",
        epilog=(
            "examples:\n"
            "  aiserver-db migrate\n"
            "  aiserver-db migrate --lock-timeout 60   # give up after a minute of waiting"
        ),
    )
    migrate.add_argument(
        "--lock-timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for another process's migration run, 0 to 86400 (default: "
        "%(default)s)",
    )
    sub.add_parser(
        "status",
        help="list applied and pending migrations per app; exit 1 when any is pending",
        description="List every migration of every installed aiserver package, per app: [x] "
        "applied, [ ] pending. Exit status 0 when none is pending, 1 when some are (apply them "
        "with aiserver-db migrate), 3 when no database answered.",
        epilog="example:\n  aiserver-db status",
    )
    return parser


# The database, the migrations and the logging are imported when a command runs: `--help`
# imports neither Piccolo nor structlog (about 200 ms).


async def _migrate(settings: CoreSettings, lock_timeout: float) -> int:
    from aiserver.core_db.migrations import apply_migrations

    applied = await apply_migrations(settings, lock_timeout=lock_timeout)
    if applied:
        print(f"applied {counted(len(applied), 'migration')}:")
        for name in applied:
            print(f"  {name}")
    else:
        print("nothing to do: every migration is already applied")
    return 0


async def _status(settings: CoreSettings) -> int:
    from aiserver.core_db.connections import redact_dsn
    from aiserver.core_db.database import database
    from aiserver.core_db.migrations import migration_status

    async with database(settings):
        status = await migration_status()
    print(f"database: {redact_dsn(settings.database_url)}")
    pending_total = 0
    for app in status:
        print(f"{app.app}: {len(app.applied)} applied, {len(app.pending)} pending")
        for migration in app.applied:
            print(f"  [x] {migration}")
        for migration in app.pending:
            print(f"  [ ] {migration}")
        pending_total += len(app.pending)
    if not status:
        print("no aiserver Piccolo apps are installed")
    return 1 if pending_total else 0


#: The exit status when the database cannot be asked: apart from 1 (pending, or a migration
#: that failed) so that a deploy script can tell "run the migrations" from "wait and retry".
UNREACHABLE = 3


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from aiserver.core_db.connections import DatabaseUnavailable
    from aiserver.core_db.logging import configure_logging
    from aiserver.core_db.settings import CoreSettings, settings_for_command

    settings = settings_for_command("aiserver-db", CoreSettings)
    configure_logging(command_log_level(settings.log_level), settings.log_format)
    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(settings, args.lock_timeout))
        return asyncio.run(_status(settings))
    except (DatabaseUnavailable, TimeoutError) as exc:
        print(f"aiserver-db: {exc}", file=sys.stderr)
        return UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
