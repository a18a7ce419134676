"""Time zone names that PostgreSQL and the zone database read differently.

PostgreSQL looks a zone name up among its time zone abbreviations first: it reads `CET`, `EET`,
`MET` and `WET` as fixed offsets without summer time, where the zone database (Python's
`zoneinfo`, which the code uses) gives them summer time. Every day PostgreSQL draws in such a
zone (spend by day, the daily rollups, a budget's first window) would be an hour off half the
year, so they are refused where a zone is given (`read_otherwise`), naming the region zone of
the same rules. Projects given one before they were refused got the region zone from migration
`ledger_2026_12_05t08_00` (their daily rollups summed again in it). Where a project's stored
zone is read for spend, such a name would still be read as its region zone (`region_of`): only
a row written by hand can hold one now.
"""

from __future__ import annotations

from typing import Final

#: Each such name, and the region zone of the same rules to use instead.
POSTGRES_READS_OTHERWISE: Final = {
    "CET": "Europe/Brussels", "MET": "Europe/Brussels", "EET": "Europe/Athens",
    "WET": "Europe/Lisbon",
}  # fmt: skip


def read_otherwise(name: str) -> str | None:
    """Why PostgreSQL cannot be given `name` as a zone, and what to give instead; None: it can."""
    instead = POSTGRES_READS_OTHERWISE.get(name)
    if instead is None:
        return None
    return (
        f"{name!r} is read by PostgreSQL as a fixed offset without summer time; use "
        f"{instead!r}, which has the same rules"
    )


def region_of(name: str) -> str:
    """A zone name as PostgreSQL should be given it: a stored name it reads otherwise as the
    region zone of the same rules, any other as it is."""
    return POSTGRES_READS_OTHERWISE.get(name, name)
