"""Who is asking, and what they may touch.

An `Access` is either the operator (a server-wide token of `API_ADMIN_TOKENS`: every project, the
catalog and the overrides) or one project's key (that project only, within the key's scopes).
The rules, in the order every request meets them:

1. no credential, or one that is malformed, unknown, revoked or expired -> 401 (`KeyRejected`);
2. a key of an archived project -> 403 (`ProjectArchived`);
3. another project's resource -> 404, exactly as for one that does not exist (`UnknownProject`,
   `UnknownKey`): a key never learns what other projects hold;
4. its own project, a scope the key lacks, or a server-wide endpoint -> 403 (`MissingScope`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aiserver.ledger.errors import KeyRejected, MissingScope, ProjectArchived
from aiserver.ledger.keys import SCOPES, PresentedKey, Scope
from aiserver.ledger.store import KeyRecord


@dataclass(frozen=True, slots=True)
class Access:
    """The operator (`project_id` None) or one project's key."""

    project_id: int | None
    project_slug: str | None
    scopes: frozenset[Scope]
    key_id: int | None = None

    @classmethod
    def operator(cls) -> Access:
        return cls(project_id=None, project_slug=None, scopes=frozenset(SCOPES))

    @property
    def is_operator(self) -> bool:
        return self.project_id is None

    def sees(self, project_id: int) -> bool:
        """Whether this access reaches the project at all (else: 404, as if it did not exist)."""
        return self.project_id is None or self.project_id == project_id

    def require(self, *scopes: Scope) -> None:
        """`MissingScope` unless the access has one of `scopes`."""
        if self.scopes.isdisjoint(scopes):
            wanted = " or ".join(repr(s) for s in scopes)
            granted = ", ".join(sorted(self.scopes))
            raise MissingScope(f"this needs a key with the scope {wanted}; this key has {granted}")

    def project_key(self, *scopes: Scope) -> int:
        """The project of a key with one of `scopes`; `MissingScope` for the operator (usage
        belongs to one project, named by its key) and for a key without them."""
        if self.project_id is None:
            wanted = " or ".join(repr(s) for s in scopes)
            raise MissingScope(
                f"this needs a project's key with the scope {wanted}: usage belongs to the "
                "project of the key that reports or reads it"
            )
        self.require(*scopes)
        return self.project_id

    def require_operator(self, what: str | None = None) -> None:
        """`MissingScope` unless an operator's token; `what` names the operator-only part of a
        request that a project's key may otherwise send (without it: the whole endpoint)."""
        if self.is_operator:
            return
        if what is None:
            raise MissingScope(
                "this is a server-wide endpoint: it needs an operator's token (API_ADMIN_TOKENS), "
                "and a project's key never reaches it"
            )
        raise MissingScope(
            f"{what} needs an operator's token (API_ADMIN_TOKENS); a project's key may send "
            "the rest of this request"
        )


def admit(presented: PresentedKey, records: list[KeyRecord], *, now: datetime) -> Access:
    """The access a presented key gives, or the reason it gives none.

    Revocation and expiry are told only to whoever proves the secret; anyone else learns only
    that the key is not valid.
    """
    record = next((r for r in records if presented.proves(r.secret_hash)), None)
    if record is None:
        raise KeyRejected("the key is not valid")
    return admit_record(record, now=now)


def admit_record(record: KeyRecord, *, now: datetime) -> Access:
    """The access a key whose secret was proved gives now (a revoked or expired key, or one of
    an archived project, gives none): checked on each use, also after the proof (a dashboard
    session holds a key's id, never its secret)."""
    if record.revoked_at is not None:
        raise KeyRejected(f"the key was revoked at {record.revoked_at.isoformat()}")
    if record.expires_at is not None and record.expires_at <= now:
        raise KeyRejected(f"the key expired at {record.expires_at.isoformat()}")
    if record.project_archived:
        raise ProjectArchived(f"project {record.project_slug!r} is archived")
    return Access(
        project_id=record.project_id,
        project_slug=record.project_slug,
        scopes=frozenset(record.scopes),
        key_id=record.id,
    )
