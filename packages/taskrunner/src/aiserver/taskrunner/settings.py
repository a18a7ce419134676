"""The task runner's settings: the sections of the packages whose jobs it runs."""

from __future__ import annotations

import msgspec

from aiserver.core_db.settings import CoreSettings, Section
from aiserver.costs.settings import CostSettings
from aiserver.documents.settings import DocumentSettings
from aiserver.ledger.settings import LedgerSettings


class TaskRunnerSettings(Section, frozen=True, kw_only=True):
    """Everything the task runner process reads from the environment."""

    core: CoreSettings = msgspec.field(default_factory=CoreSettings)
    costs: CostSettings = msgspec.field(default_factory=CostSettings)
    documents: DocumentSettings = msgspec.field(default_factory=DocumentSettings)
    ledger: LedgerSettings = msgspec.field(default_factory=LedgerSettings)
