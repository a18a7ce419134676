"""The Litestar application factory: `aiserver-api` serves `create_app()`."""

from __future__ import annotations

from litestar import Litestar

from aiserver.api.wiring import build_app
from aiserver.core_db.logging import configure_logging
from aiserver.core_db.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Litestar:
    """The API for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return build_app(settings)
