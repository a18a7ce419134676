"""Work directories that conversions left behind (their task runner was killed mid-conversion:
nothing removed them) are swept when a task runner starts; those of conversions that may still
be running, here or in another task runner sharing the directory, are left alone."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from aiserver.documents.conversion import WORKDIR_PREFIX, sweep_workdirs

from ..conftest import Settings
from ..support.processes import taskrunners
from ..support.upstream import Upstream
from ..taskrunner.test_processes import process_env

TIMEOUT_S = 120.0  # the default DOCUMENT_CONVERSION_TIMEOUT_SECONDS
SWEPT = "removed work directories of interrupted conversions"


def _workdir(root: Path, name: str, age_s: float) -> Path:
    path = root / f"{WORKDIR_PREFIX}{name}"
    (path / "profile").mkdir(parents=True)
    (path / "input.docx").write_bytes(b"PK\x03\x04")
    at = time.time() - age_s
    os.utime(path, (at, at))
    return path


def test_only_the_work_directories_older_than_any_conversion_are_removed(tmp_path: Path) -> None:
    left = _workdir(tmp_path, "killed", age_s=TIMEOUT_S + 3600)
    running = _workdir(tmp_path, "running", age_s=TIMEOUT_S)  # within the timeout and margin
    fresh = _workdir(tmp_path, "fresh", age_s=0)
    other = tmp_path / "someone-elses"
    other.mkdir()
    os.utime(other, (0, 0))
    stray_file = tmp_path / f"{WORKDIR_PREFIX}a-file"
    stray_file.write_bytes(b"x")
    os.utime(stray_file, (0, 0))
    assert sweep_workdirs(TIMEOUT_S, tmp_path) == 1
    assert not left.exists()
    for kept in (running, fresh, other, stray_file):
        assert kept.exists(), kept
    assert sweep_workdirs(TIMEOUT_S, tmp_path) == 0  # nothing more to do


@pytest.mark.slow
async def test_a_task_runner_start_sweeps_its_temporary_directory(
    settings: Settings, upstream: Upstream, tmp_path: Path
) -> None:
    """A real task runner, started with TMPDIR holding a directory left by a conversion of a
    runner killed an hour ago and one of a conversion that may be running: it removes the first
    and says so, and leaves the second."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    left = _workdir(tmp, "killed", age_s=TIMEOUT_S + 3600)
    running = _workdir(tmp, "running", age_s=1)
    env = process_env(settings.core.database_url, upstream, TMPDIR=str(tmp))
    async with taskrunners(1, env, tmp_path) as (runner,):
        await runner.wait_for("task runner ready")
        assert await runner.terminate() == 0
    assert not left.exists()
    assert running.exists()
    swept = [e for e in runner.events() if e.get("event") == SWEPT]
    assert [e["directories"] for e in swept] == [1]
