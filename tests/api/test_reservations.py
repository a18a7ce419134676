"""POST /v1/budgets/reserve and /v1/budgets/reservations/{id}/release: a project's ingest key
reserves an estimate on its hard budgets before a call, or gets a 402 problem naming the budget
that cannot hold it; the call's event settles the reservation; a key never reaches another
project's reservations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from .conftest import Client, Tenants, admin, bearer, make_key
from .test_endpoints import assert_problem

RESERVE = "/v1/budgets/reserve"
MODEL = "claude-sonnet-4-5-20250929"  # 3e-06 per input token, 1.5e-05 per output token


def release_path(reservation_id: str) -> str:
    return f"/v1/budgets/reservations/{reservation_id}/release"


async def hard_budget(client: Client, key: str, limit: str, **fields: Any) -> int:
    body = {"name": "hard", "limit_usd": limit, "period": "day", "hard": True, **fields}
    response = await client.post("/v1/budgets", headers=bearer(key), json=body)
    assert response.status_code == 201, response.text
    budget_id: int = response.json()["id"]
    return budget_id


async def window_of(client: Client, key: str, budget_id: int) -> dict[str, Any]:
    window: dict[str, Any] = (
        await client.get(f"/v1/budgets/{budget_id}", headers=bearer(key))
    ).json()["window"]
    return window


async def test_a_reservation_holds_its_estimate_until_its_event_settles_it(
    client: Client, tenants: Tenants
) -> None:
    admin_key, ingest_key = tenants.admin_a["key"], tenants.ingest_a["key"]
    budget_id = await hard_budget(client, admin_key, "1", tags={"team": "search"})
    before = datetime.now(UTC)
    response = await client.post(
        RESERVE, headers=bearer(ingest_key),
        json={"model": MODEL, "tags": {"team": "search"}, "estimate": "0.25",
              "expires_in_seconds": 120},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    made = response.json()
    window = await window_of(client, admin_key, budget_id)
    assert made == {
        "reservation_id": made["reservation_id"],
        "estimate": "0.25",
        "currency": "USD",
        "expires_at": made["expires_at"],
        "budgets": [{"budget_id": budget_id, "window_start": window["start"], "amount": "0.25"}],
        "state": "held",
    }
    expires = datetime.fromisoformat(made["expires_at"])
    assert before + timedelta(seconds=120) <= expires <= datetime.now(UTC) + timedelta(seconds=120)
    assert (window["committed"], window["reserved"], window["remaining"]) == ("0", "0.25", "0.75")

    event = {"id": "call-1", "model": MODEL, "tags": {"team": "search"},
             "usage": {"input_tokens": 1000, "output_tokens": 200},
             "reservation_id": made["reservation_id"]}  # fmt: skip
    recorded = await client.post("/v1/usage", headers=bearer(ingest_key), json=event)
    assert recorded.status_code == 201, recorded.text
    assert (recorded.json()["total"], recorded.json()["reservation"]) == ("0.006", "settled")
    retried = await client.post("/v1/usage", headers=bearer(ingest_key), json=event)
    assert (retried.status_code, retried.json()["status"]) == (200, "duplicate")
    window = await window_of(client, admin_key, budget_id)
    assert (window["committed"], window["reserved"], window["remaining"]) == ("0.006", "0", "0.994")
    released = await client.post(release_path(made["reservation_id"]), headers=bearer(ingest_key))
    assert released.json() == {"reservation_id": made["reservation_id"], "state": "settled"}


async def test_a_usage_estimate_is_priced_by_the_catalog_and_matches_the_priced_model(
    client: Client, tenants: Tenants
) -> None:
    admin_key = tenants.admin_a["key"]
    budget_id = await hard_budget(client, admin_key, "1", model=MODEL)
    response = await client.post(
        RESERVE, headers=bearer(admin_key),
        json={"model": "claude-sonnet-latest", "usage": {"input_tokens": 1000,
                                                         "output_tokens": 200}},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    assert response.json()["estimate"] == "0.006"
    assert [h["budget_id"] for h in response.json()["budgets"]] == [budget_id]
    unknown = await client.post(
        RESERVE, headers=bearer(admin_key), json={"model": "no-such-model", "usage": {}}
    )
    assert_problem(unknown, 404, "no-such-model")


async def test_an_estimate_holds_on_a_budget_of_the_model_its_name_resolves_to(
    client: Client, tenants: Tenants
) -> None:
    """A budget of a model counts the events priced as it whatever the name they report; an
    estimate's reservation matched the name as given only, so `anthropic/...` or another
    spelling held nothing on a hard budget of the model, and its events then took the window
    past the limit (a helper's review: 118%)."""
    admin_key = tenants.admin_a["key"]
    budget_id = await hard_budget(client, admin_key, "1", model=MODEL)
    for name in (f"anthropic/{MODEL}", "claude-sonnet-latest", MODEL.upper()):
        made = await client.post(RESERVE, headers=bearer(admin_key),
                                 json={"model": name, "estimate": "0.25"})  # fmt: skip
        assert made.status_code == 201, made.text
        assert [h["budget_id"] for h in made.json()["budgets"]] == [budget_id], name
    over = {"model": f"anthropic/{MODEL}", "estimate": "0.3"}
    refused = await client.post(RESERVE, headers=bearer(admin_key), json=over)
    assert_problem(refused, 402, "")
    # a model the catalog does not know holds on no model's budget, as its event will count
    unknown = await client.post(RESERVE, headers=bearer(admin_key),
                                json={"model": "no-such-model", "estimate": "0.3"})  # fmt: skip
    assert (unknown.status_code, unknown.json()["budgets"]) == (201, [])


async def test_a_budget_that_cannot_hold_the_estimate_answers_402_and_nothing_is_held(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    admin_key = tenants.admin_a["key"]
    roomy = await hard_budget(client, admin_key, "100", name="roomy")
    tight = await hard_budget(client, admin_key, "1", name="tight")
    body = {"model": MODEL, "estimate": "0.75"}
    assert (await client.post(RESERVE, headers=bearer(admin_key), json=body)).status_code == 201
    refused = await client.post(RESERVE, headers=bearer(admin_key), json=body)
    problem = assert_problem(refused, 402, "cannot hold 0.75 USD more")
    assert problem["type"] == "urn:aiserver:problem:budget-exceeded"
    assert {k: problem[k] for k in ("budget_id", "budget_name", "limit_usd", "remaining")} == {
        "budget_id": tight, "budget_name": "tight", "limit_usd": "1", "remaining": "0.25",
    }  # fmt: skip
    assert (await window_of(client, admin_key, roomy))["reserved"] == "0.75"
    assert await pg.fetchval("SELECT count(*) FROM budget_reservations") == 1


async def test_a_reserve_repeated_with_its_chosen_id_holds_once_and_answers_the_first(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    """A client whose reserve went unanswered (a timeout, a dropped connection) sends it again
    with the same `reservation_id`: the estimate is held once, and the repeat answers 200 with
    the reservation made the first time, in the state it is in now. The same id with another
    estimate is a 409; another project's same id is a reservation of its own."""
    admin_key, ingest_key = tenants.admin_a["key"], tenants.ingest_a["key"]
    budget_id = await hard_budget(client, admin_key, "1")
    chosen = "0b3c2a7e-9f1d-4c55-8e2a-6d1f0c9b7a11"
    body = {"model": MODEL, "estimate": "0.4", "reservation_id": chosen}
    first = await client.post(RESERVE, headers=bearer(ingest_key), json=body)
    assert first.status_code == 201, first.text
    assert (first.json()["reservation_id"], first.json()["state"]) == (chosen, "held")
    for _ in range(2):
        again = await client.post(RESERVE, headers=bearer(ingest_key), json=body)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
    assert (await window_of(client, admin_key, budget_id))["reserved"] == "0.4"
    # the budget cannot hold a second 0.75, nor 0.4 twice more: a repeat is answered all the same
    full = {"model": MODEL, "estimate": "0.6"}
    assert (await client.post(RESERVE, headers=bearer(ingest_key), json=full)).status_code == 201
    assert (await client.post(RESERVE, headers=bearer(ingest_key), json=body)).status_code == 200

    other = await client.post(RESERVE, headers=bearer(ingest_key),
                              json={**body, "estimate": "0.5"})  # fmt: skip
    assert_problem(other, 409, "was made for an estimate of 0.4 USD, not 0.5")
    event = {"id": "call-r", "model": MODEL, "usage": {"input_tokens": 100},
             "reservation_id": chosen}  # fmt: skip
    recorded = await client.post("/v1/usage", headers=bearer(ingest_key), json=event)
    assert recorded.json()["reservation"] == "settled", recorded.text
    late = await client.post(RESERVE, headers=bearer(ingest_key), json=body)
    assert (late.status_code, late.json()["state"]) == (200, "settled")
    assert (await window_of(client, admin_key, budget_id))["reserved"] == "0.6"

    theirs = await client.post(RESERVE, headers=bearer(tenants.admin_b["key"]), json=body)
    assert (theirs.status_code, theirs.json()["state"]) == (201, "held")
    assert await pg.fetchval("SELECT count(*) FROM budget_reservations WHERE id = $1",
                             UUID(chosen)) == 2  # fmt: skip
    for wrong in ("not-a-uuid", "{0b3c2a7e-9f1d-4c55-8e2a-6d1f0c9b7a11}", "0" * 32):
        refused = await client.post(RESERVE, headers=bearer(ingest_key),
                                    json={**body, "reservation_id": wrong})  # fmt: skip
        assert_problem(refused, 422, "is not a UUID")


async def test_release_is_idempotent_and_another_projects_reservation_is_unknown(
    client: Client, tenants: Tenants
) -> None:
    admin_key, ingest_key = tenants.admin_a["key"], tenants.ingest_a["key"]
    budget_id = await hard_budget(client, admin_key, "1")
    made = (
        await client.post(RESERVE, headers=bearer(ingest_key),
                          json={"model": MODEL, "estimate": "0.4"})
    ).json()  # fmt: skip
    other = bearer(tenants.admin_b["key"])
    # another project's reservation is none of theirs: its id is written down as released in
    # their project (as any id with no reservation yet), and this one stays held
    theirs = await client.post(release_path(made["reservation_id"]), headers=other)
    assert theirs.json() == {"reservation_id": made["reservation_id"], "state": "released"}
    assert (await window_of(client, admin_key, budget_id))["reserved"] == "0.4"
    for _ in range(2):
        released = await client.post(
            release_path(made["reservation_id"]), headers=bearer(ingest_key)
        )
        assert released.status_code == 200, released.text
        assert released.json() == {"reservation_id": made["reservation_id"], "state": "released"}
    assert (await window_of(client, admin_key, budget_id))["reserved"] == "0"
    unknown = "00000000-0000-0000-0000-000000000000"
    answer = await client.post(release_path(unknown), headers=bearer(ingest_key))
    assert answer.json() == {"reservation_id": unknown, "state": "released"}
    assert_problem(
        await client.post(release_path("not-an-id"), headers=bearer(ingest_key)),
        404, "no reservation",
    )  # fmt: skip


async def test_reserving_needs_a_projects_ingest_key_and_a_well_formed_estimate(
    client: Client, tenants: Tenants
) -> None:
    read_only = (await make_key(client, "acme-a", ["read"]))["key"]
    body = {"model": MODEL, "estimate": "0.1"}
    assert_problem(await client.post(RESERVE, headers=bearer(read_only), json=body), 403, "ingest")
    assert_problem(await client.post(RESERVE, json=body), 401, "")
    key = bearer(tenants.ingest_a["key"])
    for bad, field in (
        ({"model": MODEL}, "estimate"),
        ({"model": MODEL, "estimate": "0.1", "usage": {}}, "estimate"),
        ({"model": MODEL, "estimate": "ten"}, "estimate"),
        ({"model": MODEL, "estimate": "0"}, "estimate"),
        ({"model": MODEL, "estimate": 0.1}, "estimate"),
        ({"model": MODEL, "estimate": "1", "expires_in_seconds": 0}, "expires_in_seconds"),
        ({"model": MODEL, "usage": {"input_tokens": -1}}, "input_tokens"),
        ({"model": MODEL, "estimate": "1", "tags": {"bad key": "x"}}, "tags.bad key"),
    ):
        problem = assert_problem(await client.post(RESERVE, headers=key, json=bad), 422, "")
        assert field in str(problem.get("fields", problem.get("errors", ""))), (bad, problem)


async def test_a_usage_that_prices_at_nothing_is_refused_naming_the_usage(
    client: Client, tenants: Tenants
) -> None:
    """A reserve sent with a `usage` (no `estimate`) that the catalog prices at 0 USD is told
    so, naming the field it sent: not "estimate must be above 0", a field it never sent."""
    response = await client.post(
        RESERVE, headers=bearer(tenants.ingest_a["key"]),
        json={"model": MODEL, "usage": {"input_tokens": 0, "output_tokens": 0}},
    )  # fmt: skip
    problem = assert_problem(response, 422, "usage: the catalog prices this usage at 0 USD")
    assert problem["fields"] == ["usage"]


async def test_a_usage_that_prices_past_the_largest_estimate_is_refused_naming_the_usage(
    client: Client, tenants: Tenants
) -> None:
    """A `usage` that the catalog prices past the largest estimate (1,000,000,000,000 USD) is
    refused naming the field it sent and what it was priced at: it was refused as "estimate must
    be a decimal above 0 and at most 1,000,000,000,000", naming `estimate`, a field the request
    never sent."""
    override = {"provider": "openai", "model": "gpt-test-003", "reason": "image price",
                "prices": {"output_cost_per_image": "0.04"}}  # fmt: skip
    added = await client.post("/v1/overrides", headers=admin(), json=override)
    assert added.status_code == 201, added.text
    response = await client.post(
        RESERVE, headers=bearer(tenants.ingest_a["key"]),
        json={"model": "gpt-test-003", "usage": {"images": 10**15}},
    )  # fmt: skip
    problem = assert_problem(
        response, 422, "usage: the catalog prices this usage at 40000000000000 USD"
    )
    assert "at most 1,000,000,000,000" in problem["detail"]
    assert problem["fields"] == ["usage"]


async def test_a_model_its_event_could_not_report_is_refused_before_anything_is_held(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    """The reserve's `model` is the call's, as its event will report it: a blank one (spaces
    only), which the event is refused for, is refused at once. It was reserved (201, the
    estimate held until it expired), and the event that was to settle it was then refused."""
    key = bearer(tenants.ingest_a["key"])
    await hard_budget(client, tenants.admin_a["key"], "1")
    for blank in (" ", "\t \u3000"):
        event = {"id": "blank", "model": blank, "usage": {"input_tokens": 1}}
        assert_problem(await client.post("/v1/usage", headers=key, json=event), 422, "model")
        reserved = await client.post(RESERVE, headers=key, json={"model": blank, "estimate": "0.5"})
        problem = assert_problem(reserved, 422, "model must not be blank")
        assert problem["fields"] == ["model"]
    assert await pg.fetchval("SELECT count(*) FROM budget_reservations") == 0


async def test_a_reserve_without_its_model_is_refused_naming_model(
    client: Client, tenants: Tenants
) -> None:
    """A body without a required field named the body as a whole (`data`), so a client could
    not tell which field to add; it names the field, here and on every strictly read body."""
    key = bearer(tenants.ingest_a["key"])
    problem = assert_problem(await client.post(RESERVE, headers=key, json={"estimate": "1"}),
                             422, "model: Object missing required field `model`")  # fmt: skip
    assert [e["field"] for e in problem["errors"]] == ["model"]
