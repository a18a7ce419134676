"""Deliver budget alerts as signed webhooks, retried with backoff for up to a day; every
attempt recorded in `webhook_deliveries`.

Claims are leases, not locks held while sending. `deliver_due` claims a batch of due alerts in
one short transaction (`FOR UPDATE SKIP LOCKED`): each claimed alert gets its next attempt
number, a delivery row, and `next_attempt_at` moved `lease` ahead, then the transaction
commits. The requests go out with no transaction open, and each outcome is written in a
transaction of its own, only while the alert is still claimed by that attempt. So:

- two task runners never send the same attempt: a claimed alert is not due again until its
  lease runs out, and the lease (5 minutes) is far longer than a batch takes to send (a batch
  of 32, 8 at a time, each attempt cut at 10 seconds: at most 40 seconds);
- no database connection waits on a receiver, however slow;
- a runner that is stopped mid-send (SIGTERM past the shutdown's wait, or arq's job timeout)
  gives its claims back before it ends: each attempt it had not finished is recorded as
  `not sent: ...` (never started) or `interrupted: ...` (its request may have reached the
  receiver), and its alert is due again at once, for the next run of any runner;
- a runner that is killed outright leaves the attempt's row without an outcome; when the lease
  runs out, another runner claims the alert again as a new attempt.

In the last two cases a receiver may see an alert twice (the stop could have come after its
2xx): it should deduplicate on `alert.id`. Holding the row lock while sending would not prevent
that either, and would hold a connection per slow receiver.

Each attempt opens the budget's sealed secret with WEBHOOK_SECRET_KEYS; one that no configured
key opens is a failed attempt that sends nothing (retried like any other, so deliveries resume
once the operator configures the key again).

A failed attempt (no 2xx, no answer, or a target refused by the address check) is retried
after 30 s, 1 min, 2 min, ... doubling up to 1 hour, each wait shortened at random by up to a
fifth so that alerts that failed together do not retry together, and the last one 24 hours
after the crossing; an attempt that fails then makes the alert `failed`: the runner logs a
warning (`budget alert webhook given up`, naming the budget and the reason), and the API's
/metrics counts the failed alerts (`aiserver_budget_alerts{state="failed"}`, read from the
database: the task runner serves no metrics of its own).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Collection, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import httpx
import msgspec

from aiserver.core_db.logging import get_logger
from aiserver.costs.money import money
from aiserver.ledger.budgets.alerts import store as alert_store
from aiserver.ledger.budgets.alerts.store import Claim
from aiserver.ledger.webhooks import sending
from aiserver.ledger.webhooks.sealing import SecretBox, Unopenable
from aiserver.ledger.webhooks.sending import MAX_EXCERPT, Outcome

if TYPE_CHECKING:
    import asyncpg

log = get_logger(__name__)

#: The `type` of an alert's webhook, and its `Aiserver-Event` header.
EVENT: Final = "budget.threshold_crossed"
#: A run of `deliver_due` claims batches until one is short or this many seconds have passed.
RUN_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Schedule:
    """When attempts happen, and how many at once."""

    first_retry: timedelta = timedelta(seconds=30)
    longest_wait: timedelta = timedelta(hours=1)
    give_up_after: timedelta = timedelta(hours=24)  # from the crossing
    jitter: float = 0.2  # a wait is shortened at random by up to this share of it
    lease: timedelta = timedelta(minutes=5)  # see the module's docstring
    batch: int = 32
    concurrency: int = 8
    timeout: float = sending.TIMEOUT_S


def next_attempt(
    schedule: Schedule,
    attempt: int,
    crossed_at: datetime,
    now: datetime,
    draw: Callable[[], float] = random.random,
) -> datetime | None:
    """When to try again after attempt number `attempt` failed at `now`; None: give up (the
    day after the crossing is over)."""
    deadline = crossed_at + schedule.give_up_after
    if now >= deadline:
        return None
    wait = min(schedule.first_retry * (1 << min(attempt - 1, 32)), schedule.longest_wait)
    return min(now + wait * (1 - schedule.jitter * draw()), deadline)


def payload(claim: Claim) -> bytes:
    """The body of an alert's webhook: money and percentages as exact decimal strings."""
    return msgspec.json.encode(
        {
            "type": EVENT,
            "delivery_id": claim.delivery_id,
            "attempt": claim.attempt,
            "alert": {
                "id": claim.alert_id,
                "project": claim.project_slug,
                "budget_id": claim.budget_id,
                "budget_name": claim.budget_name,
                "period": claim.budget_period,
                "window_start": claim.window_start,
                "window_end": claim.window_end,
                "threshold_percent": money(claim.threshold),
                "limit_usd": money(claim.limit_usd),
                "committed_usd": money(claim.committed),
                "currency": "USD",
                "crossed_at": claim.crossed_at,
            },
        }
    )


