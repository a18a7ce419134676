"""Hard limits by reservation: hold an estimate on every hard budget a coming call matches, or
refuse it and hold nothing; the event that carries the reservation's id settles it once.

Admission is a conditional UPDATE, never a check followed by a write: PostgreSQL re-checks
the condition after waiting for the row's lock, so callers on any number of API replicas
cannot jointly pass a limit. The database is the only source of truth.

A window of a hard budget is spread over `STRIPES` rows so that one hot budget is not one hot
row. Stripe 0 holds what ingest commits; stripes 1 to N-1 hold reservations. Each stripe has a
share of the limit (`share`), and the shares of a window sum to its limit exactly, so a stripe
that keeps within its share keeps the window within its limit. A reservation tries one stripe
(chosen at random); when that stripe cannot hold it, the window's stripes are all locked in
order, the estimate is checked against the whole window (committed plus reserved of every
stripe), and, if it fits, the shares are cut anew: each stripe keeps what it holds, the
estimate goes to the chosen stripe, and the room left is split among the reservation stripes.
So a reservation is refused only when the whole window cannot hold it.

Settling moves the event's cost, which ingest commits to stripe 0, out of the reserving
stripe's share into stripe 0's, up to the estimate the stripe held: the shares still sum to the
limit, the reserving stripe keeps the room its estimate left unused, and what a call cost
beyond its estimate stays on stripe 0, past its share, where the quick way sees it (a window
past its limit admits nothing on any stripe until it is cut anew). Moved whole, the overrun
left the reserving stripe past its own share, which the quick way does not look at, and the
other stripes went on admitting.

Only `hard` budgets admit or refuse; soft budgets only count what is spent (and alert).

The quick way, one stripe per budget, is one statement (`store.reserve_many`, the database
function `ledger_reserve_many`): one round trip and one implicit transaction, shared by the
reservations of the project that arrive together (`batches`), each all or nothing on its own.
Its windows are computed here, in the project's time zone as this process last saw it; the
statement checks that zone and refuses to reserve anything when it changed. The cutting anew is
the slow way: a transaction of several statements (`_reserve`).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Context, Decimal, localcontext
from typing import TYPE_CHECKING, Final
from uuid import UUID

from aiserver.costs.money import money
from aiserver.costs.pricing.exact import ADD, MULTIPLY, SUBTRACT
from aiserver.ledger import store as project_store
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import rules
from aiserver.ledger.budgets.commits import BudgetScope, Spend, WindowSum, matches
from aiserver.ledger.budgets.periods import current_starts, window_of
from aiserver.ledger.budgets.reservations import batches, store
from aiserver.ledger.budgets.reservations.store import Held, Hold, StripeKey
from aiserver.ledger.errors import (
    BudgetExceeded,
    InvalidEvent,
    InvalidField,
    ReservationConflict,
    UnknownReservation,
)
from aiserver.ledger.text import has_control
from aiserver.ledger.usage.events import check_tags as check_event_tags

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection

#: Rows per window of a hard budget: stripe 0 for commits, the others for reservations.
STRIPES: Final = 8
DEFAULT_TTL: Final = timedelta(minutes=10)
MIN_TTL: Final = timedelta(seconds=1)
MAX_TTL: Final = timedelta(hours=24)
#: The finest unit a share is cut to (the last reservation stripe takes the remainder).
_SHARE_UNIT: Final = Decimal("1e-12")
#: The context of a part of the room left (divided, then cut down to _SHARE_UNIT).
_EXACT: Final = Context(prec=80)
SWEEP_BATCH: Final = 500
#: How long an ended reservation (settled, released, expired) is kept: far past any repeat of
#: its reserve or release (a client's retries take minutes), then forgotten by the sweep.
KEEP_ENDED: Final = timedelta(days=30)
#: The most ended reservations one sweep forgets (the sweep runs every minute).
FORGET_PER_SWEEP: Final = 20 * SWEEP_BATCH
#: Each project's time zone as this process last read it, for the windows of the quick way; a
#: hint, never trusted: the statement checks it. Forgotten whole past `_MAX_ZONES` projects.
_ZONES: dict[int, str] = {}
_MAX_ZONES: Final = 10_000
_RESERVATION_ID: Final = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


@dataclass(frozen=True, slots=True)
class Reservation:
    id: UUID
    amount: Decimal
    expires_at: datetime
    holds: tuple[Hold, ...]
    state: str = "held"
    repeated: bool = False  # its id was asked for before: this is the reservation made then


@dataclass(frozen=True, slots=True)
class Settling:
    """An event just recorded in the ingest transaction that names a reservation."""

    event_key: str
    event_id: int
    reservation_id: str
    spend: Spend


#: Decimal places an estimate may have (after trailing zeros are dropped): far more than any
#: price times any usage has, and few enough for every statement to carry.
MAX_ESTIMATE_PLACES: Final = 30


def check_estimate(amount: Decimal) -> Decimal:
    if not amount.is_finite() or amount <= 0 or amount > rules.MAX_LIMIT:
        raise InvalidField(
            f"estimate must be a decimal above 0 and at most {rules.MAX_LIMIT:,.0f}",
            ["estimate"],
        )
    if rules.places(amount) > MAX_ESTIMATE_PLACES:
        raise InvalidField(
            f"estimate must have at most {MAX_ESTIMATE_PLACES} decimal places", ["estimate"]
        )
    return amount


def _check_models(models: Sequence[str]) -> Sequence[str]:
    """The call's model names, under the rule of an event's (it will report them): not blank,
    no control character (PostgreSQL cannot store NUL)."""
    if any(has_control(model) or not model.strip() for model in models):
        raise InvalidField("model must not be blank or hold control characters", ["model"])
    return models


def _check_tags(tags: Mapping[str, str]) -> Mapping[str, str]:
    """The call's tags, under the rules of an event's (it will report them)."""
    try:
        check_event_tags(tags)
    except InvalidEvent as exc:
        raise InvalidField(str(exc), exc.fields) from None
    return tags


def check_ttl(ttl: timedelta | None) -> timedelta:
    if ttl is None:
        return DEFAULT_TTL
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidField(
            f"expires_in_seconds must be {MIN_TTL.seconds} to {int(MAX_TTL.total_seconds())}",
            ["expires_in_seconds"],
        )
    return ttl


def cut(
    held: Mapping[int, Decimal], limit_usd: Decimal, take: tuple[int, Decimal]
) -> dict[int, Decimal] | None:
    """New shares of a window's stripes (`held`: what each holds now) that reserve `take` =
    (stripe, amount) on it, or None when the whole window cannot hold the amount. The shares
    sum to `limit_usd` exactly; stripe 0 gets no room beyond what it holds (nothing reserves
    there), unless it is the only stripe."""
    stripe, amount = take
    free = SUBTRACT(SUBTRACT(limit_usd, _total(held.values())), amount)
    if free < 0:
        return None
    shares = {s: ADD(h, amount) if s == stripe else h for s, h in held.items()}
    spread = [s for s in sorted(shares) if s != 0] or [0]
    with localcontext(_EXACT):  # the one inexact step: a part, cut down to _SHARE_UNIT
        part = (free / len(spread)).quantize(_SHARE_UNIT, rounding=ROUND_DOWN)
    for s in spread:
        shares[s] = ADD(shares[s], part)
    last = spread[-1]  # takes what the parts leave, so that the shares sum to the limit
    shares[last] = ADD(shares[last], SUBTRACT(free, MULTIPLY(part, len(spread))))
    return shares


def _admits(budget: store.HardBudget, tags: Mapping[str, str], models: Iterable[str]) -> bool:
    names = set(models)
    if budget.model is not None and budget.model not in names:
        return False
    return all(tags.get(key) == value for key, value in budget.tags.items())


class _MadeMeanwhile(Exception):  # a signal, not an error
    """A reservation of the call's chosen id committed while this attempt held its amounts."""


