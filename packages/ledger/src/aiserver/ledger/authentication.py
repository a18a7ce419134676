"""Authenticating a project key on every request, cheaply, in a long-running API process.

A `Keyring` is one API process's view of the keys:

- its `KeyCache` keeps what was read of a public id for `API_KEY_CACHE_SECONDS`. This process
  forgets a key it revokes, or a project it archives, at once; the others as soon as the change
  commits: the transaction announces it on `KEYS_CHANNEL` (PostgreSQL's NOTIFY, sent at the
  COMMIT), and every API process listens (`Keyring.listen`). While a process cannot listen
  (PostgreSQL down, a pooler in transaction mode), `API_KEY_CACHE_SECONDS` is the bound
  on how late it learns of a change; once it listens again it forgets its whole cache, as it may
  have missed announcements meanwhile. Public ids that name no key are remembered apart, in a
  smaller cache of their own, so a stream of made-up keys can neither evict the real ones nor
  query the database more than once per id and interval. Expiry is checked on every request,
  against the clock.
- its `UseRecorder` remembers the last use of each key in memory and writes them all every
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
from aiserver.ledger.access import Access, admit, admit_record
from aiserver.ledger.errors import KeyRejected
from aiserver.ledger.keys import parse_key
from aiserver.ledger.store import KeyRecord

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection
    from aiserver.core_db.settings import CoreSettings

log = get_logger(__name__)

#: The channel on which a key's revocation and a project's archiving are announced.
KEYS_CHANNEL: Final = "aiserver_keys"
#: How the listening connection is named in pg_stat_activity.
LISTENER_NAME: Final = "aiserver key listener"
#: How long a listener waits before it connects again, after a failure.
RELISTEN_S: Final = 5.0
#: How often a listener asks its connection whether it is still there (one that a network cut
#: silently would otherwise be waited on for ever).
LISTEN_PING_S: Final = 30.0


async def announce_key(conn: DbConnection, public_id: str) -> None:
    """Announce, at the COMMIT of `conn`'s transaction, that the key `public_id` changed."""
    await store.notify(conn, KEYS_CHANNEL, f"key:{public_id}")


async def announce_project(conn: DbConnection, project_id: int) -> None:
    """Announce, at the COMMIT of `conn`'s transaction, that every key of a project changed."""
    await store.notify(conn, KEYS_CHANNEL, f"project:{project_id}")


#: Public ids of keys remembered at once; the least recently read is forgotten first.
MAX_KEYS: Final = 10_000
#: Public ids that named no key, remembered at once (apart from the keys).
MAX_UNKNOWN: Final = 1_000


