"""The work directory of a conversion whose task runner was killed is removed once it is older
than any conversion, by the next conversion: not only by a task runner's start.

A task runner killed mid-conversion (out of memory, SIGKILL) is started again at once by its
platform; its start sweeps only the directories older than any conversion can be, so the one
its kill left (seconds old then) stayed until the runner's next start, however far off: the
document, its LibreOffice profile and the page images rendered so far (up to
DOCUMENT_MAX_IMAGE_BYTES) each time.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from aiserver.documents.conversion import WORKDIR_PREFIX, convert
from aiserver.documents.limits import Limits

from .test_conversion import tools_present  # noqa: F401  (the tools' check, reused)
from .test_page_size import pdf

LIMITS = Limits(timeout_s=60, max_pages=2, max_text_bytes=10_000, dpi=30)


def _workdir(root: Path, name: str, age_s: float) -> Path:
    """A work directory as a killed conversion leaves it, last changed `age_s` ago."""
    path = root / f"{WORKDIR_PREFIX}{name}"
    (path / "lo-profile" / "user").mkdir(parents=True)
    (path / "input.docx").write_bytes(b"PK\x03\x04")
    (path / "page-1.png").write_bytes(b"\x89PNG")
    at = time.time() - age_s
    os.utime(path, (at, at))
    return path


async def test_a_conversion_removes_what_killed_conversions_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the task runner's TMPDIR
    killed = _workdir(tmp_path, "killed-an-hour-ago", age_s=LIMITS.timeout_s + 3600)
    running = _workdir(tmp_path, "running-elsewhere", age_s=LIMITS.timeout_s)
    converted = await convert(pdf((612, 792)), "pdf", LIMITS)
    assert converted.page_count == 1
    assert not killed.exists()
    assert running.exists()  # a conversion of another task runner may still be using it
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name]