class _Recut(Exception):
    """A stripe could not hold the estimate: start over, and cut this budget's window anew."""

    def __init__(self, budget_id: int) -> None:
        self.budget_id = budget_id


async def _hold(
    conn: DbConnection, project_id: int, budget: store.HardBudget, hold: Hold,
    end: datetime | None, *, recut: bool,
) -> None:  # fmt: skip
    """Take `hold` on its stripe, or `BudgetExceeded`."""
    start, stripe, amount = hold.window_start, hold.stripe, hold.amount
    if not recut:
        key = (budget.id, start, stripe)
        if await store.take_on_stripe(conn, project_id, key, amount, budget.limit_usd):
            return
        # A conditional UPDATE that waited for the row and then found it too full keeps the
        # row locked (PostgreSQL locks the newest version before it re-checks): locking the
        # other stripes now could deadlock with a transaction that holds them. Start over.
        raise _Recut(budget.id)
    held = await store.lock_window(conn, project_id, budget.id, start, end, STRIPES)
    shares = cut(held, budget.limit_usd, (stripe, amount))
    if shares is None:
        remaining = SUBTRACT(budget.limit_usd, _total(held.values()))
        raise BudgetExceeded(
            f"budget {budget.id} ({budget.name!r}) cannot hold {money(amount)} USD more: its "
            f"limit is {money(budget.limit_usd)} and {money(remaining)} remains in this window; "
            "nothing was reserved",
            budget_id=budget.id, name=budget.name, limit_usd=money(budget.limit_usd),
            remaining=money(remaining),
        )  # fmt: skip
    await store.cut_shares(conn, project_id, budget.id, start, shares, budget.limit_usd,
                           (stripe, amount))  # fmt: skip


