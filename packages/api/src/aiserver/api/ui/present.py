"""A spend answer as the pages show it: labels, the table, the chart's data and the CSV.

Every amount is the answer's own decimal string, as `GET /v1/spend` returns it: the pages
neither round nor add up money (a cell with no spend is "0", as the API writes a zero). The
chart is drawn from the same table that is shown under it (its text alternative), and the CSV
holds exactly the rows of the table that is shown.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import msgspec

from aiserver.ledger.spend.answer import SpendAnswer, SpendBucket, SpendGroup

NONE: Final = "(none)"
OTHER: Final = "(other)"
TOTAL: Final = "total"
COUNTS: Final = (
    "events", "unpriced_events", "partially_priced_events", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
)  # fmt: skip


def bucket_label(bucket: SpendBucket, kind: str | None) -> str:
    """A bucket as its start reads on the zone's clock."""
    start = bucket.start
    if kind == "hour":
        return start.strftime("%Y-%m-%d %H:%M")
    if kind == "day":
        return start.date().isoformat()
    if kind == "week":
        return f"week of {start.date().isoformat()}"
    if kind == "month":
        return start.strftime("%Y-%m")
    return f"{start:%Y-%m-%d %H:%M} to {bucket.end:%Y-%m-%d %H:%M}"


def bucket_labels(answer: SpendAnswer) -> list[str]:
    """Each bucket's `bucket_label`, with the zone's offset written after a label that two
    buckets share: the hour that a clock change repeats (`02:00+02:00`, `02:00+01:00`)."""
    labels = [bucket_label(bucket, answer.bucket) for bucket in answer.buckets]
    shared = {label for label, count in Counter(labels).items() if count > 1}
    return [
        label + _offset(bucket.start) if label in shared else label
        for label, bucket in zip(labels, answer.buckets, strict=True)
    ]


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
    (each value as `shown_value` writes it: different groups never share a label)."""
    if not group_by:
        return TOTAL
    if group.other or group.key is None:
        return OTHER
    values = group_values(group, group_by, joined=len(group_by) > 1)
    if len(group_by) == 1:
        return values[0]
    return ", ".join(f"{name}={value}" for name, value in zip(group_by, values, strict=True))


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

    def chart(self) -> dict[str, Any]:
        """The chart's data: the same strings, drawn as numbers by the page's script."""
        return {
            "labels": [label for label, _, _ in self.rows],
            "series": [
                {"label": column, "values": [cells[i] for _, cells, _ in self.rows]}
                for i, column in enumerate(self.columns)
            ],
            "currency": self.currency,
        }


def pivot(answer: SpendAnswer) -> Pivot:
    """One column per group of the answer, found in each bucket by its identity (`group_id`):
    the cells of a row are the API's costs of its groups, which add up to the row's total."""
    group_by = answer.group_by
    columns = [group_id(g, group_by) for g in answer.groups]
    rows = []
    for bucket, label in zip(answer.buckets, bucket_labels(answer), strict=True):
        cost = {group_id(g, group_by): g.cost for g in bucket.groups}
        rows.append(
            (
                label,
                [cost.get(c, "0") for c in columns],
                bucket.total.cost,
            )
        )
    labels = [group_label(g, group_by) for g in answer.groups]
    return Pivot(columns=labels, rows=rows, currency=answer.currency)


def table_header(answer: SpendAnswer) -> list[str]:
    return ["from", "to", *answer.group_by, "cost", "currency", *COUNTS]


def timestamp(at: date | datetime) -> str:
    """A date or time exactly as the API's JSON writes it (UTC as Z, else the offset)."""
    return _ENCODER.encode(at).decode().strip('"')


_ENCODER: Final = msgspec.json.Encoder()


def on_clock(at: datetime, zone: str) -> str:
    """A time on the clock of the time zone named `zone` (a project's), with its offset, as
    `timestamp` writes it: `2026-12-01T00:00:00+14:00` for the instant the API writes
    `2026-11-30T10:00:00Z`. UTC is written `Z`."""
    return timestamp(at.astimezone(ZoneInfo(zone)))


def table_rows(answer: SpendAnswer) -> list[list[str]]:
    """One row per bucket and group, every value as the page shows it (and the CSV holds it)."""
    rows = []
    for bucket in answer.buckets:
        for group in bucket.groups:
            counts = msgspec.structs.asdict(group)
            rows.append([
                timestamp(bucket.start), timestamp(bucket.end),
                *group_values(group, answer.group_by), group.cost, answer.currency,
                *(str(counts[name]) for name in COUNTS),
            ])  # fmt: skip
    return rows


#: What a spreadsheet reads as the start of a formula (OWASP, "CSV injection").
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """A cell a spreadsheet shows as text: one that would start a formula (a tag value such as
    `=HYPERLINK(...)`, which anyone holding an ingest key can send) gets a leading `'`. The
    table's own numbers are never negative, so no number is changed."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def to_csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)
    return out.getvalue()
