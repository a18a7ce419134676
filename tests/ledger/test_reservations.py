"""Hard limits by reservation: an estimate is held on every hard budget a coming call matches,
or refused with nothing held; the event that names the reservation settles it once, its cost
replacing the estimate; what is not settled is released, by hand or when it expires."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest

from aiserver.core_db.database import database, require_pool
from aiserver.costs.pricing.exact import ADD
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import reservations, service
from aiserver.ledger.budgets.periods import PERIODS, window_of
from aiserver.ledger.budgets.reservations import STRIPES, batches, cut, release_expired, reserve
from aiserver.ledger.budgets.reservations.store import Call, take_on_stripe
from aiserver.ledger.errors import (
    BudgetExceeded,
    InvalidField,
    ReservationConflict,
    UnknownReservation,
)
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.usage.bodies import decode_items
from aiserver.ledger.usage.ingest import EventResult, UsageRecorder

from ..conftest import Settings
from ..support.waits import waiting_for_a_lock
from .test_ingest import T0, _row, catalog

NOW = datetime.now(UTC).replace(microsecond=0)
CATALOG = catalog(
    _row(4, "gpt-x", T0, None, input_cost_per_token=Decimal("3e-06"),
         output_cost_per_token=Decimal("6e-06")),
)  # fmt: skip


async def _project(pool: asyncpg.Pool, slug: str, zone: str) -> Access:
    project_id = await pool.fetchval(
        "INSERT INTO projects (slug, name, time_zone) VALUES ($1, $1, $2) RETURNING id", slug, zone
    )
    return Access(project_id, slug, frozenset({"ingest", "read", "admin"}))


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with database(settings.core):
        yield require_pool()


@pytest.fixture
async def access(pool: asyncpg.Pool) -> Access:
    return await _project(pool, "p", "Europe/Berlin")


async def budget(pool: asyncpg.Pool, access: Access, limit: str, **fields: Any) -> int:
    """A hard daily budget made at `NOW` (unless told otherwise), so that it counts from the
    window the tests' reservations and events at NOW fall in, also in a run that crosses
    midnight (in Berlin or UTC) after the module was imported."""
    view, _ = await service.create_budget(
        pool, access,
        **{"name": "b", "limit_usd": Decimal(limit), "period": "day", "hard": True, "now": NOW,
           **fields},
    )  # fmt: skip
    return view.budget.id


async def window(
    pool: asyncpg.Pool, access: Access, budget_id: int, at: datetime = NOW
) -> tuple[Decimal, Decimal]:
    """(committed, reserved) of the budget's window at `at`."""
    view = await service.show_budget(pool, access, budget_id, now=at)
    return view.window.committed, view.window.reserved