async def reserve(
    pool: asyncpg.Pool,
    access: Access,
    *,
    amount: Decimal,
    tags: Mapping[str, str] | None = None,
    models: Sequence[str] = (),
    ttl: timedelta | None = None,
    reservation_id: str | None = None,
    now: datetime | None = None,
) -> Reservation:
    """Hold `amount` on the current window of every hard budget that a call with `tags` and
    one of `models` (as reported, and as the catalog priced it) would count for: all of them,
    or `BudgetExceeded` naming the first that cannot, and nothing held.

    `reservation_id` (the caller's choice) makes a repeat safe: when the project has a
    reservation of that id already, it is the answer (`repeated`, in whatever state it is now)
    and nothing more is held; `ReservationConflict` when it was made for another estimate."""
    project_id = access.project_key("ingest")
    check_estimate(amount)
    checked_tags = _check_tags(tags or {})
    models = _check_models(models)
    lasts = check_ttl(ttl)
    chosen = None if reservation_id is None else _chosen_id(reservation_id)
    at = now or datetime.now(UTC)
    call = store.Call(amount, checked_tags, models, at + lasts, chosen)
    while True:
        made = await _made(pool, project_id, call, at)
        if not isinstance(made, store.Repeat):
            return made
        repeated = await _repeated(pool, project_id, made.reservation_id, amount)
        if repeated is not None:
            return repeated
        # the reservation of that id ended long ago and was forgotten meanwhile: make it anew


async def _made(
    pool: asyncpg.Pool, project_id: int, call: store.Call, at: datetime
) -> Reservation | store.Repeat:
    """The reservation of `call`, the quick way or the slow way; or a repeat of one made before."""
    quick = await _reserve_at_once(pool, project_id, call, at)
    if quick is not None and not isinstance(quick, int):
        return quick
    recut = set() if quick is None else {quick}
    while True:
        try:
            return await _reserve(pool, project_id, call, at, recut)
        except _Recut as again:
            recut.add(again.budget_id)


def _chosen_id(reservation_id: str) -> UUID:
    """The id a caller chose for its reservation: a UUID written as the API writes one."""
    parsed = _parse(reservation_id)
    if parsed is None:
        raise InvalidField(
            f"reservation_id: {reservation_id[:80]!r} is not a UUID written as 8-4-4-4-12 hex "
            "digits (e.g. a random one, uuid4)",
            ["reservation_id"],
        )
    return parsed