@dataclass(slots=True)
class DeliveryReport:
    """What a run did: attempts made, and how they ended."""

    attempts: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0

    def count(self, state: str) -> None:
        self.attempts += 1
        if state == "delivered":
            self.delivered += 1
        elif state == "failed":
            self.failed += 1
        else:
            self.retrying += 1

    def as_dict(self) -> dict[str, Any]:
        outcome = "idle" if not self.attempts else "done"
        return {"outcome": outcome, "attempts": self.attempts, "delivered": self.delivered,
                "retrying": self.retrying, "failed": self.failed}  # fmt: skip


def _now() -> datetime:
    return datetime.now(UTC)


def _open_one(box: SecretBox | None, sealed: str, key_id: str | None, project_id: int) -> str:
    """A secret as it was stored; `Unopenable` when no configured key opens it."""
    if box is None:
        if key_id is None:
            return sealed  # written before secrets were sealed
        raise Unopenable(
            f"the webhook secret is sealed with key {key_id}, and WEBHOOK_SECRET_KEYS is not set"
        )
    return box.open(sealed, key_id, project_id)


def _open(box: SecretBox | None, claim: Claim) -> list[str]:
    """The secrets that sign the claim's webhook: the budget's, then the one it replaced while
    that still signs (left out when no key opens it: the current one is the one that must);
    `Unopenable` when no configured key opens the current one."""
    secrets = [_open_one(box, claim.secret, claim.secret_key_id, claim.project_id)]
    if claim.previous_secret is not None:
        try:
            previous = _open_one(
                box, claim.previous_secret, claim.previous_secret_key_id, claim.project_id
            )
        except Unopenable:
            log.warning("a replaced webhook secret that no key opens: not signed with",
                        project_id=claim.project_id, budget_id=claim.budget_id)  # fmt: skip
        else:
            if previous != secrets[0]:
                secrets.append(previous)
    return secrets


async def _attempt(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    claim: Claim,
    allowed_hosts: Collection[str],
    schedule: Schedule,
    clock: Callable[[], datetime],
    report: DeliveryReport,
    box: SecretBox | None,
) -> None:
    body = payload(claim)
    try:
        secrets = _open(box, claim)
    except Unopenable as exc:
        outcome = Outcome(None, f"not sent: {exc}", 0.0)
    else:
        try:
            outcome = await sending.send(
                http, claim.url, secrets=secrets, body=body, allowed_hosts=allowed_hosts,
                headers={"Aiserver-Event": EVENT, "Aiserver-Delivery": str(claim.delivery_id)},
                timeout=schedule.timeout, owner=claim.project_id,
            )  # fmt: skip
        except Exception as exc:  # a failed attempt, not a failed batch
            # One alert's target must not stop the others': an error no outcome foresees is
            # this attempt's failure, recorded and retried on the schedule like any other.
            # its type only: the message may hold the URL, whose path may be a credential
            log.error("budget alert webhook attempt raised", alert_id=claim.alert_id,
                      project_id=claim.project_id, error=type(exc).__name__)  # fmt: skip
            outcome = Outcome(None, f"not sent: {type(exc).__name__}: {exc}"[:MAX_EXCERPT], 0.0)
    now = clock()
    retry = None if outcome.delivered else next_attempt(
        schedule, claim.attempt, claim.crossed_at, now
    )  # fmt: skip
    state = "delivered" if outcome.delivered else "pending" if retry else "failed"
    async with pool.acquire() as conn, conn.transaction():
        moved = await alert_store.record_attempt(
            conn, claim, status_code=outcome.status_code, error=outcome.error,
            duration_ms=Decimal(round(outcome.duration_s * 1000, 1)).quantize(Decimal("0.1")),
            state=state, next_attempt_at=retry, delivered_at=now if outcome.delivered else None,
        )  # fmt: skip
    report.count(state)
    # never the URL (its path may be a credential) nor the secret
    log.info(
        "budget alert webhook attempt",
        project_id=claim.project_id, alert_id=claim.alert_id, budget_id=claim.budget_id,
        attempt=claim.attempt, status_code=outcome.status_code, error=outcome.error,
        state=state if moved else "superseded", next_attempt_at=retry,
    )  # fmt: skip
    if state == "failed" and moved:
        # given up: no attempt follows. Counted as `aiserver_budget_alerts{state="failed"}`
        # (the API's /metrics reads it from the database). The budget by id and name, the
        # reason as the attempt recorded it; never the URL nor the secret.
        log.warning(
            "budget alert webhook given up",
            project=claim.project_slug, project_id=claim.project_id, alert_id=claim.alert_id,
            budget_id=claim.budget_id, budget_name=claim.budget_name, attempts=claim.attempt,
            crossed_at=claim.crossed_at.isoformat(), status_code=outcome.status_code,
            reason=_reason(outcome),
        )  # fmt: skip


