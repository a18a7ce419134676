from __future__ import annotations

import json
import logging

import pytest

from aiserver.core_db.logging import bound_context, configure_logging, get_logger


def test_json_lines_carry_context_and_stdlib_records(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    try:
        with bound_context(job_id="job-1", job_try=2):
            get_logger("aiserver.test").info("refresh finished", added=3)
            logging.getLogger("arq.worker").warning("from the stdlib")
        get_logger("aiserver.test").debug("below the level")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    finally:
        configure_logging("INFO", "console")
    assert [line["event"] for line in lines] == ["refresh finished", "from the stdlib"]
    first, second = lines
    assert first["job_id"] == "job-1"
    assert first["job_try"] == 2
    assert first["added"] == 3
    assert first["level"] == "info"
    assert first["timestamp"].endswith("Z")
    assert second["logger"] == "arq.worker"
    assert second["level"] == "warning"
    assert second["job_id"] == "job-1"


def test_exceptions_are_structured_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            get_logger("aiserver.test").exception("it failed")
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        configure_logging("INFO", "console")
    assert line["event"] == "it failed"
    assert line["exception"][0]["exc_type"] == "ValueError"
    assert line["exception"][0]["exc_value"] == "boom"


def test_tracebacks_never_carry_local_variables(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    try:
        secret = "Bearer s3cret-token-in-a-local"
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            get_logger("aiserver.test").exception("it failed", secret_length=len(secret))
        err = capsys.readouterr().err
    finally:
        configure_logging("INFO", "console")
    assert "boom" in err
    assert "s3cret-token-in-a-local" not in err
    assert '"locals"' not in err
