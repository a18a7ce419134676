"""`aiserver-ledger`: projects, their API keys and their usage, straight against the database.

An operator bootstraps with it: no HTTP, no token; whoever can reach the database (DATABASE_URL)
acts as the operator. Each command imports what it runs.

- `projects create|list|show`, `keys create|list|revoke`: the tenants and who may touch them;
- `import FILE|-`: usage events from JSON lines, recorded a chunk per transaction (rerunning it
  records only what is missing); exit status 0 when every line was recorded (or was recorded
  before), 3 when some were invalid or in conflict, 1 when the import could not run or
  stopped, 130 after Ctrl-C;
- `events`: a project's events, newest first (a table, or JSON lines with --json);
- `partitions list|maintain`: the usage events' monthly partitions, and their upkeep by hand;
- `budgets create|list|show|delete`: a project's budgets with their current windows;
- `reprice`: price recorded events again with the catalog of today (or `--dry-run`), or finish
  a run that stopped (`--resume RUN`).
- `export`: a project's events of a window as CSV, JSON lines or FOCUS CSV.
- `spend`: what a project's usage cost, per bucket and group (a table, or JSON with --json).
- `webhooks receive`: a local receiver that prints budget alerts and checks their signatures.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Final

from aiserver.core_db.commands import add_version, command_log_level, run_command
from aiserver.core_db.settings import CoreSettings, LoggingSettings, settings_for_command
from aiserver.ledger.cli import (
    budgets,
    export,
    partitions,
    reprice,
    spend,
    tenants,
    usage,
    webhooks,
)
from aiserver.ledger.cli.common import Command, Parser, options_problem


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="aiserver-ledger",
        description="The usage ledger from the command line, straight against the database\n"
        "(DATABASE_URL): whoever runs this acts as the operator, with no token and no HTTP.\n"
        "Projects and their API keys; usage events recorded from a file, listed, exported;\n"
        "spend; repricing; budgets; the usage partitions; a local receiver of budget alerts.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser, "aiserver-ledger")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    tenants.add_parsers(groups)
    usage.add_parsers(groups)
    partitions.add_parsers(groups)
    budgets.add_parsers(groups)
    reprice.add_parsers(groups)
    export.add_parsers(groups)
    spend.add_parsers(groups)
    webhooks.add_parsers(groups)
    return parser


_EXAMPLES: Final = """examples:
  aiserver-ledger projects create acme-search --name "Acme Search" --rollup-tag team
  aiserver-ledger keys create --project acme-search --name search-api --scope ingest --scope read
  aiserver-ledger import --project acme-search usage.jsonl
  aiserver-ledger events --project acme-search --from 2026-12-01 --tag team=search
  aiserver-ledger spend --project acme-search --from 2026-12-01 --to 2027-01-01 --group-by model
  aiserver-ledger reprice --project acme-search --dry-run
  aiserver-ledger partitions list
  aiserver-ledger budgets create --project acme-search --name daily --limit 25 --period day
  aiserver-ledger export --project acme-search --format focus --from 2026-11-01 --to 2026-12-01
  aiserver-ledger webhooks receive --port 8900 --secret "$WEBHOOK_SECRET"

every command but export takes --json (export writes its --format; its summary and failures go
to stderr); COMMAND --help says more."""


COMMANDS: Final[dict[tuple[str, str | None], Command]] = {
    **tenants.COMMANDS,
    **usage.COMMANDS,
    **partitions.COMMANDS,
    **budgets.COMMANDS,
    **reprice.COMMANDS,
    **export.COMMANDS,
    **spend.COMMANDS,
    **webhooks.COMMANDS,
}


#: The commands that reach no database: a DATABASE_URL or REDIS_URL they never use is not read.
NO_DATABASE: Final = frozenset({("webhooks", "receive")})


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = getattr(args, "command", None)
    if (args.group, command) in NO_DATABASE:
        logging = settings_for_command("aiserver-ledger", LoggingSettings)
        # the connection settings' defaults stand in for the ones never read (nor used)
        core = CoreSettings(log_level=logging.log_level, log_format=logging.log_format)
    else:
        core = settings_for_command("aiserver-ledger", CoreSettings)
    from aiserver.core_db.logging import configure_logging

    configure_logging(command_log_level(core.log_level), core.log_format)
    return run_command(
        " ".join(("aiserver-ledger", args.group, *([command] if command else []))),
        COMMANDS[(args.group, command)](core, args),
        as_json=args.json,
        problem_of=options_problem,
    )
