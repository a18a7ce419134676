"""A project's API keys: create (the secret shown once), list, revoke.

The operator (`API_ADMIN_TOKENS`) creates a project's first key; from then on a key with the
`admin` scope manages its own project's keys. Rotation is creating the new key, moving the
clients to it, then revoking the old one: both work in between.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiserver.core_db.connections import MAX_BIGINT
from aiserver.ledger import store
from aiserver.ledger.access import Access
from aiserver.ledger.authentication import announce_key
from aiserver.ledger.errors import InvalidField, ProjectArchived, UnknownKey
from aiserver.ledger.keys import SCOPES, Scope, new_key
from aiserver.ledger.projects import check_name, find_project, refuse_archived
from aiserver.ledger.store import ApiKey

if TYPE_CHECKING:
    import asyncpg

    from aiserver.ledger.authentication import Keyring


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key and its text: the only time the secret exists outside the client."""

    key: ApiKey
    text: str


def _check(
    name: str, scopes: Collection[str], expires_at: datetime | None
) -> tuple[tuple[Scope, ...], datetime | None]:
    """The key's scopes in their order, and its expiry in UTC; `InvalidField` for either."""
    check_name(name)
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidField(
            f"scopes must be one or more of {', '.join(SCOPES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
            ["scopes"],
        )
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise InvalidField("expires_at needs a time zone offset (e.g. Z)", ["expires_at"])
        try:  # what the database stores: the last hours of 9999 at a negative offset are not
            expires_at = expires_at.astimezone(UTC)
        except OverflowError:
            if expires_at.year == 1:  # the first hours of year 1 at a positive offset
                raise InvalidField("expires_at is in the past", ["expires_at"]) from None
            raise InvalidField(
                "expires_at is past the last time a key may expire (9999-12-31T23:59:59Z)",
                ["expires_at"],
            ) from None
        if expires_at <= datetime.now(UTC):
            raise InvalidField("expires_at is in the past", ["expires_at"])
    return tuple(scope for scope in SCOPES if scope in scopes), expires_at


class FormSentAgain(Exception):
    """The dashboard form that asked for a key had made one already (a page refreshed after
    it): `key` is that key, whose secret was shown once, then."""

    def __init__(self, key: ApiKey) -> None:
        super().__init__(f"the form made key {key.public_id} already")
        self.key = key


async def create_key(
    pool: asyncpg.Pool,
    access: Access,
    project_slug: str,
    *,
    name: str,
    scopes: Collection[str],
    expires_at: datetime | None = None,
    form_token: str | None = None,
) -> CreatedKey:
    """A new key of the project. `form_token` names the dashboard form that asks for it: a
    second request with the same token makes no key and raises `FormSentAgain`."""
    access.require("admin")  # first: a key without it learns nothing of what exists
    ordered, expires_at = _check(name, scopes, expires_at)
    made = new_key()
    async with pool.acquire() as conn, conn.transaction():
        project = await find_project(conn, access, project_slug)
        # its row shared: an archiving in flight is waited for (the key's foreign key does not)
        await store.share_project(conn, project.id)
        if project.archived_at is not None or await store.is_archived(conn, project.id):
            raise ProjectArchived(f"project {project.slug!r} is archived: its keys refuse all")
        key, new = await store.insert_key(
            conn,
            project_id=project.id,
            public_id=made.public_id,
            name=name,
            scopes=ordered,
            secret_hash=made.secret_hash,
            expires_at=expires_at,
            form_token=form_token,
        )
    if not new:
        raise FormSentAgain(key)
    return CreatedKey(key=key, text=made.text)


async def list_keys(pool: asyncpg.Pool, access: Access, project_slug: str) -> list[ApiKey]:
    access.require("admin")
    async with pool.acquire() as conn:
        project = await find_project(conn, access, project_slug)
        return await store.read_keys(conn, project.id)


async def revoke_key(
    pool: asyncpg.Pool, access: Access, key_id: int, *, keyring: Keyring | None = None
) -> ApiKey:
    """Revoke a key: at once in the process of `keyring`, in the others as they hear the
    announcement of the COMMIT (`authentication.KEYS_CHANNEL`; within `API_KEY_CACHE_SECONDS`
    in one that cannot listen). Another project's key is `UnknownKey`, as one that does not
    exist; a key without `admin` is refused before any key is looked up."""
    access.require("admin")
    async with pool.acquire() as conn, conn.transaction():
        key = await store.read_key(conn, key_id) if 0 < key_id <= MAX_BIGINT else None
        if key is None or not access.sees(key.project_id):
            raise UnknownKey(f"no key {key_id}")
        if access.key_id is not None:  # a key: its project's row, as an archiving leaves it
            await store.share_project(conn, key.project_id)  # (a rollup rebuild shares it)
            project = await find_project(conn, access, key.project)
            refuse_archived(access, project)
        revoked = await store.revoke_key(conn, key.project_id, key.id)
        await announce_key(conn, revoked.public_id)
    if keyring is not None:
        keyring.cache.forget(revoked.public_id)
    return revoked
