"""Catalog status, the admin refresh (a task-runner job enqueued by name), and job status."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import msgspec
from arq.connections import ArqRedis
from arq.constants import default_queue_name
from arq.jobs import Job, JobDef, JobResult
from arq.jobs import JobStatus as ArqJobStatus
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_202_ACCEPTED

from aiserver.api.auth import access_if_sent, requires_admin
from aiserver.api.controllers.documents import reader_of
from aiserver.api.errors import UnknownJob
from aiserver.api.problems import problem_responses
from aiserver.api.query import NO_QUERY
from aiserver.api.schemas import CatalogOut, JobAccepted, JobStatus, RefreshRequest
from aiserver.api.settings import ApiSettings
from aiserver.core_db.database import require_pool
from aiserver.costs.jobs import REFRESH_JOB
from aiserver.costs.live import LiveCatalog
from aiserver.costs.status import read_status
from aiserver.documents.jobs import PROCESS_JOB
from aiserver.documents.service import Reader, job_visible

QUEUE: Final = default_queue_name
DB_TIMEOUT_S: Final = 5.0
#: The jobs `/v1/jobs/{id}` answers: the ones whose ids the API hands out to callers who may see
#: their results, the catalog refresh (`POST /v1/catalog/refresh`) and a document's conversion
#: (`POST /v1/documents`). The route asks for no credential, so every other job is answered as
#: one that does not exist: a project's reprice run (`reprice:<run id>`) or rollup rebuild, and
#: the task runner's cron jobs, whose ids (`cron:<name>:<epoch ms>`) anyone can work out and
#: whose results hold other projects' run ids and counts. A project's key follows its run at
#: `/v1/usage/reprice/{run_id}`. A conversion is answered only while its document is there, to
#: whoever may read that document (as `/v1/documents/{id}` decides): a project's document to its
#: project's keys and the operator, a document of no project to anyone unless
#: DOCUMENT_REQUIRE_KEY is set. A credential is read when one is sent, and must then be valid.
PUBLIC_JOBS: Final = frozenset({REFRESH_JOB, PROCESS_JOB})


class CatalogController(Controller):
    path = "/v1"
    tags = ("catalog",)

    @get(
        "/catalog",
        summary="Catalog status and staleness",
        responses=problem_responses(422, 503),
        guards=[NO_QUERY],
    )
    async def catalog_status(self, state: State) -> CatalogOut:
        """Source, ages, stale flag, counts, versions (in the database and in this process), and
        the last error. Reads the database: 503 while it is unreachable."""
        live: LiveCatalog = state.live
        settings: ApiSettings = state.settings
        async with asyncio.timeout(DB_TIMEOUT_S), require_pool().acquire() as conn:
            status = await read_status(conn, settings.costs)
        return CatalogOut(
            **msgspec.structs.asdict(status),
            loaded_version=live.catalog.version,
            loaded_at=live.last_reload_at,
        )

    @post(
        "/catalog/refresh",
        guards=[requires_admin, NO_QUERY],
        status_code=HTTP_202_ACCEPTED,
        summary="Refresh the catalog now (admin)",
        security=[{"bearer": []}],
        responses=problem_responses(400, 401, 403, 413, 422, 503),
    )
    async def refresh(
        self, state: State, data: JSONBody[RefreshRequest | None] = None
    ) -> JobAccepted:
        """Enqueue the task runner's refresh job; `force` skips the staleness check (never the
        guardrails). Answers 202 with the job id; follow it at /v1/jobs/{id}."""
        redis: ArqRedis = state.redis
        force = data.force if data else False
        async with asyncio.timeout(DB_TIMEOUT_S):
            job = await redis.enqueue_job(REFRESH_JOB, force, _queue_name=QUEUE)
        assert job is not None  # arq answers None only for a job id given twice; none is given
        return JobAccepted(job_id=job.job_id, status="queued", status_url=f"/v1/jobs/{job.job_id}")

    @get(
        "/jobs/{job_id:str}",
        summary="Status and result of a job",
        responses=problem_responses(400, 401, 403, 404, 422, 429, 503),
        guards=[access_if_sent, NO_QUERY],  # the credential first, as on every route
        security=[{"bearer": []}, {}],
    )
    async def job_status(
        self, state: State, request: Request[Any, Any, Any], job_id: FromPath[str]
    ) -> JobStatus:
        """A catalog refresh or document conversion job: deferred, queued, in_progress,
        complete (with its result). Any other job id is a 404, as an unknown one. No credential
        is needed; one that is sent must be valid. A document's conversion is answered to whoever
        may read the document: send the key it was uploaded with for a project's document."""
        redis: ArqRedis = state.redis
        reader = reader_of(state.settings, request.state.access)
        job = Job(job_id, redis, _queue_name=QUEUE)
        async with asyncio.timeout(DB_TIMEOUT_S):
            status = await job.status()
            info = None
            if status is not ArqJobStatus.not_found:
                info = await job.result_info() or await job.info()
            if info is None or info.function not in PUBLIC_JOBS or not await _visible(reader, info):
                raise UnknownJob(f"no job {job_id!r} (unknown, or its result expired)")
        result: Any = None
        success: bool | None = None
        finished = started = None
        if isinstance(info, JobResult):
            success = info.success
            result = info.result if info.success else f"{type(info.result).__name__}: {info.result}"
            started, finished = info.start_time, info.finish_time
        return JobStatus(
            job_id=job_id,
            function=info.function,
            status=str(status.value),
            success=success,
            result=result,
            enqueued_at=info.enqueue_time,
            started_at=started,
            finished_at=finished,
        )


async def _visible(reader: Reader, info: JobDef) -> bool:
    """Whether a job of `PUBLIC_JOBS` may be answered to `reader` (see there)."""
    if info.function != PROCESS_JOB:
        return True
    return bool(info.args) and await job_visible(require_pool(), str(info.args[0]), reader=reader)