def event(key: str, when: datetime, reservation: str | None, *, tokens: int = 1000,
          **tags: str) -> bytes:  # fmt: skip
    body: dict[str, Any] = {
        "id": key, "model": "gpt-x", "occurred_at": when.isoformat(), "tags": tags,
        "usage": {"input_tokens": tokens, "output_tokens": tokens // 3},
    }  # fmt: skip
    if reservation is not None:
        body["reservation_id"] = reservation
    return msgspec.json.encode(body)


async def record(pool: asyncpg.Pool, access: Access, *raws: bytes) -> list[EventResult]:
    report = await UsageRecorder(LedgerSettings()).record(
        pool, access.project_id or 0, decode_items(raws), catalog=CATALOG, raws=raws
    )
    return report.results


@pytest.mark.parametrize("way", ["quick", "slow"])
async def test_a_chosen_id_holds_once_however_its_repeats_race(
    pool: asyncpg.Pool, access: Access, way: str
) -> None:
    """Repeats of a reserve with the same chosen id, sent at once (a client's retry while its
    first request is still running) and afterwards: one reservation, its amount held once, and
    every caller answered with it. On the quick way they may share one statement (an earlier
    item makes it) or meet in two (the insert waits, then gives its holds back); on the slow
    way (the first reserve of a process, or a window cut anew) the insert meets the other."""
    hard = await budget(pool, access, "10")
    chosen = "7d0c6f7e-5b0a-4a3b-9c1e-2f4d6b8a0c3e"
    if way == "quick":
        await reserve(pool, access, amount=Decimal("0.1"), now=NOW)  # the zone, now known
    made = []
    for _ in range(3):
        if way == "slow":
            reservations._ZONES.clear()  # the slow way, as a new process's
        made += await asyncio.gather(*(
            reserve(pool, access, amount=Decimal("0.25"), reservation_id=chosen, now=NOW)
            for _ in range(6)
        ))  # fmt: skip
    assert {str(m.id) for m in made} == {chosen}
    assert sum(not m.repeated for m in made) == 1
    assert {(m.amount, m.state) for m in made} == {(Decimal("0.25"), "held")}
    assert len({m.holds for m in made}) == 1
    held = Decimal("0.35") if way == "quick" else Decimal("0.25")
    assert await window(pool, access, hard) == (Decimal(0), held)
    assert (
        await pool.fetchval("SELECT count(*) FROM budget_reservations WHERE id = $1", made[0].id)
        == 1
    )


async def test_one_statement_with_a_chosen_id_twice_and_one_made_before(
    pool: asyncpg.Pool, access: Access
) -> None:
    """`ledger_reserve_many` itself: of two calls with one id in a statement, the first makes
    the reservation and the second gives its hold back; a call whose id names a reservation
    made before takes no hold at all. Both are answered as repeats of that id."""
    hard = await budget(pool, access, "10")  # each reservation stripe's share holds 0.2
    before = await reserve(pool, access, amount=Decimal("0.1"), now=NOW,
                           reservation_id="11111111-2222-4333-8444-555555555555")  # fmt: skip
    starts = [window_of(p, "Europe/Berlin", NOW)[0] for p in PERIODS]
    expires = NOW + timedelta(minutes=1)
    twice = uuid.UUID("99999999-8888-4777-8666-555555555555")
    calls = [Call(Decimal("0.2"), {}, ["gpt-x"], expires, twice),
             Call(Decimal("0.2"), {}, ["gpt-x"], expires, twice),
             Call(Decimal("0.3"), {}, ["gpt-x"], expires, before.id),
             Call(Decimal("0.05"), {}, ["gpt-x"], expires)]  # fmt: skip
    async with pool.acquire() as conn:
        answers = await reservations.store.reserve_many(
            conn, access.project_id, "Europe/Berlin", starts, STRIPES, calls
        )
    assert isinstance(answers[0], tuple)
    assert answers[0][0] == twice
    assert answers[1:3] == [reservations.store.Repeat(twice), reservations.store.Repeat(before.id)]
    assert isinstance(answers[3], tuple)
    assert await window(pool, access, hard) == (Decimal(0), Decimal("0.35"))
    with pytest.raises(ReservationConflict, match=r"estimate of 0\.1 USD, not 0\.3"):
        await reserve(pool, access, amount=Decimal("0.3"), reservation_id=str(before.id), now=NOW)


def test_shares_sum_to_the_limit_exactly_and_give_the_estimate_to_its_stripe() -> None:
    held = {0: Decimal("0.3"), 1: Decimal("0.1"), 2: Decimal(0)}
    shares = cut(held, Decimal(1), (2, Decimal("0.25")))
    assert shares is not None
    assert sum(shares.values()) == Decimal(1)
    assert shares[0] == Decimal("0.3")  # stripe 0 (commits) gets no room
    assert shares[1] == Decimal("0.1") + Decimal("0.175")
    assert shares[2] == Decimal("0.25") + Decimal("0.175")
    assert cut(held, Decimal(1), (1, Decimal("0.6"))) == {
        0: Decimal("0.3"), 1: Decimal("0.7"), 2: Decimal(0)
    }  # fmt: skip
    assert cut(held, Decimal(1), (1, Decimal("0.600000000001"))) is None
    thirds = cut({0: Decimal(0), 1: Decimal(0), 2: Decimal(0), 3: Decimal(0)}, Decimal(1),
                 (1, Decimal(0)))  # fmt: skip
    assert thirds is not None
    assert sum(thirds.values()) == Decimal(1)
    assert thirds[1] == thirds[2] == Decimal("0.333333333333")
    # a committed cost with 76 digits: the shares still sum to the limit exactly
    long = Decimal("1." + "1" * 75)
    shares = cut({0: long, 1: Decimal(0), 2: Decimal(0)}, Decimal(999_999_999_999),
                 (1, Decimal("0.5")))  # fmt: skip
    assert shares is not None
    assert shares[0] == long
    assert ADD(ADD(shares[0], shares[1]), shares[2]) == Decimal(999_999_999_999)


async def test_a_reservation_holds_its_estimate_on_every_hard_budget_the_call_matches(
    pool: asyncpg.Pool, access: Access
) -> None:
    whole = await budget(pool, access, "10")
    search = await budget(pool, access, "5", tags={"team": "search"})
    soft = await budget(pool, access, "5", hard=False)
    ads = await budget(pool, access, "5", tags={"team": "ads"})
    other_model = await budget(pool, access, "5", model="gpt-y")
    priced_as = await budget(pool, access, "5", model="gpt-x-2026")
    made = await reserve(
        pool, access, amount=Decimal("0.25"), tags={"team": "search", "user": "u1"},
        models=["gpt-x", "gpt-x-2026"], now=NOW,
    )  # fmt: skip
    assert [h.budget_id for h in made.holds] == [whole, search, priced_as]
    assert made.expires_at == NOW + timedelta(minutes=10)
    assert {h.amount for h in made.holds} == {Decimal("0.25")}
    assert all(1 <= h.stripe < STRIPES for h in made.holds)
    for held in (whole, search, priced_as):
        assert await window(pool, access, held) == (Decimal(0), Decimal("0.25"))
    for untouched in (soft, ads, other_model):
        assert await window(pool, access, untouched) == (Decimal(0), Decimal(0))


async def test_a_call_no_hard_budget_counts_gets_a_reservation_that_holds_nothing(
    pool: asyncpg.Pool, access: Access
) -> None:
    await budget(pool, access, "1", hard=False)
    made = await reserve(pool, access, amount=Decimal(5), models=["gpt-x"], now=NOW)
    assert made.holds == ()
    (result,) = await record(pool, access, event("a", NOW, str(made.id)))
    assert (result.status, result.reservation) == ("recorded", "settled")


async def test_one_budget_that_cannot_hold_it_refuses_the_whole_reservation(
    pool: asyncpg.Pool, access: Access
) -> None:
    roomy = await budget(pool, access, "10")
    tight = await budget(pool, access, "1", name="tight")
    await reserve(pool, access, amount=Decimal("0.6"), models=["gpt-x"], now=NOW)
    with pytest.raises(BudgetExceeded) as refused:
        await reserve(pool, access, amount=Decimal("0.6"), models=["gpt-x"], now=NOW)
    problem = refused.value.problem()
    assert problem["type"] == "urn:aiserver:problem:budget-exceeded"
    assert problem["status"] == 402
    assert (problem["budget_id"], problem["budget_name"]) == (tight, "tight")
    assert (problem["limit_usd"], problem["remaining"]) == ("1", "0.4")
    # nothing of the refused reservation stayed, not even on the budget that had room
    assert await window(pool, access, roomy) == (Decimal(0), Decimal("0.6"))
    assert await window(pool, access, tight) == (Decimal(0), Decimal("0.6"))
    assert await pool.fetchval("SELECT count(*) FROM budget_reservations") == 1


async def test_a_reservation_is_refused_only_when_the_whole_window_cannot_hold_it(
    pool: asyncpg.Pool, access: Access
) -> None:
    limited = await budget(pool, access, "1")
    # a hundred cents fill the window exactly, whichever stripes they land on
    for _ in range(100):
        await reserve(pool, access, amount=Decimal("0.01"), now=NOW)
    assert await window(pool, access, limited) == (Decimal(0), Decimal(1))
    with pytest.raises(BudgetExceeded) as refused:
        await reserve(pool, access, amount=Decimal("1e-12"), now=NOW)
    assert refused.value.problem()["remaining"] == "0"
    # an estimate larger than any stripe's share, within what the window has left, is held
    await service.change_budget(pool, access, limited, {"hard": False}, now=NOW)
    other = await budget(pool, access, "1", tags={"team": "x"})
    for _ in range(10):
        await reserve(pool, access, amount=Decimal("0.05"), tags={"team": "x"}, now=NOW)
    big = await reserve(pool, access, amount=Decimal("0.5"), tags={"team": "x"}, now=NOW)
    assert [h.amount for h in big.holds] == [Decimal("0.5")]
    assert await window(pool, access, other) == (Decimal(0), Decimal(1))


async def test_concurrent_reservations_never_jointly_pass_the_limit(
    pool: asyncpg.Pool, access: Access
) -> None:
    limited = await budget(pool, access, "7.5")
    admitted: list[Decimal] = []
    refusals: list[tuple[Decimal, Decimal]] = []

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        while True:
            amount = Decimal(rng.randint(1, 40)) / 100
            try:
                await reserve(pool, access, amount=amount, now=NOW)
            except BudgetExceeded as exc:
                refusals.append((amount, Decimal(exc.problem()["remaining"])))
                return
            admitted.append(amount)

    await asyncio.gather(*(client(seed) for seed in range(16)))
    assert sum(admitted) <= Decimal("7.5")
    assert await window(pool, access, limited) == (Decimal(0), sum(admitted))
    # each refusal saw a window that could not hold its estimate
    assert all(remaining < amount for amount, remaining in refusals)
    assert Decimal("7.5") - sum(admitted) < max(amount for amount, _ in refusals)


async def test_the_event_settles_its_reservation_once_its_cost_replacing_the_estimate(
    pool: asyncpg.Pool, access: Access
) -> None:
    limited = await budget(pool, access, "1")
    made = await reserve(pool, access, amount=Decimal("0.5"), now=NOW)
    (first,) = await record(pool, access, event("a", NOW, str(made.id)))
    assert (first.status, first.reservation, first.total) == ("recorded", "settled", "0.004998")
    assert await window(pool, access, limited) == (Decimal("0.004998"), Decimal(0))
    # the retried event is a duplicate: nothing is settled or counted again
    (again,) = await record(pool, access, event("a", NOW, str(made.id)))
    assert (again.status, again.reservation) == ("duplicate", None)
    # the same key naming another reservation is another payload
    (other,) = await record(pool, access, event("a", NOW, "00000000-0000-0000-0000-000000000000"))
    assert other.status == "conflict"
    # a second event naming the settled reservation counts, and settles nothing
    (late,) = await record(pool, access, event("b", NOW, str(made.id), tokens=3000))
    assert (late.status, late.reservation, late.total) == ("recorded", "not_held", "0.015")
    assert await window(pool, access, limited) == (Decimal("0.019998"), Decimal(0))
    # the settled cost keeps its place: the rest of the limit is what can be reserved
    await reserve(pool, access, amount=Decimal("0.980002"), now=NOW)
    with pytest.raises(BudgetExceeded):
        await reserve(pool, access, amount=Decimal("1e-12"), now=NOW)
    state = await pool.fetchrow(
        "SELECT state, settled_event_id FROM budget_reservations WHERE id = $1", made.id
    )
    assert (state["state"], state["settled_event_id"]) == ("settled", first.event_id)


async def test_a_batch_settles_each_reservation_once_the_first_event_naming_it_wins(
    pool: asyncpg.Pool, access: Access
) -> None:
    limited = await budget(pool, access, "1")
    one = await reserve(pool, access, amount=Decimal("0.1"), now=NOW)
    two = await reserve(pool, access, amount=Decimal("0.2"), now=NOW)
    results = await record(
        pool, access,
        event("a", NOW, str(one.id)), event("b", NOW, str(one.id)), event("c", NOW, str(two.id)),
        event("d", NOW, None),
    )  # fmt: skip
    assert [(r.status, r.reservation) for r in results] == [
        ("recorded", "settled"), ("recorded", "not_held"), ("recorded", "settled"),
        ("recorded", None),
    ]  # fmt: skip
    assert await window(pool, access, limited) == (Decimal("0.004998") * 4, Decimal(0))
    # the first in the request, not the first by key: "z" comes before "y" here
    three = await reserve(pool, access, amount=Decimal("0.3"), now=NOW)
    z, y = await record(
        pool, access, event("z", NOW, str(three.id)), event("y", NOW, str(three.id))
    )
    assert [(z.reservation, y.reservation)] == [("settled", "not_held")]
    settled_by = await pool.fetchval(
        "SELECT settled_event_id FROM budget_reservations WHERE id = $1", three.id
    )
    assert settled_by == z.event_id


async def test_an_event_naming_a_reservation_it_cannot_settle_is_recorded_and_says_so(
    pool: asyncpg.Pool, access: Access
) -> None:
    other = await _project(pool, "q", "UTC")
    await budget(pool, other, "1")
    limited = await budget(pool, access, "1")
    theirs = await reserve(pool, other, amount=Decimal("0.5"), now=NOW)
    results = await record(
        pool, access, event("a", NOW, str(theirs.id)), event("b", NOW, "not-a-reservation")
    )
    assert [(r.status, r.reservation) for r in results] == [("recorded", "not_held")] * 2
    assert await window(pool, access, limited) == (Decimal("0.004998") * 2, Decimal(0))
    # the other project's reservation is still held
    state = await pool.fetchval("SELECT state FROM budget_reservations WHERE id = $1", theirs.id)
    assert state == "held"


async def test_release_gives_the_hold_back_once_and_then_answers_the_state(
    pool: asyncpg.Pool, access: Access
) -> None:
    limited = await budget(pool, access, "1")
    made = await reserve(pool, access, amount=Decimal("0.7"), now=NOW)
    assert await reservations.release(pool, access, str(made.id)) == (made.id, "released")
    assert await reservations.release(pool, access, str(made.id)) == (made.id, "released")
    assert await window(pool, access, limited) == (Decimal(0), Decimal(0))
    (result,) = await record(pool, access, event("a", NOW, str(made.id)))
    assert result.reservation == "not_held"
    settled = await reserve(pool, access, amount=Decimal("0.1"), now=NOW)
    await record(pool, access, event("b", NOW, str(settled.id)))
    assert await reservations.release(pool, access, str(settled.id)) == (settled.id, "settled")
    assert await window(pool, access, limited) == (Decimal("0.004998") * 2, Decimal(0))
    # another project's reservation looks exactly like none: its id is written down as
    # released in this project, and theirs stays held
    other = await _project(pool, "q", "UTC")
    theirs = await reserve(pool, other, amount=Decimal(1), now=NOW)
    for unknown in (str(theirs.id), "00000000-0000-0000-0000-000000000000"):
        assert await reservations.release(pool, access, unknown) == (uuid.UUID(unknown),
                                                                     "released")  # fmt: skip
    held = "SELECT state FROM budget_reservations WHERE project_id = $1 AND id = $2"
    assert await pool.fetchval(held, other.project_id, theirs.id) == "held"
    with pytest.raises(UnknownReservation, match="8-4-4-4-12"):
        await reservations.release(pool, access, "nope")


async def test_only_the_id_as_written_names_a_reservation(
    pool: asyncpg.Pool, access: Access
) -> None:
    """Other spellings of the same UUID (digits of another script, which int() reads as
    digits; braces; no dashes) release nothing and settle nothing."""
    made = await reserve(pool, access, amount=Decimal("0.1"), now=NOW)
    written = str(made.id)
    fullwidth = written.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})
    for alike in (fullwidth, "{" + written + "}", written.replace("-", ""), written + "\n"):
        with pytest.raises(UnknownReservation):
            await reservations.release(pool, access, alike)
    (result,) = await record(pool, access, event("alike", NOW, fullwidth))
    assert result.reservation == "not_held"
    assert await reservations.release(pool, access, written.upper()) == (made.id, "released")