def _reason(outcome: Outcome) -> str:
    """Why an attempt failed, in one line: its answer's status and excerpt, or its error."""
    if outcome.status_code is None:
        return outcome.error or "no answer"
    return f"HTTP {outcome.status_code}" + (f": {outcome.error}" if outcome.error else "")


async def deliver_due(
    pool: asyncpg.Pool,
    allowed_hosts: Collection[str],
    *,
    schedule: Schedule | None = None,
    secret_box: SecretBox | None = None,
    clock: Callable[[], datetime] = _now,
) -> DeliveryReport:
    """Send every alert that is due (in batches, for up to `RUN_S` seconds), each once, signed
    with its budget's secret as `secret_box` (WEBHOOK_SECRET_KEYS) opens it."""
    schedule = schedule or Schedule()
    report = DeliveryReport()
    slots = asyncio.Semaphore(schedule.concurrency)
    started = time.monotonic()

    unfinished: dict[int, Claim] = {}  # by delivery id: claimed, outcome not written
    begun: set[int] = set()  # of those, the ones whose request may have gone out

    async def attempt(claim: Claim, client: httpx.AsyncClient) -> None:
        async with slots:
            begun.add(claim.delivery_id)
            await _attempt(pool, client, claim, allowed_hosts, schedule, clock, report, secret_box)
            del unfinished[claim.delivery_id]

    try:
        async with sending.client() as client:
            while True:
                async with pool.acquire() as conn, conn.transaction():
                    claims = await alert_store.claim_due(
                        conn, clock(), schedule.batch, schedule.lease
                    )
                unfinished.update((c.delivery_id, c) for c in claims)
                await _all(attempt(c, client) for c in claims)
                if len(claims) < schedule.batch or time.monotonic() - started > RUN_S:
                    return report
    except BaseException:  # cancelled (a stop, a timeout) or failed: give the claims back
        if unfinished:
            await _give_back(pool, list(unfinished.values()), begun, clock())
        raise


async def _all(attempts: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run `attempts` together. If one fails, the others are cancelled and waited for before
    the failure goes on: no attempt may still be sending when its claim is given back (another
    runner could then send the same alert at once). `asyncio.gather` alone leaves them running."""
    tasks = [asyncio.ensure_future(a) for a in attempts]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _give_back(
    pool: asyncpg.Pool, claims: list[Claim], begun: Collection[int], now: datetime
) -> None:
    """Record `claims` as attempts the run did not finish and make their alerts due at `now`,
    so that the next run sends them instead of waiting out their lease. Best effort: if the
    database cannot be reached, the leases run out as for a runner that was killed."""
    errors = [
        "interrupted: the task runner stopped during the attempt (the receiver may have got it)"
        if c.delivery_id in begun
        else "not sent: the task runner stopped before the attempt"
        for c in claims
    ]
    try:
        async with pool.acquire() as conn, conn.transaction():
            moved = await alert_store.release_claims(conn, claims, errors, now)
    except Exception as exc:  # the stop goes on; the leases end on their own
        log.warning("budget alert claims not given back; they are due when their lease ends",
                    claims=len(claims), error=repr(exc))  # fmt: skip
    else:
        log.info("budget alert claims given back on stop", claims=len(claims), due_now=moved)
