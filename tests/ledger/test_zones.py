"""Zone names that PostgreSQL and the zone database read differently are refused: the days
PostgreSQL draws (spend by day, the rollups, a budget's first window) must be the days the code
draws. Projects that were given one before get the region zone from an upgrade, their daily
rollups summed again in it."""

from __future__ import annotations

import asyncio
import importlib
import re
import zoneinfo
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg
import msgspec
import pytest

from aiserver.core_db.database import database, require_pool
from aiserver.ledger.errors import InvalidField
from aiserver.ledger.projects import check_time_zone
from aiserver.ledger.spend.query import read_spend, spend_query, time_zone
from aiserver.ledger.spend.store.rollups import lock_project
from aiserver.ledger.store import read_project
from aiserver.ledger.zones import POSTGRES_READS_OTHERWISE

from ..conftest import Settings
from ..support.daily import assert_daily_agrees
from ..support.folding import fold_all
from ..support.rollups import random_events, record
from ..support.waits import waiting_for_a_lock

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


def assert_refused(name: str, says: str) -> None:
    """A project (`time_zone`) and a spend question (`tz`) refuse `name`, and say `says`."""
    with pytest.raises(InvalidField, match=f"^time_zone {re.escape(says)}") as made:
        check_time_zone(name)
    assert made.value.fields == ["time_zone"]
    with pytest.raises(InvalidField, match=f"^tz: {re.escape(says)}") as asked:
        time_zone(name)
    assert asked.value.fields == ["tz"]


@pytest.mark.parametrize("name", sorted(POSTGRES_READS_OTHERWISE))
def test_a_project_and_a_spend_question_refuse_them_naming_the_zone_to_use(name: str) -> None:
    region = POSTGRES_READS_OTHERWISE[name]
    assert_refused(name, f"'{name}' is read by PostgreSQL as a fixed offset without summer "
                   f"time; use '{region}', which has the same rules")  # fmt: skip
    assert check_time_zone(region) == region


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("localtime", "'localtime' is no place's time zone"),  # the host's: API's or database's
        ("posixrules", "'posixrules' is no place's time zone"),
        ("Factory", "'Factory' is no place's time zone"),
        ("right/UTC", "'right/UTC' names a copy of the zone database"),  # counts leap seconds
        ("posix/Europe/Berlin", "'posix/Europe/Berlin' names a copy of the zone database"),
        (" UTC", "' UTC' is not an IANA time zone"),
        ("", "'' is not an IANA time zone"),
        ("Mars/Olympus", "'Mars/Olympus' is not an IANA time zone"),
    ],
)
def test_names_that_depend_on_the_host_are_refused(name: str, says: str) -> None:
    assert_refused(name, says)


@pytest.mark.parametrize("name", ["UTC", "Etc/UTC", "Europe/Berlin", "America/New_York", "GMT"])
def test_place_zones_are_taken(name: str) -> None:
    assert check_time_zone(name) == name
    assert time_zone(name).key == name


async def test_a_project_given_one_before_still_reads_its_spend_in_the_region_zone(
    pool: asyncpg.Pool,
) -> None:
    """A project row with CET (the upgrade renames those it finds; this one is written after
    it, by hand): its spend is read in Europe/Brussels, where its days have summer time as the
    code draws them; only a zone given now is refused."""
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


#: The upgrade that renames the four names in projects that kept them.
RENAMING: Final = "aiserver.ledger.piccolo_migrations.ledger_2026_12_05t08_00_00_000000"


def summer_events(count: int) -> list[bytes]:
    """The rollup tests' mix moved 113 days back: eight hours across a midnight of July,
    when Brussels and Lisbon keep summer time and PostgreSQL's CET and WET do not."""
    moved = []
    for raw in random_events(7, count):
        event = msgspec.json.decode(raw)
        at = datetime.fromisoformat(event["occurred_at"]) - timedelta(days=113)
        moved.append(msgspec.json.encode({**event, "occurred_at": at.isoformat()}))
    return moved


async def old_projects(pool: asyncpg.Pool) -> dict[str, int]:
    """Projects stored with CET and WET (as before the four were refused) and one with a
    region zone, each with the same usage recorded and folded into its rollups."""
    ids = {}
    for slug, zone in (("old-cet", "CET"), ("old-wet", "WET"), ("berlin", "Europe/Berlin")):
        ids[slug] = await pool.fetchval(
            "INSERT INTO projects (slug, name, time_zone) VALUES ($1, $1, $2) RETURNING id",
            slug, zone,
        )  # fmt: skip
        assert await record(pool, ids[slug], summer_events(200)) == 200
    await fold_all(pool)
    return ids


async def daily_rows(pool: asyncpg.Pool, project_id: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM usage_rollups_daily WHERE project_id = $1"
        " ORDER BY day, model, provider, status, tags::text",
        project_id,
    )


async def test_the_upgrade_gives_projects_that_kept_one_the_region_zone_and_its_days(
    pool: asyncpg.Pool,
) -> None:
    """Folded with the stored names, the daily rollups of the CET and WET projects are days of
    PostgreSQL's fixed offsets, not the days the code draws. The upgrade renames their zones
    and sums their daily rollups again; a project with a region zone is not touched."""
    ids = await old_projects(pool)
    with pytest.raises(AssertionError, match="the daily rollups differ"):
        await assert_daily_agrees(pool)  # as the defect left them
    berlin = await daily_rows(pool, ids["berlin"])
    upgrade = importlib.import_module(RENAMING)
    async with pool.acquire() as conn, conn.transaction():
        for statement in upgrade.STATEMENTS:
            await conn.execute(statement)
    zones = dict(await pool.fetch("SELECT slug, time_zone FROM projects"))
    assert zones == {"old-cet": "Europe/Brussels", "old-wet": "Europe/Lisbon",
                     "berlin": "Europe/Berlin"}  # fmt: skip
    assert await assert_daily_agrees(pool) > 0
    assert await daily_rows(pool, ids["berlin"]) == berlin
    # the CET project's days are now Brussels's, which are Berlin's
    cet = await daily_rows(pool, ids["old-cet"])
    assert [tuple(r)[1:] for r in cet] == [tuple(r)[1:] for r in berlin]


async def test_the_upgrade_waits_for_a_change_of_the_project_s_rollups_in_flight(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    """A reprice's corrections hold the project's rollup lock shared while they change its
    rollups: the upgrade waits for them to commit before it sums the daily rollups again, so
    what they add is summed in the new zone too."""
    ids = await old_projects(pool)
    reprice = await asyncpg.connect(settings.core.database_url)
    try:
        holding = reprice.transaction()
        await holding.start()
        await lock_project(reprice, ids["old-cet"], shared=True)
        await reprice.execute(
            "UPDATE usage_rollups SET events = events + 1, cost = cost + 1 WHERE project_id = $1",
            ids["old-cet"],
        )
        upgrade = importlib.import_module(RENAMING)

        async def upgrading() -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(upgrade.STATEMENTS[0])

        upgrade_task = asyncio.create_task(upgrading())
        await waiting_for_a_lock(pool)
        zone = await pool.fetchval("SELECT time_zone FROM projects WHERE slug = 'old-cet'")
        assert zone == "CET"  # not before the reprice's corrections commit
        await holding.commit()
        await asyncio.wait_for(upgrade_task, 30)
    finally:
        await reprice.close()
    assert await assert_daily_agrees(pool) > 0  # the corrections included