async def test_expired_reservations_are_released_by_the_sweep(
    pool: asyncpg.Pool, access: Access
) -> None:
    limited = await budget(pool, access, "1")
    short = await reserve(pool, access, amount=Decimal("0.3"), ttl=timedelta(seconds=60), now=NOW)
    long = await reserve(pool, access, amount=Decimal("0.2"), ttl=timedelta(hours=1), now=NOW)
    assert await release_expired(pool, now=NOW + timedelta(seconds=59)) == 0
    assert await release_expired(pool, now=NOW + timedelta(seconds=60)) == 1
    assert await release_expired(pool, now=NOW + timedelta(seconds=60)) == 0
    assert await window(pool, access, limited) == (Decimal(0), Decimal("0.2"))
    (result,) = await record(pool, access, event("a", NOW, str(short.id)))
    assert result.reservation == "not_held"
    assert await reservations.release(pool, access, str(short.id)) == (short.id, "expired")
    # a held reservation past its expiry still settles until the sweep comes
    (settles,) = await record(pool, access, event("b", NOW, str(long.id)))
    assert settles.reservation == "settled"
    assert await window(pool, access, limited) == (Decimal("0.004998") * 2, Decimal(0))


async def test_an_expiry_outside_its_bounds_or_a_bad_estimate_is_refused(
    pool: asyncpg.Pool, access: Access
) -> None:
    for ttl in (timedelta(0), timedelta(hours=25)):
        with pytest.raises(InvalidField) as bad:
            await reserve(pool, access, amount=Decimal(1), ttl=ttl, now=NOW)
        assert bad.value.fields == ["expires_in_seconds"]
    for amount in (Decimal(0), Decimal(-1), Decimal("NaN"), Decimal("1e13")):
        with pytest.raises(InvalidField) as bad:
            await reserve(pool, access, amount=amount, now=NOW)
        assert bad.value.fields == ["estimate"]


