"""The API's settings: the sections of the packages it serves, its admin tokens and the limit on
failed attempts to authenticate."""

from __future__ import annotations

from typing import Annotated, ClassVar, Final

import msgspec

from aiserver.core_db.settings import CoreSettings, PositiveInt, Section, SettingsError
from aiserver.costs.settings import CostSettings
from aiserver.documents.settings import DocumentSettings
from aiserver.ledger.keys import PREFIX as KEY_PREFIX
from aiserver.ledger.keys import looks_like_key
from aiserver.ledger.settings import LedgerSettings

#: The directory in which the worker processes of `aiserver-api --workers K` keep their
#: Prometheus counts together (prometheus_client's multiprocess mode; `aiserver.api.cli` sets it).
MULTIPROCESS_VAR: Final = "PROMETHEUS_MULTIPROC_DIR"
#: The shortest UI_SESSION_SECRET accepted.
MIN_SECRET: Final = 32
#: The shortest operator token accepted (API_ADMIN_TOKENS). A token is chosen by the operator,
#: and its length is all a check can see of it: 32 characters is what `openssl rand -hex 16`
#: (128 random bits) or `openssl rand -base64 24` (192) prints, the minimum of UI_SESSION_SECRET
#: too, and more than any password or placeholder ("changeme", "admin-token") is long.
MIN_ADMIN_TOKEN: Final = 32


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
    #: Failed attempts (dashboard sign-ins, operator tokens) one client address may make within
    #: API_AUTH_FAILURE_WINDOW_SECONDS; then it is refused (429) until the oldest of them is that
    #: old (`aiserver.api.attempts`). 0: no limit.
    api_auth_failure_limit: Annotated[int, msgspec.Meta(ge=0, le=100)] = 10
    api_auth_failure_window_seconds: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 300
    #: The longest a usage export (API or dashboard download) may stream: then it is cut short
    #: (the client gets a broken download, never a short one that looks whole), so that a client
    #: that reads slowly, or not at all, holds its database connection and snapshot no longer.
    usage_export_max_seconds: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 3600
    #: The longest the API waits for PostgreSQL's answer to one statement (then 503, retryable),
    #: and, twice that, the longest PostgreSQL keeps a statement or transaction of the API's
    #: waiting for the API (then it ends it, and its locks are free for another replica's
    #: retry): a connection gone silent holds a request, and an ingest's keys, no longer.
    #: Exports have their own connection and limit (USAGE_EXPORT_MAX_SECONDS).
    api_database_timeout_seconds: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60

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
        # Never the token itself in the message: where it stands in the list.
        for n, token in enumerate(self.api_admin_tokens, start=1):
            if len(token) < MIN_ADMIN_TOKEN:
                raise SettingsError(
                    f"API_ADMIN_TOKENS: token {n} of {len(self.api_admin_tokens)} is shorter "
                    f"than {MIN_ADMIN_TOKEN} characters (make one with `openssl rand -base64 32`)"
                )
