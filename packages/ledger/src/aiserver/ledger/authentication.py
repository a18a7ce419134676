"""Authenticating a project key on every request, cheaply, in a long-running API process.

- `KeyCache` keeps what was read of a public id for `API_KEY_CACHE_SECONDS` (unknown ids too, so
  that a stream of made-up keys costs no query each). That is the bound on how late a revocation
  made in another replica takes effect here; this process forgets a key it revoked at once.
  Expiry is checked on every request, against the clock.
- `UseRecorder` remembers the last use of each key in memory and writes them all every
  `API_KEY_LAST_USED_INTERVAL_SECONDS` in one statement: `last_used_at` costs no write per
  request. A process killed between two writes loses at most that interval of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from aiserver.core_db.logging import get_logger
from aiserver.ledger import store
from aiserver.ledger.access import Access, admit
from aiserver.ledger.errors import KeyRejected
from aiserver.ledger.keys import parse_key
from aiserver.ledger.store import KeyRecord

if TYPE_CHECKING:
    import asyncpg

log = get_logger(__name__)

#: Public ids remembered at once; the least recently read is forgotten first.
MAX_CACHED: Final = 10_000


class KeyCache:
    def __init__(self, ttl_s: float, *, max_entries: int = MAX_CACHED) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, list[KeyRecord]]] = OrderedDict()

    async def records(self, pool: asyncpg.Pool, public_id: str) -> list[KeyRecord]:
        now = time.monotonic()
        cached = self._entries.get(public_id)
        if cached is not None and now - cached[0] < self._ttl:
            self._entries.move_to_end(public_id)
            return cached[1]
        async with pool.acquire() as conn:
            records = await store.read_key_records(conn, public_id)
        self._entries[public_id] = (now, records)
        self._entries.move_to_end(public_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return records

    def forget(self, public_id: str) -> None:
        self._entries.pop(public_id, None)

    def forget_project(self, project_id: int) -> None:
        """Forget every key of a project (after a change to the project, e.g. its archiving)."""
        for public_id, (_, records) in list(self._entries.items()):
            if any(r.project_id == project_id for r in records):
                del self._entries[public_id]


class UseRecorder:
    def __init__(self) -> None:
        self._uses: dict[int, datetime] = {}

    def used(self, key_id: int, at: datetime) -> None:
        self._uses[key_id] = at

    async def flush(self, pool: asyncpg.Pool) -> int:
        """Write what was recorded since the last flush; how many keys it moved."""
        uses, self._uses = self._uses, {}
        if uses:
            try:
                async with pool.acquire() as conn:
                    await store.record_last_used(conn, uses)
            except BaseException:
                for key_id, at in uses.items():  # keep them for the next flush
                    self._uses[key_id] = max(at, self._uses.get(key_id, at))
                raise
        return len(uses)

    async def run(self, pool: asyncpg.Pool, interval_s: float) -> None:
        """Flush every `interval_s` until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.flush(pool)
                except Exception as exc:  # the database may be down: the uses wait for it
                    log.warning("key use not recorded yet", error=f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(pool), timeout=5)


async def authenticate(
    pool: asyncpg.Pool, token: str, cache: KeyCache, recorder: UseRecorder
) -> Access:
    """The access a project key gives (see `aiserver.ledger.access`); `KeyRejected` if none."""
    presented = parse_key(token)
    if presented is None:
        raise KeyRejected("the key is malformed: a key reads ais_<public id>_<secret>")
    now = datetime.now(UTC)
    access = admit(presented, await cache.records(pool, presented.public_id), now=now)
    assert access.key_id is not None
    recorder.used(access.key_id, now)
    return access