async def test_windows_follow_the_projects_days_across_daylight_saving_changes(
    pool: asyncpg.Pool,
) -> None:
    ny = await _project(pool, "ny", "America/New_York")
    daily = await budget(pool, ny, "1", now=datetime(2026, 3, 6, tzinfo=UTC))
    # 8 March 2026: New York's clocks go from 02:00 EST to 03:00 EDT; the day is 23 hours long,
    # from 05:00 UTC to 04:00 UTC the next day
    start, end = datetime(2026, 3, 8, 5, tzinfo=UTC), datetime(2026, 3, 9, 4, tzinfo=UTC)
    before = await reserve(pool, ny, amount=Decimal("0.6"), now=start - timedelta(seconds=1))
    first = await reserve(pool, ny, amount=Decimal("0.6"), now=start)
    last = await reserve(pool, ny, amount=Decimal("0.4"), now=end - timedelta(microseconds=1))
    with pytest.raises(BudgetExceeded):
        await reserve(pool, ny, amount=Decimal("1e-12"), now=end - timedelta(hours=1))
    after = await reserve(pool, ny, amount=Decimal(1), now=end)
    assert [r.holds[0].window_start for r in (before, first, last, after)] == [
        datetime(2026, 3, 7, 5, tzinfo=UTC), start, start, end,
    ]  # fmt: skip
    # an event settles its reservation on the reservation's window and counts in its own
    (crossing,) = await record(pool, ny, event("a", end + timedelta(minutes=5), str(last.id)))
    # March 2026 is before gpt-x's first price version (T0), which prices it:
    # 1000 * 1e-06 + 333 * 2e-06
    assert (crossing.reservation, crossing.total) == ("settled", "0.001666")
    assert await window(pool, ny, daily, start) == (Decimal(0), Decimal("0.6"))
    assert await window(pool, ny, daily, end) == (Decimal("0.001666"), Decimal(1))


async def test_spend_reported_without_a_reservation_counts_against_what_can_be_reserved(
    pool: asyncpg.Pool, access: Access
) -> None:
    limited = await budget(pool, access, "0.01")
    await reserve(pool, access, amount=Decimal("0.001"), now=NOW)  # cuts the shares
    await record(pool, access, event("a", NOW, None))  # 0.004998, with no reservation
    assert await window(pool, access, limited) == (Decimal("0.004998"), Decimal("0.001"))
    with pytest.raises(BudgetExceeded) as refused:
        await reserve(pool, access, amount=Decimal("0.004003"), now=NOW)
    assert refused.value.problem()["remaining"] == "0.004002"
    await reserve(pool, access, amount=Decimal("0.004002"), now=NOW)


async def test_a_window_that_commits_took_past_its_limit_admits_no_reservation(
    pool: asyncpg.Pool, access: Access
) -> None:
    """Spend reported without a reservation goes to stripe 0 and can take the window past its
    limit; the reservation stripes still have room in their own shares. The quick way must not
    admit on them: it sees stripe 0 past its share and leaves the window to be cut anew, which
    checks the whole window and refuses."""
    limited = await budget(pool, access, "0.01")
    await reserve(pool, access, amount=Decimal("0.001"), now=NOW)  # cuts the shares
    for key in "abc":
        await record(pool, access, event(key, NOW, None))  # 0.004998 each, no reservation
    assert await window(pool, access, limited) == (Decimal("0.014994"), Decimal("0.001"))
    for _ in range(6):  # small enough for any reservation stripe's share
        with pytest.raises(BudgetExceeded) as refused:
            await reserve(pool, access, amount=Decimal("0.0005"), now=NOW)
        assert refused.value.problem()["remaining"] == "-0.005994"
    assert await window(pool, access, limited) == (Decimal("0.014994"), Decimal("0.001"))
    # the same through the statement of many (the quick way of concurrent calls)
    results = await asyncio.gather(
        *(reserve(pool, access, amount=Decimal("0.0005"), now=NOW) for _ in range(6)),
        return_exceptions=True,
    )
    assert all(isinstance(r, BudgetExceeded) for r in results), results
    assert await window(pool, access, limited) == (Decimal("0.014994"), Decimal("0.001"))


