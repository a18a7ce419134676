"""The budget guard against a real API: it reserves before the call, the call's event settles
the reservation, and leaving without one (or with an exception) releases it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from aiserver.client import (
    AiserverError,
    AsyncBudgetGuard,
    AsyncClient,
    BudgetExceeded,
    BudgetGuard,
    Client,
    RecorderSettings,
    wire,
)

from .conftest import (
    Answer,
    FailingFront,
    Ledger,
    ScriptedFront,
    Tenant,
    answered,
    api_events,
    budget_window,
    create_budget,
)

USAGE = {"input_tokens": 1000, "output_tokens": 500}
COST = Decimal("0.0075")  # gpt-4o: 1000 x $2.50 + 500 x $10 per million
TEAM = {"team": "search"}


async def hard_budget(ledger: Ledger, tenant: Tenant, limit: str = "1.00") -> int:
    made = await create_budget(ledger.api, tenant, name="search", limit_usd=limit, period="day",
                               hard=True, tags=TEAM)  # fmt: skip
    budget_id: int = made["id"]
    return budget_id


async def test_a_recorded_event_settles_the_reservation(ledger: Ledger, tenant: Tenant) -> None:
    budget_id = await hard_budget(ledger, tenant)
    key = f"g-{uuid.uuid4().hex}"
    with (
        Client(ledger.api.base_url, tenant.key) as client,
        client.budget(model="gpt-4o", tags=TEAM, estimate="0.50") as guard,
    ):
        assert guard.reservation.budgets[0].amount == Decimal("0.5")
        held = await budget_window(ledger.api, tenant, budget_id)
        result = guard.record(id=key, usage=USAGE)  # the guard's model and tags
    assert (result.status, result.reservation, result.total) == ("recorded", "settled", COST)
    window = await budget_window(ledger.api, tenant, budget_id)
    assert (held["reserved"], window["reserved"], window["committed"]) == ("0.5", "0", "0.0075")
    event = (await api_events(ledger.api, tenant))[key]
    assert (event["model"], event["tags"]) == ("gpt-4o", TEAM)


async def reservation_states(url: str, project_id: int) -> dict[str, str]:
    """{reservation id: its state} of a project, straight from the database."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT id::text AS id, state, ended_at FROM budget_reservations WHERE project_id = $1",
            project_id,
        )
    finally:
        await conn.close()
    assert all((row["state"] == "held") == (row["ended_at"] is None) for row in rows)
    return {row["id"]: row["state"] for row in rows}


@contextlib.asynccontextmanager
async def opened(
    kind: type[Client | AsyncClient], ledger: Ledger, tenant: Tenant
) -> AsyncIterator[Any]:
    """A `Client` or an `AsyncClient` of the tenant, open for the block."""
    if kind is AsyncClient:
        async with AsyncClient(ledger.api.base_url, tenant.key) as client:
            yield client
    else:
        with Client(ledger.api.base_url, tenant.key) as client:
            yield client


@contextlib.asynccontextmanager
async def entered(guard: BudgetGuard | AsyncBudgetGuard) -> AsyncIterator[Any]:
    """`guard` entered for the block, `with` or `async with` as it takes."""
    if isinstance(guard, AsyncBudgetGuard):
        async with guard as inside:
            yield inside
    else:
        with guard as inside:
            yield inside


def guarded(
    client: Client | AsyncClient, **fields: Any
) -> contextlib.AbstractAsyncContextManager[Any]:
    """The client's budget guard entered for the block, `with` or `async with` as it takes."""
    return entered(client.budget(**fields))