async def _repeated(
    pool: asyncpg.Pool, project_id: int, reservation_id: UUID, amount: Decimal
) -> Reservation | None:
    """The reservation of the chosen id that the project has already, as a repeat's answer;
    None when it is gone (ended KEEP_ENDED ago, the sweep forgot it since the repeat met it)."""
    row = await store.read_reservation(pool, project_id, reservation_id)
    if row is None:
        return None
    if row["amount"] is None:  # released before this reserve came: it holds nothing
        return Reservation(reservation_id, amount, row["expires_at"], (), state=row["state"],
                           repeated=True)  # fmt: skip
    if row["amount"] != amount:
        raise ReservationConflict(
            f"reservation {reservation_id} was made for an estimate of {money(row['amount'])} "
            f"USD, not {money(amount)}; choose a new id for another reservation"
        )
    holds = store.holds(row["budget_ids"], row["window_starts"], row["stripes"], row["amounts"])
    return Reservation(reservation_id, row["amount"], row["expires_at"], holds,
                       state=row["state"], repeated=True)  # fmt: skip


async def _reserve_at_once(
    pool: asyncpg.Pool, project_id: int, call: store.Call, at: datetime
) -> Reservation | int | store.Repeat | None:
    """The quick way, in one statement with the calls that arrive with this one: the
    reservation; or the id of a budget whose window must be cut anew; or a repeat of a
    reservation made before; or None when the project's time zone is not known here (the slow
    way reads it)."""
    for _ in range(2):  # a second time when the zone changed
        zone = _ZONES.get(project_id)
        if zone is None:
            return None
        starts = current_starts(zone, at)
        try:
            answer = await batches.reserve(pool, project_id, zone, starts, STRIPES, call)
        except store.ZoneChanged as changed:
            _remember_zone(project_id, changed.zone)
        else:
            if isinstance(answer, int | store.Repeat):
                return answer
            reservation_id, holds = answer
            return Reservation(reservation_id, call.amount, call.expires_at, holds)
    return None


def _remember_zone(project_id: int, zone: str | None) -> None:
    if zone is None:
        _ZONES.pop(project_id, None)
        return
    if len(_ZONES) >= _MAX_ZONES and project_id not in _ZONES:
        _ZONES.clear()
    _ZONES[project_id] = zone


async def _reserve(
    pool: asyncpg.Pool, project_id: int, call: store.Call, at: datetime, recut: set[int]
) -> Reservation | store.Repeat:
    """One attempt, in one transaction. Rows are locked by (budget, window, stripe): a budget's
    one stripe (the quick way), or all its stripes in order (`recut`), never some of both.
    A repeat, holding nothing, when the project has a reservation of the call's chosen id.

    In the quick way's order (`ledger_reserve_many`): a repeat of a reservation made before is
    answered before any hold; then the holds; then the reservation's row, whose insert waits
    for a reserve of the same id in flight. Taking no lock after that insert, two repeats of
    one id racing each other, either way, never wait for each other in a circle."""
    amount, tags, models = call.amount, call.tags, call.models
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                zone, budgets = await store.hard_budgets(conn, project_id)
                _remember_zone(project_id, zone)
                chosen = call.reservation_id
                if chosen is not None and await store.read_reservation(conn, project_id, chosen):
                    return store.Repeat(chosen)  # nothing was written: nothing to commit
                planned = []
                for budget in budgets:  # by id: the one lock order
                    if _admits(budget, tags, models):
                        start, end = window_of(budget.period, zone, at)
                        stripe = random.randrange(1, STRIPES) if STRIPES > 1 else 0  # noqa: S311
                        planned.append((budget, Hold(budget.id, start, stripe, amount), end))
                holds = tuple(hold for _, hold, _ in planned)
                for budget, hold, end in planned:
                    await _hold(conn, project_id, budget, hold, end, recut=budget.id in recut)
                reservation_id = await store.insert_reservation(
                    conn, project_id, amount, holds, call.expires_at, chosen
                )
                if reservation_id is None:  # one of the id committed meanwhile
                    raise _MadeMeanwhile
        except _MadeMeanwhile:  # its holds rolled back: a repeat after all
            assert call.reservation_id is not None
            return store.Repeat(call.reservation_id)
    return Reservation(reservation_id, amount, call.expires_at, holds)


