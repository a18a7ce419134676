"""The ledger's settings (read by `aiserver.core_db.settings.load_settings`)."""

from __future__ import annotations

from aiserver.core_db.settings import PositiveFloat, PositiveInt, Section


class LedgerSettings(Section, frozen=True, kw_only=True):
    """Keys (how fast a change reaches every API replica, how often use is recorded), usage
    retention, and where webhooks may go."""

    #: An API process keeps what it read of a key this long: the bound on how late a revocation
    #: (or any change) made elsewhere takes effect in it. Expiry is checked on every request.
    api_key_cache_seconds: PositiveFloat = 5.0
    #: How often an API process writes its keys' `last_used_at` (one statement for all of them).
    api_key_last_used_interval_seconds: PositiveFloat = 30.0
    #: Raw usage events older than this many days are dropped, a month's partition at a time
    #: (rollups stay); an event older than this is refused at ingest.
    usage_retention_days: PositiveInt = 400
    #: Hosts that budget webhooks may reach although they resolve to internal addresses
    #: (loopback, private, link-local): a local receiver, an internal alert gateway.
    webhook_allowed_hosts: tuple[str, ...] = ()
