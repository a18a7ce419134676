"""One loader reads every package's settings from the environment; a bad value names it."""

from __future__ import annotations

import pytest

from aiserver.api.settings import ApiSettings
from aiserver.core_db.connections import redact_dsn
from aiserver.core_db.settings import CoreSettings, SettingsError, load_settings, redact_url
from aiserver.costs.settings import CostSettings
from aiserver.documents.settings import DocumentSettings
from aiserver.taskrunner.settings import TaskRunnerSettings

#: Operator tokens as long as API_ADMIN_TOKENS asks (32 characters at least).
A1 = "a1-operator-token-0123456789abcdef"
B2 = "b2-operator-token-0123456789abcdef"


def test_defaults_match_the_documented_configuration() -> None:
    settings = load_settings(ApiSettings, {})
    assert settings.core.database_url == "postgresql://postgres@127.0.0.1:5432/aiserver"
    assert settings.core.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.costs.model_cost_max_age_seconds == 86400
    assert settings.documents.document_max_bytes == 20 * 1024 * 1024
    assert settings.api_admin_tokens == ()
    assert settings.core.log_level == "INFO"
    assert settings.core.log_format == "auto"


def test_values_are_read_from_upper_case_variables_and_converted() -> None:
    settings = load_settings(
        ApiSettings,
        {
            "DATABASE_URL": "postgresql://u:secret@db:5432/x",
            "MODEL_COST_MAX_AGE_SECONDS": "60",
            "API_ADMIN_TOKENS": f" {A1} , ,{B2} ",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "MODEL_COST_MAX_SHRINK_FRACTION": "0.5",
            "DOCUMENT_MAX_BYTES": "1000",
        },
    )
    assert settings.core.database_url == "postgresql://u:secret@db:5432/x"
    assert settings.costs.model_cost_max_age_seconds == 60
    assert settings.api_admin_tokens == (A1, B2)
    assert settings.core.log_level == "DEBUG"
    assert settings.core.log_format == "json"
    assert settings.costs.model_cost_max_shrink_fraction == 0.5
    assert settings.documents.document_max_bytes == 1000


def test_each_package_reads_only_its_own_variables_from_the_same_environment() -> None:
    env = {"DATABASE_URL": "postgresql://db/x", "DOCUMENT_MAX_PAGES": "7"}
    assert load_settings(CoreSettings, env).database_url == "postgresql://db/x"
    assert load_settings(DocumentSettings, env).document_max_pages == 7
    assert "database_url" not in CostSettings.__struct_fields__
    assert "document_max_pages" not in CoreSettings.__struct_fields__
    runner = load_settings(TaskRunnerSettings, env)
    assert runner.core.database_url == "postgresql://db/x"
    assert runner.documents.document_max_pages == 7
    assert "api_admin_tokens" not in TaskRunnerSettings.__struct_fields__


@pytest.mark.parametrize(("value", "expected"), [("2", 2.0), ("0.5", None), ("3601", None)])
def test_the_task_runner_reads_its_redis_reply_timeout_within_its_bounds(
    value: str, expected: float | None
) -> None:
    env = {"REDIS_REPLY_TIMEOUT_SECONDS": value}
    if expected is None:
        with pytest.raises(SettingsError, match=f"REDIS_REPLY_TIMEOUT_SECONDS='{value}'"):
            load_settings(TaskRunnerSettings, env)
    else:
        assert load_settings(TaskRunnerSettings, env).runner.redis_reply_timeout_seconds == expected
    assert load_settings(TaskRunnerSettings, {}).runner.redis_reply_timeout_seconds == 30.0


