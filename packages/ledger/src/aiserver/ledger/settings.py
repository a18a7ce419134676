"""The ledger's settings (read by `aiserver.core_db.settings.load_settings`)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from aiserver.core_db.settings import PositiveFloat, PositiveInt, Section, SettingsError
from aiserver.ledger.usage.events import TAG_KEY


class LedgerSettings(Section, frozen=True, kw_only=True):
    """Keys (how fast a change reaches every API replica, how often use is recorded), usage
    retention, where webhooks may go, and how OpenTelemetry spans become usage events."""

    #: An API process keeps what it read of a key this long: the bound on how late a revocation
    #: (or any change) made elsewhere takes effect in it. Expiry is checked on every request.
    api_key_cache_seconds: PositiveFloat = 5.0
    #: How often an API process writes its keys' `last_used_at` (one statement for all of them).
    api_key_last_used_interval_seconds: PositiveFloat = 30.0
    #: Raw usage events older than this many days are dropped, a month's partition at a time
    #: (rollups stay); an event older than this is refused at ingest. At most 100 years: the
    #: event times the idempotency rows are claimed with are exact within 285 years of 2000.
    usage_retention_days: Annotated[int, msgspec.Meta(ge=1, le=36_500)] = 400
    #: Hosts that budget webhooks may reach although they resolve to internal addresses
    #: (loopback, private, link-local): a local receiver, an internal alert gateway.
    webhook_allowed_hosts: tuple[str, ...] = ()
    #: Span or resource attributes of an OpenTelemetry GenAI span that become tags of its usage
    #: event (besides `service` from `service.name`): `key`, or `key=tag` to rename it.
    otlp_tag_attributes: tuple[str, ...] = ()
    #: The largest OTLP request body, after gzip is undone (413 above it); OTLP recommends 64 MiB.
    otlp_max_body_bytes: PositiveInt = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for entry in self.otlp_tag_attributes:
            attribute, _, tag = entry.partition("=")
            if not attribute.strip() or not TAG_KEY.fullmatch(tag.strip() or attribute.strip()):
                raise SettingsError(
                    f"OTLP_TAG_ATTRIBUTES: {entry!r} is not `attribute` or `attribute=tag`, "
                    "where the tag (the attribute itself when not renamed) is 1 to 64 ASCII "
                    "letters, digits and _ . : / -"
                )

    def otlp_tags(self) -> tuple[tuple[str, str], ...]:
        """(attribute, tag) of each entry of OTLP_TAG_ATTRIBUTES."""
        pairs = []
        for entry in self.otlp_tag_attributes:
            attribute, _, tag = entry.partition("=")
            pairs.append((attribute.strip(), tag.strip() or attribute.strip()))
        return tuple(pairs)
