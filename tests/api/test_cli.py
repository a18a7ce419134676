"""`aiserver-api`'s command line: its arguments, its help, and the dashboard's session secret
that it shares among its worker processes. Nothing here starts uvicorn."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from aiserver.api.cli import (
    SESSION_SECRET_VAR,
    _cannot_listen,
    main,
    share_metrics,
    share_session_secret,
)
from aiserver.api.settings import MIN_SECRET, MULTIPROCESS_VAR, ApiSettings
from aiserver.core_db.settings import load_settings


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a test's arguments pass, the command fails rather than serve."""

    def run(*args: object, **options: object) -> None:
        raise AssertionError(f"uvicorn started with {options}")

    monkeypatch.setattr("aiserver.api.cli.uvicorn.run", run)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "99999"], "argument --port: must be from 1 to 65535, not 99999"),
        (["--port", "0"], "argument --port: must be from 1 to 65535, not 0"),
        (["--port", "http"], "argument --port: not an integer: 'http'"),
        (["--workers", "-3"], "argument --workers: must be at least 1, not -3"),
        (["--workers", "0"], "argument --workers: must be at least 1, not 0"),
    ],
)
def test_a_bad_argument_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: aiserver-api")
    assert f"aiserver-api: error: {message}" in err


def test_a_port_that_is_taken_is_one_line_and_exit_1_before_the_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before, uvicorn ran the application's start-up first (its log said "api ready"), then
    # logged the bind error and exited 3, with an asyncio error beside it.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["--host", "127.0.0.1", "--port", str(port)]) == 1  # uvicorn.run: not reached
        err = capsys.readouterr().err
        assert err == f"aiserver-api: cannot listen on 127.0.0.1:{port}: Address already in use\n"
        # several workers: refused before their shared metrics directory is made (none left)
        before = set(Path(tempfile.gettempdir()).glob("aiserver-metrics-*"))
        assert main(["--host", "127.0.0.1", "--port", str(port), "--workers", "3"]) == 1
        assert set(Path(tempfile.gettempdir()).glob("aiserver-metrics-*")) == before
        # IPv6's every address beside an IPv4 listener: asyncio binds it (IPV6_V6ONLY)
        assert _cannot_listen("::", port) is None
    assert main(["--host", "192.0.2.1", "--port", str(port)]) == 1  # not this machine's
    assert "cannot listen on 192.0.2.1:" in capsys.readouterr().err
    assert _cannot_listen("", port) is None  # every interface, as asyncio reads it


def test_the_help_names_the_probes_and_where_the_settings_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "GET /health" in out
    assert "GET /ready" in out
    assert "deploy/deployment.md" in out
    assert "see README" not in out


def test_several_workers_without_a_secret_get_one_to_share() -> None:
    environ: dict[str, str] = {}
    assert share_session_secret(2, environ) is True
    secret = environ[SESSION_SECRET_VAR]
    assert len(secret) >= MIN_SECRET
    assert load_settings(ApiSettings, environ).ui_session_secret == secret  # the settings take it
    other: dict[str, str] = {SESSION_SECRET_VAR: " "}  # blank is unset, as for the settings
    assert share_session_secret(4, other) is True
    assert other[SESSION_SECRET_VAR] != secret  # random, made at each start


@pytest.mark.parametrize(
    ("workers", "environ"),
    [
        (2, {SESSION_SECRET_VAR: "the operator's own secret, long enough to pass"}),
        (1, {}),  # one process: the dashboard makes its own
    ],
)
def test_a_given_secret_or_a_single_worker_is_left_alone(
    workers: int, environ: dict[str, str]
) -> None:
    before = dict(environ)
    assert share_session_secret(workers, environ) is False
    assert environ == before


#: Runs `main` with uvicorn.run replaced: prints the secret its workers would inherit.
_PROBE = """\
import os, sys, uvicorn
def run(app, **options):
    print(options["workers"], os.environ.get("UI_SESSION_SECRET", "<unset>"))
uvicorn.run = run
from aiserver.api.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _probe(*argv: str, secret: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != SESSION_SECRET_VAR}
    if secret is not None:
        env[SESSION_SECRET_VAR] = secret
    env["LOG_FORMAT"] = "json"
    with socket.socket() as free:  # a port nothing listens on (not 8000, which may be taken)
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    return subprocess.run(
        [sys.executable, "-c", _PROBE, "--host", "127.0.0.1", "--port", port, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_the_workers_inherit_one_secret_and_the_start_warns() -> None:
    done = _probe("--workers", "2")
    workers, secret = done.stdout.split()
    assert workers == "2"
    assert len(secret) >= MIN_SECRET
    assert "UI_SESSION_SECRET is not set" in done.stderr
    assert "several replicas need UI_SESSION_SECRET set" in done.stderr


def test_the_operators_secret_reaches_the_workers_unchanged() -> None:
    given = "an operator's secret of forty-two characters"
    done = _probe("--workers", "3", secret=given)
    assert done.stdout.rstrip("\n").split(maxsplit=1) == ["3", given]
    assert "UI_SESSION_SECRET is not set" not in done.stderr


def test_several_workers_share_a_metrics_directory_emptied_of_an_earlier_run(
    tmp_path: Path,
) -> None:
    """One process keeps its counts in memory; several keep them in one directory: made, or the
    one PROMETHEUS_MULTIPROC_DIR names (made if missing), emptied of an earlier run's counts,
    which would otherwise be added to the new run's. Only prometheus_client's files go."""
    alone: dict[str, str] = {}
    assert share_metrics(1, alone) is None
    assert alone == {}
    made_for: dict[str, str] = {}
    made = share_metrics(2, made_for)
    assert made is not None
    assert made_for == {MULTIPROCESS_VAR: made}
    assert Path(made).is_dir()
    assert list(Path(made).iterdir()) == []
    Path(made).rmdir()
    earlier = ["counter_4242.db", "gauge_livesum_4242.db", "histogram_4242.db", "summary_7.db"]
    kept = ["ledger.db", "notes.txt"]  # not prometheus_client's: an operator's own files
    for name in earlier + kept:
        (tmp_path / name).write_bytes(b"x")
    for workers in (3, 1):  # set by the operator, it is used (and emptied) with one worker too
        given = {MULTIPROCESS_VAR: str(tmp_path)}
        assert share_metrics(workers, given) is None
        assert given == {MULTIPROCESS_VAR: str(tmp_path)}
        assert sorted(p.name for p in tmp_path.iterdir()) == kept
    blank = {MULTIPROCESS_VAR: "  "}  # set but blank: taken away, as if not set
    assert share_metrics(1, blank) is None
    assert blank == {}
    missing = tmp_path / "metrics" / "api"
    assert share_metrics(2, {MULTIPROCESS_VAR: str(missing)}) is None
    assert missing.is_dir()
