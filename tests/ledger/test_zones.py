"""Zone names that PostgreSQL and the zone database read differently are refused: the days
PostgreSQL draws (spend by day, the rollups, a budget's first window) must be the days the code
draws."""

from __future__ import annotations

import zoneinfo
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from aiserver.core_db.database import database, require_pool
from aiserver.ledger.errors import InvalidField
from aiserver.ledger.projects import check_time_zone
from aiserver.ledger.spend.query import read_spend, spend_query, time_zone
from aiserver.ledger.store import read_project
from aiserver.ledger.zones import POSTGRES_READS_OTHERWISE

from ..conftest import Settings

#: A winter and a summer instant of both hemispheres' daylight-saving zones.
INSTANTS = (datetime(2026, 1, 15, 12, tzinfo=UTC), datetime(2026, 7, 15, 12, tzinfo=UTC))


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with database(settings.core):
        yield require_pool()


async def postgres_reading(pool: asyncpg.Pool, names: list[str]) -> dict[str, list[datetime]]:
    """Each zone's wall time at INSTANTS as PostgreSQL reads the name."""
    rows = await pool.fetch(
        "SELECT z.name, array_agg(t AT TIME ZONE z.name ORDER BY t) AS walls"
        " FROM unnest($1::text[]) AS z(name), unnest($2::timestamptz[]) AS t GROUP BY z.name",
        names, list(INSTANTS),
    )  # fmt: skip
    return {r["name"]: r["walls"] for r in rows}


def python_reading(name: str) -> list[datetime]:
    zone = zoneinfo.ZoneInfo(name)
    return [at.astimezone(zone).replace(tzinfo=None) for at in INSTANTS]


async def test_the_names_refused_are_exactly_those_postgresql_reads_otherwise(
    pool: asyncpg.Pool,
) -> None:
    known = {r["name"] for r in await pool.fetch("SELECT name FROM pg_timezone_names")}
    names = sorted(zoneinfo.available_timezones() & known)
    assert len(names) > 400  # the zone database, not a handful
    read = await postgres_reading(pool, names)
    otherwise = {name for name in names if read[name] != python_reading(name)}
    assert otherwise == set(POSTGRES_READS_OTHERWISE)
    # what each one names instead has the rules the zone database gives the name, in both
    instead = await postgres_reading(pool, sorted(set(POSTGRES_READS_OTHERWISE.values())))
    for name, region in POSTGRES_READS_OTHERWISE.items():
        assert instead[region] == python_reading(region) == python_reading(name), name


@pytest.mark.parametrize("name", sorted(POSTGRES_READS_OTHERWISE))
def test_a_project_and_a_spend_question_refuse_them_naming_the_zone_to_use(name: str) -> None:
    region = POSTGRES_READS_OTHERWISE[name]
    with pytest.raises(InvalidField, match=f"use '{region}', which has the same rules") as made:
        check_time_zone(name)
    assert made.value.fields == ["time_zone"]
    with pytest.raises(InvalidField, match=f"^tz: '{name}' is read by PostgreSQL") as asked:
        time_zone(name)
    assert asked.value.fields == ["tz"]
    assert check_time_zone(region) == region


async def test_a_project_given_one_before_still_reads_its_spend_in_the_region_zone(
    pool: asyncpg.Pool,
) -> None:
    """A project stored with CET (made before the four were refused) keeps it: its spend is
    read in Europe/Brussels, where its days have summer time as the code draws them; only a
    zone given now is refused."""
    await pool.execute(
        "INSERT INTO projects (slug, name, time_zone) VALUES ('old-cet', 'Old', 'CET')"
    )
    async with pool.acquire() as conn:
        project = await read_project(conn, "old-cet")
    assert project is not None
    question = {"since": "2026-07-01", "until": "2026-07-03", "bucket": "day"}
    answer = await read_spend(pool, project, spend_query(project, **question))
    assert answer.tz == "Europe/Brussels"
    # the days start at local midnight with summer time: 22:00 UTC, not 23:00
    assert [b.start for b in answer.buckets] == [
        datetime(2026, 6, 30, 22, tzinfo=UTC), datetime(2026, 7, 1, 22, tzinfo=UTC)
    ]  # fmt: skip
    with pytest.raises(InvalidField, match=r"^tz: 'CET' is read by PostgreSQL"):
        spend_query(project, **question, tz="CET")