async def test_a_window_that_a_settled_overrun_took_past_its_limit_admits_no_reservation(
    pool: asyncpg.Pool, access: Access
) -> None:
    """A call that cost more than its estimate: settling moved its whole cost out of the
    reserving stripe's share into stripe 0's, which left stripe 0 at its share and the
    reserving stripe past its own (a negative share). The quick way looks at stripe 0 only, so
    the other reservation stripes went on admitting on a window past its limit (a helper's
    review: 6 of 20 admitted at 150%, the window at 210%). Now only the estimate's worth moves:
    the overrun stays on stripe 0, past its share, and stops the quick way."""
    limited = await budget(pool, access, "0.01")
    made = await reserve(pool, access, amount=Decimal("0.001"), now=NOW)
    (settled,) = await record(pool, access, event("a", NOW, str(made.id), tokens=3000))
    assert (settled.reservation, settled.total) == ("settled", "0.015")
    assert await window(pool, access, limited) == (Decimal("0.015"), Decimal(0))
    for _ in range(2 * STRIPES):  # small enough for any other stripe's share
        with pytest.raises(BudgetExceeded) as refused:
            await reserve(pool, access, amount=Decimal("0.0001"), now=NOW)
        assert refused.value.problem()["remaining"] == "-0.005"
    # the same through the statement of many (the quick way of concurrent calls)
    results = await asyncio.gather(
        *(reserve(pool, access, amount=Decimal("0.0001"), now=NOW) for _ in range(2 * STRIPES)),
        return_exceptions=True,
    )
    assert all(isinstance(r, BudgetExceeded) for r in results), results
    assert await window(pool, access, limited) == (Decimal("0.015"), Decimal(0))
    # the slow way's first try, a stripe at a time, likewise takes nothing on any stripe
    (hold,) = made.holds
    async with pool.acquire() as conn:
        for stripe in range(STRIPES):
            key = (limited, hold.window_start, stripe)
            taken = await take_on_stripe(conn, access.project_id, key, Decimal("0.0001"),
                                         Decimal("0.01"))  # fmt: skip
            assert not taken, stripe
    # once the limit is raised past what was spent, the room left can be reserved, exactly
    await service.change_budget(pool, access, limited, {"limit_usd": Decimal("0.02")}, now=NOW)
    await reserve(pool, access, amount=Decimal("0.005"), now=NOW)
    with pytest.raises(BudgetExceeded):
        await reserve(pool, access, amount=Decimal("1e-12"), now=NOW)


async def test_a_reservation_waiting_behind_a_time_zone_change_holds_on_the_new_zone_s_window(
    pool: asyncpg.Pool, access: Access
) -> None:
    """The slow way reads the project's zone with its row taken FOR KEY SHARE: a reservation
    that arrives while a zone change holds the row waits, then holds on the window of the zone
    the change committed, not on the old zone's (which the change has dropped)."""
    await budget(pool, access, "1")
    await reserve(pool, access, amount=Decimal("0.1"), now=NOW)  # the Berlin window, cut
    project_id = access.project_id or 0
    reservations._ZONES.pop(project_id, None)  # the slow way: this process knows no zone
    async with pool.acquire() as changer:
        changing = changer.transaction()
        await changing.start()
        await changer.execute("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE", project_id)
        await changer.execute(
            "UPDATE projects SET time_zone = 'Pacific/Kiritimati' WHERE id = $1", project_id
        )
        reserving = asyncio.create_task(reserve(pool, access, amount=Decimal("0.1"), now=NOW))
        await waiting_for_a_lock(pool)
        assert not reserving.done()
        await changing.commit()
        made = await reserving
    (hold,) = made.holds
    assert hold.window_start == window_of("day", "Pacific/Kiritimati", NOW)[0]
    assert hold.window_start != window_of("day", "Europe/Berlin", NOW)[0]


async def test_a_changed_limit_binds_the_next_reservation(
    pool: asyncpg.Pool, access: Access
) -> None:
    limited = await budget(pool, access, "1")
    await reserve(pool, access, amount=Decimal("0.5"), now=NOW)
    await service.change_budget(pool, access, limited, {"limit_usd": Decimal("0.6")}, now=NOW)
    with pytest.raises(BudgetExceeded) as refused:
        await reserve(pool, access, amount=Decimal("0.2"), now=NOW)
    assert (refused.value.problem()["limit_usd"], refused.value.problem()["remaining"]) == (
        "0.6", "0.1",
    )  # fmt: skip
    await reserve(pool, access, amount=Decimal("0.1"), now=NOW)
    await service.change_budget(pool, access, limited, {"limit_usd": Decimal(2)}, now=NOW)
    await reserve(pool, access, amount=Decimal("1.4"), now=NOW)
    assert await window(pool, access, limited) == (Decimal(0), Decimal(2))


