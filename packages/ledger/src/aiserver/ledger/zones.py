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

Some names of the zone files are no place's zone, and read differently by host: `localtime` is
the zone of the host that reads it (the API host's for Python, the database server's for
PostgreSQL), `posixrules` and `Factory` are the zone database's own, and the `right/` and
`posix/` copies of the database (`right/UTC` counts leap seconds) are read by PostgreSQL as it
was built. A zone given must be one of the zone database's names (`zoneinfo.available_timezones`,
which leaves the copies out) but those (`refusal`).
"""

from __future__ import annotations

import functools
import zoneinfo
from typing import Final

#: Each such name, and the region zone of the same rules to use instead.
POSTGRES_READS_OTHERWISE: Final = {
    "CET": "Europe/Brussels", "MET": "Europe/Brussels", "EET": "Europe/Athens",
    "WET": "Europe/Lisbon",
}  # fmt: skip


#: Names among the zone files that are no place's zone (see the module).
NO_PLACE: Final = frozenset({"localtime", "posixrules", "Factory"})
#: The copies of the zone database that some hosts keep beside it.
COPIES: Final = ("right/", "posix/")


@functools.cache
def _zone_names() -> frozenset[str]:
    """The zone database's names on this host, but those of no place."""
    return frozenset(zoneinfo.available_timezones()) - NO_PLACE


def refusal(name: str) -> str | None:
    """Why `name` cannot be given as a zone, after the field it was given in ("time_zone
    'localtime' is ..."); None: it can. A name is given as it is, without spaces around."""
    if name in NO_PLACE:
        return (
            f"{name!r} is no place's time zone: the API and the database would each read it "
            "their own way; use an IANA time zone (e.g. UTC, Europe/Berlin)"
        )
    if name.startswith(COPIES):
        return (
            f"{name[:80]!r} names a copy of the zone database that PostgreSQL and the API read "
            f"differently; use an IANA time zone (e.g. {name.partition('/')[2][:80]!r})"
        )
    if name not in _zone_names():
        return f"{name[:80]!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)"
    return read_otherwise(name)


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
