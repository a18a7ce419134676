"""`aiserver-ledger spend`: what a project's usage cost, per bucket and group, as `GET /v1/spend`
answers it (a table, or the same JSON with --json)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Final

from aiserver.ledger.cli.common import (
    Command,
    counted,
    left_out,
    print_json,
    read_time,
    tag_argument,
    when,
    whole_number,
    with_pool,
    zone_argument,
)

if TYPE_CHECKING:
    from aiserver.core_db.settings import CoreSettings
    from aiserver.ledger.spend.answer import SpendAnswer, SpendBucket, SpendTotals


async def _spend(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access
    from aiserver.ledger.spend.query import read_spend, spend_query

    async def work(pool: Any) -> int:
        async with pool.acquire() as conn:
            project = await projects.find_project(conn, Access.operator(), args.project)
        query = spend_query(
            project, since=args.since, until=args.until, bucket=args.bucket, tz=args.tz,
            group_by=args.group_by, model=args.model, provider=args.provider,
            status=args.status, tags=args.tag, top=args.top,
        )  # fmt: skip
        answer = await read_spend(pool, project, query)
        if args.json:
            print_json(answer)
        else:
            _print_answer(project.slug, answer)
        return 0

    return await with_pool(core, work)


_COLUMNS: Final = (
    f"{'COST USD':>16}  {'EVENTS':>9}  {'UNPRICED':>8}  {'PARTIAL':>8}  {'INPUT':>13}  "
    f"{'OUTPUT':>12}  {'CACHE READ':>12}  {'CACHE WRITE':>12}  {'REASONING':>11}"
)


def _sums(sums: SpendTotals) -> str:
    # where every event counted is unpriced, its cost of 0 is no price, not free (as the
    # dashboard writes it; --json keeps the API's 0 beside unpriced_events)
    cost = "unpriced" if sums.unpriced_only else sums.cost
    return (
        f"{cost:>16}  {sums.events:>9,}  {sums.unpriced_events:>8,}  "
        f"{sums.partially_priced_events:>8,}  {sums.input_tokens:>13,}  "
        f"{sums.output_tokens:>12,}  {sums.cache_read_tokens:>12,}  "
        f"{sums.cache_write_tokens:>12,}  {sums.reasoning_tokens:>11,}"
    )


def _label(bucket: SpendBucket, answer: SpendAnswer) -> str:
    if answer.bucket is None:
        return "all"
    if answer.bucket == "hour":
        return bucket.start.isoformat(timespec="minutes").replace("T", " ")
    return bucket.start.date().isoformat()


def _print_answer(project: str, answer: SpendAnswer) -> None:
    by = f" by {answer.bucket or 'the whole window'}"
    if answer.group_by:
        by += f" and {', '.join(answer.group_by)}"
    if answer.top is not None:
        by += f" (top {answer.top})"
    print(f"spend of {project} from {answer.since.isoformat()} to {answer.until.isoformat()} "
          f"({answer.tz}){by}, in {answer.currency}")  # fmt: skip
    width = max([5, *(len(_group_name(g.key)) for g in answer.groups)])
    # an hour's label carries its offset where the clock repeats or moves by half an hour
    labels = [_label(bucket, answer) for bucket in answer.buckets]
    at = max([17, *(len(label) for label in labels)])
    print(f"{'BUCKET':<{at}}  {'GROUP':<{width}}  {_COLUMNS}")
    for bucket, label in zip(answer.buckets, labels, strict=True):
        if answer.group_by:
            for group in bucket.groups:
                print(f"{label:<{at}}  {_group_name(group.key):<{width}}  {_sums(group)}")
                label = ""
        if answer.bucket is not None:  # one bucket: its total is the whole window's, below
            print(f"{label:<{at}}  {'total':<{width}}  {_sums(bucket.total)}")
    print(f"{'whole window':<{at}}  {'total':<{width}}  {_sums(answer.total)}")
    print(_freshness(answer))
    if (total := answer.total).lower_bound and not total.unpriced_only:
        print(f"note: {_lower_bound(total)}")
    if answer.source_note:
        print(f"note: {answer.source_note}")


def _lower_bound(total: SpendTotals) -> str:
    """Why the whole window's cost is a lower bound (as the dashboard says it is one)."""
    parts = left_out(total.unpriced_events, total.partially_priced_events)
    statuses = [
        status
        for status, count in (("unpriced", total.unpriced_events),
                              ("partially_priced", total.partially_priced_events))
        if count
    ]  # fmt: skip
    listed = " and ".join(f"--status {status}" for status in statuses)
    return (
        f"the cost is a lower bound: {' and '.join(parts)} (aiserver-ledger events {listed} "
        "lists them; a reprice prices them once the catalog can)"
    )


def _freshness(answer: SpendAnswer) -> str:
    """What the answer counts, in words: the events up to which id, how many of them wait to
    be folded into the rollups (counted all the same), and what it was read from."""
    fresh = answer.freshness
    if fresh.through_event_id is None:
        said = "no event recorded yet"
    else:
        said = f"every event up to id {fresh.through_event_id} counted"
    if fresh.unfolded_events:
        said += (
            f" ({fresh.unfolded_events:,} of them read from the events recorded since the "
            "last fold)"
        )
    if answer.source == "raw_events":
        read = "read from the events"
    else:
        read = "read from the rollups (daily for whole days, else hourly)"
        if answer.raw_hours:
            read += (
                f", and {counted(answer.raw_hours, 'hour')} that --from, --to or a bucket cuts "
                "from the events"
            )
    return f"as of {when(fresh.as_of)}: {said}; {read}"


