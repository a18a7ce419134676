"""`aiserver-ledger export` and the export itself: a project's events of a window, oldest first,
as CSV, JSON lines or FOCUS CSV, to stdout or to a file that appears only once whole; read in
batches of a bounded size however many events there are."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

import asyncpg
import msgspec
import pytest

from aiserver.core_db.errors import InvalidInput
from aiserver.ledger import projects
from aiserver.ledger.access import Access
from aiserver.ledger.usage import export as usage_export
from aiserver.ledger.usage.export import (
    APPLICATION_NAME,
    CSV_COLUMNS,
    PREFETCH,
    UsageExport,
    export_format,
    export_query,
    file_name,
)
from aiserver.ledger.usage.focus import COLUMNS as FOCUS_COLUMNS

from ..conftest import Settings
from .test_import import at, db, env, ledger, line

__all__ = ["db", "env"]  # fixtures


async def imported(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_text(
        "\n".join([
            line("a", "gpt-test-001", 1000, 500, 1, tags={"team": "search", "user": "u1"}),
            line("b", "gpt-test-002", 10, 0, 2, provider="openai"),
            line("c", "no-such-model", 1, 1, 3, tags={"team": "search"}),
            line("old", "gpt-test-001", 1, 1, 30),
        ])
    )  # fmt: skip
    code, _, err = await ledger(env, "import", str(path), "--project", "acme")
    assert code == 0, err


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


async def test_export_writes_each_format_to_stdout_with_the_events_filters(
    env: dict[str, str], tmp_path: Path
) -> None:
    await imported(env, tmp_path)
    window = ("--project", "acme", "--from", at(24), "--to", at(0))
    code, out, err = await ledger(env, "export", *window)
    assert code == 0, err
    assert out.splitlines()[0] == ",".join(CSV_COLUMNS)
    exported = rows(out)
    assert [(r["id"], r["total"], r["pricing_status"]) for r in exported] == [
        ("c", "", "unpriced"),  # oldest first; unpriced: no total, never 0
        ("b", "0.00003", "priced"),
        ("a", "0.004", "priced"),
    ]
    assert err == "aiserver-ledger export: 3 events of acme\n"

    code, out, err = await ledger(env, "export", *window, "--format", "jsonl", "--tag",
                                  "team=search")  # fmt: skip
    assert code == 0, err
    assert [json.loads(text)["id"] for text in out.splitlines()] == ["c", "a"]

    code, out, err = await ledger(env, "export", *window, "--format", "focus")
    assert code == 0, err
    focus = rows(out)
    assert list(focus[0]) == list(FOCUS_COLUMNS)
    assert [(r["x_EventKey"], r["SkuMeter"], r["BilledCost"]) for r in focus] == [
        ("b", "input", "0.00003"),  # b used no output token: no output row
        ("a", "input", "0.002"),
        ("a", "output", "0.002"),
    ]
    assert err == (
        "aiserver-ledger export: 3 events of acme; 1 unpriced events have no FOCUS row (the csv "
        "and jsonl formats hold them)\n"
    )


async def test_export_to_a_file_appears_only_once_whole(
    env: dict[str, str], tmp_path: Path
) -> None:
    await imported(env, tmp_path)
    target = tmp_path / "out" / "acme.csv"
    target.parent.mkdir()
    code, out, err = await ledger(
        env, "export", "--project", "acme", "--from", at(24), "--to", at(0), "--output",
        str(target),
    )  # fmt: skip
    assert (code, out) == (0, "")
    assert err == f"aiserver-ledger export: 3 events of acme to {target}\n"
    assert [r["id"] for r in rows(target.read_text())] == ["c", "b", "a"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["acme.csv"]


async def test_export_failures_are_problems(env: dict[str, str], tmp_path: Path) -> None:
    code, out, err = await ledger(env, "export", "--project", "nope", "--from", at(2), "--to",
                                  at(1), "--output", str(tmp_path / "x.csv"))  # fmt: skip
    assert (code, out, err) == (1, "", "aiserver-ledger export: no project 'nope'\n")
    assert list(tmp_path.iterdir()) == []
    code, _, err = await ledger(env, "export", "--project", "acme", "--from", at(1), "--to",
                                at(2))  # fmt: skip
    assert code == 1
    assert "must be after --from" in err
    code, _, err = await ledger(env, "export", "--project", "acme", "--from", at(1))
    assert code == 2
    assert "--to" in err
    code, _, err = await ledger(env, "export", "--project", "acme", "--from", at(2), "--to",
                                at(1), "--format", "xlsx")  # fmt: skip
    assert code == 2
    assert "invalid choice: 'xlsx'" in err
    # before, `.` gave a traceback and '' wrote to stdout
    for output in (".", "", "/"):
        code, out, err = await ledger(env, "export", "--project", "acme", "--from", at(2),
                                      "--to", at(1), "--output", output)  # fmt: skip
        assert (code, out) == (1, ""), err
        assert err == f"aiserver-ledger export: --output {output!r} names no file to write\n"
    assert list(tmp_path.iterdir()) == []


def test_a_window_and_a_format_are_required() -> None:
    with pytest.raises(InvalidInput, match=r"give from and to") as missing:
        export_query(since=None, until=None)
    assert missing.value.problem()["fields"] == ["from", "to"]
    with pytest.raises(InvalidInput, match=r"format: 'xml' is not one of csv, jsonl, focus"):
        export_format("xml")
    query = export_query(since="2026-11-01", until="2026-12-01")
    assert file_name("acme", query, "focus") == (
        "acme-usage-20261101T000000Z-20261201T000000Z-focus.csv"
    )
    assert query.since == datetime(2026, 11, 1, tzinfo=UTC)


async def test_the_export_reads_a_bounded_batch_at_a_time_and_ends_its_connection(
    env: dict[str, str], tmp_path: Path, db: asyncpg.Connection, settings: Settings
) -> None:
    await imported(env, tmp_path)
    # 2.5 batches of copies of event a, written straight into the table
    count = PREFETCH * 5 // 2
    await db.execute(
        """
        INSERT INTO usage_events
        SELECT project_id, occurred_at - n * interval '1 microsecond', nextval(
            'usage_events_id_seq'), received_at, 'copy-' || n, model, provider, matched_model,
            matched_provider, usage_format, service_tier, input_tokens, output_tokens,
            cache_read_tokens, cache_write_tokens, reasoning_tokens, usage_other, tags, status,
            total_cost, components, unpriced, pricing_note, suggestions, price_version,
            catalog_version, override_id
        FROM usage_events, generate_series(1, $1) AS n WHERE event_key = 'a'
        """,
        count,
    )
    project = await projects.find_project(db, Access.operator(), "acme")
    query = export_query(since=at(24), until=at(0))
    export = await UsageExport.open(settings.core, project, query, "jsonl")
    sizes = []
    async for chunk in export.chunks():
        sizes.append(chunk.count(b"\n"))
        connections = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
        assert connections == 1
    # the header (none for JSON lines), then whole batches: never more than PREFETCH events
    assert sizes == [0, PREFETCH, PREFETCH, count + 3 - 2 * PREFETCH]
    assert export.events == count + 3
    assert export.closed
    assert usage_export.PREFETCH == PREFETCH


async def test_an_export_that_cannot_start_ends_its_connection(
    env: dict[str, str], tmp_path: Path, db: asyncpg.Connection, settings: Settings
) -> None:
    """The export's encoding was made after the guard that ends the connection when opening
    fails: a project's time zone this host's zone data does not know (a row written by hand,
    or another host's tzdata) raised there and left the connection open for as long as the
    error was kept. Now it is ended, as any other failure to open is."""
    await imported(env, tmp_path)
    project = await projects.find_project(db, Access.operator(), "acme")
    elsewhere = msgspec.structs.replace(project, time_zone="Nowhere/Not_A_Zone")
    query = export_query(since=at(24), until=at(0))
    with pytest.raises(ZoneInfoNotFoundError) as failed:  # FOCUS reads the zone per row
        await UsageExport.open(settings.core, elsewhere, query, "csv")
    async with asyncio.timeout(10):  # the failure is still held here: nothing else ends it
        while await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        ):
            await asyncio.sleep(0.02)
    del failed  # held until the connection was seen ended


def test_a_csv_row_says_its_time_and_month_on_the_project_s_clock() -> None:
    """The csv had UTC times alone: a call of 22:00 on November 30 in New York read
    2026-12-01T03:00:00Z, and a spreadsheet that pivoted the November file by month put it in
    December, against the dashboard's November total (a finance reader's review)."""
    from zoneinfo import ZoneInfo

    from aiserver.ledger.usage.export import csv_line

    row: dict[str, Any] = dict.fromkeys(
        ("id", "event_key", "model", "provider", "matched_model", "matched_provider",
         "service_tier", "usage_format", "input_tokens", "output_tokens", "cache_read_tokens",
         "cache_write_tokens", "reasoning_tokens", "usage_other", "tags", "status", "total_cost",
         "unpriced", "price_version", "catalog_version", "override_id", "pricing_note")
    )  # fmt: skip
    row |= {"occurred_at": datetime(2026, 12, 1, 3, tzinfo=UTC),
            "received_at": datetime(2026, 12, 1, 3, tzinfo=UTC)}  # fmt: skip
    (line,) = csv_line(row, ZoneInfo("America/New_York"))  # type: ignore[arg-type]
    shown = dict(zip(CSV_COLUMNS, line, strict=True))
    assert (shown["occurred_at"], shown["occurred_at_local"], shown["month"]) == (
        "2026-12-01T03:00:00Z", "2026-11-30T22:00:00-05:00", "2026-11"
    )  # fmt: skip
    (line,) = csv_line(row)  # type: ignore[arg-type]
    assert line[-2:] == ["2026-12-01T03:00:00Z", "2026-12"]  # no zone: UTC's
    (line,) = csv_line(row, ZoneInfo("Europe/London"))  # type: ignore[arg-type]
    assert line[-2:] == ["2026-12-01T03:00:00Z", "2026-12"]  # an offset of 0 is Z, as the API's
