"""`aiserver-api`: serve the HTTP API with uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Final, Literal

import uvicorn

from aiserver.api.settings import MIN_SECRET, MULTIPROCESS_VAR, ApiSettings
from aiserver.core_db.commands import add_version
from aiserver.core_db.logging import configure_logging, get_logger
from aiserver.core_db.settings import settings_for_command

log = get_logger(__name__)

#: On SIGTERM, requests in flight get this long to finish (the container's stop timeout must
#: be longer: deploy/deployment.md).
GRACEFUL_SHUTDOWN_S: Final = 20
#: The variable of the dashboard's session secret (`ApiSettings.ui_session_secret`).
SESSION_SECRET_VAR: Final = "UI_SESSION_SECRET"  # noqa: S105 - its name, not a secret

_EPILOG: Final = f"""\
It serves the REST API under /v1 (its OpenAPI document at /schema), the operators' dashboard
under /ui, Prometheus metrics at /metrics, and two probes: GET /health (liveness: the process
answers) and GET /ready (readiness: 200 once the database answers, its migrations are at head
and the price catalog is loaded; 503 with the failing checks before that).

Settings come from the environment only (DATABASE_URL, REDIS_URL, API_ADMIN_TOKENS,
UI_SESSION_SECRET, ...): the "Environment" section of deploy/deployment.md in the aiserver
repository lists every variable, and services/api/.env.example names them. A bad value stops
the start (exit 2) and names the variable; an address it cannot listen on (the port taken)
exits 1 before the start, saying why. On SIGTERM, requests in flight get
{GRACEFUL_SHUTDOWN_S} s to finish: give the container a stop timeout of at least 35 s
(docker run --stop-timeout 35; deploy/deployment.md, "Stopping").

examples:
  aiserver-api                                  # 0.0.0.0:8000, one process
  aiserver-api --host 127.0.0.1 --port 8080     # this machine only
  aiserver-api --workers 4                      # four processes behind one port

exit status: 0 stopped by SIGTERM or SIGINT; 1 an address it cannot listen on; 2 wrong
arguments or a setting that is not valid; 3 the application's start-up failed (uvicorn's)
"""


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high` (no upper bound when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {value}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiserver-api",
        description="Serve the aiserver HTTP API: the model price catalog, exact costs of model\n"
        "calls, the usage ledger, documents and the dashboard.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser, "aiserver-api")
    parser.add_argument(
        "--host",
        default="0.0.0.0",  # noqa: S104 - a container serves on every interface
        help="address to bind (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=_int_in(1, 65535),
        default=8000,
        help="port, 1 to 65535 (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=_int_in(1),
        default=1,
        help="worker processes, at least 1 (default: %(default)s); with more than one, set "
        f"{SESSION_SECRET_VAR}",
    )
    return parser


def share_session_secret(workers: int, environ: MutableMapping[str, str]) -> bool:
    """With several worker processes and no `UI_SESSION_SECRET`, put one random secret in
    `environ` (the process environment, which uvicorn's workers inherit): otherwise each worker
    would sign the dashboard's cookies with a random secret of its own and refuse the others'.
    Returns whether it did; a secret already set is left alone."""
    if workers <= 1 or environ.get(SESSION_SECRET_VAR, "").strip():
        return False
    environ[SESSION_SECRET_VAR] = secrets.token_urlsafe(MIN_SECRET)  # 43 characters
    return True


#: The files prometheus_client's multiprocess mode writes (`<kind>_<pid>.db`, and a gauge's
#: `gauge_<mode>_<pid>.db`): what an earlier run left in the operator's directory.
METRICS_FILES: Final = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


def share_metrics(workers: int, environ: MutableMapping[str, str]) -> str | None:
    """A directory in which the worker processes keep their Prometheus counts together
    (PROMETHEUS_MULTIPROC_DIR in `environ`, which they inherit), so that a scrape answered by
    any of them counts all of them: the one the variable names (made if missing, and emptied of
    an earlier run's counts, which would be added to this run's: prometheus_client's files
    only), or with several workers a new temporary one. The temporary directory's path (removed
    by `main` at the end), or None."""
    given = environ.get(MULTIPROCESS_VAR, "").strip()
    if not given:
        # set but blank: prometheus_client would still take it (and write to the working
        # directory, or fail), where the scrape would not look
        environ.pop(MULTIPROCESS_VAR, None)
    else:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for pattern in METRICS_FILES:
            for stale in directory.glob(pattern):
                stale.unlink()
        return None
    if workers <= 1:
        return None
    made = tempfile.mkdtemp(prefix="aiserver-metrics-")
    environ[MULTIPROCESS_VAR] = made
    return made


def _cannot_listen(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on host:port (another process holds the port, the address is
    not this machine's), found by binding it as uvicorn does (SO_REUSEADDR) and letting it go;
    None when it can. uvicorn itself would say so only after the application's start-up, in a
    log line, and exit 3."""
    if not host:  # every interface, as asyncio reads an empty host: uvicorn says what fails
        return None
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:  # socket.gaierror: a host name that resolves to nothing
        return exc.strerror or str(exc)
    failed: list[OSError] = []
    for family, kind, proto, _, address in found:  # each, as asyncio's create_server binds
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # as asyncio: "::" beside an IPv4 listener
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return exc.strerror or str(exc)
            failed.append(exc)
    if failed and len(failed) == len(found):  # not one address of this machine
        return failed[0].strerror or str(failed[0])
    return None


def _http_protocol() -> type[asyncio.Protocol] | Literal["h11"]:
    """`aiserver.api.server.BoundedHeadProtocol` (httptools, with a bound on a request's head)
    where httptools is installed, as in the images; else uvicorn's h11 protocol, which bounds
    an incomplete head on its own."""
    try:
        from aiserver.api.server import BoundedHeadProtocol  # httptools, or not
    except ImportError:
        return "h11"
    return BoundedHeadProtocol


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    shared = share_session_secret(args.workers, os.environ)
    settings = settings_for_command("aiserver-api", ApiSettings)
    taken = _cannot_listen(args.host, args.port)
    if taken is not None:  # before the start-up, which would log "api ready" first
        print(f"aiserver-api: cannot listen on {args.host}:{args.port}: {taken}", file=sys.stderr)
        return 1
    metrics_dir = share_metrics(args.workers, os.environ)  # after the settings: they may exit
    configure_logging(settings.core.log_level, settings.core.log_format)
    if shared:
        log.warning(
            "UI_SESSION_SECRET is not set: the worker processes share a random secret made at "
            "start, so dashboard sessions end when this process restarts; several replicas "
            "need UI_SESSION_SECRET set, the same on each",
            workers=args.workers,
        )
    try:
        uvicorn.run(
            "aiserver.api.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_config=None,
            access_log=False,  # our middleware logs each request, with its request id
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            http=_http_protocol(),
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
