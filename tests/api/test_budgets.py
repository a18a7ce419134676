"""/v1/budgets: a project's admin key sets limits on what the project (or part of it) may spend
per period, sees each budget's current window, and never reaches another project's budgets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app
from aiserver.ledger.budgets.periods import window_of

from ..conftest import Settings, replace_settings
from .conftest import Client, Tenants, admin, bearer, make_key, make_project
from .test_endpoints import assert_problem

BUDGETS = "/v1/budgets"


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


async def create(client: Client, key: str, **fields: Any) -> dict[str, Any]:
    body = {"name": "search team", "limit_usd": "25.50", "period": "day", **fields}
    response = await client.post(BUDGETS, headers=bearer(key), json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_a_budget_is_created_shown_changed_and_deleted_with_exact_money(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    key = tenants.admin_a["key"]
    created = await create(client, key, tags={"team": "search"}, model="gpt-4o", hard=True)
    start, end = window_of("day", "Europe/Berlin", datetime.now(UTC))  # acme-a's time zone
    assert created == {
        "id": created["id"],
        "name": "search team",
        "tags": {"team": "search"},
        "model": "gpt-4o",
        "period": "day",
        "limit_usd": "25.5",
        "currency": "USD",
        "thresholds": ["50", "80", "100"],
        "hard": True,
        "webhook_url": None,
        "created_at": created["created_at"],
        "updated_at": created["updated_at"],
        "counts_from": iso(start),
        "window": {
            "start": iso(start),
            "end": iso(end),  # type: ignore[arg-type]
            "committed": "0",
            "reserved": "0",
            "remaining": "25.5",
            "used_percent": "0",
            "events": 0,
            "unpriced_events": 0,
            "partially_priced_events": 0,
        },
        "webhook_previous_secret_until": None,
        "webhook_secret": None,
    }
    # what the window holds is read from its rows, summed over stripes
    await pg.execute(
        "INSERT INTO budget_windows (project_id, budget_id, window_start, stripe, window_end,"
        " committed, reserved, events, unpriced_events, partially_priced_events)"
        " SELECT project_id, id, $2, s, $3, 3.000000000001, 1.5, 2, 1, 1 - s"
        " FROM budgets, generate_series(0, 1) s WHERE id = $1",
        created["id"], start, end,
    )  # fmt: skip
    shown = (await client.get(f"{BUDGETS}/{created['id']}", headers=bearer(key))).json()
    assert shown["window"] | {"start": None, "end": None} == {
        "start": None,
        "end": None,
        "committed": "6.000000000002",
        "reserved": "3",
        "remaining": "16.499999999998",
        "used_percent": "35.29",
        "events": 4,
        "unpriced_events": 2,
        "partially_priced_events": 1,
    }

    changed = await client.patch(
        f"{BUDGETS}/{created['id']}",
        headers=bearer(key),
        json={"name": "search", "limit_usd": "9.000000000002", "thresholds": ["90", "75"],
              "hard": False},
    )  # fmt: skip
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["name"], body["limit_usd"], body["thresholds"], body["hard"]) == (
        "search",
        "9.000000000002",
        ["75", "90"],
        False,
    )
    # 9.000000000002 - 6.000000000002 - 3: exactly nothing left, exactly 100%
    assert (body["window"]["remaining"], body["window"]["used_percent"]) == ("0", "100")

    listed = (await client.get(BUDGETS, headers=bearer(key))).json()["budgets"]
    assert [b["id"] for b in listed] == [created["id"]]
    assert (
        await client.delete(f"{BUDGETS}/{created['id']}", headers=bearer(key))
    ).status_code == 204
    assert await pg.fetchval("SELECT count(*) FROM budget_windows") == 0
    gone = await client.get(f"{BUDGETS}/{created['id']}", headers=bearer(key))
    assert_problem(gone, 404, f"no budget {created['id']}")


async def test_trailing_zeros_are_no_decimal_places(client: Client, tenants: Tenants) -> None:
    made = await create(
        client, tenants.admin_a["key"], limit_usd="12.50000000000000000000000000000000000",
        thresholds=["50.000000000000000000000000000000000000"],
    )  # fmt: skip
    assert (made["limit_usd"], made["thresholds"]) == ("12.5", ["50"])


@pytest.mark.parametrize(
    ("fields", "field", "detail"),
    [
        ({"period": "year"}, "period", "Invalid enum value 'year'"),
        ({"limit_usd": "0"}, "limit_usd", "limit_usd must be a decimal above 0"),
        ({"limit_usd": "-1"}, "limit_usd", "limit_usd must be a decimal above 0"),
        ({"limit_usd": "NaN"}, "limit_usd", "is not a decimal number"),
        ({"limit_usd": 1.5}, "limit_usd", "Expected `str`, got `float`"),
        ({"limit_usd": "1,5"}, "limit_usd", "is not a decimal number"),
        # more places than PostgreSQL's NUMERIC holds (or anyone means): a 422, never a 500
        ({"limit_usd": "1E-20000"}, "limit_usd", "limit_usd must have at most 30 decimal places"),
        ({"limit_usd": "0." + "0" * 30 + "1"}, "limit_usd", "at most 30 decimal places"),
        # 34 places, 34 digits: more than a context's 28, which `normalize` would round away
        ({"limit_usd": "0.1234567890123456789012345678901234"}, "limit_usd", "at most 30 decimal"),
        ({"thresholds": ["1E-20000"]}, "thresholds", "thresholds must have at most 30 decimal"),
        ({"thresholds": ["0"]}, "thresholds", "thresholds: up to 10 different percentages"),
        ({"thresholds": ["50", "50"]}, "thresholds", "thresholds: up to 10 different"),
        ({"tags": {"bad key": "x"}}, "tags.bad key", "is not allowed"),
        ({"tags": {"team": "\u0000"}}, "tags.team", "without control characters"),
        ({"name": " "}, "name", "name must be 1 to 200 characters"),
        ({"webhook_secret": "s" * 20}, "webhook_secret", "webhook_secret needs a webhook_url"),
        ({"webhook_url": "ftp://example.com/x"}, "webhook_url", "must be an http or https URL"),
        ({"webhook_url": "https://user:pw@example.com/"}, "webhook_url", "without credentials"),
    ],
)
async def test_a_budget_that_cannot_be_is_refused_naming_its_field(
    client: Client, tenants: Tenants, fields: dict[str, Any], field: str, detail: str
) -> None:
    response = await client.post(
        BUDGETS,
        headers=bearer(tenants.admin_a["key"]),
        json={"name": "b", "limit_usd": "1", "period": "day", **fields},
    )
    problem = assert_problem(response, 422, detail)
    named = problem.get("fields") or [e["field"] for e in problem["errors"]]
    assert named == [field]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",  # a name resolving to loopback
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data",  # the cloud metadata service
        "http://[::ffff:10.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",
        "http://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
        "http://[2002:a9fe:a9fe::1]/hook",  # 6to4 of 169.254.169.254
        "http://[2002:c0a8:1::]/hook",  # 6to4 of 192.168.0.1
        "http://[2001:0:7f00:1::ffff:ffff]/hook",  # Teredo, server 127.0.0.1
        "http://[2001:0:808:808::f5ff:fffe]/hook",  # Teredo, client 10.0.0.1
        "http://[fec0::1]/hook",  # site-local
        "http://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
        "http://[64:ff9b:1::a00:1]/hook",  # local-use NAT64
        # other spellings of 127.0.0.1 and 0.0.0.0, which the resolver reads as addresses
        "http://2130706433/hook",  # decimal
        "http://0x7f000001/hook",  # hexadecimal
        "http://0x7f.1/hook",
        "http://017700000001/hook",  # octal
        "http://127.1/hook",
        "http://0/hook",
        "http://[::]/hook",
        "http://[0:0:0:0:0:ffff:7f00:1]/hook",  # IPv4-mapped, written out
    ],
)
async def test_a_webhook_into_the_servers_own_network_is_refused(
    client: Client, tenants: Tenants, url: str
) -> None:
    response = await client.post(
        BUDGETS,
        headers=bearer(tenants.admin_a["key"]),
        json={"name": "b", "limit_usd": "1", "period": "day", "webhook_url": url},
    )
    problem = assert_problem(response, 422, "an internal address")
    assert problem["fields"] == ["webhook_url"]


async def test_an_allowed_host_takes_webhooks_and_the_secret_is_shown_once(
    api_settings: Settings, redis_clean: None
) -> None:
    allowed = replace_settings(api_settings, webhook_allowed_hosts=("127.0.0.1",))
    async with AsyncTestClient(app=create_app(allowed)) as client:
        await make_project(client, "hooked")
        key = (await make_key(client, "hooked", ["admin"]))["key"]
        answer = await client.post(BUDGETS, headers=bearer(key), json={
            "name": "hooked", "limit_usd": "1", "period": "day",
            "webhook_url": "http://127.0.0.1:8999/hook",
        })  # fmt: skip
        assert answer.status_code == 201, answer.text
        # the answer that holds the secret is kept in no cache (it had no cache-control)
        assert answer.headers["cache-control"] == "no-store"
        made = answer.json()
        secret = made["webhook_secret"]
        assert len(secret) == 43  # 32 random bytes, URL-safe base64
        moved = await client.patch(f"{BUDGETS}/{made['id']}", headers=bearer(key),
                                   json={"webhook_url": "http://127.0.0.1:8999/hook2"})  # fmt: skip
        assert moved.status_code == 200, moved.text
        assert moved.json()["webhook_secret"]  # a new address, a new secret
        assert moved.json()["webhook_previous_secret_until"] is None  # the old one: forgotten
        assert moved.headers["cache-control"] == "no-store"
        # the same address with a new secret: the one it replaces signs beside it for a day
        same = {"webhook_url": "http://127.0.0.1:8999/hook2"}
        renewed = await client.patch(f"{BUDGETS}/{made['id']}", headers=bearer(key), json=same)
        assert renewed.status_code == 200, renewed.text
        until = datetime.fromisoformat(renewed.json()["webhook_previous_secret_until"])
        assert timedelta(hours=23, minutes=59) < until - datetime.now(UTC) <= timedelta(hours=24)
        given = await create(
            client, key, webhook_url="http://127.0.0.1:8999/b", webhook_secret="s" * 24
        )
        assert given["webhook_secret"] is None  # the client knows it: not echoed
        shown = (await client.get(f"{BUDGETS}/{made['id']}", headers=bearer(key))).json()
        assert shown["webhook_secret"] is None
        listed = await client.get(BUDGETS, headers=bearer(key))
        assert secret not in listed.text
        assert "s" * 24 not in listed.text
        # still refused: another loopback name is not the allowed host
        refused = await client.post(
            BUDGETS, headers=bearer(key),
            json={"name": "b", "limit_usd": "1", "period": "day",
                  "webhook_url": "http://localhost:8999/hook"},
        )  # fmt: skip
        assert_problem(refused, 422, "an internal address")
        removed = await client.patch(
            f"{BUDGETS}/{made['id']}", headers=bearer(key), json={"webhook_url": None}
        )
        assert removed.json()["webhook_url"] is None


async def test_a_webhook_s_path_is_shown_only_to_a_key_that_may_change_it(
    api_settings: Settings, redis_clean: None
) -> None:
    """A hook's path is often its credential (a Slack incoming webhook's): a read key saw it
    whole. It sees the origin only; an admin key, which may change it, sees it whole."""
    allowed = replace_settings(api_settings, webhook_allowed_hosts=("127.0.0.1",))
    async with AsyncTestClient(app=create_app(allowed)) as client:
        await make_project(client, "hidden")
        admin_key = (await make_key(client, "hidden", ["admin"]))["key"]
        read_key = (await make_key(client, "hidden", ["read"]))["key"]
        hook = "http://127.0.0.1:8999/services/T000/B000/SLACKSTYLETOKEN123?x=1"
        made = await create(client, admin_key, webhook_url=hook)
        for key, shown in ((admin_key, hook), (read_key, "http://127.0.0.1:8999/…")):
            one = (await client.get(f"{BUDGETS}/{made['id']}", headers=bearer(key))).json()
            listed = (await client.get(BUDGETS, headers=bearer(key))).json()["budgets"]
            assert one["webhook_url"] == listed[0]["webhook_url"] == shown
        listed = await client.get(BUDGETS, headers=bearer(read_key))
        assert "SLACKSTYLETOKEN123" not in listed.text


@pytest.mark.parametrize(
    ("url", "scopes", "shown"),
    [
        ("https://hooks.example.com/services/T/B/secret", ["read"], "https://hooks.example.com/…"),
        ("https://hooks.example.com/services/T/B/secret", ["admin"],
         "https://hooks.example.com/services/T/B/secret"),
        ("https://hooks.example.com/", ["read"], "https://hooks.example.com/"),
        ("https://hooks.example.com", ["read"], "https://hooks.example.com/"),
        ("https://hooks.example.com/?token=abc", ["read"], "https://hooks.example.com/…"),
        ("https://user:pw@hooks.example.com:8443/x", ["read"], "https://hooks.example.com:8443/…"),
        (None, ["read"], None),
    ],
)  # fmt: skip
def test_what_a_key_is_shown_of_a_webhook_and_of_its_deliveries(
    url: str | None, scopes: list[str], shown: str | None
) -> None:
    from aiserver.api.controllers.budget_alerts import DeliveryOut
    from aiserver.ledger.access import Access
    from aiserver.ledger.budgets.alerts.listing import Delivery
    from aiserver.ledger.budgets.answers import webhook_shown

    access = Access(project_id=1, project_slug="p", scopes=frozenset(scopes))
    assert webhook_shown(url, access) == shown
    assert webhook_shown(url, Access.operator()) == url
    if url is not None:
        delivery = Delivery(id=1, attempt=1, attempted_at=datetime.now(UTC), url=url,
                            status_code=200, error=None, duration_ms=None)  # fmt: skip
        assert DeliveryOut.of(delivery, access).url == shown


async def test_without_webhook_secret_keys_a_webhook_is_a_403_and_nothing_is_stored(
    api_settings: Settings, redis_clean: None
) -> None:
    """A server that cannot seal a webhook's secret stores none: the budget is refused with a
    problem that names the setting, and a budget without a webhook is made as ever."""
    keyless = replace_settings(
        api_settings, webhook_allowed_hosts=("127.0.0.1",), webhook_secret_keys=()
    )
    async with AsyncTestClient(app=create_app(keyless)) as client:
        await make_project(client, "keyless")
        key = (await make_key(client, "keyless", ["admin", "read"]))["key"]
        refused = await client.post(
            BUDGETS, headers=bearer(key),
            json={"name": "b", "limit_usd": "1", "period": "day",
                  "webhook_url": "http://127.0.0.1:8999/hook"},
        )  # fmt: skip
        problem = assert_problem(refused, 403, "WEBHOOK_SECRET_KEYS")
        assert problem["type"] == "urn:aiserver:problem:webhooks-disabled"
        assert (await client.get(BUDGETS, headers=bearer(key))).json()["budgets"] == []
        plain = await create(client, key)
        added = await client.patch(
            f"{BUDGETS}/{plain['id']}", headers=bearer(key),
            json={"webhook_url": "http://127.0.0.1:8999/hook"},
        )  # fmt: skip
        assert_problem(added, 403, "WEBHOOK_SECRET_KEYS")
        shown = await client.get(f"{BUDGETS}/{plain['id']}", headers=bearer(key))
        assert shown.json()["webhook_url"] is None


async def test_a_budgets_scope_and_period_stay_as_created(client: Client, tenants: Tenants) -> None:
    key = tenants.admin_a["key"]
    made = await create(client, key)
    for change in ({"period": "month"}, {"tags": {"team": "ads"}}, {"model": "gpt-4o"}):
        response = await client.patch(f"{BUDGETS}/{made['id']}", headers=bearer(key), json=change)
        problem = assert_problem(response, 422, "stay as created")
        assert problem["fields"] == list(change)


async def test_a_change_to_more_places_than_numeric_holds_is_refused_naming_its_field(
    client: Client, tenants: Tenants
) -> None:
    key = tenants.admin_a["key"]
    made = await create(client, key)
    for change, field in (({"limit_usd": "1E-20000"}, "limit_usd"),
                          ({"thresholds": ["50", "1E-20000"]}, "thresholds")):  # fmt: skip
        response = await client.patch(f"{BUDGETS}/{made['id']}", headers=bearer(key), json=change)
        problem = assert_problem(response, 422, "at most 30 decimal places")
        assert problem["fields"] == [field]
    shown = (await client.get(f"{BUDGETS}/{made['id']}", headers=bearer(key))).json()
    assert (shown["limit_usd"], shown["thresholds"]) == ("25.5", ["50", "80", "100"])


async def test_a_key_never_reaches_another_projects_budgets(
    client: Client, tenants: Tenants
) -> None:
    mine = await create(client, tenants.admin_a["key"])
    other = tenants.admin_b["key"]
    missing = 10**12
    for method, path, body in (
        ("GET", f"{BUDGETS}/{{}}", None),
        ("PATCH", f"{BUDGETS}/{{}}", {"name": "taken"}),
        ("DELETE", f"{BUDGETS}/{{}}", None),
    ):
        theirs = await client.request(method, path.format(mine["id"]), headers=bearer(other),
                                      json=body)  # fmt: skip
        nothing = await client.request(method, path.format(missing), headers=bearer(other),
                                       json=body)  # fmt: skip
        assert theirs.status_code == nothing.status_code == 404
        assert theirs.json()["detail"].replace(str(mine["id"]), "N") == nothing.json()[
            "detail"
        ].replace(str(missing), "N")
    assert (await client.get(BUDGETS, headers=bearer(other))).json() == {"budgets": []}
    unchanged = await client.get(f"{BUDGETS}/{mine['id']}", headers=bearer(tenants.admin_a["key"]))
    assert unchanged.json()["name"] == "search team"


async def test_who_may_do_what_with_budgets(client: Client, tenants: Tenants) -> None:
    made = await create(client, tenants.admin_a["key"])
    reader = (await make_key(client, "acme-a", ["read"]))["key"]
    assert (await client.get(f"{BUDGETS}/{made['id']}", headers=bearer(reader))).status_code == 200
    assert_problem(
        await client.patch(f"{BUDGETS}/{made['id']}", headers=bearer(reader), json={"name": "x"}),
        403, "scope 'admin'",
    )  # fmt: skip
    assert_problem(await client.get(BUDGETS, headers=bearer(tenants.ingest_a["key"])), 403, "scope")
    assert_problem(await client.get(BUDGETS, headers=admin()), 403, "project's key")
    assert_problem(await client.get(BUDGETS), 401, "")


@pytest.mark.parametrize("budget_id", [0, -1, 2**63, 2**64, 10**30])
async def test_a_budget_id_no_budget_can_have_is_a_404(
    client: Client, tenants: Tenants, budget_id: int
) -> None:
    """Beyond BIGINT (asyncpg refuses to send it: it was a 500), zero or negative."""
    key = bearer(tenants.admin_a["key"])
    for method, path, body in (
        ("GET", f"{BUDGETS}/{budget_id}", None),
        ("PATCH", f"{BUDGETS}/{budget_id}", {"name": "x"}),
        ("DELETE", f"{BUDGETS}/{budget_id}", None),
        ("GET", f"{BUDGETS}/{budget_id}/alerts", None),
    ):
        response = await client.request(method, path, headers=key, json=body)
        answer = assert_problem(response, 404, f"no budget {budget_id}")
        assert answer["type"] == "urn:aiserver:problem:unknown-budget"
    before = await client.get(f"{BUDGETS}/alerts?before={2**63}", headers=key)
    assert_problem(before, 422, "before")


async def test_an_empty_change_writes_nothing_and_answers_the_budget_as_it_is(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    """`PATCH` with `{}` answers 200 with the budget as it is, as a project's does, without
    writing its row: `updated_at` says when it last changed, not when it was last sent."""
    key = tenants.admin_a["key"]
    created = await create(client, key)
    path = f"{BUDGETS}/{created['id']}"
    stored = await pg.fetchval("SELECT updated_at FROM budgets WHERE id = $1", created["id"])
    before = (await client.get(path, headers=bearer(key))).json()
    changed = await client.patch(path, headers=bearer(key), json={})
    assert changed.status_code == 200, changed.text
    assert changed.json() == before
    after = await pg.fetchval("SELECT updated_at FROM budgets WHERE id = $1", created["id"])
    assert after == stored
    # an unknown budget is still unknown, an empty change or not
    unknown = await client.patch(f"{BUDGETS}/{created['id'] + 1000}", headers=bearer(key), json={})
    assert_problem(unknown, 404, "no budget")
