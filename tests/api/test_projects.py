"""Projects and API keys over HTTP: who may do what, and every refusal a clear problem."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from structlog.testing import capture_logs

from aiserver.api.app import create_app

from ..conftest import Settings, replace_settings
from .conftest import Tenants, admin, bearer, make_key, make_project
from .test_endpoints import assert_problem

Client = AsyncTestClient  # type: ignore[type-arg]
CHALLENGE = 'Bearer realm="aiserver"'


async def test_an_operator_creates_a_project_and_its_first_key_which_then_works(
    client: Client,
) -> None:
    project = await make_project(
        client, "acme-search", time_zone="Europe/Berlin", rollup_tags=["team", "feature"]
    )
    assert project["slug"] == "acme-search"
    assert (project["time_zone"], project["rollup_tags"]) == ("Europe/Berlin", ["team", "feature"])
    assert project["archived_at"] is None
    created = await make_key(client, "acme-search", ["ingest", "read", "admin"])
    assert created["key"].startswith(f"ais_{created['public_id']}_")
    assert (created["project"], created["scopes"]) == ("acme-search", ["ingest", "read", "admin"])
    key = created["key"]
    shown = await client.get("/v1/projects/acme-search", headers=bearer(key))
    assert shown.status_code == 200
    assert shown.json()["name"] == "Acme-Search"
    # the project's admin key manages its keys from here on
    second = await make_key(client, "acme-search", ["ingest"], headers=bearer(key))
    listed = (await client.get("/v1/projects/acme-search/keys", headers=bearer(key))).json()
    assert [k["id"] for k in listed] == [created["id"], second["id"]]
    # a listed key: never its text, its secret nor the secret's hash
    assert {field for k in listed for field in k} == {
        "id", "project", "public_id", "name", "scopes", "created_at", "expires_at", "revoked_at",
        "last_used_at",
    }  # fmt: skip
    assert key.split("_", 2)[2] not in str(listed)
    changed = await client.patch(
        "/v1/projects/acme-search", headers=bearer(key),
        json={"name": "Acme Search", "rollup_tags": ["team"]},
    )  # fmt: skip
    assert changed.status_code == 200
    assert (changed.json()["name"], changed.json()["rollup_tags"]) == ("Acme Search", ["team"])
    revoked = await client.delete(f"/v1/keys/{second['id']}", headers=bearer(key))
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert_problem(
        await client.get("/v1/projects/acme-search", headers=bearer(second["key"])), 401, "revoked"
    )


async def test_project_fields_are_checked_and_slugs_are_unique(client: Client) -> None:
    await make_project(client, "taken")
    problem = assert_problem(
        await client.post("/v1/projects", headers=admin(), json={"slug": "taken", "name": "x"}),
        409,
        "exists already",
    )
    assert problem["type"].endswith(":project-exists")
    for body, field in (
        ({"slug": "Bad_Slug", "name": "x"}, "slug"),
        ({"slug": "-edge", "name": "x"}, "slug"),
        ({"slug": "ok", "name": "x", "time_zone": "Mars/Olympus"}, "time_zone"),
        ({"slug": "ok", "name": "x", "time_zone": "/etc/passwd"}, "time_zone"),
        ({"slug": "ok", "name": "x", "rollup_tags": ["Team"]}, "rollup_tags"),
        ({"slug": "ok", "name": "x", "rollup_tags": ["a", "a"]}, "rollup_tags"),
        # a final newline: `re.match` with `$` let it through (stored as the key "team\n")
        ({"slug": "ok", "name": "x", "rollup_tags": ["team\n"]}, "rollup_tags"),
        ({"slug": "ok\n", "name": "x"}, "slug"),
        ({"slug": "ok", "name": "   "}, "name"),
    ):
        problem = assert_problem(
            await client.post("/v1/projects", headers=admin(), json=body), 422, field
        )
        assert problem["fields"] == [field], body
    too_many = {"slug": "ok", "name": "x", "rollup_tags": ["a", "b", "c", "d", "e"]}
    assert_problem(await client.post("/v1/projects", headers=admin(), json=too_many), 422, "")
    assert_problem(
        await client.post(
            "/v1/projects/taken/keys", headers=admin(), json={"name": "k", "scopes": ["write"]}
        ),
        422,
        "scopes",
    )
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert_problem(
        await client.post(
            "/v1/projects/taken/keys", headers=admin(),
            json={"name": "k", "scopes": ["read"], "expires_at": past},
        ),
        422,
        "in the past",
    )  # fmt: skip


def _endpoints(t: Tenants) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every ledger endpoint, aimed at project a's resources."""
    return [
        ("POST", "/v1/projects", {"slug": "new-one", "name": "New"}),
        ("GET", "/v1/projects", None),
        ("GET", "/v1/projects/acme-a", None),
        ("PATCH", "/v1/projects/acme-a", {"name": "Renamed"}),
        ("POST", "/v1/projects/acme-a/keys", {"name": "k", "scopes": ["read"]}),
        ("GET", "/v1/projects/acme-a/keys", None),
        ("DELETE", f"/v1/keys/{t.ingest_a['id']}", None),
    ]


