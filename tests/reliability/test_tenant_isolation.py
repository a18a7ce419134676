"""Scenario 3 of issue 23: tenant isolation, every endpoint and method, every scope.

One real `aiserver-api` process on a throwaway database with two projects, A and B, each holding
every kind of thing a project has: events (folded into rollups, and in the outbox), budgets (a
hard one, one whose alerts fired), reservations, keys, reprice runs and their task-runner jobs.
Every route of the application is read from its route table and its OpenAPI document: a route
that is not in the matrix below fails the test by name.

Each project asks in turn (`ASKERS`): in a test, `a` is the asking project and `b` the other.
The asker's credentials are a key of every non-empty set of the scopes `ingest`, `read`,
`admin`, no key, a revoked key and an expired key. For each route, method and credential:

- a request that names b's thing (its slug, budget, event, reservation, key, run or job) and
  one that names a thing that exists nowhere are answered alike: same status, same headers, same
  body, once the name itself (where the answer echoes it), `date`, `x-request-id` and
  `content-length` are set aside;
- no answer holds anything of b: its slug, its name, a tag value, a budget or key name, a key's
  public id, an event key, a reservation id, an amount, or any of its row ids (every table's ids
  are made distinct in the whole database first, so that an id can be searched for as text);
- a credential that lacks the route's scope is refused with a 403 problem on the asker's own
  thing, one that has it succeeds there; b's thing is never a success;
- nothing of b changes: every row of every table, except the asker's own rows, is read before
  and after and compared exactly.

The dashboard (/ui) is asked the same way through sessions that the asker's keys signed in: its
pages show the asker's data only, and its forms act on nothing of b.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import httpx
import pytest

from aiserver.api.app import create_app
from aiserver.costs.money import money
from aiserver.documents import store as documents
from aiserver.documents.jobs import process_job_id
from aiserver.ledger.spend.folding import fold_all

from ..conftest import make_settings, replace_settings
from .harness import (
    ADMIN_TOKEN,
    PROBLEM_JSON,
    ApiProcess,
    api_env,
    api_process,
    catalogued_database,
    drop_served,
    errors_logged,
    eventually,
)

pytestmark = pytest.mark.slow

A: Final = "iso-alpha"
B: Final = "iso-beta"
NOWHERE: Final = "iso-nowhere"
MISSING_ID: Final = 987_654_321
MODEL: Final = "gpt-test-001"
SCOPES: Final = ("ingest", "read", "admin")
#: Every non-empty set of scopes, by name: "ingest", ..., "ingest+read", ..., "ingest+read+admin".
SCOPE_SETS: Final = {
    "+".join(chosen): frozenset(chosen)
    for size in (1, 2, 3)
    for chosen in itertools.combinations(SCOPES, size)
}
#: A's credentials that are no valid key: every project route answers them 401.
INVALID: Final = ("no-key", "revoked", "expired")
#: What may differ between two answers that must be the same.
VARYING_HEADERS: Final = frozenset({"date", "x-request-id", "content-length"})
#: Every table's ids start at their own multiple of this (see `distinct_ids`).
ID_SPACING: Final = 10_000_000
#: Tables that hold nobody's rows (the catalog, documents' pages, migrations): they must not
#: change either, as a whole. (`documents` has a `project_id`: a project key's uploads are its.)
NOBODY_S: Final = frozenset(
    {
        "ai_cost_metadata",
        "ai_cost_overrides",
        "ai_cost_refresh_runs",
        "ai_model_aliases",
        "ai_model_alias_history",
        "ai_model_costs",
        "documents",
        "document_pages",
        "migration",
        "usage_retention",  # how long the partitions are kept, for every project
    }
)
WAIT_S: Final = 60.0
#: B's tables that hold none of its rows: they need a task runner at work (a webhook delivered,
#: an applied reprice that changed a price), which this module does not run.
EMPTY_FOR_B: Final = frozenset({"webhook_deliveries", "usage_adjustments"})
SETTLED_AT: Final = datetime.now(UTC).replace(microsecond=0).isoformat()

# -- the matrix --------------------------------------------------------------------------------

Body = Callable[["World", str], Any]


@dataclass(frozen=True)
class Api:
    """A route of a project: `scopes` is the set of which any one lets a key in (empty: the
    operator's only); `target` is the kind of thing the request names (in its path, or in
    `where`: "body" or "query"), None for a route that names nothing."""

    scopes: frozenset[str]
    target: str | None = None
    where: str = "path"
    body: Body | None = None
    fresh: bool = False  # A's own target is made anew for each request (the request ends it)
    own_status: int = 200
    query: dict[str, str] | None = None
    #: Refusals are RFC 9457 problems (OTLP answers its own `Status` message instead)
    problems: bool = True
    #: A success acts on the caller's project alone, whatever the id names: B's id is answered
    #: as one that exists nowhere (a release of an id writes it down as released in A's
    #: project), so a 2xx about B's thing is no success on it; B's rows are checked unchanged
    blind: bool = False


@dataclass(frozen=True)
class Public:
    """A route that holds no project's data, or not only (health, catalog, documents, the
    schema): A's credentials get no B data from it; a `target` is compared as on a project's
    route (documents: B's, uploaded with B's key, is answered as one that is nowhere)."""

    target: str | None = None
    body: Body | None = None


@dataclass(frozen=True)
class Page:
    """A dashboard route: `scopes` as for `Api` (a session is a key's with `read`, see
    `aiserver.api.ui.signin`); `form` is what a POST sends besides the CSRF token."""

    scopes: frozenset[str] = frozenset({"read"})
    target: str | None = None
    form: dict[str, str] | None = None
    fresh: bool = False
    own_status: int = 200


def any_of(*scopes: str) -> frozenset[str]:
    return frozenset(scopes)


def event_body(world: World, _: str) -> dict[str, Any]:
    return {
        "id": f"{world.a.label}-ingest-{next(world.counter)}",
        "model": MODEL,
        "usage": {"input_tokens": 100, "output_tokens": 10},
        "tags": {"team": world.a.team},
    }


def budget_body(world: World, _: str) -> dict[str, Any]:
    name = f"{world.a.label}-budget-{next(world.counter)}"
    return {"name": name, "limit_usd": "100", "period": "month"}


def project_named(_: World, target: str) -> dict[str, Any]:
    return {"project": target}


OPERATOR: Final = any_of()
WINDOW: Final = {"from": "2020-01-01", "to": "2030-01-01"}
#: (method, path as Litestar's route table writes it) -> what is asked there.
ROUTES: Final[dict[tuple[str, str], Api | Public]] = {
    # projects and keys
    ("POST", "/v1/projects"): Api(OPERATOR, body=lambda w, _: {"slug": "iso-made", "name": "x"}),
    ("GET", "/v1/projects"): Api(OPERATOR),
    ("GET", "/v1/projects/{project:str}"): Api(any_of("read", "admin"), "slug"),
    ("PATCH", "/v1/projects/{project:str}"): Api(
        any_of("admin"), "slug", body=lambda w, _: {"name": w.a.name}
    ),
    ("POST", "/v1/projects/{project:str}/keys"): Api(
        any_of("admin"),
        "slug",
        body=lambda w, _: {"name": f"{w.a.label}-made", "scopes": ["read"]},
        own_status=201,
    ),
    ("GET", "/v1/projects/{project:str}/keys"): Api(any_of("admin"), "slug"),
    ("DELETE", "/v1/keys/{key_id:int}"): Api(any_of("admin"), "key", fresh=True),
    # budgets, alerts, reservations
    ("POST", "/v1/budgets"): Api(any_of("admin"), body=budget_body, own_status=201),
    ("GET", "/v1/budgets"): Api(any_of("read", "admin")),
    ("GET", "/v1/budgets/{budget_id:int}"): Api(any_of("read", "admin"), "budget"),
    ("PATCH", "/v1/budgets/{budget_id:int}"): Api(
        any_of("admin"), "budget", body=lambda w, _: {"name": f"{w.a.label}-budget"}
    ),
    ("DELETE", "/v1/budgets/{budget_id:int}"): Api(
        any_of("admin"), "budget", fresh=True, own_status=204
    ),
    ("GET", "/v1/budgets/alerts"): Api(any_of("read", "admin")),
    ("GET", "/v1/budgets/{budget_id:int}/alerts"): Api(any_of("read", "admin"), "budget"),
    ("POST", "/v1/budgets/reserve"): Api(
        any_of("ingest"),
        own_status=201,
        body=lambda w, _: {
            "model": MODEL,
            "estimate": "0.01",
            "tags": {"team": w.a.team},
        },
    ),
    ("POST", "/v1/budgets/reservations/{reservation_id:str}/release"): Api(
        any_of("ingest"), "reservation", blind=True
    ),
    # usage
    ("POST", "/v1/usage"): Api(any_of("ingest"), body=event_body, own_status=201),
    ("POST", "/v1/otlp/v1/traces"): Api(any_of("ingest"), body=lambda w, _: {}, problems=False),
    ("GET", "/v1/usage/events"): Api(any_of("read")),
    ("GET", "/v1/usage/events/{event_id:int}"): Api(any_of("read"), "event"),
    ("GET", "/v1/usage/export"): Api(any_of("read"), query=WINDOW),
    ("GET", "/v1/spend"): Api(any_of("read"), query={**WINDOW, "group_by": "tag:team"}),
    ("POST", "/v1/usage/reprice"): Api(
        any_of("admin"), "slug", where="body", body=project_named, own_status=202
    ),
    ("GET", "/v1/usage/reprice"): Api(any_of("read", "admin"), "slug", where="query"),
    ("GET", "/v1/usage/reprice/{run_id:int}"): Api(any_of("read", "admin"), "run"),
    # the operator's
    ("POST", "/v1/catalog/refresh"): Api(OPERATOR, body=lambda w, _: {"force": True}),
    ("GET", "/v1/overrides"): Api(OPERATOR),
    ("POST", "/v1/overrides"): Api(
        OPERATOR,
        body=lambda w, _: {
            "provider": "openai",
            "model": MODEL,
            "prices": {"input_cost_per_token": "1"},
        },
    ),
    ("DELETE", "/v1/overrides/{override_id:int}"): Api(OPERATOR, "override"),
    # nobody's
    ("GET", "/health"): Public(),
    ("GET", "/ready"): Public(),
    ("GET", "/metrics"): Public(),
    ("GET", "/v1/catalog"): Public(),
    ("GET", "/v1/jobs/{job_id:str}"): Public("job"),
    ("GET", "/v1/models"): Public(),
    ("GET", "/v1/models/{model:path}"): Public("model"),
    ("POST", "/v1/costs/calculate"): Public(
        body=lambda w, _: {"model": MODEL, "usage": {"input_tokens": 1, "output_tokens": 1}}
    ),
    ("POST", "/v1/costs/calculate/batch"): Public(body=lambda w, _: {"requests": []}),
    ("POST", "/v1/documents"): Public(body=lambda w, _: {}),  # no file: refused, stores nothing
    ("GET", "/v1/documents/{document_id:uuid}"): Public("document"),
    ("GET", "/v1/documents/{document_id:uuid}/pdf"): Public("document"),
    ("GET", "/v1/documents/{document_id:uuid}/pages/{page_file:str}"): Public("document"),
    # the OpenAPI document and its viewers (Litestar's)
    ("GET", "/schema"): Public(),
    ("GET", "/schema/openapi.json"): Public(),
    ("GET", "/schema/oauth2-redirect.html"): Public(),
    ("GET", "/schema/scalar"): Public(),
    ("GET", "/schema/swagger"): Public(),
    ("GET", "/schema/{path:str}"): Public("schema"),
}

UI: Final = "/ui/p/{slug:str}"
PAGES: Final[dict[tuple[str, str], Page | Public]] = {
    ("GET", "/ui/sign-in"): Public(),
    ("POST", "/ui/sign-in"): Public(),  # asked in the sign-in test, with every key of A
    ("POST", "/ui/sign-out"): Page(),  # asked last, with a session of its own
    ("GET", "/ui"): Page(own_status=303),
    ("GET", "/ui/catalog"): Page(),
    ("GET", "/ui/catalog/{model:path}"): Page(target="model"),
    ("GET", "/ui/static/{file_path:path}"): Public("static"),
    ("GET", UI): Page(target="slug"),
    ("GET", UI + "/explore"): Page(target="slug"),
    ("GET", UI + "/explore.csv"): Page(target="slug"),
    ("GET", UI + "/events"): Page(target="slug"),
    ("GET", UI + "/events/{event_id:int}"): Page(target="event"),
    # asked without a window: the page again, saying why (422); another project's: 404
    ("GET", UI + "/events/export"): Page(target="slug", own_status=422),
    ("GET", UI + "/budgets"): Page(target="slug"),
    ("POST", UI + "/budgets"): Page(
        any_of("admin"),
        "slug",
        own_status=303,
        form={"name": "{label}-ui-budget", "limit_usd": "5", "period": "month"},
    ),
    ("GET", UI + "/budgets/{budget_id:int}"): Page(target="budget"),
    ("POST", UI + "/budgets/{budget_id:int}"): Page(
        any_of("admin"),
        "budget",
        own_status=303,
        form={"name": "{label}-budget", "limit_usd": "1000"},
    ),
    ("GET", UI + "/budgets/{budget_id:int}/delete"): Page(any_of("admin"), "budget"),
    ("POST", UI + "/budgets/{budget_id:int}/delete"): Page(
        any_of("admin"), "budget", fresh=True, own_status=303
    ),
    ("GET", UI + "/keys"): Page(any_of("admin"), "slug"),
    ("POST", UI + "/keys"): Page(
        any_of("admin"), "slug", own_status=201, form={"name": "{label}-ui-key", "scopes": "read"}
    ),
    ("GET", UI + "/keys/{key_id:int}/revoke"): Page(any_of("admin"), "key", fresh=True),
    ("POST", UI + "/keys/{key_id:int}/revoke"): Page(
        any_of("admin"), "key", fresh=True, own_status=303
    ),
}


# -- the world: two projects and their things ----------------------------------------------------


@dataclass
class Things:
    """One project's things, by kind (the values a request names)."""

    slug: str
    name: str
    team: str  # its events' tag value
    label: str  # what its own names start with
    id: int = 0
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # by scope set name
    budget: int = 0
    hard_budget: int = 0
    event: int = 0
    reservation: str = ""
    document: str = ""  # uploaded with its ingest key
    run: int = 0
    cursor: str = ""
    texts: set[str] = field(default_factory=set)  # its text that no other project may see
    ids: set[int] = field(default_factory=set)  # the ids of its rows

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]['key']}"}


