"""Usage ingest, exactly once, end to end: a 2xx means durable, a failure stores nothing, a retry
never counts twice.

Real `aiserver-api` processes on a real database. The module's API reaches PostgreSQL through a
TCP proxy that the tests cut (the shared server is never stopped); a client-side proxy that holds
the API's answers stands in for a network that loses them. Each test has projects of its own and
counts, for them, the rows of `usage_events`, `usage_idempotency` and `usage_outbox`.

One failure does store: a COMMIT that PostgreSQL applied but whose answer the API never got is a
503, and the request is stored whole; its retry is then `duplicate` of every event (see
docs/reliability.md, section 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from aiserver.ledger.usage.partitions import month_of, partition_name

from ..conftest import drop_database
from .harness import (
    ADMIN_TOKEN,
    MICRO,
    PROBLEM_JSON,
    ApiProcess,
    TcpProxy,
    Tenant,
    api_env,
    api_process,
    catalogued_database,
    errors_logged,
    eventually,
    tcp_proxy,
    through,
)

pytestmark = pytest.mark.slow

#: Priced by version 1 of `versioned_document`: 1e-06 per input token, 2e-06 per output token.
MODEL: Final = "gpt-test-001"
BATCH: Final = 1_000
#: The request cut in the middle of its transaction (JSON lines).
LARGE: Final = 50_000
RACE_ROUNDS: Final = 12
RACE_KEYS: Final = 300
NDJSON: Final = {"Content-Type": "application/x-ndjson"}
#: Bound on waiting for what must come (a commit, a log line, a recovery): never a measure.
WAIT_S: Final = 60.0


# -- the module's API, behind a proxy to PostgreSQL --------------------------------------------


@dataclass
class Ledger:
    url: str  # this test's database, straight (what the tests read)
    env: dict[str, str]  # an API's environment, straight to the database
    api: ApiProcess  # the module's API: it reaches the database through `db_proxy`
    db_proxy: TcpProxy
    logs: Path


@pytest.fixture(scope="module")
async def ledger(
    migrated_template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Ledger]:
    url = await catalogued_database(migrated_template_url)
    try:
        # Keys stay cached for long: a request during an outage gets as far as the ingest
        # itself, which is what is under test. (The key listener forgets the cache when it
        # listens again after an outage; a request whose key cannot be read is a 503 too.)
        env = api_env(url, upstream_url="http://127.0.0.1:9/none", API_KEY_CACHE_SECONDS="600")
        logs = tmp_path_factory.mktemp("usage")
        server = urlsplit(url)
        async with tcp_proxy(server.hostname or "127.0.0.1", server.port or 5432) as proxy:
            proxied = {**env, "DATABASE_URL": through(url, proxy.port)}
            async with api_process(proxied, logs / "api.log") as api:
                yield Ledger(url, env, api, proxy, logs)
    finally:
        await drop_database(url)


async def tenant(ledger: Ledger, slug: str) -> Tenant:
    """A new project with a key of scope `ingest`."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with ledger.api.client() as client:
        made = await client.post("/v1/projects", headers=admin, json={"slug": slug, "name": slug})
        assert made.status_code == 201, made.text
        key = await client.post(f"/v1/projects/{slug}/keys", headers=admin,
                                json={"name": "ingest", "scopes": ["ingest"]})  # fmt: skip
        assert key.status_code == 201, key.text
    conn = await asyncpg.connect(ledger.url)
    try:
        project_id = await conn.fetchval("SELECT id FROM projects WHERE slug = $1", slug)
    finally:
        await conn.close()
    return Tenant(slug, project_id, key.json()["key"])


# -- events and what they cost ------------------------------------------------------------------


def event(key: str, n: int, **fields: Any) -> dict[str, Any]:
    """Event `n`: its token counts (and so its cost) differ from its neighbours'."""
    usage = {"input_tokens": 1000 + n % 997, "output_tokens": 10 + n % 89}
    return {"id": key, "model": MODEL, "usage": usage, "tags": {"suite": "reliability"}, **fields}