async def _call(client: Client, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    return await client.request(method, path, json=body, headers=headers)


async def test_every_endpoint_refuses_a_missing_or_bad_key_with_a_401(
    client: Client, tenants: Tenants
) -> None:
    t = tenants
    bad: dict[str, dict[str, str]] = {
        "none": {},
        "malformed": bearer("ais_not-a-key"),
        "not-bearer": {"Authorization": f"Basic {t.admin_a['key']}"},
        "revoked": bearer(t.revoked_a),
        "expired": bearer(t.expired_a),
        "last-character": bearer(t.last_char_a),
        "unknown-operator-token": bearer("not-an-operator-token"),
    }
    for method, path, body in _endpoints(t):
        for case, headers in bad.items():
            response = await _call(client, method, path, body, headers)
            problem = assert_problem(response, 401, "")
            assert problem["type"].endswith(":unauthorized"), (method, path, case)
            assert response.headers["www-authenticate"] == CHALLENGE, (method, path, case)
            for secret in (t.revoked_a, t.expired_a, t.last_char_a, t.admin_a["key"]):
                assert secret not in response.text
                assert secret.split("_", 2)[2] not in response.text
    reasons = {
        case: (await client.get("/v1/projects/acme-a", headers=headers)).json()["detail"]
        for case, headers in bad.items()
    }
    assert "revoked" in reasons["revoked"]
    assert "expired" in reasons["expired"]
    assert reasons["last-character"] == "the key is not valid"
    assert "malformed" in reasons["malformed"]


async def test_another_project_s_key_finds_nothing_and_a_missing_scope_is_a_403(
    client: Client, tenants: Tenants
) -> None:
    t = tenants
    other = bearer(t.admin_b["key"])
    for method, path, body in _endpoints(t):
        response = await _call(client, method, path, body, other)
        if path == "/v1/projects":  # server-wide: never a project key's
            assert_problem(response, 403, "server-wide")
        elif path.startswith("/v1/keys/"):
            assert_problem(response, 404, f"no key {t.ingest_a['id']}")
        else:
            assert_problem(response, 404, "no project 'acme-a'")
    # another project's resource looks exactly like one that does not exist
    for existing, missing in (
        ("/v1/projects/acme-a", "/v1/projects/acme-z"),
        ("/v1/projects/acme-a/keys", "/v1/projects/acme-z/keys"),
        (f"/v1/keys/{t.ingest_a['id']}", "/v1/keys/999999999"),
    ):
        method = "DELETE" if existing.startswith("/v1/keys/") else "GET"
        seen = (await _call(client, method, existing, None, other)).json()
        unseen = (await _call(client, method, missing, None, other)).json()
        assert seen["type"] == unseen["type"]
        assert seen["status"] == unseen["status"] == 404
        normal = seen["detail"].replace("acme-a", "?").replace(str(t.ingest_a["id"]), "?")
        assert normal == unseen["detail"].replace("acme-z", "?").replace("999999999", "?")
    assert (await client.get("/v1/projects/acme-b", headers=other)).status_code == 200

    ingest = bearer(t.ingest_a["key"])
    for method, path, body in _endpoints(t):
        response = await _call(client, method, path, body, ingest)
        problem = assert_problem(response, 403, "")
        assert problem["type"].endswith(":insufficient-scope"), (method, path)
    # archiving is the operator's, even for the project's admin key, which may change the rest
    assert_problem(
        await client.patch("/v1/projects/acme-a", headers=bearer(t.admin_a["key"]),
                           json={"archived": True}),
        403,
        "archiving or restoring a project (`archived`) needs an operator's token",
    )  # fmt: skip


async def test_project_keys_never_reach_the_server_wide_endpoints(
    client: Client, tenants: Tenants
) -> None:
    key = bearer(tenants.admin_a["key"])
    for method, path, body in (
        ("POST", "/v1/catalog/refresh", {}),
        ("GET", "/v1/overrides", None),
        ("POST", "/v1/overrides",
         {"provider": "openai", "model": "gpt-test-000", "prices": {"input_cost_per_token": "1"}}),
        ("DELETE", "/v1/overrides/1", None),
    ):  # fmt: skip
        response = await _call(client, method, path, body, key)
        problem = assert_problem(response, 403, "server-wide")
        assert problem["type"].endswith(":insufficient-scope")
    response = await client.get("/v1/overrides", headers=bearer(tenants.revoked_a))
    assert_problem(response, 401, "revoked")


async def test_an_archived_project_s_keys_refuse_everything_until_it_is_restored(
    client: Client, tenants: Tenants
) -> None:
    key = bearer(tenants.admin_a["key"])
    archived = await client.patch("/v1/projects/acme-a", headers=admin(), json={"archived": True})
    assert archived.json()["archived_at"] is not None
    listed = (await client.get("/v1/projects", headers=admin())).json()
    assert [p["slug"] for p in listed] == ["acme-b"]
    every = (await client.get("/v1/projects?archived=true", headers=admin())).json()
    assert [p["slug"] for p in every] == ["acme-a", "acme-b"]
    problem = assert_problem(await client.get("/v1/projects/acme-a", headers=key), 403, "archived")
    assert problem["type"].endswith(":project-archived")
    await client.patch("/v1/projects/acme-a", headers=admin(), json={"archived": False})
    assert (await client.get("/v1/projects/acme-a", headers=key)).status_code == 200


async def test_keys_appear_in_no_log_line_problem_or_metric(
    client: Client, tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    t = tenants
    seen: list[str] = []
    for headers in (bearer(t.admin_a["key"]), bearer(t.last_char_a), bearer(t.revoked_a)):
        for method, path, body in _endpoints(t):
            seen.append((await _call(client, method, path, body, headers)).text)
    created = await make_key(client, "acme-b", ["read"])
    seen.append((await client.get("/metrics")).text)
    seen.append("\n".join(r.getMessage() for r in caplog.records))
    seen.append("\n".join(str(r.__dict__) for r in caplog.records))
    text = "\n".join(seen)
    for key in (t.admin_a["key"], t.last_char_a, t.revoked_a, created["key"]):
        assert key not in text
        assert key.split("_", 2)[2] not in text  # nor the secret alone
    assert 'path="/v1/projects/{project}"' in seen[-3]  # metrics label the route, not the path


async def test_only_the_hash_of_a_secret_is_stored_and_use_is_recorded_without_a_write_each(
    api_settings: Settings, redis_clean: None, pg: asyncpg.Connection
) -> None:
    version = "SELECT xmin::text, last_used_at FROM api_keys WHERE id = $1"
    async with AsyncTestClient(app=create_app(api_settings)) as client:
        await make_project(client, "acme-a")
        created = await make_key(client, "acme-a", ["read"])
        key, key_id = created["key"], created["id"]
        dump = repr([dict(r) for r in await pg.fetch("SELECT * FROM api_keys")])
        for text in (key, key.split("_", 2)[2]):
            assert text not in dump
        before = await pg.fetchrow(version, key_id)
        for _ in range(20):
            response = await client.get("/v1/projects/acme-a", headers=bearer(key))
            assert response.status_code == 200
        # the row is untouched: uses wait in memory for API_KEY_LAST_USED_INTERVAL_SECONDS
        assert await pg.fetchrow(version, key_id) == before
        assert before["last_used_at"] is None
    # ... and are written when the process stops, or every interval
    stopped = await pg.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id)
    assert stopped is not None
    assert datetime.now(UTC) - stopped < timedelta(minutes=1)

    often = replace_settings(api_settings, api_key_last_used_interval_seconds=0.2)
    async with AsyncTestClient(app=create_app(often)) as client:
        response = await client.get("/v1/projects/acme-a", headers=bearer(key))
        assert response.status_code == 200
        for _ in range(50):
            used_at = await pg.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id)
            if used_at > stopped:
                break
            await asyncio.sleep(0.1)
        assert used_at > stopped  # while the process runs


