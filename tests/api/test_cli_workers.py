"""`aiserver-api --workers 2` as a real process (uvicorn): without UI_SESSION_SECRET, both
workers sign the dashboard's cookies with the one secret the command made, so every sign-in
holds whichever worker answers each request; and every scrape of /metrics, whichever worker
answers it, counts what both did."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import drop_database
from ..reliability.harness import (
    ADMIN_TOKEN,
    ApiProcess,
    api_env,
    catalogued_database,
    free_port,
)
from ..support.processes import STOP_TIMEOUT_S, kill

pytestmark = pytest.mark.slow

CSRF_FIELD: Final = re.compile(r'name="csrf_token" value="([^"]+)"')
SIGN_INS: Final = 10


@contextlib.asynccontextmanager
async def two_workers(database_url: str, log: Path, **extra_env: str) -> AsyncIterator[ApiProcess]:
    env = api_env(database_url, upstream_url="http://127.0.0.1:9/unused") | extra_env
    env.pop("UI_SESSION_SECRET", None)
    port = free_port()
    script = Path(sys.executable).with_name("aiserver-api")
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(script), "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
            env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    api = ApiProcess(proc, port, log)
    try:
        await api.wait_until_serving()
        yield api
    finally:
        with contextlib.suppress(TimeoutError):
            await api.terminate(timeout=STOP_TIMEOUT_S)
        await kill(proc)


async def signed_in(api: ApiProcess) -> bool:
    """Sign in as the operator and open the first page, each request on a new connection (so on
    either worker); whether the session held."""
    async with api.client() as client:
        form = await client.get("/ui/sign-in")
    nonce = CSRF_FIELD.search(form.text)
    assert nonce is not None, form.text
    async with api.client(
        cookies={"aiserver_ui_sign_in": form.cookies["aiserver_ui_sign_in"]}
    ) as client:
        answer = await client.post(
            "/ui/sign-in", data={"credential": ADMIN_TOKEN, "csrf_token": nonce.group(1)}
        )
    if answer.status_code != 303:
        return False
    async with api.client(cookies={"aiserver_ui": answer.cookies["aiserver_ui"]}) as client:
        page = await client.get(answer.headers["location"])
    return page.status_code == 200


async def test_two_workers_share_the_secret_they_were_given_none_of(
    migrated_template_url: str, tmp_path: Path
) -> None:
    url = await catalogued_database(migrated_template_url)
    try:
        async with two_workers(url, tmp_path / "api.log") as api:
            held = [await signed_in(api) for _ in range(SIGN_INS)]
            warned = [e for e in api.events() if "UI_SESSION_SECRET" in e.get("event", "")]
    finally:
        await drop_database(url)
    assert held == [True] * SIGN_INS
    assert [(e["level"], e["workers"]) for e in warned] == [("warning", 2)]


CALLS: Final = 12


def sample(scrape: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    return sum(
        found.value
        for family in text_string_to_metric_families(scrape)
        for found in family.samples
        if found.name == name and all(found.labels.get(k) == v for k, v in labels.items())
    )


async def on_its_own_connection(api: ApiProcess, method: str, path: str, **kw: Any) -> Any:
    """A request on a new connection, so that either worker may take it."""
    async with api.client() as client:
        return await client.request(method, path, **kw)


def served_by(files: Iterable[Path]) -> set[str]:
    """The pids whose counts files hold a request served (a file is made for every worker as
    it starts, with its counters at 0: its being there proves nothing)."""
    return {
        path.stem.rpartition("_")[2]
        for path in files
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path))
        if '"aiserver_requests_total"' in key and value > 0
    }


async def test_every_scrape_counts_the_requests_and_usage_of_both_workers(
    migrated_template_url: str, tmp_path: Path
) -> None:
    """With two workers, each scrape is answered by one of them: it must count what both
    did, the same in every scrape. Before, each answered its own counts: an operator review saw
    9, 9, 11, 11, 9, 11 for the same requests, which Prometheus reads as counter resets."""
    url = await catalogued_database(migrated_template_url)
    operator = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        # TMPDIR: the command makes its directory of counts in tmp_path, where this test
        # sees which processes counted something
        async with two_workers(url, tmp_path / "api.log", TMPDIR=str(tmp_path)) as api:
            made = await on_its_own_connection(
                api, "POST", "/v1/projects", json={"slug": "mp", "name": "MP"}, headers=operator
            )
            assert made.status_code == 201, made.text
            key = await on_its_own_connection(
                api, "POST", "/v1/projects/mp/keys", headers=operator,
                json={"name": "app", "scopes": ["ingest"]},
            )  # fmt: skip
            bearer = {"Authorization": f"Bearer {key.json()['key']}"}
            for n in range(CALLS):
                health = await on_its_own_connection(api, "GET", "/health")
                assert health.status_code == 200
                event = {"id": f"call-{n}", "model": "gpt-test-001",
                         "usage": {"input_tokens": 10, "output_tokens": 5}}  # fmt: skip
                recorded = await on_its_own_connection(
                    api, "POST", "/v1/usage", json=event, headers=bearer
                )
                assert recorded.status_code == 201, recorded.text
            scrapes = [(await on_its_own_connection(api, "GET", "/metrics")).text for _ in range(8)]
            counted_by = served_by(tmp_path.glob("aiserver-*/counter_*.db"))
    finally:
        await drop_database(url)
    health_counts = [
        sample(s, "aiserver_requests_total", path="/health", method="GET") for s in scrapes
    ]
    # both workers served (else the same counts in every scrape would prove nothing)
    assert len(counted_by) == 2, counted_by
    assert health_counts == [CALLS] * len(scrapes), health_counts
    recorded_counts = [sample(s, "aiserver_usage_events_total", result="recorded") for s in scrapes]
    assert recorded_counts == [CALLS] * len(scrapes), recorded_counts
    # each scrape also holds the catalog and the backlog, which are the same for both workers
    assert all("aiserver_catalog_version " in s for s in scrapes)
    assert all("aiserver_usage_outbox_rows " in s for s in scrapes)


CALCULATE: Final = "/v1/costs/calculate"


async def scraped_until(api: ApiProcess, wanted: tuple[float, float]) -> tuple[float, float]:
    """Scrape until the requests in progress and done on CALCULATE are `wanted` (for up to 60
    s, while uvicorn may be starting workers again); the last ones seen."""
    seen = (-1.0, -1.0)
    deadline = asyncio.get_running_loop().time() + 60
    while seen != wanted and asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(httpx.TransportError):
            scrape = (await on_its_own_connection(api, "GET", "/metrics")).text
            seen = (
                sample(scrape, "aiserver_requests_in_progress", path=CALCULATE),
                sample(scrape, "aiserver_requests_total", path=CALCULATE),
            )
        await asyncio.sleep(0.2)
    return seen


async def test_a_request_of_a_killed_worker_leaves_the_requests_in_progress(
    migrated_template_url: str, tmp_path: Path
) -> None:
    """A worker killed in the middle of a request (or found hung and killed by uvicorn, which
    starts another) never ends it: its count in progress must leave the sums, as a stopped
    worker's does, and not stay 1 for ever; what it served stays counted. Before, the dead
    worker's gauge stayed in every later scrape."""
    url = await catalogued_database(migrated_template_url)
    counts = tmp_path / "metrics"
    try:
        async with two_workers(
            url, tmp_path / "api.log", PROMETHEUS_MULTIPROC_DIR=str(counts)
        ) as api:
            done = await on_its_own_connection(api, "POST", CALCULATE, json={
                "model": "gpt-test-001", "usage": {"input_tokens": 10}})  # fmt: skip
            assert done.status_code == 200, done.text
            # a request whose body never comes: in progress until its worker dies
            _, writer = await asyncio.open_connection("127.0.0.1", api.port)
            writer.write(
                f"POST {CALCULATE} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
            )
            await writer.drain()
            assert await scraped_until(api, (1.0, 1.0)) == (1.0, 1.0)
            workers = {int(p.stem.rpartition("_")[2]) for p in counts.glob("gauge_live*_*.db")}
            assert workers, sorted(p.name for p in counts.iterdir())
            for pid in workers:  # the worker with the request among them
                os.kill(pid, signal.SIGKILL)
            writer.close()
            after = await scraped_until(api, (0.0, 1.0))
            left = sorted(p.name for p in counts.glob("gauge_live*_*.db"))
    finally:
        await drop_database(url)
    assert after == (0.0, 1.0), "in progress, done: the killed worker's request stayed in progress"
    assert not [name for name in left if int(name[:-3].rpartition("_")[2]) in workers], left