class _Lru:
    """Entries that expire after a time, the least recently used dropped first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, list[KeyRecord]]] = OrderedDict()

    def get(self, public_id: str, *, now: float, ttl: float) -> list[KeyRecord] | None:
        found = self._entries.get(public_id)
        if found is None or now - found[0] >= ttl:
            return None
        self._entries.move_to_end(public_id)
        return found[1]

    def put(self, public_id: str, records: list[KeyRecord], *, now: float) -> None:
        self._entries[public_id] = (now, records)
        self._entries.move_to_end(public_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def drop(self, public_id: str) -> None:
        self._entries.pop(public_id, None)

    def drop_where(self, project_id: int) -> None:
        for public_id, (_, records) in list(self._entries.items()):
            if any(r.project_id == project_id for r in records):
                del self._entries[public_id]

    def __len__(self) -> int:
        return len(self._entries)


class KeyCache:
    def __init__(
        self, ttl_s: float, *, max_keys: int = MAX_KEYS, max_unknown: int = MAX_UNKNOWN
    ) -> None:
        self.ttl_s = ttl_s
        self._keys = _Lru(max_keys)
        self._unknown = _Lru(max_unknown)
        # Bumped by every forget: a read that began before one must not store what it read.
        self._generation = 0

    async def records(self, pool: asyncpg.Pool, public_id: str) -> list[KeyRecord]:
        now = time.monotonic()
        for cache in (self._keys, self._unknown):
            found = cache.get(public_id, now=now, ttl=self.ttl_s)
            if found is not None:
                return found
        generation = self._generation
        async with pool.acquire() as conn:
            records = await store.read_key_records(conn, public_id)
        if generation == self._generation:
            (self._keys if records else self._unknown).put(public_id, records, now=now)
        return records

    def forget(self, public_id: str) -> None:
        self._generation += 1
        self._keys.drop(public_id)
        self._unknown.drop(public_id)

    def forget_project(self, project_id: int) -> None:
        """Forget every key of a project (after a change to it, e.g. its archiving)."""
        self._generation += 1
        self._keys.drop_where(project_id)

    def forget_all(self) -> None:
        """Forget every key and unknown id (announcements may have been missed)."""
        self._generation += 1
        self._keys = _Lru(self._keys.max_entries)
        self._unknown = _Lru(self._unknown.max_entries)

    def announced(self, payload: str) -> None:
        """Forget what an announcement on `KEYS_CHANNEL` names: `key:<public id>` or
        `project:<id>`; anything else (another version's), everything."""
        kind, _, name = payload.partition(":")
        if kind == "key":
            self.forget(name)
        elif kind == "project" and name.isdigit():
            self.forget_project(int(name))
        else:
            self.forget_all()

    def sizes(self) -> tuple[int, int]:
        """How many keys and how many unknown public ids are remembered."""
        return len(self._keys), len(self._unknown)


class UseRecorder:
    def __init__(self) -> None:
        self._uses: dict[int, datetime] = {}

    def used(self, key_id: int, at: datetime) -> None:
        self._uses[key_id] = at

    async def flush(self, pool: asyncpg.Pool) -> None:
        """Write what was recorded since the last flush; kept for the next one if that fails."""
        uses, self._uses = self._uses, {}
        if not uses:
            return
        try:
            async with pool.acquire() as conn:
                await store.record_last_used(conn, uses)
        except BaseException:
            for key_id, at in uses.items():
                self._uses[key_id] = max(at, self._uses.get(key_id, at))
            raise

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


class Keyring:
    """One API process's keys: the cache that authenticates them and the recorder of their use."""

    def __init__(self, cache_ttl_s: float) -> None:
        self.cache = KeyCache(cache_ttl_s)
        self.uses = UseRecorder()
        self.listening = False

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.cache.announced(str(payload))

    @staticmethod
    async def _still_listening(conn: asyncpg.Connection) -> None:
        """`ConnectionError` unless the server session of `conn` answers, and still LISTENs on
        `KEYS_CHANNEL` (behind a pooler in transaction mode, which does not keep a client on
        one session, it may answer from another that does not: then nothing would be heard)."""
        try:
            listening = await store.listening(conn, KEYS_CHANNEL, timeout=RELISTEN_S)
        except TimeoutError:
            raise ConnectionError(
                f"the listening connection did not answer in {RELISTEN_S} s"
            ) from None
        if not listening:
            raise ConnectionError(
                f"the session that answers does not LISTEN on {KEYS_CHANNEL} (a pooler in "
                "transaction mode? the API needs session pooling)"
            )

    async def listen(self, core: CoreSettings) -> None:
        """Forget what other processes revoke or archive as their transactions commit, until
        cancelled: a connection of its own LISTENs on `KEYS_CHANNEL`. On each connection made
        the whole cache is forgotten (what was announced while none listened is read again).
        A failure is logged once, and again when it listens again; meanwhile the cache's
        lifetime is the bound, as without a listener."""
        from aiserver.core_db.connections import connect

        failing = False
        while True:
            conn = None
            try:
                conn = await connect(core)
                await conn.execute(f"SET application_name = '{LISTENER_NAME}'")
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(KEYS_CHANNEL, self._heard)
                await self._still_listening(conn)
                self.cache.forget_all()
                self.listening = True
                if failing:
                    log.info("key changes are heard again from other processes")
                    failing = False
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), LISTEN_PING_S)
                    if not lost.is_set():
                        await self._still_listening(conn)
                raise ConnectionError("the listening connection was closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning(
                        "key changes of other processes are not heard: a revoked key or an "
                        "archived project is refused here within API_KEY_CACHE_SECONDS; "
                        "trying again",
                        error=f"{type(exc).__name__}: {exc}",
                        retry_in_s=RELISTEN_S,
                    )
                    failing = True
            finally:
                self.listening = False
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(RELISTEN_S)

    async def authenticate(self, pool: asyncpg.Pool, token: str) -> Access:
        """The access a project key gives (see `aiserver.ledger.access`); `KeyRejected` if none."""
        presented = parse_key(token)
        if presented is None:
            raise KeyRejected("the key is malformed: a key reads ais_<public id>_<secret>")
        now = datetime.now(UTC)
        access = admit(presented, await self.cache.records(pool, presented.public_id), now=now)
        assert access.key_id is not None
        self.uses.used(access.key_id, now)
        return access

    async def recheck(self, pool: asyncpg.Pool, public_id: str, key_id: int) -> Access:
        """The access that key `key_id` (of `public_id`), proved earlier, gives now: a session
        made with a key ends when the key is revoked, expires or its project is archived (as
        late as the cache allows). `KeyRejected` when the key is gone. A session's request is a
        use of its key: it moves the key's `last_used_at` as a request with the key does."""
        records = await self.cache.records(pool, public_id)
        record = next((r for r in records if r.id == key_id), None)
        if record is None:
            raise KeyRejected("the key is not valid")
        now = datetime.now(UTC)
        access = admit_record(record, now=now)
        self.uses.used(key_id, now)
        return access