def _parse(reservation_id: str) -> UUID | None:
    """The reservation id as the API writes it (8-4-4-4-12 hex digits, either case), or None.
    `UUID()` alone takes other spellings: digits of any script (int() reads a fullwidth or an
    Arabic-Indic 5 as 5), braces, `urn:uuid:`, no dashes, a leading space."""
    if not _RESERVATION_ID.fullmatch(reservation_id):
        return None
    return UUID(reservation_id)


def _releases(held: Iterable[Held]) -> dict[StripeKey, tuple[Decimal, Decimal]]:
    """(reserved, share) to subtract per stripe: each hold's amount, no share moved."""
    changes: dict[StripeKey, tuple[Decimal, Decimal]] = {}
    for reservation in held:
        for h in reservation.holds:
            key = (h.budget_id, h.window_start, h.stripe)
            reserved, share = changes.get(key, (Decimal(0), Decimal(0)))
            changes[key] = (ADD(reserved, h.amount), share)
    return changes


async def release(pool: asyncpg.Pool, access: Access, reservation_id: str) -> tuple[UUID, str]:
    """Release a held reservation; idempotent: a reservation that already ended answers its
    state. `UnknownReservation` only for an id that could name none (not a UUID as the API
    writes one).

    A release may come before its own reserve: a client whose reserve went unanswered releases
    by the id it chose, while that reserve is still on its way, or between its insert and its
    COMMIT. Finding no reservation of the id, the release writes the id down as released
    (`store.release_first`, which waits for such a reserve in progress): a reserve of it that
    comes later holds nothing. When a reserve of the id committed meanwhile, the release
    releases what it made. So the id of a project's release never holds anything after it."""
    project_id = access.project_key("ingest")
    parsed = _parse(reservation_id)
    if parsed is None:
        raise UnknownReservation(
            f"no reservation {reservation_id[:80]!r}: a reservation id is a UUID written as "
            "8-4-4-4-12 hex digits"
        )
    async with pool.acquire() as conn:
        while True:
            async with conn.transaction():
                # the project's gate first, as every writer of its budgets' windows: a budget's
                # deletion is waited for, or waits for this (never the two at once)
                await project_store.pass_gate(conn, project_id)
                # locked, then its stripes, then ended (`store.lock_held` says why)
                ended = await store.lock_held(conn, project_id, [parsed])
                if ended:
                    await store.change_stripes(conn, project_id, _releases(ended))
                    await store.end_reservations(conn, project_id, [parsed], "released")
                    return parsed, "released"
                row = await store.read_reservation(conn, project_id, parsed)
                state: str | None = None if row is None else row["state"]
                if state is None and await store.release_first(conn, project_id, parsed):
                    return parsed, "released"
                if state not in (None, "held"):
                    return parsed, state
            # a reserve of the id committed while the release looked (between its statements,
            # each of which sees what has committed when it starts): release what it made


async def release_expired(pool: asyncpg.Pool, *, now: datetime | None = None) -> int:
    """Release every held reservation whose expiry has passed (the task runner's sweep), in
    batches of `SWEEP_BATCH`, each its own transaction. Returns how many it released."""
    at = now or datetime.now(UTC)
    released = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            # the gates of the projects it is about to release in, first and in order, as every
            # writer of budgets' windows passes them: a budget's deletion is waited for, or
            # waits for this (never the two at once)
            projects, due = await store.due_projects(conn, at, SWEEP_BATCH)
            for project_id in projects:
                await project_store.pass_gate(conn, project_id)
            ended = await store.lock_due(conn, at, SWEEP_BATCH, projects)
            by_project: dict[int, list[Held]] = defaultdict(list)
            for held in ended:
                by_project[held.project_id].append(held)
            for project_id in sorted(by_project):  # one lock order: project, budget, ...
                await store.change_stripes(conn, project_id, _releases(by_project[project_id]))
            for project_id, due_here in by_project.items():  # then ended (`store.lock_held`)
                ids = [held.id for held in due_here]
                await store.end_reservations(conn, project_id, ids, "expired")
        released += len(ended)
        # the batch read was the last, or none of it could be ended now (each is being
        # released or settled: the next sweep sees them); a batch shorter than it was read
        # (some skipped) does not mean that no other project has due reservations
        if due < SWEEP_BATCH or not ended:
            return released


