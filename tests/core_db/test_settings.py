from __future__ import annotations

import pytest

from aiserver.core_db.settings import Settings, SettingsError, load_settings


def test_defaults_match_the_documented_configuration() -> None:
    settings = load_settings({})
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/aiserver"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.model_cost_max_age_seconds == 86400
    assert settings.api_admin_tokens == ()
    assert settings.log_level == "INFO"
    assert settings.log_format == "auto"


def test_values_are_read_from_upper_case_variables_and_converted() -> None:
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://u:secret@db:5432/x",
            "MODEL_COST_MAX_AGE_SECONDS": "60",
            "API_ADMIN_TOKENS": " a1 , ,b2 ",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "MODEL_COST_MAX_SHRINK_FRACTION": "0.5",
        }
    )
    assert settings.database_url == "postgresql://u:secret@db:5432/x"
    assert settings.model_cost_max_age_seconds == 60
    assert settings.api_admin_tokens == ("a1", "b2")
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "json"
    assert settings.model_cost_max_shrink_fraction == 0.5


def test_settings_are_frozen() -> None:
    settings = load_settings({})
    with pytest.raises(AttributeError):
        settings.database_url = "postgresql://elsewhere/db"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MODEL_COST_MAX_AGE_SECONDS", "soon", "MODEL_COST_MAX_AGE_SECONDS='soon' is invalid"),
        ("MODEL_COST_MAX_AGE_SECONDS", "0", "MODEL_COST_MAX_AGE_SECONDS='0' is invalid"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL='LOUD' is invalid"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT='xml' is invalid"),
        ("DATABASE_URL", "mysql://root@db/x", "DATABASE_URL must be a URL starting with"),
        ("REDIS_URL", "127.0.0.1:6379", "REDIS_URL must be a URL starting with"),
        ("MODEL_COST_MAX_SHRINK_FRACTION", "1.5", "MODEL_COST_MAX_SHRINK_FRACTION='1.5'"),
    ],
)
def test_a_bad_value_names_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})
    assert expected in str(caught.value)


def test_admin_tokens_never_appear_in_the_repr() -> None:
    settings = load_settings({"API_ADMIN_TOKENS": "s3cr3t-token,other"})
    assert "s3cr3t" not in repr(settings)
    assert "<2 token(s)>" in repr(settings)
    assert isinstance(settings, Settings)
