"""The Litestar application factory: `aiserver-api` serves `create_app()`."""

from __future__ import annotations

from litestar import Litestar

from aiserver.api.controllers.usage_export import quiet_cut_exports
from aiserver.api.settings import ApiSettings
from aiserver.api.wiring import build_app
from aiserver.core_db.logging import configure_logging
from aiserver.core_db.settings import get_settings


def create_app(settings: ApiSettings | None = None) -> Litestar:
    """The API for `settings` (default: from the environment)."""
    settings = settings or get_settings(ApiSettings)
    configure_logging(settings.core.log_level, settings.core.log_format)
    quiet_cut_exports()
    return build_app(settings)
