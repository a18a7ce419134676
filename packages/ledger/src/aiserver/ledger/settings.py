"""The ledger's settings (read by `aiserver.core_db.settings.load_settings`)."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from aiserver.core_db.settings import PositiveFloat, PositiveInt, Section, SettingsError
from aiserver.ledger.usage.events import TAG_KEY
from aiserver.ledger.webhooks.sealing import BadKey, SecretBox, decode_key
from aiserver.ledger.webhooks.targets import allowed_entry


class LedgerSettings(Section, frozen=True, kw_only=True):
    """Keys (how fast a change reaches every API replica, how often use is recorded), usage
    retention, where webhooks may go and how their secrets are sealed, and how OpenTelemetry
    spans become usage events."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"webhook_secret_keys"})

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
    #: (loopback, private, link-local): a local receiver, an internal alert gateway; `host` for
    #: any port, `host:port` for that port only (`aiserver.ledger.webhooks.targets.allowed`).
    webhook_allowed_hosts: tuple[str, ...] = ()
    #: Keys (32 random bytes each, base64) that seal budget webhook secrets at rest: the first
    #: seals, each opens (`aiserver.ledger.webhooks.sealing`). None: budgets get no webhooks.
    webhook_secret_keys: tuple[str, ...] = ()
    #: Span or resource attributes of an OpenTelemetry GenAI span that become tags of its usage
    #: event (besides `service` from `service.name`): `key`, or `key=tag` to rename it.
    otlp_tag_attributes: tuple[str, ...] = ()
    #: The largest OTLP request body, after gzip is undone (413 above it); OTLP recommends 64 MiB.
    otlp_max_body_bytes: PositiveInt = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for entry in self.webhook_allowed_hosts:
            try:
                allowed_entry(entry)
            except ValueError:
                raise SettingsError(
                    f"WEBHOOK_ALLOWED_HOSTS: {entry!r} is not `host` or `host:port` (a port of "
                    "1 to 65535; an IPv6 address with a port in brackets: `[::1]:9000`)"
                ) from None
        for n, key in enumerate(self.webhook_secret_keys, start=1):
            try:
                decode_key(key)
            except BadKey as exc:
                raise SettingsError(f"WEBHOOK_SECRET_KEYS: key {n}: {exc}") from None
        for entry in self.otlp_tag_attributes:
            attribute, _, tag = entry.partition("=")
            if not attribute.strip() or not TAG_KEY.fullmatch(tag.strip() or attribute.strip()):
                raise SettingsError(
                    f"OTLP_TAG_ATTRIBUTES: {entry!r} is not `attribute` or `attribute=tag`, "
                    "where the tag (the attribute itself when not renamed) is 1 to 64 ASCII "
                    "letters, digits and _ . : / -"
                )

    def secret_box(self) -> SecretBox | None:
        """What seals and opens webhook secrets; None without WEBHOOK_SECRET_KEYS."""
        return SecretBox.of(self.webhook_secret_keys)

    def otlp_tags(self) -> tuple[tuple[str, str], ...]:
        """(attribute, tag) of each entry of OTLP_TAG_ATTRIBUTES."""
        pairs = []
        for entry in self.otlp_tag_attributes:
            attribute, _, tag = entry.partition("=")
            pairs.append((attribute.strip(), tag.strip() or attribute.strip()))
        return tuple(pairs)
