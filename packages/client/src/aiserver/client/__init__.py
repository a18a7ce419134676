"""aiserver-client: report AI model calls to an aiserver ledger, read spend, reserve budget.

    from aiserver.client import Client, event_from_response

    with Client() as aiserver:  # AISERVER_URL, AISERVER_API_KEY
        aiserver.record_later(model="gpt-4o", usage={"input_tokens": 1000, "output_tokens": 50})
        aiserver.record_later(event_from_response(openai_response, tags={"team": "search"}))

docs/client.md in the aiserver repository describes every call.
"""

from aiserver.client.budget import AsyncBudgetGuard, BudgetGuard
from aiserver.client.client import AsyncClient, Client
from aiserver.client.errors import AiserverError, BudgetExceeded, ConfigurationError
from aiserver.client.models import (
    CostComponent,
    CostResult,
    Event,
    EventResult,
    RecordReport,
    Release,
    Reservation,
    ReservationHold,
    Spend,
    SpendBucket,
    SpendFreshness,
    SpendGroup,
    SpendTotals,
)
from aiserver.client.providers import event_from_response
from aiserver.client.recorder import Recorder, RecorderSettings, RecorderStats

__all__ = [
    "AiserverError",
    "AsyncBudgetGuard",
    "AsyncClient",
    "BudgetExceeded",
    "BudgetGuard",
    "Client",
    "ConfigurationError",
    "CostComponent",
    "CostResult",
    "Event",
    "EventResult",
    "RecordReport",
    "Recorder",
    "RecorderSettings",
    "RecorderStats",
    "Release",
    "Reservation",
    "ReservationHold",
    "Spend",
    "SpendBucket",
    "SpendFreshness",
    "SpendGroup",
    "SpendTotals",
    "event_from_response",
]
