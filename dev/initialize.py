"""`python -m dev.initialize`: the database start-up step, as the task runner makes it.

The migrations under the advisory lock, then every registered initializer (the catalog seed from
the snapshot bundled in aiserver-costs, which needs no network). The runner does this before the
API starts, so that the API finds a catalog at once, also with `--no-taskrunner`.
"""

from __future__ import annotations

import asyncio
import sys

from aiserver.core_db.connections import DatabaseUnavailable
from aiserver.core_db.logging import configure_logging
from aiserver.core_db.migrations import initialize_database
from aiserver.core_db.settings import CoreSettings, settings_for_command


def main() -> int:
    settings = settings_for_command("dev", CoreSettings)
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(initialize_database(settings))
    except (DatabaseUnavailable, TimeoutError) as exc:
        print(f"dev: database start-up failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