def test_settings_are_frozen() -> None:
    settings = load_settings(ApiSettings, {})
    with pytest.raises(AttributeError):
        settings.core.database_url = "postgresql://elsewhere/db"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        # what the variable takes, in words: before, msgspec's for a JSON value ("Expected `int`,
        # got `str`", though every variable is a string; "Invalid enum value 'LOUD'")
        ("MODEL_COST_MAX_AGE_SECONDS", "soon", "expected a whole number, above 0"),
        ("MODEL_COST_MAX_AGE_SECONDS", "0", "MODEL_COST_MAX_AGE_SECONDS='0' is invalid: expected"),
        ("LOG_LEVEL", "LOUD", "invalid: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT='xml' is invalid: expected one of json, console, auto"),
        ("DATABASE_URL", "mysql://root@db/x", "DATABASE_URL must be a URL starting with"),
        ("REDIS_URL", "127.0.0.1:6379", "REDIS_URL must be a URL starting with"),
        ("MODEL_COST_MAX_SHRINK_FRACTION", "1.5", "expected a number from 0 to 1"),
        ("MODEL_COST_REFRESH_INTERVAL_SECONDS", "7", "must divide a minute or an hour"),
        ("DOCUMENT_RENDER_DPI", "5000", "expected a whole number from 36 to 600"),
        ("DATABASE_POOL_MIN_SIZE", "20", "DATABASE_POOL_MIN_SIZE must not exceed"),
        ("USAGE_RETENTION_DAYS", "0", "USAGE_RETENTION_DAYS='0' is invalid"),
        ("USAGE_RETENTION_DAYS", "abc", "expected a whole number from 1 to 36500"),
        ("DATABASE_POOL_MIN_SIZE", "-1", "expected a whole number, at least 0"),
        ("API_DATABASE_TIMEOUT_SECONDS", "1m", "expected a number from 1 to 3600"),
        ("DOCUMENT_REQUIRE_KEY", "yes", "DOCUMENT_REQUIRE_KEY='yes' is invalid: expected true or"),
        ("USAGE_RETENTION_DAYS", "36501", "USAGE_RETENTION_DAYS='36501' is invalid"),
        # "inf" is greater than 0: a revoked key would be served from the cache for good
        (
            "API_KEY_CACHE_SECONDS",
            "inf",
            "API_KEY_CACHE_SECONDS='inf' is invalid: expected a finite",
        ),
        ("API_KEY_LAST_USED_INTERVAL_SECONDS", "Infinity", "expected a finite number"),
        ("MODEL_COST_MAX_AGE_SECONDS", "1e400", "MODEL_COST_MAX_AGE_SECONDS='1e400' is invalid"),
        ("MODEL_COST_MAX_SHRINK_FRACTION", "nan", "MODEL_COST_MAX_SHRINK_FRACTION='nan'"),
    ],
)
def test_a_bad_value_names_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(ApiSettings, {variable: value})
    assert str(caught.value).startswith(variable)
    assert expected in str(caught.value)


def test_admin_tokens_never_appear_in_the_repr() -> None:
    settings = load_settings(ApiSettings, {"API_ADMIN_TOKENS": f"s3cr3t-token-{A1},{B2}"})
    assert "s3cr3t" not in repr(settings)
    assert "api_admin_tokens=<2 secret(s)>" in repr(settings)
    assert "model_cost_max_age_seconds=86400" in repr(settings)


def test_an_operator_token_that_reads_like_a_project_key_is_refused() -> None:
    with pytest.raises(SettingsError, match="must not start with 'ais_'"):
        load_settings(ApiSettings, {"API_ADMIN_TOKENS": f"{A1},ais_0123456789abcdef_x"})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:S3cret@db:5432/x", "postgresql://u@db:5432/x"),
        ("postgresql://:S3cret@db/x", "postgresql://db/x"),
        ("postgresql://u@db/x?sslmode=require&password=S3cret", "postgresql://u@db/x?sslmode=require&password=***"),
        ("postgresql://u@db/x?PASSWORD=S3cret", "postgresql://u@db/x?password=***"),
        ("redis://:S3cret@cache:6379/0", "redis://cache:6379/0"),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
    ],
)  # fmt: skip
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_dsn(url) == shown
    settings = load_settings(CoreSettings, {"DATABASE_URL": url.replace("redis", "postgresql")})
    assert "S3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("DATABASE_URL", "postgresql+asyncpg://u:S3cret@db/x", "got one starting with 'postgresql+asyncpg://'"),
        ("REDIS_URL", "http://:S3cret@cache:6379/0", "got one starting with 'http://'"),
        ("DATABASE_URL", "u:S3cret@db/x", "got a value that is no URL"),
        ("DATABASE_URL", "postgresql://u:S3cret@127.0.0.1:54x2/x", "port '54x2' is not a number"),
        ("DATABASE_URL", "postgresql://u:S3cret@a:5432,b:99999/x", "port '99999' is not a number"),
        ("DATABASE_URL", "postgresql://u:S3cret@[::1]:0/x", "port '0' is not a number"),
        ("DATABASE_URL", "postgresql://u@db/x?sslmode=on&password=S3cret", "sslmode 'on' is"),
        ("REDIS_URL", "redis://:S3cret@cache:six/0", "port 'six' is not a number"),
    ],
)  # fmt: skip
def test_a_malformed_url_stops_the_start_naming_the_variable_and_never_its_password(
    variable: str, value: str, says: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(CoreSettings, {variable: value})
    message = str(refused.value)
    assert message.startswith(variable)
    assert says in message
    assert "S3cret" not in message


@pytest.mark.parametrize(
    "url",
    ["postgresql://u@[::1]:5432/x", "postgresql://u@a:5432,b:5433/x?sslmode=verify-full",
     "postgresql:///x?host=/var/run/postgresql", "unix:///run/redis.sock"],
)  # fmt: skip
def test_well_formed_urls_of_every_kind_start(url: str) -> None:
    variable = "REDIS_URL" if url.startswith("unix") else "DATABASE_URL"
    assert getattr(load_settings(CoreSettings, {variable: url}), variable.lower()) == url