@pytest.mark.parametrize("kind", [Client, AsyncClient], ids=["sync", "async"])
async def test_leaving_without_an_event_or_with_an_error_releases(
    ledger: Ledger, tenant: Tenant, kind: type[Client | AsyncClient]
) -> None:
    # Each reservation is seen held inside the block and released right after it, before
    # anything but the guard could have released it (no explicit release call at all).
    budget_id = await hard_budget(ledger, tenant)
    async with opened(kind, ledger, tenant) as client:
        async with guarded(client, model="gpt-4o", tags=TEAM, estimate="0.30") as unused:
            held = await budget_window(ledger.api, tenant, budget_id)
        after_unused = await budget_window(ledger.api, tenant, budget_id)
        states_unused = await reservation_states(ledger.url, tenant.id)
        guards: list[BudgetGuard | AsyncBudgetGuard] = []
        seen: list[dict[str, Any]] = []

        async def call_fails() -> None:
            async with guarded(client, model="gpt-4o", tags=TEAM, estimate="0.20") as failed:
                guards.append(failed)
                seen.append(await budget_window(ledger.api, tenant, budget_id))
                raise RuntimeError("the provider failed")

        with pytest.raises(RuntimeError, match="the provider failed"):
            await call_fails()
        (failed,), (held_failed,) = guards, seen
        after_failed = await budget_window(ledger.api, tenant, budget_id)
        states = await reservation_states(ledger.url, tenant.id)
    unused_id = unused.reservation.reservation_id
    failed_id = failed.reservation.reservation_id
    assert (held["reserved"], after_unused["reserved"]) == ("0.3", "0")
    assert states_unused == {unused_id: "released"}
    assert (held_failed["reserved"], after_failed["reserved"]) == ("0.2", "0")
    assert states == {unused_id: "released", failed_id: "released"}
    assert after_failed["committed"] == "0"


@pytest.mark.parametrize("kind", [Client, AsyncClient], ids=["sync", "async"])
async def test_a_guard_entered_again_makes_a_new_reservation_the_budget_can_refuse(
    ledger: Ledger, tenant: Tenant, kind: type[Client | AsyncClient]
) -> None:
    """One guard for every call of a loop. Before, its reservation id was drawn once, when the
    guard was made: every entry after the first repeated the first reserve, which the server
    answers with that reservation, settled or released, holding nothing and never refused."""
    budget_id = await hard_budget(ledger, tenant)  # 1.00
    async with opened(kind, ledger, tenant) as client:
        guard = client.budget(model="gpt-4o", tags=TEAM, estimate="0.50")
        ids, held = [], []
        for call in ("settles", "releases"):
            async with entered(guard):
                ids.append(guard.reservation.reservation_id)
                held.append((await budget_window(ledger.api, tenant, budget_id))["reserved"])
                if call == "settles":
                    result = await answered(guard.record(id=f"g-{uuid.uuid4().hex}", usage=USAGE))
                    assert (result.status, result.reservation) == ("recorded", "settled")
        other = await answered(client.reserve("gpt-4o", tags=TEAM, estimate="0.60"))
        with pytest.raises(BudgetExceeded) as refused:  # 1.00 - 0.0075 - 0.60 < 0.50
            async with entered(guard):
                pytest.fail("the call is made although the budget cannot hold its estimate")
        window = await budget_window(ledger.api, tenant, budget_id)
    assert held == ["0.5", "0.5"]
    assert len({*ids, other.reservation_id}) == 3
    assert refused.value.budget_id == budget_id
    states = await reservation_states(ledger.url, tenant.id)
    assert states == {ids[0]: "settled", ids[1]: "released", other.reservation_id: "held"}
    assert (window["reserved"], window["committed"]) == ("0.6", "0.0075")


@pytest.mark.parametrize("kind", [Client, AsyncClient], ids=["sync", "async"])
async def test_a_guard_cannot_be_entered_again_inside_its_own_block(
    ledger: Ledger, tenant: Tenant, kind: type[Client | AsyncClient]
) -> None:
    # Entering again inside would draw a new id and lose the reservation held outside.
    budget_id = await hard_budget(ledger, tenant)
    async with opened(kind, ledger, tenant) as client:
        guard = client.budget(model="gpt-4o", tags=TEAM, estimate="0.50")
        async with entered(guard):
            with pytest.raises(RuntimeError, match="already entered"):
                async with entered(guard):
                    pytest.fail("entered twice at once")
            outer = guard.reservation.reservation_id
        window = await budget_window(ledger.api, tenant, budget_id)
    assert window["reserved"] == "0"
    assert await reservation_states(ledger.url, tenant.id) == {outer: "released"}