def _group_name(key: dict[str, str | None] | None) -> str:
    if key is None:
        return "(other)"
    return ", ".join("-" if value is None else value for value in key.values()) or "all"


_HELP: Final = """\
What a project's usage cost from --from to --to: per --bucket (hour, day, week from Monday,
month) of the time zone's clock (--tz, by default the project's; days are 23 or 25 hours on a
daylight-saving change), per group (--group-by model, provider, status, tag:KEY; commas or
repeated), with the filters of `events` (but --model and --provider match the name a call was
priced as, as grouping does). --top N keeps the N costliest groups over the window
and sums the rest as (other). A time without an offset, or a date, is wall time in --tz.

The answer is exact and current: the rollups plus the events not folded yet, in one
snapshot; a tag key the project does not roll up is summed from raw events (slower, and the
answer says so). --json prints the answer of GET /v1/spend.

exit status: 0 the answer was printed; 1 the question was refused or could not be answered (no
such project, --to not after --from, a window over 3660 days, --top without --group-by, an
answer of more than 100,000 rows, the database unreachable: its problem on stderr, or as
{"error": ...} on stdout with --json); 2 wrong arguments (a time, zone, dimension or --top of
the wrong form) or settings."""

_EXAMPLES: Final = """examples:
  aiserver-ledger spend --project acme-search --from 2026-11-01 --to 2026-12-01
  aiserver-ledger spend --project acme-search --from 2026-11-01 --to 2026-12-01 --bucket day \\
      --group-by model --top 5
  aiserver-ledger spend --project acme-search --from 2026-12-01T00:00:00Z --to 2026-12-02 \\
      --bucket hour --tz Asia/Kolkata --group-by tag:team --tag feature=search --json"""


def _time_text(text: str) -> str:
    """An argparse type: a time of --from or --to, checked for its form here (exit 2, with the
    usage) and kept as text: one without an offset is wall time in --tz, which `spend_query`
    knows once the project is read."""
    read_time(text, "no offset, or a date alone, 2026-12-01: wall time in --tz, by default the "
              "project's")  # fmt: skip
    return text


def _dimensions(text: str) -> str:
    """An argparse type: one --group-by, dimensions separated by commas, each of a known form;
    `spend_query` checks them all together (each once, at most 4)."""
    from aiserver.ledger.usage.events import TAG_KEY
    from aiserver.ledger.usage.reading import TAG_PREFIX

    for name in (name.strip() for name in text.split(",")):
        if not name or name in ("model", "provider", "status"):
            continue
        if not name.startswith(TAG_PREFIX) or not TAG_KEY.fullmatch(name[len(TAG_PREFIX) :]):
            hint = f"; a tag is named tag:KEY, e.g. tag:{name}" if TAG_KEY.fullmatch(name) else ""
            raise argparse.ArgumentTypeError(
                f"not model, provider, status or tag:KEY: {name[:80]!r} (a tag key: 1 to 64 "
                f"ASCII letters, digits and _ . : / -){hint}"
            )
    return text


def add_parsers(groups: Any) -> None:
    from aiserver.ledger.spend import MAX_TOP
    from aiserver.ledger.spend.buckets import BUCKETS
    from aiserver.ledger.usage.valuation import PRICING_STATUSES

    command: argparse.ArgumentParser = groups.add_parser(
        "spend",
        help="what a project's usage cost, per bucket and group",
        description=_HELP,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--project", required=True, metavar="SLUG",
                         help="the project's slug (projects list)")  # fmt: skip
    command.add_argument("--from", dest="since", required=True, type=_time_text, metavar="TIME",
                         help="the window's start: RFC 3339, or a date; no offset: wall time in "
                         "--tz")  # fmt: skip
    command.add_argument("--to", dest="until", required=True, type=_time_text, metavar="TIME",
                         help="the window's end, not included (as --from)")  # fmt: skip
    command.add_argument(
        "--bucket", choices=BUCKETS, help="a row per bucket of the --tz clock (default: one total)"
    )
    command.add_argument(
        "--tz", "--time-zone", dest="tz", type=zone_argument, metavar="ZONE",  # as projects create
        help="IANA time zone, e.g. Europe/Berlin (default: the project's)",
    )  # fmt: skip
    command.add_argument(
        "--group-by", type=_dimensions, action="append", default=[], metavar="DIMENSION",
        help="model, provider, status or tag:KEY (commas or repeated; up to 4)",
    )  # fmt: skip
    command.add_argument("--model", help="as priced (as reported when unpriced)")
    command.add_argument("--provider", help="as priced (as reported when unpriced)")
    command.add_argument("--status", choices=PRICING_STATUSES, help="the pricing status")
    command.add_argument(
        "--tag", type=tag_argument, action="append", default=[], metavar="KEY=VALUE",
        help="a tag the events have (repeat it: every one must hold)",
    )  # fmt: skip
    top = whole_number(f"a whole number, 1 to {MAX_TOP}", 1, MAX_TOP)
    command.add_argument("--top", type=top, metavar="N",
                         help=f"keep the N costliest groups over the window (1 to {MAX_TOP}), "
                         "the rest summed as (other); needs --group-by")  # fmt: skip
    command.add_argument("--json", action="store_true", help="the answer as JSON")


COMMANDS: Final[dict[tuple[str, str | None], Command]] = {("spend", None): _spend}
