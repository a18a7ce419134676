"""Exporting a project's usage: every event of a window that the filters keep, oldest first, as
CSV, JSON lines or FOCUS-shaped CSV, streamed from a server-side cursor.

    query = export_query(since="2026-11-01", until="2026-12-01", tags=[("team", "search")])
    export = await UsageExport.open(core, project, query, "focus")
    async for chunk in export.chunks():  # bytes; closes its connection at the end
        ...

- **Constant memory.** The export reads through a cursor (`PREFETCH` rows a round trip) on a
  connection of its own, in one read-only REPEATABLE READ transaction: the export is one
  consistent snapshot however long it runs, and the process holds one batch of rows and its
  encoding at a time, whatever the number of events.
- **Its own connection**, not one of the pool's: a long export must not take a connection that
  ingest needs. It is named `APPLICATION_NAME` in `pg_stat_activity`. Whatever ends the export
  early (a client that hangs up, a cancelled task, an error) ends the connection with it:
  `close()` may be called any number of times, from anywhere.
- **Oldest first**: by `occurred_at`, then by event id, the order of the table's primary key.
- **The formats** (each column documented in docs/usage-export.md):
  `csv`: one row per event, `CSV_COLUMNS` and a `tag:KEY` column per tag the project rolls up
  (`csv_table`); `jsonl`: one event a line, the object of
  `GET /v1/usage/events/{event_id}`; `focus`: FinOps FOCUS rows (`aiserver.ledger.usage.focus`),
  one per priced component. An unpriced event has no FOCUS row: `unpriced_events` counts them.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from aiserver.core_db.connections import connect
from aiserver.core_db.logging import get_logger
from aiserver.costs.calculator import CURRENCY
from aiserver.costs.money import money
from aiserver.ledger.errors import InvalidField
from aiserver.ledger.text import FORMULA_START, spreadsheet_safe
from aiserver.ledger.usage import FORMATS as FORMATS  # where the command line reads them
from aiserver.ledger.usage import ExportFormat as ExportFormat
from aiserver.ledger.usage import focus
from aiserver.ledger.usage.reading import (
    TAG_PREFIX,
    EventQuery,
    event_filters,
    event_from_row,
    event_query,
)
from aiserver.ledger.usage.store import reading as store
from aiserver.ledger.zones import region_of

if TYPE_CHECKING:
    from asyncpg.transaction import Transaction

    from aiserver.core_db.settings import CoreSettings
    from aiserver.ledger.store import Project

MEDIA_TYPES: Final[dict[ExportFormat, str]] = {
    "csv": "text/csv",
    "jsonl": "application/x-ndjson",
    "focus": "text/csv",
}
EXTENSIONS: Final[dict[ExportFormat, str]] = {"csv": "csv", "jsonl": "jsonl", "focus": "csv"}

log = get_logger(__name__)


def _cut_if_alive(export: weakref.ref[UsageExport], seconds: float) -> None:
    found = export()
    if found is not None:
        found._cut(seconds)  # the export's own timer


class ExportCut(Exception):
    """An export ended at its time limit (`UsageExport.limit_time`) before it was whole."""


#: Rows the cursor fetches a round trip, and encodes into one chunk: the export's memory.
PREFETCH: Final = 1000
#: How an export's connection is named in pg_stat_activity.
APPLICATION_NAME: Final = "aiserver usage export"

CSV_COLUMNS: Final = (
    "event_id", "id", "occurred_at", "received_at", "model", "provider", "matched_model",
    "matched_provider", "service_tier", "usage_format", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "other_usage", "tags",
    "pricing_status", "total", "currency", "unpriced", "price_version", "catalog_version",
    "override_id", "note", "occurred_at_local", "month",
)  # fmt: skip
#: The columns of named text (see `CsvTable`): a spreadsheet never reads them as a formula.
CSV_TEXT: Final = (
    "id", "model", "provider", "matched_model", "matched_provider", "service_tier", "note"
)  # fmt: skip


def export_format(name: str) -> ExportFormat:
    """The format named `name`; `InvalidField` naming `format` for any other."""
    for fmt in FORMATS:
        if name == fmt:
            return fmt
    raise InvalidField(f"format: {name[:40]!r} is not one of {', '.join(FORMATS)}", ["format"])


def export_query(
    *,
    since: str | datetime | None,
    until: str | datetime | None,
    model: str | None = None,
    provider: str | None = None,
    status: str | None = None,
    tags: Iterable[tuple[str, str]] = (),
) -> EventQuery:
    """The query of an export: the filters of the events' listing, with a window that must be
    given whole (`from` and `to`), so that an export says which period it covers."""
    missing = [name for name, value in (("from", since), ("to", until)) if value is None]
    if missing:
        raise InvalidField(
            f"an export covers a window [from, to): give {' and '.join(missing)} (RFC 3339, "
            "e.g. from=2026-11-01&to=2026-12-01)",
            missing,
        )
    return event_query(
        since=since, until=until, model=model, provider=provider, status=status, tags=tags
    )


def file_name(project: str, query: EventQuery, fmt: ExportFormat) -> str:
    """What an export is saved as: `acme-usage-20261101T000000Z-20261201T000000Z.csv`, with
    `-focus` before `.csv` for FOCUS (both are CSV: the names keep them apart, as the
    dashboard's do). (The year is written with four digits by hand: strftime's `%Y` writes year
    1 as `1`.)"""
    window = "-".join(
        f"{at.year:04d}{at:%m%dT%H%M%SZ}" for at in (query.since, query.until) if at is not None
    )
    kind = "-focus" if fmt == "focus" else ""
    return f"{project}-usage-{window}{kind}.{EXTENSIONS[fmt]}"


def utc(at: datetime) -> str:
    """A time in UTC, ISO 8601 with `Z` (microseconds only where it has them)."""
    if at.tzinfo is not UTC:  # the database's times are in UTC already
        at = at.astimezone(UTC)
    return at.isoformat().replace("+00:00", "Z")


# -- encodings -------------------------------------------------------------------------------


class Encoding(Protocol):
    def header(self) -> bytes: ...

    def encode(self, rows: list[asyncpg.Record]) -> bytes: ...


class CsvTable:
    """RFC 4180 CSV (CRLF, fields quoted where they must be): a header, then `lines(row)` for
    each event (none, one or several lines). A null is an empty field. A cell of the `text`
    columns (what a client or the operator named: event keys, models, providers, project names)
    that a spreadsheet would read as a formula is written with a leading `'`
    (`spreadsheet_safe`); the numbers, times and JSON columns are written as they are."""

    def __init__(
        self,
        columns: tuple[str, ...],
        lines: Callable[[asyncpg.Record], Iterable[list[Any]]],
        text: tuple[str, ...],
    ) -> None:
        self.columns = columns
        self.lines = lines
        self._text = tuple(columns.index(name) for name in text)

    def header(self) -> bytes:
        return _csv([list(self.columns)])

    def encode(self, rows: list[asyncpg.Record]) -> bytes:
        return _csv(self._safe(line) for row in rows for line in self.lines(row))

    def _safe(self, line: list[Any]) -> list[Any]:
        for index in self._text:
            cell = line[index]
            if cell is not None and cell[:1] in FORMULA_START:
                line[index] = spreadsheet_safe(cell)
        return line


def _csv(lines: Iterable[list[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(lines)
    return buffer.getvalue().encode()


class JsonLines:
    """One event a line: the object `GET /v1/usage/events/{event_id}` answers."""

    _encoder: Final = msgspec.json.Encoder()

    def header(self) -> bytes:
        return b""

    def encode(self, rows: list[asyncpg.Record]) -> bytes:
        return self._encoder.encode_lines([event_from_row(row) for row in rows])


_LIST: Final = msgspec.json.Encoder()


def csv_line(row: asyncpg.Record, zone: ZoneInfo | None = None) -> list[list[Any]]:
    """An event's line of the `csv` format, in `CSV_COLUMNS`' order: `occurred_at_local` and
    `month` on the clock of `zone`, the project's (None: UTC, whose text is `occurred_at`'s),
    so that a spreadsheet totals a month as spend and the dashboard count it."""
    total = row["total_cost"]
    occurred = utc(row["occurred_at"])
    if zone is None:
        local = occurred
    else:  # an offset of 0 (London's winter, Etc/UTC) as the API writes it: Z
        local = row["occurred_at"].astimezone(zone).isoformat().replace("+00:00", "Z")
    return [[
        row["id"], row["event_key"], occurred, utc(row["received_at"]),
        row["model"], row["provider"], row["matched_model"], row["matched_provider"],
        row["service_tier"], row["usage_format"], row["input_tokens"], row["output_tokens"],
        row["cache_read_tokens"], row["cache_write_tokens"], row["reasoning_tokens"],
        row["usage_other"] or "{}", row["tags"], row["status"],
        money(total) if total is not None else None, CURRENCY,
        # 0: an override-only model's, as events recorded before it was stored as none
        _LIST.encode(list(row["unpriced"] or ())).decode(), row["price_version"] or None,
        row["catalog_version"], row["override_id"], row["pricing_note"],
        local, local[:7],  # its month: `2026-11`, the text's first characters
    ]]  # fmt: skip


_TAGS: Final = msgspec.json.Decoder(dict[str, str])


def csv_table(project: Project) -> CsvTable:
    """The `csv` format of `project`'s events: `CSV_COLUMNS`, then a column of each tag the
    project rolls up (`tag:team`, in the project's order), its value or empty when the event
    has not got it, so that a spreadsheet can filter and pivot on it (`tags` holds every tag
    all the same). A tag's value is named text, guarded as the others."""
    keys = tuple(project.rollup_tags)
    zone = None if project.time_zone == "UTC" else ZoneInfo(region_of(project.time_zone))
    if not keys:
        return CsvTable(CSV_COLUMNS, functools.partial(csv_line, zone=zone), CSV_TEXT)
    tagged = tuple(TAG_PREFIX + key for key in keys)

    def lines(row: asyncpg.Record) -> list[list[Any]]:
        (line,) = csv_line(row, zone)
        tags = _TAGS.decode(row["tags"])
        return [[*line, *(tags.get(key) for key in keys)]]

    return CsvTable(CSV_COLUMNS + tagged, lines, CSV_TEXT + tagged)


def encoding(fmt: ExportFormat, project: Project) -> Encoding:
    if fmt == "csv":
        return csv_table(project)
    if fmt == "jsonl":
        return JsonLines()
    return CsvTable(focus.COLUMNS, lambda row: focus.rows(project, row), focus.TEXT)


# -- the export ------------------------------------------------------------------------------


class UsageExport:
    """One export under way: its connection, its snapshot, and what it has sent."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        transaction: Transaction,
        statement: tuple[str, list[Any]],
        encoder: Encoding,
        unpriced_events: int | None,
        project_id: int,
    ) -> None:
        self.conn = conn
        self.transaction = transaction
        self.statement = statement
        self.encoder = encoder
        #: focus only: the unpriced events the filters keep, which have no FOCUS row
        self.unpriced_events = unpriced_events
        self.events = 0  # read so far
        self.project_id = project_id
        #: the time limit that cut the export (`limit_time`), None while it was not cut
        self.cut_after: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(
        cls, core: CoreSettings, project: Project, query: EventQuery, fmt: ExportFormat
    ) -> UsageExport:
        """Connect and take the snapshot (a database that is down fails here, before anything
        is sent: `DatabaseUnavailable`)."""
        conn = await connect(core)
        try:
            await conn.execute(f"SET application_name = '{APPLICATION_NAME}'")
            transaction = conn.transaction(isolation="repeatable_read", readonly=True)
            await transaction.start()
            filters = event_filters(query)
            unpriced = None
            if fmt == "focus":
                sql, args = store.unpriced_statement(project.id, filters)
                unpriced = int(await conn.fetchval(sql, *args))
            statement = store.export_statement(project.id, filters)
            encoder = encoding(fmt, project)  # a zone this host does not know raises here
        except BaseException:
            conn.terminate()
            raise
        return cls(conn, transaction, statement, encoder, unpriced, project.id)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The export's bytes, a batch of events at a time; the connection is closed at the
        end, and ended at once when the export stops early."""
        try:
            yield self.encoder.header()
            sql, args = self.statement
            batch: list[asyncpg.Record] = []
            async for row in self.conn.cursor(sql, *args, prefetch=PREFETCH):
                batch.append(row)
                if len(batch) == PREFETCH:
                    chunk, batch = self.encoder.encode(batch), []
                    self.events += PREFETCH
                    yield chunk
            if batch:
                self.events += len(batch)
                yield self.encoder.encode(batch)
            await self.transaction.commit()
            await self.conn.close(timeout=5)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if self.cut_after is None:
                raise
            raise ExportCut(
                f"the export was cut at its time limit of {self.cut_after:g} s"
            ) from exc
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self.close()

    def limit_time(self, seconds: float) -> None:
        """End the export `seconds` from now if it still streams: its connection, so its
        snapshot, is ended, and the stream fails (`ExportCut`), so that the client gets a broken
        download, never a short one that looks whole. A client that reads slowly, or not at
        all, holds a connection no longer than that."""
        # a weak reference: an export dropped before it streamed is still collected (and its
        # connection ended) at once, as before, not held until the limit
        self._timer = asyncio.get_running_loop().call_later(
            seconds, _cut_if_alive, weakref.ref(self), seconds
        )

    def _cut(self, seconds: float) -> None:
        if not self.closed:
            self.cut_after = seconds
            log.warning("usage export cut at its time limit", seconds=seconds, events=self.events,
                        project_id=self.project_id)  # fmt: skip
            self.close()

    @property
    def closed(self) -> bool:
        return self.conn.is_closed()

    def close(self) -> None:
        """End the connection now if it is still open (its transaction rolls back): safe to
        call again, and from a task other than the one reading."""
        if not self.conn.is_closed():
            self.conn.terminate()
