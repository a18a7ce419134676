"""The task runner's settings: the sections of the packages whose jobs it runs."""

from __future__ import annotations

from typing import Annotated

import msgspec

from aiserver.core_db.settings import CoreSettings, Section
from aiserver.costs.settings import CostSettings
from aiserver.documents.settings import DocumentSettings
from aiserver.ledger.settings import LedgerSettings


class RunnerSettings(Section, frozen=True, kw_only=True):
    """The task runner's own."""

    #: A reply of Redis awaited longer than this means a silent connection: the task runner
    #: closes it and starts its worker again on new connections (`redis_watch`).
    redis_reply_timeout_seconds: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 30.0


class TaskRunnerSettings(Section, frozen=True, kw_only=True):
    """Everything the task runner process reads from the environment."""

    core: CoreSettings = msgspec.field(default_factory=CoreSettings)
    runner: RunnerSettings = msgspec.field(default_factory=RunnerSettings)
    costs: CostSettings = msgspec.field(default_factory=CostSettings)
    documents: DocumentSettings = msgspec.field(default_factory=DocumentSettings)
    ledger: LedgerSettings = msgspec.field(default_factory=LedgerSettings)
