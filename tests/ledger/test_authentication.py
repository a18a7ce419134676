"""A process's key cache and use recorder, against the real database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from aiserver.core_db.database import require_pool
from aiserver.ledger import api_keys, projects
from aiserver.ledger.access import Access
from aiserver.ledger.authentication import KeyCache, Keyring
from aiserver.ledger.budgets import service as budgets
from aiserver.ledger.errors import KeyRejected, ProjectArchived
from aiserver.ledger.keys import new_key
from aiserver.ledger.repricing import runs

from ..conftest import Settings

OPERATOR = Access.operator()


@pytest.fixture
async def key(db: Settings) -> str:
    await projects.create_project(require_pool(), OPERATOR, slug="acme", name="Acme")
    created = await api_keys.create_key(require_pool(), OPERATOR, "acme", name="k",
                                        scopes=["read"])  # fmt: skip
    return created.text


async def test_a_cached_key_costs_no_query_until_its_time_is_up(key: str, db: Settings) -> None:
    keyring = Keyring(cache_ttl_s=60)
    pool = require_pool()
    first = await keyring.authenticate(pool, key)
    # the row changes under the cache: the cache keeps answering what it read
    async with pool.acquire() as conn:
        await conn.execute("UPDATE api_keys SET revoked_at = now()")
    assert await keyring.authenticate(pool, key) == first
    keyring.cache.ttl_s = 0  # its time is up: the next request reads again
    with pytest.raises(KeyRejected, match="revoked"):
        await keyring.authenticate(pool, key)


async def test_a_key_proved_earlier_is_checked_again_by_its_id_without_its_secret(
    key: str, db: Settings
) -> None:
    keyring = Keyring(cache_ttl_s=0)  # every check reads the row
    pool = require_pool()
    public_id = key.split("_")[1]
    proved = await keyring.authenticate(pool, key)
    assert proved.key_id is not None
    assert await keyring.recheck(pool, public_id, proved.key_id) == proved
    with pytest.raises(KeyRejected, match="not valid"):  # another id under that public id
        await keyring.recheck(pool, public_id, proved.key_id + 1)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second'")
    with pytest.raises(KeyRejected, match="expired"):
        await keyring.recheck(pool, public_id, proved.key_id)


async def test_a_dashboard_session_moves_its_keys_last_use(key: str, db: Settings) -> None:
    """Before, only the sign-in counted as a use: a key used all day through the dashboard
    looked idle, and a rotation by `last_used_at` would revoke a key still in use."""
    keyring = Keyring(cache_ttl_s=0)
    pool = require_pool()
    public_id = key.split("_")[1]
    proved = await keyring.authenticate(pool, key)
    assert proved.key_id is not None
    await keyring.uses.flush(pool)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE api_keys SET last_used_at = now() - interval '1 day'")
    before = datetime.now(UTC)
    await keyring.recheck(pool, public_id, proved.key_id)  # a dashboard page, later
    await keyring.uses.flush(pool)
    used = await pool.fetchval("SELECT last_used_at FROM api_keys")
    assert before <= used <= datetime.now(UTC)
    # a session whose key has been revoked is no use of it
    async with pool.acquire() as conn:
        await conn.execute("UPDATE api_keys SET revoked_at = now(), last_used_at = NULL")
    with pytest.raises(KeyRejected, match="revoked"):
        await keyring.recheck(pool, public_id, proved.key_id)
    await keyring.uses.flush(pool)
    assert await pool.fetchval("SELECT last_used_at FROM api_keys") is None


async def test_made_up_keys_never_push_the_real_ones_out(key: str, db: Settings) -> None:
    cache = KeyCache(ttl_s=60, max_keys=10, max_unknown=5)
    keyring = Keyring(cache_ttl_s=60)
    keyring.cache = cache
    pool = require_pool()
    await keyring.authenticate(pool, key)
    for _ in range(50):
        with pytest.raises(KeyRejected, match="not valid"):
            await keyring.authenticate(pool, new_key().text)
    assert cache.sizes() == (1, 5)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE api_keys SET revoked_at = now()")
    assert (await keyring.authenticate(pool, key)).project_slug == "acme"  # still the cached read


async def test_forgetting_wins_over_a_read_that_began_before_it(key: str, db: Settings) -> None:
    """A read that started before a revocation in this process must not store the old state."""
    cache = KeyCache(ttl_s=60)
    pool = require_pool()
    public_id = key.split("_")[1]

    class Slow:
        """A pool whose connection is handed out after the revocation has been forgotten."""

        def acquire(self) -> object:
            cache.forget(public_id)  # the revocation lands while this read is under way
            return pool.acquire()

    records = await cache.records(Slow(), public_id)  # type: ignore[arg-type]
    assert len(records) == 1
    assert cache.sizes() == (0, 0)  # not stored: the next request reads again


async def test_uses_are_written_in_one_go_and_kept_when_the_write_fails(
    key: str, db: Settings
) -> None:
    keyring = Keyring(cache_ttl_s=60)
    pool = require_pool()
    access = await keyring.authenticate(pool, key)
    closed = await asyncpg.create_pool(db.core.database_url, min_size=0, max_size=1)
    await closed.close()
    with pytest.raises(asyncpg.InterfaceError):
        await keyring.uses.flush(closed)
    await keyring.uses.flush(pool)  # the failed write's uses were kept for this one
    async with pool.acquire() as conn:
        used = await conn.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1",
                                   access.key_id)  # fmt: skip
    assert used is not None
    assert datetime.now(UTC) - used < timedelta(minutes=1)


async def test_a_listening_keyring_hears_a_revocation_and_an_archiving_as_they_commit(
    key: str, db: Settings
) -> None:
    """Another process's changes are announced on commit; a keyring that listens forgets what
    they name, though its cache would keep the key for a minute more. An announcement it cannot
    read (another version's) makes it forget everything."""
    import asyncio

    keyring = Keyring(cache_ttl_s=60)
    pool = require_pool()
    listening = asyncio.create_task(keyring.listen(db.core))
    try:
        async with asyncio.timeout(10):
            while not keyring.listening:
                await asyncio.sleep(0.01)
        access = await keyring.authenticate(pool, key)
        assert keyring.cache.sizes() == (1, 0)
        # revoked elsewhere (no keyring of this process passed): heard, not waited out
        await api_keys.revoke_key(pool, OPERATOR, access.key_id or 0)
        with pytest.raises(KeyRejected, match="revoked"):
            await _until_refused(keyring, key)

        second = await api_keys.create_key(pool, OPERATOR, "acme", name="k2", scopes=["read"])
        await keyring.authenticate(pool, second.text)
        await projects.change_project(pool, OPERATOR, "acme", archived=True)
        async with asyncio.timeout(5):
            while keyring.cache.sizes()[0]:
                await asyncio.sleep(0.01)
        with pytest.raises(ProjectArchived):
            await keyring.authenticate(pool, second.text)
    finally:
        listening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listening
    assert not keyring.listening

    await projects.change_project(pool, OPERATOR, "acme", archived=False)
    third = await api_keys.create_key(pool, OPERATOR, "acme", name="k3", scopes=["read"])
    await keyring.authenticate(pool, third.text)
    cached = keyring.cache.sizes()
    assert cached[0] >= 1
    keyring.cache.announced("key:" + "0" * 16)  # names no cached key: the others stay
    assert keyring.cache.sizes() == cached
    keyring.cache.announced("garbage from another version")  # unread: everything goes
    assert keyring.cache.sizes() == (0, 0)


async def _until_refused(keyring: Keyring, key: str) -> None:
    """Authenticate `key` until it is refused (what raises), for at most 5 s."""
    import asyncio

    async with asyncio.timeout(5):
        while True:
            await keyring.authenticate(require_pool(), key)
            await asyncio.sleep(0.01)


async def test_a_session_that_does_not_listen_is_taken_for_a_lost_one(db: Settings) -> None:
    """Behind a pooler in transaction mode the session that answers may not be the one that
    LISTENs: nothing would be heard, so the listener's check treats it as lost."""
    conn = await asyncpg.connect(db.core.database_url)
    try:
        with pytest.raises(ConnectionError, match="does not LISTEN on aiserver_keys"):
            await Keyring._still_listening(conn)
        await conn.execute("LISTEN aiserver_keys")
        await Keyring._still_listening(conn)  # listening: no error
    finally:
        await conn.close()


async def test_an_admin_key_admitted_before_its_project_was_archived_changes_nothing_after(
    key: str, db: Settings
) -> None:
    """An archived project's keys refuse every request (docs/keys.md). A key admitted before
    the archiving (a request in flight, or a process whose cache is behind: up to
    API_KEY_CACHE_SECONDS while it cannot listen) must still change nothing of the project
    once the archiving has committed, as it creates no key then. Before, its change of the
    project's name, time zone or rolled-up tag keys, and its revocation of the project's keys,
    were written to the archived project."""
    pool = require_pool()
    admin = await api_keys.create_key(pool, OPERATOR, "acme", name="boss", scopes=["admin"])
    other = await api_keys.create_key(pool, OPERATOR, "acme", name="other", scopes=["read"])
    keyring = Keyring(cache_ttl_s=60)  # does not listen: the archiving is not heard
    stale = await keyring.authenticate(pool, admin.text)
    await projects.change_project(pool, OPERATOR, "acme", archived=True)
    assert await keyring.authenticate(pool, admin.text) == stale  # admitted, from the cache

    for change in ({"name": "Renamed"}, {"time_zone": "Asia/Tokyo"}, {"rollup_tags": ["team"]}):
        with pytest.raises(ProjectArchived):
            await projects.change_project(pool, stale, "acme", **change)  # type: ignore[arg-type]
    with pytest.raises(ProjectArchived):
        await api_keys.revoke_key(pool, stale, other.key.id)
    with pytest.raises(ProjectArchived):  # as before
        await api_keys.create_key(pool, stale, "acme", name="k2", scopes=["read"])
    async with pool.acquire() as conn:
        project = await conn.fetchrow("SELECT name, time_zone, rollup_tags FROM projects")
        revoked = await conn.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", other.key.id)
    assert (project["name"], project["time_zone"], project["rollup_tags"]) == ("Acme", "UTC", [])
    assert revoked is None
    # the operator still may, also as the dashboard narrows it to the project (no key of it)
    narrowed = Access(project_id=stale.project_id, project_slug="acme", scopes=stale.scopes)
    assert (await api_keys.revoke_key(pool, narrowed, other.key.id)).revoked_at is not None
    await projects.change_project(pool, OPERATOR, "acme", name="Renamed", archived=False)


async def test_a_key_admitted_before_the_archiving_writes_no_budget_and_asks_no_reprice(
    key: str, db: Settings
) -> None:
    """As for the project and its keys (above): a key admitted before its project's archiving
    created, changed and deleted the archived project's budgets, and asked for a reprice of
    its events, after the archiving had committed. Each is now refused (403 project-archived);
    the operator still may ask for the reprice."""
    pool = require_pool()
    admin = await api_keys.create_key(pool, OPERATOR, "acme", name="boss", scopes=["admin"])
    keyring = Keyring(cache_ttl_s=60)  # does not listen: the archiving is not heard
    stale = await keyring.authenticate(pool, admin.text)
    made, _ = await budgets.create_budget(
        pool, stale, name="monthly", limit_usd=Decimal(100), period="month"
    )
    await projects.change_project(pool, OPERATOR, "acme", archived=True)
    assert await keyring.authenticate(pool, admin.text) == stale  # admitted, from the cache

    with pytest.raises(ProjectArchived):
        await budgets.create_budget(pool, stale, name="daily", limit_usd=Decimal(5), period="day")
    for change in ({"name": "renamed"}, {"limit_usd": Decimal(1)}):
        with pytest.raises(ProjectArchived):
            await budgets.change_budget(pool, stale, made.budget.id, change)
    with pytest.raises(ProjectArchived):
        await budgets.delete_budget(pool, stale, made.budget.id)
    with pytest.raises(ProjectArchived):
        await runs.request_reprice(pool, stale, runs.RepriceRequest(dry_run=False))
    async with pool.acquire() as conn:
        kept = await conn.fetch("SELECT name, limit_usd FROM budgets")
        asked = await conn.fetchval("SELECT count(*) FROM usage_reprice_runs")
    assert [(b["name"], b["limit_usd"]) for b in kept] == [("monthly", Decimal(100))]
    assert asked == 0
    # the operator still may ask for a reprice of the archived project's events
    run = await runs.request_reprice(pool, OPERATOR, runs.RepriceRequest(project="acme"))
    assert run.requested_by == "operator"


async def test_a_key_made_while_the_project_is_being_archived_is_refused_at_its_commit(
    key: str, db: Settings
) -> None:
    """create_key read the project's archiving without holding its row: an archiving still in
    its transaction (which waits for the project's ingests in flight) was not seen, the new
    key's foreign key does not wait for it, and the key was made for the archived project after
    the operator had been told it is archived (a key that works again once it is restored).
    It now waits for the archiving with the row shared, and is refused."""
    pool = require_pool()
    admin = await api_keys.create_key(pool, OPERATOR, "acme", name="boss", scopes=["admin"])
    stale = await Keyring(cache_ttl_s=60).authenticate(pool, admin.text)
    archiving = await pool.acquire()
    tx = archiving.transaction()
    await tx.start()
    try:
        await archiving.execute("UPDATE projects SET archived_at = now() WHERE slug = 'acme'")
        making = asyncio.create_task(
            api_keys.create_key(pool, stale, "acme", name="late", scopes=["admin"])
        )
        await asyncio.wait({making}, timeout=0.5)
    finally:
        await tx.commit()
        await pool.release(archiving)
    with pytest.raises(ProjectArchived):
        await making
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE name = 'late'") == 0
