"""`aiserver-ledger partitions list|maintain`: the monthly partitions of the usage events.

The task runner keeps them on its own (hourly, and at start); these commands let an operator
see where the ledger stands and run the same maintenance by hand, e.g. after raising
USAGE_RETENTION_DAYS or before a long backfill.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any, Final

from aiserver.ledger.cli.common import Command, counted, print_json, with_pool

if TYPE_CHECKING:
    from aiserver.core_db.settings import CoreSettings


#: Where `maintain` reads the retention when `--retention-days` is not given (and the
#: database holds none recorded by a maintenance).
RETENTION_VARIABLE: Final = "USAGE_RETENTION_DAYS"


def _shell_retention() -> int | None:
    """USAGE_RETENTION_DAYS as this shell sets it; None when it is not set."""
    import os

    from aiserver.core_db.settings import settings_for_command
    from aiserver.ledger.settings import LedgerSettings

    if RETENTION_VARIABLE not in os.environ:
        return None
    return settings_for_command("aiserver-ledger", LedgerSettings).usage_retention_days


async def _list(core: CoreSettings, args: argparse.Namespace) -> int:
    """The partitions, and which months are past the retention the deployment keeps: the one
    its last maintenance recorded in the database (the task runner's USAGE_RETENTION_DAYS), or,
    before any maintenance, this shell's (or the default)."""
    from aiserver.ledger.settings import LedgerSettings
    from aiserver.ledger.usage.partitions import (
        month_of_partition,
        next_month,
        retention_horizon,
    )
    from aiserver.ledger.usage.store.partitions import kept_retention, table_sizes, usage_tables

    shell = _shell_retention()

    async def work(pool: Any) -> int:
        from datetime import UTC, datetime

        async with pool.acquire() as conn:
            tables = await usage_tables(conn)
            sizes = await table_sizes(conn, [t.name for t in tables])
            recorded = await kept_retention(conn)
        if recorded is not None:
            retention, source = recorded, "database"
        elif shell is not None:
            retention, source = shell, "environment"
        else:
            retention, source = LedgerSettings().usage_retention_days, "default"
        kept_from = retention_horizon(datetime.now(UTC), retention)
        listed: list[dict[str, Any]] = []
        for table in tables:
            month = month_of_partition(table.name)
            size = sizes.get(table.name)
            listed.append(
                {
                    "name": table.name,
                    "state": table.state,
                    "from": month.isoformat() if month else None,
                    "to": next_month(month).isoformat() if month else None,
                    "rows_estimate": size[0] if size else 0,
                    "bytes": size[1] if size else 0,
                    "past_retention": bool(month and month < kept_from),
                }
            )
        if args.json:
            print_json({"retention_days": retention, "retention_from": source,
                        "kept_from": kept_from, "partitions": listed})  # fmt: skip
            return 0
        print(f"{'PARTITION':<20}  {'MONTH (UTC)':<11}  {'STATE':<9}  {'ROWS (est.)':>12}  SIZE")
        for p in listed:
            shown = str(p["from"] or "?")[:7]
            past = (
                "  past retention: dropped at the next maintenance" if p["past_retention"] else ""
            )
            print(
                f"{p['name']:<20}  {shown:<11}  {p['state']:<9}  {p['rows_estimate']:>12,}  "
                f"{p['bytes'] / 2**20:,.1f} MiB{past}"
            )
        said = {
            "database": "as the last maintenance recorded it",
            "environment": f"{RETENTION_VARIABLE} here: no maintenance has recorded one yet",
            "default": f"the default: no maintenance has recorded one yet, and "
            f"{RETENTION_VARIABLE} is not set here",
        }[source]
        print(
            f"{counted(len(listed), 'partition')}; retention {retention} days ({said}) keeps the "
            f"months from {kept_from:%Y-%m} on"
        )
        if shell is not None and shell > retention:
            print(
                f"note: {RETENTION_VARIABLE} here is {shell} days: a maintenance run from this "
                f"shell would keep {shell} days"
            )
        elif shell is not None and shell < retention:  # as `maintain` refuses it
            print(
                f"note: {RETENTION_VARIABLE} here is {shell} days, fewer than the recorded "
                f"{retention}: a maintenance run from this shell refuses to drop months the "
                f"deployment keeps, unless given --retention-days {shell}"
            )
        return 0

    return await with_pool(core, work)


async def _maintain(core: CoreSettings, args: argparse.Namespace) -> int:
    """The retention: --retention-days, else USAGE_RETENTION_DAYS as this shell sets it (not
    fewer days than the deployment's last maintenance recorded: exit 2), else the one recorded
    (the task runner's setting). With none, exit 2: the default could drop, for good, months
    that a longer retention keeps."""
    import sys

    import msgspec

    from aiserver.core_db.database import database, require_pool
    from aiserver.core_db.settings import settings_for_command
    from aiserver.ledger.settings import LedgerSettings
    from aiserver.ledger.usage.partitions import maintain
    from aiserver.ledger.usage.store.partitions import kept_retention

    settings = settings_for_command("aiserver-ledger", LedgerSettings)
    shell = _shell_retention()
    async with database(core):
        async with require_pool().acquire() as conn:
            recorded = await kept_retention(conn)
        if args.retention_days is not None:
            said, source = args.retention_days, "--retention-days"
        elif shell is not None:
            if recorded is not None and shell < recorded:
                # a shell's setting (a staging .env, say) must not drop, for good, months the
                # deployment keeps: shortening the retention from here is said on purpose
                print(
                    f"aiserver-ledger partitions maintain: {RETENTION_VARIABLE} here is {shell} "
                    "days, fewer than the "
                    f"{recorded} days the deployment's last maintenance recorded: a maintenance "
                    "from here would drop, for good, months the deployment keeps; to shorten the "
                    f"retention, pass --retention-days {shell}",
                    file=sys.stderr,
                )
                return 2
            said, source = shell, f"{RETENTION_VARIABLE} here"
        elif recorded is not None:
            said, source = recorded, "as the last maintenance recorded it"
        else:
            print(
                f"aiserver-ledger partitions maintain: {RETENTION_VARIABLE} is not set here, "
                "no maintenance has "
                "recorded the deployment's retention yet, and maintenance drops the months past "
                "the retention for good: set it as the deployment sets it, or pass "
                f"--retention-days (the default would be {settings.usage_retention_days} days)",
                file=sys.stderr,
            )
            return 2
        settings = msgspec.structs.replace(settings, usage_retention_days=said)
        result = await maintain(core, settings)
    if args.json:
        print_json({**result.as_dict(), "retention_days": said, "retention_from": source})
        return 0
    print(f"retention: {said} days ({source})")
    if not result.ran:
        print("another process is maintaining the partitions now; nothing done")
        return 0
    for label, names in (
        ("created", result.created),
        ("dropped", result.dropped),
        ("put off (usage_events busy)", result.postponed),
        ("put off (events not folded into the rollups yet)", result.unfolded),
    ):
        print(f"{label}: {', '.join(names) or '-'}")
    print(f"idempotency keys forgotten with dropped events: {result.keys_forgotten:,}")
    return 0


def _days(text: str) -> int:
    """An argparse type: a retention in days, 1 to 36500 (as USAGE_RETENTION_DAYS)."""
    digits = text.strip()
    if not re.fullmatch(r"[0-9]{1,5}", digits) or not 1 <= int(digits) <= 36_500:
        raise argparse.ArgumentTypeError(f"a whole number of days, 1 to 36500: {text[:20]!r}")
    return int(digits)


def add_parsers(groups: Any) -> None:
    group = groups.add_parser(
        "partitions",
        help="the usage events' monthly partitions: list, maintain",
        description=(__doc__ or "").replace("`", ""),
        epilog="examples:\n"
        "  aiserver-ledger partitions list\n"
        "  aiserver-ledger partitions list --json\n"
        "  aiserver-ledger partitions maintain   # by the retention the task runner recorded\n"
        "  USAGE_RETENTION_DAYS=400 aiserver-ledger partitions maintain --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser(
        "list",
        help="every month's partition: state, estimated rows, size, retention",
        description="List the monthly partitions of usage_events: the month (UTC), the state "
        "(attached; detaching or detached when a drop was interrupted: the next maintenance "
        "finishes the drop, or attaches the month again if the retention keeps it), "
        "PostgreSQL's estimate of the rows, the size, and which months are past the retention "
        "and go at the next maintenance: the retention the deployment keeps, as its last "
        "maintenance recorded it in the database (before any, USAGE_RETENTION_DAYS as this "
        "shell sets it, or the default).",
        epilog="example:\n  aiserver-ledger partitions list --json",
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    run = commands.add_parser(
        "maintain",
        help="create this month's and the coming months' partitions and drop those past "
        "USAGE_RETENTION_DAYS, as the task runner does hourly",
        description="Create this month's and the next months' partitions and drop, for good, "
        "those past the retention: --retention-days, else USAGE_RETENTION_DAYS as this shell "
        "sets it, else the retention the deployment's last maintenance recorded in the "
        "database (the task runner's). With none (no maintenance has run yet), nothing is done "
        "(exit 2): the default of 400 days would drop months that a longer retention keeps. "
        "A shell's USAGE_RETENTION_DAYS shorter than the recorded retention is refused too "
        "(exit 2): shortening it from a shell takes --retention-days. "
        "The retention is written down for "
        "ingest, as the task runner's is: the API refuses events older than it until the next "
        "hourly maintenance writes the task runner's again.",
        epilog=(
            "example:\n"
            "  aiserver-ledger partitions maintain   # by the retention the task runner recorded"
        ),
    )
    run.add_argument("--json", action="store_true", help="print JSON")
    run.add_argument(
        "--retention-days", type=_days, metavar="DAYS",
        help="the retention to keep (1 to 36500), in place of USAGE_RETENTION_DAYS",
    )  # fmt: skip


COMMANDS: Final[dict[tuple[str, str | None], Command]] = {
    ("partitions", "list"): _list,
    ("partitions", "maintain"): _maintain,
}
