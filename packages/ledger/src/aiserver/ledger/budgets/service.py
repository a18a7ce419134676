"""Budgets as a project's `admin` key manages them (and its `read` keys see them): create,
list, show, change, delete. Each answer shows the budget with its current window: what it
holds now, in the project's time zone.

A budget's scope (its tags, model and period) does not change: the windows it has filled were
counted for that scope. To count something else, create another budget (and delete this one).
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Context, Decimal
from typing import TYPE_CHECKING, Any, Final

import msgspec

from aiserver.core_db.connections import MAX_BIGINT
from aiserver.core_db.logging import get_logger
from aiserver.costs.pricing.exact import ADD, MULTIPLY, SUBTRACT
from aiserver.ledger import store as project_store
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import rules, store
from aiserver.ledger.budgets.commits import Crossing, threshold_level
from aiserver.ledger.budgets.periods import window_of
from aiserver.ledger.budgets.store import Budget, WindowTotals
from aiserver.ledger.errors import InvalidField, UnknownBudget, WebhooksDisabled
from aiserver.ledger.projects import check_name, refuse_archived_by_id
from aiserver.ledger.spend.pace import about, percent, projection
from aiserver.ledger.webhooks.sealing import Sealed, SecretBox, Unopenable
from aiserver.ledger.webhooks.targets import resolve_target

#: The share of a budget used, in percent, rounded to hundredths (half even): its quotient taken
#: to far more digits than a percentage of any sane limit has, then rounded once.
_PERCENT: Final = Context(prec=60)
_HUNDREDTH: Final = Decimal("0.01")

log = get_logger(__name__)

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """The current window of a budget: what it holds and what remains (negative when a soft
    budget went past its limit)."""

    start: datetime
    end: datetime | None
    committed: Decimal
    reserved: Decimal
    remaining: Decimal
    used_percent: Decimal
    events: int
    unpriced_events: int
    partially_priced_events: int = 0

    @property
    def lower_bound(self) -> bool:
        """Whether `committed` is a lower bound: some events of the window are unpriced or
        partially priced."""
        return bool(self.unpriced_events or self.partially_priced_events)


class Pace(msgspec.Struct, frozen=True, kw_only=True):
    """Where a window's committed spend ends if it goes on as it has since the window began:
    committed × the window's length ÷ the time passed, in real time (a day of a clock change
    has its 23 or 25 hours; `aiserver.ledger.spend.pace`). An estimate, so rounded (half up,
    each figure once from the exact quotient): the amount to the cent, or under a dollar to two
    significant digits where the cent would leave fewer (0.0031 USD is not projected as 0.00),
    and of the limit to whole percent. Reservations are not spending and do not count; unpriced
    events count 0 (with some, it is a lower bound)."""

    passed: Decimal  # the share of the window passed, from PACE_FROM to 1, to 2 places (down)
    projected: Decimal  # committed at the window's end at this pace, rounded
    of_limit: Decimal  # the projection in percent of the limit, whole
    past_limit: bool  # the projection is past the limit (decided on the exact amounts)
    #: the projection is past the limit and the committed spend is not yet: a forecast worth
    #: saying (once the window is past its limit, the pages say so as a fact, not as this)
    passes_limit: bool = False

    @property
    def share(self) -> str:
        """`of_limit` in words: `124%`; `under 1%` and `just over 100%` where the whole percent
        would read 0% of a window that spends, or 100% of one that ends past its limit."""
        if self.of_limit == 0 and self.projected > 0:
            return "under 1%"
        if self.of_limit == 100 and self.past_limit:
            return "just over 100%"
        return f"{self.of_limit}%"


class BudgetView(msgspec.Struct, frozen=True, kw_only=True):
    budget: Budget
    window: Window
    as_of: datetime  # when the window was read: what its pace is measured to

    @property
    def pace(self) -> Pace | None:
        """The window's pace (`Pace`); None for a total budget (its window has no end) and
        before PACE_FROM of the window has passed."""
        if self.window.end is None:
            return None
        found = projection(self.window.committed, self.window.start, self.window.end, self.as_of)
        if found is None:
            return None
        return Pace(
            # down: near the end, 0.996 of the window is not all of it
            passed=found.passed.quantize(_HUNDREDTH, rounding=ROUND_DOWN, context=_PERCENT),
            projected=about(found.amount),
            of_limit=percent(found.amount, self.budget.limit_usd),
            past_limit=found.amount > self.budget.limit_usd,
            passes_limit=found.amount > self.budget.limit_usd >= self.window.committed,
        )

    @property
    def full(self) -> bool:
        """No room left in the window: committed and reserved reach the limit (decided on the
        exact amounts; `used_percent`, rounded down, reads 100 then and only then)."""
        return self.window.remaining <= 0

    @property
    def over_by(self) -> Decimal:
        """How much the window committed past the limit, exactly (negative: not past it)."""
        return SUBTRACT(self.window.committed, self.budget.limit_usd)


def _window(budget: Budget, start: datetime, end: datetime | None, held: WindowTotals) -> Window:
    spent = ADD(held.committed, held.reserved)
    return Window(
        start=start,
        end=end,
        committed=held.committed,
        reserved=held.reserved,
        remaining=SUBTRACT(budget.limit_usd, spent),
        # down: 100 is a window whose limit is reached, never one with a little room left
        used_percent=_PERCENT.divide(MULTIPLY(spent, 100), budget.limit_usd).quantize(
            _HUNDREDTH, rounding=ROUND_DOWN, context=_PERCENT
        ),
        events=held.events,
        unpriced_events=held.unpriced_events,
        partially_priced_events=held.partially_priced_events,
    )


async def _views(
    conn: DbConnection, project_id: int, budgets: Sequence[Budget], now: datetime
) -> list[BudgetView]:
    zone = await store.project_time_zone(conn, project_id)
    spans = {b.id: window_of(b.period, zone, now) for b in budgets}  # type: ignore[arg-type]
    held = await store.window_totals(conn, project_id, [(b.id, spans[b.id][0]) for b in budgets])
    return [
        BudgetView(
            budget=b,
            window=_window(b, *spans[b.id], held.get((b.id, spans[b.id][0]), WindowTotals())),
            as_of=now,
        )
        for b in budgets
    ]


async def _alert_reached(
    conn: DbConnection, budget: Budget, windows: Iterable[tuple[datetime, datetime | None, Decimal]]
) -> None:
    """Raise an alert for each threshold that each of `windows` (start, end, committed) is at
    or past, as the budget's limit and thresholds stand now (just set): a limit lowered below
    what the window has committed alerts at once, as spending past it would have. A threshold
    that has alerted in a window already does not alert again (`insert_alerts` skips it)."""
    reached = [
        Crossing(budget.id, start, end, threshold, budget.limit_usd, committed,
                 budget.webhook_url is not None)
        for start, end, committed in windows
        for threshold in budget.thresholds
        if threshold_level(budget.limit_usd, threshold) <= committed
    ]  # fmt: skip
    await store.insert_alerts(conn, budget.project_id, reached)


def _box(secret_box: SecretBox | None) -> SecretBox:
    """What seals a new webhook's secret; `WebhooksDisabled` when nothing can: a secret is never
    stored in the clear."""
    if secret_box is None:
        raise WebhooksDisabled(
            "budget webhooks are disabled on this server: the operator has not set "
            "WEBHOOK_SECRET_KEYS, the key that seals webhook secrets at rest"
        )
    return secret_box


def _reading(access: Access) -> int:
    """The project of a key that may see its budgets (`read` or `admin`)."""
    return access.project_key("read", "admin")


async def create_budget(
    pool: asyncpg.Pool,
    access: Access,
    *,
    name: str,
    limit_usd: Decimal,
    period: str,
    tags: Mapping[str, str] | None = None,
    model: str | None = None,
    thresholds: Sequence[Decimal] | None = None,
    hard: bool = False,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    allowed_hosts: Collection[str] = (),
    secret_box: SecretBox | None = None,
    now: datetime | None = None,
) -> tuple[BudgetView, str | None]:
    """The new budget, and the webhook secret when the server made it (shown this once). A
    webhook needs `secret_box` (WEBHOOK_SECRET_KEYS), which seals its secret at rest."""
    project_id = access.project_key("admin")
    check_name(name)
    checked_tags = rules.check_tags(tags or {})
    checked_period = rules.check_period(period)
    rules.check_model(model)
    rules.check_limit(limit_usd)
    levels = rules.check_thresholds(rules.DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    sealed = made = None
    if webhook_url is not None:
        box = _box(secret_box)
        await resolve_target(webhook_url, allowed_hosts, owner=project_id)
        secret = rules.webhook_secret(webhook_secret)
        sealed = box.seal(secret, project_id)
        made = secret if webhook_secret is None else None
    elif webhook_secret is not None:
        raise InvalidField("webhook_secret needs a webhook_url", ["webhook_secret"])
    async with pool.acquire() as conn, conn.transaction():
        # one writer per project at a time, so two creations cannot both pass the limit
        await project_store.lock_project(conn, project_id)
        await refuse_archived_by_id(conn, access, project_id)
        if await store.count_budgets(conn, project_id) >= rules.MAX_BUDGETS:
            raise InvalidField(
                f"a project has at most {rules.MAX_BUDGETS} budgets; delete one first", ["name"]
            )
        # The budget counts from the current window on, which starts with what the project
        # spent in it so far: a daily budget set at 3 pm counts the morning. Exact, since the
        # project's row is locked: no usage is being written meanwhile (ingest takes it FOR
        # KEY SHARE). So does a later window (an event may be stamped minutes ahead of the
        # clock, past midnight); each window filled alerts for the thresholds it reached.
        at = now or datetime.now(UTC)
        zone = await store.project_time_zone(conn, project_id)
        start, end = window_of(checked_period, zone, at)
        budget = await store.insert_budget(
            conn, project_id, name=name, tags=checked_tags, model=model,
            period=checked_period, limit_usd=limit_usd, thresholds=levels, hard=hard,
            webhook_url=webhook_url, webhook_secret=sealed, counts_from=start,
        )  # fmt: skip
        filled = await store.fill_window(conn, budget, start, end)
        await _alert_reached(conn, budget, filled)
        (view,) = await _views(conn, project_id, [budget], at)
    return view, made


async def list_budgets(
    pool: asyncpg.Pool, access: Access, *, now: datetime | None = None
) -> list[BudgetView]:
    project_id = _reading(access)
    async with pool.acquire() as conn:
        budgets = await store.read_budgets(conn, project_id)
        return await _views(conn, project_id, budgets, now or datetime.now(UTC))


def check_budget_id(budget_id: int) -> None:
    """`UnknownBudget` for an id no budget can have (beyond BIGINT, which asyncpg would refuse
    to send)."""
    if not 1 <= budget_id <= MAX_BIGINT:
        raise UnknownBudget(f"no budget {budget_id}")


async def show_budget(
    pool: asyncpg.Pool, access: Access, budget_id: int, *, now: datetime | None = None
) -> BudgetView:
    project_id = _reading(access)
    check_budget_id(budget_id)
    async with pool.acquire() as conn:
        budget = await store.read_budget(conn, project_id, budget_id)
        if budget is None:
            raise UnknownBudget(f"no budget {budget_id}")
        (view,) = await _views(conn, project_id, [budget], now or datetime.now(UTC))
    return view


async def change_budget(
    pool: asyncpg.Pool,
    access: Access,
    budget_id: int,
    changes: Mapping[str, Any],
    *,
    allowed_hosts: Collection[str] = (),
    secret_box: SecretBox | None = None,
    now: datetime | None = None,
) -> tuple[BudgetView, str | None]:
    """Change a budget's name, limit, thresholds, hardness or webhook (`changes` holds only
    what changes; a `webhook_url` of None removes the webhook). Returns the webhook secret when
    the server made a new one. A new webhook needs `secret_box`, as for `create_budget`."""
    project_id = access.project_key("admin")
    check_budget_id(budget_id)
    fixed = sorted(set(changes) & {"tags", "model", "period"})
    if fixed:
        raise InvalidField(
            f"{', '.join(fixed)}: a budget's scope and period stay as created (its windows were "
            "counted for them); create another budget instead",
            fixed,
        )
    unknown = sorted(set(changes) - store.UPDATABLE)
    if unknown:
        raise InvalidField(f"cannot change {', '.join(unknown)}", unknown)
    columns: dict[str, Any] = {}
    made = secret = None
    if "name" in changes:
        check_name(changes["name"])
        columns["name"] = changes["name"]
    if "limit_usd" in changes:
        columns["limit_usd"] = rules.check_limit(changes["limit_usd"])
    if "thresholds" in changes:
        columns["thresholds"] = list(rules.check_thresholds(changes["thresholds"]))
    if "hard" in changes:
        columns["hard"] = bool(changes["hard"])
    if "webhook_url" in changes:
        url = changes["webhook_url"]
        if url is None:
            if changes.get("webhook_secret") is not None:  # a secret for no webhook: a mistake
                raise InvalidField("webhook_secret needs a webhook_url", ["webhook_secret"])
            columns["webhook_url"] = columns["webhook_secret"] = None
            columns["webhook_secret_key_id"] = None
        else:
            box = _box(secret_box)
            await resolve_target(url, allowed_hosts, owner=project_id)
            given = changes.get("webhook_secret")
            secret = rules.webhook_secret(given)
            sealed = box.seal(secret, project_id)
            columns["webhook_url"] = url
            columns["webhook_secret"] = sealed.value
            columns["webhook_secret_key_id"] = sealed.key_id
            made = secret if given is None else None
    elif "webhook_secret" in changes:
        raise InvalidField("webhook_secret changes with webhook_url: send both", ["webhook_secret"])
    levels_change = "limit_usd" in columns or "thresholds" in columns
    async with pool.acquire() as conn, conn.transaction():
        if levels_change:
            # No usage of the project is written meanwhile (ingest takes its row FOR KEY
            # SHARE, and reads the budgets after): an ingest either finished with the old
            # levels before this reads the window, or starts with the new ones after.
            await project_store.lock_project(conn, project_id)
        await refuse_archived_by_id(conn, access, project_id)
        if "webhook_url" in columns:
            old = await store.lock_webhook(conn, project_id, budget_id)
            at = now or datetime.now(UTC)
            columns |= _replaced(old, columns["webhook_url"], secret, secret_box, project_id, at)
        budget = await store.update_budget(conn, project_id, budget_id, columns)
        if budget is None:
            raise UnknownBudget(f"no budget {budget_id}")
        (view,) = await _views(conn, project_id, [budget], now or datetime.now(UTC))
        if levels_change:
            window = view.window
            await _alert_reached(conn, budget, [(window.start, window.end, window.committed)])
    return view, made


def _replaced(
    old: store.Webhook | None,
    url: str | None,
    secret: str | None,
    box: SecretBox | None,
    project_id: int,
    now: datetime,
) -> dict[str, Any]:
    """The columns a change of the webhook to `url` with `secret` sets beside its own, for the
    secret it replaces: the same address with another secret keeps the old one signing beside
    it for `store.PREVIOUS_SECRET_SIGNS`; the same address and the same secret change nothing
    (the secret stays as it was sealed, any replaced one with its end); another address, or
    none, forgets the old secret."""
    if url is None or old is None or old.url != url:
        return dict.fromkeys(_PREVIOUS, None)
    try:
        same = (
            box is not None
            and secret is not None
            and hmac.compare_digest(box.open(old.secret, old.key_id, project_id).encode(),
                                    secret.encode())
        )  # fmt: skip
    except Unopenable:  # the stored one cannot be compared: the new one replaces it
        same = False
    if same:  # kept as stored (one in the clear: sealed now, as given)
        return {} if old.key_id is None else {"webhook_secret": old.secret,
                                               "webhook_secret_key_id": old.key_id}  # fmt: skip
    return dict(zip(_PREVIOUS, (old.secret, old.key_id, now + store.PREVIOUS_SECRET_SIGNS),
                    strict=True))  # fmt: skip


#: The columns of the secret a change replaced, while it signs beside the new one.
_PREVIOUS: Final = (
    "webhook_previous_secret", "webhook_previous_secret_key_id", "webhook_previous_until"
)  # fmt: skip


async def delete_budget(pool: asyncpg.Pool, access: Access, budget_id: int) -> None:
    project_id = access.project_key("admin")
    check_budget_id(budget_id)
    async with pool.acquire() as conn, conn.transaction():
        # not while usage is being written: an ingest that counted it would find it gone
        await project_store.lock_project(conn, project_id)
        await refuse_archived_by_id(conn, access, project_id)
        if not await store.delete_budget(conn, project_id, budget_id):
            raise UnknownBudget(f"no budget {budget_id}")


#: Budgets whose webhook secrets `seal_secrets` seals in one transaction.
SEAL_BATCH: Final = 500


def _seal_again(
    box: SecretBox, row: asyncpg.Record, column: str, unopened: list[str]
) -> Sealed | None:
    """The secret of the budget's `column` sealed with the current key; None when it is sealed
    with it already, or absent, or when no key opens it (then `column` joins `unopened`)."""
    value, key_id = row[column], row[f"{column}_key_id"]
    if value is None or key_id == box.current:
        return None
    try:
        return box.seal(box.open(value, key_id, row["project_id"]), row["project_id"])
    except Unopenable:
        unopened.append(column)
        return None


async def seal_secrets(
    pool: asyncpg.Pool, box: SecretBox, *, lock_timeout_s: float = 30.0
) -> tuple[int, int]:
    """Seal with the current key every webhook secret that is in the clear (written before
    secrets were sealed) or sealed with another key of `box` (a key being replaced), a batch
    per transaction, and a replaced secret while it still signs beside the current one.
    Replaced secrets whose day has passed are erased first. Returns (sealed, left), counted
    in budgets: `left` counts those whose secret no key of `box` opens, which stays as it is
    (their deliveries fail until the key that sealed them is configured); a replaced secret no
    key opens is only logged (the current one signs). A budget that another transaction is
    changing is waited for, not passed over: once this returns, every secret that a key of
    `box` opens is sealed with the current key."""
    done = left = left_replaced = 0
    after = (0, 0)
    # their day has passed: nothing to seal
    await forget_replaced_secrets(pool, lock_timeout_s=lock_timeout_s)
    while True:
        async with pool.acquire() as conn, conn.transaction():
            # a budget held longer than this (a stuck transaction) fails the call, not hangs it
            rows = await store.secrets_to_seal(
                conn, box.current, after, SEAL_BATCH, lock_timeout_s=lock_timeout_s
            )
            sealed: list[store.Resealed] = []
            for row in rows:
                unopened: list[str] = []
                current = _seal_again(box, row, "webhook_secret", unopened)
                previous = _seal_again(box, row, "webhook_previous_secret", unopened)
                left += "webhook_secret" in unopened
                left_replaced += "webhook_previous_secret" in unopened
                if current is not None or previous is not None:
                    sealed.append(store.Resealed(row["project_id"], row["id"], current, previous))
            await store.store_sealed(conn, sealed)
        done += len(sealed)
        if len(rows) < SEAL_BATCH:
            break
        after = (rows[-1]["project_id"], rows[-1]["id"])
    if left:
        log.warning(
            "webhook secrets that no key of WEBHOOK_SECRET_KEYS opens: their alerts cannot be "
            "signed until the key that sealed them is configured again",
            budgets=left,
        )
    if left_replaced:
        log.warning(
            "replaced webhook secrets that no key of WEBHOOK_SECRET_KEYS opens: their budgets' "
            "alerts are signed with the current secret alone until the replaced one's day ends",
            budgets=left_replaced,
        )
    return done, left


async def forget_replaced_secrets(pool: asyncpg.Pool, *, lock_timeout_s: float = 30.0) -> int:
    """Erase the replaced webhook secrets whose day has passed; how many. A budget held longer
    than `lock_timeout_s` (a stuck transaction) fails the call, not hangs it."""
    async with pool.acquire() as conn:
        return await store.forget_replaced_secrets(conn, lock_timeout_s=lock_timeout_s)


async def has_clear_secrets(pool: asyncpg.Pool) -> bool:
    """Whether a budget's webhook secret is still stored in the clear."""
    async with pool.acquire() as conn:
        return await store.has_clear_secrets(conn)
