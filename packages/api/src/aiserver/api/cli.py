"""`aiserver-api`: serve the HTTP API with uvicorn."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from aiserver.api.settings import ApiSettings
from aiserver.core_db.logging import configure_logging
from aiserver.core_db.settings import settings_for_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiserver-api",
        description="Serve the aiserver HTTP API: the model price catalog and exact costs of "
        "model calls. Configuration comes from the environment (see README).",
    )
    parser.add_argument(
        "--host",
        default="0.0.0.0",  # noqa: S104 - a container serves on every interface
        help="address to bind (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes (default: %(default)s)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings_for_command("aiserver-api", ApiSettings)
    configure_logging(settings.core.log_level, settings.core.log_format)
    uvicorn.run(
        "aiserver.api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,  # our middleware logs each request, with its request id
        timeout_graceful_shutdown=20,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
