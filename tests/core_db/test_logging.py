from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from aiserver.core_db.logging import bound_context, configure_logging, get_logger
from aiserver.core_db.settings import LogFormat


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


def test_json_fields_of_times_and_money_read_as_the_api_writes_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before, a datetime field was its repr ("datetime.datetime(2026, 12, 6, 18, 2, 35, ...)"),
    # and uvicorn's records carried `color_message`, their message with terminal colours.
    at = datetime(2026, 12, 6, 18, 2, 35, 120000, tzinfo=UTC)
    configure_logging("INFO", "json")
    try:
        get_logger("aiserver.test").info("alert delivery", next_attempt_at=at,
                                         total=Decimal("0.00000725"), day=at.date())  # fmt: skip
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]", 7, extra={"color_message": "Started \x1b[36m%d\x1b[0m"}
        )
        first, second = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x]
    finally:
        configure_logging("INFO", "console")
    assert first["next_attempt_at"] == "2026-12-06T18:02:35.120000+00:00"
    assert (first["total"], first["day"]) == ("0.00000725", "2026-12-06")
    assert second["event"] == "Started server process [7]"
    assert "color_message" not in second


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


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_tracebacks_never_carry_local_variables(
    capsys: pytest.CaptureFixture[str], log_format: LogFormat
) -> None:
    # made at run time: a literal would be shown by the traceback's source lines, as it should
    secret = "Bearer " + uuid.uuid4().hex

    def authenticate(token: str) -> None:
        raise RuntimeError("boom")

    configure_logging("DEBUG", log_format)  # another level: configured anew, onto capsys
    try:
        try:
            authenticate(secret)
        except RuntimeError:
            get_logger("aiserver.test").exception("it failed", secret_length=len(secret))
        err = capsys.readouterr().err
    finally:
        configure_logging("INFO", "console")
    assert "boom" in err
    assert "RuntimeError" in err
    assert secret.split()[1] not in err
    assert '"locals"' not in err


def test_request_urls_are_not_logged_even_at_debug() -> None:
    """httpx logs each request's URL at INFO: a price source's credentials, a webhook's secret
    path. It stays at WARNING whatever LOG_LEVEL says."""
    try:
        configure_logging("DEBUG", "json")
        assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("httpcore").getEffectiveLevel() == logging.DEBUG
    finally:
        configure_logging("INFO", "json")
