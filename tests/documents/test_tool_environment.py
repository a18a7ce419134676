"""The converters (LibreOffice, poppler) parse documents from anyone: they get a minimal
environment, never the task runner's secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiserver.documents.conversion import run_tool, tool_environment

SECRETS = {
    "DATABASE_URL": "postgresql://aiserver:hunter2@db:5432/aiserver",
    "WEBHOOK_SECRET_KEYS": "dGVzdHMgb2YgYWlzZXJ2ZXIsIG5vdCBhIHNlY3JldCE=",
    "REDIS_URL": "redis://:hunter2@redis:6379/0",
    "API_ADMIN_TOKENS": "an-operator-token-of-forty-characters-xyz",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
}


def _parse(out: bytes) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    return dict(pairs)


async def test_a_tool_sees_no_secret_of_the_task_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LANG", "C.UTF-8")
    # coreutils' env, run as the converters are: it prints the environment it was given
    seen = _parse(await run_tool(["env"], timeout=10, cwd=tmp_path))
    assert not set(SECRETS) & set(seen)
    assert not any(value in seen.values() for value in SECRETS.values())
    assert seen["HOME"] == seen["TMPDIR"] == str(tmp_path)
    assert seen["LANG"] == "C.UTF-8"
    assert seen["PATH"]


def test_the_environment_keeps_the_locale_and_finds_the_tools(tmp_path: Path) -> None:
    environ = {"PATH": "/opt/tools/bin:/usr/bin", "LC_ALL": "de_DE.UTF-8", "TZ": "Europe/Berlin"}
    assert tool_environment(tmp_path, environ | SECRETS) == environ | {
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
    }
    assert tool_environment(tmp_path, {})["PATH"]  # none given: the system's default