async def forget_ended(pool: asyncpg.Pool, *, now: datetime | None = None) -> int:
    """Delete the reservations that ended more than KEEP_ENDED ago (the task runner's sweep),
    oldest first, in batches of `SWEEP_BATCH`, at most FORGET_PER_SWEEP per call (the next
    sweep goes on). A reserve or release of such an id after that is one of an id never seen:
    a reserve makes a new reservation, a release writes the id down as released."""
    before = (now or datetime.now(UTC)) - KEEP_ENDED
    forgotten = 0
    while forgotten < FORGET_PER_SWEEP:
        async with pool.acquire() as conn:
            deleted = await store.delete_ended(conn, before, SWEEP_BATCH)
        forgotten += deleted
        if deleted < SWEEP_BATCH:
            break
    return forgotten


async def settle(
    conn: DbConnection,
    project_id: int,
    time_zone: str,
    budgets: Sequence[BudgetScope],
    settling: Sequence[Settling],
    commits: Mapping[tuple[int, datetime], WindowSum],
) -> set[str]:
    """In the ingest transaction: settle the reservations that `settling` name, each once (the
    first event naming it wins). Releases what each held, moves the event's cost, up to the
    estimate held, out of its stripe's share into stripe 0's (where ingest commits it), and
    locks first, in key order, the stripe-0 rows that ingest commits to next (`commits`: what
    it commits, by (budget id, window start)), making those that are not there yet.
    Returns the keys of the events that settled a reservation; the others named one that was
    not held (unknown, another project's, settled, released or expired)."""
    firsts: dict[UUID, Settling] = {}
    for entry in settling:
        parsed = _parse(entry.reservation_id)
        if parsed is not None and parsed not in firsts:
            firsts[parsed] = entry
    ids = sorted(firsts)
    ended = await store.lock_held(conn, project_id, ids)  # ended after its stripes (lock_held)
    by_id = {b.id: b for b in budgets}
    changes: dict[StripeKey, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for held in ended:
        spend = firsts[held.id].spend
        for h in held.holds:
            # up to what the stripe held for it: an overrun stays on stripe 0 (the module)
            moved = min(_moved(by_id.get(h.budget_id), h, spend, time_zone), h.amount)
            stripe = changes[h.budget_id, h.window_start, h.stripe]
            stripe[0] = ADD(stripe[0], h.amount)
            if moved and h.stripe != 0:
                stripe[1] = ADD(stripe[1], moved)
                committing = changes[h.budget_id, h.window_start, 0]
                committing[1] = SUBTRACT(committing[1], moved)
    await store.change_stripes(
        conn,
        project_id,
        {k: (v[0], v[1]) for k, v in changes.items()},
        also_lock={(b, start, 0): sums.window_end for (b, start), sums in commits.items()},
    )
    settled = sorted(held.id for held in ended)
    await store.end_reservations(
        conn, project_id, settled, "settled", [firsts[i].event_id for i in settled]
    )
    return {firsts[held.id].event_key for held in ended}


def _total(amounts: Iterable[Decimal]) -> Decimal:
    total = Decimal(0)
    for amount in amounts:
        total = ADD(total, amount)
    return total


def _moved(budget: BudgetScope | None, hold: Hold, spend: Spend, time_zone: str) -> Decimal:
    """The cost that ingest commits to the hold's window: the event's, when the budget counts
    it there (an unpriced event's counts once a reprice prices it; an event of another window
    counts in its own; a window from before the budget counts none)."""
    if budget is None or spend.cost is None or not matches(budget, spend):
        return Decimal(0)
    start = window_of(budget.period, time_zone, spend.occurred_at)[0]
    if start != hold.window_start or start < budget.counts_from:
        return Decimal(0)
    return spend.cost