@dataclass
class World:
    url: str
    api: ApiProcess
    a: Things
    b: Things
    override: int
    counter: Iterator[int] = field(default_factory=itertools.count)


OPERATOR_AUTH: Final = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def ok(response: httpx.Response, *statuses: int) -> Any:
    assert response.status_code in (statuses or (200, 201)), (
        f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
    )
    return response.json() if response.content else None


async def distinct_ids(url: str) -> None:
    """Start every table's id sequence at a multiple of `ID_SPACING` of its own, so that no two
    rows of the database share an id and any id can be searched for in an answer as text."""
    conn = await asyncpg.connect(url)
    try:
        names = await conn.fetch(
            "SELECT schemaname, sequencename FROM pg_sequences WHERE schemaname = 'public' "
            "ORDER BY sequencename"
        )
        for i, row in enumerate(names, start=1):
            await conn.execute(
                "SELECT setval($1::regclass, $2, false)",
                f'"{row["schemaname"]}"."{row["sequencename"]}"',
                i * ID_SPACING,
            )
    finally:
        await conn.close()


async def make_project(
    client: httpx.AsyncClient, url: str, slug: str, name: str, team: str, label: str
) -> Things:
    """A project with a key of every scope set, events tagged `team`, a budget whose alerts
    fired, a hard budget holding a reservation, a reprice run (and its job), and a cursor."""
    things = Things(slug, name, team, label)
    ok(
        await client.post(
            "/v1/projects",
            headers=OPERATOR_AUTH,
            json={"slug": slug, "name": name, "rollup_tags": ["team"]},
        )
    )
    for scope_name, scopes in SCOPE_SETS.items():
        things.keys[scope_name] = ok(
            await client.post(
                f"/v1/projects/{slug}/keys",
                headers=OPERATOR_AUTH,
                json={"name": f"{label}-key-{scope_name}", "scopes": sorted(scopes)},
            )
        )
    admin = things.auth("admin")
    limits = {"budget": "0.000321", "hard-budget": "4242.4242" if label == "beta" else "1717.1717"}
    made = {}
    for kind, limit in limits.items():
        fields = {"thresholds": ["50", "100"]} if kind == "budget" else {"hard": True}
        body = {"name": f"{label}-{kind}", "limit_usd": limit, "period": "month", **fields}
        made[kind] = ok(await client.post("/v1/budgets", headers=admin, json=body))["id"]
    things.budget, things.hard_budget = made["budget"], made["hard-budget"]
    events = [
        {
            "id": f"{label}-event-{i}",
            "model": MODEL,
            "usage": {"input_tokens": 300 + i, "output_tokens": 7},
            "tags": {"team": team},
        }
        for i in range(5)
    ]
    recorded = ok(
        await client.post("/v1/usage", headers=things.auth("ingest"), json={"events": events})
    )
    things.event = recorded["results"][0]["event_id"]
    things.reservation = ok(
        await client.post(
            "/v1/budgets/reserve",
            headers=things.auth("ingest"),
            json={"model": MODEL, "estimate": "1.5", "tags": {"team": team}},
        )
    )["reservation_id"]
    things.run = ok(await client.post("/v1/usage/reprice", headers=admin, json={}), 202)["id"]
    uploaded = await client.post(
        "/v1/documents",
        headers=things.auth("ingest"),
        files={"file": (f"{label}-document.txt", f"{label} text".encode(), "text/plain")},
    )
    things.document = ok(uploaded, 202)["id"]
    conn = await asyncpg.connect(url)
    try:  # converted, as the task runner leaves it: its PDF and page are there to be asked for
        await documents.save_outputs(
            conn, uuid.UUID(things.document), pdf=b"%PDF-1.4 " + label.encode(), page_count=1,
            text=f"{label}-document-text", text_truncated=False,
            pages=[b"\x89PNG " + label.encode()],
        )  # fmt: skip
    finally:
        await conn.close()
    page = ok(
        await client.get("/v1/usage/events", headers=things.auth("read"), params={"limit": 2})
    )
    things.cursor = page["next_cursor"]
    conn = await asyncpg.connect(url)
    try:
        things.id = await conn.fetchval("SELECT id FROM projects WHERE slug = $1", slug)
        alerts = await conn.fetchval(
            "SELECT count(*) FROM budget_alerts WHERE project_id = $1", things.id
        )
    finally:
        await conn.close()
    assert alerts > 0, f"{slug}: no budget alert fired"
    return things