async def test_a_misspelled_query_parameter_is_a_422_not_ignored(client: Client) -> None:
    problem = assert_problem(
        await client.get("/v1/projects?archvied=true", headers=admin()), 422, "archvied"
    )
    assert problem["fields"] == ["archvied"]
    assert "this route takes archived" in problem["detail"]
    assert_problem(await client.get("/v1/models?limt=5"), 422, "limt")
    assert (await client.get("/v1/models?limit=5&q=gpt")).status_code == 200


async def test_text_the_database_cannot_store_is_a_422_not_a_500(client: Client) -> None:
    for body, field in (
        ({"slug": "nul", "name": "a\x00b"}, "name"),
        ({"slug": "nul", "name": "ok", "time_zone": "UTC\x00"}, "time_zone"),
        ({"slug": "nul\x00", "name": "ok"}, "slug"),
    ):
        problem = assert_problem(
            await client.post("/v1/projects", headers=admin(), json=body), 422, field
        )
        assert problem["fields"] == [field]
    await make_project(client, "nul")
    bad_key = {"name": "tab\there", "scopes": ["read"]}
    assert_problem(
        await client.post("/v1/projects/nul/keys", headers=admin(), json=bad_key), 422, "name"
    )
    # a text field that no check of its own covers: the database's refusal is a 422 too
    override = {"provider": "openai", "model": "gpt-test-000", "reason": "x\x00y",
                "prices": {"input_cost_per_token": "0.000001"}}  # fmt: skip
    with capture_logs() as logs:
        problem = assert_problem(
            await client.post("/v1/overrides", headers=admin(), json=override), 422, "cannot store"
        )
    assert problem["type"].endswith(":invalid-request")
    # the answer names the fault; PostgreSQL's own message (which may name a table) is logged
    assert "NUL character" in problem["detail"]
    assert "0x00" not in problem["detail"]
    (logged,) = [e for e in logs if e["event"] == "text the database cannot store"]
    assert "0x00" in logged["error"]


