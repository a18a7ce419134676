"""Projects and their API keys (the ledger's tenants): decode, call `aiserver.ledger`, encode.

Every route takes the request's `access` (an operator's token or a project key, see `auth`);
the ledger decides what it may touch. A project is named by its slug in the path.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from arq.connections import ArqRedis
from arq.constants import default_queue_name
from litestar import Controller, Request, delete, get, patch, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from aiserver.api import auth
from aiserver.api.problems import problem_responses, strict_body
from aiserver.api.query import NO_QUERY, only_query
from aiserver.core_db.database import require_pool
from aiserver.ledger import api_keys, projects
from aiserver.ledger.access import Access
from aiserver.ledger.jobs import REBUILD_JOB
from aiserver.ledger.keys import Scope
from aiserver.ledger.store import ApiKey, Project

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Slug = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
TimeZone = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
TagKeys = Annotated[list[Annotated[str, msgspec.Meta(max_length=32)]], msgspec.Meta(max_length=4)]


class ProjectIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    slug: Slug
    name: Name
    time_zone: TimeZone = "UTC"
    rollup_tags: TagKeys = msgspec.field(default_factory=list)


class ProjectChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to change; a field left out stays as it is."""

    name: Name | None = None
    time_zone: TimeZone | None = None
    rollup_tags: TagKeys | None = None
    archived: bool | None = None  # the operator only


class ProjectOut(msgspec.Struct, frozen=True, kw_only=True):
    slug: str
    name: str
    time_zone: str
    rollup_tags: list[str]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None

    @classmethod
    def of(cls, project: Project) -> ProjectOut:
        return msgspec.convert(project, cls, from_attributes=True)


class KeyIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Name
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=3)]
    expires_at: datetime | None = None


class KeyOut(msgspec.Struct, frozen=True, kw_only=True):
    """A key as listed: its public id names it; its secret is never shown again."""

    id: int
    project: str
    public_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return msgspec.convert(key, cls, from_attributes=True)


class KeyCreated(KeyOut, frozen=True, kw_only=True):
    key: str  # ais_<public id>_<secret>: shown this once, stored nowhere


#: The guard checks the credential before the body or the query is read; handlers take the
#: `access` it found.
#: For an answer that holds a secret shown once (a key's, a webhook's): stored nowhere, nor in
#: a browser's or a proxy's cache (RFC 6749 asks the same of every answer that carries a token).
SECRET_ONCE: Final = CacheControlHeader(no_store=True)

AUTHENTICATED = {"access": Provide(auth.access, sync_to_thread=False)}
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