async def rows_but(url: str, project_id: int) -> dict[str, list[str]]:
    """Every row of every table but `project_id`'s own, as text, sorted: what A's requests
    must leave as it is. A table that is neither a project's (no `project_id`) nor nobody's
    (`NOBODY_S`) fails: a new kind of thing must be placed on one side first."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT table_name, bool_or(column_name = 'project_id') AS owned "
            "FROM information_schema.columns WHERE table_schema = 'public' "
            "GROUP BY table_name ORDER BY table_name"
        )
        found = {}
        for row in tables:
            name = row["table_name"]
            if row["owned"]:
                where = "project_id IS DISTINCT FROM $1"
            elif name == "projects":
                where = "id <> $1"
            else:
                assert name in NOBODY_S, f"table {name}: no project_id, and not nobody's"
                where = "$1::bigint IS NOT NULL"
            rows = await conn.fetch(
                f'SELECT t::text AS r FROM "{name}" t WHERE {where}',  # noqa: S608
                project_id,
            )
            found[name] = sorted(r["r"] for r in rows)
        return found
    finally:
        await conn.close()


def changed_rows(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """What changed between two `rows_but` readings, a line per table."""
    wrong = []
    for table in sorted(set(before) | set(after)):
        gone = set(before.get(table, [])) - set(after.get(table, []))
        new = set(after.get(table, [])) - set(before.get(table, []))
        if gone or new:
            wrong.append(f"{table}: rows not A's changed: {sorted(gone)[:3]} -> {sorted(new)[:3]}")
    return wrong


async def empty_tables(url: str, project_id: int) -> set[str]:
    """The tables of projects' rows that hold none of `project_id`'s."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND column_name = 'project_id'"
        )
        return {
            t["table_name"]
            for t in tables
            if not await conn.fetchval(
                f'SELECT count(*) FROM "{t["table_name"]}" WHERE project_id = $1',  # noqa: S608
                project_id,
            )
        }
    finally:
        await conn.close()


