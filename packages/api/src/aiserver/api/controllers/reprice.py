"""Repricing: ask for a run (a dry run, or applied), follow it, list the runs.

`POST /v1/usage/reprice` records the run and enqueues its job for the task runner (202 with the
run); `GET /v1/usage/reprice/{run_id}` shows its state, progress and result. The rules of who
may do what are `aiserver.ledger.repricing.runs`'s: a project's `admin` key for its own
project, the operator for one project or all of them; another project's run is a 404, as one
that does not exist.

The job is enqueued after the run is committed. Should Redis be unreachable then, the run stays
`queued` and the task runner's reprice cron starts it within a minute: the answer is a 202 all
the same.
"""

from __future__ import annotations

from typing import Annotated, Any

from arq.connections import ArqRedis
from arq.constants import default_queue_name
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from aiserver.api import auth
from aiserver.api.controllers.projects import AUTHENTICATED, SECURITY
from aiserver.api.problems import problem_responses, strict_body
from aiserver.api.query import NO_QUERY, only_query
from aiserver.core_db.database import require_pool
from aiserver.core_db.logging import get_logger
from aiserver.ledger.access import Access
from aiserver.ledger.jobs import REPRICE_JOB
from aiserver.ledger.repricing.runs import (
    MAX_LIST,
    RepriceRequest,
    RepriceRun,
    list_runs,
    request_reprice,
    show_run,
)

log = get_logger(__name__)


class RepriceController(Controller):
    path = "/v1/usage/reprice"
    tags = ("usage",)
    guards = (auth.authenticated,)
    dependencies = AUTHENTICATED
    security = SECURITY

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        summary="Reprice usage events (scope admin, or the operator)",
        responses=problem_responses(400, 401, 403, 404, 413, 422, 503),
        guards=[auth.scope_first("admin"), NO_QUERY],
        request_class=strict_body(RepriceRequest),
    )
    async def reprice(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        data: JSONBody[RepriceRequest],
    ) -> RepriceRun:
        """Price the events the filter keeps again with today's catalog. `dry_run` (the
        default) says per model how many events would change and their old and new totals,
        and writes nothing else; `dry_run: false` applies it (events, one adjustment per
        changed event, rollups). A project's key reprices its own project; the operator names
        `project`, or sets `all_projects`."""
        run = await request_reprice(require_pool(), access, data)
        redis: ArqRedis = request.app.state.redis
        try:
            await redis.enqueue_job(
                REPRICE_JOB, run.id, _job_id=f"reprice:{run.id}", _queue_name=default_queue_name
            )
        except Exception as exc:  # Redis down: the reprice cron starts queued runs
            log.warning("reprice run not enqueued", run_id=run.id, error=f"{type(exc).__name__}")
        return run

    @get(
        "/",
        summary="The newest repricing runs (scope read or admin, or the operator)",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
        guards=[auth.scope_first("read", "admin"), only_query("project", "limit")],
    )
    async def runs(
        self,
        access: NamedDependency[Access],
        project: Annotated[
            str | None, QueryParameter(description="the operator: one project's runs (a slug)")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIST)] = 20,
    ) -> list[RepriceRun]:
        """A key sees its project's runs; the operator every run, or one project's."""
        return await list_runs(require_pool(), access, project=project, limit=limit)

    @get(
        "/{run_id:int}",
        summary="One repricing run: state, progress and result",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
        guards=[auth.scope_first("read", "admin"), NO_QUERY],
    )
    async def run(self, access: NamedDependency[Access], run_id: FromPath[int]) -> RepriceRun:
        """404 `unknown-reprice-run` for a run that does not exist and another project's
        alike."""
        return await show_run(require_pool(), access, run_id)
