"""Piccolo's configuration module: the one engine and the registry of aiserver's Piccolo apps.

Packages register their Piccolo app through the entry point group `aiserver.piccolo_apps`
(name = app name, value = the module holding `APP_CONFIG`), so core-db needs no import of them.
The DSN here is only a starting value; `aiserver.core_db.database.database()` sets the one from
the settings before the pool opens.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points

from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine

from aiserver.core_db.settings import CoreSettings

APP_ENTRY_POINT_GROUP = "aiserver.piccolo_apps"


def registered_app_modules() -> list[str]:
    """Module paths of every installed aiserver Piccolo app, in a stable order."""
    found = entry_points(group=APP_ENTRY_POINT_GROUP)
    return [ep.value for ep in sorted(found, key=lambda ep: ep.name)]


class AiserverEngine(PostgresEngine):
    """Piccolo's PostgresEngine without its import-time round trip to the server.

    Piccolo's engine connects in its constructor to check the server version. Here the engine is
    built when this module is imported, long before the settings are known, so that check would
    connect to whatever DSN the environment happened to have. The pool opens in `database()`.
    """

    async def check_version(self) -> None:
        return None

    async def prep_database(self) -> None:
        return None


DB = AiserverEngine(config={"dsn": os.environ.get("DATABASE_URL") or CoreSettings().database_url})
APP_REGISTRY = AppRegistry(apps=registered_app_modules())