class ProjectController(Controller):
    path = "/v1/projects"
    tags = ("projects",)
    guards = (auth.authenticated,)
    dependencies = AUTHENTICATED
    security = SECURITY

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a project (operator)",
        responses=problem_responses(400, 401, 403, 409, 413, 422, 503),
        guards=[auth.operator_first, NO_QUERY],
        request_class=strict_body(ProjectIn),
        opt=auth.OPERATOR_ONLY,
    )
    async def create_project(
        self, access: NamedDependency[Access], data: JSONBody[ProjectIn]
    ) -> ProjectOut:
        project = await projects.create_project(
            require_pool(), access, slug=data.slug, name=data.name, time_zone=data.time_zone,
            rollup_tags=data.rollup_tags,
        )  # fmt: skip
        return ProjectOut.of(project)

    @get(
        "/",
        summary="List projects (operator)",
        responses=problem_responses(400, 401, 403, 422, 503),
        guards=[auth.operator_first, only_query("archived")],
        opt=auth.OPERATOR_ONLY,
    )
    async def list_projects(
        self, access: NamedDependency[Access], archived: FromQuery[bool] = False
    ) -> list[ProjectOut]:
        """Every project; archived ones too with `archived=true`."""
        found = await projects.list_projects(require_pool(), access, archived=archived)
        return [ProjectOut.of(p) for p in found]

    @get(
        "/{project:str}",
        summary="One project",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
        guards=[auth.scope_first("read", "admin"), NO_QUERY],
    )
    async def show_project(
        self, access: NamedDependency[Access], project: FromPath[str]
    ) -> ProjectOut:
        """The operator, or a key of the project with `read` or `admin`."""
        return ProjectOut.of(await projects.show_project(require_pool(), access, project))

    @patch(
        "/{project:str}",
        status_code=HTTP_200_OK,
        summary="Change a project: name, time zone, rolled-up tag keys; archive (operator)",
        responses=problem_responses(400, 401, 403, 404, 409, 413, 422, 503),
        guards=[auth.scope_first("admin"), NO_QUERY],
        request_class=strict_body(ProjectChange),
    )
    async def change_project(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        project: FromPath[str],
        data: JSONBody[ProjectChange],
    ) -> ProjectOut:
        """A key with the `admin` scope, or the operator; archiving (`archived`) is the
        operator's. Every API process sees an archiving as it commits (this one at once). A
        change of the rolled-up tag keys enqueues a rebuild of the project's rollups
        (docs/rollups.md). A change of the time zone makes the current windows of its day, week
        and month budgets again in the new zone, and is refused (409 reservations-held) while a
        reservation holds an amount on one of them (docs/budgets.md). An empty change (`{}`)
        changes nothing: the project as it is, `updated_at` too."""
        redis: ArqRedis = request.app.state.redis

        async def enqueue_rebuild(project_id: int, job_id: str) -> None:
            await redis.enqueue_job(
                REBUILD_JOB, project_id, _job_id=job_id, _queue_name=default_queue_name
            )

        changed = await projects.change_project(
            require_pool(), access, project, name=data.name, time_zone=data.time_zone,
            rollup_tags=data.rollup_tags, archived=data.archived,
            keyring=request.app.state.keyring, enqueue_rebuild=enqueue_rebuild,
        )  # fmt: skip
        return ProjectOut.of(changed)

    @post(
        "/{project:str}/keys",
        status_code=HTTP_201_CREATED,
        summary="Create a key of a project (its secret is shown once)",
        responses=problem_responses(400, 401, 403, 404, 413, 422, 503),
        guards=[auth.scope_first("admin"), NO_QUERY],
        cache_control=SECRET_ONCE,
        request_class=strict_body(KeyIn),
    )
    async def create_key(
        self, access: NamedDependency[Access], project: FromPath[str], data: JSONBody[KeyIn]
    ) -> KeyCreated:
        """The operator, or a key of the project with the `admin` scope."""
        created = await api_keys.create_key(
            require_pool(), access, project, name=data.name, scopes=data.scopes,
            expires_at=data.expires_at,
        )  # fmt: skip
        listed = KeyOut.of(created.key)
        return KeyCreated(**msgspec.structs.asdict(listed), key=created.text)

    @get(
        "/{project:str}/keys",
        summary="List a project's keys",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
        guards=[auth.scope_first("admin"), NO_QUERY],
    )
    async def list_keys(
        self, access: NamedDependency[Access], project: FromPath[str]
    ) -> list[KeyOut]:
        """The operator, or a key of the project with the `admin` scope."""
        keys = await api_keys.list_keys(require_pool(), access, project)
        return [KeyOut.of(k) for k in keys]


class KeyController(Controller):
    path = "/v1/keys"
    tags = ("projects",)
    guards = (auth.authenticated,)
    dependencies = AUTHENTICATED
    security = SECURITY

    @delete(
        "/{key_id:int}",
        status_code=HTTP_200_OK,
        summary="Revoke a key",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
        guards=[auth.scope_first("admin"), NO_QUERY],
    )
    async def revoke_key(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        key_id: FromPath[int],
    ) -> KeyOut:
        """The operator, or a key of the key's project with the `admin` scope. Every API process
        refuses the key as the revocation commits (this one at once)."""
        revoked = await api_keys.revoke_key(
            require_pool(), access, key_id, keyring=request.app.state.keyring
        )
        return KeyOut.of(revoked)
