"""`python -m dev.initialize [--demo-key-file PATH]`: the database start-up step, as the task
runner makes it, and the demo tenant.

The migrations under the advisory lock, then every registered initializer (the catalog seed from
the snapshot bundled in aiserver-costs, which needs no network). The runner does this before the
API starts, so that the API finds a catalog at once, also with `--no-taskrunner`.

With `--demo-usage` as well, the demo project gets a sample of usage (`dev.demo`).

With `--demo-key-file`, a project `demo` exists afterwards with a key of every scope, whose text
is in that file (mode 600), so the banner can print it for copy-paste. The key in the file is
kept while it still works on this database; else (a new database, a revoked key) a new one is
made and written there. Development only: a real deployment makes its projects and keys with
`aiserver-ledger` or over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Final

from aiserver.core_db.connections import DatabaseUnavailable
from aiserver.core_db.database import database, require_pool
from aiserver.core_db.errors import AiserverError
from aiserver.core_db.logging import configure_logging
from aiserver.core_db.migrations import initialize_database
from aiserver.core_db.settings import CoreSettings, settings_for_command
from aiserver.ledger import api_keys, projects
from aiserver.ledger.access import Access
from aiserver.ledger.authentication import Keyring
from aiserver.ledger.errors import ProjectExists
from aiserver.ledger.keys import SCOPES
from dev.demo import load_demo

DEMO: Final = "demo"


async def _works(text: str) -> bool:
    """Whether a key text still opens the demo project on this database."""
    try:
        access = await Keyring(cache_ttl_s=0).authenticate(require_pool(), text)
    except AiserverError:
        return False
    return access.project_slug == DEMO


async def ensure_demo(
    core: CoreSettings, key_file: Path, kept: str | None, *, usage: bool = False
) -> None:
    """The demo project and a working key of it in `key_file` (`kept`: the key there now);
    with `usage`, the sample of usage in it (`dev.demo`)."""
    operator = Access.operator()
    async with database(core):
        pool = require_pool()
        with contextlib.suppress(ProjectExists):
            await projects.create_project(
                pool, operator, slug=DEMO, name="Demo", rollup_tags=["user", "team", "feature"]
            )
        if usage:
            print(f"dev: demo usage: {await load_demo(DEMO)} new events recorded", flush=True)
        if kept is not None and await _works(kept):
            return
        created = await api_keys.create_key(
            pool, operator, DEMO, name="hatch run dev demo", scopes=SCOPES
        )
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that existed keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        out.write(created.text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.initialize", description=__doc__)
    parser.add_argument("--demo-key-file", type=Path, metavar="PATH")
    parser.add_argument("--demo-usage", action="store_true", help="load the sample of usage")
    args = parser.parse_args(argv)
    settings = settings_for_command("dev", CoreSettings)
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(initialize_database(settings))
        key_file: Path | None = args.demo_key_file
        if key_file is not None:
            kept = key_file.read_text().strip() if key_file.exists() else None
            asyncio.run(ensure_demo(settings, key_file, kept, usage=args.demo_usage))
    except (DatabaseUnavailable, TimeoutError) as exc:
        print(f"dev: database start-up failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