async def test_a_missing_table_is_a_503_that_names_the_remedy_not_the_table(
    client: Client, pg: asyncpg.Connection
) -> None:
    """An API newer than its database: the answer, which anyone may get, says what to run; the
    log says which table or column is missing."""
    await make_project(client, "behind")
    key = (await make_key(client, "behind", ["read"]))["key"]
    await pg.execute("DROP TABLE api_keys CASCADE")
    with capture_logs() as logs:
        problem = assert_problem(
            await client.get("/v1/projects/behind", headers=bearer(key)), 503,
            "the database schema is not migrated; the task runner applies the migrations at "
            "start, or run: aiserver-db migrate",
        )  # fmt: skip
    assert problem["type"].endswith(":schema-not-migrated")
    assert "api_keys" not in str(problem)
    (logged,) = [e for e in logs if e["event"] == "database schema behind"]
    assert "api_keys" in logged["error"]


async def test_the_credential_is_checked_before_the_body_or_the_query(client: Client) -> None:
    for response in (
        await client.post("/v1/projects", content=b"{not json"),
        await client.get("/v1/projects?junk=1"),
        await client.post("/v1/projects/acme-a/keys", content=b"x" * 100_000),
    ):
        problem = assert_problem(response, 401, "Authorization: Bearer")
        assert problem["type"].endswith(":unauthorized")


async def test_an_empty_change_changes_nothing_and_answers_the_project_as_it_is(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    """`PATCH` with `{}` answers 200 with the project as it is, as a budget's does: it wrote
    the row all the same, moving `updated_at` forward for a change that changed nothing."""
    before = (await client.get("/v1/projects/acme-a", headers=admin())).json()
    stored = await pg.fetchval("SELECT updated_at FROM projects WHERE slug = 'acme-a'")
    for headers in (admin(), bearer(tenants.admin_a["key"])):
        changed = await client.patch("/v1/projects/acme-a", headers=headers, json={})
        assert changed.status_code == 200, changed.text
        assert changed.json() == before
    assert await pg.fetchval("SELECT updated_at FROM projects WHERE slug = 'acme-a'") == stored
    # who may not change it still may not, nor change another project
    ingest, admin_a = bearer(tenants.ingest_a["key"]), bearer(tenants.admin_a["key"])
    refused = await client.patch("/v1/projects/acme-a", headers=ingest, json={})
    assert_problem(refused, 403, "admin")
    other = await client.patch("/v1/projects/acme-b", headers=admin_a, json={})
    assert_problem(other, 404, "no project")
