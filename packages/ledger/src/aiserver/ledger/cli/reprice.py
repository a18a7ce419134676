"""`aiserver-ledger reprice`: price recorded usage again with the catalog in the database, here
and now (no task runner), showing progress; or finish a run that was cut off (`--resume`).

A dry run (`--dry-run`) says per model how many events would change and their old and new
totals, and writes nothing but the run. Exit status 0 when the run ran to its end, 1 when it
could not run or stopped (run `--resume RUN` to finish it) or another process works on it, 2
wrong arguments (a filter or `--dry-run` with `--resume` among them: a run resumed keeps its
own).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Final

from aiserver.ledger.cli.common import (
    Command,
    Parser,
    Progress,
    print_json,
    time_argument,
    when,
    whole_number,
    with_pool,
)

if TYPE_CHECKING:
    from aiserver.core_db.settings import CoreSettings
    from aiserver.ledger.repricing.execution import RunProgress
    from aiserver.ledger.repricing.runs import RepriceFilter, RepriceRun


def _report(run: RepriceRun) -> None:
    kind = "dry run" if run.dry_run else "applied"
    print(f"reprice run {run.id} ({kind}) of {run.project or 'every project'}: {run.state}, "
          f"catalog version {run.catalog_version}, started {when(run.started_at)}")  # fmt: skip
    print(f"  events of       {_events_of(run.filter)}")
    print(f"  events examined {run.events_examined:>12,}")
    print(f"  events changed  {run.events_changed:>12,}")
    print(f"  old total       {run.old_total:>12} USD")
    print(f"  new total       {run.new_total:>12} USD")
    if run.models:
        print(f"  {'MODEL':<40} {'EVENTS':>9} {'CHANGED':>9} {'OLD TOTAL':>14} {'NEW TOTAL':>14}")
    for m in run.models:
        print(f"  {m.model[:40]:<40} {m.events:>9,} {m.changed:>9,} {m.old_total:>14} "
              f"{m.new_total:>14}")  # fmt: skip
    if run.error:
        print(f"  error: {run.error}")


def _events_of(run_filter: RepriceFilter) -> str:
    """The events a run reprices, in words, its window as the instants it is, in UTC (a date
    given to --from or --to is its midnight in UTC): `occurred from 2026-11-01T00:00:00Z,
    before 2026-12-01T00:00:00Z; status partially_priced`; no filter: `all`."""
    from datetime import UTC

    f = run_filter
    said = [
        f"{bound} {at.astimezone(UTC).isoformat().replace('+00:00', 'Z')}"
        for bound, at in (("from", f.since), ("before", f.until))
        if at is not None
    ]
    if said:
        said = ["occurred " + ", ".join(said)]
    named = (("model", f.model), ("provider", f.provider), ("status", f.status))
    said += [f"{name} {value}" for name, value in named if value]
    if f.models is not None:
        said.append(f"models as reported {', '.join(f.models)}")
    return "; ".join(said) or "all"


async def _reprice(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.costs.catalog import load_catalog
    from aiserver.costs.money import money
    from aiserver.ledger.access import Access
    from aiserver.ledger.repricing.execution import execute_run
    from aiserver.ledger.repricing.runs import RepriceRequest, request_reprice, show_run

    operator = Access.operator()

    shown = Progress(enabled=not args.no_progress, first=True)

    def progress(p: RunProgress) -> None:
        totals = f"{money(p.old_total)} -> {money(p.new_total)} USD"
        shown.update(f"aiserver-ledger reprice: run {p.run_id}: {p.examined:,} examined, "
                     f"{p.changed:,} changed, {totals}")  # fmt: skip

    async def work(pool: Any) -> int:
        if args.resume is not None:
            run_id = args.resume
        else:
            request = RepriceRequest(
                project=args.project, all_projects=args.all_projects, since=args.since,
                until=args.until, model=args.model, provider=args.provider, status=args.status,
                dry_run=args.dry_run,
            )  # fmt: skip
            run_id = (await request_reprice(pool, operator, request, requested_by="cli")).id
        async with pool.acquire() as conn:
            catalog = await load_catalog(conn)
        try:
            outcome = await execute_run(
                pool, run_id, catalog, batch_size=args.batch_size, on_batch=progress
            )
        except BaseException:
            shown.finish()
            print(f"aiserver-ledger reprice: run {run_id} stopped; what its batches applied "
                  f"stays. Finish it: aiserver-ledger reprice --resume {run_id}",
                  file=sys.stderr)  # fmt: skip
            raise
        shown.finish()
        if str(outcome) == "busy":
            print(f"aiserver-ledger reprice: run {run_id}: another process is working on it; "
                  "it finishes the run", file=sys.stderr)  # fmt: skip
        run = await show_run(pool, operator, run_id)
        if args.json:
            print_json(run)
        else:
            _report(run)
        return 0 if str(outcome) == "done" else 1

    return await with_pool(core, work)


_HELP: Final = """\
Price a project's (or every project's) recorded usage events again with the catalog in the
database, as ingest would price them today (the prices valid at each event's occurred_at).
The events are visited --batch-size at a time, each batch one transaction: the events, one
adjustment per changed event, the rollups and the run's progress together. A run that stops
keeps whole batches; --resume RUN finishes it. --dry-run writes nothing but the run."""

_EXAMPLES: Final = """examples:
  aiserver-ledger reprice --project acme-search --from 2026-11-01 --to 2026-12-01 --dry-run
  aiserver-ledger reprice --project acme-search --model gpt-4o
  aiserver-ledger reprice --all-projects --status unpriced
  aiserver-ledger reprice --resume 42

exit status: 0 the run ran to its end; 1 it could not run, it stopped (--resume RUN finishes
it), or another process is working on it; 2 wrong arguments or settings."""


#: The filter's options (and --dry-run), which a run resumed takes from the run.
_NOT_WITH_RESUME: Final = (
    ("--from", "since"), ("--to", "until"), ("--model", "model"), ("--provider", "provider"),
    ("--status", "status"), ("--dry-run", "dry_run"),
)  # fmt: skip


def _not_with_resume(args: argparse.Namespace) -> str | None:
    """The parser's `check`: a run resumed keeps its own filter and dry run, so one given with
    --resume is a wrong argument (before the run is touched)."""
    if args.resume is None:
        return None
    for flag, dest in _NOT_WITH_RESUME:
        if getattr(args, dest) not in (None, False):
            return (
                f"{flag} is not allowed with --resume (a run resumed keeps its own filter and "
                "dry run)"
            )
    return None


def _time_text(text: str) -> str:
    """An argparse type: a time of --from or --to, checked as `events` checks it (exit 2, with
    the usage) and kept as the text the run's filter stores."""
    time_argument(text)
    return text


def add_parsers(groups: Any) -> None:
    from aiserver.core_db.connections import MAX_BIGINT
    from aiserver.ledger.repricing import BATCH_SIZE
    from aiserver.ledger.usage.valuation import PRICING_STATUSES

    command: Parser = groups.add_parser(
        "reprice",
        help="price recorded usage again with the catalog of today",
        description=_HELP,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = command.add_mutually_exclusive_group(required=True)
    which.add_argument("--project", metavar="SLUG", help="this project's events")
    which.add_argument("--all-projects", action="store_true", help="every project's events")
    which.add_argument(
        "--resume", type=whole_number(f"a run id, 1 to {MAX_BIGINT}", 1, MAX_BIGINT), metavar="RUN",
        help="finish a run that stopped (with its own filter and dry run)",
    )  # fmt: skip
    command.add_argument(
        "--from", dest="since", type=_time_text, metavar="TIME",
        help="occurred at or after (RFC 3339; no offset: UTC; a date: its midnight UTC)",
    )  # fmt: skip
    command.add_argument("--to", dest="until", type=_time_text, metavar="TIME",
                         help="before, not included (as --from)")  # fmt: skip
    command.add_argument("--model", help="as reported, or as the catalog priced it")
    command.add_argument("--provider", help="as reported, or as the catalog priced it")
    command.add_argument("--status", choices=PRICING_STATUSES, help="the pricing status")
    command.add_argument("--dry-run", action="store_true", help="say what would change only")
    command.add_argument(
        "--batch-size", type=whole_number("1 to 10000", 1, 10_000), default=BATCH_SIZE, metavar="N",
        help="events per transaction, 1 to 10000 (default: %(default)s)",
    )  # fmt: skip
    command.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    command.add_argument("--json", action="store_true", help="print the run as JSON")
    command.check = _not_with_resume


COMMANDS: Final[dict[tuple[str, str | None], Command]] = {("reprice", None): _reprice}
