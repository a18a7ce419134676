"""`aiserver-costs`: refresh, inspect and use the price catalog from the command line.

Each command imports what it needs when it runs, and no more: `--help` and the parser load
nothing of the database layer, and `calc` (the catalog from PostgreSQL, then pricing) neither
Piccolo, nor httpx, nor structlog. Importing every command's modules up front would cost ~0.3 s
before any work, more than pricing a 20,000-line usage log takes (bench/cli.py measures both).

- `catalog`: `refresh`, `seed`, `status`, `show`, `fields`: the catalog in the database;
- `calc`: `calc`, one call or a file of them (`--batch`);
- `common`: their settings, JSON out, times, the database, the problem of a failure.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Final

from aiserver.core_db.commands import CommandParser, add_version, run_command
from aiserver.core_db.settings import settings_for_command
from aiserver.costs.cli import calc, catalog
from aiserver.costs.cli.common import Command, Settings, problem_of


class _Parser(CommandParser):
    exit_statuses = (
        "exit status: 0 done; 1 it failed (its problem in one line on stderr{json}){own_failure}; "
        "2 wrong arguments or settings; {own}130 stopped by Ctrl-C; 141 the reader of stdout went "
        "away"
    )
    own_exit_statuses = (
        ("calc", "3 calc --batch with lines that could not be priced (each says why); "),
    )
    # `seed`, `status`, `show`, `calc` and `fields` never download: only `refresh` fails so
    own_failures = (("refresh", ", also a refresh whose download failed or was rejected"),)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aiserver-costs",
        description="The aiserver price catalog in PostgreSQL (DATABASE_URL): refresh it from "
        "its upstream source, inspect it, and price model calls.",
        epilog=(
            "examples:\n"
            "  aiserver-costs status                     # models, version, staleness, last error\n"
            "  aiserver-costs show gpt-4o                # the prices a call of it is charged now\n"
            "  aiserver-costs refresh --force            # fetch the upstream document now\n"
            "  aiserver-costs calc gpt-4o --input-tokens 1000 --output-tokens 500\n"
            "  aiserver-costs calc --batch calls.jsonl   # price JSON lines offline\n"
            "\n"
            "Each command's --help says more (its options, its exit statuses)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser, "aiserver-costs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    adders = (catalog.add_refresh, catalog.add_seed, catalog.add_status, catalog.add_show,
              calc.add_calc, catalog.add_fields)  # fmt: skip  # the order --help lists them in
    for add in adders:
        add(sub)
    return parser


COMMANDS: dict[str, Command] = {
    "refresh": catalog.refresh,
    "seed": catalog.seed,
    "status": catalog.status,
    "show": catalog.show,
    "fields": catalog.fields,
    "calc": calc.calc,
}
#: The commands that log (the refresh and the seed): they configure structlog first.
LOGGING: Final = frozenset({"refresh", "seed"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. A failure prints its problem (RFC 9457, the API's types): with --json
    as `{"error": {...}}` on stdout, else its detail on stderr; the exit status is 1 (3 for a
    `calc --batch` with failed lines; 130 after Ctrl-C, 141 when stdout's reader went away:
    `run_command`)."""
    args = _parser().parse_args(argv)
    settings = settings_for_command("aiserver-costs", Settings)
    if args.command in LOGGING:
        from aiserver.core_db.commands import command_log_level
        from aiserver.core_db.logging import configure_logging

        configure_logging(command_log_level(settings.core.log_level), settings.core.log_format)
    return run_command(
        f"aiserver-costs {args.command}",
        COMMANDS[args.command](settings, args),
        as_json=getattr(args, "json", False),
        problem_of=problem_of,
    )
