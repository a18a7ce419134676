"""Budget webhook secrets at rest: sealed under WEBHOOK_SECRET_KEYS, never in the clear; opened to
sign each alert; sealed again when a key is replaced; refused when no key is configured."""

from __future__ import annotations

import asyncio
import base64
import os
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from aiserver.core_db.settings import SettingsError, load_settings
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import service
from aiserver.ledger.budgets.alerts.delivery import deliver_due
from aiserver.ledger.errors import WebhooksDisabled
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.webhooks import signing
from aiserver.ledger.webhooks.sealing import SecretBox, Unopenable, key_id

from ..conftest import TEST_SECRET_BOX
from ..support.receiver import Receiver
from .test_alert_delivery import (
    ALLOWED,
    SCHEDULE,
    SECRET,
    Clock,
    alert_row,
    cross,
    watched_budget,
)
from .test_alert_delivery import receiver as receiver  # the fixture
from .test_budget_commits import project as project  # the fixture


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def _stored(pool: asyncpg.Pool, budget_id: int) -> tuple[str | None, str | None]:
    row = await pool.fetchrow(
        "SELECT webhook_secret, webhook_secret_key_id FROM budgets WHERE id = $1", budget_id
    )
    assert row is not None
    return row["webhook_secret"], row["webhook_secret_key_id"]


def test_a_sealed_secret_opens_with_its_key_for_its_project_only() -> None:
    old, new = _key(), _key()
    box = SecretBox.of([old])
    assert box is not None
    sealed = box.seal(SECRET, 7)
    assert SECRET not in sealed.value
    assert box.seal(SECRET, 7).value != sealed.value  # a fresh nonce each time
    assert box.open(sealed.value, sealed.key_id, 7) == SECRET
    with pytest.raises(Unopenable, match="copied from another project"):
        box.open(sealed.value, sealed.key_id, 8)
    tampered = sealed.value[:-2] + ("AA" if not sealed.value.endswith("AA") else "BB")
    with pytest.raises(Unopenable):
        box.open(tampered, sealed.key_id, 7)
    rotated = SecretBox.of([new, old])
    assert rotated is not None
    assert rotated.open(sealed.value, sealed.key_id, 7) == SECRET  # the old key still opens
    assert rotated.seal(SECRET, 7).key_id == rotated.current != sealed.key_id
    only_new = SecretBox.of([new])
    assert only_new is not None
    with pytest.raises(Unopenable, match="not in WEBHOOK_SECRET_KEYS"):
        only_new.open(sealed.value, sealed.key_id, 7)
    assert SecretBox.of([]) is None


@pytest.mark.parametrize(
    "value", ["short", "not base64 at all!!", base64.b64encode(b"x" * 31).decode()]
)
def test_a_key_that_is_not_32_bytes_of_base64_stops_the_start(value: str) -> None:
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET_KEYS: key 2: a key must be 32"):
        load_settings(LedgerSettings, {"WEBHOOK_SECRET_KEYS": f"{_key()},{value}"})


def test_the_keys_are_never_in_the_settings_repr() -> None:
    key = _key()
    settings = load_settings(LedgerSettings, {"WEBHOOK_SECRET_KEYS": key})
    assert key not in repr(settings)
    assert key_id(base64.b64decode(key)) not in repr(settings)


