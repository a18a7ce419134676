"""The price catalog's settings (read by `aiserver.core_db.settings.load_settings`)."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from aiserver.core_db.settings import (
    Fraction,
    PositiveFloat,
    PositiveInt,
    Section,
    SettingsError,
    require_scheme,
)

DEFAULT_MODEL_COST_SOURCE_URL: Final = (
    "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"
)


class CostSettings(Section, frozen=True, kw_only=True):
    """Where the catalog comes from, how fresh it must be, and how a refresh is bounded."""

    model_cost_source_url: str = DEFAULT_MODEL_COST_SOURCE_URL
    model_cost_max_age_seconds: PositiveInt = 86400
    model_cost_refresh_interval_seconds: PositiveInt = 600
    model_cost_fetch_timeout_seconds: PositiveFloat = 30.0
    model_cost_fetch_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    model_cost_max_bytes: PositiveInt = 64 * 1024 * 1024
    model_cost_max_shrink_fraction: Fraction = 0.2
    catalog_poll_interval_seconds: PositiveFloat = 5.0

    def __post_init__(self) -> None:
        require_scheme(
            "MODEL_COST_SOURCE_URL", self.model_cost_source_url, ("http", "https", "file")
        )
        interval = self.model_cost_refresh_interval_seconds
        # arq's cron takes sets of seconds or minutes: the interval must tile a minute or an hour.
        if not (interval < 60 and 60 % interval == 0) and not (
            interval % 60 == 0 and 3600 % interval == 0
        ):
            raise SettingsError(
                "MODEL_COST_REFRESH_INTERVAL_SECONDS must divide a minute or an hour evenly "
                f"(e.g. 10, 30, 60, 300, 600, 900, 1800, 3600); got {interval}"
            )