def cost(e: dict[str, Any]) -> Decimal:
    tokens: int = e["usage"]["input_tokens"] + 2 * e["usage"]["output_tokens"]
    return tokens * MICRO


def events(prefix: str, count: int, **fields: Any) -> list[dict[str, Any]]:
    return [event(f"{prefix}-{i:05d}", i, **fields) for i in range(count)]


def ndjson(batch: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in batch)


def priced(batch: list[dict[str, Any]]) -> dict[str, Decimal]:
    return {e["id"]: cost(e) for e in batch}


async def post_one(client: httpx.AsyncClient, who: Tenant, e: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/usage", headers=who.auth, json=e)


async def send(
    client: httpx.AsyncClient, who: Tenant, batch: list[dict[str, Any]], *, lines: bool = False
) -> httpx.Response:
    """`batch` as `{"events": [...]}`, or as JSON lines."""
    if lines:
        return await client.post("/v1/usage", headers={**who.auth, **NDJSON}, content=ndjson(batch))
    return await client.post("/v1/usage", headers=who.auth, json={"events": batch})


def answered(response: httpx.Response, status: str, batch: list[dict[str, Any]]) -> dict[str, int]:
    """Assert a 200 batch answer in which every event of `batch` is `status` at its cost;
    {key: event id}."""
    assert response.status_code == 200, response.text
    body = response.json()
    counts = {s: body[s] for s in ("recorded", "duplicate", "conflict", "invalid")}
    assert counts == {**dict.fromkeys(counts, 0), status: len(batch)}, counts
    results = body["results"]
    assert [(r["id"], r["status"]) for r in results] == [(e["id"], status) for e in batch]
    assert [Decimal(r["total"]) for r in results] == [cost(e) for e in batch]
    assert len({r["price_version"] for r in results}) == 1  # the one price of MODEL
    return {r["id"]: r["event_id"] for r in results}


# -- what the database holds --------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """One project's rows: {event key: (event id, total)} from usage_events, and row counts."""

    events: dict[str, tuple[int, Decimal]]
    counts: tuple[int, int, int]  # usage_events, usage_idempotency, usage_outbox

    @property
    def ids(self) -> dict[str, int]:
        return {key: event_id for key, (event_id, _) in self.events.items()}


async def stored(url: str, project_id: int) -> Stored:
    conn = await asyncpg.connect(url)
    try:  # one snapshot of the three tables, also while a request commits
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(
                "SELECT event_key, id, total_cost FROM usage_events WHERE project_id = $1",
                project_id,
            )
            keys = await conn.fetch(
                "SELECT key, event_id FROM usage_idempotency WHERE project_id = $1", project_id
            )
            outbox = await conn.fetch(
                "SELECT event_id FROM usage_outbox WHERE project_id = $1", project_id
            )
    finally:
        await conn.close()
    found = Stored(
        {r["event_key"]: (r["id"], r["total_cost"]) for r in rows},
        (len(rows), len(keys), len(outbox)),
    )
    # every event has its key row and its outbox row, and nothing else has one
    assert {k["key"]: k["event_id"] for k in keys} == found.ids
    assert sorted(o["event_id"] for o in outbox) == sorted(r["id"] for r in rows)
    return found


def assert_once(found: Stored, expected: dict[str, Decimal]) -> None:
    """Exactly the events of `expected`, each once, at its cost."""
    assert found.counts == (len(expected),) * 3
    assert {key: total for key, (_, total) in found.events.items()} == expected


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.headers["retry-after"].isdigit()
    assert response.json()["type"] == "urn:aiserver:problem:service-unavailable"


@contextlib.contextmanager
def no_error_logged(*apis: ApiProcess) -> Iterator[None]:
    """The block adds no line at error level (nor one that is not JSON) to the APIs' logs."""
    before = [len(errors_logged(api.log)) for api in apis]
    yield
    for api, seen in zip(apis, before, strict=True):
        assert errors_logged(api.log)[seen:] == []


async def until_accepted(send_once: Any) -> tuple[httpx.Response, int]:
    """Send until the answer is not a 503: that answer and how many 503s came first."""
    refused = 0
    async with asyncio.timeout(WAIT_S):
        while (response := await send_once()).status_code == 503:
            assert_unavailable(response)
            refused += 1
            await asyncio.sleep(0.1)
    return response, refused


# -- 1. the same request three times -----------------------------------------------------------


async def test_the_same_request_three_times_stores_each_event_once(
    ledger: Ledger, record_property: Any
) -> None:
    who = await tenant(ledger, "thrice")
    single = event("single", 7)
    batch = events("batch", BATCH)
    with no_error_logged(ledger.api):
        async with ledger.api.client() as client:
            singles = [await post_one(client, who, single) for _ in range(3)]
            batches = [await send(client, who, batch) for _ in range(3)]

    assert [r.status_code for r in singles] == [201, 200, 200]
    bodies = [r.json() for r in singles]
    assert [b["status"] for b in bodies] == ["recorded", "duplicate", "duplicate"]
    for field in ("id", "event_id", "total", "currency", "price_version", "occurred_at"):
        assert len({json.dumps(b[field]) for b in bodies}) == 1, field
    assert Decimal(bodies[0]["total"]) == cost(single)
    first = answered(batches[0], "recorded", batch)
    assert answered(batches[1], "duplicate", batch) == first
    assert answered(batches[2], "duplicate", batch) == first

    found = await stored(ledger.url, who.id)
    assert_once(found, priced([single, *batch]))
    assert found.ids == {**first, "single": bodies[0]["event_id"]}
    record_property("events", BATCH + 1)
    record_property("requests", 6)


# -- 2. a body cut off midway ------------------------------------------------------------------


def _usage_requests(api: ApiProcess) -> list[dict[str, Any]]:
    return [e for e in api.events() if e.get("event") == "request" and e["path"] == "/v1/usage"]


async def _send_half_and_hang_up(api: ApiProcess, who: Tenant, body: bytes, kind: str) -> int:
    """Headers declaring all of `body`, then its first half at a line's end, then close: the
    status the API logged for that request once it gave up on it."""
    # Half a JSON batch; of JSON lines, whole lines only: what came is a valid body of its own.
    half = body.rfind(b"\n", 0, len(body) // 2) + 1 or len(body) // 2
    seen = len(_usage_requests(api))
    _, writer = await asyncio.open_connection("127.0.0.1", api.port)
    head = (
        f"POST /v1/usage HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {who.auth['Authorization']}"
        f"\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body[:half])
    await writer.drain()
    writer.close()  # before any answer could come
    await writer.wait_closed()

    async def logged() -> list[dict[str, Any]]:
        requests = _usage_requests(api)
        return requests[seen:] if len(requests) > seen else []

    (request,) = await eventually(logged, timeout=WAIT_S)
    status: int = request["status"]
    return status


async def test_a_body_cut_off_midway_stores_nothing_and_the_full_request_records_once(
    ledger: Ledger, record_property: Any
) -> None:
    who = await tenant(ledger, "cut-body")
    as_json = events("json", BATCH)
    as_lines = events("lines", BATCH)
    with no_error_logged(ledger.api):
        statuses = [
            await _send_half_and_hang_up(
                ledger.api, who, json.dumps({"events": as_json}).encode(), "application/json"
            ),
            await _send_half_and_hang_up(ledger.api, who, ndjson(as_lines), NDJSON["Content-Type"]),
        ]
        assert_once(await stored(ledger.url, who.id), {})  # nothing of either half

        async with ledger.api.client() as client:
            answered(await send(client, who, as_json), "recorded", as_json)
            answered(await send(client, who, as_lines, lines=True), "recorded", as_lines)
    assert_once(await stored(ledger.url, who.id), priced(as_json + as_lines))
    # the client's fault, logged as such: never a success, never a server error
    assert statuses == [400, 400], statuses
    record_property("cut_bodies_logged_status", statuses)


# -- 3. SIGKILL between COMMIT and the answer -------------------------------------------------


async def test_sigkill_between_commit_and_answer_then_the_retry_is_duplicate_with_the_same_ids(
    ledger: Ledger, record_property: Any
) -> None:
    who = await tenant(ledger, "killed")
    batch = events("killed", BATCH)

    async def committed() -> bool:
        return (await stored(ledger.url, who.id)).counts[0] > 0

    async with (
        api_process(ledger.env, ledger.logs / "victim.log") as victim,
        tcp_proxy("127.0.0.1", victim.port, hold_answers=True) as proxy,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy.port}", timeout=WAIT_S) as client,
    ):
        request = asyncio.create_task(send(client, who, batch))
        await eventually(committed, timeout=WAIT_S)
        killed_at = asyncio.get_running_loop().time()
        os.kill(victim.proc.pid, signal.SIGKILL)
        assert await asyncio.wait_for(victim.proc.wait(), 10) == -signal.SIGKILL
        await proxy.cut()  # and the client's connection goes with it
        with pytest.raises(httpx.TransportError):
            await request  # the client never saw an answer
        held = proxy.held
    original = await stored(ledger.url, who.id)
    assert_once(original, priced(batch))  # all of it committed, before the kill

    async with (
        api_process(ledger.env, ledger.logs / "restarted.log") as restarted,
        restarted.client() as client,
    ):
        with no_error_logged(restarted):
            retried = answered(await send(client, who, batch), "duplicate", batch)
        answered_s = asyncio.get_running_loop().time() - killed_at
    assert retried == original.ids  # the ids of the first, unanswered request
    after = await stored(ledger.url, who.id)
    assert after == original
    record_property("events", BATCH)
    record_property("answer_bytes_held_at_kill", held)
    record_property("kill_to_retry_answered_s", round(answered_s, 2))


# -- 4. the database unreachable --------------------------------------------------------------


async def test_a_database_outage_answers_503_stores_nothing_and_the_retry_records_once(
    ledger: Ledger, record_property: Any
) -> None:
    who = await tenant(ledger, "outage")
    primer, single, batch = event("primer", 1), event("single", 2), events("batch", BATCH)
    loop = asyncio.get_running_loop()
    with no_error_logged(ledger.api):  # an outage is a warning, not an error
        async with ledger.api.client() as client:
            assert (await post_one(client, who, primer)).status_code == 201
            await ledger.db_proxy.cut()
            try:
                assert_unavailable(await post_one(client, who, single))
                assert_unavailable(await send(client, who, batch))
                assert_unavailable(await send(client, who, batch, lines=True))
                assert_once(await stored(ledger.url, who.id), priced([primer]))
            finally:
                await ledger.db_proxy.restore()
            restored_at = loop.time()
            first, refused = await until_accepted(lambda: post_one(client, who, single))
            recovered_s = loop.time() - restored_at
            assert first.status_code == 201, first.text
            assert first.json()["status"] == "recorded"
            answered(await send(client, who, batch), "recorded", batch)
    assert_once(await stored(ledger.url, who.id), priced([primer, single, *batch]))
    record_property("refused_after_restore", refused)
    record_property("recovered_s", round(recovered_s, 3))


async def test_a_commit_whose_answer_is_lost_is_a_503_and_its_retry_is_duplicate_of_all(
    ledger: Ledger, record_property: Any
) -> None:
    """The one failure that has stored something: PostgreSQL committed, and the connection
    went away before its answer reached the API. The API cannot tell, so it answers 503; the
    retry with the same keys finds every event, once, with its id."""
    who = await tenant(ledger, "lost-commit")
    batch = events("acked", 100)
    proxy = ledger.db_proxy

    async def committed() -> bool:
        return (await stored(ledger.url, who.id)).counts[0] > 0

    with no_error_logged(ledger.api):
        async with ledger.api.client() as client:
            # the ingest's connection: its COPY, then its COMMIT reach PostgreSQL; the answer
            # to the COMMIT does not come back
            proxy.hold_after_sending(b'COPY "usage_events"', b"COMMIT")
            try:
                request = asyncio.create_task(send(client, who, batch))
                await eventually(committed, timeout=WAIT_S)
                assert not request.done()  # the API waits for its COMMIT's answer
                await proxy.cut()
                assert_unavailable(await request)
                found = await stored(ledger.url, who.id)
            finally:
                proxy.hold_after_sending()
                await proxy.cut()
                await proxy.restore()
            retry, refused = await until_accepted(lambda: send(client, who, batch))
            retried = answered(retry, "duplicate", batch)
    assert_once(found, priced(batch))  # stored whole, though the answer was a 503
    assert retried == found.ids
    assert await stored(ledger.url, who.id) == found
    record_property("events", len(batch))
    record_property("refused_after_restore", refused)


@pytest.mark.parametrize(
    "held_after",
    [
        pytest.param((b'COPY "usage_events"',), id="while-its-copy-waits-for-rows"),
        pytest.param((b'COPY "usage_events"', b"c\x00\x00\x00\x04"), id="after-its-copy"),
    ],
)
async def test_a_database_connection_gone_silent_is_a_503_in_bounded_time_and_frees_its_keys(
    ledger: Ledger, tmp_path: Path, held_after: tuple[bytes, ...], record_property: Any
) -> None:
    """The connection of an ingest goes silent in its transaction (a hung peer, a stale NAT
    entry: no reset, no error). The request hung until the connection was cut, and another
    replica's retry of its keys waited on the silent transaction's locks: without end. With
    API_DATABASE_TIMEOUT_SECONDS the request is a 503, and the retry records every event once."""
    who = await tenant(ledger, f"silent-{len(held_after)}")
    batch = events(f"silent{len(held_after)}", 100)
    server = urlsplit(ledger.url)
    loop = asyncio.get_running_loop()
    async with tcp_proxy(server.hostname or "127.0.0.1", server.port or 5432) as proxy:
        env = {**ledger.env, "DATABASE_URL": through(ledger.url, proxy.port),
               "API_DATABASE_TIMEOUT_SECONDS": "2"}  # fmt: skip
        async with (
            api_process(env, tmp_path / "api.log") as api,
            api.client(timeout=WAIT_S) as client,
            ledger.api.client(timeout=WAIT_S) as other,
        ):
            assert (await post_one(client, who, event("silent-primer", 1))).status_code == 201
            proxy.hold_after_sending(*held_after)
            sent_at = loop.time()
            assert_unavailable(await send(client, who, batch))  # not a ReadTimeout
            answered_s = loop.time() - sent_at
            # another replica (the module's API) retries the same keys while the silent
            # connection's proxy still holds: nothing of the request was kept, nothing waits
            retried_at = loop.time()
            retry, refused = await until_accepted(lambda: send(other, who, batch))
            retried_s = loop.time() - retried_at
            answered(retry, "recorded", batch)
    assert_once(await stored(ledger.url, who.id), priced([event("silent-primer", 1), *batch]))
    record_property("answered_503_s", round(answered_s, 2))
    record_property("retry_recorded_in_s", round(retried_s, 2))
    record_property("refused_before_recorded", refused)


#: The backend of a transaction that has written rows (it has an xid) and now waits for a lock
#: on the partition its COPY routes events to.
WAITING_TO_COPY = """
SELECT a.pid FROM pg_stat_activity AS a JOIN pg_locks AS l ON l.pid = a.pid
WHERE a.datname = current_database() AND a.backend_xid IS NOT NULL
  AND l.relation = $1::regclass AND NOT l.granted AND a.query LIKE 'COPY%'
"""


async def test_a_cut_in_the_middle_of_the_transaction_leaves_no_partial_batch(
    ledger: Ledger, record_property: Any
) -> None:
    who = await tenant(ledger, "mid-transaction")
    at = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    primer, large = event("primer", 1, occurred_at=at), events("line", LARGE, occurred_at=at)
    partition = partition_name(month_of(datetime.fromisoformat(at)))
    loop = asyncio.get_running_loop()
    observer = await asyncpg.connect(ledger.url)
    blocker = await asyncpg.connect(ledger.url)
    try:
        with no_error_logged(ledger.api):
            async with ledger.api.client(timeout=WAIT_S * 2) as client:
                assert (await post_one(client, who, primer)).status_code == 201
                # The lock stops the request's COPY after it has written its key and outbox rows.
                hold = blocker.transaction()
                await hold.start()
                await blocker.execute(f'LOCK TABLE "{partition}" IN ACCESS EXCLUSIVE MODE')
                sent_at = loop.time()
                request = asyncio.create_task(send(client, who, large, lines=True))
                pid = await eventually(
                    lambda: observer.fetchval(WAITING_TO_COPY, partition), timeout=WAIT_S
                )
                cut_at = loop.time()
                await ledger.db_proxy.cut()
                await hold.rollback()
                # PostgreSQL ends the orphaned backend and rolls its transaction back
                await eventually(lambda: _gone(observer, pid), timeout=WAIT_S)
                try:
                    assert_unavailable(await request)
                    refused_at = loop.time()
                    assert_once(await stored(ledger.url, who.id), priced([primer]))
                finally:
                    await ledger.db_proxy.restore()
                restored_at = loop.time()
                retry, refused = await until_accepted(lambda: send(client, who, large, lines=True))
                retried_s = loop.time() - restored_at
                answered(retry, "recorded", large)
    finally:
        await blocker.close()
        await observer.close()
    assert_once(await stored(ledger.url, who.id), priced([primer, *large]))
    record_property("events", LARGE)
    record_property("mid_copy_after_s", round(cut_at - sent_at, 2))
    record_property("answered_503_after_cut_s", round(refused_at - cut_at, 2))
    record_property("refused_after_restore", refused)
    record_property("retry_recorded_all_in_s", round(retried_s, 2))


async def _gone(observer: asyncpg.Connection, pid: int) -> bool:
    return not await observer.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)


# -- 5. two API processes, the same keys at once ----------------------------------------------


def _race_round(r: int) -> Iterator[list[dict[str, Any]]]:
    """Four overlapping batches of round `r`'s keys, each in another order."""
    keys = events(f"r{r:02d}", RACE_KEYS)
    shuffled = random.Random(r).sample(keys, len(keys))
    yield keys[: RACE_KEYS * 2 // 3]
    yield list(reversed(keys[RACE_KEYS // 3 :]))
    yield shuffled
    yield [*shuffled[::2], *keys[: RACE_KEYS // 2]]  # with repeats of keys within the batch


async def test_two_api_processes_ingesting_the_same_keys_at_once_store_each_key_once(
    ledger: Ledger, record_property: Any
) -> None:
    who = await tenant(ledger, "race")
    results: dict[str, list[tuple[str, int, int]]] = defaultdict(list)  # status, id, process
    statuses: Counter[int] = Counter()
    async with (
        api_process(ledger.env, ledger.logs / "second.log") as second,
        ledger.api.client() as one,
        second.client() as two,
    ):
        with no_error_logged(ledger.api, second):  # no deadlock, no error of any kind
            for r in range(RACE_ROUNDS):
                processes = [1, 2, 1, 2] if r % 2 else [2, 1, 2, 1]
                clients = [one if p == 1 else two for p in processes]
                answers = await asyncio.gather(
                    *(send(c, who, b) for c, b in zip(clients, _race_round(r), strict=True))
                )
                for process, response in zip(processes, answers, strict=True):
                    statuses[response.status_code] += 1
                    assert response.status_code == 200, response.text
                    for result in response.json()["results"]:
                        told = (result["status"], result["event_id"], process)
                        results[result["id"]].append(told)

    assert statuses == {200: 4 * RACE_ROUNDS}
    expected = priced([e for r in range(RACE_ROUNDS) for e in events(f"r{r:02d}", RACE_KEYS)])
    assert set(results) == set(expected)
    found = await stored(ledger.url, who.id)
    assert_once(found, expected)
    won: Counter[int] = Counter()
    for key, answers_of_key in results.items():
        statuses_of_key = sorted(status for status, _, _ in answers_of_key)
        # one request recorded it, every other answer is its duplicate, all with one id
        assert statuses_of_key == ["duplicate"] * (len(statuses_of_key) - 1) + ["recorded"]
        assert {event_id for _, event_id, _ in answers_of_key} == {found.ids[key]}, key
        won.update(process for status, _, process in answers_of_key if status == "recorded")
    record_property("keys", len(expected))
    record_property("requests", 4 * RACE_ROUNDS)
    record_property("event_answers", sum(len(a) for a in results.values()))
    record_property("recorded_by_process", dict(sorted(won.items())))


# -- 6. one project's key and another project's events ----------------------------------------


def _event_ids_told(body: Any) -> set[int]:
    """Every event id an answer tells: `event_id` members and "event N" in any text."""
    found: set[int] = set()
    if isinstance(body, dict):
        for name, value in body.items():
            if name == "event_id" and isinstance(value, int):
                found.add(value)
            else:
                found |= _event_ids_told(value)
    elif isinstance(body, list):
        for value in body:
            found |= _event_ids_told(value)
    elif isinstance(body, str):
        found |= {int(n) for n in re.findall(r"\bevent (\d+)", body)}
    return found


async def _rows_of(url: str, project_id: int) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT * FROM usage_events WHERE project_id = $1 ORDER BY id", project_id
        )
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def test_a_project_key_never_reaches_another_project_s_events(
    ledger: Ledger, record_property: Any
) -> None:
    a, b = await tenant(ledger, "tenant-a"), await tenant(ledger, "tenant-b")
    by_a = events("shared", 100)
    # B sends A's keys: half with A's very payloads, half with other ones
    by_b = by_a[:50] + [event(e["id"], i + 500) for i, e in enumerate(by_a)][50:]
    single = event("shared-single", 3)
    with no_error_logged(ledger.api):
        async with ledger.api.client() as client:
            a_ids = answered(await send(client, a, by_a), "recorded", by_a)
            a_single = await post_one(client, a, single)
            a_rows = await _rows_of(ledger.url, a.id)

            b_first = await send(client, b, by_b)
            b_ids = answered(b_first, "recorded", by_b)  # B's own events, not A's duplicates
            b_single = await post_one(client, b, single)
            b_again = await send(client, b, by_b)
            assert answered(b_again, "duplicate", by_b) == b_ids  # B's retry finds B's events
            b_conflict = await post_one(client, b, by_a[99])  # A's payload of B's changed key
            a_again = await send(client, a, by_a)
            assert answered(a_again, "duplicate", by_a) == a_ids  # and A's still finds A's

    assert (a_single.status_code, b_single.status_code) == (201, 201)
    assert b_single.json()["status"] == "recorded"
    a_ids[single["id"]] = a_single.json()["event_id"]
    b_ids[single["id"]] = b_single.json()["event_id"]
    assert set(a_ids.values()).isdisjoint(b_ids.values())
    assert b_conflict.status_code == 409, b_conflict.text
    assert b_conflict.json()["event_id"] == b_ids[by_a[99]["id"]]  # B's event, named
    for answer in (b_first, b_single, b_again, b_conflict):
        assert _event_ids_told(answer.json()) <= set(b_ids.values())  # never one of A's
    assert await _rows_of(ledger.url, a.id) == a_rows  # A's events, untouched
    assert_once(await stored(ledger.url, a.id), priced([*by_a, single]))
    assert_once(await stored(ledger.url, b.id), priced([*by_b, single]))
    record_property("events_per_project", len(by_a) + 1)
