"""The API's settings: the sections of the packages it serves, and its admin tokens."""

from __future__ import annotations

from typing import ClassVar, Final

import msgspec

from aiserver.core_db.settings import CoreSettings, PositiveInt, Section, SettingsError
from aiserver.costs.settings import CostSettings
from aiserver.documents.settings import DocumentSettings
from aiserver.ledger.keys import PREFIX as KEY_PREFIX
from aiserver.ledger.keys import looks_like_key
from aiserver.ledger.settings import LedgerSettings

#: The shortest UI_SESSION_SECRET accepted.
MIN_SECRET: Final = 32


class ApiSettings(Section, frozen=True, kw_only=True):
    """Everything the API process reads from the environment (see the README's table)."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"api_admin_tokens", "ui_session_secret"})

    core: CoreSettings = msgspec.field(default_factory=CoreSettings)
    costs: CostSettings = msgspec.field(default_factory=CostSettings)
    documents: DocumentSettings = msgspec.field(default_factory=DocumentSettings)
    ledger: LedgerSettings = msgspec.field(default_factory=LedgerSettings)
    #: The operator's bearer tokens for the admin endpoints; none: admin endpoints refuse all.
    api_admin_tokens: tuple[str, ...] = ()
    #: Signs the dashboard's session cookies (docs/ui.md); empty: a random one per process, so
    #: sessions end when it restarts and work on one replica only.
    ui_session_secret: str = ""
    #: How long a dashboard session lasts from its sign-in.
    ui_session_seconds: PositiveInt = 8 * 3600

    def __post_init__(self) -> None:
        if self.ui_session_secret and len(self.ui_session_secret) < MIN_SECRET:
            raise SettingsError(
                f"UI_SESSION_SECRET: at least {MIN_SECRET} characters (e.g. the output of "
                "`openssl rand -base64 32`)"
            )
        # A bearer token that reads like a project key is checked as one, never as a token.
        if any(looks_like_key(token) for token in self.api_admin_tokens):
            raise SettingsError(
                f"API_ADMIN_TOKENS: a token must not start with {KEY_PREFIX!r}, which marks a "
                "project key"
            )
