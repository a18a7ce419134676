"""A webhook secret replaced for the same address keeps signing beside the new one for a day:
each delivery meanwhile carries a `v1` of each, so that a receiver that knows either accepts
it; after the day, or for another address, the new secret signs alone. A key rotation of
WEBHOOK_SECRET_KEYS seals the replaced secret again too."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from aiserver.ledger.access import Access
from aiserver.ledger.budgets import service
from aiserver.ledger.budgets.alerts.delivery import deliver_due
from aiserver.ledger.budgets.store import PREVIOUS_SECRET_SIGNS
from aiserver.ledger.cli.budgets import _lines as budget_lines
from aiserver.ledger.webhooks import signing
from aiserver.ledger.webhooks.sealing import SecretBox

from ..conftest import TEST_SECRET_BOX as BOX
from ..conftest import TEST_WEBHOOK_SECRET_KEYS
from ..support.receiver import Receiver
from .test_alert_delivery import (
    ALLOWED,
    DOC,
    SCHEDULE,
    SECRET,
    Clock,
    cross,
    doc_block,
    watched_budget,
)
from .test_alert_delivery import receiver as receiver  # the fixture
from .test_budget_commits import project as project  # the fixture
from .test_webhook_sealing import in_the_clear

NEW = "whsec-the-new-one-fedcba9876543210"


def v1_values(header: str) -> list[str]:
    return [part.split("=", 1)[1] for part in header.split(",") if part.startswith("v1=")]


async def change_secret(
    pool: asyncpg.Pool, access: Access, budget_id: int, url: str, secret: str | None = NEW,
    box: SecretBox | None = BOX,
) -> tuple[datetime | None, str | None]:  # fmt: skip
    """PATCH the webhook (`url`, `secret`): (until when the replaced secret signs, the secret
    the server made when `secret` is None)."""
    changes = {"webhook_url": url} | ({} if secret is None else {"webhook_secret": secret})
    view, made = await service.change_budget(
        pool, access, budget_id, changes, allowed_hosts=ALLOWED, secret_box=box
    )
    return view.budget.previous_secret_until, made


async def test_the_replaced_secret_signs_beside_the_new_one_for_a_day_then_not(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver, tmp_path: Path
) -> None:
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    before = datetime.now(UTC)
    until, made = await change_secret(pool, access, budget_id, receiver.url)
    assert made is None  # the client chose it
    assert until is not None
    assert before + PREVIOUS_SECRET_SIGNS <= until <= datetime.now(UTC) + PREVIOUS_SECRET_SIGNS
    shown = await service.show_budget(pool, access, budget_id)
    assert shown.budget.previous_secret_until == until
    (line,) = [line for line in budget_lines(shown) if line.startswith("  webhook:")]
    assert line.startswith(f"  webhook:     {receiver.url} (the replaced secret signs too until ")
    assert f"until {until:%Y-%m-%dT%H:%M}" in line

    receiver.script = [500]  # the first attempt fails: the retry after the day signs alone
    await cross(pool, access)
    clock = Clock(datetime.now(UTC))
    await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
    first = receiver.received[-1]
    header = first.headers["Aiserver-Signature"]
    assert len(v1_values(header)) == 2
    # a receiver that knows only the new secret accepts it, and so does one that knows only
    # the old one; another secret does not verify
    assert signing.verify(NEW, header, first.body)
    assert signing.verify(SECRET, header, first.body)
    assert not signing.verify("whsec-some-other-secret-000000", header, first.body)
    # and so do the recipes a receiver copies from docs/webhooks.md, with either secret
    recipe: dict[str, Any] = {}
    exec(compile(doc_block("python"), str(DOC), "exec"), recipe)  # noqa: S102 (our own docs)
    (tmp_path / "body.json").write_bytes(first.body)
    for secret in (NEW, SECRET, "whsec-some-other-secret-000000"):
        shell = subprocess.run(
            ["bash", "-c", doc_block("sh")], cwd=tmp_path, capture_output=True, text=True,
            env={"PATH": "/usr/bin:/bin", "SIGNATURE": header, "WEBHOOK_SECRET": secret},
            check=False,
        )  # fmt: skip
        verified = secret in (NEW, SECRET)
        assert (shell.stdout, shell.stderr) == ("verified\n" if verified else "", "")
        assert recipe["verify"](secret, header, first.body) is verified
    new_first = signing.sign([NEW], first.body, int(header.split(",")[0][2:]))
    assert v1_values(header)[0] == v1_values(new_first)[0]  # the current secret's comes first

    # a day later the old one signs no more (the retries go on until a day after the crossing)
    await pool.execute(
        "UPDATE budget_alerts SET next_attempt_at = $1", until + timedelta(seconds=1)
    )
    clock.at(until + timedelta(seconds=1))
    assert (await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE,
                              clock=clock)).delivered == 1  # fmt: skip
    last = receiver.received[-1]
    assert len(v1_values(last.headers["Aiserver-Signature"])) == 1
    # (signed at this machine's time: the clock the test moves is the schedule's)
    assert signing.verify(NEW, last.headers["Aiserver-Signature"], last.body)
    assert not signing.verify(SECRET, last.headers["Aiserver-Signature"], last.body)


async def test_another_address_or_none_forgets_the_replaced_secret(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    until, _ = await change_secret(pool, access, budget_id, receiver.url)
    assert until is not None
    # a second change within the day: the secret it replaces is the one that signs beside it
    until, made = await change_secret(pool, access, budget_id, receiver.url, secret=None)
    assert until is not None
    assert made is not None
    await cross(pool, access)
    await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE)
    got = receiver.received[-1]
    assert len(v1_values(got.headers["Aiserver-Signature"])) == 2
    assert signing.verify(made, got.headers["Aiserver-Signature"], got.body)
    assert signing.verify(NEW, got.headers["Aiserver-Signature"], got.body)
    assert not signing.verify(SECRET, got.headers["Aiserver-Signature"], got.body)

    # another address: a new receiver, which never knew the old secret
    other = f"{receiver.url}&moved=1"
    until, _ = await change_secret(pool, access, budget_id, other, secret=SECRET)
    assert until is None
    row = await pool.fetchrow(
        "SELECT webhook_previous_secret, webhook_previous_secret_key_id, webhook_previous_until"
        " FROM budgets WHERE id = $1",
        budget_id,
    )
    assert tuple(row) == (None, None, None)
    # and none: the webhook and any previous secret gone
    await change_secret(pool, access, budget_id, other, secret=NEW)
    view, _ = await service.change_budget(pool, access, budget_id, {"webhook_url": None})
    assert view.budget.previous_secret_until is None
    assert await pool.fetchval(
        "SELECT webhook_previous_secret FROM budgets WHERE id = $1", budget_id
    ) is None  # fmt: skip


async def test_a_key_rotation_seals_the_replaced_secret_again(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """WEBHOOK_SECRET_KEYS=old,new then new,old: the task runner's start seals both secrets
    with the new key, and once the old key is gone both still sign."""
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    await change_secret(pool, access, budget_id, receiver.url)  # both sealed with the test key
    fresh = base64.b64encode(b"another key of 32 bytes, for it.").decode()
    rotating = SecretBox.of([fresh, TEST_WEBHOOK_SECRET_KEYS])
    assert rotating is not None
    assert await service.seal_secrets(pool, rotating) == (1, 0)
    keys = await pool.fetchrow(
        "SELECT webhook_secret_key_id, webhook_previous_secret_key_id FROM budgets WHERE id = $1",
        budget_id,
    )
    assert keys[0] == keys[1] == rotating.current
    assert await service.seal_secrets(pool, rotating) == (0, 0)  # nothing left to do

    await cross(pool, access)
    alone = SecretBox.of([fresh])  # the old key removed
    assert alone is not None
    assert (await deliver_due(pool, ALLOWED, secret_box=alone, schedule=SCHEDULE)).delivered == 1
    got = receiver.received[-1]
    assert signing.verify(NEW, got.headers["Aiserver-Signature"], got.body)
    assert signing.verify(SECRET, got.headers["Aiserver-Signature"], got.body)


async def test_a_replaced_secret_that_no_key_opens_leaves_the_new_one_signing(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    await change_secret(pool, access, budget_id, receiver.url)
    # as if the previous secret had been sealed with a key no longer configured
    await pool.execute(
        "UPDATE budgets SET webhook_previous_secret_key_id = 'gone' WHERE id = $1", budget_id
    )
    await cross(pool, access)
    assert (await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE)).delivered == 1
    got = receiver.received[-1]
    assert v1_values(got.headers["Aiserver-Signature"]) == v1_values(
        signing.sign(NEW, got.body, int(got.headers["Aiserver-Signature"].split(",")[0][2:]))
    )


# -- found by a review of the first version -------------------------------------------------


async def test_resending_the_current_secret_keeps_the_replaced_one_signing(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """SECRET -> NEW, then the same PATCH again (a client that re-applies its configuration):
    the secret is not changed, so SECRET still signs beside NEW for the rest of the day. (The
    first version moved NEW to `webhook_previous_secret`, where delivery dropped it as a
    duplicate, and forgot SECRET at once.)"""
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    first, _ = await change_secret(pool, access, budget_id, receiver.url, secret=NEW)
    again, _ = await change_secret(pool, access, budget_id, receiver.url, secret=NEW)
    await cross(pool, access)
    assert (await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE)).delivered == 1
    got = receiver.received[-1]
    assert signing.verify(NEW, got.headers["Aiserver-Signature"], got.body)
    # a receiver that still knows only the old secret is refused on the code under review
    assert signing.verify(SECRET, got.headers["Aiserver-Signature"], got.body)
    assert again == first  # nothing changed: the overlap keeps its end


async def test_the_same_secret_sent_again_replaces_nothing(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """docs/webhooks.md and the CHANGELOG: `webhook_previous_secret_until` is null "when
    nothing was replaced". A PATCH with the same address and the same secret replaces
    nothing, yet the answer (and `budgets show`) says a replaced secret signs for 24 hours."""
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    until, _ = await change_secret(pool, access, budget_id, receiver.url, secret=SECRET)
    assert until is None


async def replaced_past_its_day(pool: asyncpg.Pool, access: Access, url: str) -> int:
    """A budget whose secret was changed, the replaced one's day passed: its id."""
    budget_id = await watched_budget(pool, access, url)
    await change_secret(pool, access, budget_id, url, secret=NEW)
    await pool.execute(
        "UPDATE budgets SET webhook_previous_until = now() - interval '1 second' WHERE id = $1",
        budget_id,
    )
    return budget_id


