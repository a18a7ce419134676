"""Settings: one frozen struct built from the environment (12-factor).

Every variable has a default that works on a developer machine. A bad value stops the start with
a `SettingsError` whose message names the variable, its value's problem and what is expected.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Mapping
from typing import Annotated, Final, Literal

import msgspec

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["json", "console", "auto"]

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]

DEFAULT_MODEL_COST_SOURCE_URL: Final = (
    "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"
)


class SettingsError(ValueError):
    """A setting from the environment is malformed; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """The configuration of every aiserver process. Field `x_y` is read from variable `X_Y`."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/aiserver"
    database_pool_min_size: Annotated[int, msgspec.Meta(ge=0)] = 1
    database_pool_max_size: PositiveInt = 10
    redis_url: str = "redis://127.0.0.1:6379/0"

    model_cost_source_url: str = DEFAULT_MODEL_COST_SOURCE_URL
    model_cost_max_age_seconds: PositiveInt = 86400
    model_cost_refresh_interval_seconds: PositiveInt = 600
    model_cost_fetch_timeout_seconds: PositiveFloat = 30.0
    model_cost_fetch_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    model_cost_max_bytes: PositiveInt = 64 * 1024 * 1024
    model_cost_max_shrink_fraction: Fraction = 0.2
    catalog_poll_interval_seconds: PositiveFloat = 5.0

    api_admin_tokens: tuple[str, ...] = ()

    document_max_bytes: PositiveInt = 20 * 1024 * 1024
    document_max_pages: PositiveInt = 50
    document_max_text_bytes: PositiveInt = 2 * 1024 * 1024
    document_render_dpi: Annotated[int, msgspec.Meta(ge=36, le=600)] = 100
    document_conversion_timeout_seconds: PositiveFloat = 120.0
    document_max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=32)] = 2

    log_level: LogLevel = "INFO"
    log_format: LogFormat = "auto"

    def __post_init__(self) -> None:
        _require_scheme("DATABASE_URL", self.database_url, ("postgres", "postgresql"))
        _require_scheme("REDIS_URL", self.redis_url, ("redis", "rediss", "unix"))
        _require_scheme(
            "MODEL_COST_SOURCE_URL", self.model_cost_source_url, ("http", "https", "file")
        )
        interval = self.model_cost_refresh_interval_seconds
        if not (interval < 60 and 60 % interval == 0) and not (
            interval % 60 == 0 and 3600 % interval == 0
        ):
            raise SettingsError(
                "MODEL_COST_REFRESH_INTERVAL_SECONDS must divide a minute or an hour evenly "
                f"(e.g. 10, 30, 60, 300, 600, 900, 1800, 3600); got {interval}"
            )
        if self.database_pool_min_size > self.database_pool_max_size:
            raise SettingsError(
                "DATABASE_POOL_MIN_SIZE must not exceed DATABASE_POOL_MAX_SIZE "
                f"({self.database_pool_min_size} > {self.database_pool_max_size})"
            )

    def __repr__(self) -> str:  # admin tokens are secrets: never print them
        fields = {f: getattr(self, f) for f in self.__struct_fields__}
        fields["api_admin_tokens"] = f"<{len(self.api_admin_tokens)} token(s)>"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"

    __str__ = __repr__


def _require_scheme(variable: str, value: str, schemes: tuple[str, ...]) -> None:
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise SettingsError(f"{variable} must be a URL starting with {allowed}; got {value!r}")


_TUPLE_FIELDS: Final = frozenset({"api_admin_tokens"})
_UPPER_FIELDS: Final = frozenset({"log_level"})
_LOWER_FIELDS: Final = frozenset({"log_format"})
_ERROR_PATH = re.compile(r"\$\.(\w+)")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `environ` (default: the process environment)."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for name in Settings.__struct_fields__:
        value = env.get(name.upper())
        if value is None or value.strip() == "":
            continue
        value = value.strip()
        if name in _TUPLE_FIELDS:
            raw[name] = tuple(part.strip() for part in value.split(",") if part.strip())
        elif name in _UPPER_FIELDS:
            raw[name] = value.upper()
        elif name in _LOWER_FIELDS:
            raw[name] = value.lower()
        else:
            raw[name] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _ERROR_PATH.search(message)
        if match is None:
            raise SettingsError(message) from None
        variable = match.group(1).upper()
        reason = _ERROR_PATH.sub("", message).rstrip(" -`").replace(" - at", "")
        raise SettingsError(f"{variable}={env.get(variable)!r} is invalid: {reason}") from None


def settings_for_command(prog: str) -> Settings:
    """The settings for a console script: a bad value exits with status 2 and says which."""
    try:
        return get_settings()
    except SettingsError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return load_settings()