async def test_the_database_holds_the_secret_sealed_and_the_alert_is_signed_with_it(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    stored, sealed_with = await _stored(pool, budget_id)
    assert stored is not None
    assert SECRET not in stored
    assert sealed_with == TEST_SECRET_BOX.current
    await cross(pool, access)
    report = await deliver_due(pool, ALLOWED, secret_box=TEST_SECRET_BOX, schedule=SCHEDULE)
    assert report.delivered == 1
    last = receiver.received[-1]
    assert signing.verify(SECRET, last.headers["Aiserver-Signature"], last.body)


async def test_a_made_secret_is_shown_once_and_stored_sealed(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    pool, access = project
    view, made = await service.create_budget(
        pool, access, name="made", limit_usd=Decimal(1), period="day",
        webhook_url="http://127.0.0.1:9/hook", allowed_hosts=ALLOWED, secret_box=TEST_SECRET_BOX,
    )  # fmt: skip
    assert made is not None
    stored, _ = await _stored(pool, view.budget.id)
    assert stored is not None
    assert made not in stored
    changed, again = await service.change_budget(
        pool, access, view.budget.id, {"webhook_url": "http://127.0.0.1:9/other"},
        allowed_hosts=ALLOWED, secret_box=TEST_SECRET_BOX,
    )  # fmt: skip
    assert again is not None
    assert again != made
    assert again not in ((await _stored(pool, view.budget.id))[0] or "")
    assert changed.budget.has_webhook_secret


async def test_without_keys_a_webhook_is_refused_and_nothing_is_stored(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    pool, access = project
    with pytest.raises(WebhooksDisabled, match="WEBHOOK_SECRET_KEYS") as refused:
        await service.create_budget(
            pool, access, name="no keys", limit_usd=Decimal(1), period="day",
            webhook_url="http://127.0.0.1:9/hook", allowed_hosts=ALLOWED,
        )  # fmt: skip
    assert refused.value.status == 403
    assert await pool.fetchval("SELECT count(*) FROM budgets") == 0
    view, _ = await service.create_budget(
        pool, access, name="plain", limit_usd=Decimal(1), period="day"
    )  # a budget without a webhook needs no key
    with pytest.raises(WebhooksDisabled):
        await service.change_budget(
            pool, access, view.budget.id, {"webhook_url": "http://127.0.0.1:9/hook"},
            allowed_hosts=ALLOWED,
        )  # fmt: skip
    assert await _stored(pool, view.budget.id) == (None, None)


async def in_the_clear(pool: asyncpg.Pool, budget_id: int) -> None:
    """The budget's webhook secret (SECRET) stored as an older version wrote it: unsealed."""
    await pool.execute(
        "UPDATE budgets SET webhook_secret = $1, webhook_secret_key_id = NULL WHERE id = $2",
        SECRET,
        budget_id,
    )


async def test_a_secret_from_before_sealing_is_sealed_and_still_signs(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """A secret an older version stored in the clear signs as before, is sealed by the task
    runner's start (`seal_secrets`), and then signs the same way."""
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    await in_the_clear(pool, budget_id)
    assert await service.has_clear_secrets(pool)
    assert await service.seal_secrets(pool, TEST_SECRET_BOX) == (1, 0)
    assert not await service.has_clear_secrets(pool)
    stored, sealed_with = await _stored(pool, budget_id)
    assert stored is not None
    assert SECRET not in stored
    assert sealed_with == TEST_SECRET_BOX.current
    assert await service.seal_secrets(pool, TEST_SECRET_BOX) == (0, 0)  # nothing left to do
    await cross(pool, access)
    assert (
        await deliver_due(pool, ALLOWED, secret_box=TEST_SECRET_BOX, schedule=SCHEDULE)
    ).delivered == 1
    last = receiver.received[-1]
    assert signing.verify(SECRET, last.headers["Aiserver-Signature"], last.body)


def _box(*keys: str) -> SecretBox:
    box = SecretBox.of(keys)
    assert box is not None
    return box


async def _seal_as(pool: asyncpg.Pool, budget_id: int, box: SecretBox, project_id: int) -> None:
    sealed = box.seal(SECRET, project_id)
    await pool.execute(
        "UPDATE budgets SET webhook_secret = $1, webhook_secret_key_id = $2 WHERE id = $3",
        sealed.value, sealed.key_id, budget_id,
    )  # fmt: skip


async def test_a_replaced_key_is_sealed_away_and_an_unknown_one_is_left_alone(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    pool, access = project
    old, new, lost = _key(), _key(), _key()
    first = await watched_budget(pool, access, receiver.url, name="first")
    second = await watched_budget(pool, access, receiver.url, name="second")
    await _seal_as(pool, first, _box(old), access.project_id)
    await _seal_as(pool, second, _box(lost), access.project_id)
    rotating = _box(new, old)
    assert await service.seal_secrets(pool, rotating) == (1, 1)  # the lost key's row stays
    assert (await _stored(pool, first))[1] == _box(new).current
    assert (await _stored(pool, second))[1] == _box(lost).current
    # the old key can go: the new one alone opens what was sealed with the old one
    stored, sealed_with = await _stored(pool, first)
    assert stored is not None
    assert _box(new).open(stored, sealed_with, access.project_id) == SECRET


async def test_an_alert_whose_secret_no_key_opens_is_not_sent_and_is_retried(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """The task runner without the key that sealed a secret sends nothing unsigned or wrongly
    signed: the attempt is recorded as not sent, and once the key is configured the retry
    delivers it."""
    pool, access = project
    await watched_budget(pool, access, receiver.url)
    await cross(pool, access)
    clock = Clock(datetime.now(UTC))
    for box in (None, _box(_key())):  # no keys at all; keys without the one that sealed it
        report = await deliver_due(pool, ALLOWED, secret_box=box, schedule=SCHEDULE, clock=clock)
        assert (report.attempts, report.retrying) == (1, 1)
        clock.at((await alert_row(pool))["next_attempt_at"])
    assert receiver.received == []
    errors = await pool.fetch("SELECT error FROM webhook_deliveries ORDER BY id")
    assert [e["error"].split(":")[0] for e in errors] == ["not sent", "not sent"]
    assert TEST_SECRET_BOX.current in errors[0]["error"]
    report = await deliver_due(
        pool, ALLOWED, secret_box=TEST_SECRET_BOX, schedule=SCHEDULE, clock=clock
    )
    assert report.delivered == 1
    last = receiver.received[-1]
    assert signing.verify(SECRET, last.headers["Aiserver-Signature"], last.body)


async def test_a_secret_whose_budget_an_ingest_holds_is_sealed_with_the_new_key(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """A transaction that writes a budget's window (as ingest does: its foreign key takes the
    budget's row FOR KEY SHARE) while the task runner starts does not make the rotation pass
    over that budget: its secret is sealed with the new key, and the old key can go."""
    pool, access = project
    old, new = _key(), _key()
    budget_id = await watched_budget(pool, access, receiver.url)
    await _seal_as(pool, budget_id, _box(old), access.project_id)
    async with pool.acquire() as ingest, ingest.transaction():
        await ingest.execute(
            "INSERT INTO budget_windows (project_id, budget_id, window_start, stripe, window_end)"
            " VALUES ($1, $2, now(), 0, now() + interval '1 day')",
            access.project_id, budget_id,
        )  # fmt: skip
        assert await service.seal_secrets(pool, _box(new, old)) == (1, 0)
    stored, sealed_with = await _stored(pool, budget_id)
    assert sealed_with == _box(new).current
    assert stored is not None
    assert _box(new).open(stored, sealed_with, access.project_id) == SECRET


async def _waiting_for_a_lock(pool: asyncpg.Pool, task: asyncio.Task[object]) -> bool:
    """Whether `task` came to wait for a row lock (True) or ended without waiting (False)."""
    while not task.done():
        if await pool.fetchval(
            "SELECT EXISTS (SELECT FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock')"
        ):
            return True
        await asyncio.sleep(0.01)  # polling for a condition; the assertion is on the state
    return False


async def test_a_secret_whose_budget_is_being_renamed_is_sealed_with_the_new_key(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """A change of a budget's name, committing while the task runner seals secrets with a new
    key, does not leave that budget's secret sealed with the old key (which the operator then
    removes): the rotation waits for the change and seals it."""
    pool, access = project
    old, new = _key(), _key()
    budget_id = await watched_budget(pool, access, receiver.url)
    await _seal_as(pool, budget_id, _box(old), access.project_id)
    async with pool.acquire() as change:
        renaming = change.transaction()
        await renaming.start()
        await change.execute("UPDATE budgets SET name = 'renamed' WHERE id = $1", budget_id)
        sealing = asyncio.ensure_future(service.seal_secrets(pool, _box(new, old)))
        waited = await _waiting_for_a_lock(pool, sealing)
        await renaming.commit()
        assert await sealing == (1, 0)
        assert waited
    stored, sealed_with = await _stored(pool, budget_id)
    assert sealed_with == _box(new).current
    assert stored is not None
    assert _box(new).open(stored, sealed_with, access.project_id) == SECRET


async def test_a_budget_held_for_long_fails_the_sealing_instead_of_hanging_it(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """A transaction that holds a budget for long (stuck) must not hang a task runner's start:
    the sealing gives up after its lock timeout (the start logs it and goes on), and what it
    sealed before stays sealed."""
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    await in_the_clear(pool, budget_id)
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("UPDATE budgets SET name = 'held' WHERE id = $1", budget_id)
        with pytest.raises(asyncpg.LockNotAvailableError):
            await asyncio.wait_for(
                service.seal_secrets(pool, TEST_SECRET_BOX, lock_timeout_s=0.2), 10
            )
    assert await _stored(pool, budget_id) == (SECRET, None)
    assert await service.seal_secrets(pool, TEST_SECRET_BOX) == (1, 0)
