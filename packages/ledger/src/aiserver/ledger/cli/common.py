"""What every `aiserver-ledger` command shares: the pool, JSON output, times."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiserver.core_db.settings import CoreSettings

#: A command: what it runs, a coroutine (under asyncio.run), or a function for one that blocks
#: (`webhooks receive`: Ctrl-C must reach its loop at once); `run_command` runs either.
Command = Callable[
    ["CoreSettings", "argparse.Namespace"], Coroutine[Any, Any, int] | Callable[[], int]
]


def print_json(value: Any) -> None:
    import msgspec

    print(msgspec.json.encode(value).decode())


def tag_argument(text: str) -> tuple[str, str]:
    """An argparse type: a tag filter, KEY=VALUE."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value


def add_event_filters(command: argparse.ArgumentParser, *, window_required: bool) -> None:
    """The filters of a command that reads events, as `GET /v1/usage/events` names them."""
    from aiserver.ledger.usage.valuation import PRICING_STATUSES

    command.add_argument(
        "--from", dest="since", required=window_required, metavar="TIME",
        help="at or after (RFC 3339; no offset: UTC; a date: its midnight UTC)",
    )  # fmt: skip
    command.add_argument(
        "--to", dest="until", required=window_required, metavar="TIME", help="before (RFC 3339)"
    )
    command.add_argument("--model", help="as reported, or as the catalog priced it")
    command.add_argument("--provider", help="as reported, or as the catalog priced it")
    command.add_argument("--status", choices=PRICING_STATUSES, help="the pricing status")
    command.add_argument(
        "--tag", type=tag_argument, action="append", default=[], metavar="KEY=VALUE",
        help="a tag the event has (repeat it: every one must hold)",
    )  # fmt: skip


def when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else "-"


async def with_pool(core: CoreSettings, work: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    from aiserver.core_db.database import database, require_pool

    async with database(core):
        return await work(require_pool())
