"""What every `aiserver-ledger` command shares: the pool, JSON output, times."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from aiserver.core_db.commands import CommandParser
from aiserver.core_db.commands import counted as counted  # the commands' nouns, shared

if TYPE_CHECKING:
    from aiserver.core_db.settings import CoreSettings

#: A command: what it runs, a coroutine (under asyncio.run), or a function for one that blocks
#: (`webhooks receive`: Ctrl-C must reach its loop at once); `run_command` runs either.
Command = Callable[
    ["CoreSettings", "argparse.Namespace"], Coroutine[Any, Any, int] | Callable[[], int]
]


class Parser(CommandParser):
    """The parser of `aiserver-ledger` and of each of its commands (argparse makes a command's
    parser of its parent's class; an unknown argument is refused by its command,
    `CommandParser`): `check`, when a command sets it, is a rule across its
    arguments, checked once they are parsed. What it returns is refused as argparse refuses a
    wrong argument: the command's usage, then the problem, exit status 2."""

    check: Callable[[argparse.Namespace], str | None] | None = None
    exit_statuses = (
        "exit status: 0 done; 1 it failed (its problem in one line on stderr{json}), also when "
        "the database could not be reached; 2 wrong arguments or settings; {own}130 stopped by "
        "Ctrl-C; 141 the reader of stdout went away"
    )
    own_exit_statuses = (("import", "3 import with lines invalid or in conflict; "),)

    def parse_known_args(  # type: ignore[override]  # one signature for typeshed's overloads
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        if self.check is not None and (wrong := self.check(parsed)) is not None:
            self.error(wrong)
        return parsed, rest


#: The API's names of what a command's options give (the fields a refusal names), as options.
OPTIONS: Final = {
    "from": "--from", "to": "--to", "tz": "--tz", "bucket": "--bucket", "top": "--top",
    "group_by": "--group-by", "model": "--model", "provider": "--provider",
    "status": "--status", "tags": "--tag", "limit": "--limit", "name": "--name",
    "limit_usd": "--limit", "period": "--period", "thresholds": "--threshold",
    "webhook_url": "--webhook-url", "expires_at": "--expires-at", "scopes": "--scope",
    "time_zone": "--time-zone", "rollup_tags": "--rollup-tag",
}  # fmt: skip

#: A value quoted in a refusal (`repr`, its escapes included), left as it is. A quote right
#: after a letter is an apostrophe ("the project's name"), not the start of a value.
_QUOTED: Final = re.compile(
    r"""((?<!\w)'(?:[^'\\\n]|\\.)*'(?!\w)"""  # 'a value', or 'it\'s' in a repr
    r"""|(?<!\w)"(?:[^"\\\n]|\\.)*"(?!\w))"""  # "a value", or "it's" in a repr
)
#: The API's names with an underscore, which no sentence uses as words.
_UNDERSCORED: Final = frozenset(name for name in OPTIONS if "_" in name)

Rewrite = tuple["re.Pattern[str]", Callable[["re.Match[str]"], str]]


def _rewrites(fields: list[str]) -> tuple[list[Rewrite], list[Rewrite]]:
    """What `options_problem` rewrites, for a refusal naming `fields`: throughout the detail,
    and at its start only."""
    from aiserver.ledger.usage.reading import TAG_PREFIX

    option: Callable[[re.Match[str]], str] = lambda match: OPTIONS[match.group(1)]  # noqa: E731
    anywhere: list[Rewrite] = [
        (re.compile(rf"(?<![\w-])({'|'.join(sorted(_UNDERSCORED))})(?![\w-])"), option)
    ]
    first: list[Rewrite] = []
    words = sorted({f.split(".", 1)[0] for f in fields} & OPTIONS.keys() - _UNDERSCORED)
    if words:
        alternatives = "|".join(map(re.escape, words))
        anywhere.append((re.compile(rf"(?<![\w-])({alternatives})(?=:| \(|,|\))"), option))
        first.append((re.compile(rf"\A({alternatives})(?![\w-])"), option))
    tags = sorted({f for f in fields if f.startswith(TAG_PREFIX)}, key=len, reverse=True)
    if tags:
        # a tag key may hold ":" itself: the name ends where a space, ",", ")" or the end follows
        named = re.compile(rf"(?<![\w:-])({'|'.join(map(re.escape, tags))})(?=:? |,|\)|:?\Z)")
        anywhere.append((named, lambda match: f"--tag {match.group(1)[len(TAG_PREFIX) :]}"))
    return anywhere, first


def options_problem(exc: Exception) -> dict[str, Any] | None:
    """The problem of a failed command (`command_problem`), with the API's field names in a
    refusal written as the options that give them ("top needs group_by" reads "--top needs
    --group-by", "tag:team: given twice" reads "--tag team: given twice"); `fields` stays the
    API's, for scripts. Never inside a quoted value. A name with an underscore is rewritten
    wherever it stands; a name of one word ("to", "tags"), which is an English word too, only
    where the refusal lists it among its fields and uses it as a name: first in the detail, or
    before ":", " (", "," or ")" ("tags: at most 8 tags narrow a budget" reads "--tag: at most
    8 tags narrow a budget")."""
    from aiserver.core_db.commands import command_problem

    found = command_problem(exc)
    if found is None or not found.get("fields"):
        return found
    anywhere, first = _rewrites(found["fields"])
    parts = _QUOTED.split(found["detail"])
    for pattern, option in first:
        parts[0] = pattern.sub(option, parts[0])
    for at in range(0, len(parts), 2):  # the odd ones are the quoted values
        for pattern, option in anywhere:
            parts[at] = pattern.sub(option, parts[at])
    return {**found, "detail": "".join(parts)}


def print_json(value: Any) -> None:
    import msgspec

    print(msgspec.json.encode(value).decode())


def tag_argument(text: str) -> tuple[str, str]:
    """An argparse type: a tag filter, KEY=VALUE, whose key has the form of a tag key (so that a
    misspelt one is a wrong argument, exit 2 with the usage, as one without `=` is)."""
    from aiserver.ledger.usage.events import TAG_KEY

    key, sep, value = text.partition("=")
    if not sep or not value:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    if not TAG_KEY.fullmatch(key):
        raise argparse.ArgumentTypeError(
            f"not a tag key: {key[:80]!r} (1 to 64 ASCII letters, digits and _ . : / -)"
        )
    return key, value


def time_argument(text: str) -> datetime:
    """An argparse type: a time of --from or --to, read as the API reads `from` and `to`, so
    that one of the wrong form is a wrong argument (exit 2, with the usage)."""
    return read_time(text, "no offset: UTC; a date alone, 2026-12-01: its midnight UTC")


def read_time(text: str, no_offset: str) -> datetime:
    """`text` read as the API reads `from` and `to`; `argparse.ArgumentTypeError` for one of
    the wrong form, saying what a time without an offset means to the command (`no_offset`)."""
    from aiserver.ledger.errors import InvalidField
    from aiserver.ledger.usage.reading import parse_time

    try:
        return parse_time(text, "TIME")
    except InvalidField:
        pass
    raise argparse.ArgumentTypeError(
        f"not a time: {text[:80]!r} (RFC 3339, e.g. 2026-12-01T10:00:00Z or "
        f"2026-12-01T11:00:00+01:00; {no_offset})"
    )


def zone_argument(text: str) -> str:
    """An argparse type: a time zone the ledger takes (`zones.refusal` says why not), so that
    `Nowhere/Land` is a wrong argument (exit 2, with the usage) in every command."""
    from aiserver.ledger.zones import refusal

    why = refusal(text)
    if why is not None:
        raise argparse.ArgumentTypeError(why)
    return text


def whole_number(says: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high` in ASCII digits; `says` is what the
    refusal calls it ("a run id, 1 to ..."). `int()` alone reads more ("1_0" is 10, and so are
    other scripts' digits; "²" passes `isdigit()`), so a typo would be another number."""
    longest = len(str(high))

    def number(text: str) -> int:
        digits = text.isascii() and text.isdigit() and len(text) <= longest
        if not digits or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{says}: {text[:30]!r}")
        return int(text)

    return number


def add_event_filters(command: argparse.ArgumentParser, *, window_required: bool) -> None:
    """The filters of a command that reads events, as `GET /v1/usage/events` names them."""
    from aiserver.ledger.usage.valuation import PRICING_STATUSES

    command.add_argument(
        "--from", dest="since", type=time_argument, required=window_required, metavar="TIME",
        help="at or after (RFC 3339; no offset: UTC; a date: its midnight UTC)",
    )  # fmt: skip
    command.add_argument(
        "--to", dest="until", type=time_argument, required=window_required, metavar="TIME",
        help="before, not included (as --from)",
    )  # fmt: skip
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


#: Without a terminal, how often a long command writes a line of progress.
PROGRESS_EVERY_S: Final = 10.0


class Progress:
    """A long command's progress on stderr: one line redrawn in place on a terminal (at most 5
    times a second); else a line every PROGRESS_EVERY_S seconds (and the first at once with
    `first`), and at `finish` the last one when any was written (so that a log holds where it
    ended); nothing when disabled."""

    def __init__(self, *, enabled: bool, first: bool = False) -> None:
        self.bar = enabled and sys.stderr.isatty()
        self.plain = enabled and not self.bar
        self.drawn: float | None = None if first or self.bar else time.monotonic()
        self.written = False
        self.pending = ""  # the latest line not written yet (plain)

    def update(self, line: str) -> None:
        now = time.monotonic()
        due = self.drawn is None or now - self.drawn >= (0.2 if self.bar else PROGRESS_EVERY_S)
        if (self.bar or self.plain) and due:
            sys.stderr.write(f"\r{line}\x1b[K" if self.bar else f"{line}\n")
            sys.stderr.flush()
            self.drawn, self.pending, self.written = now, "", True
        elif self.plain:
            self.pending = line

    def finish(self) -> None:
        if self.bar and self.written:
            sys.stderr.write("\n")
        elif self.plain and self.written and self.pending:
            print(self.pending, file=sys.stderr, flush=True)
        self.bar = self.plain = False


def left_out(unpriced: int, partially_priced: int) -> list[str]:
    """What a cost that is a lower bound leaves out, in the commands' words."""
    parts = []
    if unpriced:
        parts.append(f"{unpriced:,} unpriced event(s) count nothing")
    if partially_priced:
        parts.append(f"{partially_priced:,} partially priced event(s) only their priced part")
    return parts
