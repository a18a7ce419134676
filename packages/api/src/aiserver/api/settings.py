"""The API's settings: the sections of the packages it serves, and its admin tokens."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from aiserver.core_db.settings import CoreSettings, Section, SettingsError
from aiserver.costs.settings import CostSettings
from aiserver.documents.settings import DocumentSettings
from aiserver.ledger.keys import PREFIX as KEY_PREFIX
from aiserver.ledger.keys import looks_like_key
from aiserver.ledger.settings import LedgerSettings


class ApiSettings(Section, frozen=True, kw_only=True):
    """Everything the API process reads from the environment (see the README's table)."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"api_admin_tokens"})

    core: CoreSettings = msgspec.field(default_factory=CoreSettings)
    costs: CostSettings = msgspec.field(default_factory=CostSettings)
    documents: DocumentSettings = msgspec.field(default_factory=DocumentSettings)
    ledger: LedgerSettings = msgspec.field(default_factory=LedgerSettings)
    #: The operator's bearer tokens for the admin endpoints; none: admin endpoints refuse all.
    api_admin_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A bearer token that reads like a project key is checked as one, never as a token.
        if any(looks_like_key(token) for token in self.api_admin_tokens):
            raise SettingsError(
                f"API_ADMIN_TOKENS: a token must not start with {KEY_PREFIX!r}, which marks a "
                "project key"
            )
