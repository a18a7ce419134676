"""The upload through the API: what it stores of a long file name, and how long its conversion
job may wait in the queue."""

from __future__ import annotations

from arq.constants import job_key_prefix
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from aiserver.documents.jobs import JOB_EXPIRES_S

from ..api.conftest import api_settings, client, redis_clean
from ..api.test_documents import DOCX, upload
from ..conftest import Settings
from ..support.docs import docx

__all__ = ["api_settings", "client", "redis_clean"]  # the fixtures, used by name

Client = AsyncTestClient  # type: ignore[type-arg]


async def test_a_long_file_name_is_stored_cut_before_its_extension(client: Client) -> None:
    """Cut at its end, a name of 300 characters lost its extension: the document said it was
    `aaaa...a`, of kind docx."""
    name = "quarterly report " + "a" * 300 + ".docx"
    response = await upload(client, name, docx("hello"), DOCX)
    assert response.status_code == 202, response.text
    stored = (await client.get(response.json()["status_url"])).json()
    assert stored["filename"] == name[: 255 - len(".docx")] + ".docx"
    assert len(stored["filename"]) == 255
    assert stored["kind"] == "docx"
    # a name within the bound is kept whole, without its directories
    response = await upload(client, "../in/a/folder/letter.final.docx", docx("hello"), DOCX)
    stored = (await client.get(response.json()["status_url"])).json()
    assert stored["filename"] == "letter.final.docx"


async def test_the_conversion_job_waits_in_the_queue_longer_than_a_day(
    client: Client, api_settings: Settings
) -> None:
    """arq drops a job that has not started within its expiry (a day by default) without
    calling it, and nothing else converts or fails the document: a task runner down for a day
    (or that far behind) left every document uploaded before then `queued` for good."""
    response = await upload(client, "letter.docx", docx("hello"), DOCX)
    assert response.status_code == 202, response.text
    redis = Redis.from_url(api_settings.core.redis_url)
    try:
        ttl_ms = await redis.pttl(job_key_prefix + response.json()["job_id"])
    finally:
        await redis.aclose()
    assert JOB_EXPIRES_S >= 30 * 24 * 3600
    assert JOB_EXPIRES_S * 1000 - 60_000 < ttl_ms <= JOB_EXPIRES_S * 1000