@pytest.mark.parametrize("kind", [Client, AsyncClient], ids=["sync", "async"])
async def test_a_reserve_answered_with_an_ended_reservation_is_no_hold(
    ledger: Ledger,
    tenant: Tenant,
    kind: type[Client | AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new id that comes back ended (here: one released before, drawn again) holds nothing:
    the guard raises and the call is not made, as it would be with nothing checked."""
    budget_id = await hard_budget(ledger, tenant)
    async with opened(kind, ledger, tenant) as client:
        ended = await answered(client.reserve("gpt-4o", tags=TEAM, estimate="0.50"))
        await answered(client.release(ended.reservation_id))
        monkeypatch.setattr(wire, "new_reservation_id", lambda: ended.reservation_id)
        with pytest.raises(AiserverError) as unexpected:
            async with guarded(client, model="gpt-4o", tags=TEAM, estimate="0.50"):
                pytest.fail("the call is made although nothing is held for it")
        window = await budget_window(ledger.api, tenant, budget_id)
    assert (unexpected.value.status, unexpected.value.title) == (502, "unexpected answer")
    assert "'released', not held" in unexpected.value.detail
    assert window["reserved"] == "0"
    assert await reservation_states(ledger.url, tenant.id) == {ended.reservation_id: "released"}


async def test_a_queued_event_keeps_the_reservation_held_until_it_settles_it(
    ledger: Ledger, tenant: Tenant
) -> None:
    # The other side of the release on exit: a guard left with an event queued (not yet
    # delivered) does not release; the event settles the reservation when it arrives.
    budget_id = await hard_budget(ledger, tenant)
    key = f"g-{uuid.uuid4().hex}"
    held_back = RecorderSettings(batch_size=10_000, flush_interval=3600)
    with Client(ledger.api.base_url, tenant.key, recorder=held_back) as client:
        with client.budget(model="gpt-4o", tags=TEAM, estimate="0.50") as guard:
            assert guard.record_later(id=key, usage=USAGE) == key
        after_exit = await budget_window(ledger.api, tenant, budget_id)
        states = await reservation_states(ledger.url, tenant.id)
        assert await asyncio.to_thread(client.flush, 60)
    settled = await budget_window(ledger.api, tenant, budget_id)
    reservation_id = guard.reservation.reservation_id
    assert (after_exit["reserved"], states) == ("0.5", {reservation_id: "held"})
    assert (settled["reserved"], settled["committed"]) == ("0", "0.0075")
    assert await reservation_states(ledger.url, tenant.id) == {reservation_id: "settled"}


async def test_a_refused_reservation_raises_before_the_call(ledger: Ledger, tenant: Tenant) -> None:
    budget_id = await hard_budget(ledger, tenant, limit="0.01")
    called = False
    with (
        Client(ledger.api.base_url, tenant.key) as client,
        pytest.raises(BudgetExceeded) as refused,
        client.budget(model="gpt-4o", tags=TEAM, usage={"input_tokens": 10_000}),
    ):
        called = True
    assert not called
    assert (refused.value.budget_id, refused.value.limit) == (budget_id, Decimal("0.01"))
    assert refused.value.remaining == Decimal("0.01")


async def test_the_async_guard_settles_through_the_background_recorder(
    ledger: Ledger, tenant: Tenant
) -> None:
    budget_id = await hard_budget(ledger, tenant)
    key = f"g-{uuid.uuid4().hex}"
    async with AsyncClient(ledger.api.base_url, tenant.key) as client:
        async with client.budget(model="gpt-4o", tags=TEAM, estimate="0.50") as guard:
            assert guard.record_later({"id": key, "usage": USAGE}) == key
        assert await client.flush(timeout=30)
        async with client.budget(model="gpt-4o", tags=TEAM, estimate="0.25") as waited:
            result = await waited.record(usage=USAGE, id=f"{key}-2")
        async with client.budget(model="gpt-4o", tags=TEAM, estimate="0.25") as unused:
            pass
        assert (await client.release(unused.reservation.reservation_id)).state == "released"
        assert client.stats().recorded == 1
    assert result.reservation == "settled"
    window = await budget_window(ledger.api, tenant, budget_id)
    assert (window["reserved"], Decimal(window["committed"])) == ("0", 2 * COST)


@pytest.mark.parametrize("kind", [Client, AsyncClient], ids=["sync", "async"])
async def test_an_invalid_event_does_not_keep_the_reservation_held(
    ledger: Ledger, tenant: Tenant, kind: type[Client | AsyncClient]
) -> None:
    # An event the server refuses (invalid) settles nothing: leaving the block must release the
    # reservation, not leave the estimate held on the budget until it expires.
    budget_id = await hard_budget(ledger, tenant)
    bad_usage = {"input_tokens": 5, "cache_read_tokens": 6}  # more cache reads than input
    async with opened(kind, ledger, tenant) as client:
        async with guarded(client, model="gpt-4o", tags=TEAM, estimate="0.50") as guard:
            result = await answered(guard.record(id=f"g-{uuid.uuid4().hex}", usage=bad_usage))
        window = await budget_window(ledger.api, tenant, budget_id)
    assert (result.status, result.reservation) == ("invalid", None)
    assert (window["reserved"], window["committed"]) == ("0", "0")
    reservation_id = guard.reservation.reservation_id
    assert await reservation_states(ledger.url, tenant.id) == {reservation_id: "released"}


async def refused_guard(base_url: str, key: str, kind: str, *, retries: int) -> AiserverError:
    """Enter a budget guard through `base_url` (a `sync` client in a thread, or an `async` one):
    the error its reserve raised. The call under the guard must not be made."""

    async def guarded_async() -> None:
        async with (
            AsyncClient(base_url, key, retries=retries) as aclient,
            aclient.budget(model="gpt-4o", tags=TEAM, estimate="0.40"),
        ):
            pytest.fail("the call is made although the reserve failed")

    def guarded() -> None:
        with (
            Client(base_url, key, retries=retries) as client,
            client.budget(model="gpt-4o", tags=TEAM, estimate="0.40"),
        ):
            pytest.fail("the call is made although the reserve failed")

    with pytest.raises(AiserverError) as refused:
        await (guarded_async() if kind == "async" else asyncio.to_thread(guarded))
    return refused.value


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_reservation_whose_answer_was_lost_is_released_by_the_guard(
    ledger: Ledger, tenant: Tenant, kind: str
) -> None:
    """The API commits the reservation and its answer is lost (a 503 from the front, no repeats
    left): the guard raises, the call is not made, and the guard releases the reservation by the
    id it chose, so that nothing stays held until it expires."""
    budget_id = await hard_budget(ledger, tenant)
    front = FailingFront(target=ledger.api.base_url, refuse=0, lose=1, retry_after=None)

    front.start()
    try:
        lost = await refused_guard(front.base_url, tenant.key, kind, retries=0)
    finally:
        front.stop()
    assert lost.status == 503
    assert [status for _, status in front.arrivals] == [503, 200]  # the reserve, the release
    states = await reservation_states(ledger.url, tenant.id)
    assert list(states.values()) == ["released"]
    assert (await budget_window(ledger.api, tenant, budget_id))["reserved"] == "0"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_reserve_that_reaches_the_api_after_the_guards_release_holds_nothing(
    ledger: Ledger, tenant: Tenant, kind: str
) -> None:
    """The reserve is late: the front answers it 503 without passing it on (the client has
    given up), the guard's release reaches the API first, and only then does the reserve (the
    same body, with the id the guard chose) arrive. It holds nothing and answers `released`."""
    budget_id = await hard_budget(ledger, tenant)
    late = Answer(503, b'{"status": 503, "title": "Service Unavailable", "detail": "late"}')
    front = ScriptedFront(target=ledger.api.base_url, script=[late])

    front.start()
    try:
        failed = await refused_guard(front.base_url, tenant.key, kind, retries=0)
    finally:
        front.stop()
    assert failed.status == 503
    seen = [(path.rsplit("/", 1)[-1], status) for _, path, status in front.seen]
    assert seen == [("reserve", 503), ("release", 200)]
    (chosen,) = await reservation_states(ledger.url, tenant.id)
    body = {"model": "gpt-4o", "tags": TEAM, "estimate": "0.40", "reservation_id": chosen}
    async with ledger.api.client(headers=tenant.auth) as client:
        arrived = await client.post("/v1/budgets/reserve", json=body)
    assert arrived.status_code == 200, arrived.text
    assert (arrived.json()["state"], arrived.json()["budgets"]) == ("released", [])
    assert await reservation_states(ledger.url, tenant.id) == {chosen: "released"}
    assert (await budget_window(ledger.api, tenant, budget_id))["reserved"] == "0"


@pytest.mark.parametrize("status", [408, 425, 429])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_reserve_whose_repeats_were_answered_a_retried_4xx_is_released(
    ledger: Ledger, tenant: Tenant, kind: str, status: int
) -> None:
    """The API commits the first reserve, and the front hangs up before its answer; the client
    repeats it, and the front answers the repeats `status` (408, 425 or 429: statuses the
    client repeats, unseen by the API) until they are spent. That last answer is no refusal of
    the reservation the first attempt made: the guard releases it by its id, as after a 5xx."""
    budget_id = await hard_budget(ledger, tenant)
    problem = {"type": "about:blank", "status": status, "title": "Try Again", "detail": "later"}
    again = Answer(status, json.dumps(problem).encode(), {"Retry-After": "0"})
    lost = Answer(forward=True, hang_up=True)
    front = ScriptedFront(target=ledger.api.base_url, script=[lost, again, again])

    front.start()
    try:
        failed = await refused_guard(front.base_url, tenant.key, kind, retries=2)
    finally:
        front.stop()
    assert failed.status == status
    seen = [(path.rsplit("/", 1)[-1], status) for _, path, status in front.seen]
    assert seen == [("reserve", 0), ("reserve", status), ("reserve", status), ("release", 200)]
    assert list((await reservation_states(ledger.url, tenant.id)).values()) == ["released"]
    assert (await budget_window(ledger.api, tenant, budget_id))["reserved"] == "0"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_the_guards_release_is_repeated_when_it_fails(
    ledger: Ledger, tenant: Tenant, kind: str
) -> None:
    """The release on leaving is answered 503 once: it is repeated (releasing is idempotent),
    so the reservation is not held until it expires. Before, it was tried once and logged."""
    budget_id = await hard_budget(ledger, tenant)
    busy = Answer(503, b'{"status": 503, "title": "Service Unavailable", "detail": "busy"}')
    front = ScriptedFront(target=ledger.api.base_url, script=[None, busy])

    async def use_async() -> None:
        async with (
            AsyncClient(front.base_url, tenant.key) as aclient,
            aclient.budget(model="gpt-4o", tags=TEAM, estimate="0.40"),
        ):
            pass

    def use() -> None:
        with (
            Client(front.base_url, tenant.key) as client,
            client.budget(model="gpt-4o", tags=TEAM, estimate="0.40"),
        ):
            pass

    front.start()
    try:
        await (use_async() if kind == "async" else asyncio.to_thread(use))
    finally:
        front.stop()
    seen = [(path.rsplit("/", 1)[-1], status) for _, path, status in front.seen]
    assert seen == [("reserve", 201), ("release", 503), ("release", 200)]
    assert list((await reservation_states(ledger.url, tenant.id)).values()) == ["released"]
    assert (await budget_window(ledger.api, tenant, budget_id))["reserved"] == "0"


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize(
    ("estimate", "error"), [(0.05, TypeError), ("0,05", ValueError)], ids=["float", "not-decimal"]
)
async def test_an_estimate_that_cannot_be_sent_raises_before_any_request(
    ledger: Ledger, tenant: Tenant, kind: str, estimate: Any, error: type[Exception]
) -> None:
    """A float estimate, or a string that is no decimal, is the caller's mistake: the guard
    raises it (a `TypeError`, a `ValueError`, as docs/client.md says) without a request. Before,
    the float's TypeError made the guard release a reservation it had never asked for (a
    request to the API, repeated while the API failed, before the error came), and the string
    raised decimal.InvalidOperation, which is no ValueError."""
    front = ScriptedFront(target=ledger.api.base_url)

    async def use_async() -> None:
        async with (
            AsyncClient(front.base_url, tenant.key) as aclient,
            aclient.budget(model="gpt-4o", tags=TEAM, estimate=estimate),
        ):
            pytest.fail("the call is made although the estimate cannot be sent")

    def use() -> None:
        with (
            Client(front.base_url, tenant.key) as client,
            client.budget(model="gpt-4o", tags=TEAM, estimate=estimate),
        ):
            pytest.fail("the call is made although the estimate cannot be sent")

    front.start()
    try:
        with pytest.raises(error) as raised:
            await (use_async() if kind == "async" else asyncio.to_thread(use))
    finally:
        front.stop()
    assert type(raised.value) is error, repr(raised.value)
    assert front.seen == []
    assert await reservation_states(ledger.url, tenant.id) == {}
