"""The refresh jobs' time limit against the refresh's own bounds: arq's timeout must never be the
one to end a refresh, or the failure of the upstream goes unrecorded."""

from __future__ import annotations

import pytest
from arq.connections import ArqRedis

from aiserver.costs.jobs import REFRESH_JOB
from aiserver.taskrunner import worker as worker_module
from aiserver.taskrunner.health import QUEUE_NAME
from aiserver.taskrunner.worker import refresh_cron, worker_options

from ..conftest import Settings, replace_settings, taskrunner_settings
from ..support.catalog import fetch_all, fetch_one
from ..support.upstream import Upstream
from .test_worker import make_worker, results, run_burst
from .test_worker import redis as redis  # the fixture

#: fetch_source's backoff base: the first retry waits this long, each next one twice as long.
BACKOFF_S = 0.5


@pytest.mark.parametrize(("timeout_s", "retries"), [(30.0, 3), (30.0, 10), (120.0, 3), (1.0, 0)])
def test_a_refresh_job_outlasts_every_download_its_settings_allow(
    settings: Settings, timeout_s: float, retries: int
) -> None:
    """A fixed 300 s cut a refresh whose settings allow a longer download: 10 retries of a
    failing upstream wait 511.5 s between them; 4 tries of 120 s take 480 s."""
    cfg = replace_settings(
        settings, model_cost_fetch_timeout_seconds=timeout_s, model_cost_fetch_retries=retries
    )
    runner = taskrunner_settings(cfg)
    download = (retries + 1) * timeout_s + BACKOFF_S * (2**retries - 1)
    (job,) = [f for f in worker_options(runner)["functions"] if f.name == REFRESH_JOB]
    for limit in (job.timeout_s, refresh_cron(runner).timeout_s):
        assert limit is not None
        assert limit > download


async def test_a_refresh_that_fails_for_its_whole_bound_is_recorded_not_cut_by_arq(
    settings: Settings,
    redis: ArqRedis,
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same at a small scale: the task runner's job timeout made shorter than the download's
    bound (a hanging upstream, two tries of 1 s and the backoff between them)."""
    monkeypatch.setattr(worker_module, "JOB_TIMEOUT_S", 1)
    upstream.serve(b"{}", mode="drip")
    upstream.drip_interval = 10.0
    cfg = replace_settings(
        settings,
        model_cost_source_url=upstream.url,
        model_cost_fetch_timeout_seconds=1.0,
        model_cost_fetch_retries=1,
    )
    await redis.enqueue_job(REFRESH_JOB, True, _queue_name=QUEUE_NAME)
    worker = await run_burst(make_worker(cfg))
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    (result,) = await results(redis)
    assert result["outcome"] == "failed", result
    assert len(upstream.requests) == 2
    meta = await fetch_one(settings.core.database_url, "SELECT last_error FROM ai_cost_metadata")
    assert meta["last_error"] == "failed: timed out after 1 s (MODEL_COST_FETCH_TIMEOUT_SECONDS)"
    runs = await fetch_all(
        settings.core.database_url, "SELECT trigger, outcome FROM ai_cost_refresh_runs"
    )
    assert [tuple(r) for r in runs][-1] == ("forced", "failed")