async def ids_of(url: str, project_id: int) -> set[int]:
    """Every id of a project's rows (`id` columns), and the project's own."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND column_name = 'project_id' INTERSECT SELECT table_name FROM "
            "information_schema.columns WHERE table_schema = 'public' AND column_name = 'id'"
        )
        found = {project_id}
        for row in tables:
            ids = await conn.fetch(
                f'SELECT id FROM "{row["table_name"]}" WHERE project_id = $1',  # noqa: S608
                project_id,
            )
            found.update(r["id"] for r in ids if isinstance(r["id"], int))
        return found
    finally:
        await conn.close()


async def texts_of(url: str, b: Things) -> set[str]:
    """A project's text that no answer to another project's credentials may hold."""
    conn = await asyncpg.connect(url)
    try:
        texts = {b.slug, b.name, b.team, b.reservation}
        texts.update(
            r["name"]
            for r in await conn.fetch(
                "SELECT name FROM budgets WHERE project_id = $1 UNION SELECT name FROM api_keys "
                "WHERE project_id = $1",
                b.id,
            )
        )
        for r in await conn.fetch(
            "SELECT filename, text FROM documents WHERE project_id = $1", b.id
        ):
            texts.update((r["filename"], r["text"]))
        texts.update(
            r["public_id"]
            for r in await conn.fetch("SELECT public_id FROM api_keys WHERE project_id = $1", b.id)
        )
        texts.update(
            r["event_key"]
            for r in await conn.fetch(
                "SELECT event_key FROM usage_events WHERE project_id = $1", b.id
            )
        )
        texts.update(
            money(r["limit_usd"])
            for r in await conn.fetch(
                "SELECT limit_usd FROM budgets WHERE project_id = $1 AND hard", b.id
            )
        )
        return texts
    finally:
        await conn.close()


async def invalid_keys(client: httpx.AsyncClient, things: Things) -> None:
    """A revoked key and an expired one of the project, every scope each."""
    for kind in ("revoked", "expired"):
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        fields = {"expires_at": soon} if kind == "expired" else {}
        things.keys[kind] = ok(
            await client.post(
                f"/v1/projects/{things.slug}/keys",
                headers=OPERATOR_AUTH,
                json={"name": f"{things.label}-{kind}", "scopes": list(SCOPES), **fields},
            )
        )
    ok(await client.delete(f"/v1/keys/{things.keys['revoked']['id']}", headers=OPERATOR_AUTH))

    async def expired() -> bool:
        answer = await client.get(f"/v1/projects/{things.slug}", headers=things.auth("expired"))
        return answer.status_code == 401

    await eventually(expired, timeout=WAIT_S)


async def facing(world: World, asker: str) -> World:
    """The world as `asker` ("a" or "b") sees it: it is `a`, the other project `b`, whose text
    and ids are read afresh (what earlier tests made included)."""
    mine, theirs = (world.a, world.b) if asker == "a" else (world.b, world.a)
    theirs.texts = await texts_of(world.url, theirs)
    theirs.ids = await ids_of(world.url, theirs.id)
    return dataclasses.replace(world, a=mine, b=theirs)


@pytest.fixture(scope="module")
async def world(
    migrated_template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    url = await catalogued_database(migrated_template_url)
    try:
        await distinct_ids(url)
        # last_used_at is written only when the process stops: B's rows stay still meanwhile
        env = api_env(
            url, upstream_url="http://127.0.0.1:9/none", API_KEY_LAST_USED_INTERVAL_SECONDS="3600"
        )
        logs = tmp_path_factory.mktemp("tenants")
        async with api_process(env, logs / "api.log") as api, api.client() as client:
            a = await make_project(client, url, A, "Alpha Seen Name", "alpha-seen-team", "alpha")
            b = await make_project(client, url, B, "Beta Hidden Name", "beta-hidden-team", "beta")
            override = ok(
                await client.post(
                    "/v1/overrides",
                    headers=OPERATOR_AUTH,
                    json={
                        "provider": "openai",
                        "model": "gpt-test-039",
                        "prices": {"input_cost_per_token": "0.000001"},
                    },
                )
            )["id"]
            for things in (a, b):
                await invalid_keys(client, things)
            conn = await asyncpg.connect(url)
            try:  # the task runner's fold: the setup's events into the rollups
                await fold_all(conn)
            finally:
                await conn.close()
            for things in (a, b):
                late = {
                    "id": f"{things.label}-late",
                    "model": MODEL,
                    "tags": {"team": things.team},
                    "usage": {"input_tokens": 20, "output_tokens": 2},
                }  # in the outbox
                ok(await client.post("/v1/usage", headers=things.auth("ingest"), json=late))
                assert await empty_tables(url, things.id) == EMPTY_FOR_B
            yield World(url, api, a, b, override)
        assert errors_logged(logs / "api.log") == []
    finally:
        await drop_served(url)


# -- asking, and comparing answers ---------------------------------------------------------------


def credentials(world: World) -> dict[str, dict[str, str]]:
    """A's credentials by name: every scope set, and the invalid ones."""
    found = {name: world.a.auth(name) for name in SCOPE_SETS}
    found["revoked"] = world.a.auth("revoked")
    found["expired"] = world.a.auth("expired")
    found["no-key"] = {}
    return found


