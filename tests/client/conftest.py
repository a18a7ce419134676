"""One real `aiserver-api` process for the client's tests, on a database holding the bundled
price catalog (so real model names price as they do in production), and a project per test.

The tests that stop the API (tests/client/test_recorder_faults.py) start their own. The client's
wheel is built once per session (`client_wheel`), as any build frontend builds it.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
import pytest

from ..conftest import create_database, drop_database
from ..reliability.harness import ADMIN_TOKEN, ApiProcess, api_env, api_process

#: Bound on waiting for what must come: never a measure.
WAIT_S: Final = 60.0
CLIENT_PACKAGE: Final = Path(__file__).resolve().parents[2] / "packages" / "client"


@dataclass
class Ledger:
    url: str  # the database, straight (what the tests read)
    env: dict[str, str]  # an API's environment
    api: ApiProcess
    logs: Path


@dataclass(frozen=True)
class Tenant:
    slug: str
    id: int
    key: str  # scopes ingest, read and admin

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def ledger_env(url: str) -> dict[str, str]:
    return api_env(url, upstream_url="http://127.0.0.1:9/none", API_KEY_CACHE_SECONDS="600")


@pytest.fixture(scope="package")
async def ledger(
    seeded_template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Ledger]:
    url = await create_database(template=seeded_template_url)
    try:
        env = ledger_env(url)
        logs = tmp_path_factory.mktemp("client")
        async with api_process(env, logs / "api.log") as api:
            yield Ledger(url, env, api, logs)
    finally:
        await drop_database(url)


async def new_tenant(api: ApiProcess, url: str, prefix: str = "client") -> Tenant:
    """A new project with a key of scopes ingest, read and admin."""
    slug = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with api.client() as client:
        made = await client.post("/v1/projects", headers=admin, json={"slug": slug, "name": slug})
        assert made.status_code == 201, made.text
        scopes = {"name": "app", "scopes": ["ingest", "read", "admin"]}
        key = await client.post(f"/v1/projects/{slug}/keys", headers=admin, json=scopes)
        assert key.status_code == 201, key.text
    conn = await asyncpg.connect(url)
    try:
        project_id = await conn.fetchval("SELECT id FROM projects WHERE slug = $1", slug)
    finally:
        await conn.close()
    return Tenant(slug, project_id, key.json()["key"])


@pytest.fixture
async def tenant(ledger: Ledger) -> Tenant:
    return await new_tenant(ledger.api, ledger.url)


@pytest.fixture
def no_client_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment without AISERVER_URL and AISERVER_API_KEY."""
    monkeypatch.delenv("AISERVER_URL", raising=False)
    monkeypatch.delenv("AISERVER_API_KEY", raising=False)
    return


async def stored_keys(url: str, project_id: int) -> dict[str, int]:
    """{event key: rows in usage_events} of a project (each must be 1)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT event_key, count(*) AS n FROM usage_events WHERE project_id = $1"
            " GROUP BY event_key",
            project_id,
        )
    finally:
        await conn.close()
    return {row["event_key"]: row["n"] for row in rows}


async def api_events(api: ApiProcess, who: Tenant) -> dict[str, dict[str, Any]]:
    """{event key: the event} of a project, as GET /v1/usage/events shows it (every page)."""
    found: dict[str, dict[str, Any]] = {}
    cursor = None
    async with api.client(headers=who.auth) as client:
        while True:
            params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            page = await client.get("/v1/usage/events", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            found.update({event["id"]: event for event in body["data"]})
            cursor = body["next_cursor"]
            if cursor is None:
                return found


async def create_budget(api: ApiProcess, who: Tenant, **fields: Any) -> dict[str, Any]:
    async with api.client(headers=who.auth) as client:
        made = await client.post("/v1/budgets", json=fields)
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


async def budget_window(api: ApiProcess, who: Tenant, budget_id: int) -> dict[str, Any]:
    async with api.client(headers=who.auth) as client:
        shown = await client.get(f"/v1/budgets/{budget_id}")
    assert shown.status_code == 200, shown.text
    window: dict[str, Any] = shown.json()["window"]
    return window


@pytest.fixture(scope="session")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client's wheel, built from packages/client by its PEP 517 hook (hatchling, offline)."""
    out = tmp_path_factory.mktemp("client-wheel")
    subprocess.run(
        [sys.executable, "-c",
         f"from hatchling.build import build_wheel; build_wheel({str(out)!r})"],
        cwd=CLIENT_PACKAGE, check=True, timeout=120,
    )  # fmt: skip
    (wheel,) = out.glob("*.whl")
    return wheel
