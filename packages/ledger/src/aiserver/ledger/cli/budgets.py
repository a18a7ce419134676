"""`aiserver-ledger budgets create|list|show|delete`: a project's budgets, as its admin key
would manage them, straight against the database."""

from __future__ import annotations

import argparse
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from aiserver.ledger.cli.common import (
    Command,
    counted,
    left_out,
    print_json,
    tag_argument,
    when,
    whole_number,
    with_pool,
)

if TYPE_CHECKING:
    from datetime import datetime

    from aiserver.core_db.settings import CoreSettings
    from aiserver.ledger.access import Access
    from aiserver.ledger.budgets.service import BudgetView


async def _as_project(pool: Any, slug: str) -> tuple[Access, str]:
    """What the project's admin key may do, for the operator at the command line; and the
    project's time zone, which its budgets' windows follow."""
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access

    async with pool.acquire() as conn:
        project = await projects.find_project(conn, Access.operator(), slug)
    return Access(project.id, project.slug, frozenset({"read", "admin"})), project.time_zone


def _on_clock(value: datetime, zone: str) -> str:
    """A window's bound on the project's clock, with its offset (UTC's as `Z`)."""
    from zoneinfo import ZoneInfo

    return when(value.astimezone(ZoneInfo(zone)))


def _lines(view: BudgetView, zone: str = "UTC") -> list[str]:
    from aiserver.costs.money import money

    b, w = view.budget, view.window
    scope = ", ".join(f"{k}={v}" for k, v in sorted(b.tags.items())) or "the whole project"
    if b.model:
        scope += f"; model {b.model}"
    total = b.period == "total"  # one window for all time: no period, no end
    window = (
        "all time (a total budget has one window)"
        if total
        else f"{_on_clock(w.start, zone)} to {_on_clock(w.end, zone) if w.end else 'no end'}"
        + (f" ({zone})" if zone != "UTC" else "")
    )
    lines = [
        f"budget {b.id}: {b.name} ({'hard' if b.hard else 'soft'})",
        f"  scope:       {scope}",
        f"  limit:       {money(b.limit_usd)} USD {'in all' if total else 'per ' + b.period}",
        f"  thresholds:  {', '.join(money(t) + '%' for t in b.thresholds) or '-'}",
        f"  webhook:     {b.webhook_url or '-'}"
        + (
            f" (the replaced secret signs too until {_on_clock(b.previous_secret_until, zone)})"
            if b.previous_secret_until
            else ""
        ),
        f"  this window: {window}",
        f"  committed:   {money(w.committed)} USD in {counted(w.events, 'event')}"
        + (f", {w.unpriced_events:,} unpriced" if w.unpriced_events else "")
        + (
            f", {w.partially_priced_events:,} partially priced" if w.partially_priced_events else ""
        ),
        f"  reserved:    {money(w.reserved)} USD",
        f"  remaining:   {money(w.remaining)} USD ({money(w.used_percent)}% used)",
    ]
    if w.end is not None:  # a total budget's window has no end to project to
        pace = view.pace
        lines.append(
            f"  at this pace: ≈ {pace.projected:,f} USD by the window's end "
            f"({pace.share} of the limit{', projected to pass it' if pace.passes_limit else ''})"
            + _lower_bound(w)
            if pace
            else "  at this pace: not projected yet (less than a tenth of the window has passed)"
        )
    return lines


def _lower_bound(w: Any) -> str:
    """What the projection leaves out, as the dashboard's budget page says it."""
    parts = left_out(w.unpriced_events, w.partially_priced_events)
    return f"; {' and '.join(parts)}, so it may be more" if parts else ""


