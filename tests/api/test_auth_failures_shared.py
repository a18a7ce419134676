"""The count of failed attempts is kept in Redis, shared by every API process using it: behind a
load balancer a client gets API_AUTH_FAILURE_LIMIT guesses per window in all, not that many
per replica and worker. Before, each process counted on its own. While Redis does not answer,
each process counts on its own again, and the log says so once.

The rule itself (the window, whole seconds, addresses by their /64) is tested on the
process-local count in tests/api/test_auth_failures.py; two real API processes sharing the count
in tests/ui/test_signin_limit.py; here, what Redis adds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Final

import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from structlog.testing import capture_logs

from aiserver.api.app import create_app
from aiserver.api.attempts import INDEX, OVERFLOW, PREFIX, RETRY_S, SharedAttempts, Verdict

from ..conftest import TEST_REDIS_URL, Settings, replace_settings
from ..support.logs import KeptRecords
from .conftest import admin

LIMIT: Final = 3
WINDOW_S: Final = 300
#: No Redis listens here: connections are refused at once.
NO_REDIS: Final = "redis://127.0.0.1:9/0"


@pytest.fixture
def api_settings(api_settings: Settings) -> Settings:
    return replace_settings(
        api_settings, api_auth_failure_limit=LIMIT, api_auth_failure_window_seconds=WINDOW_S
    )


@pytest.fixture
async def redis(redis_clean: None) -> AsyncIterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_window_is_redis_s_and_its_keys_expire_with_it(redis: Redis) -> None:
    attempts = SharedAttempts(redis, 2, 1.5)
    assert await attempts.failed("198.51.100.1") == Verdict(counted=True, wait=0)
    assert await attempts.failed("198.51.100.1") == Verdict(counted=True, wait=2)  # the limit
    # at the limit, a failure is not counted: it must wait (1.5 s, whole seconds rounded up)
    assert await attempts.failed("198.51.100.1") == Verdict(counted=False, wait=2)
    assert await attempts.wait("198.51.100.1") == 2
    assert await attempts.wait("198.51.100.2") == 0  # each address its own count
    key = f"{PREFIX}198.51.100.1"
    assert await redis.zcard(key) == 2
    assert 0 < await redis.pttl(key) <= 1500
    assert 0 < await redis.pttl(INDEX) <= 1500
    await asyncio.sleep(1.6)
    assert await attempts.wait("198.51.100.1") == 0
    assert await redis.exists(key, INDEX) == 0  # nothing stays behind


async def test_addresses_that_rotate_do_not_grow_redis_nor_escape_the_count(redis: Redis) -> None:
    """Past `max_addresses`, the other addresses count as one, as in one process: a flood of new
    addresses gets `limit` failures per window together, and Redis holds at most the bound's
    keys (an address holds at most `limit` failures: one at the limit is not counted)."""
    attempts = SharedAttempts(redis, 3, 60, max_addresses=20)
    for n in range(200):
        await attempts.failed(f"10.0.{n // 256}.{n % 256}")
    keys = {k.decode() async for k in redis.scan_iter(match=f"{PREFIX}*")}
    assert keys == {f"{PREFIX}10.0.0.{n}" for n in range(20)} | {f"{PREFIX}{OVERFLOW}"}
    assert await redis.zcard(INDEX) == 21
    assert await redis.zcard(f"{PREFIX}{OVERFLOW}") == 3  # `limit` failures, no more
    assert await attempts.wait("10.0.0.0") == 0  # the first 20: one failure each
    assert await attempts.wait("198.51.100.9") > 0  # a new address shares the flood's count
    for _ in range(2):
        await attempts.failed("10.0.0.0")
    assert 50 < await attempts.wait("10.0.0.0") <= 60  # remembered, blocked


async def test_a_limit_of_0_asks_redis_nothing(redis: Redis) -> None:
    attempts = SharedAttempts(redis, 0, 60)
    for _ in range(10):
        assert await attempts.failed("198.51.100.1") == Verdict(counted=True, wait=0)
    assert await attempts.wait("198.51.100.1") == 0
    assert [k async for k in redis.scan_iter(match="*auth-failures*")] == []


async def test_without_redis_each_process_counts_on_its_own(api_settings: Settings) -> None:
    """Redis down: operator tokens are served and the limit holds in the process; the log says
    once that the count is this process's (its records, kept by a handler added once the app
    has configured logging)."""
    records: list[logging.LogRecord] = []
    kept = KeptRecords(records, level=logging.INFO)
    logger = logging.getLogger("aiserver.api.attempts")
    cut_off = replace_settings(api_settings, redis_url=NO_REDIS)
    async with AsyncTestClient(app=create_app(cut_off)) as client:
        logger.addHandler(kept)
        try:
            assert (await client.get("/v1/projects", headers=admin())).status_code == 200
            for n in range(LIMIT):
                wrong = await client.get("/v1/projects", headers=admin(f"guess-{n}" * 4))
                assert wrong.status_code == 401, wrong.text
            refused = await client.get("/v1/projects", headers=admin())
            assert refused.status_code == 429, refused.text
            assert 0 < int(refused.headers["retry-after"]) <= WINDOW_S
        finally:
            logger.removeHandler(kept)
    said = [(r.levelname, r.msg) for r in records]
    assert [(level, msg["event"]) for level, msg in said] == [  # type: ignore[index]
        ("WARNING", "failed attempts to authenticate are counted in this process only: Redis "
                    "did not answer"),
    ]  # fmt: skip
    assert "ConnectionError" in said[0][1]["error"]  # type: ignore[index]
    assert not [r for r in records if "guess-" in str(r.msg)]


async def test_the_count_goes_back_to_redis_once_it_answers(redis: Redis) -> None:
    """After Redis failed, the process counts on its own for RETRY_S without asking it (a Redis
    that hangs would hold every operator request for its timeouts), then asks again."""
    down = Redis.from_url(NO_REDIS)
    clock = Clock()
    attempts = SharedAttempts(down, 2, 60, clock=clock)
    with capture_logs() as logs:
        assert await attempts.failed("198.51.100.1") == Verdict(counted=True, wait=0)
        attempts._script = redis.register_script(attempts._script.script)  # Redis is back
        assert await attempts.failed("198.51.100.1") == Verdict(counted=True, wait=60)  # here
        assert await redis.exists(f"{PREFIX}198.51.100.1") == 0  # Redis was not asked
        clock.now += RETRY_S
        assert await attempts.wait("198.51.100.1") == 0  # Redis's count: nothing yet
        assert (await attempts.failed("198.51.100.1")).counted
        assert await redis.zcard(f"{PREFIX}198.51.100.1") == 1
    await down.aclose()
    said = [e["event"] for e in logs if "counted in" in e["event"]]
    assert said == [
        "failed attempts to authenticate are counted in this process only: Redis did not answer",
        "failed attempts to authenticate are counted in Redis again",
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_one_request_at_a_time_asks_a_redis_that_failed_again() -> None:
    """After RETRY_S, one request asks Redis again; those that come meanwhile count alone. Before,
    each one asked, and a Redis that hangs held them all for its timeouts."""
    clock = Clock()
    calls = 0

    async def hanging(keys: list[str], args: list[str | int]) -> list[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)
        raise ConnectionError("Redis does not answer")

    attempts = SharedAttempts(Redis.from_url(NO_REDIS), 2, 60, clock=clock)
    attempts._script = hanging  # type: ignore[assignment]
    assert await attempts.wait("198.51.100.1") == 0  # the first failure: alone from now on
    assert calls == 1
    clock.now += RETRY_S
    waits = await asyncio.gather(*(attempts.wait("198.51.100.1") for _ in range(20)))
    assert waits == [0] * 20
    assert calls == 2  # one probe for the 20 requests