async def test_after_the_first_the_reservations_take_the_quick_way_of_one_statement(
    pool: asyncpg.Pool, access: Access, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = await budget(pool, access, "10")
    search = await budget(pool, access, "10", tags={"team": "search"})
    # the first reads the project's zone and creates the windows' stripes (the slow way)
    await reserve(pool, access, amount=Decimal("0.1"), tags={"team": "search"}, now=NOW)

    async def slow_way(*args: object) -> None:
        raise AssertionError("the slow way was taken")

    monkeypatch.setattr(reservations, "_reserve", slow_way)
    made = [
        await reserve(pool, access, amount=Decimal("0.1"), tags={"team": "search"}, now=NOW)
        for _ in range(20)
    ]
    assert all([h.budget_id for h in m.holds] == [whole, search] for m in made)
    assert all(1 <= h.stripe < STRIPES for m in made for h in m.holds)
    assert await window(pool, access, whole) == (Decimal(0), Decimal("2.1"))
    assert await window(pool, access, search) == (Decimal(0), Decimal("2.1"))
    # a stripe that cannot hold it sends the reservation the slow way, which cuts anew
    with pytest.raises(AssertionError, match="the slow way was taken"):
        await reserve(pool, access, amount=Decimal(5), now=NOW)


async def test_one_statement_reserves_each_call_all_or_nothing_on_its_own(
    pool: asyncpg.Pool, access: Access
) -> None:
    roomy = await budget(pool, access, "10")
    tight = await budget(pool, access, "1")
    first = await reserve(pool, access, amount=Decimal("0.1"), now=NOW)  # cuts both windows
    starts = [window_of(p, "Europe/Berlin", NOW)[0] for p in PERIODS]
    expires = NOW + timedelta(minutes=1)

    def call(amount: str, **tags: str) -> Call:
        return Call(Decimal(amount), tags, ["gpt-x"], expires)

    async with pool.acquire() as conn:
        # the roomy budget's stripes can hold 0.5, the tight one's cannot: the second call takes
        # its hold on the roomy budget first (budget order), then gives it back
        answers = await reservations.store.reserve_many(
            conn, access.project_id, "Europe/Berlin", starts, STRIPES,
            [call("0.01"), call("0.5"), call("0.02", team="search")],
        )  # fmt: skip
        assert answers[1] == tight
        made = [a for a in answers if not isinstance(a, int)]
        assert [[(h.budget_id, h.window_start, h.amount) for h in holds] for _, holds in made] == [
            [(roomy, first.holds[0].window_start, Decimal(a)),
             (tight, first.holds[1].window_start, Decimal(a))]
            for a in ("0.01", "0.02")
        ]  # fmt: skip
        assert await window(pool, access, roomy) == (Decimal(0), Decimal("0.13"))
        assert await window(pool, access, tight) == (Decimal(0), Decimal("0.13"))
        stored = await conn.fetch(
            "SELECT id, amounts, budget_ids, stripes FROM budget_reservations WHERE id <> $1",
            first.id,
        )
        assert {(r["id"], tuple(r["amounts"])) for r in stored} == {
            (rid, (h[0].amount,) * 2) for rid, h in made
        }
        assert {(r["id"], tuple(r["stripes"])) for r in stored} == {
            (rid, tuple(x.stripe for x in h)) for rid, h in made
        }
        # windows computed in another zone than the project's: refused, with the project's zone
        with pytest.raises(reservations.store.ZoneChanged) as moved:
            await reservations.store.reserve_many(
                conn, access.project_id, "UTC", starts, STRIPES, [call("0.01")]
            )
        assert moved.value.zone == "Europe/Berlin"
        with pytest.raises(reservations.store.ZoneChanged) as unknown:
            await reservations.store.reserve_many(
                conn, 10**12, "UTC", starts, STRIPES, [call("0.01")]
            )
        assert unknown.value.zone is None
    assert await pool.fetchval("SELECT count(*) FROM budget_reservations") == 3


async def test_reservations_that_arrive_together_share_a_statement(
    pool: asyncpg.Pool, access: Access
) -> None:
    whole = await budget(pool, access, "100")
    search = await budget(pool, access, "100", tags={"team": "search"})
    await reserve(pool, access, amount=Decimal("0.1"), tags={"team": "search"}, now=NOW)
    sent = batches.SENT
    statements, calls = sent.statements, sent.calls
    made = await asyncio.gather(*(
        reserve(pool, access, amount=Decimal("0.01"), tags={"team": "search"} if i % 2 else {},
                now=NOW)
        for i in range(60)
    ))  # fmt: skip
    assert sent.calls - calls == 60
    assert sent.statements - statements < 60 / 4  # many calls per statement
    assert len({m.id for m in made}) == 60
    assert await window(pool, access, whole) == (Decimal(0), Decimal("0.7"))
    assert await window(pool, access, search) == (Decimal(0), Decimal("0.4"))
    held = await pool.fetchval(
        "SELECT sum(amount) FROM budget_reservations WHERE project_id = $1", access.project_id
    )
    assert held == Decimal("0.7")


async def test_a_statement_that_fails_fails_every_call_it_carried_and_reserves_nothing(
    pool: asyncpg.Pool, access: Access, migrated_database_url: str
) -> None:
    limited = await budget(pool, access, "10")
    await reserve(pool, access, amount=Decimal("0.1"), now=NOW)
    database = migrated_database_url.rpartition("/")[2]
    await pool.execute(f'ALTER DATABASE "{database}" SET statement_timeout = 300')
    await pool.expire_connections()
    sent = batches.SENT
    statements = sent.statements
    blocker = await asyncpg.connect(migrated_database_url)
    try:
        async with blocker.transaction():
            await blocker.execute(
                "SELECT * FROM budget_windows WHERE budget_id = $1 FOR UPDATE", limited
            )
            failed = await asyncio.gather(
                *(reserve(pool, access, amount=Decimal("0.01"), now=NOW) for _ in range(12)),
                return_exceptions=True,
            )
    finally:
        await blocker.close()
    assert all(isinstance(f, asyncpg.QueryCanceledError) for f in failed), failed
    assert sent.statements - statements < 12  # calls were carried together, and failed together
    assert await window(pool, access, limited) == (Decimal(0), Decimal("0.1"))
    assert await pool.fetchval("SELECT count(*) FROM budget_reservations") == 1
    await pool.execute(f'ALTER DATABASE "{database}" RESET statement_timeout')
    await pool.expire_connections()
    await reserve(pool, access, amount=Decimal("0.01"), now=NOW)
    assert await window(pool, access, limited) == (Decimal(0), Decimal("0.11"))


async def test_two_processes_batching_calls_of_several_budgets_never_deadlock(
    pool: asyncpg.Pool, access: Access, migrated_database_url: str
) -> None:
    """Two pools stand for two API processes; calls match different sets of budgets, so one
    statement's holds interleave budgets that another's take too: every hold is taken in the one
    lock order, and the windows end exact."""
    ids = [
        await budget(pool, access, "1000", tags=tags)
        for tags in ({}, {"team": "a"}, {"user": "u"}, {"team": "a", "user": "u"})
    ]
    await reserve(pool, access, amount=Decimal("0.1"), tags={"team": "a", "user": "u"}, now=NOW)
    shapes = [{}, {"team": "a"}, {"user": "u"}, {"team": "a", "user": "u"}]
    other = await asyncpg.create_pool(migrated_database_url, min_size=0, max_size=8)
    try:
        made = await asyncio.gather(*(
            reserve((pool, other)[i % 2], access, amount=Decimal("0.01"),
                    tags=shapes[(i // 2) % 4], now=NOW)
            for i in range(400)
        ))  # fmt: skip
    finally:
        await other.close()
    assert len(made) == 400
    expected = {ids[0]: 400, ids[1]: 200, ids[2]: 200, ids[3]: 100}
    for budget_id, calls in expected.items():
        reserved = Decimal("0.01") * calls + Decimal("0.1")
        assert await window(pool, access, budget_id) == (Decimal(0), reserved), budget_id


async def test_a_time_zone_changed_elsewhere_moves_the_next_reservation_to_its_window(
    pool: asyncpg.Pool, access: Access
) -> None:
    daily = await budget(pool, access, "10")
    at = datetime(2026, 6, 10, 2, tzinfo=UTC)  # 10 June in Berlin, still 9 June in New York
    berlin = await reserve(pool, access, amount=Decimal("0.1"), now=at)
    assert berlin.holds[0].window_start == datetime(2026, 6, 9, 22, tzinfo=UTC)
    # another API replica changes the project's zone: this process still remembers Berlin's
    await pool.execute(
        "UPDATE projects SET time_zone = 'America/New_York' WHERE id = $1", access.project_id
    )
    new_york = await reserve(pool, access, amount=Decimal("0.2"), now=at)
    assert new_york.holds[0].window_start == datetime(2026, 6, 9, 4, tzinfo=UTC)
    assert await window(pool, access, daily, at) == (Decimal(0), Decimal("0.2"))
    again = await reserve(pool, access, amount=Decimal("0.3"), now=at)  # the quick way now
    assert again.holds[0].window_start == datetime(2026, 6, 9, 4, tzinfo=UTC)


async def test_a_budget_deleted_while_a_reservation_waits_deadlocks_nothing(
    pool: asyncpg.Pool, access: Access, migrated_database_url: str
) -> None:
    """A budget's deletion holds the project's row while its windows go; the quick way takes
    that row before any stripe, so it waits for the deletion instead of holding stripes the
    deletion needs (a deadlock that PostgreSQL broke by failing one side, before)."""
    doomed = await budget(pool, access, "10")
    await reserve(pool, access, amount=Decimal("0.1"), now=NOW)  # cuts its window
    deleting = await asyncpg.connect(migrated_database_url)
    try:
        async with deleting.transaction():  # what delete_budget does, one step at a time
            await deleting.execute(
                "SELECT 1 FROM projects WHERE id = $1 FOR UPDATE", access.project_id
            )
            waiting = asyncio.ensure_future(reserve(pool, access, amount=Decimal("0.2"), now=NOW))
            await waiting_for_a_lock(pool, "SELECT * FROM ledger_reserve_many")
            await deleting.execute("DELETE FROM budgets WHERE id = $1", doomed)
        made = await waiting  # the budget is gone: nothing to hold
    finally:
        await deleting.close()
    assert made.holds == ()
    assert await pool.fetchval("SELECT count(*) FROM budget_windows") == 0


async def test_a_call_the_database_refuses_fails_alone_not_with_its_batch(
    pool: asyncpg.Pool, access: Access
) -> None:
    """A value that passed the checks and that PostgreSQL or its encoding refuses (here a NUL
    in a model name, which the checks refuse since) fails its own call only: the statement's
    calls are sent again one by one."""
    whole = await budget(pool, access, "10")
    await reserve(pool, access, amount=Decimal("0.1"), now=NOW)
    starts = tuple(window_of(p, "Europe/Berlin", NOW)[0] for p in PERIODS)
    expires = NOW + timedelta(minutes=1)
    key = (access.project_id, "Europe/Berlin", starts, STRIPES)

    async def send(model: str) -> Any:
        call = Call(Decimal("0.01"), {}, [model], expires)
        return await batches.reserve(pool, *key, call)

    answers = await asyncio.gather(
        *(send("bad\x00model" if i == 3 else "gpt-x") for i in range(8)), return_exceptions=True
    )
    assert isinstance(answers[3], asyncpg.DataError)
    good = [a for i, a in enumerate(answers) if i != 3]
    assert all(isinstance(a, tuple) and len(a[1]) == 1 for a in good), good
    assert await window(pool, access, whole) == (Decimal(0), Decimal("0.17"))
    # the checks refuse both values that reached PostgreSQL before: a NUL, a tiny exponent
    with pytest.raises(InvalidField, match="control characters"):
        await reserve(pool, access, amount=Decimal("0.1"), models=["a\x00b"], now=NOW)
    with pytest.raises(InvalidField, match="at most 30 decimal places"):
        await reserve(pool, access, amount=Decimal("1e-20000"), now=NOW)
    assert (await reserve(pool, access, amount=Decimal("1.5000000000000000000000000000000000"),
                          now=NOW)).amount == Decimal("1.5")  # fmt: skip
    assert await window(pool, access, whole) == (Decimal(0), Decimal("1.67"))


async def test_a_caller_gone_before_its_statement_is_sent_holds_nothing(
    settings: Settings, access: Access, pool: asyncpg.Pool
) -> None:
    """A call cancelled while its statement waits for a pooled connection is not sent; and a
    sender cancelled (the event loop shutting down) cancels the calls that wait for it, so that
    none waits for a statement nobody will send."""
    whole = await budget(pool, access, "10")
    await reserve(pool, access, amount=Decimal("0.1"), now=NOW)
    small = await asyncpg.create_pool(settings.core.database_url, min_size=1, max_size=1)
    starts = tuple(window_of(p, "Europe/Berlin", NOW)[0] for p in PERIODS)
    call = Call(Decimal("0.01"), {}, ["gpt-x"], NOW + timedelta(minutes=1))
    try:
        async with small.acquire():  # the only connection: the statement waits for it
            gone = asyncio.ensure_future(
                batches.reserve(small, access.project_id, "Europe/Berlin", starts, STRIPES, call)
            )
            await asyncio.sleep(0.2)
            sent = batches.SENT.calls
            gone.cancel()
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)  # the sender got the connection, and found no one to answer
        assert gone.cancelled()
        assert batches.SENT.calls == sent
        assert await window(pool, access, whole) == (Decimal(0), Decimal("0.1"))
        async with small.acquire():
            waiting = [
                asyncio.ensure_future(batches.reserve(
                    small, access.project_id, "Europe/Berlin", starts, STRIPES, call
                ))
                for _ in range(5)
            ]  # fmt: skip
            await asyncio.sleep(0.2)
            for sender in list(batches.batches().tasks):
                sender.cancel()
            done = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(d, asyncio.CancelledError) for d in done), done
        assert not batches.batches().running
        assert not batches.batches().waiting
    finally:
        await small.close()
    assert await window(pool, access, whole) == (Decimal(0), Decimal("0.1"))


@pytest.mark.parametrize("way", ["quick", "slow"])
async def test_a_release_that_comes_before_its_reserve_leaves_the_reserve_holding_nothing(
    pool: asyncpg.Pool, access: Access, way: str
) -> None:
    """A client's reserve went unanswered, and its release by the chosen id reached the server
    first: the id is written down as released (no estimate, no holds), so the reserve that
    comes later holds nothing and answers `released`; the event naming it settles nothing."""
    hard = await budget(pool, access, "1")
    chosen = "0f1e2d3c-4b5a-4968-8776-655443322110"
    if way == "quick":
        await reserve(pool, access, amount=Decimal("0.1"), now=NOW)  # the zone, now known
        await reservations.release_expired(pool, now=NOW + timedelta(hours=1))
    else:
        reservations._ZONES.clear()  # the slow way, as a new process's
    assert await reservations.release(pool, access, chosen) == (uuid.UUID(chosen), "released")
    assert await reservations.release(pool, access, chosen) == (uuid.UUID(chosen), "released")
    late = await reserve(pool, access, amount=Decimal("0.9"), reservation_id=chosen, now=NOW)
    assert (str(late.id), late.state, late.repeated, late.holds) == (chosen, "released", True, ())
    assert await window(pool, access, hard) == (Decimal(0), Decimal(0))
    (result,) = await record(pool, access, event("late", NOW, chosen))
    assert result.reservation == "not_held"
    # the whole window is still free: the late reserve took none of it
    assert (await reserve(pool, access, amount=Decimal(1) - Decimal("0.004998"), now=NOW)).holds
    row = await pool.fetchrow(
        "SELECT amount, state, budget_ids, ended_at FROM budget_reservations WHERE id = $1",
        uuid.UUID(chosen),
    )
    assert (row["amount"], row["state"], row["budget_ids"]) == (None, "released", [])
    assert row["ended_at"] is not None
    # only such a mark may lack an estimate
    for state, budget_ids in (("held", []), ("released", [hard])):
        with pytest.raises(asyncpg.CheckViolationError, match="released_first"):
            await pool.execute(
                "INSERT INTO budget_reservations (project_id, id, amount, budget_ids,"
                " window_starts, stripes, amounts, expires_at, state) VALUES ($1, $2, NULL, $3,"
                " $4, $5, $6, now(), $7)",
                access.project_id, uuid.uuid4(), budget_ids, [NOW] * len(budget_ids),
                [1] * len(budget_ids), [Decimal(1)] * len(budget_ids), state,
            )  # fmt: skip


async def test_a_release_and_its_reserve_racing_never_leave_anything_held(
    pool: asyncpg.Pool, access: Access
) -> None:
    """Releases and reserves of the same chosen ids sent at once, on both ways: whichever comes
    first, nothing stays held and the window's reserved room comes back to 0. (A release whose
    reserve committed between its update and its read answered `held` and released nothing:
    seen here in one round of 20 before the fix.)"""
    hard = await budget(pool, access, "100")
    await reserve(pool, access, amount=Decimal("0.1"), now=NOW)  # the zone, now known
    await reservations.release_expired(pool, now=NOW + timedelta(hours=1))
    for round_ in range(60):
        if round_ % 2:
            reservations._ZONES.clear()
        chosen = str(uuid.uuid4())
        calls = [reserve(pool, access, amount=Decimal("0.5"), reservation_id=chosen, now=NOW),
                 reservations.release(pool, access, chosen)]  # fmt: skip
        if round_ % 4 < 2:
            calls.reverse()
        answers = await asyncio.gather(*calls)
        # whichever came first, nothing is held once both have answered
        held = "SELECT count(*) FROM budget_reservations WHERE state = 'held'"
        assert await pool.fetchval(held) == 0, (round_, answers)
        assert await window(pool, access, hard) == (Decimal(0), Decimal(0)), (round_, answers)
        assert (uuid.UUID(chosen), "released") in answers


async def test_a_release_that_meets_its_reserve_committing_releases_what_it_made(
    pool: asyncpg.Pool, access: Access
) -> None:
    """The release arrives while the reserve of its id is between its insert and its COMMIT:
    the release's own insert waits for it, then releases the reservation it made."""
    chosen = uuid.UUID("1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d")
    async with pool.acquire() as reserving:
        tx = reserving.transaction()
        await tx.start()
        await reserving.execute(  # what a reserve writes, holding on no budget
            "INSERT INTO budget_reservations (project_id, id, amount, budget_ids, window_starts,"
            " stripes, amounts, expires_at) VALUES ($1, $2, 0.1, '{}', '{}', '{}', '{}', $3)",
            access.project_id, chosen, NOW + timedelta(minutes=10),
        )  # fmt: skip
        releasing = asyncio.create_task(reservations.release(pool, access, str(chosen)))
        await waiting_for_a_lock(pool)  # the release, at its insert
        assert not releasing.done()
        await tx.commit()
    assert await asyncio.wait_for(releasing, 30) == (chosen, "released")
    state = await pool.fetchval("SELECT state FROM budget_reservations WHERE id = $1", chosen)
    assert state == "released"


async def test_the_sweep_forgets_reservations_that_ended_30_days_ago_and_never_a_held_one(
    pool: asyncpg.Pool, access: Access
) -> None:
    """Before, every reservation stayed for ever (one row per guarded call). Ended ones are
    deleted once KEEP_ENDED has passed since they ended, oldest first, in batches; a held one
    stays whatever its age, and a forgotten id is one never seen."""
    hard = await budget(pool, access, "100")
    made = [await reserve(pool, access, amount=Decimal("0.01"), now=NOW) for _ in range(5)]
    held = await reserve(pool, access, amount=Decimal("0.02"), now=NOW)
    for r in made[:4]:
        await reservations.release(pool, access, str(r.id))
    await reservations.release(pool, access, "0f1e2d3c-4b5a-4968-8776-655443322110")  # a mark
    await record(pool, access, event("settles", NOW, str(made[4].id)))
    ages = {made[0].id: 40, made[1].id: 31, made[2].id: 29, made[3].id: 1, made[4].id: 35,
            uuid.UUID("0f1e2d3c-4b5a-4968-8776-655443322110"): 31, held.id: 60}  # fmt: skip
    for rid, days in ages.items():
        await pool.execute(
            "UPDATE budget_reservations SET ended_at = CASE WHEN state = 'held' THEN NULL"
            " ELSE $2::timestamptz END, created_at = $2 WHERE id = $1",
            rid, NOW - timedelta(days=days),
        )  # fmt: skip
    assert await reservations.forget_ended(pool, now=NOW) == 4
    left = {r["id"] for r in await pool.fetch("SELECT id FROM budget_reservations")}
    assert left == {made[2].id, made[3].id, held.id}
    assert await window(pool, access, hard) == (Decimal("0.004998"), Decimal("0.02"))
    assert await reservations.forget_ended(pool, now=NOW) == 0
    # a forgotten id is one never seen: a reserve of it makes a new reservation
    again = await reserve(pool, access, amount=Decimal("0.5"), reservation_id=str(made[0].id),
                          now=NOW)  # fmt: skip
    assert (again.id, again.repeated, again.state) == (made[0].id, False, "held")


async def test_forgetting_goes_in_batches_and_stops_at_its_most_per_sweep(
    pool: asyncpg.Pool, access: Access, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reservations, "SWEEP_BATCH", 3)
    monkeypatch.setattr(reservations, "FORGET_PER_SWEEP", 7)
    for _ in range(11):
        await reservations.release(pool, access, str(uuid.uuid4()))  # marks: ended now
    later = datetime.now(UTC) + reservations.KEEP_ENDED + timedelta(minutes=1)
    assert await reservations.forget_ended(pool, now=later) == 9  # 3 batches, past 7: stops
    assert await reservations.forget_ended(pool, now=later) == 2
    assert await pool.fetchval("SELECT count(*) FROM budget_reservations") == 0


async def test_a_repeat_whose_reservation_was_forgotten_meanwhile_is_made_anew(
    pool: asyncpg.Pool, access: Access
) -> None:
    """A reserve with the id of a reservation that ended KEEP_ENDED ago meets its row (a
    repeat), and the sweep may forget that row before the repeat reads it: the reserve is then
    made anew (before, an assertion failed: a 500)."""
    gone = uuid.uuid4()
    assert await reservations._repeated(pool, access.project_id or 0, gone, Decimal(1)) is None
    made = await reserve(pool, access, amount=Decimal("0.1"), reservation_id=str(gone), now=NOW)
    assert (made.id, made.repeated, made.state) == (gone, False, "held")