def fill(path: str, value: str) -> str:
    """A route's path with its (one) parameter set; other parameters take fixed values."""
    fixed = {"page_file": "1.png"}

    def one(match: re.Match[str]) -> str:
        return fixed.get(match.group(1), value)

    return re.sub(r"\{(\w+)(?::\w+)?\}", one, path)


def normal(response: httpx.Response, echoed: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """An answer with what may differ set aside: `VARYING_HEADERS`, and the name the request
    gave (`echoed`) wherever the answer repeats it."""
    pattern = re.compile(rb"(?<![0-9A-Za-z-])" + re.escape(echoed.encode()) + rb"(?![0-9A-Za-z-])")
    body = pattern.sub(b"{named}", response.content)
    headers = sorted(
        (k, pattern.sub(b"{named}", v.encode()).decode())
        for k, v in response.headers.multi_items()
        if k not in VARYING_HEADERS
    )
    return response.status_code, headers, body


def leaks(world: World, response: httpx.Response, echoed: str | None = None) -> list[str]:
    """B's text or ids in an answer (body and headers), but for what the request named."""
    text = response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    if echoed is not None:
        text = re.sub(r"(?<![0-9A-Za-z-])" + re.escape(echoed) + r"(?![0-9A-Za-z-])", "", text)
    found = [marker for marker in world.b.texts if marker in text]
    numbers = {int(n) for n in re.findall(r"(?<![0-9.])[0-9]{8,}(?![0-9])", text)}
    found += [str(n) for n in numbers & world.b.ids]
    return found


@dataclass
class Asked:
    route: tuple[str, str]
    who: str
    target: str  # own, theirs, nowhere, or "" for a route that names nothing
    named: str
    response: httpx.Response

    def __str__(self) -> str:
        return f"{self.route[0]} {self.route[1]} as {self.who} ({self.target or '-'} {self.named})"


def problem_type(response: httpx.Response) -> str:
    if response.headers.get("content-type", "").startswith(PROBLEM_JSON):
        kind: str = response.json().get("type", "")
        return kind.rpartition(":")[2]
    return ""


async def app_routes(url: str) -> set[tuple[str, str]]:
    """(method, path) of every route handler in Litestar's route table (OPTIONS, which Litestar
    answers by itself, and HEAD, a GET without its body, aside); (kind, path) of any other
    route (a mounted ASGI app, a websocket), which no matrix entry names."""
    settings = replace_settings(make_settings(url), api_admin_tokens=(ADMIN_TOKEN,))
    app = create_app(settings)
    found = set()
    for route in app.routes:
        if not hasattr(route, "route_handler_map"):  # a mounted ASGI app, a websocket
            found.add((type(route).__name__, route.path))
            continue
        for method in route.route_handler_map:
            if method not in ("OPTIONS", "HEAD"):
                found.add((method, route.path))
    return found


async def test_every_route_of_the_app_is_in_the_matrix(world: World) -> None:
    """The matrix names every route and method that the app serves, by its route table and its
    OpenAPI document; a new route fails here, named, until it is placed in the matrix."""
    table = await app_routes(world.url)
    known = set(ROUTES) | set(PAGES)
    missing = sorted(table - known)
    assert missing == [], f"routes not in the tenant isolation matrix: {missing}"
    assert sorted(known - table) == [], "routes in the matrix the app no longer serves"
    async with world.api.client() as client:
        document = ok(await client.get("/schema/openapi.json"))
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    bare = {(m, re.sub(r"\{(\w+):\w+\}", r"{\1}", p)) for m, p in known}
    assert sorted(documented - bare) == [], "documented routes not in the matrix"


#: Each project asks in turn: "a" is the asker in the tests, "b" the other.
ASKERS: Final = pytest.mark.parametrize("asker", ["a", "b"])


# -- the API matrix ------------------------------------------------------------------------------


async def fresh(client: httpx.AsyncClient, world: World, kind: str) -> str:
    """A new thing of A's, for a request that ends it (a revoked key, a deleted budget)."""
    if kind == "key":
        made = ok(
            await client.post(
                f"/v1/projects/{world.a.slug}/keys",
                headers=OPERATOR_AUTH,
                json={"name": f"{world.a.label}-spare", "scopes": ["read"]},
            )
        )
    else:
        made = ok(
            await client.post(
                "/v1/budgets", headers=world.a.auth("admin"), json=budget_body(world, "")
            )
        )
    return str(made["id"])


def named(world: World, kind: str, whose: str) -> str:
    """The name of a thing of `kind`: A's own, B's (`theirs`), or one that exists nowhere."""
    a, b = world.a, world.b
    values = {
        "slug": (a.slug, b.slug, NOWHERE),
        "budget": (a.budget, b.budget, MISSING_ID),
        "event": (a.event, b.event, MISSING_ID),
        "reservation": (a.reservation, b.reservation, str(uuid.UUID(int=MISSING_ID))),
        "key": (None, b.keys["ingest"]["id"], MISSING_ID),
        "run": (a.run, b.run, MISSING_ID),
        "job": tuple(  # a conversion: followed by whoever reads its document
            process_job_id(str(d)) for d in (a.document, b.document, uuid.UUID(int=MISSING_ID))
        ),
        "override": (world.override, world.override, MISSING_ID),
        "model": (MODEL, MODEL, "no-such-model"),
        "document": (a.document, b.document, uuid.UUID(int=MISSING_ID)),
        "static": ("ui.css",) * 3,
        "schema": ("openapi.yaml",) * 3,
    }[kind]
    return str(values[("own", "theirs", "nowhere").index(whose)])


async def ask(
    client: httpx.AsyncClient,
    world: World,
    route: tuple[str, str],
    spec: Api | Public,
    who: str,
    headers: dict[str, str],
    whose: str,
) -> Asked:
    method, path = route
    target = spec.target
    name = ""
    if target is not None:
        fresh_one = isinstance(spec, Api) and spec.fresh and whose == "own"
        name = await fresh(client, world, target) if fresh_one else named(world, target, whose)
    where = spec.where if isinstance(spec, Api) else "path"
    body = spec.body(world, name) if spec.body is not None else None
    params = dict(spec.query or {}) if isinstance(spec, Api) else {}
    if target is not None and where == "query":
        params["project"] = name
    url = fill(path, name) if where == "path" else path
    response = await client.request(method, url, headers=headers, json=body, params=params)
    return Asked(route, who, whose if target is not None else "", name, response)


def alike(asked: list[Asked]) -> list[str]:
    """The answers about B's thing and about a thing that is nowhere, when they differ."""
    by = {one.target: one for one in asked}
    if "theirs" not in by:
        return []
    theirs, nowhere = by["theirs"], by["nowhere"]
    if normal(theirs.response, theirs.named) == normal(nowhere.response, nowhere.named):
        return []
    return [
        f"{theirs} and {nowhere} differ: {theirs.response.status_code} "
        f"{theirs.response.content[:300]!r} vs {nowhere.response.status_code} "
        f"{nowhere.response.content[:300]!r}"
    ]


def judge_api(world: World, spec: Api, who: str, asked: list[Asked]) -> list[str]:
    """What is wrong with the answers to one credential on one route (nothing: [])."""
    wrong = []
    for one in asked:
        status, kind = one.response.status_code, problem_type(one.response)
        if not spec.problems:  # the status alone
            kind = {401: "unauthorized", 403: "insufficient-scope"}.get(status, kind)
        if who in INVALID:
            if (status, kind) != (401, "unauthorized"):
                wrong.append(f"{one}: {status} {kind}, not a 401 problem")
        elif not spec.scopes or not spec.scopes & SCOPE_SETS[who]:
            if (status, kind) != (403, "insufficient-scope"):
                wrong.append(f"{one}: {status} {kind}, not 403 insufficient-scope")
        elif one.target in ("own", "") and status != spec.own_status:
            wrong.append(f"{one}: {status}, not {spec.own_status}: {one.response.text[:300]}")
        if one.target == "theirs" and status < 400 and not spec.blind:
            wrong.append(f"{one}: {status}, a success on B's thing")
        wrong += [
            f"{one}: B's {leak!r} in the answer" for leak in leaks(world, one.response, one.named)
        ]
    return wrong + alike(asked)


@ASKERS
async def test_no_credential_of_a_reaches_or_reveals_b_on_any_route(
    world: World, asker: str, record_property: Any
) -> None:
    world = await facing(world, asker)
    before = await rows_but(world.url, world.a.id)
    wrong: list[str] = []
    asked = 0
    async with world.api.client() as client:
        for route, spec in ROUTES.items():
            for who, headers in credentials(world).items():
                whose = ("own", "theirs", "nowhere") if spec.target is not None else ("own",)
                if isinstance(spec, Public) and spec.target not in ("job", "document"):
                    whose = ("own",)
                answers = [await ask(client, world, route, spec, who, headers, w) for w in whose]
                asked += len(answers)
                if isinstance(spec, Api):
                    wrong += judge_api(world, spec, who, answers)
                else:
                    wrong += judge_public(world, answers)
    wrong += changed_rows(before, await rows_but(world.url, world.a.id))
    record_property("requests", asked)
    record_property("route_methods", len(ROUTES))
    record_property("credentials", len(credentials(world)))
    assert wrong == [], "\n".join(wrong)


#: A query parameter that no route takes.
UNKNOWN_QUERY: Final = {"zz-no-such-parameter": "1"}
#: Routes that only a project's key reaches: the operator's token is refused there (403).
KEYS_ONLY: Final = ("/v1/budgets", "/v1/otlp", "/v1/spend", "/v1/usage/events", "/v1/usage/export")


def keys_only(method: str, path: str) -> bool:
    return path.startswith(KEYS_ONLY) or (method, path) == ("POST", "/v1/usage")


async def test_a_credential_without_the_scope_is_refused_before_its_request_is_read(
    world: World,
) -> None:
    """A key that lacks a route's scope (and the operator's token on a route of a project's
    key) gets 403 whatever the request holds: with a query parameter the route does not take
    and a body that is not JSON, as with a good request (docs/keys.md); no credential, 401,
    asking for the credential that the route takes. The project, key,
    budget and reprice routes read the query and the body first: a read-only key learnt 422
    "unknown query parameters" or "missing required field `limit_usd`" instead."""
    wrong: list[str] = []
    asked = 0
    async with world.api.client() as client:
        for (method, path), spec in ROUTES.items():
            if not isinstance(spec, Api):
                continue
            refused = {
                who: world.a.auth(who) for who, scopes in SCOPE_SETS.items()
                if not spec.scopes & scopes
            }  # fmt: skip
            if keys_only(method, path):
                refused["operator"] = OPERATOR_AUTH
            refused["no-key"] = {}
            name = named(world, spec.target, "nowhere") if spec.target is not None else ""
            params = {**(spec.query or {}), **UNKNOWN_QUERY}
            if spec.target is not None and spec.where == "query":
                params["project"] = name
            url = fill(path, name) if spec.where == "path" else path
            for who, headers in refused.items():
                sent = {**headers, "content-type": "application/json"}
                body = b'{"zz": [' if method in ("POST", "PATCH") else None
                response = await client.request(
                    method, url, headers=sent, params=params, content=body
                )
                asked += 1
                status, kind = response.status_code, problem_type(response)
                expected = (401, "unauthorized") if who == "no-key" else (403, "insufficient-scope")
                if status != expected[0] or (spec.problems and kind != expected[1]):
                    wrong.append(f"{method} {path} as {who}: {status} {kind} {response.text[:200]}")
                elif who == "no-key" and spec.problems:
                    # the 401 asks for what the route takes: a project's key alone where the
                    # operator's token is refused, the operator's alone on the catalog's routes
                    wanted = "a project key or"
                    if keys_only(method, path):
                        wanted = "a project's key"
                    elif (
                        path.startswith(("/v1/catalog", "/v1/overrides")) or path == "/v1/projects"
                    ):
                        wanted = "an operator's token (API_ADMIN_TOKENS)"
                    if not response.json()["detail"].startswith(f"this endpoint needs {wanted}"):
                        wrong.append(f"{method} {path}: 401 {response.json()['detail']!r}")
    assert asked > 50  # every route, every credential that lacks its scope
    assert wrong == [], "\n".join(wrong)


def judge_public(world: World, asked: list[Asked]) -> list[str]:
    """A route of nobody's data: no B in its answers; B's job alike to one that is nowhere."""
    wrong = []
    for one in asked:
        wrong += [
            f"{one}: B's {leak!r} in the answer" for leak in leaks(world, one.response, one.named)
        ]
        if one.response.status_code >= 500:
            wrong.append(f"{one}: {one.response.status_code}")
    wrong += alike(asked)
    return wrong


# -- the dashboard -------------------------------------------------------------------------------

CSRF: Final = re.compile(r'name="csrf_token" value="([^"]+)"')
SESSION_COOKIE: Final = "aiserver_ui"


async def sign_in(client: httpx.AsyncClient, credential: str) -> httpx.Response:
    """The sign-in form, then its POST; the client keeps the cookies (plain HTTP here)."""
    form = await client.get("/ui/sign-in")
    nonce = CSRF.search(form.text)
    assert nonce is not None, form.text
    return await client.post(
        "/ui/sign-in", data={"credential": credential, "csrf_token": nonce.group(1)}
    )


def fill_page(path: str, slug: str, value: str) -> str:
    return fill(path.replace("{slug:str}", slug), value)


async def ask_page(
    client: httpx.AsyncClient,
    world: World,
    route: tuple[str, str],
    spec: Page | Public,
    who: str,
    csrf: str,
    whose: str,
) -> Asked:
    method, path = route
    target, name, slug = spec.target, "", world.a.slug
    if target == "slug":
        name = slug = named(world, "slug", whose)
    elif target is not None:
        fresh_one = isinstance(spec, Page) and spec.fresh and whose == "own"
        name = await fresh(client, world, target) if fresh_one else named(world, target, whose)
    form = spec.form if isinstance(spec, Page) else None
    typed = {k: v.format(label=world.a.label) for k, v in (form or {}).items()}
    data = {**typed, "csrf_token": csrf} if method == "POST" else None
    response = await client.request(method, fill_page(path, slug, name), data=data)
    return Asked(route, who, whose if target is not None else "", name, response)


def judge_page(world: World, spec: Page, who: str, asked: list[Asked]) -> list[str]:
    wrong = []
    for one in asked:
        status = one.response.status_code
        if who == "no-session":
            location = one.response.headers.get("location") or ""
            if (status, location.split("?")[0]) != (303, "/ui/sign-in"):
                wrong.append(f"{one}: {status}, not sent to the sign-in form")
        elif not spec.scopes & SCOPE_SETS[who]:
            # refused before anything is looked up; but the project of the URL, which a page
            # finds first: another one is "no such project" (404)
            if (one.target in ("own", "") or spec.target != "slug") and status != 403:
                wrong.append(f"{one}: {status}, not 403 for a session without the scope")
        elif one.target in ("own", "") and status != spec.own_status:
            wrong.append(f"{one}: {status}, not {spec.own_status}: {one.response.text[:300]}")
        if one.target == "theirs" and status < 400 and who != "no-session":
            wrong.append(f"{one}: {status}, a success on B's thing")
        wrong += [
            f"{one}: B's {leak!r} in the page" for leak in leaks(world, one.response, one.named)
        ]
    wrong += alike(asked)
    return wrong


@ASKERS
async def test_a_signs_in_with_a_key_that_reads_and_no_other(world: World, asker: str) -> None:
    world = await facing(world, asker)
    for who in [*SCOPE_SETS, "revoked", "expired"]:
        async with world.api.client() as client:
            answer = await sign_in(client, world.a.keys[who]["key"])
            assert leaks(world, answer) == [], who
            if who in SCOPE_SETS and "read" in SCOPE_SETS[who]:
                assert answer.status_code == 303, (who, answer.text)
                assert client.cookies.get(SESSION_COOKIE), who
                home = await client.get("/ui/")
                assert (home.status_code, home.headers["location"]) == (
                    303,
                    f"/ui/p/{world.a.slug}/",
                ), who
            else:
                assert answer.status_code == (403 if who in SCOPE_SETS else 401), (who, answer.text)
                assert not client.cookies.get(SESSION_COOKIE), who


@ASKERS
async def test_the_dashboard_of_a_shows_a_only_and_its_forms_never_act_on_b(
    world: World, asker: str, record_property: Any
) -> None:
    world = await facing(world, asker)
    before = await rows_but(world.url, world.a.id)
    wrong: list[str] = []
    asked = 0
    sessions = [who for who, scopes in SCOPE_SETS.items() if "read" in scopes]
    for who in [*sessions, "no-session"]:
        async with world.api.client() as client:
            csrf = ""
            if who != "no-session":
                assert (await sign_in(client, world.a.keys[who]["key"])).status_code == 303
                own = await client.get(f"/ui/p/{world.a.slug}/events")
                assert world.a.team in own.text, own.text  # A's data is shown
                found = CSRF.search(own.text)
                assert found is not None
                csrf = found.group(1)
            for route, spec in PAGES.items():
                if route in (("POST", "/ui/sign-in"), ("POST", "/ui/sign-out")):
                    continue  # asked in the sign-in test, and below
                whose: tuple[str, ...] = ("own",)
                if spec.target not in (None, "model", "static"):
                    whose = ("own", "theirs", "nowhere")
                answers = [await ask_page(client, world, route, spec, who, csrf, w) for w in whose]
                asked += len(answers)
                if isinstance(spec, Page):
                    wrong += judge_page(world, spec, who, answers)
                else:
                    wrong += judge_public(world, answers)
    async with world.api.client() as client:  # signing out, with a session of its own
        assert (await sign_in(client, world.a.keys["read"]["key"])).status_code == 303
        page = await client.get(f"/ui/p/{world.a.slug}/")
        found = CSRF.search(page.text)
        assert found is not None
        out = await client.post("/ui/sign-out", data={"csrf_token": found.group(1)})
        assert out.status_code == 303, out.text
        assert leaks(world, out) == []
        signed_out = await client.get(f"/ui/p/{world.a.slug}/")
        assert signed_out.headers["location"].split("?")[0] == "/ui/sign-in"
    wrong += changed_rows(before, await rows_but(world.url, world.a.id))
    record_property("requests", asked)
    record_property("routes", len(PAGES))
    assert wrong == [], "\n".join(wrong)


# -- what names B's things in a query or a body ------------------------------------------------


def altered(cursor: str) -> str:
    """A cursor that no project's listing made: the last character of B's changed."""
    return cursor[:-1] + ("A" if cursor[-1] != "A" else "B")


@ASKERS
async def test_b_s_cursor_is_refused_as_any_cursor_a_was_not_given(
    world: World, asker: str
) -> None:
    world = await facing(world, asker)
    before = await rows_but(world.url, world.a.id)
    theirs, nowhere = world.b.cursor, altered(world.b.cursor)
    async with world.api.client() as client:
        for who in SCOPE_SETS:
            if "read" not in SCOPE_SETS[who]:
                continue
            answers = [
                await client.get(
                    "/v1/usage/events", headers=world.a.auth(who), params={"limit": 2, "cursor": c}
                )
                for c in (theirs, nowhere)
            ]
            assert answers[0].status_code == 400, answers[0].text
            assert problem_type(answers[0]) == "bad-cursor"
            assert normal(answers[0], theirs) == normal(answers[1], nowhere), who
            assert leaks(world, answers[0], theirs) == []
        async with world.api.client() as session:
            assert (await sign_in(session, world.a.keys["read"]["key"])).status_code == 303
            pages = [
                await session.get(f"/ui/p/{world.a.slug}/events", params={"cursor": c})
                for c in (theirs, nowhere)
            ]
            assert pages[0].status_code >= 400, pages[0].text
            assert normal(pages[0], theirs) == normal(pages[1], nowhere)
            assert leaks(world, pages[0], theirs) == []
    assert changed_rows(before, await rows_but(world.url, world.a.id)) == []


@ASKERS
async def test_an_event_of_a_naming_b_s_reservation_settles_nothing_of_b(
    world: World, asker: str
) -> None:
    """An event reports the reservation it was admitted under (`reservation_id`): A's event
    naming B's reservation is answered as one naming a reservation that exists nowhere, and
    B's reservation stays held."""
    world = await facing(world, asker)
    before = await rows_but(world.url, world.a.id)
    answers = []
    async with world.api.client() as client:
        for n, reservation in enumerate((world.b.reservation, str(uuid.UUID(int=MISSING_ID)))):
            body = {
                "id": f"{world.a.label}-settling-{n}",
                "model": MODEL,
                "reservation_id": reservation,
                "occurred_at": SETTLED_AT,
                "usage": {"input_tokens": 100, "output_tokens": 10},
            }
            answers.append(
                await client.post("/v1/usage", headers=world.a.auth("ingest"), json=body)
            )
    theirs, nowhere = answers
    assert leaks(world, theirs, world.b.reservation) == []
    assert theirs.status_code == nowhere.status_code, (theirs.text, nowhere.text)

    def told(response: httpx.Response, reservation: str, n: int) -> Any:
        text = response.text.replace(reservation, "{reservation}").replace(
            f"{world.a.label}-settling-{n}", "{id}"
        )
        return re.sub(r'"event_id":\s*\d+', '"event_id":0', text)

    assert told(theirs, world.b.reservation, 0) == told(nowhere, str(uuid.UUID(int=MISSING_ID)), 1)
    assert theirs.status_code == 201, theirs.text  # A's event is A's, settling nothing
    assert changed_rows(before, await rows_but(world.url, world.a.id)) == []