def _answer(view: BudgetView, secret: str | None = None) -> dict[str, Any]:
    """The budget as the API answers it (GET /v1/budgets/{id}, the same builder); with the
    webhook secret that `create` made, as POST /v1/budgets answers it once."""
    import msgspec

    from aiserver.ledger.budgets.answers import BudgetOut

    answer: dict[str, Any] = msgspec.to_builtins(BudgetOut.of(view))
    del answer["webhook_secret"]
    if secret is not None:
        answer["webhook_secret"] = secret
    return answer


def _print(view: BudgetView, as_json: bool, zone: str, secret: str | None = None) -> None:
    """One budget: the API's answer for it with --json (times in UTC, as the API writes them;
    the webhook secret `create` made in it), else its lines (the window on the project's clock;
    the secret on stderr)."""
    if as_json:
        print_json(_answer(view, secret))
        return
    print("\n".join(_lines(view, zone)))
    if secret is not None:
        import sys

        print(f"webhook secret (shown this once, keep it): {secret}", file=sys.stderr)


async def _create(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.core_db.settings import settings_for_command
    from aiserver.ledger.budgets import service
    from aiserver.ledger.settings import LedgerSettings

    ledger = settings_for_command("aiserver-ledger", LedgerSettings)

    async def work(pool: Any) -> int:
        access, zone = await _as_project(pool, args.project)
        view, made = await service.create_budget(
            pool, access, name=args.name,
            limit_usd=args.limit, period=args.period, tags=dict(args.tag), model=args.model,
            thresholds=args.threshold or None, hard=args.hard, webhook_url=args.webhook_url,
            allowed_hosts=ledger.webhook_allowed_hosts, secret_box=ledger.secret_box(),
        )  # fmt: skip
        _print(view, args.json, zone, made or None)
        return 0

    return await with_pool(core, work)


async def _list(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger.budgets import service

    async def work(pool: Any) -> int:
        access, zone = await _as_project(pool, args.project)
        views = await service.list_budgets(pool, access)
        if args.json:  # an array of what the API answers per budget
            print_json([_answer(view) for view in views])
            return 0
        for view in views:
            _print(view, False, zone)
        print(f"{counted(len(views), 'budget')} of {args.project}")
        return 0

    return await with_pool(core, work)


async def _show(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger.budgets import service

    async def work(pool: Any) -> int:
        access, zone = await _as_project(pool, args.project)
        view = await service.show_budget(pool, access, args.id)
        _print(view, args.json, zone)
        return 0

    return await with_pool(core, work)


async def _delete(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger.budgets import service

    async def work(pool: Any) -> int:
        await service.delete_budget(pool, (await _as_project(pool, args.project))[0], args.id)
        print_json({"deleted": args.id}) if args.json else print(f"budget {args.id} deleted")
        return 0

    return await with_pool(core, work)


def _decimal(text: str) -> Decimal:
    """An argparse type: an amount, read as the API reads `limit_usd` (`rules.amount`)."""
    from aiserver.ledger.budgets.rules import amount
    from aiserver.ledger.errors import InvalidField

    try:
        return amount(text, "amount")
    except InvalidField:
        raise argparse.ArgumentTypeError(
            f"not a decimal number: {text!r} (write ASCII digits with an optional -, fraction "
            "and exponent, e.g. 25.50)"
        ) from None


#: One line, which the help wraps (`CommandHelp`); `also`: more reasons to refuse.
_EXIT: Final = (
    "exit status: 0 done; 1 refused (no such project or budget, a field the API refuses too{also}"
    ': the problem on stderr, or as {{"error": ...}} on stdout with --json) or the database could '
    "not be reached; 2 wrong arguments or settings."
)

#: Each command: its line in `budgets --help`, what its own --help says, its example.
_COMMANDS: Final = {
    "create": (
        "set a new budget",
        """\
Set a new budget on a project, as POST /v1/budgets does, and print it with its current window.
It counts what the project's events cost per --period (only those with every --tag and of the
--model, when given) and raises an alert at each --threshold crossed, once per window; a --hard
budget also refuses a reservation past its limit. With --webhook-url the alerts are sent there,
signed with a secret printed once on stderr (with --json: as "webhook_secret" in the JSON, as
the API answers it; WEBHOOK_SECRET_KEYS must be set, as the API has it). A budget made
mid-period counts what its current window spent already.""",
        'budgets create --project demo --name "search, daily" --limit 25 --period day \\\n'
        "      --tag team=search --hard",
    ),
    "list": (
        "every budget with its current window",
        "List a project's budgets, each with its current window: what it committed and reserved,\n"
        "and what remains of the limit.",
        "budgets list --project demo",
    ),
    "show": (
        "one budget with its current window",
        "Show one budget of a project with its current window: what it committed and reserved,\n"
        "and what remains of the limit.",
        "budgets show --project demo 1",
    ),
    "delete": (
        "delete a budget and its windows",
        "Delete a budget of a project with its windows. The events it counted stay as they are.",
        "budgets delete --project demo 1",
    ),
}

_EXAMPLES: Final = "examples:\n" + "\n".join(
    f"  aiserver-ledger {example}" for _, _, example in _COMMANDS.values()
)


def add_parsers(groups: Any) -> None:
    from aiserver.core_db.connections import MAX_BIGINT
    from aiserver.ledger.budgets.periods import PERIODS

    budget_id = whole_number(f"a budget id, 1 to {MAX_BIGINT}", 1, MAX_BIGINT)

    group = groups.add_parser(
        "budgets",
        help="a project's budgets: create, list, show, delete",
        description="A project's budgets, as its admin key manages them over HTTP (/v1/budgets):\n"
        "limits per day, week or month in the project's time zone, or in total. Changing one\n"
        "(PATCH /v1/budgets/{id}) is the API's alone.",
        epilog=f"{_EXAMPLES}\n\n{_EXIT.format(also=', webhooks disabled')}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (text, description, example) in _COMMANDS.items():
        command = commands.add_parser(
            name, help=text, description=description,
            epilog=f"example:\n  aiserver-ledger {example}\n\n"
            + _EXIT.format(also=", webhooks disabled" if name == "create" else ""),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        command.add_argument(
            "--project", required=True, metavar="SLUG", help="the project's slug (projects list)"
        )
        if name in ("show", "delete"):
            command.add_argument(
                "id", type=budget_id, metavar="ID", help="the budget's id (budgets list)"
            )
    create = commands.choices["create"]
    create.add_argument(
        "--name", required=True, help="what it is for, e.g. 'search, daily' (1 to 200 characters)"
    )
    create.add_argument("--limit", required=True, type=_decimal, metavar="USD",
                        help="the limit per period, an exact decimal (25.50)")  # fmt: skip
    create.add_argument(
        "--period", required=True, choices=PERIODS,
        help="day, week (from Monday) or month of the project's time zone, from its midnight; "
        "total: one window for all time",
    )  # fmt: skip
    create.add_argument(
        "--tag", type=tag_argument, action="append", default=[], metavar="KEY=VALUE",
        help="count only events with this tag (repeat: all must hold)",
    )  # fmt: skip
    create.add_argument("--model", help="count only events of this model")
    create.add_argument("--threshold", type=_decimal, action="append", default=[],
                        metavar="PERCENT", help="alert at this share of the limit, in percent "
                        "without %%, e.g. 90 (repeat; default 50, 80, 100)")  # fmt: skip
    create.add_argument(
        "--hard", action="store_true", help="refuse reservations past the limit (default: alerts)"
    )
    create.add_argument("--webhook-url", metavar="URL", help="where alerts are sent (signed)")
    for command in commands.choices.values():
        command.add_argument("--json", action="store_true", help="print JSON")


COMMANDS: Final[dict[tuple[str, str | None], Command]] = {
    ("budgets", "create"): _create,
    ("budgets", "list"): _list,
    ("budgets", "show"): _show,
    ("budgets", "delete"): _delete,
}