async def test_a_key_rotation_leaves_no_secret_sealed_with_the_retired_key(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """docs/budgets.md: at start "the task runner seals every secret again with the first
    key"; then the old key is removed (a key is rotated because it may have leaked). A
    replaced secret whose day has passed is erased then (the first version kept it in the
    row, sealed with the retired key, for as long as the budget kept that address, so a copy
    of the database and the retired key still gave it back)."""
    pool, access = project
    budget_id = await replaced_past_its_day(pool, access, receiver.url)
    fresh = base64.b64encode(b"another key of 32 bytes, for it.").decode()
    rotating = SecretBox.of([fresh, TEST_WEBHOOK_SECRET_KEYS])
    assert rotating is not None
    await service.seal_secrets(pool, rotating)
    row = await pool.fetchrow(
        "SELECT webhook_previous_secret, webhook_previous_secret_key_id FROM budgets WHERE id = $1",
        budget_id,
    )
    retired = BOX.current
    leftover = None
    if row["webhook_previous_secret"] is not None and row[1] == retired:
        leftover = BOX.open(row[0], row[1], access.project_id)
    assert leftover is None, f"the retired key {retired} still opens a stored secret: {leftover}"


async def test_a_secret_in_the_clear_moved_aside_is_sealed_or_erased(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """A budget whose secret is still in the clear (stored before sealing) changes its secret
    for the same address before the task runner sealed it: the clear one moves to
    `webhook_previous_secret`. `has_clear_secrets` (the task runner's warning without keys)
    sees it there, and once its day passes `seal_secrets` erases it (the first version looked
    at neither: the secret stayed in the clear at rest for good)."""
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    await in_the_clear(pool, budget_id)
    await change_secret(pool, access, budget_id, receiver.url, secret=NEW)
    assert await service.has_clear_secrets(pool)  # the task runner warns of it without keys
    await pool.execute(
        "UPDATE budgets SET webhook_previous_until = now() - interval '1 second' WHERE id = $1",
        budget_id,
    )
    await service.seal_secrets(pool, BOX)
    assert await pool.fetchval(
        "SELECT count(*) FROM budgets WHERE webhook_previous_secret = $1", SECRET
    ) == 0  # fmt: skip


async def test_an_unopenable_replaced_secret_is_not_reported_as_alerts_that_cannot_be_signed(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """A budget whose replaced secret no key opens is not counted among those whose alerts
    cannot be signed (the first version warned so, sending an operator to look for a key that
    is not needed): the current secret signs them, and the warning says just that."""
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    await change_secret(pool, access, budget_id, receiver.url, secret=NEW)
    await pool.execute(
        "UPDATE budgets SET webhook_previous_secret_key_id = 'gone' WHERE id = $1", budget_id
    )
    with capture_logs() as logs:
        await service.seal_secrets(pool, BOX)
    await cross(pool, access)
    assert (await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE)).delivered == 1
    said = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert not [e for e in said if "cannot be signed" in e], said
    assert [e for e in said if e.startswith("replaced webhook secrets that no key")], said


async def test_replaced_secrets_past_their_day_are_erased_and_only_those(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """What the task runner's start does with or without WEBHOOK_SECRET_KEYS."""
    pool, access = project
    ended = await watched_budget(pool, access, receiver.url, name="ended")
    signing_still = await watched_budget(pool, access, receiver.url, name="still")
    for budget_id in (ended, signing_still):
        await change_secret(pool, access, budget_id, receiver.url)
    await pool.execute(
        "UPDATE budgets SET webhook_previous_until = now() - interval '1 second' WHERE id = $1",
        ended,
    )
    assert await service.forget_replaced_secrets(pool) == 1
    rows = await pool.fetch(
        "SELECT id, webhook_previous_secret IS NOT NULL AS kept FROM budgets ORDER BY id"
    )
    assert [(r["id"], r["kept"]) for r in rows] == [(ended, False), (signing_still, True)]
    shown = await service.show_budget(pool, access, signing_still)
    assert shown.budget.previous_secret_until is not None


async def test_a_budget_held_for_long_with_a_secret_past_its_day_does_not_hang_the_sealing(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """A transaction that holds a budget for long (stuck) must not hang a task runner's start
    (test_webhook_sealing): nor when the budget's replaced secret is past its day, which the
    start erases first, with keys or without. The erasing waited for the budget's lock without
    a bound, and the runner never got ready."""
    pool, access = project
    budget_id = await replaced_past_its_day(pool, access, receiver.url)
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("UPDATE budgets SET name = 'held' WHERE id = $1", budget_id)
        with pytest.raises(asyncpg.LockNotAvailableError):
            await asyncio.wait_for(service.seal_secrets(pool, BOX, lock_timeout_s=0.2), 10)
    assert await service.seal_secrets(pool, BOX) == (0, 0)
    assert await pool.fetchval(
        "SELECT webhook_previous_secret FROM budgets WHERE id = $1", budget_id
    ) is None  # fmt: skip
