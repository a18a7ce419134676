"""`GET /v1/jobs/{id}` asks for no credential: it answers only the jobs whose ids the API hands
out, the catalog refresh and the conversion of a document that the caller may read (without a
credential, a document of no project; with a project's key, that project's too: see
test_documents_access.py). Every other job, such as the task runner's cron jobs (ids
`cron:<name>:<epoch ms>`, which anyone can work out) and a project's reprice run, is answered as a
job that does not exist, to the operator's token too."""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg
from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import default_queue_name, result_key_prefix
from arq.jobs import serialize_result
from redis.asyncio import Redis

from aiserver.costs.jobs import REFRESH_JOB, UPDATE_TASK
from aiserver.documents import store as documents
from aiserver.documents.jobs import PROCESS_JOB, process_job_id
from aiserver.ledger.jobs import (
    ALERTS_TASK,
    FOLD_TASK,
    PARTITIONS_TASK,
    REBUILD_JOB,
    REPRICE_JOB,
    REPRICE_TASK,
    RESERVATIONS_TASK,
)

from ..conftest import Settings
from .conftest import Client, admin
from .test_endpoints import assert_problem

#: A minute's start, in epoch ms: the id arq gives a cron job of that tick.
TICK_MS = 1_767_225_600_000
CRON_TASKS = [UPDATE_TASK, PARTITIONS_TASK, FOLD_TASK, REPRICE_TASK, RESERVATIONS_TASK, ALERTS_TASK]


async def store_result(
    redis: Redis, job_id: str, function: str, result: Any, args: tuple[Any, ...] = ()
) -> None:
    """A finished job's result, as arq's worker keeps it (`arq:result:<id>`, for an hour)."""
    now_ms = int(time.time() * 1000)
    data = serialize_result(
        function, args, {}, 1, now_ms - 2000, True, result, now_ms - 1000, now_ms,
        ref=f"{job_id}:{function}", queue_name=default_queue_name, job_id=job_id,
    )  # fmt: skip
    assert data is not None
    await redis.set(result_key_prefix + job_id, data, px=3_600_000)


def same_as_unknown(problem: dict[str, Any], job_id: str) -> None:
    assert problem["detail"] == f"no job {job_id!r} (unknown, or its result expired)"


async def test_a_cron_job_s_result_is_answered_as_a_job_that_does_not_exist(
    client: Client, redis: Redis, api_settings: Settings
) -> None:
    cross_tenant = {"outcome": "done", "run_id": 4242, "models": ["gpt-4o"], "folded": 17}
    for task in CRON_TASKS:
        job_id = f"cron:{task}:{TICK_MS}"
        await store_result(redis, job_id, f"cron:{task}", cross_tenant)
        assert await redis.exists(result_key_prefix + job_id)
        for headers in ({}, admin()):
            response = await client.get(f"/v1/jobs/{job_id}", headers=headers)
            same_as_unknown(assert_problem(response, 404, "no job"), job_id)
            assert "4242" not in response.text
    # a cron tick queued but not yet run, and the project's jobs, likewise
    queued = f"cron:{REPRICE_TASK}:{TICK_MS + 60_000}"
    arq = await create_pool(RedisSettings.from_dsn(api_settings.core.redis_url))
    try:
        job = await arq.enqueue_job(
            f"cron:{REPRICE_TASK}", _job_id=queued, _queue_name=default_queue_name
        )
    finally:
        await arq.aclose()
    assert job is not None
    same_as_unknown(assert_problem(await client.get(f"/v1/jobs/{queued}"), 404, "no job"), queued)
    others = [
        (REPRICE_JOB, "reprice:7"),
        (REBUILD_JOB, "rebuild_rollups:1:x"),
        (REPRICE_TASK, "reprice-task"),
        ("anything_else", "other"),
    ]
    for function, job_id in others:
        await store_result(redis, job_id, function, cross_tenant)
        for headers in ({}, admin()):
            response = await client.get(f"/v1/jobs/{job_id}", headers=headers)
            same_as_unknown(assert_problem(response, 404, ""), job_id)


async def store_document_result(redis: Redis, document_id: uuid.UUID) -> str:
    """A finished conversion of `document_id`, as the task runner keeps it: its job id."""
    job_id = process_job_id(str(document_id))
    await store_result(redis, job_id, PROCESS_JOB, None, (str(document_id),))
    return job_id


async def test_the_conversion_of_a_project_s_document_or_of_none_is_answered_as_unknown(
    client: Client, redis: Redis, api_settings: Settings
) -> None:
    """Without a credential, the conversion of a project's document is a job that does not
    exist, as is one of a document that is gone."""
    conn = await asyncpg.connect(api_settings.core.database_url)
    try:
        owned = await documents.create_document(
            conn, filename="o.txt", content_type="text/plain", kind="txt", data=b"o",
            project_id=4242,
        )  # fmt: skip
    finally:
        await conn.close()
    for document_id in (owned, uuid.uuid4()):
        job_id = await store_document_result(redis, document_id)
        response = await client.get(f"/v1/jobs/{job_id}")
        same_as_unknown(assert_problem(response, 404, "no job"), job_id)
    odd = "document:not-an-id"  # a job of that function whose argument is no document id
    await store_result(redis, odd, PROCESS_JOB, None, ("not-an-id",))
    same_as_unknown(assert_problem(await client.get(f"/v1/jobs/{odd}"), 404, ""), odd)


async def test_a_refresh_and_a_document_conversion_are_still_answered(
    client: Client, redis: Redis, api_settings: Settings
) -> None:
    refresh_id = uuid.uuid4().hex  # arq's own id: the API gives none
    await store_result(redis, refresh_id, REFRESH_JOB, {"outcome": "unchanged", "models": 22})
    shown = await client.get(f"/v1/jobs/{refresh_id}")
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert (body["function"], body["status"], body["success"]) == (REFRESH_JOB, "complete", True)
    assert body["result"] == {"outcome": "unchanged", "models": 22}

    conn = await asyncpg.connect(api_settings.core.database_url)
    try:
        nobody_s = await documents.create_document(
            conn, filename="n.txt", content_type="text/plain", kind="txt", data=b"n"
        )
    finally:
        await conn.close()
    document_job = await store_document_result(redis, nobody_s)
    converted = (await client.get(f"/v1/jobs/{document_job}")).json()
    assert (converted["function"], converted["status"]) == (PROCESS_JOB, "complete")

    accepted = (await client.post("/v1/catalog/refresh", headers=admin(), json={})).json()
    queued = (await client.get(accepted["status_url"])).json()
    assert (queued["function"], queued["status"]) == (REFRESH_JOB, "queued")
