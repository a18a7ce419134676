"""The API's settings: the sections of the packages it serves, and its admin tokens."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from aiserver.core_db.settings import CoreSettings, Section
from aiserver.costs.settings import CostSettings
from aiserver.documents.settings import DocumentSettings
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
