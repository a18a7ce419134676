"""One real `aiserver-api` process for the client's tests, on a database holding the bundled
price catalog (so real model names price as they do in production), and a project per test.

The tests that stop the API (tests/client/test_recorder_faults.py) start their own. The client's
wheel is built once per session (`client_wheel`), as any build frontend builds it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Final

import asyncpg
import httpx
import pytest

from ..conftest import create_database, drop_database
from ..reliability.harness import ADMIN_TOKEN, ApiProcess, api_env, api_process
from ..support.upstream import LocalServer, QuietHandler

#: Bound on waiting for what must come: never a measure.
WAIT_S: Final = 60.0
CLIENT_PACKAGE: Final = Path(__file__).resolve().parents[2] / "packages" / "client"
#: A key of the right shape that no server knows (a front or a mock answers before any API could
#: check it)
FAKE_KEY: Final = "ais_0123456789abcdef_" + "s" * 43


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


async def answered(made: Any) -> Any:
    """What a call of `Client` answered, or of `AsyncClient` (awaited)."""
    return await made if asyncio.iscoroutine(made) else made


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


# -- fronts for the API on 127.0.0.1 ---------------------------------------------------------


@dataclass
class _Front(LocalServer):
    """A 127.0.0.1 HTTP front for the API at `target`, which forwards what it chooses to."""

    target: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return self.url.rsplit("/", 1)[0]

    def _forward(self, method: str, path: str, body: bytes, received: Any) -> httpx.Response:
        headers = {"Authorization": received["Authorization"], "Content-Type": "application/json"}
        return httpx.request(method, self.target + path, content=body, headers=headers, timeout=30)


# -- a front that fails the API's first answers -----------------------------------------------


@dataclass
class FailingFront(_Front):
    """A 127.0.0.1 HTTP front for the API. Its first `refuse` usage requests get a 503 problem
    with Retry-After: `retry_after` (none when None: the recorder's own backoff decides), unseen
    by the API; the next `lose` ones are forwarded (the API commits them) and then answered 503
    all the same; the rest are forwarded. `arrivals` notes when each request came (monotonic)
    and what it was answered."""

    refuse: int = 3
    lose: int = 2
    retry_after: int | None = 1
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (when, status answered)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with front._lock:
                    n = len(front.arrivals) + 1
                    front.arrivals.append((time.monotonic(), 0))
                if n <= front.refuse + front.lose:
                    if n > front.refuse:
                        committed = front._forward("POST", self.path, body, self.headers)
                        assert committed.status_code in (200, 201), committed.text
                    self._answer(503, json.dumps({
                        "type": "urn:aiserver:problem:service-unavailable", "status": 503,
                        "title": "Service Unavailable", "detail": "the front is failing",
                    }).encode(), front._retry_after())  # fmt: skip
                    status = 503
                else:
                    answer = front._forward("POST", self.path, body, self.headers)
                    self._answer(answer.status_code, answer.content, {})
                    status = answer.status_code
                with front._lock:
                    front.arrivals[n - 1] = (front.arrivals[n - 1][0], status)

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _retry_after(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


# -- a front that answers as a script says ------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """How a `ScriptedFront` answers one request: `status`, `body` and `headers` as given; when
    `forward`, only after the API has had the request (it commits it; its own answer is lost);
    when `hang_up`, with no answer at all (the connection is closed)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    forward: bool = False
    hang_up: bool = False


@dataclass
class ScriptedFront(_Front):
    """A 127.0.0.1 HTTP front for the API: request n (from 0, any method) is answered as
    `script[n]` says, and the requests after the script as `rest` says (None, in either:
    forwarded to `target`, and answered as the API answers). `seen` notes each request's method
    and path, and the status it was answered (0: hung up). Each request waits `delay` seconds
    before it is served."""

    script: list[Answer | None] = field(default_factory=list)
    rest: Answer | None = None
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    delay: float = 0.0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(front.delay)
                with front._lock:
                    n = len(front.seen)
                    front.seen.append((self.command, self.path, 0))
                answer = front.script[n] if n < len(front.script) else front.rest
                if answer is None or answer.forward:
                    forwarded = front._forward(self.command, self.path, body, self.headers)
                    answer = answer or Answer(forwarded.status_code, forwarded.content)
                if answer.hang_up:
                    self.close_connection = True
                    return
                self.send_response(answer.status)
                headers = {"Content-Type": "application/json", **answer.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
                with front._lock:
                    front.seen[n] = (self.command, self.path, answer.status)

        return Handler


async def run_app(tmp_path: Path, source: str, *args: str) -> tuple[bytes, bytes]:
    """Run `source` as an application's script with `args`, to its end (exit status 0): its
    stdout and stderr."""
    script = tmp_path / "app.py"
    script.write_text(source)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return out, err
