"""Spend over a window older than the retention: the hours read from the rollups stay exact, and
the hours that a boundary cuts, which are read from raw events that retention dropped, are named
in the answer (`source_note`) instead of counting nothing silently."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aiserver.ledger.usage.partitions import maintain_partitions

from ..support.folding import fold_all
from . import test_spend
from .test_spend import NOW, Ledger

ledger = test_spend.ledger  # acme (Europe/Berlin, rolls up team and feature) and rival


def event(at: str, tokens: int = 1000, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-x", "usage": {"input_tokens": tokens}, "occurred_at": at, **extra}


async def drop_october(ledger: Ledger) -> None:
    """Record October's events and November's, fold them, then let retention (30 days at NOW:
    everything before November) drop October's partition."""
    await ledger.record(ledger.project, [
        event("2026-10-20T07:10:00Z", 1000),  # a whole hour of the window below
        event("2026-10-20T08:45:00Z", 2000),  # the hour that from=10:30+02:00 cuts, inside it
        event("2026-10-20T08:05:00Z", 4000),  # the same hour, before from
        event("2026-10-21T12:00:00Z", 8000, tags={"team": "ads"}),
        event("2026-11-10T09:15:00Z", 16000),  # kept: the oldest retained event
    ])  # fmt: skip
    await fold_all(ledger.pool)
    async with ledger.pool.acquire() as conn:
        done = await maintain_partitions(conn, retention_days=30, now=NOW)
    assert "usage_events_p202610" in done.dropped
    assert await ledger.pool.fetchval("SELECT count(*) FROM usage_events") == 1


def cost(tokens: int) -> Decimal:
    return Decimal("1.1e-06") * tokens  # gpt-x's input price


async def test_a_cut_hour_whose_raw_events_retention_dropped_is_named_not_silent(
    ledger: Ledger,
) -> None:
    await drop_october(ledger)
    # from 10:30 Berlin (08:30Z) cuts the hour 08:00Z, whose events are gone: the 08:45 event,
    # counted by the hour's rollup, is missed by the part of the hour in the window
    answer = await ledger.spend(since="2026-10-20T10:30", until="2026-10-22", bucket="day")
    assert answer.source == "rollups"
    assert answer.raw_hours == 1
    assert answer.total.events == 1  # 10-21's event (10-20's whole hours start at 09:00Z)
    assert answer.source_note is not None
    note = answer.source_note
    assert "2026-10-20T08:00:00Z" in note, note
    assert "2026-11-10T09:00:00Z" in note, note  # the hour of the oldest retained event
    assert "USAGE_RETENTION_DAYS" in note, note
    # the same window on whole hours is exact from the rollups, and says nothing
    whole = await ledger.spend(since="2026-10-20T10:00", until="2026-10-22", bucket="day")
    assert (whole.raw_hours, whole.source_note) == (0, None)
    assert (whole.total.events, Decimal(whole.total.cost)) == (3, cost(2000 + 4000 + 8000))


async def test_only_the_cut_hours_whose_rollups_hold_events_of_the_question_are_named(
    ledger: Ledger,
) -> None:
    """No warning where nothing was lost: a cut hour with no events in its rollups (before the
    project's first event, or filtered out), or a cut hour still retained."""
    await drop_october(ledger)
    for params in (
        {"since": "2026-10-20T11:30", "until": "2026-10-20T12:30"},  # 09:00Z, 10:00Z: empty
        {"since": "2025-10-20T10:30", "until": "2025-10-22"},  # before anything was recorded
        {"since": "2026-10-20T10:30", "until": "2026-10-22", "model": "rare-x"},
        {"since": "2026-10-20T10:30", "until": "2026-10-22", "tags": [("team", "ads")]},
        {"since": "2026-11-10T10:20", "until": "2026-11-10T10:40"},  # kept: exact
    ):
        answer = await ledger.spend(**params)
        assert answer.raw_hours > 0, params
        assert answer.source_note is None, params
    kept = await ledger.spend(since="2026-11-10T10:10", until="2026-11-10T10:40")
    assert (kept.total.events, kept.source_note) == (1, None)
    # a filter the lost event matches names the hour
    named = await ledger.spend(since="2026-10-20T10:30", until="2026-10-22", model="gpt-x",
                               group_by=["tag:team"])  # fmt: skip
    assert named.source_note is not None
    assert "2026-10-20T08:00:00Z" in named.source_note


async def test_a_zone_at_a_half_hour_offset_names_how_many_cut_hours_were_lost(
    ledger: Ledger,
) -> None:
    """Every day bucket of Asia/Kolkata cuts an hour: over October, those whose rollups hold
    events are named (the first few, and how many)."""
    await drop_october(ledger)
    answer = await ledger.spend(since="2026-10-01", until="2026-11-01", bucket="day",
                                tz="Asia/Kolkata")  # fmt: skip
    assert answer.raw_hours == 32  # the window's edges and 30 midnights, each at 18:30Z
    # the cut hours are the 18:00Z hours; none holds an event
    assert answer.source_note is None
    hourly = await ledger.spend(since="2026-10-20", until="2026-10-22", bucket="hour",
                                tz="Asia/Kolkata")  # fmt: skip
    assert hourly.raw_hours == 49  # every hour is cut
    assert hourly.source_note is not None
    # 07:00Z, 08:00Z and 12:00Z hold events: 3 hours, each named
    assert "3 hour(s)" in hourly.source_note, hourly.source_note
    for hour in ("2026-10-20T07:00:00Z", "2026-10-20T08:00:00Z", "2026-10-21T12:00:00Z"):
        assert hour in hourly.source_note
    assert hourly.total.events == 0  # every event of the window was in a cut hour


async def test_a_project_whose_every_event_was_dropped_names_its_cut_hours(
    ledger: Ledger,
) -> None:
    """No retained event at all: every cut hour whose rollups hold events is named."""
    await ledger.record(ledger.project, [event("2026-10-20T08:45:00Z")])
    await fold_all(ledger.pool)
    async with ledger.pool.acquire() as conn:
        await maintain_partitions(conn, retention_days=30, now=NOW)
    answer = await ledger.spend(since="2026-10-20T10:30", until="2026-10-21")
    assert answer.total.events == 0
    assert answer.source_note is not None
    assert "2026-10-20T08:00:00Z" in answer.source_note
    assert "no retained event" in answer.source_note, answer.source_note
