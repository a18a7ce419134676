"""A spend answer as the pages show it: labels, the table, the chart's data and the CSV.

Every amount is the answer's own decimal string, as `GET /v1/spend` returns it, never rounded
and never added up here. In a table an amount is written with as many decimals as the longest
of its column (`aligned`: trailing zeros added, the same value, so that the decimal points line
up); a cell with no spend is 0 at that scale. Amounts and counts are grouped by thousands on
the page (`grouped`, `count`). The chart is drawn from the same table that is shown under it
(its text alternative), without the grouping. The CSV holds exactly the values of the table
that is shown, each as the API writes it: no zeros added, no grouping.

A headline figure (a month's spend, an answer's total) is also shown rounded to the cent
(`about`), always marked as rounded and always beside the exact amount.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any, Final, NamedTuple
from zoneinfo import ZoneInfo

import msgspec
from markupsafe import Markup

from aiserver.core_db.commands import counted
from aiserver.core_db.database import require_pool
from aiserver.costs.money import money
from aiserver.ledger.errors import InvalidField
from aiserver.ledger.spend.answer import SpendAnswer, SpendBucket, SpendGroup, SpendTotals
from aiserver.ledger.spend.query import read_spend, spend_query
from aiserver.ledger.store import Project
from aiserver.ledger.text import bidi_closed, spreadsheet_safe

NONE: Final = "(none)"
#: What a cost reads where every event it would add up is unpriced.
UNPRICED: Final = "unpriced"
OTHER: Final = "(other)"
TOTAL: Final = "total"
COUNTS: Final = (
    "events", "unpriced_events", "partially_priced_events", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
)  # fmt: skip


#: An exact amount as the API writes it: plain notation, no exponent, no grouping.
_PLAIN: Final = re.compile(r"-?[0-9]+(?:\.([0-9]+))?")
_CENT: Final = Decimal("0.01")


def _amount_text(value: object) -> str | None:
    """`value` as an exact decimal string (a Decimal as `money` writes it); None for anything
    that is no amount (None, "unpriced", "none", "")."""
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    return None


def scale(value: object) -> int:
    """How many decimals an amount is written with (`0.0010668`: 7); 0 for no amount."""
    text = _amount_text(value)
    found = _PLAIN.fullmatch(text) if text is not None else None
    return len(found.group(1) or "") if found is not None else 0


def places(values: Iterable[object], at_most: int | None = None) -> int:
    """The most decimals of the amounts of a column: the scale every amount of it is shown at.
    With `at_most`, of the amounts of at most that many decimals: one of more (a source's
    price of 0.12500000000000001 per million tokens, a binary float's digits) is shown whole,
    past the others' decimal points, instead of giving each of them 17 decimals."""
    scales = (scale(v) for v in values)
    return max((s for s in scales if at_most is None or s <= at_most), default=0)


def padded(value: object, decimals: int) -> str:
    """An amount written with at least `decimals` decimals, trailing zeros added (`0.00002406`,
    `0.0010668` at 8: `0.00106680`): the same exact value. Anything that is no amount (None,
    "unpriced") is written as it is (None as "")."""
    text = _amount_text(value)
    if text is None:
        return "" if value is None else str(value)
    whole, _, fraction = text.partition(".")
    if len(fraction) >= decimals:
        return text
    return f"{whole}.{fraction.ljust(decimals, '0')}"


def grouped(text: str) -> str:
    """An amount as written (`padded`) with its whole part grouped by thousands
    (`12345.50000` -> `12,345.50000`): the same digits. Anything else as it is."""
    return f"{Decimal(text):,f}" if _PLAIN.fullmatch(text) else text


def shown_amount(value: object, decimals: int) -> str:
    """An amount as a page shows it: at least `decimals` decimals, grouped by thousands."""
    return grouped(padded(value, decimals))


def aligned(values: Sequence[object]) -> list[str]:
    """A column's amounts, each at the column's scale (`places`)."""
    decimals = places(values)
    return [padded(v, decimals) for v in values]


def count(value: object) -> str:
    """A whole number grouped by thousands (`2,239,717`); anything else as it is."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return f"{int(value):,}"
    return str(value)


def about(value: object) -> str:
    """An amount rounded to the cent (half up), grouped by thousands: `1,234.57`; one of less
    than a cent (but not 0) to two significant figures, `0.0025` for 0.00245, which a cent's
    rounding showed as `0.00`, as if nothing had been spent; one of a single significant figure
    as it is (`0.0000006`, not `0.00000060` beside the exact amount it equals). Only ever shown
    marked as rounded (`rounded`, `rounding`) and beside the exact amount."""
    text = _amount_text(value)
    if text is None:
        return str(value)
    exact = Decimal(text)
    if exact and abs(exact) < _CENT:
        figures = Decimal(1).scaleb(exact.adjusted() - 1)  # the second significant figure
        near = exact.quantize(figures, rounding=ROUND_HALF_UP)
        if near.adjusted() > exact.adjusted():  # rounded up to a power of ten: 0.0100 is 0.010
            near = near.quantize(figures.scaleb(1))
        return f"{exact.normalize() if near == exact else near:f}"
    return f"{exact.quantize(_CENT, rounding=ROUND_HALF_UP):,.2f}"


def rounding(value: object) -> str:
    """How `about` rounded `value`, for the words beside it."""
    text = _amount_text(value)
    small = text is not None and Decimal(text) and abs(Decimal(text)) < _CENT
    return "rounded to two significant figures" if small else "rounded to the cent"


#: Per-token prices are shown per this many tokens, as providers publish them.
TOKENS_PER_PRICE: Final = 1_000_000


def per_million(value: object) -> str | None:
    """A price per token (the API's decimal string) as the price of a million tokens, exactly
    (`0.0000025` -> `2.5`: the decimal point moved, no digit lost); None for no price."""
    text = _amount_text(value)
    if text is None:
        return None
    # a precision that holds every digit of the product, whatever the context's default
    return money(Decimal(text).fma(TOKENS_PER_PRICE, 0, Context(prec=len(text) + 7)))


def rounded(value: object) -> bool:
    """Whether `about` differs from the exact value: then the page writes "≈" before the
    figure."""
    text = _amount_text(value)
    return text is not None and Decimal(text) != Decimal(about(text).replace(",", ""))


class Cell(NamedTuple):
    """A table cell as a page shows it: its text and its kind, which is its CSS class: `num`
    (an amount or a count: right-aligned, tabular figures, on one line), `when` (a time, on one
    line), `name` (a model, a provider, a status: on one line) or `text`."""

    text: str
    kind: str


class Show:
    """The figures' formats, for the templates (as `show`)."""

    places = staticmethod(places)
    amount = staticmethod(shown_amount)

    @staticmethod
    def group_cost(group: SpendTotals, decimals: int) -> str:
        """A group's (or a total's) cost as `amount` shows it, or `unpriced` when every event it
        counts is unpriced (its 0 is no price: it would read as free)."""
        return UNPRICED if group.unpriced_only else shown_amount(group.cost, decimals)

    count = staticmethod(count)
    #: a count with its noun, one or more: `1 event`, `1,200 events`
    counted = staticmethod(counted)
    about = staticmethod(about)
    rounded = staticmethod(rounded)
    rounding = staticmethod(rounding)

    @staticmethod
    def estimate(value: Decimal) -> str:
        """An estimate as it was rounded (`aiserver.ledger.spend.pace.about`: `31.00`,
        `0.0031`), grouped by thousands, never with an exponent (3.1E-7 is 0.00000031)."""
        return f"{value:,f}"

    @staticmethod
    def budget_places(views: Iterable[Any]) -> dict[str, int]:
        """The scale of each amount column of a list of budgets with their windows."""
        views = list(views)
        return {
            "limit": places(v.budget.limit_usd for v in views),
            "committed": places(v.window.committed for v in views),
            "reserved": places(v.window.reserved for v in views),
            "remaining": places(v.window.remaining for v in views),
            "used": places(v.window.used_percent for v in views),
        }


SHOW: Final = Show()


def bucket_label(bucket: SpendBucket, kind: str | None) -> str:
    """A bucket as its start reads on the zone's clock; one that the window cuts short (a week
    that began before `from`, a month that ends after `to`) says so: `week of 2026-11-01
    (partial)`, so that it does not read as a cheap whole week."""
    start = bucket.start
    if kind == "hour":
        label = start.strftime("%Y-%m-%d %H:%M")
    elif kind == "day":
        label = start.date().isoformat()
    elif kind == "week":
        label = f"week of {start.date().isoformat()}"
    elif kind == "month":
        label = start.strftime("%Y-%m")
    else:
        return f"{start:%Y-%m-%d %H:%M} to {bucket.end:%Y-%m-%d %H:%M}"
    return label if whole(bucket, kind) else f"{label} (partial)"


def whole(bucket: SpendBucket, kind: str) -> bool:
    """Whether a bucket spans its whole hour, day, week (from Monday) or month on the zone's
    clock, rather than the part of it inside the window."""
    start, end = bucket.start, bucket.end
    if kind == "hour":
        return start.minute == start.second == start.microsecond == 0 and (
            end - start == timedelta(hours=1)
        )
    if start.time() != time() or end.time() != time():
        return False
    if kind == "day":
        return end.date() - start.date() == timedelta(days=1)
    if kind == "week":
        return start.weekday() == 0 and end.date() - start.date() == timedelta(days=7)
    following = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return start.day == 1 and end.date() == following


def bucket_labels(answer: SpendAnswer) -> list[str]:
    """Each bucket's `bucket_label`, with the zone's offset written after a label that two
    buckets share: the hour that a clock change repeats (`02:00+02:00`, `02:00+01:00`)."""
    labels = [bucket_label(bucket, answer.bucket) for bucket in answer.buckets]
    shared = {label for label, count in Counter(labels).items() if count > 1}
    return [
        (label + _offset(bucket.start) if label in shared else label) + _so_far(bucket, answer)
        for label, bucket in zip(labels, answer.buckets, strict=True)
    ]


def _so_far(bucket: SpendBucket, answer: SpendAnswer) -> str:
    """` (so far)` after the bucket that holds the time the answer counted up to (today, this
    hour): its spend is not over, and without it a low bar reads as a cheap day."""
    if answer.bucket is None:
        return ""
    return " (so far)" if bucket.start <= answer.freshness.as_of < bucket.end else ""


def _offset(at: datetime) -> str:
    """`at`'s offset from UTC as RFC 3339 writes it: `+02:00`, `-03:30`."""
    minutes = int((at.utcoffset() or timedelta()).total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def shown_value(value: object, *, joined: bool = False) -> str:
    """A dimension's value as the pages write it: (none) for a null; a value that could be read
    as something else in double quotes, JSON-escaped (the text "(none)" or "(other)", an empty
    text, one that begins with a quote and, in a joined label, one holding a comma), so that
    two different values never read the same."""
    if value is None:
        return NONE
    text = str(value)
    if text in (NONE, OTHER, "") or text.startswith('"') or (joined and "," in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def group_values(group: SpendGroup, group_by: Sequence[str], *, joined: bool = False) -> list[str]:
    """The group's value of each dimension (`shown_value`), (other) for the rest."""
    if group.other or group.key is None:
        return [OTHER for _ in group_by]
    return [shown_value(group.key.get(name), joined=joined) for name in group_by]


def group_label(group: SpendGroup, group_by: Sequence[str]) -> str:
    """The group as a column's heading: its value, or `name=value, ...` for several dimensions
    (each value as `shown_value` writes it; its bidirectional runs closed, `bidi_closed`, so
    that it cannot reorder what follows it: the other values, and in a chart's tooltip, drawn
    on a canvas, the amount). Two values that differ only by closers a value already ends with
    read the same; the columns are told apart by `group_id`, not by their labels."""
    if not group_by:
        return TOTAL
    if group.other or group.key is None:
        return OTHER
    values = group_values(group, group_by, joined=len(group_by) > 1)
    if len(group_by) == 1:
        return bidi_closed(values[0])  # the chart writes it before the amount: `label: 0.12 USD`
    return ", ".join(
        f"{name}={bidi_closed(value)}" for name, value in zip(group_by, values, strict=True)
    )


GroupId = tuple[bool, tuple[object, ...]]


def group_id(group: SpendGroup, group_by: Sequence[str]) -> GroupId:
    """What tells one group from another (not its label): the rest, or its key's values."""
    if group.other or group.key is None:
        return (True, ())
    return (False, tuple(group.key.get(name) for name in group_by))


class Pivot(msgspec.Struct, frozen=True, kw_only=True):
    """Cost per bucket (rows) and group (columns), with each row's total: a chart's table."""

    columns: list[str]
    rows: list[tuple[str, list[str], str]]  # (bucket label, cost per column, the bucket's total)
    currency: str
    #: per row, per column: whether every event of that cell is unpriced (its cost 0 is no
    #: price: the table writes `unpriced` there, the chart draws nothing)
    unpriced: list[list[bool]] = msgspec.field(default_factory=list)
    #: whether the answer was grouped: without groups its one column is the total, which the
    #: table shows once
    grouped: bool = True
    #: per row: whether every event of the bucket is unpriced (its total reads `unpriced`)
    unpriced_totals: list[bool] = msgspec.field(default_factory=list)

    def _aligned(self) -> list[tuple[str, list[str], str]]:
        """The rows with each column's amounts (and the totals) at that column's scale
        (`aligned`), so that the decimal points line up; the same values."""
        columns = [
            aligned([cells[i] for _, cells, _ in self.rows]) for i in range(len(self.columns))
        ]
        totals = aligned([total for _, _, total in self.rows])
        return [
            (label, [column[n] for column in columns], totals[n])
            for n, (label, _, _) in enumerate(self.rows)
        ]

    def shown(self) -> list[tuple[str, list[str], str]]:
        """The rows as the table shows them: aligned, and grouped by thousands."""
        marks = self.unpriced or [[False] * len(self.columns) for _ in self.rows]
        totals = self.unpriced_totals or [False] * len(self.rows)
        return [
            (label, [UNPRICED if u else grouped(c) for c, u in zip(cells, m, strict=True)],
             UNPRICED if t else grouped(total))
            for (label, cells, total), m, t in zip(self._aligned(), marks, totals, strict=True)
        ]  # fmt: skip

    def chart(self) -> dict[str, Any]:
        """The chart's data: the strings of the table shown under it, without the grouping
        (drawn as numbers by the page's script)."""
        rows = self._aligned()
        return {
            "labels": [label for label, _, _ in rows],
            "series": [
                {"label": column, "values": [cells[i] for _, cells, _ in rows]}
                for i, column in enumerate(self.columns)
            ],
            "currency": self.currency,
        }


def pivot(answer: SpendAnswer) -> Pivot:
    """One column per group of the answer, found in each bucket by its identity (`group_id`):
    the cells of a row are the API's costs of its groups, which add up to the row's total."""
    group_by = answer.group_by
    columns = [group_id(g, group_by) for g in answer.groups]
    rows, unpriced = [], []
    for bucket, label in zip(answer.buckets, bucket_labels(answer), strict=True):
        found = {group_id(g, group_by): g for g in bucket.groups}
        rows.append(
            (
                label,
                [found[c].cost if c in found else "0" for c in columns],
                bucket.total.cost,
            )
        )
        unpriced.append([c in found and found[c].unpriced_only for c in columns])
    labels = [group_label(g, group_by) for g in answer.groups]
    return Pivot(
        columns=labels,
        rows=rows,
        currency=answer.currency,
        unpriced=unpriced,
        grouped=bool(group_by),
        unpriced_totals=[b.total.unpriced_only for b in answer.buckets],
    )


#: The CSV's first three columns, not the API's names: a bucket's start, its end, which it
#: does not include (the next bucket's start, as the API's `to`, said in the file, where a
#: spreadsheet would not know it), and whether its time had ended when the answer was counted
#: (`no` for the bucket still going on: today, this hour). `ended`, not "complete": a call of
#: an ended bucket can still be reported late (a client's batch, an import) or repriced.
BUCKET_COLUMNS: Final = ("from", "to (not included)", "ended")


class BeforeCatalog(NamedTuple):
    """What a summary counts from before the price catalog began (`before_catalog`)."""

    began: datetime  # `Catalog.began`
    calls: int  # priced or partially priced: each with its model's first price
    cost: str  # theirs, the API's decimal string


async def before_catalog(
    began: datetime | None,
    project: Project,
    *,
    since: datetime,
    until: datetime,
    **filters: Any,
) -> BeforeCatalog | None:
    """What a summary's window [since, until), with its `filters` (`spend_query`'s tz, model,
    provider, status, tags), counts of priced or partially priced calls from before the catalog
    `began` (`Catalog.began`, when its earliest price began); None for none. Such a call was
    priced with its model's first price in the catalog, not with a price of its day, which the
    catalog does not have (unless an override valid then priced it): each event's page says so,
    and the summary says it too. Asked as a spend question of one total, read from the rollups
    as the page's own answers are, the hour cut at `began` from its events. A note, never the
    page's failure: a question the ledger refuses (a window at the calendar's edge) says
    nothing."""
    if began is None or since >= began:
        return None
    try:
        query = spend_query(project, since=since, until=min(until, began), **filters)
        total = (await read_spend(require_pool(), project, query)).total
    except InvalidField:
        return None
    calls = total.events - total.unpriced_events
    return BeforeCatalog(began, calls, total.cost) if calls else None


def table_header(answer: SpendAnswer) -> list[str]:
    """The CSV's header: `BUCKET_COLUMNS`, then the API's names of the groups and totals."""
    return [*BUCKET_COLUMNS, *answer.group_by, "cost", "currency", *COUNTS]


def shown_header(answer: SpendAnswer) -> list[str]:
    """`table_header` as the page writes it: words, not the API's field names."""
    return [name.replace("_", " ") for name in table_header(answer)]


def column_kinds(answer: SpendAnswer) -> list[str]:
    """The kind (`Cell.kind`) of each column of `table_header`: a tag's value may be long and
    wraps; a model, a provider or a status stays on one line."""
    dimensions = ["text" if name.startswith("tag:") else "name" for name in answer.group_by]
    return ["when", "when", "text", *dimensions, "num", "text", *("num" for _ in COUNTS)]


def shown_table(answer: SpendAnswer, rows: Sequence[Sequence[str]]) -> list[list[Cell]]:
    """`table_rows` as the page shows them: the same values, the costs at the column's scale and
    the counts grouped by thousands (the CSV holds `rows` as they are)."""
    kinds = column_kinds(answer)
    cost = kinds.index("num")
    costs = aligned([row[cost] for row in rows])
    shown = []
    for row, amount in zip(rows, costs, strict=True):
        cells = []
        for i, (value, kind) in enumerate(zip(row, kinds, strict=True)):
            if i == cost:
                text = grouped(amount) if amount else UNPRICED
            else:
                text = count(value) if kind == "num" else value
            cells.append(Cell(text, kind))
        shown.append(cells)
    return shown


def timestamp(at: date | datetime) -> str:
    """A date or time exactly as the API's JSON writes it (UTC as Z, else the offset)."""
    return _ENCODER.encode(at).decode().strip('"')


_ENCODER: Final = msgspec.json.Encoder()


def on_clock(at: datetime, zone: str) -> str:
    """A time on the clock of the time zone named `zone` (a project's), with its offset, as
    `timestamp` writes it: `2026-12-01T00:00:00+14:00` for the instant the API writes
    `2026-11-30T10:00:00Z`. UTC is written `Z`."""
    return timestamp(at.astimezone(ZoneInfo(zone)))


def instant(at: datetime, zone: str, *, to_second: bool = False) -> Markup:
    """A time as the pages show an event's: on the clock of the time zone named `zone` (the
    project's), with its offset (`2026-11-30T22:00:00-05:00`, as the budgets' windows are
    shown), in a `<time>` whose `datetime` and title hold the exact instant in UTC as the API
    writes it (`2026-12-01T03:00:00Z`). `to_second` shows it without its fraction of a second
    (a key's times), the title keeping it."""
    exact = timestamp(at.astimezone(UTC))
    shown = at.replace(microsecond=0) if to_second else at
    return Markup('<time datetime="{0}" title="{0} in UTC">{1}</time>').format(
        exact, on_clock(shown, zone)
    )


def table_rows(answer: SpendAnswer) -> list[list[str]]:
    """One row per bucket and group, every value as the page shows it (and the CSV holds it).
    A group whose every event is unpriced has no cost (empty, as in the usage export; the API's
    0 would read as free), its events counted under unpriced_events. A bucket that ends after
    the time the answer counted up to has not `ended`: its spend may still grow."""
    rows = []
    for bucket in answer.buckets:
        ended = "yes" if bucket.end <= answer.freshness.as_of else "no"
        for group in bucket.groups:
            counts = msgspec.structs.asdict(group)
            rows.append([
                timestamp(bucket.start), timestamp(bucket.end), ended,
                *group_values(group, answer.group_by), "" if group.unpriced_only else group.cost,
                answer.currency, *(str(counts[name]) for name in COUNTS),
            ])  # fmt: skip
    return rows


def to_csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    # every cell: the table's own numbers are never negative, so no number is changed
    writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)
    return out.getvalue()


#: A budget alert's state (the ledger's: `aiserver.ledger.budgets.alerts`) in words, with what
#: it means: (words, meaning).
ALERT_STATES: Final = {
    "pending": (
        "notification not delivered yet",
        "the webhook is being sent, and tried again until it answers, for up to 24 hours after "
        "the threshold was crossed",
    ),
    "delivered": ("notification delivered", "the webhook answered that it received the alert"),
    "failed": (
        "notification failed",
        "the webhook did not answer with success within 24 hours of the crossing: no further "
        "attempt is made",
    ),
    "no_webhook": (
        "recorded, nobody notified",
        "the budget has no webhook: the crossing is only recorded here",
    ),
}


def alert_state(code: str) -> tuple[str, str]:
    """An alert's state as a page says it: (words, what they mean); a state this dashboard does
    not know is shown as its code."""
    return ALERT_STATES.get(code, (code, f"state {code}"))
